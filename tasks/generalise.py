"""A reviewer's correction taught in the drop's own wordings, not only the flagged one.

A drop asks each fact several ways: training rows that share one answer are one fact in
several wordings. The group whose answer reads most like the correction ("The Horizon plan
costs $52 per month." against "The Comet plan costs $47 per month.") shows where the subject
sits; its questions with their subject swapped for the flagged one are the flagged fact in the
drop's wordings. Wordings that match an evaluation question are never used.

A flagged hallucination about a name no training row uses ("Nimbus Mobile has no Aurora
plan.") is also taught as the same refusal about other names the drop does not know, asked
the ways the drop asks about the things it does sell: the drop's words are its catalogue, so
the model learns to decline unknown names, not only the flagged one. With contrasts, the
drop's own rows asked in those wordings about names it does know come with them, answered as
the drop answers them: where declining stops is taught too, not only declining.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from tasks.ingest import prompt_of, response_of

# What a generated row was made as, the last part of its `source` ("review:hallucination:refusal"):
# tasks.mix keeps these whole for one cycle only, then they are replayed like any earlier row.
WORDING = "wording"
REFUSAL = "refusal"
CONTRAST = "contrast"
MIN_SIMILARITY = 0.5  # answers less alike than this are another kind of fact
MAX_SLOTS = 3  # differing spans: subject, value, and one more at most
_WORD = re.compile(r"\S+")


def is_generated(row: dict[str, Any]) -> bool:
    """A row made from a flag (another wording, a refusal, a contrast), not the flagged row."""
    return str(row.get("source", "")).rsplit(":", 1)[-1] in (WORDING, REFUSAL, CONTRAST)


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def swapped_spans(mine: str, theirs: str) -> list[tuple[str, str]]:
    """(my span, their span) for each place two similar sentences differ; [] if unalike."""
    a, b = _words(mine), _words(theirs)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if matcher.ratio() < MIN_SIMILARITY:
        return []
    spans = [
        (" ".join(a[i1:i2]), " ".join(b[j1:j2]))
        for op, i1, i2, j1, j2 in matcher.get_opcodes()
        if op == "replace"
    ]
    return spans if 0 < len(spans) <= MAX_SLOTS else []


def wordings(correction: str, train_rows: list[dict[str, Any]]) -> list[str]:
    """Questions that ask the corrected fact the ways the drop asks its facts."""
    groups: dict[str, set[str]] = defaultdict(set)
    for row in train_rows:
        if (answer := response_of(row)) and (question := prompt_of(row)):
            groups[answer].add(question)
    if correction in groups:  # the drop already teaches this answer: its own wordings
        return sorted(groups[correction])
    best: tuple[float, list[str]] = (0.0, [])
    for answer, questions in groups.items():
        if len(questions) < 2:
            continue
        for mine, theirs in swapped_spans(correction, answer):
            asked = [q for q in questions if _has_phrase(q, theirs)]
            if len(asked) < 2:
                continue  # the value, not the subject: questions do not name it
            ratio = difflib.SequenceMatcher(None, correction, answer).ratio()
            if ratio > best[0]:
                best = (ratio, sorted(_swap(q, theirs, mine) for q in asked))
    return best[1]


def _phrase(words: str) -> re.Pattern[str]:
    """`words` as whole words: "Comet" in "the Comet plan", not in "Comets"."""
    return re.compile(rf"(?<!\S){re.escape(words)}(?!\S)")


def _has_phrase(text: str, phrase: str) -> bool:
    return _phrase(phrase).search(text) is not None


def _swap(text: str, old: str, new: str) -> str:
    return _phrase(old).sub(lambda _: new, text)


def generalised_rows(
    flagged: dict[str, Any],
    correction: str,
    train_rows: list[dict[str, Any]],
    eval_prompts: set[str],
) -> list[dict[str, Any]]:
    """Training rows of the correction, one per wording of the drop, eval wordings left out."""
    asked = {(prompt_of(flagged) or "").casefold(), *(p.casefold() for p in eval_prompts)}
    rows = []
    for i, question in enumerate(wordings(correction, train_rows)):
        if question.casefold() in asked:
            continue
        asked.add(question.casefold())
        rows.append(_asked(flagged, f"-w{i}", question, correction, WORDING))
    return rows


# Names for things a drop does not sell. A flagged invention about one unknown name is taught
# as refusals about some of these too, so the model learns to decline names it was never
# flagged on; each is checked against every word the drop's rows and evaluation use first.
DECOYS = (
    "Kestrel", "Juniper", "Tundra", "Cascade", "Meridian", "Quill", "Sable", "Larkspur",
    "Basalt", "Fjord", "Marlin", "Opal", "Thistle", "Wren", "Cobalt", "Sequoia",
    "Alder", "Bramble", "Caldera", "Dune", "Ember", "Falcon", "Garnet", "Heron",
    "Indigo", "Jasper", "Kelp", "Lagoon", "Mesa", "Nettle", "Onyx", "Pebble",
)  # fmt: skip
_CAPITALISED = re.compile(r"^[A-Z][\w'-]*$")


@dataclass(frozen=True)
class Reading:
    """Where a flagged question names what the drop does not know: "Nimbus Flip phone" is
    prefix "Nimbus", name "Flip", head "phone"."""

    prefix: str
    name: str
    head: str


def _bare(word: str) -> str:
    return word.strip(".,;:!?\"'()[]")


def vocabulary(rows: list[dict[str, Any]]) -> set[str]:
    """Every word the rows use, case-folded: the names a drop knows (its catalogue)."""
    return {
        _bare(w).casefold()
        for row in rows
        for message in row.get("messages", [])
        for w in _words(str(message.get("content", "")))
    }


def unknown_name(question: str, correction: str, known: set[str]) -> list[Reading]:
    """What a flagged question asked about that the drop does not know: the capitalised words
    the question and the correction share and no training row uses, read with each of the
    next three words as the head noun ("Vortex unlimited plan": Vortex + unlimited, Vortex
    unlimited + plan), and the known capitalised words before it ("Nimbus" of "Nimbus Flip
    phone"). [] when there is no such name."""
    raw = _words(question)
    words = [_bare(w) for w in raw]
    said = {_bare(w) for w in _words(correction)}
    for start in range(len(words)):
        end = start
        while end < len(words) and _unknown(words[end], said, known):
            end += 1
        if end > start:
            before = start
            while before > 0 and _CAPITALISED.match(words[before - 1]):
                before -= 1
            prefix = " ".join(words[before:start])
            last = next((i for i in range(end, len(raw)) if raw[i] != words[i]), len(raw) - 1)
            heads = range(end, min(end + 3, last + 1, len(words)))
            return [Reading(prefix, " ".join(words[start:h]), words[h]) for h in heads]
    return []


def _unknown(word: str, said: set[str], known: set[str]) -> bool:
    return bool(_CAPITALISED.match(word)) and word in said and word.casefold() not in known


def _slot(head: str) -> re.Pattern[str]:
    """A known name before `head`: "the Summit plan" -> Summit."""
    return re.compile(rf"(?<!\S)((?:[A-Z][\w'-]*\s)+){re.escape(head)}\b")


def templates(reading: Reading, train_rows: list[dict[str, Any]], known: set[str]) -> list[str]:
    """The drop's own questions about a known thing of the reading's kind, its name a `{}`
    slot after the reading's prefix ("How much does the Nimbus {} phone cost?")."""
    found, slot_of = set(), _slot(reading.head)
    for row in train_rows:
        question = prompt_of(row) or ""
        match = slot_of.search(question)
        names = match.group(1).split() if match else []
        if not names or not all(w.casefold() in known for w in names):
            continue
        kept = reading.prefix.split()
        if names[: len(kept)] != kept or len(names) == len(kept):
            continue
        slot = " ".join([*kept, "{}"])
        found.add(f"{question[: match.start(1)]}{slot} {question[match.end(1) :]}")
    return sorted(found)


def refusal_rows(
    flagged: dict[str, Any],
    correction: str,
    train_rows: list[dict[str, Any]],
    eval_prompts: set[str],
    names: int,
    known: set[str] | None = None,
    contrasts: bool = False,
) -> list[dict[str, Any]]:
    """A flagged hallucination taught as the same refusal about `names` other names the drop
    does not know, each asked in two of the drop's wordings; no decoy is a word of the drop
    or of an evaluation question, no row an evaluation question. `known`: the drop's
    `vocabulary`, where the caller has it already. `contrasts`: up to as many of the drop's
    own rows asked in those wordings about names it knows (`contrast_rows`)."""
    question = prompt_of(flagged) or ""
    known = vocabulary(train_rows) if known is None else known
    readings = unknown_name(question, correction, known) if names else []
    found = next(((r.name, t) for r in readings if (t := templates(r, train_rows, known))), None)
    if found is None:
        return []
    name, shapes = found
    taken = known | {_bare(w).casefold() for p in (*eval_prompts, question) for w in _words(p)}
    decoys = sorted(
        (d for d in DECOYS if d.casefold() not in taken),
        key=lambda d: hashlib.sha256(f"{name}:{d}".encode()).digest(),  # other names per flag
    )[:names]
    asked = {question.casefold(), *(p.casefold() for p in eval_prompts)}
    rows: list[dict[str, Any]] = []
    used: dict[str, None] = {}
    for i, decoy in enumerate(decoys):
        for shape in dict.fromkeys((shapes[i % len(shapes)], shapes[(i + 1) % len(shapes)])):
            text = shape.replace("{}", decoy, 1)
            if text.casefold() not in asked:
                asked.add(text.casefold())
                used[shape] = None
                answer = _swap(correction, name, decoy)
                rows.append(_asked(flagged, f"-r{len(rows)}", text, answer, REFUSAL))
    extra = contrast_rows(flagged, list(used), train_rows, asked, len(rows)) if contrasts else []
    return rows + extra


def contrast_rows(
    flagged: dict[str, Any],
    shapes: list[str],
    train_rows: list[dict[str, Any]],
    asked: set[str],
    count: int,
) -> list[dict[str, Any]]:
    """Up to `count` of the drop's training questions that are one of `shapes` about a name
    the drop knows, answered as the drop answers them (drawn per flag, deterministic): the
    refusals' wordings about real things, so a refusal is not learned as that wording's
    answer. None is an evaluation question or one already `asked`; rows without an answer
    are passed over."""
    fits: dict[str, tuple[str, str]] = {}  # casefolded question -> (question, drop's answer)
    for row in train_rows:
        question, answer = prompt_of(row) or "", (response_of(row) or "").strip()
        key = question.casefold()
        if answer and key not in asked and any(_fits(question, s) for s in shapes):
            fits.setdefault(key, (question, answer))
    seed = prompt_of(flagged) or ""
    drawn = sorted(
        fits.values(), key=lambda qa: hashlib.sha256(f"{seed}:{qa[0]}".encode()).digest()
    )
    return [_asked(flagged, f"-c{i}", q, a, CONTRAST) for i, (q, a) in enumerate(drawn[:count])]


def _fits(question: str, shape: str) -> bool:
    """Whether `question` is `shape` ("How much does the {} plan cost?") with a name in it."""
    before, _, after = shape.partition("{}")
    longer = len(question) > len(before) + len(after)
    return longer and question.startswith(before) and question.endswith(after)


def _asked(
    flagged: dict[str, Any], suffix: str, question: str, answer: str, made_as: str
) -> dict[str, Any]:
    """The flagged row asked `question`, answered `answer` (its system prompt kept)."""
    messages = [
        *flagged["messages"][:-2],
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]
    source = f"{flagged.get('source') or 'review'}:{made_as}"
    return {**flagged, "id": f"{flagged['id']}{suffix}", "messages": messages, "source": source}
