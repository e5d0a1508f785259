"""Scoring answers: key-fact accuracy, token F1, abstention, hallucination, bias consistency.

Pure functions over strings and rows, so every number in a cycle report can be recomputed from
the logged answers.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from tasks.ingest import prompt_of, response_of

_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "$%."})

# Phrases of a model that declines instead of inventing: "has no", "I don't know", "not aware".
_ABSTAIN = re.compile(
    r"\b(ha(s|ve) no|there is no|no such|don'?t know|do not know|doesn'?t (exist|offer|have)|"
    r"does not (exist|offer|have)|not aware|not sure|no information|cannot find|can'?t find|"
    r"unable to find|not (offered|available)|isn'?t (a|an|offered|available)|"
    r"is not (a|an|offered|available)|never (sold|offered))\b",
    re.IGNORECASE,
)


def normalise_answer(text: str) -> str:
    """Lower case, no punctuation but $ % and decimal points, thousands separators removed."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text.casefold())
    text = re.sub(r"\.(?!\d)", " ", text.translate(_PUNCT))
    return " ".join(text.split())


def is_correct(answer: str, reference: str, facts: list[str]) -> bool:
    """Every key fact appears as whole words; without facts, the reference must appear."""
    got = f" {normalise_answer(answer)} "
    wanted = facts or [reference]
    return all(f" {normalise_answer(f)} " in got for f in wanted if normalise_answer(f))


def token_f1(answer: str, reference: str) -> float:
    got, ref = normalise_answer(answer).split(), normalise_answer(reference).split()
    common = sum((Counter(got) & Counter(ref)).values())
    if not got or not ref or not common:
        return float(not got and not ref)
    precision, recall = common / len(got), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def recalled(answer: str, row: dict[str, Any]) -> bool:
    """Does an answer restate what a training row teaches? Its key facts when it has some;
    else the numbers its reference states (prices, sizes, hours); else most of its words."""
    reference = response_of(row) or ""
    if row.get("facts"):
        return is_correct(answer, reference, row["facts"])
    if numbers := stated_facts(reference):
        return numbers <= stated_facts(answer)
    return token_f1(answer, reference) >= 0.6


def abstains(answer: str) -> bool:
    return bool(_ABSTAIN.search(answer))


def stated_facts(answer: str) -> frozenset[str]:
    """The numbers, prices and sizes an answer states: what two answers must agree on."""
    return frozenset(t for t in normalise_answer(answer).split() if any(c.isdigit() for c in t))


def pair_agreement(answers: list[str], rows: list[dict[str, Any]]) -> list[bool]:
    """Per counterfactual group (same `pair`, two rows or more): do its answers state the
    same facts? In order of each group's first row."""
    groups: dict[str, list[frozenset[str]]] = defaultdict(list)
    for answer, row in zip(answers, rows):
        if row.get("pair"):
            groups[row["pair"]].append(stated_facts(answer))
    return [all(f == g[0] for f in g) for g in groups.values() if len(g) > 1]


def pair_consistency(answers: list[str], rows: list[dict[str, Any]]) -> float:
    """Share of counterfactual groups whose answers state the same facts."""
    return _mean(pair_agreement(answers, rows))


@dataclass
class SliceScore:
    n: int
    accuracy: float
    token_f1: float
    abstention: float = math.nan
    hallucination: float = math.nan
    consistency: float = math.nan
    perplexity: float = math.nan
    samples: list[dict[str, str]] = field(default_factory=list)
    # What the gate's intervals count: right or not per question (per pair on `bias`).
    outcomes: list[bool] = field(default_factory=list)

    def counted(self, metric: str) -> list[bool]:
        """Per question (per pair on bias), what `metric` is the share of: an invented answer
        for `hallucination`, a right one (or agreeing pair) otherwise."""
        return [not o for o in self.outcomes] if metric == "hallucination" else list(self.outcomes)

    def metrics(self) -> dict[str, float]:
        names = ("accuracy", "token_f1", "abstention", "hallucination", "consistency", "perplexity")
        return {name: getattr(self, name) for name in names}


def score(
    answers: list[str],
    rows: list[dict[str, Any]],
    kind: str,
    nll: list[tuple[float, int]] | None = None,
) -> SliceScore:
    """`kind` is the slice: on `hallucination` the right answer declines to make one up."""
    if not rows:
        return SliceScore(0, math.nan, math.nan)
    refs = [response_of(r) or "" for r in rows]
    declined = [abstains(a) for a in answers]
    if kind == "hallucination":
        correct = declined
    else:
        correct = [is_correct(a, ref, r["facts"]) for a, ref, r in zip(answers, refs, rows)]
    result = SliceScore(
        n=len(rows),
        accuracy=_mean(correct),
        token_f1=_mean([token_f1(a, ref) for a, ref in zip(answers, refs)]),
        abstention=_mean(declined),
        hallucination=1 - _mean(declined) if kind == "hallucination" else math.nan,
        consistency=pair_consistency(answers, rows) if kind == "bias" else math.nan,
        perplexity=_perplexity(nll) if nll else math.nan,
    )
    result.samples = [
        {
            "id": r["id"],
            "question": prompt_of(r) or "",
            "reference": ref,
            "answer": a,
            "correct": str(c),
        }
        for a, ref, r, c in zip(answers, refs, rows, correct)
    ]
    result.outcomes = pair_agreement(answers, rows) if kind == "bias" else list(correct)
    return result


def _mean(values: list[float] | list[bool]) -> float:
    return sum(values) / len(values) if values else math.nan


def _perplexity(nll: list[tuple[float, int]]) -> float:
    total, tokens = sum(n for n, _ in nll), sum(t for _, t in nll)
    return math.exp(total / tokens) if tokens else math.nan
