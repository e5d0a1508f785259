"""Quarantine keeps a rejected drop whole, and never hides the rejection behind its own fault."""

import json
import shutil
from pathlib import Path

import pytest

from freshtune.errors import DropRejected
from tasks import store
from tasks.quarantine import check_not_quarantined, quarantine
from tests.helpers.disk import full_disk


def _drop(tmp_path: Path, size: int = 200_000) -> Path:
    path = tmp_path / "drop.jsonl"
    row = {"id": "r", "prompt": "Q?", "response": "x" * 100}
    path.write_text("\n".join(json.dumps(row | {"id": f"r{i}"}) for i in range(size // 130)))
    return path


def test_a_full_disk_keeps_the_rejection_and_leaves_nothing_half_written(
    tmp_path: Path, tiny_config
):
    cfg = tiny_config()
    drop = _drop(tmp_path)
    error = DropRejected(drop, "json", "column 3: Expecting value", 7)
    with full_disk(cfg.paths.quarantine, size_kb=64):
        assert quarantine(drop, "ab" * 32, error, cfg) is None
        assert list(cfg.paths.quarantine.iterdir()) == []  # no .partial left behind
    assert error.rule == "json" and "drop.jsonl:7" in str(error)
    assert "could not be quarantined" in str(error) and "No space left" in str(error)
    assert drop.is_file()  # the landed bytes are still where they were
    assert "ab" * 8 not in store.keys(cfg, store.QUARANTINE)  # no record of a quarantine


def test_a_quarantined_drop_is_refused_again_once_the_local_copy_is_gone(
    tmp_path: Path, tiny_config
):
    cfg = tiny_config()
    drop = _drop(tmp_path, 2000)
    first = quarantine(drop, "cd" * 32, DropRejected(drop, "json", "bad"), cfg)
    shutil.rmtree(first)  # the workspace is a cache: the store remembers
    with pytest.raises(DropRejected, match="rejected before") as caught:
        check_not_quarantined(drop, "cd" * 32, cfg)
    assert caught.value.rule == "quarantined"
    assert (first / "REJECTED.md").read_text().startswith("# Rejected drop `drop.jsonl`")


def test_without_kept_originals_only_the_report_is_quarantined(tmp_path: Path, tiny_config):
    cfg = tiny_config("data.keep_rejected_originals=false")
    drop = _drop(tmp_path, 2000)
    target = quarantine(drop, "ef" * 32, DropRejected(drop, "json", "bad", 3), cfg)
    assert sorted(p.name for p in target.iterdir()) == ["REJECTED.md"]
    assert "original bytes are not kept" in (target / "REJECTED.md").read_text()
    assert drop.is_file()  # where it landed: the operator's retention decides
