"""Snapshots: each accepted drop's curated rows, saved with `datasets` under its digest."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freshtune.config import FreshtuneConfig
from tasks.locks import held


@dataclass(frozen=True)
class Snapshot:
    digest: str
    path: Path
    sequence: int
    file: str

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / "meta.json").read_text(encoding="utf-8"))

    def rows(self) -> list[dict[str, Any]]:
        from datasets import load_from_disk

        return load_from_disk(str(self.data_dir)).to_list()


def _features():
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    return Features(
        {
            "id": Value("string"),
            "messages": List(message),
            "split": Value("string"),
            "source": Value("string"),
            "facts": List(Value("string")),
            "line": Value("int64"),
            "prompt_key": Value("string"),
            "slice": Value("string"),
            "pair": Value("string"),
        }
    )


def snapshot_dir(cfg: FreshtuneConfig, digest: str) -> Path:
    return cfg.paths.snapshots / digest[:16]


def load_snapshot(path: Path) -> Snapshot:
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    return Snapshot(meta["digest"], path, meta["sequence"], meta["file"])


def list_snapshots(cfg: FreshtuneConfig) -> list[Snapshot]:
    """Committed snapshots in landing order: every one in the artifact store, fetched into
    this workspace's cache when this worker has not seen it yet."""
    from tasks import store

    found = [
        load_snapshot(store.get(cfg, store.SNAPSHOTS, key, cfg.paths.snapshots / key))
        for key in store.keys(cfg, store.SNAPSHOTS)
    ]
    return sorted(found, key=lambda s: s.sequence)


def commit_snapshot(
    rows: list[dict[str, Any]],
    digest: str,
    file: Path,
    cfg: FreshtuneConfig,
    extra: dict[str, Any] | None = None,
) -> Snapshot:
    """Idempotent: the same digest returns the snapshot already committed."""
    from datasets import Dataset

    if (done := committed_snapshot(cfg, digest)) is not None:
        return done
    target = snapshot_dir(cfg, digest)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    features = _features()
    # Only the snapshot's columns: working fields (e.g. the source drop) are not stored.
    stored = [
        {k: row.get(k, "" if k in ("slice", "pair") else None) for k in features} for row in rows
    ]
    Dataset.from_list(stored, features=features).save_to_disk(str(staging / "data"))
    # Numbering and publishing are one step for all workers: two drops committed at once
    # would otherwise both take max + 1, and which fact is newer would be arbitrary.
    with held("snapshot-sequence", cfg):
        sequence = max((s.sequence for s in list_snapshots(cfg)), default=0) + 1
        meta = {
            "digest": digest,
            "file": file.name,
            "sequence": sequence,
            "committed_at": time.time(),
            **(extra or {}),
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        staging.rename(target)
        return _publish(target, cfg)


def committed_snapshot(cfg: FreshtuneConfig, digest: str) -> Snapshot | None:
    """The drop's snapshot if it was committed: in this workspace (published to the artifact
    store if a crash came between), or fetched from the store; else None."""
    from tasks import store

    target = snapshot_dir(cfg, digest)
    if (target / "meta.json").exists():
        return _publish(target, cfg)
    found = store.find(cfg, store.SNAPSHOTS, target.name, target)
    return None if found is None else load_snapshot(found)


def _publish(folder: Path, cfg: FreshtuneConfig) -> Snapshot:
    """The snapshot in the artifact store (idempotent): from there every worker sees it."""
    from tasks import store

    snapshot = load_snapshot(folder)
    store.put(cfg, store.SNAPSHOTS, folder.name, folder, {"sequence": snapshot.sequence})
    return snapshot


def earlier_snapshots(cfg: FreshtuneConfig, digest: str) -> list[Snapshot]:
    return [s for s in list_snapshots(cfg) if s.digest != digest]
