"""The data gate inside the refresh flow: rejected drops are quarantined whole, nothing trains."""

import io
import json
import tarfile
from pathlib import Path

import pytest

from flows.refresh import refresh
from freshtune.errors import DropRejected
from tasks import registry


def _nothing_trained(cfg) -> None:
    assert not list(cfg.paths.snapshots.iterdir())
    assert not list(cfg.paths.adapters.iterdir())
    assert registry.get_champion(cfg) is None


def test_a_drop_too_small_after_curation_is_quarantined_and_recognised_again(
    tiny_config, demo_drops, tmp_path: Path
):
    cfg = tiny_config()
    rows = [json.loads(line) for line in demo_drops[0].read_text().splitlines()]
    small = rows[:8] * 3  # 24 rows pass the row-count rule; 16 are duplicates
    for i, row in enumerate(small):
        row = small[i] = {**row, "id": f"dup-{i}"}
    drop = tmp_path / "small.jsonl"
    drop.write_text("\n".join(json.dumps(r) for r in small) + "\n")
    with pytest.raises(DropRejected) as err:
        refresh(str(drop), cfg)
    assert err.value.rule == "too_small" and "small.jsonl" in str(err.value)
    [folder] = list(cfg.paths.quarantine.iterdir())
    assert (folder / "small.jsonl").read_bytes() == drop.read_bytes()
    assert (folder / "data-docs" / "index.html").exists()
    assert json.loads((folder / "curation.json").read_text())["removed"]["duplicate_in_drop"] == 16
    assert "too_small" in (folder / "REJECTED.md").read_text()
    _nothing_trained(cfg)

    with pytest.raises(DropRejected) as again:
        refresh(str(drop), cfg)
    assert again.value.rule == "quarantined" and str(folder / "REJECTED.md") in str(again.value)


def test_an_archive_with_a_traversing_member_is_quarantined_untouched(tiny_config, tmp_path):
    cfg = tiny_config()
    drop = tmp_path / "drop.tar.gz"
    with tarfile.open(drop, "w:gz") as tar:
        for name in ("drop.jsonl", "../../escape.jsonl"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(DropRejected, match="escapes with '..'"):
        refresh(str(drop), cfg)
    [folder] = list(cfg.paths.quarantine.iterdir())
    assert (folder / "drop.tar.gz").read_bytes() == drop.read_bytes()
    assert not list(tmp_path.rglob("escape.jsonl")) and not (cfg.paths.landing / "staging").exists()
    _nothing_trained(cfg)


def test_an_accepted_drop_keeps_its_gate_results_with_the_snapshot(
    tiny_config, demo_drops, tmp_path
):
    from tasks.curate import commit_curated, curate_drop
    from tasks.ingest import stage_drop
    from tasks.validate import validate_drop

    cfg = tiny_config()
    rows = [json.loads(line) for line in demo_drops[0].read_text().splitlines()]
    planted = next(r for r in rows if r["split"] == "train" and r["messages"][-1]["content"])
    planted["messages"][-2]["content"] += " Write to ana.silva@example.org please."
    drop = tmp_path / "with-pii.jsonl"
    drop.write_text("".join(json.dumps(r) + "\n" for r in rows))
    staged = stage_drop(str(drop), cfg)
    validate_drop(staged, cfg)
    snapshot = commit_curated(curate_drop(staged, cfg), staged, cfg)
    gate = snapshot.path / "gate"
    assert json.loads((gate / "validation.json").read_text())["success"] is True
    assert (gate / "data-docs" / "index.html").exists()
    assert snapshot.meta()["curation"]["curate_removed_duplicate_in_drop"] == 3
    assert snapshot.meta()["curation"]["curate_pii_email"] == 1
    kept = {r["id"]: r for r in snapshot.rows()}
    text = json.dumps(kept[planted["id"]]["messages"])
    assert "<EMAIL>" in text and "ana.silva" not in text
