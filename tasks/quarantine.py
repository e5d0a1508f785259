"""Quarantine: a rejected drop kept whole, with why, where every worker can see it.

A rejected drop's original bytes, its gate results and a `REJECTED.md` go to
`quarantine/<digest16>/` and to the artifact store, so the same bytes landing again on any
worker are refused at once. Nothing here trains, moves or deletes anything else.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from freshtune.config import FreshtuneConfig
from freshtune.errors import DropRejected
from tasks import events, store

if TYPE_CHECKING:
    from tasks.validate import Failure, ValidationReport

log = logging.getLogger(__name__)


def gate_dir(cfg: FreshtuneConfig, digest: str) -> Path:
    """Where a drop's gate results wait until they join its snapshot or quarantine."""
    return cfg.paths.landing / "gate" / digest[:16]


def check_not_quarantined(path: Path, digest: str, cfg: FreshtuneConfig) -> None:
    """The same bytes rejected before are rejected again at once, pointing at the first time."""
    earlier = cfg.paths.quarantine / digest[:16]
    if digest[:16] in store.keys(cfg, store.QUARANTINE):
        store.get(cfg, store.QUARANTINE, digest[:16], earlier)
        detail = (
            f"these exact bytes (digest {digest[:16]}) were rejected before; see "
            f"{earlier / 'REJECTED.md'} (fix the file; to retry these bytes, delete "
            f"{store.QUARANTINE}/{digest[:16]}.json from the artifact store)"
        )
        raise DropRejected(path, "quarantined", detail)


def quarantine(
    file: Path,
    digest: str,
    reason: DropRejected,
    cfg: FreshtuneConfig,
    report: ValidationReport | None = None,
) -> Path | None:
    """Move nothing, lose nothing: copy the original bytes beside the report and the reason.

    A full disk or an unreachable store must not replace the rejection the caller is about
    to raise: the failure is added to it as a note (the landed file is still where it was)
    and None comes back.
    """
    target = cfg.paths.quarantine / digest[:16]
    events.drop_rejected(file.name, digest, reason.rule, reason.line)
    try:
        if not target.exists():
            _write(target, file, digest, reason, cfg, report)
        kept = file.name if (target / file.name).is_file() else None
        meta = {"original": kept, "at": time.time()}  # for data.quarantine_retention_days
        store.put(cfg, store.QUARANTINE, target.name, target, meta)  # every worker knows it
    except (OSError, store.StoreError) as exc:
        note = f"the drop could not be quarantined ({exc}); it is still at {file}"
        log.error("%s: %s", file, note)
        reason.also(note)
        return None
    log.warning("quarantined %s at %s: %s", file, target, reason)
    return target


def _write(
    target: Path,
    file: Path,
    digest: str,
    reason: DropRejected,
    cfg: FreshtuneConfig,
    report: ValidationReport | None,
) -> None:
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        results = gate_dir(cfg, digest)
        if results.is_dir():
            shutil.copytree(results, staging)  # validation.json, data-docs/, curation.json
        staging.mkdir(parents=True, exist_ok=True)
        if cfg.data.keep_rejected_originals:
            shutil.copy2(file, staging / file.name)
        if report is not None:
            (staging / "validation.json").write_text(report.to_json(), encoding="utf-8")
        note = _rejection_note(file, digest, reason, report, cfg.data.keep_rejected_originals)
        (staging / "REJECTED.md").write_text(note, encoding="utf-8")
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after the rename; else half-written
    shutil.rmtree(results, ignore_errors=True)


def failure_table(failures: list[Failure]) -> list[str]:
    """Markdown rows: rule, column, failing rows, sample lines, sample ids and values."""
    rows = [
        f"| {f.rule} | {f.column or ''} | {f.unexpected or f.observed} | "
        f"{', '.join(map(str, f.lines))} | {', '.join(f.ids)} | "
        f"{'<br>'.join(s.replace('|', '/') for s in f.samples)} |"
        for f in failures
    ]
    header = "| rule | column | failing rows | sample lines | sample ids | sample values |"
    return [header, "|---|---|---|---|---|---|", *rows] if rows else []


def _rejection_note(
    file: Path,
    digest: str,
    reason: DropRejected,
    report: ValidationReport | None,
    kept: bool = True,
) -> str:
    lines = [
        f"# Rejected drop `{file.name}`",
        "",
        f"- digest: `{digest}`",
        f"- rule: `{reason.rule}`",
        f"- why: {reason}",
        "",
        "Nothing was trained on it; the champion did not move. Fix the file and land it again.",
        "",
        "Beside this note: "
        + ("the original file, " if kept else "")
        + "`validation.json` and, when the suite ran, the Great Expectations Data Docs "
        "(`data-docs/index.html`)."
        + ("" if kept else " The original bytes are not kept (data.keep_rejected_originals)."),
    ]
    if report is not None and report.failures:
        lines += ["", *failure_table(report.failures)]
    return "\n".join(lines) + "\n"
