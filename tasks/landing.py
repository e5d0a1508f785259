"""Where drops land: a folder or an fsspec URL (s3://, gs://, file://), and the event that
announces each one.

A landed file is named `<digest12>-<original name>`, so landing the same bytes twice writes
one file, and it is written under a temporary name first, then renamed, so a reader never
sees half a drop. `freshtune.drop.landed` carries the path and the digest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freshtune.config import FreshtuneConfig
from freshtune.files import file_digest
from tasks.events import DROP_LANDED, emit

log = logging.getLogger(__name__)

# Folders the pipeline keeps inside the local landing folder; never drops themselves.
_OWN_FOLDERS = {"staging", "gate", "remote"}


@dataclass(frozen=True)
class Landed:
    url: str  # where workers read it: an absolute path or an fsspec URL
    digest: str
    size: int
    modified: float


def landing_url(cfg: FreshtuneConfig) -> str:
    return cfg.deploy.landing_url or str(cfg.paths.landing)


def _fs(url: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    return url_to_fs(url)


def _is_local(fs: Any) -> bool:
    return fs.protocol in ("file", ("file", "local"))


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def land(file: Path, cfg: FreshtuneConfig) -> Landed:
    """Copy `file` into the landing place atomically; the same bytes land once."""
    digest = file_digest(file)
    fs, root = _fs(landing_url(cfg))
    fs.makedirs(root, exist_ok=True)
    target = f"{root.rstrip('/')}/{digest[:12]}-{file.name}"
    if not fs.exists(target):
        partial = f"{root.rstrip('/')}/.{digest[:12]}-{file.name}.partial"
        fs.put_file(str(file), partial)
        fs.mv(partial, target)
    return Landed(_url(cfg, fs, target), digest, file.stat().st_size, time.time())


def _url(cfg: FreshtuneConfig, fs: Any, path: str) -> str:
    """How any worker opens a landed file: a local path, or the landing URL and its name
    (not fsspec's own unstrip, which drops the host and port of ftp:// or sftp:// URLs).
    Credentials never go in it: fsspec reads them from the worker's environment."""
    if _is_local(fs):
        return path
    return f"{landing_url(cfg).rstrip('/')}/{Path(path).name}"


def list_landed(cfg: FreshtuneConfig) -> list[dict[str, Any]]:
    """Files in the landing place, oldest first (hidden and partial files are not drops)."""
    fs, root = _fs(landing_url(cfg))
    if not fs.exists(root):
        return []
    entries = [
        e
        for e in fs.ls(root, detail=True)
        if e["type"] == "file" and not Path(e["name"]).name.startswith(".")
    ]
    for entry in entries:
        entry["url"] = _url(cfg, fs, entry["name"])
        entry["modified"] = _modified(entry)
    return sorted(entries, key=lambda e: (e["modified"], e["name"]))


def _modified(entry: dict[str, Any]) -> float:
    value = entry.get("mtime") or entry.get("LastModified") or entry.get("created") or 0
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def local_copy(path: str, cfg: FreshtuneConfig) -> Path:
    """A drop as a local file: local paths as they are, remote ones fetched into the workspace."""
    if not is_remote(path):
        return Path(path.removeprefix("file://")).expanduser().resolve()
    fs, remote = _fs(path)
    target = cfg.paths.landing / "remote" / Path(remote).name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        fs.get_file(remote, str(partial))
        partial.replace(target)
    return target


def remove_landed(url: str, cfg: FreshtuneConfig) -> None:
    """Delete a landed drop (retention), and this worker's fetched copy of a remote one."""
    fs, path = _fs(url)
    fs.rm(path)
    if is_remote(url):
        (cfg.paths.landing / "remote" / Path(path).name).unlink(missing_ok=True)


def emit_landed(landed: Landed, name: str) -> str:
    """Tell the Prefect server (PREFECT_API_URL) that a drop landed; returns the event id."""
    payload = {"path": landed.url, "digest": landed.digest, "name": name, "bytes": landed.size}
    return emit(DROP_LANDED, f"freshtune.drop.{landed.digest[:16]}", name, payload)


def drop_state(url: str, cfg: FreshtuneConfig) -> str:
    """`done` (a cycle ran on these bytes), `rejected` (quarantined) or `pending`."""
    from tasks import store

    digest = file_digest(local_copy(url, cfg))
    if digest[:16] in store.keys(cfg, store.CYCLES):
        return "done"
    if digest[:16] in store.keys(cfg, store.QUARANTINE):
        return "rejected"
    return "pending"


def pending(cfg: FreshtuneConfig) -> list[str]:
    """Landed drops no cycle has run on yet (nor rejected), oldest first."""
    return [e["url"] for e in list_landed(cfg) if drop_state(e["url"], cfg) == "pending"]


def _announced_path(cfg: FreshtuneConfig) -> Path:
    return cfg.paths.root / "announced.json"


def announced(cfg: FreshtuneConfig) -> set[str]:
    import json

    path = _announced_path(cfg)
    return set(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else set()


def mark_announced(cfg: FreshtuneConfig, digest: str) -> None:
    import json

    path = _announced_path(cfg)
    digests = sorted(announced(cfg) | {digest})
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(digests, indent=0), encoding="utf-8")
    partial.replace(path)


def announce_new(cfg: FreshtuneConfig) -> list[Landed]:
    """One `freshtune.drop.landed` per landed digest never announced (for `freshtune watch`)."""
    sent = []
    seen = announced(cfg)
    for entry in list_landed(cfg):
        file = local_copy(entry["url"], cfg)
        digest = file_digest(file)
        if digest in seen:
            continue
        landed = Landed(entry["url"], digest, int(entry.get("size") or 0), entry["modified"])
        emit_landed(landed, Path(entry["name"]).name)
        mark_announced(cfg, digest)
        seen.add(digest)
        sent.append(landed)
    return sent
