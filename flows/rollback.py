"""Roll the serving adapter back: `champion` moves to an earlier version, with who and why."""

from __future__ import annotations

from prefect import flow

from freshtune.config import FreshtuneConfig
from tasks.policy import enforce_policy
from tasks.promote import rollback_champion


@flow(name="rollback")
def rollback(
    config: FreshtuneConfig,
    to_version: str | None = None,
    reason: str = "",
    who: str | None = None,
    force: bool = False,
) -> dict[str, str]:
    """Move `champion` back to `to_version`, by default to the version `previous` points at.
    A version that never served and never passed the gate needs `force`, which the policy
    (and `review.forced_rollback`) may forbid."""
    config = config.on_this_worker()
    enforce_policy(config, force=force)
    return rollback_champion(config, to_version, reason, who, force)
