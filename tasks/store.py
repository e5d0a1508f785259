"""The artifact store: what one flow run hands to another, kept in MLflow's artifact store.

Workers share nothing but the servers. Snapshots, training mixes, adapters, checkpoints and
cycle records are objects here, named by kind and a key made of digests, under the
experiment's artifact location (`mlflow server --serve-artifacts`, with S3, GCS or Azure
behind it in production; a folder inside the workspace in the embedded default).

Each object is a folder uploaded first and a manifest (`<kind>/<key>.json`, the sha256 of
every file) uploaded last: an object without a manifest was never completely put, and no
reader sees it. A worker's workspace holds a cache of objects, fetched on first use,
verified against the manifest and renamed into place only when whole, so any cache folder
can be deleted at any time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from freshtune.config import FreshtuneConfig
from freshtune.files import file_digest
from tasks import tracking

log = logging.getLogger(__name__)

ROOT = "store"
# The kinds of objects, each cached in its own folder of the workspace.
SNAPSHOTS, MIXES, ADAPTERS, CYCLES = "snapshots", "mixes", "adapters", "cycles"
QUARANTINE, CHECKPOINTS, REVIEWS = "quarantine", "checkpoints", "reviews"


class StoreError(RuntimeError):
    """The artifact store is unreachable, lacks an object, or holds one that fails its digest."""


def _location(cfg: FreshtuneConfig) -> str:
    uri = tracking.tracking_uri(cfg)
    key = (uri, cfg.tracking.experiment)
    if key not in _LOCATIONS:  # an experiment's artifact location never changes
        experiment = tracking.client(cfg).get_experiment(tracking.experiment_id(cfg))
        _LOCATIONS[key] = f"{experiment.artifact_location.rstrip('/')}/{ROOT}"
    return _LOCATIONS[key]


_LOCATIONS: dict[tuple[str, str], str] = {}


def _repo(cfg: FreshtuneConfig) -> Any:
    """The artifact repository; its calls raise StoreError naming MLflow when it is down."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    uri = tracking.tracking_uri(cfg)
    return tracking.Named(
        get_artifact_repository(_location(cfg), tracking_uri=uri), uri, StoreError
    )


def folder_files(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative, POSIX) with its sha256."""
    return {
        p.relative_to(folder).as_posix(): file_digest(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def keys(cfg: FreshtuneConfig, kind: str) -> list[str]:
    """The keys of every complete object of `kind`."""
    try:
        entries = _repo(cfg).list_artifacts(kind)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot list {kind} in the artifact store: {exc}") from exc
    names = (Path(e.path).name for e in entries if not e.is_dir)
    return sorted(n.removesuffix(".json") for n in names if n.endswith(".json"))


def manifest(cfg: FreshtuneConfig, kind: str, key: str) -> dict[str, Any] | None:
    """The object's manifest, or None when the store has no complete object of that key."""
    if key not in keys(cfg, kind):
        return None
    with tempfile.TemporaryDirectory(prefix="freshtune-manifest-") as tmp:
        path = _repo(cfg).download_artifacts(f"{kind}/{key}.json", tmp)
        return json.loads(Path(path).read_text(encoding="utf-8"))


def put(
    cfg: FreshtuneConfig, kind: str, key: str, source: Path, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Upload a folder (or one file) as object `kind/key`; a complete object is kept as it is."""
    found = manifest(cfg, kind, key)
    if found is not None:
        return found
    folder, single = (source, None) if source.is_dir() else (source.parent, source.name)
    files = folder_files(folder) if single is None else {single: file_digest(source)}
    repo = _repo(cfg)
    if single is None:
        repo.log_artifacts(str(folder), f"{kind}/{key}")
    else:
        repo.log_artifact(str(source), f"{kind}/{key}")
    record = {"kind": kind, "key": key, "files": files, "single": single, "meta": meta or {}}
    with tempfile.TemporaryDirectory(prefix="freshtune-manifest-") as tmp:
        path = Path(tmp) / f"{key}.json"
        path.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
        repo.log_artifact(str(path), kind)  # last: it marks the object complete
    log.debug("stored %s/%s (%d files)", kind, key, len(files))
    return record


def get(cfg: FreshtuneConfig, kind: str, key: str, dest: Path) -> Path:
    """Object `kind/key` at `dest` in this workspace: the cached copy, or fetched and verified."""
    found = find(cfg, kind, key, dest)
    if found is None:
        raise StoreError(f"{kind}/{key} is not in the artifact store at {_location(cfg)}")
    return found


def find(cfg: FreshtuneConfig, kind: str, key: str, dest: Path) -> Path | None:
    """Like `get`, but None when the store has no such object."""
    if dest.exists():
        return dest
    record = manifest(cfg, kind, key)
    if record is None:
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.fetch-", dir=dest.parent))
    try:
        fetched = Path(_repo(cfg).download_artifacts(f"{kind}/{key}", str(staging)))
        _verify(fetched, record)
        source = fetched / record["single"] if record["single"] else fetched
        if not dest.exists():  # a concurrent fetch of the same object may have won
            os.replace(source, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("fetched %s/%s from the artifact store", kind, key)
    return dest


def replace_file(
    cfg: FreshtuneConfig,
    kind: str,
    key: str,
    add: tuple[str, str],
    drop: str,
    meta: dict[str, Any],
) -> None:
    """Object `kind/key` with text file `add` (name, text) added, file `drop` removed and
    `meta` merged: the new file first, then the manifest naming it and not `drop`, then `drop`,
    so a reader sees the old object or the new one, never one that fails its manifest."""
    record = manifest(cfg, kind, key)
    if record is None:
        raise StoreError(f"{kind}/{key} is not in the artifact store at {_location(cfg)}")
    repo = _repo(cfg)
    with tempfile.TemporaryDirectory(prefix="freshtune-replace-") as tmp:
        new = Path(tmp) / add[0]
        new.write_text(add[1], encoding="utf-8")
        repo.log_artifact(str(new), f"{kind}/{key}")
        files = {n: d for n, d in record["files"].items() if n != drop}
        updated = {**record, "files": files | {add[0]: file_digest(new)}}
        updated["meta"] = {**record.get("meta", {}), **meta}
        path = Path(tmp) / f"{key}.json"
        path.write_text(json.dumps(updated, indent=1, sort_keys=True), encoding="utf-8")
        repo.log_artifact(str(path), kind)
    repo.delete_artifacts(f"{kind}/{key}/{drop}")


def delete(cfg: FreshtuneConfig, kind: str, key: str) -> None:
    """Remove object `kind/key`: its manifest first, so no reader trusts what is left."""
    repo = _repo(cfg)
    repo.delete_artifacts(f"{kind}/{key}.json")
    repo.delete_artifacts(f"{kind}/{key}")


def _verify(folder: Path, record: dict[str, Any]) -> None:
    expected: dict[str, str] = record["files"]
    found = folder_files(folder)
    for name, digest in expected.items():
        if found.get(name) != digest:
            raise StoreError(
                f"{record['kind']}/{record['key']}: {name} does not match its manifest "
                f"(expected sha256 {digest[:12]}, got {str(found.get(name))[:12]}); "
                "the artifact store holds a damaged copy"
            )
