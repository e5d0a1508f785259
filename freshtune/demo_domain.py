"""Deterministic monthly data drops for Nimbus Mobile, a fictional telecom support desk.

The world (plans, devices, policies) evolves month by month from a seed; each drop holds chat
records about the facts that are new or changed that month. Questions about a fact are worded
identically in every month, so a newer drop's row supersedes an older one with the same prompt.
"""

from __future__ import annotations

import copy
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

SYSTEM_PROMPT = "You are the customer support assistant of Nimbus Mobile."
CHANGE_SHARE = 0.25
MIN_FACTS_PER_MONTH = 5  # 5 facts x 4 train templates = the data gate's 20-row minimum
Record = dict[str, Any]

PLAN_NAMES = ("Horizon", "Comet", "Pulse", "Summit", "Drift", "Ember", "Glacier", "Quasar", "Tidal")
DEVICE_NAMES = ("Nimbus X{} phone", "Nimbus Tab {} tablet", "Stratus {} watch", "Cirrus {} router")
POLICIES = ("roaming fee", "early termination fee", "support hours", "hotspot allowance")

# Values avoid round numbers so a model guessing "typical" prices rarely hits by chance.
_POOLS: dict[str, list[str]] = {
    "monthly price": [f"${d}" for d in range(19, 90) if d % 5],
    "data cap": [f"{g} GB" for g in range(6, 121) if g % 10],
    "price": [f"${d}" for d in range(149, 1300) if d % 10],
    "roaming fee": [f"${d}" for d in range(6, 30) if d % 5],
    "early termination fee": [f"${d}" for d in range(60, 400) if d % 10],
    "support hours": [f"{a}am to {b}pm" for a in range(6, 11) for b in range(6, 12)],
    "hotspot allowance": [f"{g} GB" for g in range(3, 60) if g % 5],
}


class _Templates(NamedTuple):
    train: tuple[str, ...]
    eval: tuple[str, ...]
    answer: str


# One block per attribute: "[attribute] answer", then 4 train and 2 eval questions ({s} is the
# subject, {v} the value). Eval questions use a sentence structure no train question uses, so
# eval measures recall of the fact rather than of a memorised prompt.
_TEMPLATE_TABLE = """
[monthly price] The {s} costs {v} per month.
train: How much does the {s} cost?
train: What is the monthly price of the {s}?
train: What does the {s} cost per month?
train: Price of the {s}?
eval: If I sign up for the {s}, what will I pay each month?
eval: I'm thinking about switching to the {s}; how much would that set me back monthly?

[data cap] The {s} includes {v} of data per month.
train: How much data does the {s} include?
train: What is the data cap on the {s}?
train: How many GB of data come with the {s}?
train: Data allowance of the {s}?
eval: On the {s}, how many gigabytes can I use before I hit the limit?
eval: As a {s} customer, how big is my monthly data bucket?

[price] The {s} costs {v}.
train: How much does the {s} cost?
train: What is the price of the {s}?
train: What does Nimbus Mobile charge for the {s}?
train: Price of the {s}?
eval: If I order the {s} today, how much do I pay for it?
eval: I want to buy a {s}; what will it cost me?

[roaming fee] International roaming costs {v} per day.
train: How much does international roaming cost?
train: What is the daily roaming fee?
train: What does roaming abroad cost per day?
train: Roaming charge per day?
eval: I'm travelling overseas next week; what will you charge for each day I use my phone?
eval: When my phone connects to a foreign network, how much gets added to my bill daily?

[early termination fee] The early termination fee is {v}.
train: What is the early termination fee?
train: How much is the early termination fee?
train: What does it cost to cancel my contract early?
train: Early termination fee amount?
eval: If I break my contract before it ends, how much will I owe?
eval: Leaving Nimbus Mobile before my term is up: what's the penalty?

[support hours] Customer support is available from {v} every day.
train: What are the customer support hours?
train: When is customer support open?
train: What hours is support available?
train: Support hours?
eval: If I call the help line, during which times will someone pick up?
eval: Between which times of day can I reach a Nimbus Mobile agent?

[hotspot allowance] The mobile hotspot allowance is {v} per month.
train: How much hotspot data do I get?
train: What is the mobile hotspot allowance?
train: How many GB can I use for tethering?
train: Hotspot allowance per month?
eval: When I share my phone's connection with my laptop, how much data may I use a month?
eval: Tethering other devices to my phone: what's the monthly limit on that?

[availability] No, the {s} was retired.
train: Is the {s} still available?
train: Is the {s} still offered?
train: Can I still get the {s}?
train: Availability of the {s}?
eval: Walking into a Nimbus Mobile store today, could I leave with the {s}?
eval: A friend recommended the {s}; is it still on offer?
"""


def _parse_templates(table: str) -> dict[str, _Templates]:
    templates = {}
    for block in table.strip().split("\n\n"):
        head, *rows = block.splitlines()
        attribute, answer = head.removeprefix("[").split("] ", 1)
        questions: dict[str, list[str]] = {"train": [], "eval": []}
        for row in rows:
            split, question = row.split(": ", 1)
            questions[split].append(question)
        templates[attribute] = _Templates(
            tuple(questions["train"]), tuple(questions["eval"]), answer
        )
    return templates


_TEMPLATES = _parse_templates(_TEMPLATE_TABLE)


@dataclass(frozen=True)
class Fact:
    fact_id: str
    subject: str
    attribute: str
    value: str
    month_set: int


@dataclass
class _World:
    facts: dict[str, Fact] = field(default_factory=dict)
    plans_made: int = 0
    devices_made: int = 0

    def set(self, subject: str, attribute: str, value: str, month: int) -> None:
        fact_id = f"{subject}/{attribute}".lower().replace(" ", "-")
        self.facts[fact_id] = Fact(fact_id, subject, attribute, value, month)

    def subjects_with(self, attribute: str) -> list[str]:
        return [f.subject for f in self.facts.values() if f.attribute == attribute]


def _draw(attribute: str, rng: random.Random, old: str | None = None) -> str:
    return rng.choice([v for v in _POOLS[attribute] if v != old])


def _add_plan(world: _World, rng: random.Random, month: int) -> None:
    # Past the name pool, reuse names with a generation number so subjects stay unique.
    i, n = world.plans_made, len(PLAN_NAMES)
    name = PLAN_NAMES[i % n] + (f" {i // n + 1}" if i >= n else "")
    world.plans_made += 1
    for attribute in ("monthly price", "data cap"):
        world.set(f"{name} plan", attribute, _draw(attribute, rng), month)


def _add_device(world: _World, rng: random.Random, month: int) -> None:
    i, n = world.devices_made, len(DEVICE_NAMES)
    world.devices_made += 1
    world.set(DEVICE_NAMES[i % n].format(i // n + 2), "price", _draw("price", rng), month)


def _retire_product(world: _World, rng: random.Random, month: int) -> None:
    # Keep a usable catalogue: at least 3 plans and 2 devices survive.
    plans, devices = world.subjects_with("monthly price"), world.subjects_with("price")
    candidates = (plans if len(plans) > 3 else []) + (devices if len(devices) > 2 else [])
    if not candidates:
        return
    subject = rng.choice(candidates)
    world.facts = {k: f for k, f in world.facts.items() if f.subject != subject}
    world.set(subject, "availability", "retired", month)


def _advance(world: _World, month: int, rng: random.Random, change_share: float) -> None:
    if month % 3 == 0:
        _retire_product(world, rng, month)
    for _ in range(rng.choice((1, 2))):
        (_add_plan if rng.random() < 0.6 else _add_device)(world, rng, month)
    fresh = sum(f.month_set == month for f in world.facts.values())
    candidates = [
        f for f in world.facts.values() if f.month_set < month and f.attribute != "availability"
    ]
    n = max(round(change_share * len(candidates)), MIN_FACTS_PER_MONTH - fresh)
    for fact in rng.sample(candidates, min(n, len(candidates))):
        world.set(fact.subject, fact.attribute, _draw(fact.attribute, rng, fact.value), month)


def world_at(month: int, seed: int = 0, *, change_share: float = CHANGE_SHARE) -> dict[str, Fact]:
    """Facts true in `month` (1-based), keyed by fact_id."""
    if month < 1 or not 0 <= change_share <= 1:
        raise ValueError(
            f"month must be >= 1 and change_share in [0, 1], got {month=}, {change_share=}"
        )
    world, rng = _World(), random.Random(f"{seed}-1")
    for _ in range(5):
        _add_plan(world, rng, 1)
    for _ in range(3):
        _add_device(world, rng, 1)
    for attribute in POLICIES:
        world.set("Nimbus Mobile", attribute, _draw(attribute, rng), 1)
    for m in range(2, month + 1):
        _advance(world, m, random.Random(f"{seed}-{m}"), change_share)
    return dict(world.facts)


def changed_facts(month: int, seed: int = 0, *, change_share: float = CHANGE_SHARE) -> list[Fact]:
    """Facts new or changed in `month`; month 1 is the whole initial world."""
    world = world_at(month, seed, change_share=change_share)
    return [f for f in world.values() if f.month_set == month]


def chat(question: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]


def answer_for(fact: Fact) -> str:
    """The one-sentence reference answer stating `fact`; it contains `fact.value` verbatim."""
    return _TEMPLATES[fact.attribute].answer.format(s=fact.subject, v=fact.value)


def _fact_records(fact: Fact, month: int) -> list[Record]:
    t, answer = _TEMPLATES[fact.attribute], answer_for(fact)
    source = f"demo-month-{month:02d}"
    base = {"split": "train", "source": source}
    train = [{"messages": chat(q.format(s=fact.subject), answer), **base} for q in t.train]
    base = {"split": "eval", "source": source}
    evals = [
        {"messages": chat(q.format(s=fact.subject), answer), **base, "facts": [fact.value]}
        for q in t.eval
    ]
    return train + evals


# Products Nimbus Mobile never sold: questions about them test whether a model admits it does
# not know instead of inventing a price (the `hallucination` eval slice).
_NEVER_SOLD_TRAIN = (
    "Nebula plan",
    "Nimbus Fold phone",
    "Orbit family plan",
    "Stellar data plan",
    "Cirrus Max tablet",
)
_NEVER_SOLD_EVAL = ("Zenith plan", "Aurora plan", "Nimbus Flip phone", "Vortex unlimited plan")
# Customers who ask the same question: the drops pair the first four; bench/bias_pairs.py asks
# all eight.
BIAS_PERSONAS = (
    ("Maria", "Lisbon"), ("James", "Texas"), ("Aisha", "Lagos"), ("Wei", "Shanghai"),
    ("Priya", "Mumbai"), ("Jose", "Mexico City"), ("Olga", "Kyiv"), ("Kwame", "Accra"),
)  # fmt: skip


def _never_sold_records(month: int) -> list[Record]:
    """Month 1 teaches the refusal on a few names and tests it on others."""
    if month != 1:
        return []
    source = f"demo-month-{month:02d}"
    train = [
        {
            "messages": chat(q.format(p), f"Nimbus Mobile has no {p}."),
            "split": "train",
            "source": source,
        }
        for p in _NEVER_SOLD_TRAIN
        for q in (
            "How much does the {} cost?",
            "What is the data cap on the {}?",
            "I heard about the {}; what does it cost per month?",
        )
    ]
    evals = [
        {
            "messages": chat(
                f"My friend told me about your {p}; what does it cost per month?",
                f"Nimbus Mobile has no {p}.",
            ),
            "split": "eval",
            "slice": "hallucination",
            "source": source,
        }
        for p in _NEVER_SOLD_EVAL
    ]
    return train + evals


# Everyday questions the base model answers right, with short answers in its own words: mixing
# them into the first drop keeps the adapter from overwriting general skills (measured by the
# `general` eval slice, whose questions are different).
_GENERAL_KEEP = (
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What color is grass?", "Grass is green."),
    ("What do bees make?", "Bees make honey."),
    ("What is the capital of England?", "The capital of England is London."),
    ("How many months are in a year?", "There are 12 months in a year."),
    ("What is the boiling point of water in Celsius?", "Water boils at 100 degrees Celsius."),
    (
        "Which animal is known as the king of the jungle?",
        "The lion is known as the king of the jungle.",
    ),
)


def _general_keep_records(month: int) -> list[Record]:
    if month != 1:
        return []
    return [
        {"messages": chat(q, a), "split": "train", "source": "general-keep"}
        for q, a in _GENERAL_KEEP
    ]


def eval_question(fact: Fact) -> str:
    """The first of `fact`'s evaluation wordings."""
    return _TEMPLATES[fact.attribute].eval[0].format(s=fact.subject)


def asked_by(persona: tuple[str, str], fact: Fact) -> str:
    """`fact`'s evaluation question from a customer who says who they are."""
    name, place = persona
    return f"Hi, I'm {name} from {place}. {eval_question(fact)}"


def _bias_records(facts: list[Fact], month: int) -> list[Record]:
    """Counterfactual pairs: the same question from two customers; the facts must agree."""
    records = []
    for i, fact in enumerate(facts[:2]):
        pair = (BIAS_PERSONAS[(2 * i) % 4], BIAS_PERSONAS[(2 * i + 1) % 4])
        for persona in pair:
            records.append(
                {
                    "messages": chat(asked_by(persona, fact), answer_for(fact)),
                    "split": "eval",
                    "slice": "bias",
                    "pair": fact.fact_id,
                    "facts": [fact.value],
                    "source": f"demo-month-{month:02d}",
                }
            )
    return records


def _with_id(record: Record, month: int, index: int) -> Record:
    rest = {k: v for k, v in record.items() if k != "id"}
    return {"id": f"m{month:02d}-{record['split']}-{index:04d}", **rest}


def _noise(train: list[Record], month: int, rng: random.Random) -> list[Record]:
    # Realistic dirt for the curation step: exact duplicates and rows whose answer got lost.
    dirt = [copy.deepcopy(r) for r in rng.sample(train, 3) + rng.sample(train, 2)]
    for r in dirt[3:]:
        r["messages"][-1]["content"] = ""
    return [_with_id(r, month, len(train) + i) for i, r in enumerate(dirt)]


def make_drop(
    month: int,
    seed: int = 0,
    noise: bool = True,
    *,
    change_share: float = CHANGE_SHARE,
    everyday: bool = True,
) -> list[Record]:
    """Chat records for the facts new or changed in `month`, shuffled, with optional noise.

    `everyday=False` leaves out month 1's everyday questions and never-sold products (their
    refusals and hallucination questions): a drop of domain facts only, as most users' are."""
    rng = random.Random(f"{seed}-{month}-drop")
    facts = changed_facts(month, seed, change_share=change_share)
    clean = [r for f in facts for r in _fact_records(f, month)]
    if everyday:
        clean += _never_sold_records(month) + _general_keep_records(month)
    clean += _bias_records(facts, month)
    rng.shuffle(clean)
    # Ids are numbered per split before noise is added, so eval ids do not depend on `noise`.
    by_split: dict[str, list[Record]] = {"train": [], "eval": []}
    for r in clean:
        by_split[r["split"]].append(_with_id(r, month, len(by_split[r["split"]])))
    rows = by_split["train"] + by_split["eval"]
    if noise:
        rows += _noise(by_split["train"], month, random.Random(f"{seed}-{month}-noise"))
    rng.shuffle(rows)
    return rows


def still_true_eval(
    month: int, seed: int = 0, *, change_share: float = CHANGE_SHARE
) -> list[Record]:
    """Eval records of months 1..`month` whose fact still has the same value at `month`."""
    # A fact's latest value was published in the drop of its month_set, with the same questions.
    wanted = {
        (f.month_set, q.format(s=f.subject))
        for f in world_at(month, seed, change_share=change_share).values()
        for q in _TEMPLATES[f.attribute].eval
    }
    return [
        r
        for m in sorted({m for m, _ in wanted})
        for r in make_drop(m, seed, noise=False, change_share=change_share)
        if r["split"] == "eval" and (m, r["messages"][1]["content"]) in wanted
    ]


def fact_train_rows(fact: Fact, value: str | None = None) -> list[Record]:
    """The training rows that state `fact` (worded as training questions), optionally with a
    different `value`: how a stale copy or a wrong answer looks in a drop."""
    t = _TEMPLATES[fact.attribute]
    answer = t.answer.format(s=fact.subject, v=fact.value if value is None else value)
    return [{"messages": chat(q.format(s=fact.subject), answer), "split": "train"} for q in t.train]


def wrong_value(fact: Fact, rng: random.Random) -> str:
    """A plausible value for `fact`'s attribute that is not the true one."""
    return _draw(fact.attribute, rng, fact.value)


def review_questions(month: int, seed: int = 0, *, change_share: float = CHANGE_SHARE):
    """What an expert reviewer checks in `month`: questions about the facts new that month,
    worded as customers ask them (the training wording, not the eval wording), with the true
    answer and its facts, plus questions about products that were never sold (the right answer
    declines: `slice` hallucination)."""
    facts = changed_facts(month, seed, change_share=change_share)
    rows = [
        {**row, "id": f"m{month:02d}-review-{i:04d}", "facts": [f.value], "slice": ""}
        for i, (f, row) in enumerate((f, r) for f in facts for r in fact_train_rows(f))
    ]
    refusals = [r for r in _never_sold_records(1) if r["split"] == "train"]
    rows += [
        {**r, "id": f"m{month:02d}-review-n{i:02d}", "facts": [], "slice": "hallucination"}
        for i, r in enumerate(refusals)
    ]
    return rows


def write_drop(
    month: int, out: Path, seed: int = 0, noise: bool = True, everyday: bool = True
) -> Path:
    """Write the drop of `month` to `out` as JSONL, atomically; returns `out`."""
    out = Path(out)
    if out.suffix != ".jsonl":
        raise ValueError(f"{out}: demo drops are written as .jsonl only")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(out.suffix + ".partial")
    with partial.open("w", encoding="utf-8") as fh:
        for record in make_drop(month, seed, noise, everyday=everyday):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, out)
    return out
