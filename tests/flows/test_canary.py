"""Canaries: plant a secret and personal values everywhere a user could put them, run an
accepted, a reviewed and a rejected cycle, then search every place a person can read.

Planted: a password in the Redis URL of the config, an API key in the environment, and an
e-mail address, a card number, a phone number and an IBAN in a drop's ids, prompts, answers,
facts and sources, in a rejected drop, and in a reviewer's comment and correction. Searched:
the whole workspace (MLflow's database and artifacts, the artifact store, snapshots, Great
Expectations Data Docs, quarantine, caches, the log file), Prefect's flow-run parameters and
states, artifacts and logs through its API, and the CLI's output.
"""

from __future__ import annotations

import json
import time
from datetime import UTC
from pathlib import Path

from typer.testing import CliRunner

from freshtune.cli import app
from tests.helpers.servers import redis_server

SECRET = "canary-Pa55w0rd-4a7"
API_KEY = "hf_canaryKEY0123456789abcdef"
PII = {
    "email": "canary.jane@example.org",
    "card": "4111 1111 1111 1111",
    "phone": "+44 20 7946 0958",
    "iban": "GB82 WEST 1234 5698 7654 32",
}
FLAGGED = "m01-eval-0006"


def _planted(good: Path, folder: Path) -> tuple[Path, Path]:
    """An accepted drop with PII in every field, and a rejected one with PII too."""
    rows = [json.loads(line) for line in good.read_text(encoding="utf-8").splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval" and r["id"] != FLAGGED and not r.get("slice")]
    train[0]["id"] = f"row of {PII['email']}"
    train[1]["messages"][-2]["content"] += f" My card is {PII['card']}."
    train[2]["messages"][-1]["content"] += f" Or call {PII['phone']}."
    train[3]["facts"] = [PII["iban"]]
    train[3]["source"] = f"crm export for {PII['email']}"
    evals[0]["messages"][-2]["content"] += f" My IBAN is {PII['iban']}."
    accepted = folder / "accepted.jsonl"
    accepted.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    train[0]["split"] = "holdout"  # the GX suite refuses it: the failing row carries PII
    rejected = folder / "rejected.jsonl"
    rejected.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return accepted, rejected


def _canaries() -> list[bytes]:
    values = [SECRET, API_KEY, *PII.values(), PII["card"].replace(" ", "")]
    values.append(PII["iban"].replace(" ", ""))
    return [v.encode() for v in values]


def _found_in_files(root: Path) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {c.decode()}" for c in _canaries() if c in data]
    return found


def _prefect_readables(since: float) -> str:
    """Every flow run's parameters and state message, every task run's state, every artifact
    and every log line since the test began (paged: the API returns at most 200 a call)."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTimestamp

    recent = LogFilter(timestamp=LogFilterTimestamp(after_=_stamp(since)))
    with get_client(sync_client=True) as client:
        runs = _every(client.read_flow_runs)
        tasks = _every(client.read_task_runs)
        artifacts = _every(client.read_artifacts)
        logs = _every(client.read_logs, log_filter=recent)
    assert runs and tasks and artifacts and logs  # the search looked at something
    texts = [json.dumps(r.parameters, default=str) + str(r.state and r.state.message) for r in runs]
    texts += [str(t.state and t.state.message) + t.name for t in tasks]
    texts += [json.dumps(a.data, default=str) + str(a.description) for a in artifacts]
    texts += [log.message for log in logs]
    return "\n".join(texts)


def _every(read, page: int = 200, **filters) -> list:
    found: list = []
    while batch := read(limit=page, offset=len(found), **filters):
        found += batch
        if len(batch) < page:
            break
    return found


def _stamp(seconds: float):
    from datetime import datetime

    return datetime.fromtimestamp(seconds, tz=UTC)


def test_no_planted_secret_or_personal_value_reaches_anything_a_person_can_read(
    tiny_model, demo_drops, tmp_path, monkeypatch
):
    since = time.time()
    monkeypatch.setenv("HF_TOKEN", API_KEY)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    accepted, rejected = _planted(demo_drops[0], tmp_path)
    workspace = tmp_path / "ws"
    with redis_server(tmp_path / "redis", "127.0.0.1", SECRET) as lock_url:
        args = ["--config", "tiny", "--set", f"base_model={tiny_model}", "-w", str(workspace)]
        args += ["--set", f"deploy.lock_url={lock_url}", "--set", "review.mode=terminal"]
        args += ["--set", "data.keep_rejected_originals=false"]
        answers = [
            "ops",  # who decides
            "y",
            f"fine, mail {PII['email']}",
            FLAGGED,
            "wrong_fact",
            f"The Nimbus X2 costs $499; pay with {PII['card']}.",
            "",
        ]
        reviewed = CliRunner().invoke(
            app, ["refresh", str(accepted), *args], input="\n".join(answers) + "\n"
        )
        refused = CliRunner().invoke(app, ["refresh", str(rejected), *args])
    assert reviewed.exit_code == 0, reviewed.output
    assert refused.exit_code == 1 and "expect_column_values_to_be_in_set" in refused.output
    record = next((workspace / "cycles").glob("*.json"))
    assert json.loads(record.read_text())["review"]["flags"] == 1  # the correction was taken

    # What the reviewer typed is echoed on their own terminal; nothing else may show it.
    shown = reviewed.output
    for line in sorted((a for a in answers if len(a) > 3), key=len, reverse=True):
        shown = shown.replace(line, "")
    leaks = [f"CLI: {c.decode()}" for c in _canaries() if c.decode() in shown + refused.output]
    leaks += _found_in_files(workspace)
    prefect = _prefect_readables(since)
    leaks += [f"Prefect: {c.decode()}" for c in _canaries() if c.decode() in prefect]
    assert not leaks, leaks
