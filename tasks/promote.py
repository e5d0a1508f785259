"""Promotion: one alias move at a time, and only against the champion the candidate beat."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune import faults
from freshtune.config import FreshtuneConfig
from tasks import events, registry, servers
from tasks.gate import GateDecision, decide
from tasks.registry import Champion, ChampionMoved
from tasks.snapshot import Snapshot

log = logging.getLogger(__name__)

PROMOTION_LIMIT = "freshtune-promotion"
MAX_REEVALUATIONS = 3


def ensure_promotion_limit() -> None:
    """A global concurrency limit of 1; `strict=True` below fails if it is missing."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(PROMOTION_LIMIT)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another worker was first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=PROMOTION_LIMIT, limit=1)
                )


@contextlib.contextmanager
def promotion_slot(what: str) -> Iterator[None]:
    """The promotions' one slot on the Prefect server. The server is checked first (seconds,
    not the client's minute of retries), and one that stops answering while the slot is taken
    or given back is named: without the slot nothing moves."""
    import httpx
    from prefect.concurrency.sync import concurrency
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value() or ""
    if api:
        servers.check_prefect(api)
    try:
        ensure_promotion_limit()
        with concurrency(PROMOTION_LIMIT, occupy=1, strict=True, timeout_seconds=600):
            yield
    except httpx.TransportError as exc:
        why = f"did not answer during the {what} ({exc})"
        raise servers.ServerUnavailable("Prefect API", api, why, servers.PREFECT_CHECK) from None


def promote_serialised(cfg: FreshtuneConfig, version: str, expected: Champion | None) -> None:
    """Promotions queue on one slot, so the compare-and-move in `promote` is atomic."""
    with promotion_slot("promotion"):
        _refuse_if_flow_ended()
        registry.promote(cfg, version, expected)


def rollback_serialised(
    cfg: FreshtuneConfig, to_version: str | None, who: str, why: str, force: bool
) -> dict[str, str]:
    """A rollback takes the promotions' slot: it never interleaves with a promotion's
    compare-and-move, so the two cannot leave `champion` and `previous` crossed."""
    with promotion_slot("rollback"):
        return registry.rollback(cfg, to_version, who, why, force)


def _refuse_if_flow_ended() -> None:
    """A timed-out flow run is marked Failed while its code may still run: never move the alias
    after that."""
    from prefect import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    if state is not None and state.is_final():
        raise RuntimeError(f"flow run {flow_run.id} is already {state.name}; alias not moved")


@task(name="promote-candidate", cache_policy=NO_CACHE)
@faults.after("promote")
def promote_candidate(
    version: str,
    candidate: Path,
    snapshot: Snapshot,
    champion: Champion | None,
    decision: GateDecision,
    cfg: FreshtuneConfig,
    run_id: str,
) -> GateDecision:
    """Move `champion` to the candidate; if another cycle promoted meanwhile, re-evaluate
    against the new champion and promote only if the candidate still passes the gate."""
    for _ in range(MAX_REEVALUATIONS):
        try:
            promote_serialised(cfg, version, champion)
            registry.set_tags(cfg, run_id, {"freshtune.promoted": "true"})
            previous = champion.version if champion else None
            model = cfg.tracking.model_name
            events.champion_moved(model, "promoted", version, previous, decision.summary())
            return decision
        except ChampionMoved as moved:
            log.warning("%s; re-evaluating against the new champion", moved)
            champion = _current_champion(cfg)
            decision = _reevaluate(snapshot, candidate, champion, cfg, run_id)
            if not decision.promotable:
                return decision
    raise ChampionMoved(f"champion kept moving; gave up after {MAX_REEVALUATIONS} tries")


def _current_champion(cfg: FreshtuneConfig) -> Champion | None:
    champion = registry.get_champion(cfg)
    if champion is None:
        return None
    return replace(champion, adapter_dir=registry.local_adapter(cfg, champion))


def _reevaluate(snapshot, candidate, champion, cfg, run_id) -> GateDecision:
    from tasks.evaluate import score_candidate, score_metrics

    scores = score_candidate(snapshot, candidate, champion, cfg)
    registry.log_metrics(cfg, run_id, {f"reeval.{k}": v for k, v in score_metrics(scores).items()})
    decision = decide(scores, cfg.gate)
    registry.set_tags(cfg, run_id, {"freshtune.gate_after_reevaluation": decision.verdict})
    return decision


@task(name="rollback-champion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def rollback_champion(
    cfg: FreshtuneConfig, to_version: str | None, reason: str, who: str | None, force: bool
) -> dict[str, str]:
    import getpass

    record = rollback_serialised(
        cfg, to_version, who or getpass.getuser(), reason or "no reason given", force
    )
    with (cfg.paths.root / "rollbacks.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")  # a local copy; MLflow holds the audit
    model = cfg.tracking.model_name
    events.champion_moved(model, "rolled back", record["to"], record["from"], "rolled back by hand")
    return record
