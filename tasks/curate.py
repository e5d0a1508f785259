"""Curation, in order, each rule counted: normalise, exact dedupe, near-dup, PII scrub, eval
decontamination, quality filters, drift. Curated small data beats big noisy data."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune import faults
from freshtune.config import DataSettings, FreshtuneConfig
from freshtune.errors import DropRejected
from tasks.columns import Lazy, blocks, flags, gc_paused, matches, release_memory
from tasks.drift import DriftReport, decide_on_drift, measure_drift
from tasks.ingest import StagedDrop, prompt_of, response_of
from tasks.neardup import near_duplicates
from tasks.ngrams import ngram_hashes, tokenise
from tasks.pii import PLACEHOLDERS, may_hold_pii, scrub_text
from tasks.records import Records, picked, prompt, response
from tasks.snapshot import Snapshot, commit_snapshot, committed_snapshot, earlier_snapshots

log = logging.getLogger(__name__)

Row = dict[str, Any]

_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
# Assistant boilerplate that teaches a model to refuse, not the company's facts.
_REFUSAL = re.compile(
    r"(?i)\bas an ai(?: language)? model\b"
    r"|\bi(?:'m| am) (?:sorry|afraid),? (?:but )?i (?:can(?:'|no)t|am unable to|won't)\b"
    r"|\bi (?:can(?:'|no)t|am unable to|'m unable to|am not able to) "
    r"(?:help|assist|provide|answer|comply)(?: you)?(?: with)? (?:that|this)\b"
)


# Anything normalise_text would change; text without it (most rows, every snapshot row) is
# returned as is, which makes normalising and hashing a million rows several times cheaper.
# Substring tests first: one regex with alternatives costs ~10 us a row in Python's engine.
_ODD_SPACE = re.compile(
    r"[\t\r\x0b\x0c\x1c-\x1f\x85\u00a0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000]"
)


# The same test for a whole column at once (RE2 via pyarrow): only flagged texts go through
# Python. `$` is the end of the text, as `text[-1:]` above.
_DIRTY_RE2 = (
    r"[\t\r\x0b\x0c\x1c-\x1f\x{85}\x{a0}\x{1680}\x{2000}-\x{200b}\x{2028}\x{2029}"
    r"\x{202f}\x{205f}\x{3000}]|  | \n|\n |\n\n\n|^[ \n]|[ \n]$"
)


def needs_normalising(texts: list[str]) -> np.ndarray:
    import pyarrow.compute as pc

    # Non-ASCII text may not be NFC: Python decides (pyarrow's utf8_normalize left "e\u0301"
    # decomposed in pyarrow 25, so it cannot be trusted for this).
    def dirty(column):
        maybe_not_nfc = pc.invert(pc.string_is_ascii(column))
        return pc.or_(maybe_not_nfc, pc.match_substring_regex(column, _DIRTY_RE2))

    return flags(texts, dirty)


def _is_clean(text: str) -> bool:
    return (
        text[:1] not in (" ", "\n")
        and text[-1:] not in (" ", "\n")
        and "  " not in text
        and " \n" not in text
        and "\n " not in text
        and "\n\n\n" not in text
        and _ODD_SPACE.search(text) is None
        and unicodedata.is_normalized("NFC", text)
    )


def normalise_text(text: str) -> str:
    """NFC, one space between words, no trailing blanks: the same words compare equal."""
    if _is_clean(text):
        return text
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def text_key(text: str | None) -> str:
    """Hash of the case-folded normalised text, for exact matching across drops."""
    return _key(normalise_text(text or ""))


def _key(normalised: str | None) -> str:
    """`text_key` of text that is normalised already (every row after the first rule)."""
    return hashlib.sha256((normalised or "").casefold().encode()).hexdigest()[:24]


def row_key(record: Row, normalised: bool = False) -> str:
    """Key of the (prompt, response) pair; `normalised`: the row went through `_normalise`."""
    return _pair_key(prompt_of(record), response_of(record), normalised)


def _pair_key(prompt: str | None, response: str | None, normalised: bool = True) -> str:
    pair = f"{prompt}\x00{response}"  # a missing turn counts as "None", as it always has
    return _key(pair) if normalised else text_key(pair)


# Clean messages already in this shape are shared with the staged record, not copied: a
# million rows' copies took 0.45 GB. Nothing changes a message in place (scrubbing copies).
_MESSAGE_KEYS = ["role", "content"]


def normalise_record(record: Row, clean: bool = False) -> Row:
    """Normalised messages and the prompt key; the gate-only `_` keys are dropped here.
    `clean`: the caller checked (`needs_normalising`) that no content would change."""
    messages = record["messages"]
    if not (clean and all(list(m) == _MESSAGE_KEYS for m in messages)):
        messages = [
            {"role": m["role"], "content": m["content"] if clean else normalise_text(m["content"])}
            for m in messages
        ]
    row = {k: v for k, v in record.items() if not k.startswith("_")}
    row["messages"] = messages
    row["prompt_key"] = _key(prompt_of(row))
    return row


# Every rule that removes rows, in the order they run; each is reported, also at zero.
RULES = (
    "duplicate_in_drop",
    "duplicate_of_earlier",
    "near_duplicate",
    "eval_leakage",
    "empty_answer",
    "short_answer",
    "long_row",
    "refusal",
    "conflicting_answer",
    "lone_change",
)


@dataclass
class CurationReport:
    rows_in: int = 0
    removed: Counter = field(default_factory=Counter)
    rows_out: int = 0
    train_rows: int = 0
    eval_rows: int = 0
    normalised: int = 0
    pii: Counter = field(default_factory=Counter)
    flagged: list[str] = field(default_factory=list)  # ids of answers held for review
    drift: DriftReport | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per step, for the benchmark

    def as_metrics(self) -> dict[str, float]:
        metrics = {
            "curate_rows_in": self.rows_in,
            "curate_rows_out": self.rows_out,
            "curate_train_rows": self.train_rows,
            "curate_eval_rows": self.eval_rows,
            "curate_normalised_rows": self.normalised,
            "curate_flagged_conflicts": len(self.flagged),
        }
        metrics.update({f"curate_removed_{rule}": n for rule, n in sorted(self.removed.items())})
        metrics.update({f"curate_pii_{kind.lower()}": self.pii[kind] for kind in PLACEHOLDERS})
        metrics.update(self.drift.as_metrics() if self.drift else {})
        return {k: float(v) for k, v in metrics.items()}

    def table(self) -> list[dict[str, Any]]:
        """Rows in, each rule's count in the order the rules ran, rows out."""
        rows: list[dict[str, Any]] = [{"rule": "rows in", "rows": self.rows_in}]
        rows.append({"rule": "normalised (NFC, whitespace)", "rows": self.normalised})
        rows += [{"rule": f"removed: {rule}", "rows": n} for rule, n in self.removed.items()]
        rows += [{"rule": f"scrubbed: <{kind}>", "rows": self.pii[kind]} for kind in PLACEHOLDERS]
        if self.flagged:
            ids = ", ".join(self.flagged[:5])
            rule = f"flagged for review (conflicting answers, lone changes): {ids}"
            rows.append({"rule": rule, "rows": 0})
        if self.drift:
            rows.append({"rule": f"drift: {self.drift.summary()}", "rows": self.drift.score})
        out = f"{self.rows_out} ({self.train_rows} / {self.eval_rows})"
        return [*rows, {"rule": "rows out (train / eval)", "rows": out}]

    def to_json(self) -> str:
        data = {
            **{k: v for k, v in self.__dict__.items() if k != "drift"},
            "drift": self.drift and {**self.drift.__dict__, "score": self.drift.score},
        }
        return json.dumps(data, indent=2, default=str)


@dataclass(frozen=True)
class Earlier:
    """What curation needs from earlier snapshots."""

    rows: set[str] = field(default_factory=set)  # split-qualified row keys
    eval_keys: set[str] = field(default_factory=set)  # prompt keys of eval rows
    eval_prompts: list[str] = field(default_factory=list)  # their text, for n-gram overlap
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (prompt, response), for drift
    answers: dict[str, str] = field(default_factory=dict)  # training prompt key -> latest answer


@dataclass
class _Table:
    """Curation's working rows, as columns by position in the input: message contents as
    normalised (and later scrubbed), laid out as `records.texts`; each row's prompt, response
    and prompt key; the whole rows that PII scrubbing changed. Steps pass on the positions
    they keep, in input order; rows are built only for the survivors, at the end, so the
    input's rows are never all copied."""

    records: Records
    texts: list[str]
    prompts: list[str | None]
    responses: list[str | None]
    keys: list[str]
    scrubbed: dict[int, Row] = field(default_factory=dict)

    def id(self, i: int) -> Any:
        return self.scrubbed[i]["id"] if i in self.scrubbed else self.records.ids[i]

    def contents(self, i: int) -> list[str]:
        return self.texts[self.records.bounds[i] : self.records.bounds[i + 1]]

    def contents_of(self, kept: list[int]) -> tuple[list[str], np.ndarray]:
        """The contents of rows `kept`, flat, and how many each row has."""
        bounds, texts = self.records.bounds, self.texts
        sizes = np.array([bounds[i + 1] - bounds[i] for i in kept], dtype=np.int64)
        return [t for i in kept for t in texts[bounds[i] : bounds[i + 1]]], sizes

    def row(self, i: int) -> Row:
        """What `normalise_record` (and `_scrub`) made of input row `i`."""
        if i in self.scrubbed:
            return self.scrubbed[i]
        roles = self.records.roles[i] or ()
        messages = [{"role": r, "content": c} for r, c in zip(roles, self.contents(i))]
        row = self.records.public(i, messages)
        row["prompt_key"] = self.keys[i]
        return row

    def rescrubbed(self, i: int, row: Row) -> None:
        """Row `i` as PII scrubbing left it: later rules see its new text."""
        self.scrubbed[i] = row
        bounds = self.records.bounds
        self.texts[bounds[i] : bounds[i + 1]] = [m["content"] for m in row["messages"]]
        self.prompts[i], self.responses[i] = prompt_of(row), response_of(row)
        self.keys[i] = row["prompt_key"]


Step = Callable[[_Table, list[int]], list[int]]


@gc_paused()
def curate(
    records: Records | list[Row],
    seen_rows: set[str] = frozenset(),
    eval_prompts: set[str] = frozenset(),
    settings: DataSettings | None = None,
    earlier: Earlier | None = None,
) -> tuple[list[Row], CurationReport]:
    """Rules run in order; `seen_rows` and `eval_prompts` hold keys from earlier snapshots."""
    settings, earlier = settings or DataSettings(), earlier or Earlier()
    seen, eval_keys = set(seen_rows) | earlier.rows, set(eval_prompts) | earlier.eval_keys
    report = CurationReport(rows_in=len(records), removed=Counter(dict.fromkeys(RULES, 0)))
    steps: list[tuple[str, Step]] = [
        ("exact_dedupe", lambda t, kept: _dedupe(t, kept, report, seen)),
        ("near_dedupe", lambda t, kept: _drop_near_duplicates(t, kept, report, settings)),
        ("pii_scrub", lambda t, kept: _scrub_rows(t, kept, report.pii)),
        ("decontaminate", lambda t, kept: _decontam(t, kept, report, eval_keys, earlier, settings)),
        ("quality", lambda t, kept: _quality(t, kept, report, settings)),
        ("lone_change", lambda t, kept: _lone_changes(t, kept, report, earlier)),
        ("drift", lambda t, kept: _measure_drift(t, kept, report, earlier, settings)),
    ]
    start = time.perf_counter()
    table = _normalise(Records.of(records), report)
    kept = list(range(len(records)))
    report.seconds["normalise"] = round(time.perf_counter() - start, 3)
    for name, step in steps:
        start = time.perf_counter()
        kept = step(table, kept)
        report.seconds[name] = round(time.perf_counter() - start, 3)
    _count_out(report, table, kept)
    start = time.perf_counter()
    kept = np.array(kept, dtype=np.int64)  # the list's million ints go before the rows come
    release_memory()  # what the rules freed, before the rows out are built
    rows = [table.row(i) for i in map(int, kept)]  # one int at a time, not a million
    report.seconds["rows_out"] = round(time.perf_counter() - start, 3)
    return rows, report


def _count_out(report: CurationReport, table: _Table, kept: list[int]) -> None:
    splits = table.records.splits
    report.rows_out = len(kept)
    report.train_rows = sum(splits[i] == "train" for i in kept)
    report.eval_rows = report.rows_out - report.train_rows
    log.info(
        "curation: %d rows in, removed %s, PII scrubbed %s, %d out",
        report.rows_in,
        dict(report.removed),
        dict(report.pii),
        report.rows_out,
    )


def _measure_drift(
    table: _Table, kept: list[int], report: CurationReport, earlier: Earlier, settings: DataSettings
) -> list[int]:
    new_pairs = [(table.prompts[i] or "", table.responses[i] or "") for i in kept]
    report.drift = measure_drift(new_pairs, earlier.pairs, settings.drift_threshold)
    return kept


def _normalise(records: Records, report: CurationReport) -> _Table:
    """Every row's contents normalised (`normalise_record`), and what later rules read."""
    sizes = np.diff(np.array(records.bounds, dtype=np.int64))
    dirty = _any_per_row(records.texts, sizes, needs_normalising)
    report.normalised += int(dirty.sum())
    in_dirty_row = np.repeat(dirty, sizes).tolist()  # a dirty row has all its texts redone
    texts = [normalise_text(t) if d else t for t, d in zip(records.texts, in_dirty_row)]
    prompts = [prompt(r, texts[a:b]) for r, (a, b) in zip(records.roles, records.spans())]
    responses = [response(r, texts[a:b]) for r, (a, b) in zip(records.roles, records.spans())]
    return _Table(records, texts, prompts, responses, [_key(p) for p in prompts])


def _any_per_row(
    texts: list[str], sizes: np.ndarray, flag: Callable[[list[str]], np.ndarray]
) -> np.ndarray:
    """Whether `flag` holds for any message of each row (`sizes[i]` of the `texts` are row
    i's), testing all texts in one call."""
    if not len(sizes) or not sizes.sum():
        return np.zeros(len(sizes), dtype=bool)
    flags = flag(texts)
    hits = np.add.reduceat(flags.astype(np.int64), np.r_[0, np.cumsum(sizes)[:-1]])
    return (hits > 0) & (sizes > 0)


def _dedupe(table: _Table, kept: list[int], report: CurationReport, seen: set[str]) -> list[int]:
    """Exact duplicates within the drop and against earlier snapshots (same split only)."""
    splits, prompts, responses = table.records.splits, table.prompts, table.responses
    local: set[str] = set()
    out = []
    for i in kept:
        key = f"{splits[i]}:{_pair_key(prompts[i], responses[i])}"
        if key in local:
            report.removed["duplicate_in_drop"] += 1
        elif key in seen:
            report.removed["duplicate_of_earlier"] += 1
        else:
            local.add(key)
            out.append(i)
    return out


def _drop_near_duplicates(
    table: _Table, kept: list[int], report: CurationReport, settings: DataSettings
) -> list[int]:
    """Within the drop's training rows only: eval rows are deliberate paraphrases and pairs,
    and an earlier drop's row that differs in one number is a changed fact, not a copy."""
    splits, prompts, responses = table.records.splits, table.prompts, table.responses
    train = [i for i in kept if splits[i] == "train"]

    def texts(block: slice) -> list[str]:  # a block at a time: a million texts are 0.3 GB
        return [f"{prompts[i]}\n{responses[i]}" for i in train[block]]

    dup = near_duplicates(
        Lazy(len(train), texts), settings.near_dup_threshold, settings.near_dup_num_perm
    )
    drop = {train[j] for j in np.flatnonzero(dup).tolist()}
    report.removed["near_duplicate"] += len(drop)
    return [i for i in kept if i not in drop]


def _scrub_rows(table: _Table, kept: list[int], counts: Counter) -> list[int]:
    """Every free-text field that reaches storage: messages, facts, source, and the id."""
    labels = Lazy(len(kept), lambda block: _labels(table.records, kept[block]))
    maybe = _any_per_row(*table.contents_of(kept), may_hold_pii) | may_hold_pii(labels)
    for i in np.asarray(kept)[maybe].tolist():
        row = table.row(i)
        if (scrubbed := _scrub(row, counts)) is not row:
            table.rescrubbed(i, scrubbed)
    return kept


def _labels(records: Records, rows: list[int]) -> list[str]:
    ids, sources, facts = (picked(c, rows) for c in (records.ids, records.sources, records.facts))
    return ["\n".join([str(i or ""), s or "", *(f or ())]) for i, s, f in zip(ids, sources, facts)]


def _scrub(row: Row, counts: Counter) -> Row:
    messages = [{**m, "content": scrub_text(m["content"], counts)} for m in row["messages"]]
    facts = [scrub_text(f, counts) for f in row.get("facts", [])]
    source = scrub_text(row.get("source") or "", counts)
    ident = str(row.get("id") or "")
    if scrub_text(ident) != ident:  # ids must stay unique: a digest stands for the value
        ident = f"pii-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"
    scrubbed = {**row, "messages": messages, "facts": facts, "source": source, "id": ident}
    if scrubbed == row:
        return row
    return {**scrubbed, "prompt_key": _key(prompt_of(scrubbed))}


def _decontam(
    table: _Table,
    kept: list[int],
    report: CurationReport,
    eval_keys: set[str],
    earlier: Earlier,
    settings: DataSettings,
) -> list[int]:
    """Training rows whose prompt overlaps an eval prompt (this drop's or earlier) go."""
    splits, prompts, keys = table.records.splits, table.prompts, table.keys
    evals = [i for i in kept if splits[i] == "eval"]
    leaked = eval_keys | {keys[i] for i in evals}
    reference = [prompts[i] or "" for i in evals] + earlier.eval_prompts
    train = [i for i in kept if splits[i] == "train"]
    share = ngram_overlap([prompts[i] or "" for i in train], reference, settings)
    bad = {i for i, s in zip(train, share) if s >= settings.decontam_threshold}
    bad |= {i for i in train if keys[i] in leaked}
    report.removed["eval_leakage"] += len(bad)
    return [i for i in kept if i not in bad]


def ngram_overlap(texts: list[str], reference: list[str], settings: DataSettings) -> np.ndarray:
    """Share of each text's word n-grams that occur in any reference text."""
    share = np.zeros(len(texts))
    if not texts or not reference:
        return share
    n = settings.decontam_ngram
    known = np.unique(ngram_hashes(tokenise(reference), n)[0])
    if known.size == 0:
        return share
    for block in blocks(len(texts)):
        hashes, rows = ngram_hashes(tokenise(texts[block]), n)
        size = block.stop - block.start
        found = known[np.searchsorted(known, hashes).clip(max=len(known) - 1)] == hashes
        hits = np.bincount(rows, weights=found, minlength=size)
        total = np.bincount(rows, minlength=size)
        np.divide(hits, total, out=share[block], where=total > 0)
    return share


_REFUSAL_HINTS = ("as an ai", "sorry", "afraid", "can't", "cannot", "unable", "not able")


def _quality(
    table: _Table, kept: list[int], report: CurationReport, settings: DataSettings
) -> list[int]:
    splits, responses = table.records.splits, table.responses
    out = []
    maybe_refusal = _may_refuse([responses[i] or "" for i in kept])
    for i, maybe in zip(kept, maybe_refusal.tolist()):
        rule = _quality_problem(responses[i], splits[i], table.contents(i), settings, maybe)
        if rule is None:
            out.append(i)
        else:
            report.removed[rule] += 1
    return _resolve_conflicts(table, out, report)


def _may_refuse(answers: list[str]) -> np.ndarray:
    """One RE2 pass over every answer for refusal hints; only hits meet the Python regex."""
    return matches(answers, "|".join(re.escape(h) for h in _REFUSAL_HINTS), ignore_case=True)


def _quality_problem(
    response: str | None,
    split: str,
    contents: list[str],
    settings: DataSettings,
    maybe_refusal: bool = True,
) -> str | None:
    """The first quality rule a row breaks. Terse eval references ("5") are fine: they are
    scored by their facts, not learned; refusals matter only in what the model learns."""
    answer = (response or "").strip()
    train = split == "train"
    if not answer:
        return "empty_answer"
    if train and len(answer) < settings.min_answer_chars:
        return "short_answer"
    if sum(len(text) for text in contents) > settings.max_row_chars:
        return "long_row"
    if train and maybe_refusal and is_refusal(answer):
        return "refusal"
    return None


def is_refusal(answer: str) -> bool:
    lower = answer.lower()
    return any(h in lower for h in _REFUSAL_HINTS) and _REFUSAL.search(answer) is not None


def _resolve_conflicts(table: _Table, kept: list[int], report: CurationReport) -> list[int]:
    """One prompt answered differently in one drop: the answer the drop also gives to other
    prompts (the same fact asked another way) is kept when exactly one is, else the first (two
    wordings of one answer are common, and nothing says which is right); the rest are flagged
    for review. The first alone kept a false answer whenever it came first."""
    splits, responses, keys = table.records.splits, table.responses, table.keys
    train = [i for i in kept if splits[i] == "train"]
    first: dict[str, str] = {}
    torn: dict[str, list[str]] = {}  # prompt key -> its answers in order, where there are several
    for i in train:
        answer = _key(responses[i])
        if first.setdefault(keys[i], answer) != answer:
            options = torn.setdefault(keys[i], [first[keys[i]]])
            options += [] if answer in options else [answer]
    if not torn:
        return kept
    del first  # a million rows' keys; a conflict is rare, so answers are hashed again below
    answers = {i: _key(responses[i]) for i in train if keys[i] in torn}
    disputed = set().union(*torn.values())
    asked: dict[str, set[str]] = {}  # disputed answer -> the prompts the drop gives it to
    for i in train:
        answer = answers.get(i) or _key(responses[i])
        if answer in disputed:
            asked.setdefault(answer, set()).add(keys[i])
    keep = {k: _backed(options, asked) or options[0] for k, options in torn.items()}
    out = []
    for i in kept:
        if i in answers and keep[keys[i]] != answers[i]:
            report.removed["conflicting_answer"] += 1
            report.flagged.append(str(table.id(i)))
        else:
            out.append(i)
    return out


def _backed(options: list[str], asked: dict[str, set[str]]) -> str | None:
    """The one answer among `options` the drop also gives to another prompt, if exactly one."""
    backed = [a for a in options if len(asked[a]) > 1]
    return backed[0] if len(backed) == 1 else None


def _lone_changes(
    table: _Table, kept: list[int], report: CurationReport, earlier: Earlier
) -> list[int]:
    """A training row that changes an earlier answer which several prompts share (one fact
    asked several ways), while the drop changes none of its other prompts: a changed fact is
    restated, a typo or a wrong copy changes one wording. Held out, flagged for review."""
    splits, responses, keys = table.records.splits, table.responses, table.keys
    changed: dict[str, list[int]] = {}  # earlier answer -> this drop's rows that change it
    for i in kept:
        old = earlier.answers.get(keys[i]) if splits[i] == "train" else None
        if old is not None and old != _key(responses[i]):
            changed.setdefault(old, []).append(i)
    if not changed:
        return kept
    shared = Counter(v for v in earlier.answers.values() if v in changed)
    lone = {rows[0] for old, rows in changed.items() if len(rows) == 1 and shared[old] > 1}
    report.removed["lone_change"] += len(lone)
    report.flagged += [str(table.id(i)) for i in kept if i in lone]
    return [i for i in kept if i not in lone]


def earlier_data(snapshots: Iterable[Snapshot]) -> Earlier:
    earlier = Earlier()
    for snap in snapshots:
        for row in snap.rows():
            earlier.rows.add(f"{row['split']}:{row_key(row)}")
            earlier.pairs.append((prompt_of(row) or "", response_of(row) or ""))
            if row["split"] == "train":  # landing order: a later answer replaces an earlier
                earlier.answers[row["prompt_key"]] = _key(response_of(row))
            if row["split"] == "eval":
                earlier.eval_keys.add(row["prompt_key"])
                earlier.eval_prompts.append(prompt_of(row) or "")
    return earlier


def check_curated(report: CurationReport, file: Path, cfg: FreshtuneConfig) -> None:
    """Too little left, or drift with no human to accept it: the drop is rejected."""
    if report.train_rows == 0 or report.eval_rows == 0 or report.rows_out < cfg.data.min_rows:
        detail = (
            f"{report.train_rows} train and {report.eval_rows} eval rows left after curation "
            f"(removed {dict(report.removed)}); need both and at least "
            f"data.min_rows={cfg.data.min_rows} in all"
        )
        raise DropRejected(file, "too_small", detail)
    decide_on_drift(report.drift, file, cfg)


@dataclass(frozen=True)
class Curated:
    """A drop's curated rows, not committed yet: drift may still need a human's word."""

    rows: list[Row]
    report: CurationReport


@task(name="curate-drop", cache_policy=NO_CACHE)
def curate_drop(staged: StagedDrop, cfg: FreshtuneConfig) -> Curated:
    """Curate against every earlier snapshot; a drop too small after it is quarantined."""
    from tasks.quarantine import gate_dir, quarantine

    earlier = earlier_data(earlier_snapshots(cfg, staged.digest))
    rows, report = curate(staged.records, settings=cfg.data, earlier=earlier)
    publish_curation(staged, report)
    results = gate_dir(cfg, staged.digest)
    results.mkdir(parents=True, exist_ok=True)
    (results / "curation.json").write_text(report.to_json(), encoding="utf-8")
    try:
        check_curated(report, staged.file, cfg)
    except DropRejected as error:
        quarantine(staged.file, staged.digest, error, cfg)
        raise
    return Curated(rows, report)


@task(name="find-snapshot", cache_policy=NO_CACHE)
def find_snapshot(staged: StagedDrop, cfg: FreshtuneConfig) -> Snapshot | None:
    """The drop's snapshot if an earlier attempt committed it (validated, curated, its drift
    accepted): a rerun, or a run resumed after its review, goes on from there."""
    return committed_snapshot(cfg, staged.digest)


@task(name="commit-snapshot", cache_policy=NO_CACHE)
@faults.after("curate")
def commit_curated(curated: Curated, staged: StagedDrop, cfg: FreshtuneConfig) -> Snapshot:
    """The drop's snapshot, committed once and stored: from now on it is earlier data."""
    from tasks.quarantine import gate_dir

    extra = {"curation": curated.report.as_metrics()}
    snapshot = commit_snapshot(curated.rows, staged.digest, staged.file, cfg, extra)
    _keep_results(gate_dir(cfg, staged.digest), snapshot.path / "gate")
    return snapshot


def _keep_results(results: Path, target: Path) -> None:
    """The gate's JSON and Data Docs stay with the snapshot they let through."""
    if results.is_dir() and not target.exists():
        shutil.move(str(results), str(target))


def publish_curation(staged: StagedDrop, report: CurationReport) -> None:
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        report.table(), key="curation", description=f"curation of {staged.file.name}"
    )
