import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from freshtune.cli import app

runner = CliRunner()


def test_help_lists_every_command():
    import re

    import typer

    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    registered = typer.main.get_command(app).commands
    assert {"refresh", "status", "demo-data", "demo", "models", "export"} <= set(registered)
    for name in registered:  # each as a word of its own ("demo" is not found in "demo-data")
        assert re.search(rf"^\W*{re.escape(name)}\s", result.output, re.MULTILINE), name
    assert "fetch" in runner.invoke(app, ["models", "--help"]).output


def test_usage_errors_exit_2(tmp_path: Path):
    assert runner.invoke(app, ["refresh"]).exit_code == 2
    bad = runner.invoke(app, ["status", "-w", str(tmp_path), "--set", "gate.min_gian=1"])
    assert bad.exit_code == 2 and "did you mean gate.min_gain" in bad.output
    unknown = runner.invoke(app, ["models", "fetch", "gpt-17", "-w", str(tmp_path)])
    assert unknown.exit_code == 2 and "smollm2" in unknown.output


def test_demo_data_is_deterministic(tmp_path: Path):
    for name in ("a", "b"):
        result = runner.invoke(
            app, ["demo-data", "--month", "2", "--out", str(tmp_path / f"{name}.jsonl")]
        )
        assert result.exit_code == 0, result.output
    wrong = runner.invoke(app, ["demo-data", "--month", "1", "--out", str(tmp_path / "x.csv")])
    assert wrong.exit_code == 2 and ".jsonl" in wrong.output
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "eval"}


def test_status_before_any_cycle(tmp_path: Path):
    result = runner.invoke(app, ["status", "--json", "-w", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"champion": None, "cycles": []}
    empty = runner.invoke(app, ["history", "-w", str(tmp_path)])
    assert empty.exit_code == 0 and "no cycles yet" in empty.output


@pytest.mark.usefixtures("prefect_harness")
def test_refresh_then_status_show_the_champion(tiny_model, demo_drops, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    args = ["--config", "tiny", "--set", f"base_model={tiny_model}", "-w", str(tmp_path / "ws")]
    result = runner.invoke(app, ["refresh", str(demo_drops[0]), *args])
    assert result.exit_code == 0, result.output
    assert "BLESSED" in result.output and "model version 1: promoted" in result.output
    status = runner.invoke(app, ["status", "--json", *args])
    data = json.loads(status.stdout)
    assert data["champion"]["version"] == "1"
    assert data["champion"]["tags"]["drop_digest"] == data["cycles"][0]["digest"]
    text = runner.invoke(app, ["status", *args]).output
    assert "champion: version 1" in text and "month-01.jsonl" in text

    plot = tmp_path / "history.png"
    history = runner.invoke(app, ["history", "--json", "--plot", str(plot), *args])
    assert history.exit_code == 0, history.output
    (row,) = json.loads(history.stdout)
    assert row["version"] == "1" and row["drop"] == "month-01.jsonl" and row["promoted"]
    assert row["current"] == data["cycles"][0]["scores"]["current"]["candidate"]["accuracy"]
    assert plot.stat().st_size > 5000
    table = runner.invoke(app, ["history", *args]).output
    assert "month-01.jsonl" in table and "BLESSED" in table


def test_status_with_the_tracking_server_down_names_it_and_exits_1(tmp_path: Path, monkeypatch):
    from tests.helpers.servers import free_port

    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    result = runner.invoke(app, ["status", "-w", str(tmp_path)])
    assert result.exit_code == 1 and "champion: none" not in result.output
    assert f"MLflow tracking server http://127.0.0.1:{port} did not answer" in result.output
    assert "Traceback" not in result.output


def test_deploy_and_watch_need_a_server(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for command in (["deploy"], ["watch", "--once"]):
        result = runner.invoke(app, [*command, "-w", str(tmp_path)])
        assert result.exit_code == 2 and "PREFECT_API_URL" in result.output


def test_drop_without_a_server_lands_the_file_and_says_no_event_went(
    tiny_model, demo_drops, tmp_path, monkeypatch
):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    args = ["-c", "tiny", "-s", f"base_model={tiny_model}", "-w", str(tmp_path / "ws")]
    result = runner.invoke(app, ["drop", str(demo_drops[0]), *args])
    assert result.exit_code == 0, result.output
    assert "no event sent" in result.output and "freshtune refresh" in result.output
    assert len(list((tmp_path / "ws" / "landing").glob("*-month-01.jsonl"))) == 1


def test_drop_refuses_a_bad_file_and_lands_nothing(tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "messages": [{"role": "user", "content": "hi"}]}\n{"id": "2", "me')
    args = ["-c", "tiny", "-s", f"base_model={tiny_model}", "-w", str(tmp_path / "ws")]
    result = runner.invoke(app, ["drop", str(bad), *args])
    assert result.exit_code == 1
    assert "bad.jsonl:2" in result.output and "truncated" in result.output
    assert "not landed" in result.output
    landing = tmp_path / "ws" / "landing"
    assert not [p for p in landing.iterdir() if p.is_file()]


def test_the_terminal_shows_one_line_per_stage_and_the_log_file_the_rest(
    tiny_model, demo_drops, tmp_path
):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    ws = tmp_path / "ws"
    freshtune = [sys.executable, "-m", "freshtune.cli"]
    args = [str(demo_drops[0]), "--config", "tiny", "--set", f"base_model={tiny_model}"]
    target = ["--set", "train.target_recall=0.9"]  # its probe answers inside training's bar
    quiet = subprocess.run(
        [*freshtune, "refresh", *args, *target, "-w", str(ws)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    for stage in ("validate-drop", "curate-drop", "train-candidate", "evaluate-models"):
        assert re.search(rf"^  {stage} +\d+ s ", quiet.stdout, re.MULTILINE), stage
    assert "== month-01.jsonl: BLESSED" in quiet.stdout and len(quiet.stdout.splitlines()) < 40
    everything = quiet.stdout + quiet.stderr
    noises = ("Finished in state", "{'loss'", "Calculating Metrics", "Warning", "HTTP")
    exits = ("INFO mlflow", "Stopping temporary server")  # MLflow's database, Prefect's exit
    for noise in (*noises, *exits):
        assert noise not in everything, noise
    assert "training: " in quiet.stderr and "evaluating: " in quiet.stderr  # the bars, cleared
    assert "generating" not in quiet.stderr  # no bar of its own for the probe
    log = (ws / "logs" / "freshtune.log").read_text()
    assert "prefect.task_runs: Finished in state Completed()" in log and "tasks.train" in log

    loud = subprocess.run(
        [*freshtune, "-v", "refresh", *args, "-w", str(ws)], env=env, capture_output=True, text=True
    )
    assert loud.returncode == 0 and "Finished in state" in loud.stdout + loud.stderr


def test_deploy_refuses_the_example_placeholder_secrets(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never reached
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "change-me-mlflow")
    result = CliRunner().invoke(app, ["deploy"])
    assert result.exit_code == 2
    assert "MLFLOW_TRACKING_PASSWORD still hold" in result.output
    assert "change-me-mlflow" not in result.output
