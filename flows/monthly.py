"""`monthly-refresh`: every drop landed since the last cycle, oldest first, one refresh each.

Scheduled on the first of the month (`deploy.monthly_cron`) and triggered by
`freshtune.model.decayed`. A rejected drop is quarantined and the month goes on with the
next one; then retention deletes the raw drops it is set to; the run ends Failed if any drop
failed, else Rejected if any was rejected, naming them.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.refresh import refresh
from freshtune.config import FreshtuneConfig
from tasks.landing import pending
from tasks.policy import enforce_policy
from tasks.retention import retention_task


@task(name="pending-drops", cache_policy=NO_CACHE)
def pending_drops(config: FreshtuneConfig) -> list[str]:
    """Landed drops that no cycle has taken yet (nor quarantined), oldest first."""
    return pending(config)


@flow(name="monthly-refresh")
def monthly_refresh(config: FreshtuneConfig) -> list[dict[str, Any]]:
    """One refresh per pending drop, in landing order."""
    config = config.on_this_worker()
    enforce_policy(config)
    outcomes = [
        outcome(drop, refresh(drop, config, return_state=True)) for drop in pending_drops(config)
    ]
    retention_task(config)  # data.*_retention_days: raw drops the month is done with
    return month_end(summarise_month(outcomes))


def outcome(drop: str, state: Any) -> dict[str, Any]:
    """A subflow's final state as a row (a failed drop does not stop the month)."""
    if state.is_completed():
        record = state.result()
        return {"drop": drop, **{k: record.get(k) for k in ("verdict", "version", "promoted")}}
    return {
        "drop": drop,
        "verdict": state.name,
        "version": None,
        "promoted": False,
        "error": state.message,
    }


@task(name="summarise-month", cache_policy=NO_CACHE)
def summarise_month(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A table of the month's cycles; fails (after all ran) if any of them failed."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(rows, key="monthly-refresh", description="this month's drops")
    failed = [f"{r['drop']}: {r['error']}" for r in rows if "error" in r and not _rejected(r)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(rows)} drops failed: " + "; ".join(failed))
    return rows


def _rejected(row: dict[str, Any]) -> bool:
    return row["verdict"] == "Rejected"


def month_end(rows: list[dict[str, Any]]) -> Any:
    """Rejected drops end the month Rejected (a kind of Failed) naming them: each one's
    drop-rejected alert has gone out already, so no cycle-failed alert repeats it."""
    from prefect.states import Failed

    rejected = [f"{r['drop']}: {r['error']}" for r in rows if _rejected(r)]
    if not rejected:
        return rows
    message = f"{len(rejected)} of {len(rows)} drops rejected: " + "; ".join(rejected)
    return Failed(name="Rejected", message=message)
