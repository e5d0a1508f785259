"""Retention deletes raw drops the pipeline is done with, when the operator says so, and only
those: pending drops stay, a quarantine keeps its report and keeps refusing the bytes."""

import json
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from freshtune.cli import app
from freshtune.errors import DropRejected
from freshtune.files import file_digest
from tasks import store
from tasks.landing import Landed, land, pending
from tasks.quarantine import check_not_quarantined, quarantine
from tasks.retention import DAY, apply_retention, expired

runner = CliRunner()


def _land(tmp_path: Path, cfg, name: str) -> Landed:
    source = tmp_path / name
    source.write_text(json.dumps({"id": name, "prompt": "Q?", "response": "A."}) + "\n")
    return land(source, cfg)


def _reject(cfg, landed: Landed) -> Path:
    file = Path(landed.url)
    return quarantine(file, landed.digest, DropRejected(file, "json", "bad", 1), cfg)


def test_landed_drops_go_once_done_and_old_enough_and_pending_ones_stay(
    tmp_path: Path, tiny_config
):
    cfg = tiny_config("data.landed_retention_days=30")
    done, rejected, waiting = (_land(tmp_path, cfg, f"{n}.jsonl") for n in ("a", "b", "c"))
    record = tmp_path / "record.json"
    record.write_text("{}")
    store.put(cfg, store.CYCLES, done.digest[:16], record)  # a cycle ran on these bytes
    _reject(cfg, rejected)
    assert apply_retention(cfg) == []  # they landed just now
    month_later = time.time() + 31 * DAY
    listed = apply_retention(cfg, month_later, dry_run=True)
    assert sorted(e.where for e in listed) == sorted([done.url, rejected.url])
    assert all(Path(d.url).is_file() for d in (done, rejected, waiting))  # a dry run deletes none
    apply_retention(cfg, month_later)
    assert [Path(d.url).is_file() for d in (done, rejected, waiting)] == [False, False, True]
    assert pending(cfg) == [waiting.url]
    with pytest.raises(DropRejected, match="rejected before"):  # the quarantine remembers
        check_not_quarantined(Path(rejected.url), rejected.digest, cfg)


def test_retention_is_off_by_default(tmp_path: Path, tiny_config):
    cfg = tiny_config()
    landed = _land(tmp_path, cfg, "a.jsonl")
    _reject(cfg, landed)
    assert expired(cfg, time.time() + 10_000 * DAY) == []


def test_a_quarantined_original_goes_and_its_report_stays(tmp_path: Path, tiny_config):
    cfg = tiny_config("data.quarantine_retention_days=7")
    drop = tmp_path / "bad.jsonl"
    drop.write_text("not json\n")
    digest = file_digest(drop)
    target = quarantine(drop, digest, DropRejected(drop, "json", "bad", 1), cfg)
    assert (target / "bad.jsonl").is_file()
    assert apply_retention(cfg, time.time() + 6 * DAY) == []
    gone = apply_retention(cfg, time.time() + 8 * DAY)
    assert [(g.kind, g.where) for g in gone] == [
        ("quarantined original", f"{digest[:16]}/bad.jsonl")
    ]
    assert not (target / "bad.jsonl").exists() and (target / "REJECTED.md").is_file()
    assert apply_retention(cfg, time.time() + 30 * DAY) == []  # once
    # Another worker fetches an object that verifies, without the bytes; they are still refused.
    shutil.rmtree(target)
    fresh = store.get(cfg, store.QUARANTINE, digest[:16], tmp_path / "fresh")
    assert sorted(p.name for p in fresh.iterdir()) == ["REJECTED.md", "RETENTION.md"]
    assert "deleted on" in (fresh / "RETENTION.md").read_text()
    stored = store._repo(cfg).list_artifacts(f"{store.QUARANTINE}/{digest[:16]}")
    assert "bad.jsonl" not in {Path(a.path).name for a in stored}
    with pytest.raises(DropRejected, match="rejected before"):
        check_not_quarantined(drop, digest, cfg)


def test_the_cli_lists_then_deletes(tmp_path: Path, tiny_config, tiny_model):
    cfg = tiny_config("data.landed_retention_days=0")
    landed = _land(tmp_path, cfg, "a.jsonl")
    _reject(cfg, landed)
    args = ["--config", "tiny", "-w", str(cfg.workspace), "--set", f"base_model={tiny_model}"]
    args += ["--set", "data.landed_retention_days=0"]
    result = runner.invoke(app, ["retention", "--dry-run", *args])
    assert result.exit_code == 0, result.output
    assert f"would delete landed {landed.url}" in result.output and Path(landed.url).is_file()
    result = runner.invoke(app, ["retention", "--json", *args])
    assert [e["where"] for e in json.loads(result.output)] == [landed.url]
    assert not Path(landed.url).exists()
