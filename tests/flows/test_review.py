"""Expert review: pause + resume (UI form or CLI), terminal mode, timeouts, flags."""

import json
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.refresh import refresh
from freshtune.cli import app
from freshtune.config import ConfigError
from freshtune.files import file_digest
from tasks import registry
from tasks.ingest import prompt_of
from tasks.snapshot import list_snapshots

runner = CliRunner()


def _start(drop: Path, cfg) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            box["record"] = refresh(str(drop), cfg)
        except BaseException as exc:  # surfaced by the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _paused_run_id(timeout: float = 240) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    wanted = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=wanted)
        if runs:
            return str(runs[0].id)
        time.sleep(1)
    raise AssertionError("no flow run paused for review")


def _form_description(run_id: str) -> str:
    """What the Prefect UI shows above the review form."""
    from prefect.input import read_flow_run_input

    return read_flow_run_input("paused-1-description", flow_run_id=run_id)


def _first_eval_id(cfg) -> str:
    rows = list_snapshots(cfg)[0].rows()
    return next(r["id"] for r in rows if r["split"] == "eval" and not r.get("slice"))


def test_approve_with_a_flag_promotes_and_the_flag_becomes_a_review_drop(tiny_config, demo_drops):
    cfg = tiny_config("review.mode=pause", "review.timeout_s=600")
    thread, box = _start(demo_drops[0], cfg)
    run_id = _paused_run_id()
    assert registry.get_champion(cfg) is None  # nothing moves while the reviewer thinks
    form = _form_description(run_id)
    assert form.startswith("# Review: candidate is ") and "95% interval" in form
    flagged = _first_eval_id(cfg)
    result = runner.invoke(
        app,
        [
            "review",
            "approve",
            run_id,
            "--comment",
            "ok",
            "--flag",
            flagged,
            "--kind",
            "hallucination",
            "--correct",
            "The Horizon plan costs $99 per month.",
            "--reviewer",
            "ana",
        ],
    )
    assert result.exit_code == 0, result.output
    thread.join(300)
    record = box["record"]
    assert record["promoted"] and record["review"] == {
        "mode": "pause",
        "approved": True,
        "comment": "ok",
        "reviewer": "ana",
        "flags": 1,
        "timed_out": False,
    }
    assert registry.get_champion(cfg).version == record["version"]
    [review] = [s for s in list_snapshots(cfg) if s.meta().get("kind") == "review"]
    row, *wordings = review.rows()
    assert row["id"] == f"review-{flagged}" and row["split"] == "train"
    assert row["messages"][-1]["content"].endswith("$99 per month.")
    # The correction again in the drop's other wordings of the question, none an eval question.
    eval_prompts = {prompt_of(r) for r in list_snapshots(cfg)[0].rows() if r["split"] == "eval"}
    assert wordings and all(r["messages"][-1] == row["messages"][-1] for r in wordings)
    assert not {prompt_of(r) for r in wordings} & eval_prompts
    metrics = MlflowClient(registry.tracking_uri(cfg)).get_run(record["run_id"]).data.metrics
    assert metrics["review_flags_hallucination"] == 1 and metrics["review_flags_tone"] == 0

    # The correction is in every later training mix.
    later = refresh(str(demo_drops[1]), tiny_config("review.mode=auto"))
    mix = json.loads((Path(later["adapter_dir"]) / "mix.json").read_text())
    assert f"{review.digest[:16]}/review-{flagged}" in mix["rows"]


def test_reject_and_timeout_leave_the_alias_alone(tiny_config, demo_drops):
    cfg = tiny_config("review.mode=pause", "review.timeout_s=600")
    thread, box = _start(demo_drops[0], cfg)
    result = runner.invoke(app, ["review", "reject", _paused_run_id(), "--comment", "tone"])
    assert result.exit_code == 0, result.output
    thread.join(300)
    assert not box["record"]["promoted"] and registry.get_champion(cfg) is None

    quick = tiny_config("review.mode=pause", "review.timeout_s=3")
    timed_out = refresh(str(demo_drops[1]), quick)
    assert not timed_out["promoted"] and timed_out["review"]["timed_out"]
    assert registry.get_champion(quick) is None


def test_a_run_reaching_the_review_after_its_deadline_records_a_timeout_without_asking(
    tiny_config, demo_drops, monkeypatch
):
    from tasks import waiting

    cfg = tiny_config("review.mode=pause", "review.timeout_s=1")
    # Asked by an earlier run that is gone (suspended, never answered, failed by Prefect).
    waiting.requested(cfg, waiting.review_key(file_digest(demo_drops[0]), "v1"))
    time.sleep(1.1)
    monkeypatch.setattr(waiting, "_pause", lambda *_: pytest.fail("asked again"))
    record = refresh(str(demo_drops[0]), tiny_config("review.mode=pause", "review.timeout_s=600"))
    assert record["version"] == "1" and not record["promoted"]
    assert record["review"]["timed_out"] and registry.get_champion(cfg) is None


def test_a_drifted_drop_waits_for_the_reviewer_who_may_reject_it(tiny_config, demo_drops):
    refresh(str(demo_drops[0]), tiny_config())
    cfg = tiny_config("review.mode=pause", "review.timeout_s=600", "data.drift_threshold=0.0001")
    thread, box = _start(demo_drops[1], cfg)
    run_id = _paused_run_id()
    assert _form_description(run_id).startswith("# Drift: `month-02.jsonl` is unlike")
    assert len(list_snapshots(cfg)) == 1  # nothing committed while the reviewer thinks
    result = runner.invoke(app, ["review", "reject", run_id, "--comment", "not our domain"])
    assert result.exit_code == 0, result.output
    thread.join(300)
    error = box["error"]
    assert error.rule == "drift" and "not our domain" in str(error)
    assert len(list_snapshots(cfg)) == 1 and registry.get_champion(cfg).version == "1"
    assert (next(cfg.paths.quarantine.iterdir()) / "month-02.jsonl").is_file()


def test_terminal_review_asks_on_stdin(tiny_config, demo_drops, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    cfg = tiny_config()
    refresh(str(demo_drops[1]), cfg)  # earlier data, unlike the next drop at this threshold
    answers = "y\nnew product line\nbo\ny\nfine by me\n\n"  # drift first, then the candidate
    result = runner.invoke(
        app,
        [
            "refresh",
            str(demo_drops[0]),
            "--config",
            "tiny",
            "--set",
            f"base_model={tiny_model}",
            "--set",
            "review.mode=terminal",
            "--set",
            "data.drift_threshold=0.0001",
            "-w",
            str(cfg.workspace),
        ],
        input=answers,
    )
    assert result.exit_code == 0, result.output
    assert "Accept this drop despite its drift?" in result.output
    assert "Approve the candidate for promotion?" in result.output
    assert "| slice | metric |" in result.output
    assert registry.get_champion(cfg).tags["drop_digest"] == file_digest(demo_drops[0])
    from tasks.report import load_cycles

    assert "Your name" in result.output and load_cycles(cfg)[-1]["review"]["reviewer"] == "bo"


def test_pause_without_a_server_is_a_configuration_error(tiny_config):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.review import preflight

    with (
        temporary_settings({PREFECT_API_URL: None}),
        pytest.raises(ConfigError, match="PREFECT_API_URL"),
    ):
        preflight.fn(tiny_config("review.mode=pause"))
