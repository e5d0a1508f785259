"""A reviewer's correction taught in the drop's own wordings, not only the flagged one.

A drop asks each fact several ways: training rows that share one answer are one fact in
several wordings. The group whose answer reads most like the correction ("The Horizon plan
costs $52 per month." against "The Comet plan costs $47 per month.") shows where the subject
sits; its questions with their subject swapped for the flagged one are the flagged fact in the
drop's wordings. Wordings that match an evaluation question are never used.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from typing import Any

from tasks.ingest import prompt_of, response_of

MIN_SIMILARITY = 0.5  # answers less alike than this are another kind of fact
MAX_SLOTS = 3  # differing spans: subject, value, and one more at most
_WORD = re.compile(r"\S+")


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
        messages = [
            *flagged["messages"][:-2],
            {"role": "user", "content": question},
            {"role": "assistant", "content": correction},
        ]
        rows.append({**flagged, "id": f"{flagged['id']}-w{i}", "messages": messages})
    return rows
