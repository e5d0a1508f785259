"""Curation: normalise text, drop duplicates, empty answers and eval leakage, counting each."""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune.config import FreshtuneConfig
from freshtune.errors import DropRejected
from tasks.ingest import StagedDrop, prompt_of, response_of
from tasks.snapshot import Snapshot, commit_snapshot, earlier_snapshots

log = logging.getLogger(__name__)

_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")


def normalise_text(text: str) -> str:
    """NFC, one space between words, no trailing blanks: the same words compare equal."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def text_key(text: str | None) -> str:
    """Hash of the case-folded normalised text, for exact matching across drops."""
    folded = normalise_text(text or "").casefold()
    return hashlib.sha256(folded.encode()).hexdigest()[:24]


def row_key(record: dict[str, Any]) -> str:
    return text_key(f"{prompt_of(record)}\x00{response_of(record)}")


def normalise_record(record: dict[str, Any]) -> dict[str, Any]:
    messages = [
        {"role": m["role"], "content": normalise_text(m["content"])} for m in record["messages"]
    ]
    return {**record, "messages": messages, "prompt_key": text_key(prompt_of(record))}


@dataclass
class CurationReport:
    rows_in: int = 0
    removed: Counter = field(default_factory=Counter)
    rows_out: int = 0
    train_rows: int = 0
    eval_rows: int = 0

    def as_metrics(self) -> dict[str, float]:
        metrics = {
            "curate_rows_in": self.rows_in,
            "curate_rows_out": self.rows_out,
            "curate_train_rows": self.train_rows,
            "curate_eval_rows": self.eval_rows,
        }
        metrics.update({f"curate_removed_{rule}": n for rule, n in sorted(self.removed.items())})
        return {k: float(v) for k, v in metrics.items()}


def curate(
    records: list[dict[str, Any]],
    seen_rows: set[str],
    eval_prompts: set[str],
) -> tuple[list[dict[str, Any]], CurationReport]:
    """Rules run in order; `seen_rows` and `eval_prompts` hold keys from earlier snapshots."""
    report = CurationReport(rows_in=len(records))
    rows = [normalise_record(r) for r in records]
    rows = _drop(rows, report, "empty_answer", lambda r: not (response_of(r) or "").strip())
    rows = _dedupe(rows, report, seen_rows)
    leaked = eval_prompts | {r["prompt_key"] for r in rows if r["split"] == "eval"}
    rows = _drop(
        rows, report, "eval_leakage", lambda r: r["split"] == "train" and r["prompt_key"] in leaked
    )
    report.rows_out = len(rows)
    report.train_rows = sum(r["split"] == "train" for r in rows)
    report.eval_rows = report.rows_out - report.train_rows
    log.info(
        "curation: %d rows in, removed %s, %d out",
        report.rows_in,
        dict(report.removed),
        report.rows_out,
    )
    return rows, report


def _drop(rows: list[dict[str, Any]], report: CurationReport, rule: str, bad) -> list[dict]:
    kept = [r for r in rows if not bad(r)]
    report.removed[rule] += len(rows) - len(kept)
    return kept


def _dedupe(rows: list[dict[str, Any]], report: CurationReport, seen: set[str]) -> list[dict]:
    """Exact duplicates within the drop and against earlier snapshots (same split only)."""
    local: set[str] = set()
    kept = []
    for row in rows:
        key = f"{row['split']}:{row_key(row)}"
        if key in local:
            report.removed["duplicate_in_drop"] += 1
        elif key in seen:
            report.removed["duplicate_of_earlier"] += 1
        else:
            local.add(key)
            kept.append(row)
    return kept


def known_keys(snapshots: list[Snapshot]) -> tuple[set[str], set[str]]:
    """(split-qualified row keys, eval prompt keys) of the given snapshots."""
    rows, eval_prompts = set(), set()
    for snap in snapshots:
        for row in snap.rows():
            rows.add(f"{row['split']}:{row_key(row)}")
            if row["split"] == "eval":
                eval_prompts.add(row["prompt_key"])
    return rows, eval_prompts


@task(name="curate-drop", cache_policy=NO_CACHE)
def curate_drop(staged: StagedDrop, cfg: FreshtuneConfig) -> Snapshot:
    """Curate against every earlier snapshot and commit this drop's snapshot."""
    seen, eval_prompts = known_keys(earlier_snapshots(cfg, staged.digest))
    rows, report = curate(staged.records, seen, eval_prompts)
    publish_curation(staged, report)
    if report.train_rows == 0 or report.eval_rows == 0:
        from tasks.validate import quarantine

        error = DropRejected(
            staged.file,
            "curation",
            f"{report.train_rows} train and "
            f"{report.eval_rows} eval rows left after curation; need both",
        )
        quarantine(staged.file, staged.digest, error, cfg)
        raise error
    return commit_snapshot(rows, staged.digest, staged.file, cfg, {"curation": report.as_metrics()})


def publish_curation(staged: StagedDrop, report: CurationReport) -> None:
    from prefect.artifacts import create_table_artifact

    table = [{"rule": "rows in", "rows": report.rows_in}]
    table += [{"rule": f"removed: {rule}", "rows": n} for rule, n in report.removed.items()]
    table += [
        {
            "rule": "rows out (train / eval)",
            "rows": f"{report.rows_out} ({report.train_rows} / {report.eval_rows})",
        }
    ]
    create_table_artifact(table, key="curation", description=f"curation of {staged.file.name}")
