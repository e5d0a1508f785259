"""Retention: how long raw drops are kept once the pipeline is done with them.

Two settings, both off by default (kept for ever), both the operator's choice:
`data.landed_retention_days` deletes a landed drop once it is that old and its cycle was
recorded or it was quarantined (a drop still waiting for its cycle is never deleted), with
this worker's fetched copy of it; `data.quarantine_retention_days` deletes a quarantined
drop's original bytes that long after it was quarantined, from the workspace and the artifact
store, and keeps the scrubbed report, so the same bytes are still refused. What was a drop's
snapshot (scrubbed, curated) is not raw data and is not touched.

The monthly flow applies it after the month's cycles; `freshtune retention` on demand.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune.config import FreshtuneConfig
from tasks import store
from tasks.landing import drop_state, list_landed, remove_landed

log = logging.getLogger(__name__)

DAY = 86400.0
NOTE = "RETENTION.md"


@dataclass(frozen=True)
class Expired:
    kind: str  # "landed" or "quarantined original"
    where: str
    age_days: float


def expired(cfg: FreshtuneConfig, now: float | None = None) -> list[Expired]:
    """Every raw file retention says to delete now (nothing when both settings are None)."""
    now = time.time() if now is None else now
    return [*_landed(cfg, now), *_quarantined(cfg, now)]


def apply_retention(
    cfg: FreshtuneConfig, now: float | None = None, dry_run: bool = False
) -> list[Expired]:
    """Delete what `expired` lists (unless `dry_run`) and say what went, a line each."""
    gone = expired(cfg, now)
    for item in gone if not dry_run else []:
        if item.kind == "landed":
            remove_landed(item.where, cfg)
        else:
            _remove_original(cfg, *item.where.split("/", 1))
        log.info("retention: deleted %s %s (%.1f days old)", item.kind, item.where, item.age_days)
    return gone


@task(name="apply-retention", cache_policy=NO_CACHE)
def retention_task(cfg: FreshtuneConfig) -> list[dict[str, Any]]:
    return [asdict(item) for item in apply_retention(cfg)]


def _landed(cfg: FreshtuneConfig, now: float) -> list[Expired]:
    days = cfg.data.landed_retention_days
    if days is None:
        return []
    old = [e for e in list_landed(cfg) if now - e["modified"] >= days * DAY]
    return [
        Expired("landed", e["url"], (now - e["modified"]) / DAY)
        for e in old
        if drop_state(e["url"], cfg) != "pending"
    ]


def _quarantined(cfg: FreshtuneConfig, now: float) -> list[Expired]:
    days = cfg.data.quarantine_retention_days
    if days is None:
        return []
    out = []
    for key in store.keys(cfg, store.QUARANTINE):
        meta = (store.manifest(cfg, store.QUARANTINE, key) or {}).get("meta", {})
        original, at = meta.get("original"), meta.get("at")
        if original and at is not None and now - at >= days * DAY:
            out.append(Expired("quarantined original", f"{key}/{original}", (now - at) / DAY))
    return out


def _remove_original(cfg: FreshtuneConfig, key: str, name: str) -> None:
    """The store object first (a note, then a manifest without the file, then the file), then
    this worker's copy: at no moment does the store hold an object that fails its manifest."""
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    text = (
        f"The original bytes of this drop (`{name}`) were deleted on {stamp} under "
        f"`data.quarantine_retention_days={cfg.data.quarantine_retention_days}`; the report "
        "beside this note is what is kept, and the same bytes are still refused.\n"
    )
    meta = {"original": None, "original_deleted": stamp}
    store.replace_file(cfg, store.QUARANTINE, key, (NOTE, text), drop=name, meta=meta)
    local = cfg.paths.quarantine / key
    (local / name).unlink(missing_ok=True)
    if local.is_dir():
        (local / NOTE).write_text(text, encoding="utf-8")
