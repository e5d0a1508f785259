"""A review that outlives its process: a deployment's run suspends at the review (its process
exits, the worker is free), a duplicate run of the drop stands down, and an approval starts
the run again from the top to finish its one cycle."""

from __future__ import annotations

import time
from pathlib import Path

from freshtune.demo_domain import write_drop
from tasks.landing import land
from tests.deployments.conftest import TERMINAL, Stack

DEPLOYMENT = "refresh/on-data-drop"


def _processes_of(run_id: str) -> list[int]:
    """Processes running flow run `run_id` (the process worker gives them its id)."""
    marker = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone, or not ours
            continue
    return found


def _start(stack: Stack, drop: str, config: dict) -> None:
    from prefect.deployments import run_deployment

    with stack.settings():
        run_deployment(DEPLOYMENT, parameters={"drop": drop, "config": config}, timeout=0)


def _wait_suspended(stack: Stack, before: int, timeout: float = 300) -> tuple[str, bool]:
    """The run's id once Suspended, and whether its process was seen running before."""
    deadline, seen = time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        runs = stack.runs_of(DEPLOYMENT)[before:]
        seen = seen or any(_processes_of(str(r.id)) for r in runs)
        if runs and runs[0].state_type.value == "PAUSED":
            assert runs[0].state_name == "Suspended", runs[0].state
            return str(runs[0].id), seen
        assert not runs or runs[0].state_type.value not in ("FAILED", "CRASHED"), runs[0].state
        time.sleep(1)
    raise TimeoutError(f"no suspended run of {DEPLOYMENT}\n{stack.tail()}")


def _wait_done(stack: Stack, index: int, timeout: float = 300) -> object:
    """The deployment's run number `index` once finished; it must have completed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = stack.runs_of(DEPLOYMENT)
        if len(runs) > index and runs[index].state_type.value in TERMINAL:
            assert runs[index].state_name == "Completed", runs[index].state
            return runs[index]
        time.sleep(1)
    raise TimeoutError(f"run {index} of {DEPLOYMENT} did not finish\n{stack.tail()}")


def _gone(run_id: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while _processes_of(run_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    return not _processes_of(run_id)


def _logged(stack: Stack, run_id: object, text: str, timeout: float = 30) -> bool:
    """Whether flow run `run_id` logged `text` (logs reach the server a moment after)."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with stack.settings(), get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        if any(text in log.message for log in logs) or time.monotonic() > deadline:
            return any(text in log.message for log in logs)
        time.sleep(1)


def test_a_suspended_review_frees_the_worker_and_an_approval_finishes_one_cycle(
    stack: Stack, tmp_path
):
    landed = land(write_drop(6, tmp_path / "month-06.jsonl"), stack.cfg)
    review = stack.cfg.review.model_copy(update={"mode": "pause", "timeout_s": 900})
    config = stack.cfg.model_copy(update={"review": review}).model_dump(mode="json")
    mlflow, model = stack.mlflow(), stack.cfg.tracking.model_name
    before = len(stack.runs_of(DEPLOYMENT))
    _start(stack, landed.url, config)
    run_id, seen = _wait_suspended(stack, before)
    try:
        assert seen and _gone(run_id), "the suspended run's process is still running"
        _start(stack, landed.url, config)  # the drop's event again while the review waits
        duplicate = _wait_done(stack, before + 1)
        waiting = f"is being processed by flow-run {run_id} (Suspended"
        assert _logged(stack, duplicate.id, waiting)
    finally:  # answered even when a check failed: the stack's later tests wait for every run
        stack.cli("review", "approve", run_id, "--comment", "checked", configured=False)
    resumed = _wait_done(stack, before)
    assert str(resumed.id) == run_id

    versions = mlflow.search_model_versions(f"name = '{model}'")
    [version] = [v for v in versions if v.tags["drop_digest"] == landed.digest]
    champion = mlflow.get_model_version_by_alias(model, "champion")
    assert str(champion.version) == str(version.version) and "promoted_at" in champion.tags
    experiment = mlflow.get_experiment_by_name(stack.cfg.tracking.experiment)
    cycle_runs = mlflow.search_runs(
        [experiment.experiment_id], f"tags.`freshtune.drop_digest` = '{landed.digest}'"
    )
    assert [r.info.status for r in cycle_runs] == ["FINISHED"]
    assert cycle_runs[0].data.tags["freshtune.flow_run_id"] == run_id
    assert cycle_runs[0].data.tags["freshtune.review"] == "approved"
    assert len(list(stack.cfg.paths.cycles.glob(f"{landed.digest[:16]}.json"))) == 1


def test_a_suspended_run_is_not_taken_for_a_lost_worker(tmp_path):
    from deployments.deploy import unresponsive_runs
    from freshtune.config import load_config

    trigger = unresponsive_runs(load_config("tiny", ["base_model=x"], tmp_path)).trigger
    assert "prefect.flow-run.Suspended" in trigger.expect  # no heartbeat while it waits
