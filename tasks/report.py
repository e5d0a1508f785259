"""The cycle record: what one refresh did, kept in the workspace, MLflow and the Prefect UI."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune import faults
from freshtune.config import FreshtuneConfig
from tasks import store
from tasks.evaluate import Scores
from tasks.gate import GateDecision, check_record, checks_table
from tasks.ingest import StagedDrop
from tasks.mix import TrainingMix
from tasks.registry import Champion
from tasks.review import ReviewOutcome
from tasks.train import TrainResult

log = logging.getLogger(__name__)


def cycle_path(cfg: FreshtuneConfig, digest: str) -> Path:
    return cfg.paths.cycles / f"{digest[:16]}.json"


def load_cycles(cfg: FreshtuneConfig) -> list[dict[str, Any]]:
    """Every finished cycle in the artifact store, oldest first."""
    records = [_read_record(cfg, key) for key in store.keys(cfg, store.CYCLES)]
    return sorted(records, key=lambda r: r["finished_at"])


def _read_record(cfg: FreshtuneConfig, key: str) -> dict[str, Any]:
    path = store.get(cfg, store.CYCLES, key, cfg.paths.cycles / f"{key}.json")
    return json.loads(path.read_text(encoding="utf-8"))


def cycle_done(cfg: FreshtuneConfig, digest: str) -> bool:
    """Whether a cycle of this drop finished, on any worker: its record is in the store."""
    return digest[:16] in store.keys(cfg, store.CYCLES)


@task(name="find-finished-cycle", cache_policy=NO_CACHE)
def find_cycle(staged: StagedDrop, cfg: FreshtuneConfig) -> dict[str, Any] | None:
    """The same bytes landing twice (a double trigger, a rerun) make one cycle, not two."""
    if not cycle_done(cfg, staged.digest):
        return None
    record = _read_record(cfg, staged.digest[:16])
    log.info(
        "drop %s (digest %s) already went through a cycle: %s",
        staged.file.name,
        staged.digest[:12],
        record["verdict"],
    )
    return {**record, "repeated": True}


def build_record(
    staged: StagedDrop,
    mix: TrainingMix,
    champion: Champion | None,
    trained: TrainResult,
    scores: Scores,
    decision: GateDecision,
    review: ReviewOutcome,
    version: str,
    run_id: str,
) -> dict[str, Any]:
    return {
        "digest": staged.digest,
        "file": str(staged.file),
        "run_id": run_id,
        "verdict": decision.verdict,
        "reasons": decision.reasons,
        "notes": list(decision.notes),
        "checks": [check_record(c) for c in decision.checks],
        "undecided": [c.describe() for c in decision.undecided],
        "version": version,
        "promoted": review.approved and decision.promotable,
        "compared_with": decision.reference,
        "champion_before": champion.version if champion else None,
        "review": {
            "mode": review.mode,
            "approved": review.approved,
            "comment": review.comment,
            "reviewer": review.reviewer,
            "flags": len(review.flags),
            "timed_out": review.timed_out,
        },
        "mix": {
            "new_rows": mix.new_rows,
            "replay_rows": mix.replay_rows,
            "rehearsal_rows": mix.rehearsal_rows,
            "digest": mix.digest,
        },
        "train": trained.metrics(),
        "stopping": {
            "reason": trained.stop_reason,
            "epochs": trained.epochs,
            "recall_curve": [list(point) for point in trained.recall_curve],
        },
        "adapter_dir": str(trained.adapter_dir),
        "scores": {
            s: {m: {"n": v.n, **v.metrics()} for m, v in by_model.items()}
            for s, by_model in scores.items()
            if by_model.get("candidate") and by_model["candidate"].n
        },
        "finished_at": time.time(),
        "repeated": False,
    }


def stopping_lines(stopping: dict[str, Any] | None) -> list[str]:
    """How long the cycle trained and why it stopped, with recall by epoch under a target."""
    if not stopping:
        return []
    curve = ", ".join(f"{e:g}: {100 * r:.0f}%" for e, r in stopping["recall_curve"])
    line = f"- trained {stopping['epochs']:g} epochs; stopped: {stopping['reason']}"
    return [line + (f" (recall of its own training questions by epoch: {curve})" if curve else "")]


def render_markdown(record: dict[str, Any]) -> str:
    review = record["review"]
    lines = [
        f"# Refresh cycle: {record['verdict']}",
        "",
        f"- drop `{Path(record['file']).name}` (digest `{record['digest'][:12]}`)",
        f"- candidate: model version **{record['version']}**, "
        f"{'promoted to `champion`' if record['promoted'] else 'not promoted'}",
        f"- compared with: {record['compared_with']} "
        f"(champion before: {record['champion_before'] or 'none'})",
        f"- training mix: {record['mix']['new_rows']} new + "
        f"{record['mix']['replay_rows']} replayed + "
        f"{record['mix'].get('rehearsal_rows', 0)} rehearsal rows; "
        f"{record['train']['train_tokens']:.0f} tokens in {record['train']['train_wall_s']:.0f} s",
        *stopping_lines(record.get("stopping")),
        *[f"- gate: {reason}" for reason in record["reasons"]],
        *[f"- undecided: {text}" for text in record.get("undecided", [])],
        f"- review: {review['mode']}, {'approved' if review['approved'] else 'not approved'}"
        f"{' (timed out)' if review['timed_out'] else ''}, {review['flags']} flags. "
        f"{review['comment']}",
        "",
        *checks_table(record.get("checks", [])),
        "",
        "| slice | model | questions | accuracy | hallucination | consistency | perplexity |",
        "|---|---|---|---|---|---|---|",
    ]
    for slice_, by_model in record["scores"].items():
        lines += [
            f"| {slice_} | {m} | {s['n']} | {_pct(s['accuracy'])} | {_pct(s['hallucination'])} "
            f"| {_pct(s['consistency'])} | {_num(s['perplexity'])} |"
            for m, s in by_model.items()
        ]
    if record.get("stages"):
        lines += ["", "| stage | time | share |", "|---|---|---|", *stage_lines(record["stages"])]
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def stage_seconds(timeout_s: float = 10.0) -> dict[str, float]:
    """Seconds spent in each task of this flow run so far, from Prefect's task-run records.

    The server learns of finished tasks from events, a moment later: wait for them to settle."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.runtime import flow_run, task_run

    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = [
                r
                for r in client.read_task_runs(flow_run_filter=flow_runs)
                if str(r.id) != str(task_run.id)
            ]
            if all(r.state and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    stages: dict[str, float] = {}
    for run in sorted(runs, key=lambda r: r.start_time or r.expected_start_time):
        name = run.name.rsplit("-", 1)[0]
        stages[name] = stages.get(name, 0.0) + run.total_run_time.total_seconds()
    return {name: round(seconds, 1) for name, seconds in stages.items()}


def stage_lines(stages: dict[str, float]) -> list[str]:
    total = sum(stages.values())
    return [
        f"| {name} | {seconds:.0f} s | {100 * seconds / total:.0f}% |"
        for name, seconds in stages.items()
        if total
    ]


def publish_history(record: dict[str, Any], cfg: FreshtuneConfig) -> None:
    """Every cycle so far, this one included, as the Prefect UI's history table; this cycle's
    row as metrics of MLflow's `history` run at its cycle number, so MLflow draws the trend."""
    from prefect.artifacts import create_table_artifact

    from tasks import history, registry

    by_digest = {r["digest"]: r for r in [*load_cycles(cfg), record]}
    rows = history.history_rows(list(by_digest.values()))
    create_table_artifact(
        history.table_artifact(rows),
        key=history.ARTIFACT_KEY,
        description="every refresh cycle: accuracy by slice, training time, verdict, review",
    )
    latest = next(r for r in rows if r.version == str(record["version"]))
    run_id = registry.named_run(cfg, history.HISTORY_RUN)
    registry.log_metrics(cfg, run_id, latest.metrics(), step=latest.cycle)
    registry.close_run(cfg, run_id)  # finished between cycles; metrics still land on it


@task(name="publish-cycle", cache_policy=NO_CACHE)
@faults.after("record")
def publish_cycle(record: dict[str, Any], cfg: FreshtuneConfig) -> dict[str, Any]:
    """Write the cycle record (last: its presence in the artifact store marks the drop as
    done, for every worker) and show it."""
    from prefect.artifacts import create_markdown_artifact

    from tasks import registry

    record = {**record, "stages": stage_seconds()}
    registry.log_metrics(
        cfg, record["run_id"], {f"stage.{k}_s": v for k, v in record["stages"].items()}
    )
    markdown = render_markdown(record)
    create_markdown_artifact(markdown, key="refresh-cycle", description="refresh cycle summary")
    registry.log_text(cfg, record["run_id"], markdown, "cycle.md")
    publish_history(record, cfg)
    registry.close_run(cfg, record["run_id"])
    path = cycle_path(cfg, record["digest"])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=2), encoding="utf-8")
    partial.replace(path)
    store.put(cfg, store.CYCLES, path.stem, path)
    return record
