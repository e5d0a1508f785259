"""The decay monitor: how the champion does on the newest eval data, and the alarm.

Facts change every month; a champion that was right in January is wrong in March. The
newest eval data is what landed but has not been trained on (the drops a refresh would take
next) or, when nothing is pending, the newest snapshot's eval rows. Below
`deploy.decay_min_accuracy` the monitor emits `freshtune.model.decayed`, which triggers the
monthly-refresh deployment.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune.config import FreshtuneConfig
from tasks.registry import Champion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Health:
    version: str
    source: str  # which data it was scored on
    questions: int
    accuracy: float
    threshold: float

    @property
    def decayed(self) -> bool:
        return self.questions > 0 and self.accuracy < self.threshold


def pending_eval_rows(cfg: FreshtuneConfig) -> tuple[str, list[dict[str, Any]]]:
    """Eval rows of the drops landed but not yet trained on; an unreadable drop is skipped
    (the refresh flow will quarantine it with its reason)."""
    from freshtune.errors import DropRejected
    from freshtune.files import file_digest
    from tasks.curate import normalise_record
    from tasks.ingest import stage
    from tasks.landing import local_copy, pending

    names, rows = [], []
    for url in pending(cfg):
        file = local_copy(url, cfg)
        try:
            staged = stage(file, file_digest(file), cfg)
        except DropRejected as exc:
            log.warning("decay monitor skips %s: %s", file.name, exc)
            continue
        names.append(file.name)
        rows += [
            normalise_record(r) for r in staged.records if r["split"] == "eval" and r["messages"]
        ]
    return "pending drops: " + ", ".join(names), rows


def newest_snapshot_rows(cfg: FreshtuneConfig) -> tuple[str, list[dict[str, Any]]]:
    from tasks.snapshot import list_snapshots

    data = [s for s in list_snapshots(cfg) if s.meta().get("kind") != "review"]
    if not data:
        return "no data yet", []
    newest = data[-1]
    return f"snapshot {newest.file}", [r for r in newest.rows() if r["split"] == "eval"]


def newest_eval_rows(cfg: FreshtuneConfig) -> tuple[str, list[dict[str, Any]]]:
    source, rows = pending_eval_rows(cfg)
    return (source, rows) if rows else newest_snapshot_rows(cfg)


def check_health(champion: Champion, cfg: FreshtuneConfig) -> Health:
    from tasks.evaluate import evaluate_models
    from tasks.models import recorded_base_model

    source, rows = newest_eval_rows(cfg)
    rows = rows[: cfg.eval.max_questions]
    threshold = cfg.deploy.decay_min_accuracy
    if not rows:
        return Health(champion.version, source, 0, float("nan"), threshold)
    scores = evaluate_models(
        recorded_base_model(cfg, champion.version, champion.tags),
        {"champion": champion.adapter_dir},
        {"current": rows},
        cfg.eval,
        cfg.paths.eval_cache,
    )
    accuracy = scores["current"]["champion"].accuracy
    return Health(champion.version, source, len(rows), accuracy, threshold)


@task(name="check-champion-health", cache_policy=NO_CACHE)
def check_champion_health(champion: Champion, cfg: FreshtuneConfig) -> Health:
    """Score the champion on the newest eval data."""
    health = check_health(champion, cfg)
    log.info(
        "champion v%s: %.1f%% on %d questions (%s); threshold %.1f%%",
        health.version,
        100 * health.accuracy,
        health.questions,
        health.source,
        100 * health.threshold,
    )
    return health


@task(name="raise-decay-alarm", cache_policy=NO_CACHE)
def raise_decay_alarm(health: Health, cfg: FreshtuneConfig) -> dict[str, Any]:
    """Show the reading; below the threshold emit `freshtune.model.decayed`."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.events import MODEL_DECAYED, emit

    verdict = "DECAYED" if health.decayed else "healthy"
    create_markdown_artifact(
        f"# Champion v{health.version}: {verdict}\n\n"
        f"- accuracy {100 * health.accuracy:.1f}% on {health.questions} questions "
        f"({health.source})\n- threshold {100 * health.threshold:.1f}%\n",
        key="decay-monitor",
        description="champion accuracy on the newest eval data",
    )
    event_id = ""
    if health.decayed:
        payload = {**asdict(health), "model": cfg.tracking.model_name}
        event_id = emit(
            MODEL_DECAYED, f"freshtune.model.{cfg.tracking.model_name}", verdict, payload
        )
    return {**asdict(health), "decayed": health.decayed, "event_id": event_id}
