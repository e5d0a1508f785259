"""The refresh cycle: one data drop in, a retrained candidate scored, reviewed, promoted or not."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.states import Failed

from freshtune.config import FreshtuneConfig
from freshtune.errors import DropRejected
from tasks.curate import commit_curated, curate_drop, find_snapshot
from tasks.drift import review_drift
from tasks.evaluate import evaluate_candidate
from tasks.gate import apply_gate
from tasks.ingest import StagedDrop, stage_drop
from tasks.locks import claim, in_progress_record
from tasks.mix import build_training_mix
from tasks.policy import enforce_policy
from tasks.promote import promote_candidate
from tasks.registry import (
    fail_cycle_run,
    find_champion,
    lineage_tags,
    open_cycle_run,
    register_candidate,
)
from tasks.rehearsal import build_rehearsal
from tasks.report import build_record, find_cycle, publish_cycle
from tasks.review import preflight, publish_review_report, record_review, request_review
from tasks.snapshot import Snapshot
from tasks.train import train_candidate
from tasks.validate import validate_drop
from tasks.waiting import claim_wait_s, find_waiting_review


def run_name() -> str:
    """`<drop file> (<year-month>)`: a month's cycle is found by name in the Prefect UI."""
    from prefect.runtime import flow_run

    drop = str(flow_run.parameters.get("drop", "drop")).rstrip("/")
    return f"{drop.rsplit('/', 1)[-1]} ({time.strftime('%Y-%m', time.gmtime())})"


@flow(
    name="refresh",
    flow_run_name=run_name,
    on_failure=[fail_cycle_run],
    on_crashed=[fail_cycle_run],
)
def refresh(drop: str, config: FreshtuneConfig) -> dict[str, Any]:
    """Validate and curate a drop, LoRA-retrain from the champion with replay, evaluate
    candidate vs champion vs base, ask a reviewer, then move `champion` if all agree.
    A rejected drop ends the run in state Rejected (a kind of Failed): the drop-rejected
    alert speaks for it, not the cycle-failed one."""
    try:
        return refresh_cycle(drop, config)
    except DropRejected as rejected:
        return Failed(name="Rejected", message=str(rejected), data=rejected)


def refresh_cycle(drop: str, config: FreshtuneConfig) -> dict[str, Any]:
    """The refresh flow's body: one drop claimed, then its cycle, or what an earlier run did."""
    config = config.on_this_worker()
    enforce_policy(config, drop)
    preflight(config)
    staged = stage_drop(drop, config)
    # One drop, one cycle: a double trigger's second run stands down or finds the cycle done;
    # a drop whose review waits on a suspended run is that run's.
    with claim(f"drop-{staged.digest[:16]}", config, claim_wait_s()) as holder:
        if holder is not None:
            return in_progress_record(str(staged.file), staged.digest, holder)
        if (done := find_cycle(staged, config)) is not None:
            return done
        if (waiting := find_waiting_review(staged.digest)) is not None:
            return in_progress_record(str(staged.file), staged.digest, waiting)
        return cycle(staged, config)


def cycle(staged: StagedDrop, config: FreshtuneConfig) -> dict[str, Any]:
    """The steps of one cycle, inside the refresh flow run (a helper, not a subflow)."""
    snapshot = find_snapshot(staged, config) or curated_snapshot(staged, config)
    champion = find_champion(config, staged.digest)
    run_id = open_cycle_run(snapshot, champion, config)
    rehearsal = build_rehearsal(config)
    mix = build_training_mix(snapshot, rehearsal, champion, config)
    candidate = train_candidate(mix, champion, config, run_id)
    scores = evaluate_candidate(snapshot, candidate.adapter_dir, champion, config, run_id)
    decision = apply_gate(scores, config, run_id)
    lineage = lineage_tags(staged.digest, champion, config, mix.replay_share, decision.verdict)
    version = register_candidate(candidate.adapter_dir, lineage, config, run_id)
    report = publish_review_report(scores, decision, config, run_id)
    review = request_review(report, decision, staged.digest, version, config)
    record_review(review, snapshot, config, run_id)
    if review.approved:
        decision = promote_candidate(
            version, candidate.adapter_dir, snapshot, champion, decision, config, run_id
        )
    record = build_record(
        staged, mix, champion, candidate, scores, decision, review, version, run_id
    )
    return publish_cycle(record, config)


def curated_snapshot(staged: StagedDrop, config: FreshtuneConfig) -> Snapshot:
    """The drop validated, curated, its drift reviewed, committed as a snapshot."""
    validate_drop(staged, config)
    curated = curate_drop(staged, config)
    review_drift(curated.report.drift, staged, config)
    return commit_curated(curated, staged, config)
