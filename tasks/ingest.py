"""Read a data drop (JSONL, CSV or Parquet) into uniform chat records, and fingerprint it.

A record is `{"id", "messages": [{"role", "content"}...], "split", "source", "facts", "line"}`.
Rows that are malformed in shape are kept (with `messages=None`) so that the Great
Expectations gate reports them by line instead of the reader silently dropping them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune.config import FreshtuneConfig
from freshtune.errors import DropRejected

log = logging.getLogger(__name__)

FORMATS = (".jsonl", ".json", ".csv", ".parquet")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_drop(path: Path) -> list[dict[str, Any]]:
    """Parse a drop; a malformed file raises DropRejected naming the file, line and rule."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DropRejected(path, "format", f"unsupported file type {suffix!r}; use {FORMATS}")
    if suffix == ".parquet":
        raw = _read_parquet(path)
    else:
        text = _decode_strict(path)
        raw = _read_csv(text) if suffix == ".csv" else _read_jsonl(path, text)
    return [to_record(obj, line) for line, obj in raw]


def _decode_strict(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        raise DropRejected(path, "encoding", "file starts with a byte-order mark; save as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DropRejected(path, "encoding", f"invalid UTF-8 at byte {exc.start}", line) from None


def _read_jsonl(path: Path, text: str) -> list[tuple[int, Any]]:
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            detail = f"column {exc.colno}: {exc.msg}"
            raise DropRejected(path, "json", detail, line_no) from None
    return rows


def _read_csv(text: str) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for row in reader:
        if row.get("messages"):
            row["messages"] = _json_or_none(row["messages"])
        if row.get("facts"):
            row["facts"] = [f for f in row["facts"].split("|") if f]
        # DictReader's line_num is the physical line where the row ended.
        rows.append((reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}))
    return rows


def _read_parquet(path: Path) -> list[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DropRejected(path, "parquet", str(exc)) from None
    return list(enumerate(table.to_pylist(), start=1))


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def to_record(obj: Any, line: int) -> dict[str, Any]:
    """Both accepted shapes become chat messages; anything else keeps `messages=None`."""
    obj = obj if isinstance(obj, dict) else {}
    messages = obj.get("messages")
    if messages is None and "prompt" in obj and "response" in obj:
        messages = [
            {"role": "user", "content": obj["prompt"]},
            {"role": "assistant", "content": obj["response"]},
        ]
    facts = obj.get("facts") or []
    return {
        "id": None if obj.get("id") is None else str(obj["id"]),
        "messages": messages if _is_chat(messages) else None,
        "split": obj.get("split"),
        "source": str(obj.get("source") or ""),
        "facts": [str(f) for f in facts] if isinstance(facts, list) else [],
        "line": line,
    }


def _is_chat(messages: Any) -> bool:
    return isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )


def prompt_of(record: dict[str, Any]) -> str | None:
    """The conversation up to the last assistant turn, as one string (the question asked)."""
    messages = record["messages"] or []
    turns = [m["content"] for m in messages[:-1] if m["role"] == "user"]
    return "\n".join(turns) if turns else None


def response_of(record: dict[str, Any]) -> str | None:
    messages = record["messages"] or []
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else None


def assign_holdout(records: list[dict[str, Any]], fraction: float, seed: int) -> int:
    """Without eval rows in the drop, hold out a seeded fraction; returns how many."""
    if any(r["split"] == "eval" for r in records):
        for record in records:
            record["split"] = record["split"] or "train"
        return 0
    ids = sorted(range(len(records)), key=lambda i: str(records[i]["id"]))
    random.Random(seed).shuffle(ids)
    held = set(ids[: max(1, round(fraction * len(records)))])
    for i, record in enumerate(records):
        if record["split"] is None:
            record["split"] = "eval" if i in held else "train"
    return len(held)


@dataclass(frozen=True)
class StagedDrop:
    file: Path
    digest: str
    records: list[dict[str, Any]]
    held_out: int


def stage(path: Path, seed: int, holdout_fraction: float) -> StagedDrop:
    """Fingerprint and parse a drop; the digest keys everything the cycle produces."""
    if not path.is_file():
        raise FileNotFoundError(f"drop {path} does not exist or is not a file")
    digest = file_digest(path)
    records = read_drop(path)
    held = assign_holdout(records, holdout_fraction, seed)
    log.info(
        "staged %s: %d rows, digest %s, %d held out for eval",
        path.name,
        len(records),
        digest[:12],
        held,
    )
    return StagedDrop(path, digest, records, held)


@task(name="stage-drop", cache_policy=NO_CACHE)
def stage_drop(path: str, cfg: FreshtuneConfig) -> StagedDrop:
    """Parse the drop; a file that cannot be read is quarantined with the reason."""
    file = Path(path).expanduser().resolve()
    try:
        return stage(file, cfg.seed, cfg.data.holdout_fraction)
    except DropRejected as exc:
        from tasks.validate import quarantine

        quarantine(file, file_digest(file), exc, cfg)
        raise
