"""Where a run finds the safety policy, and the check every flow makes before any work."""

from __future__ import annotations

import json
import logging

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune.config import FreshtuneConfig
from freshtune.policy import ENV, VARIABLE, Policy, PolicyRefused, describe, from_environment

log = logging.getLogger(__name__)


def current_policy() -> tuple[Policy | None, str]:
    """The worker's `FRESHTUNE_POLICY` first, else the Prefect Variable; None without either."""
    if (policy := from_environment()) is not None:
        return policy, f"the worker's {ENV}"
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return None, ""
    from prefect.variables import Variable

    value = Variable.get(VARIABLE, default=None)
    if value is None:
        return None, ""
    data = json.loads(value) if isinstance(value, str) else value
    return Policy.model_validate(data), f"the Prefect variable {VARIABLE}"


def publish_policy(cfg: FreshtuneConfig) -> Policy:
    """`freshtune deploy`: the deployment's own config becomes the policy its runs must meet."""
    from prefect.variables import Variable

    policy = Policy.of(cfg)
    Variable.set(VARIABLE, policy.model_dump(mode="json"), overwrite=True)
    return policy


@task(name="check-policy", cache_policy=NO_CACHE)
def enforce_policy(cfg: FreshtuneConfig, drop: str | None = None, force: bool = False) -> None:
    """Refuse, before any work, a run whose settings are weaker than the policy (`force`: a
    rollback's `--force`)."""
    policy, source = current_policy()
    if policy is None:
        return
    if refused := policy.refusals(cfg, drop, force):
        raise PolicyRefused(
            f"run refused by the policy in {source} (nothing was done): " + "; ".join(refused)
        )
    log.info("settings meet the policy in %s (%s)", source, describe(policy))
