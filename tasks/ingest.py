"""Read a data drop (JSONL, CSV or Parquet) into uniform chat records, and fingerprint it.

A record is `{"id", "messages": [{"role", "content"}...], "split", "source", "facts", "line"}`;
a drop's records are held as columns (`tasks/records.py`), a row built when asked for.
Rows that are malformed in shape are kept (with `messages=None`) so that the Great
Expectations gate reports them by line instead of the reader silently dropping them.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import logging
import random
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune import faults
from freshtune.config import DataSettings, FreshtuneConfig
from freshtune.errors import DropRejected
from freshtune.files import file_digest
from tasks.archive import is_archive, unpack
from tasks.columns import gc_paused
from tasks.quarantine import check_not_quarantined, quarantine
from tasks.records import Records, plain_messages

log = logging.getLogger(__name__)

FORMATS = (".jsonl", ".json", ".csv", ".parquet")
# Fields a row may carry; other names are tolerated unless a required field is missing, in which
# case they are the likely renames and the message says so.
KNOWN_FIELDS = ("id", "messages", "prompt", "response", "split", "source", "facts", "slice", "pair")
_RENAMES = {
    "question": "prompt",
    "instruction": "prompt",
    "input": "prompt",
    "query": "prompt",
    "answer": "response",
    "output": "response",
    "completion": "response",
    "reply": "response",
    "conversation": "messages",
    "conversations": "messages",
    "turns": "messages",
    "uid": "id",
    "_id": "id",
    "key": "id",
}
_BOMS = {
    b"\xef\xbb\xbf": ("UTF-8 with a byte-order mark", "utf-8-sig"),
    b"\xff\xfe": ("UTF-16 (little-endian byte-order mark)", "utf-16"),
    b"\xfe\xff": ("UTF-16 (big-endian byte-order mark)", "utf-16"),
}


# A row is an object of lists of objects: 4 levels. Deeper rows are refused before anything
# recursive (orjson's writer stops at 254, Python's json at ~1000) meets them.
MAX_DEPTH = 16
# C0 control characters other than tab, newline and carriage return: raw (CSV) or as a JSON
# escape. A cheap scan of the whole text finds the few lines worth a closer look.
_CONTROL = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f]|\\u00(?:0[0-8bBcCeEfF]|1[0-9a-fA-F])")
_BAD_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


@dataclass(frozen=True)
class ReadLimits:
    """How strictly a drop is read; built from `data.*` settings."""

    encoding: str = "utf-8"
    max_file_bytes: int = 1 << 30
    max_line_bytes: int = 256 << 10
    max_unpack_ratio: float = 200.0
    # A JSONL file is read in blocks of whole lines of about this size: the reader holds one
    # block, never the whole text (a 325 MB drop took 1 GB as bytes, text and lines at once).
    block_bytes: int = 8 << 20

    @classmethod
    def of(cls, data: DataSettings) -> ReadLimits:
        return cls(
            data.encoding,
            int(data.max_file_mb * 2**20),
            int(data.max_line_kb * 2**10),
            data.max_unpack_ratio,
        )


@gc_paused()
def read_drop(path: Path, limits: ReadLimits | None = None) -> Records:
    """Parse a drop; a malformed file raises DropRejected naming the file, line and rule."""
    limits = limits or ReadLimits()
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DropRejected(path, "format", f"unsupported file type {suffix!r}; use {FORMATS}")
    _check_size(path, path.stat().st_size, limits)
    if suffix in (".jsonl", ".json") and limits.encoding != "utf-16":  # lines end at b"\n"
        return _stream_jsonl(path, limits)
    if suffix == ".parquet":
        raw = _read_parquet(path)
    else:
        data = path.read_bytes()
        text = decode(path, data, limits.encoding)
        _check_line_lengths(path, data, limits.max_line_bytes)
        raw = _read_csv(path, text, limits) if suffix == ".csv" else _read_jsonl(path, text)
        raw = _checked(path, raw, _flagged_lines(text))
    if suffix == ".parquet":
        raw = _checked(path, raw, None)
    if not raw:
        what = "a CSV header but no rows" if suffix == ".csv" else "no rows"
        raise DropRejected(path, "empty", f"the file has {what}")
    records = Records()
    for line, obj in raw:
        add_record(records, obj, line)
    return records.compact()


def _blocks(path: Path, size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of the file in blocks of about `size` bytes that end after a newline
    (the last may not); a line longer than a block makes a longer block."""
    offset, rest = 0, b""
    with path.open("rb") as file:
        while chunk := file.read(size):
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:  # no newline yet: the line goes on in the next read
                rest = chunk
                continue
            yield offset, chunk[:cut]
            offset, rest = offset + cut, chunk[cut:]
    if rest:
        yield offset, rest


@dataclass
class _Scan:
    """What a pass over the bytes found: the first problem of each kind, in file order."""

    lines: int = 1  # lines in the file, as `text.split("\n")` counts them
    nul: tuple[int, int] | None = None  # (offset, line)
    bad_byte: tuple[int, int, int] | None = None  # (offset, line, byte)
    longest: tuple[int, int] = (0, 1)  # (bytes, line)


def _scan(path: Path, limits: ReadLimits) -> _Scan:
    """The whole-file byte checks of `decode` and `_check_line_lengths`, a block at a time."""
    scan = _Scan()
    for offset, block in _blocks(path, limits.block_bytes):
        if offset == 0 and limits.encoding == "utf-8":
            _check_bom(path, block)
        if scan.nul is None and (nul := block.find(b"\x00")) >= 0 and limits.encoding == "utf-8":
            scan.nul = (offset + nul, scan.lines + block.count(b"\n", 0, nul))
        if scan.bad_byte is None:
            scan.bad_byte = _bad_byte(block, offset, scan.lines, limits.encoding)
        lengths = [len(line) for line in block.split(b"\n")]
        if (longest := max(lengths)) > scan.longest[0]:
            scan.longest = (longest, scan.lines + lengths.index(longest))
        scan.lines += block.count(b"\n")
    return scan


def _bad_byte(block: bytes, offset: int, line: int, encoding: str) -> tuple[int, int, int] | None:
    try:
        block.decode(_continued(encoding) if offset else encoding)
    except UnicodeDecodeError as exc:
        return offset + exc.start, line + block.count(b"\n", 0, exc.start), block[exc.start]
    return None


def _continued(encoding: str) -> str:
    """The encoding of a block after the first: a byte-order mark only starts a file."""
    return "utf-8" if encoding == "utf-8-sig" else encoding


def _raise_scanned(path: Path, scan: _Scan, limits: ReadLimits) -> None:
    """The byte problems in the order the whole-file reader finds them."""
    if scan.nul is not None:
        fix = "save as UTF-8 or set data.encoding=utf-16"
        detail = f"NUL byte at {scan.nul[0]}: looks like UTF-16; {fix}"
        raise DropRejected(path, "encoding", detail, scan.nul[1])
    if scan.bad_byte is not None:
        offset, line, byte = scan.bad_byte
        hint = "a latin-1/cp1252 file? save as UTF-8 or set data.encoding=latin-1"
        detail = f"invalid {limits.encoding} at byte {offset} (0x{byte:02x}); {hint}"
        raise DropRejected(path, "encoding", detail, line)
    longest, line = scan.longest
    if longest > limits.max_line_bytes:
        detail = f"line is {longest} bytes; data.max_line_kb={limits.max_line_bytes / 2**10:g}"
        raise DropRejected(path, "line_size", detail, line)


def _stream_jsonl(path: Path, limits: ReadLimits) -> Records:
    """`read_drop` of a JSONL file holding one block of it at a time: each row becomes a
    record as it is parsed. A first pass checks the bytes, so the same problem is named as
    when the whole file was read at once; a bad character is named after every row parsed."""
    scan = _scan(path, limits)
    _raise_scanned(path, scan, limits)
    records = Records()
    bad_char: DropRejected | None = None
    line_no = 0
    for offset, block in _blocks(path, limits.block_bytes):
        text = block.decode(_continued(limits.encoding) if offset else limits.encoding)
        flagged = {line_no + n for n in _flagged_lines(text)}
        lines = text.split("\n")  # "\n" only: JSON strings may hold U+2028 and other breaks
        if text.endswith("\n"):
            lines.pop()  # nothing after the block's last newline: the next block starts there
        for n, line in enumerate(lines, start=line_no + 1):
            if not line.strip():
                continue
            obj = _parsed(path, line, n, scan.lines)
            if bad_char is None and n in flagged and (where := _bad_string(obj)) is not None:
                detail = f"{where} holds a control character or an unpaired surrogate"
                bad_char = DropRejected(path, "characters", detail, n)
            add_record(records, obj, n)
        line_no += text.count("\n")
    if bad_char is not None:
        raise bad_char
    if not records:
        raise DropRejected(path, "empty", "the file has no rows")
    return records.compact()


def _check_size(path: Path, size: int, limits: ReadLimits) -> None:
    if size == 0:
        raise DropRejected(path, "empty", "the file is empty (0 bytes)")
    if size > limits.max_file_bytes:
        raise DropRejected(
            path,
            "size",
            f"{size / 2**20:.1f} MB exceeds data.max_file_mb={limits.max_file_bytes / 2**20:g}",
        )


def _check_line_lengths(path: Path, data: bytes, max_bytes: int) -> None:
    if len(data) <= max_bytes:
        return  # no line can be longer than the file
    lengths = [len(line) for line in data.split(b"\n")]
    if (longest := max(lengths)) > max_bytes:
        line = lengths.index(longest) + 1
        detail = f"line is {longest} bytes; data.max_line_kb={max_bytes / 2**10:g}"
        raise DropRejected(path, "line_size", detail, line)


def decode(path: Path, data: bytes, encoding: str = "utf-8") -> str:
    """Strict decoding: anything but clean UTF-8 is an error unless data.encoding allows it."""
    if encoding == "utf-8":
        _check_bom(path, data)
        if (nul := data.find(b"\x00")) >= 0:
            line = data[:nul].count(b"\n") + 1
            fix = "save as UTF-8 or set data.encoding=utf-16"
            detail = f"NUL byte at {nul}: looks like UTF-16; {fix}"
            raise DropRejected(path, "encoding", detail, line)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        hint = "a latin-1/cp1252 file? save as UTF-8 or set data.encoding=latin-1"
        detail = f"invalid {encoding} at byte {exc.start} (0x{data[exc.start]:02x}); {hint}"
        raise DropRejected(path, "encoding", detail, line) from None


def _check_bom(path: Path, data: bytes) -> None:
    for bom, (what, fix) in _BOMS.items():
        if data.startswith(bom):
            fix = f"save as UTF-8 or set data.encoding={fix}"
            detail = f"file is {what}: a byte-order mark; {fix}"
            raise DropRejected(path, "encoding", detail, 1)


def _flagged_lines(text: str) -> set[int]:
    """Lines that may hold a control character (a superset: the check that follows is exact)."""
    return {text.count("\n", 0, m.start()) + 1 for m in _CONTROL.finditer(text)}


def _checked(
    path: Path, rows: list[tuple[int, Any]], flagged: set[int] | None
) -> list[tuple[int, Any]]:
    """Reject a row holding a control character, a lone surrogate or nesting past MAX_DEPTH.

    `flagged`: the only lines that can hold a bad character (None: look at every row).
    """
    for line, obj in rows:
        if (flagged is None or line in flagged) and (where := _bad_string(obj)) is not None:
            detail = f"{where} holds a control character or an unpaired surrogate"
            raise DropRejected(path, "characters", detail, line)
    return rows


def _bad_string(obj: Any, where: str = "row") -> str | None:
    """Where in `obj` a string holds a character no text field may hold, or None."""
    if isinstance(obj, str):
        return where if _BAD_CHAR.search(obj) else None
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    )
    for key, value in items:
        if isinstance(key, str) and _BAD_CHAR.search(key):
            return f"{where} key"
        if (found := _bad_string(value, f"{where}[{key!r}]")) is not None:
            return found
    return None


def _too_deep(obj: Any) -> bool:
    """Whether `obj` nests past MAX_DEPTH (iterative: the row may be as deep as json allows)."""
    stack = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if isinstance(value, (dict, list)):
            if depth + 1 > MAX_DEPTH:
                return True
            stack.extend((child, depth + 1) for child in children)
    return False


def _check_depth(path: Path, line: str, line_no: int, obj: Any) -> Any:
    # Counting brackets is cheap and bounds the depth from above; only then walk the row.
    if line.count("[") + line.count("{") > MAX_DEPTH and _too_deep(obj):
        detail = f"row nests deeper than {MAX_DEPTH} levels of objects and lists"
        raise DropRejected(path, "nesting", detail, line_no)
    return obj


def _read_jsonl(path: Path, text: str) -> list[tuple[int, Any]]:
    rows = []
    lines = text.split("\n")  # "\n" only: JSON strings may hold U+2028 and other breaks
    for line_no, line in enumerate(lines, start=1):
        if line.strip():
            rows.append((line_no, _parsed(path, line, line_no, len(lines))))
    return rows


def _parsed(path: Path, line: str, line_no: int, last_line: int) -> Any:
    """One JSONL line's row; a line that is no row rejects the drop naming it."""
    import orjson

    try:  # orjson: 0.7 s for 1M lines against json's 1.75; json has the known messages
        return _check_depth(path, line, line_no, orjson.loads(line))
    except orjson.JSONDecodeError:
        obj = _check_depth(path, line, line_no, _json_line(path, line, line_no, last_line))
        # orjson refuses an unpaired surrogate escape (\ud800); json parses it into a
        # string no encoder can write back: refused here, not in a later stage.
        _checked(path, [(line_no, obj)], None)
        return obj


def _json_line(path: Path, line: str, line_no: int, last_line: int) -> Any:
    """json's reading of a line orjson refused: NaN is allowed, anything else rejects the drop."""
    try:
        obj = json.loads(line)
    except RecursionError:
        detail = f"row nests deeper than {MAX_DEPTH} levels of objects and lists"
        raise DropRejected(path, "nesting", detail, line_no) from None
    except json.JSONDecodeError as exc:
        detail = f"column {exc.colno}: {exc.msg}"
        if line_no == last_line:  # a cut-off upload: the last line stops mid-record
            detail = f"last line is cut off (no final newline; {detail})"
            raise DropRejected(path, "truncated", detail, line_no) from None
        raise DropRejected(path, "json", detail, line_no) from None
    return obj


def _read_csv(path: Path, text: str, limits: ReadLimits) -> list[tuple[int, Any]]:
    csv.field_size_limit(max(limits.max_line_bytes, 1 << 17))
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    try:
        for row in reader:
            if None in row:
                detail = f"{len(row[None])} more values than header columns"
                raise DropRejected(path, "csv", detail, reader.line_num)
            if row.get("messages"):
                row["messages"] = _json_or_none(row["messages"])
            if row.get("facts"):
                row["facts"] = [f for f in row["facts"].split("|") if f]
            # DictReader's line_num is the physical line where the row ended.
            rows.append((reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}))
    except csv.Error as exc:
        raise DropRejected(path, "csv", str(exc), reader.line_num) from None
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


def schema_problem(obj: Any) -> str | None:
    """Why a row does not have the record shape (missing, renamed or mistyped fields), or None."""
    if not isinstance(obj, dict):
        return f"row is a JSON {type(obj).__name__}, not an object"
    missing = [] if "id" in obj else ["id"]
    if "messages" not in obj:
        present = {"prompt", "response"} & obj.keys()
        if present:
            missing += sorted({"prompt", "response"} - present)
        else:
            missing.append("messages (or prompt + response)")
    if missing:
        return "; ".join([f"missing field {', '.join(missing)}", *_rename_hints(obj)])
    return _type_problem(obj)


def _rename_hints(obj: dict[str, Any]) -> list[str]:
    hints = []
    for name in obj:
        if name in KNOWN_FIELDS:
            continue
        guess = _RENAMES.get(name.lower()) or next(
            iter(difflib.get_close_matches(name.lower(), KNOWN_FIELDS, n=1)), None
        )
        if guess:
            hints.append(f"field {name!r} looks like a renamed {guess!r}")
    return hints


_EXPECTED_TYPES = {"id": (str, int), "prompt": str, "response": str, "split": str, "source": str}


def _type_problem(obj: dict[str, Any]) -> str | None:
    for name, types in _EXPECTED_TYPES.items():
        value = obj.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            return f"field {name!r} must be {_names(types)}, got {type(value).__name__}"
    if "messages" in obj:
        return _messages_problem(obj["messages"])
    return None


def _messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"field 'messages' must be a non-empty list, got {type(messages).__name__}"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be an object, got {type(message).__name__}"
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = type(message.get(key)).__name__ if key in message else "nothing"
                return f"messages[{i}].{key} must be a string, got {got}"
    return None


def _names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join({str: "a string", int: "an integer"}[t] for t in types)


def to_record(obj: Any, line: int) -> dict[str, Any]:
    """Both accepted shapes become chat messages; anything else keeps `messages=None`.

    `_schema` (why the row is malformed) and `_shape` are for the gate only; curation drops
    every `_` key before a snapshot is written.
    """
    records = Records()
    add_record(records, obj, line)
    return records[0]


_USER_ASSISTANT = ("user", "assistant")


def add_record(records: Records, obj: Any, line: int) -> None:
    """`to_record(obj, line)` appended to `records`, without building its dicts."""
    problem = schema_problem(obj)
    obj = obj if isinstance(obj, dict) else {}
    messages, odd, roles, texts = obj.get("messages"), None, None, []
    converted = messages is None and "prompt" in obj and "response" in obj
    # A null prompt or response passes the schema check and is caught here; messages in a
    # row without a schema problem were type-checked already.
    if converted:
        prompt, response = obj["prompt"], obj["response"]
        if isinstance(prompt, str) and isinstance(response, str):
            roles, texts = _USER_ASSISTANT, [prompt, response]
    elif (problem is None and "messages" in obj) or _is_chat(messages):
        roles = tuple([m["role"] for m in messages])
        texts = [m["content"] for m in messages]
        odd = None if plain_messages(messages) else messages
    shape = "chat" if "messages" in obj else "prompt_response" if converted else None
    facts = obj.get("facts") or []
    records.add_fields(
        None if obj.get("id") is None else str(obj["id"]),
        odd,
        roles,
        texts,
        _shared(obj.get("split")),
        str(obj.get("source") or ""),
        ([str(f) for f in facts] or None) if isinstance(facts, list) else None,
        # Eval rows may name their slice (current, hallucination, bias, general); bias rows
        # carry the id of their counterfactual pair.
        str(obj.get("slice") or ""),
        str(obj.get("pair") or ""),
        line,
        problem,
        shape,
    )


def _shared(value: Any) -> Any:
    """One string object for each split name, not one per row (a million rows: 50 MB)."""
    return sys.intern(value) if type(value) is str else value


def _is_chat(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)):
            return False
        if not isinstance(m.get("content"), str):
            return False
    return True


def prompt_of(record: dict[str, Any]) -> str | None:
    """The conversation up to the last assistant turn, as one string (the question asked)."""
    messages = record["messages"] or []
    if len(messages) == 2 and messages[0]["role"] == "user":  # most rows: one question
        return messages[0]["content"]
    turns = [m["content"] for m in messages[:-1] if m["role"] == "user"]
    return "\n".join(turns) if turns else None


def response_of(record: dict[str, Any]) -> str | None:
    messages = record["messages"] or []
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else None


def assign_holdout(records: Records | list[dict[str, Any]], fraction: float, seed: int) -> int:
    """Without eval rows in the drop, hold out a seeded fraction; returns how many."""
    table = isinstance(records, Records)
    splits = records.splits if table else [r["split"] for r in records]
    ids = records.ids if table else [r["id"] for r in records]
    splits, held = _held_out(splits, ids, fraction, seed)
    if table:
        records.splits[:] = splits  # a Records row is a copy: the column is the record
    else:
        for record, split in zip(records, splits):
            record["split"] = split
    return held


def _held_out(splits: list[Any], ids: list[Any], fraction: float, seed: int) -> tuple[list, int]:
    """The splits after `assign_holdout`, and how many rows it held out."""
    if any(split == "eval" for split in splits):
        return [split or "train" for split in splits], 0
    order = sorted(range(len(ids)), key=lambda i: str(ids[i]))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, round(fraction * len(ids)))])
    new = [
        split if split is not None else "eval" if i in held else "train"
        for i, split in enumerate(splits)
    ]
    return new, len(held)


@dataclass(frozen=True)
class StagedDrop:
    file: Path
    digest: str
    records: Records
    held_out: int


def stage(path: Path, digest: str, cfg: FreshtuneConfig) -> StagedDrop:
    """Parse a drop (unpacking an archive first); its digest keys the cycle."""
    limits = ReadLimits.of(cfg.data)
    records = _read_any(path, cfg.paths.landing / "staging" / digest[:16], limits)
    held = assign_holdout(records, cfg.data.holdout_fraction, cfg.seed)
    log.info(
        "staged %s: %d rows, digest %s, %d held out for eval",
        path.name,
        len(records),
        digest[:12],
        held,
    )
    return StagedDrop(path, digest, records, held)


def _read_any(path: Path, staging: Path, limits: ReadLimits) -> Records:
    """A data file as is; an archive's one data file via a staging copy, removed after."""
    if not is_archive(path):
        return read_drop(path, limits)
    member = unpack(path, staging, limits.max_file_bytes, limits.max_unpack_ratio)
    try:
        return read_drop(member, limits)
    except DropRejected as exc:  # name the archive, not the staging copy
        raise DropRejected(f"{path}!/{member.name}", exc.rule, exc.detail, exc.line) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@task(name="stage-drop", cache_policy=NO_CACHE)
@faults.after("stage")
def stage_drop(path: str, cfg: FreshtuneConfig) -> StagedDrop:
    """Parse the drop; a file that cannot be read is quarantined with the reason."""
    from tasks.landing import local_copy

    file = local_copy(path, cfg)  # a path, or an fsspec URL fetched into the workspace
    if not file.is_file():
        raise FileNotFoundError(f"drop {file} does not exist or is not a file")
    digest = file_digest(file)  # hashed once: a drop may be up to data.max_file_mb
    check_not_quarantined(file, digest, cfg)
    try:
        return stage(file, digest, cfg)
    except DropRejected as exc:
        quarantine(file, digest, exc, cfg)
        raise
