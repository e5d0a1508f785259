"""Twelve months of a changing domain: do the claims made for fine-tuning hold here?

Run: python bench/seasons.py                    # CPU default: SmolLM2-135M, 12 months (~4.5 h
                                                # on 2 cores; one lane per machine: ~2 h, below)
     python bench/seasons.py --quick            # 3 months, a smoke run of the same (~40 min)
     python bench/seasons.py --preset gpu --model PATH   # a larger base on a GPU
     python bench/seasons.py --render RUN.json  # the report and plots again, no training
     python bench/seasons.py --merge A.json B.json ...  # one report from a bench/one_lane.py
                                # run per strategy (run in turn, or on several machines: the
                                # lanes of docs/seasons.md took 122 min for cumulative, 49-70
                                # for the other trained ones, 1 for static, on 2 cores each)
     (adapters, the rehearsal set and the answer cache go to --workspace, so a cut-short run
     resumes where it stopped; the report to docs/seasons.md)

Each month the demo domain (Nimbus Mobile) changes: a share of facts change, products are
added and retired. Its drop gets dirty like real data: duplicates, stale copies of last
month's answers, wrong answers, PII and empty answers in the training rows. Strategies run
side by side on the same drops and base model, through freshtune's own curation, training mix,
trainer and evaluation:

  base          the base model, never tuned
  static        tuned on month 1 (curated), never again
  continuous    incremental LoRA from last month's adapter, replay, curation and review
  no-curation   the same on the raw drops
  no-review     the same without the expert reviewer
  cumulative    a new adapter from the base every month, on every curated row so far

Every trained lane trains as a product cycle does with the preset: the base model's rehearsal
rows beside the domain rows (the set the product builds, generated once into the workspace),
the preset's replay, and train-to-target (`train.target_recall`, at most `train.max_epochs`;
`--fixed-epochs N` trains N epochs instead). Scores come from the product's `evaluate_models`
and its answer cache, so the base and an unchanged adapter are never asked twice.

The simulated expert reviewer checks up to --review-n answers of each candidate per month
(questions about that month's new facts and about products never sold, as customers word
them) and flags the wrong ones with the right answer; flags become review rows as the product
makes them (tasks.review.review_rows: each correction also in the strategy's training
wordings, and a flagged invention also as refusals about other unknown names), which every
later training mix of that strategy includes. Per month and strategy: accuracy on the month's
new facts (current), on still-true earlier facts, hallucination rate, bias consistency,
epochs and why training stopped, the mix's rows, tokens, FLOPs (4·N per token), wall time and
a cost estimate. Each claim is judged by a 95% interval on per-question outcomes pooled over
months (bench/seasons_claims.py): "holds" only when the interval excludes zero in the claimed
direction, "does not hold" when it excludes zero in the other, otherwise "not shown", with why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import freshtune  # noqa: F401  (quiet defaults before prefect/mlflow load)
from bench.seasons_claims import (
    CLAIMS,
    MUST_FLOOR,
    MUST_MEAN,
    ages_asked,
    bits,
    by_age,
    claims,
    known_interval,
    must_show,
    share_text,
    unbits,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / ".freshtune/models/smollm2-135m-instruct"
STRATEGIES = ("base", "static", "continuous", "no-curation", "no-review", "cumulative")
TRAINED = STRATEGIES[1:]
__all__ = ["CLAIMS", "STRATEGIES", "main"]
PRESETS: dict[str, dict[str, Any]] = {
    # Questions per slice: 48 still-true earlier facts a month (of 30-70) and 32 never-sold
    # questions, up from 12 and 16; every new fact's two questions (10-16 a month, 34 in
    # month 1). Pooled over 12 months that is about 500 paired earlier answers, 350
    # hallucination answers and 166 current ones: a 10-point effect clears its interval when a
    # fifth of the answers differ. Scoring and review took about 2 minutes a month on 2 cores
    # (the --quick run of 2026-12-05, month 3) against about 11 of training, so more questions
    # cost little: the training sets the run's length. That run: --quick about 35 minutes
    # uncontended; 12 months projected from its epochs (continuing cycles 2-3, cumulative 5,
    # no-curation its 8-epoch budget) at 230 tokens/s: about 2.1M tokens, 3 hours, half of
    # them the cumulative baseline. With replay_ratio 2.0 and the replay-aware target (the
    # demo's since then) a continuing month trains about 26k tokens: about 2.5M tokens in all,
    # so 12 months within 2 hours needs about 350 tokens/s (bf16 on AMX cores, --set
    # train.dtype=bfloat16 --set eval.dtype=bfloat16, or a GPU).
    "cpu": {"months": 12, "change_share": 0.1, "questions": 48, "config": "demo"},
    "gpu": {"months": 12, "change_share": 0.25, "questions": 64, "config": "gpu"},
}
BIAS_ROWS = 12  # the newest 6 counterfactual pairs: bias is reported, not claimed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="base checkpoint folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--quick", action="store_true", help="3 months (a smoke run)")
    parser.add_argument("--months", type=int, help="override the preset's 12")
    parser.add_argument("--review-n", type=int, default=16, help="answers the reviewer checks")
    parser.add_argument(
        "--noise",
        type=float,
        default=0.3,
        help="dirty rows per clean training row, split evenly over the 5 kinds and rounded "
        "down, one of each at least (0.3 on a 24-row drop: 5 rows, 1 stale and 1 wrong)",
    )
    parser.add_argument(
        "--relevance", type=float, default=0.5, help="share of month 1's accuracy that counts"
    )
    parser.add_argument(
        "--fixed-epochs", type=float, help="train N epochs a cycle instead of to the target"
    )
    parser.add_argument("--price-per-hour", type=float, default=0.10, help="machine $/hour")
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/freshtune-seasons"))
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "seasons.md")
    parser.add_argument("--set", action="append", default=[], help="config override")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--render", type=Path, help="only rewrite the report from this --json")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="only write the report from one bench/one_lane.py run per strategy (same options)",
    )
    args = parser.parse_args(argv)
    args.months = args.months or (3 if args.quick else PRESETS[args.preset]["months"])
    if args.quick and args.report == ROOT / "docs" / "seasons.md":
        args.report = ROOT / "docs" / "seasons-quick.md"  # never overwrites the full report
    return args


def bench_config(args: argparse.Namespace) -> Any:
    """The preset as a product cycle runs it; only the base, the answer budget and what
    --fixed-epochs / --set change differ."""
    from freshtune.config import load_config

    overrides = [f"base_model={Path(args.model).resolve()}", "eval.max_new_tokens=20"]
    if args.fixed_epochs:
        overrides += [
            "train.target_recall=null",
            f"train.epochs={args.fixed_epochs}",
            "train.continue_epochs=null",
        ]
    preset = PRESETS[args.preset]["config"]
    return load_config(preset, [*overrides, *args.set], args.workspace)


def rehearsal_rows(cfg: Any) -> list[dict[str, Any]]:
    """The product's rehearsal set for this base (tasks.rehearsal): generated once, kept in
    the workspace, the same rows for every lane and month."""
    from tasks.rehearsal import build_rehearsal

    made = build_rehearsal.fn(cfg)
    return made.rows() if made is not None else []


def settings_of(cfg: Any, rehearsal: list[dict], questions: int) -> dict[str, Any]:
    """What the report says the lanes trained and were asked with."""
    train = cfg.train
    return {
        "target_recall": train.target_recall,
        "max_epochs": train.max_epochs,
        "min_epochs": train.target_min_epochs,
        "epochs": train.epochs,
        "learning_rate": train.learning_rate,
        "continue_learning_rate": train.continue_learning_rate,
        "replay_ratio": train.replay_ratio,
        "made_replay_share": train.made_replay_share,
        "replay_age_decay": train.replay_age_decay,
        "replay_pool_share": train.replay_pool_share,
        "rehearsal_ratio": train.rehearsal_ratio,
        "continue_rehearsal_ratio": train.continue_rehearsal_ratio,
        "rehearsal_set": len(rehearsal),
        "questions": questions,
        "refusal_names": cfg.review.refusal_names,
        "refusal_contrasts": cfg.review.refusal_contrasts,
    }


# ---------------------------------------------------------------------------------------------
# Data: the month's drop, made dirty, and what each strategy keeps of it.


@dataclass(frozen=True)
class Snap:
    """Quacks like tasks.snapshot.Snapshot for build_mix and earlier_data."""

    digest: str
    records: list[dict[str, Any]]
    kind: str = "data"

    def rows(self) -> list[dict[str, Any]]:
        return self.records

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind}


def dirty_drop(month: int, change_share: float, noise: float, seed: int = 0) -> list[dict]:
    """The clean drop plus dirt in its training rows, shuffled: exact duplicates, stale copies
    of last month's answer for changed facts, wrong values, PII, empty answers."""
    from freshtune.demo_domain import fact_train_rows, make_drop, world_at, wrong_value

    rng = random.Random(f"seasons-{seed}-{month}")
    rows = make_drop(month, seed, noise=False, change_share=change_share)
    train = [r for r in rows if r["split"] == "train"]
    now = world_at(month, seed, change_share=change_share)
    before = world_at(month - 1, seed, change_share=change_share) if month > 1 else {}
    changed = [f for f in now.values() if f.month_set == month and f.fact_id in before]
    facts = list(now.values())
    budget = round(noise * len(train))
    dirt = [
        (kind, _dirt(kind, rng, train, changed, before, facts, fact_train_rows, wrong_value))
        for kind in ("duplicate", "stale", "wrong", "pii", "empty")
        for _ in range(max(1, budget // 5))
    ]
    rows = rows + [
        {**row, "id": f"m{month:02d}-dirt-{i:04d}", "source": f"dirt:{kind}"}
        for i, (kind, row) in enumerate((k, r) for k, r in dirt if r is not None)
    ]
    rng.shuffle(rows)
    return rows


def _dirt(kind, rng, train, changed, before, facts, fact_rows, wrong_value) -> dict | None:
    if kind == "stale":  # nothing changed (month 1): nothing can be stale
        if not changed:
            return None
        fact = rng.choice(changed)
        row = rng.choice(fact_rows(fact, before[fact.fact_id].value))
    elif kind == "wrong":
        fact = rng.choice(facts)
        if fact.attribute == "availability":
            return None
        row = rng.choice(fact_rows(fact, wrong_value(fact, rng)))
    else:
        row = json.loads(json.dumps(rng.choice(train)))
        if kind == "pii":
            contact = rng.choice(
                ["my email is ana.silva@example.org", "call me on +44 20 7946 0958"]
            )
            row["messages"][1]["content"] += f" ({contact})"
        elif kind == "empty":
            row["messages"][-1]["content"] = ""
    return {**row, "split": "train"}


def as_records(rows: list[dict]) -> list[dict]:
    from tasks.ingest import to_record

    return [to_record(json.loads(json.dumps(r)), i + 1) for i, r in enumerate(rows)]


def keep(records: list[dict], curated: bool, earlier: list[Snap], cfg: Any) -> list[dict]:
    """Curated: freshtune's curation against the strategy's earlier snapshots. Raw: every
    readable row as it came (only the prompt key is computed, for the training mix)."""
    from tasks.curate import curate, earlier_data, normalise_record

    readable = [r for r in records if r["messages"]]
    if not curated:
        return [normalise_record(r, clean=True) for r in readable]
    rows, _ = curate(readable, settings=cfg.data, earlier=earlier_data(earlier))
    return rows


def digest_of(rows: list[dict]) -> str:
    blob = json.dumps([r["messages"] for r in rows], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------------------------------------
# Strategies: a lane keeps one strategy's snapshots, review corrections and adapter.


@dataclass
class Lane:
    name: str
    curated: bool
    reviewed: bool
    mode: str  # incremental / cumulative / once
    history: list[Snap] = field(default_factory=list)  # data and review snapshots, in order
    adapter: Path | None = None
    tokens: int = 0
    flops: float = 0.0
    wall_s: float = 0.0


def lanes() -> dict[str, Lane]:
    return {
        "static": Lane("static", True, False, "once"),
        "continuous": Lane("continuous", True, True, "incremental"),
        "no-curation": Lane("no-curation", False, True, "incremental"),
        "no-review": Lane("no-review", True, False, "incremental"),
        "cumulative": Lane("cumulative", True, True, "cumulative"),
    }


# A month in which a lane does not train (static after month 1, the base).
IDLE: dict[str, Any] = {
    "tokens": 0,
    "flops": 0.0,
    "wall_s": 0.0,
    "epochs": 0.0,
    "stop": "not trained",
    "recall": None,
    "new_rows": 0,
    "replay_rows": 0,
    "review_rows": 0,
    "rehearsal_rows": 0,
    "untrue_rows": 0,
}
UNTRUE = ("dirt:stale", "dirt:wrong")  # dirt that teaches a false answer; the rest is harmless


def train_lane(
    lane: Lane, month: int, records: list[dict], cfg: Any, rehearsal: list[dict]
) -> dict[str, Any]:
    """This month's cycle of one strategy as the product runs it: the mix (new rows, replay,
    corrections, rehearsal), then train-to-target from the lane's parent."""
    from tasks.train import adapter_dir, train_adapter

    if lane.mode == "once" and month > 1:
        return dict(IDLE)
    snap, mix = lane_mix(lane, records, cfg, rehearsal)
    parent = lane.adapter if lane.mode == "incremental" else None
    # Keyed as the product keys it, by what is trained (rows, parent, settings; not the
    # lane's name): month 1 of every curated lane trains once, a changed --set trains anew.
    out = adapter_dir(mix, parent, cfg)
    result = train_adapter(cfg.resolved_base_model(), mix.rows, cfg.train, out, parent, cfg.seed)
    lane.history.append(snap)
    lane.adapter = result.adapter_dir
    lane.tokens += result.tokens
    lane.flops += result.flops
    lane.wall_s += result.wall_s
    # The month's own rows that state a false answer and reached training (replay aside).
    untrue = sum(r.get("source") in UNTRUE and r["split"] == "train" for r in snap.rows())
    return {**spent(result, mix), "untrue_rows": untrue}


def lane_mix(lane: Lane, records: list[dict], cfg: Any, rehearsal: list[dict]) -> tuple[Snap, Any]:
    """The month's snapshot of the lane (its rows kept as the lane keeps them) and the mix its
    cycle trains, as the product builds it."""
    from tasks.mix import build_mix

    data = [s for s in lane.history if s.kind == "data"]
    rows = keep(records, lane.curated, data, cfg)
    snap = Snap(digest_of(rows), rows)
    train = cfg.train
    continues = lane.mode == "incremental" and lane.adapter is not None
    mix = build_mix(
        snap,
        lane.history,
        train.replay_ratio,
        cfg.seed,
        "cumulative" if lane.mode == "cumulative" else "incremental",
        rehearsal,
        train.rehearsal_for(continues),
        train.made_replay_share,
        train.asker_share,
        train.replay_age_decay,
        train.replay_pool_share,
    )
    return snap, mix


def spent(result: Any, mix: Any) -> dict[str, Any]:
    """What a cycle cost, how far it trained and why it stopped, and what its mix held."""
    return {
        "tokens": result.tokens,
        "flops": result.flops,
        "wall_s": result.wall_s,
        "epochs": result.epochs,
        "stop": result.stop_reason,
        "recall": result.recall_curve[-1][1] if result.recall_curve else None,
        "new_rows": mix.new_rows,
        "replay_rows": mix.replay_rows,  # cumulative: every earlier row, trained every epoch
        "review_rows": mix.always_rows,
        "rehearsal_rows": mix.rehearsal_rows,
    }


def score_models(cfg: Any, adapters: dict[str, Path | None], slices: dict) -> dict[str, dict]:
    """scores[name][slice] (tasks.metrics.SliceScore) for the base and every named adapter,
    through the product's evaluate_models and answer cache. Names sharing an adapter (month 1)
    are scored once."""
    from tasks.evaluate import evaluate_models

    unique = {p: n for n, p in reversed(list(adapters.items())) if p is not None}
    scores = evaluate_models(
        cfg.resolved_base_model(),
        {n: p for p, n in unique.items()},
        slices,
        cfg.eval,
        cfg.paths.eval_cache,
    )
    scored_as = {"base": "base", **{n: unique[p] for n, p in adapters.items() if p is not None}}
    return {name: {s: scores[s][model] for s in slices} for name, model in scored_as.items()}


def review_lanes(team: dict[str, Lane], month: int, args: argparse.Namespace, cfg: Any) -> dict:
    """The simulated expert: check up to N answers of each reviewed lane, flag the wrong ones
    with the right answer; flags[lane] = corrections added."""
    from freshtune.demo_domain import review_questions

    facts = review_questions(month, cfg.seed, change_share=args.change_share)
    pool = [r for r in facts if not r["slice"]] + never_sold_review(month)
    checked = random.Random(f"review-{month}").sample(pool, min(args.review_n, len(pool)))
    reviewed = {n: lane.adapter for n, lane in team.items() if lane.reviewed and lane.adapter}
    if not reviewed or not checked:
        return {}
    # A fact question is right when it states the fact; a never-sold one when it declines.
    slices = {
        "current": [r for r in checked if not r["slice"]],
        "hallucination": [r for r in checked if r["slice"]],
    }
    scores = score_models(cfg, reviewed, slices)
    asked = eval_prompts(month, args)
    flags = {}
    for name in reviewed:
        wrong = [
            row
            for slice_, rows in slices.items()
            for row, ok in zip(rows, scores[name][slice_].outcomes)
            if not ok
        ]
        flags[name] = add_fixes(team[name], wrong, asked, cfg.review)
    return flags


def add_fixes(lane: Lane, wrong: list[dict], asked: set[str], review: Any) -> int:
    """The flags as the product teaches them (tasks.review.review_rows, with the config's
    `review` settings): each correction, in the lane's training wordings too, and a flagged
    invention about a name no row uses also as refusals about other unknown names (and their
    contrasts). Returns the flags (not the rows they became)."""
    from tasks.curate import normalise_record
    from tasks.ingest import response_of
    from tasks.review import Flag, ReviewOutcome, review_rows

    flags = [
        Flag(
            id=r["id"], kind="hallucination" if r["slice"] else "wrong_fact", correct=response_of(r)
        )
        for r in wrong
    ]
    outcome = ReviewOutcome(True, "bench", flags=flags)
    train = [row for snap in lane.history if snap.kind == "data" for row in snap.rows()]
    rows = review_rows(outcome, {"review": wrong}, review, train, asked)
    fixes = [normalise_record({**r, "id": f"{lane.name}-{r['id']}", "slice": ""}) for r in rows]
    if fixes:
        lane.history.append(Snap(digest_of(fixes), fixes, kind="review"))
    return len(wrong)


def eval_prompts(month: int, args: argparse.Namespace) -> set[str]:
    """Every question any month's evaluation asks: no review row may be one of them."""
    from tasks.ingest import prompt_of

    slices = [eval_slices(m, args.change_share, args.questions) for m in range(1, month + 1)]
    return {prompt_of(r) or "" for by in slices for rows in by.values() for r in rows}


# ---------------------------------------------------------------------------------------------
# Evaluation: every strategy on the same questions each month.


# More products never sold than the demo drop's four, each asked two ways, so the
# hallucination rate moves in steps of 1/32 rather than 1/4; none of them is in any training
# row (month 1 teaches the refusal on other names).
NEVER_SOLD = (
    "Zenith plan",
    "Aurora plan",
    "Nimbus Flip phone",
    "Vortex unlimited plan",
    "Meteor plan",
    "Nimbus Ultra phone",
    "Cirrus Mini router",
    "Solstice family plan",
    "Stratus Kids watch",
    "Equinox data plan",
    "Nimbus Tab Pro tablet",
    "Polar roaming pack",
    "Breeze plan",
    "Nimbus Go phone",
    "Halo plan",
    "Monsoon data pack",
)
NEVER_SOLD_QUESTIONS = (
    "What does the {} cost per month?",
    "How much do I pay for the {}?",
)


def never_sold_eval() -> list[dict]:
    from freshtune.demo_domain import chat

    asked = [(q.format(name), name) for q in NEVER_SOLD_QUESTIONS for name in NEVER_SOLD]
    return [
        {
            "id": f"never-sold-{i:02d}",
            "messages": chat(question, f"Nimbus Mobile has no {name}."),
            "split": "eval",
            "slice": "hallucination",
            "facts": [],
        }
        for i, (question, name) in enumerate(asked)
    ]


# What the reviewer asks about products never sold: names no drop trains on (the demo drop's
# own refusal rows use other names) and no evaluation asks about, so a flag teaches the refusal
# on a name the model has not seen declined, and scores are on names never flagged.
REVIEW_NEVER_SOLD = (
    "Tempest plan",
    "Nimbus Glide phone",
    "Squall data pack",
    "Drizzle plan",
    "Nimbus Lite tablet",
    "Gale family plan",
)


def never_sold_review(month: int) -> list[dict]:
    """Two of the review's never-sold questions a month, in the demo drop's refusal wordings."""
    from freshtune.demo_domain import chat

    wordings = ("How much does the {} cost?", "I heard about the {}; what does it cost per month?")
    names = [REVIEW_NEVER_SOLD[(2 * month + k) % len(REVIEW_NEVER_SOLD)] for k in range(2)]
    return [
        {
            "id": f"m{month:02d}-review-never-{i}",
            "messages": chat(wording.format(name), f"Nimbus Mobile has no {name}."),
            "split": "train",
            "slice": "hallucination",
            "facts": [],
        }
        for i, (name, wording) in enumerate((n, w) for n in names for w in wordings)
    ]


def stable_sample(rows: list[dict], cap: int) -> list[dict]:
    """Up to `cap` rows chosen by a hash of their question: a still-true question stays chosen
    month after month, so the base's and static's answers come from the answer cache."""

    def rank(row: dict) -> str:
        return hashlib.sha256(json.dumps(row["messages"]).encode()).hexdigest()

    return sorted(rows, key=rank)[:cap]


def eval_slices(month: int, change_share: float, cap: int) -> dict[str, list[dict]]:
    from freshtune.demo_domain import make_drop, still_true_eval

    true_now = still_true_eval(month, change_share=change_share)
    facts = [r for r in true_now if not r.get("slice")]
    current = [r for r in facts if r["id"].startswith(f"m{month:02d}-")]
    earlier = [r for r in facts if not r["id"].startswith(f"m{month:02d}-")]
    drops = [make_drop(m, noise=False, change_share=change_share) for m in range(1, month + 1)]
    bias = [r for d in drops for r in d if r.get("slice") == "bias"]
    return {
        "current": current[:cap],
        "earlier": stable_sample(earlier, cap),
        "hallucination": never_sold_eval()[:cap],
        "bias": bias[-2 * (min(cap, BIAS_ROWS) // 2) :],  # whole pairs, the newest
    }


def evaluate_month(month: int, team: dict[str, Lane], args, cfg) -> dict[str, Any]:
    """Per strategy: figures (current, earlier, hallucination, bias), per-question outcomes
    (what the claims pair up), and the questions' ids, the same for every strategy."""
    slices = eval_slices(month, args.change_share, args.questions)
    scores = score_models(cfg, {n: lane.adapter for n, lane in team.items()}, slices)
    figures = {
        name: {
            "current": by["current"].accuracy,
            "earlier": by["earlier"].accuracy if slices["earlier"] else math.nan,
            "hallucination": by["hallucination"].hallucination,
            "bias": by["bias"].consistency,
            "questions": sum(len(v) for v in slices.values()),
        }
        for name, by in scores.items()
    }
    outcomes = {name: {s: bits(sc.outcomes) for s, sc in by.items()} for name, by in scores.items()}
    questions = {s: [r["id"] for r in rows] for s, rows in slices.items()}
    return {"figures": figures, "outcomes": outcomes, "questions": questions}


# ---------------------------------------------------------------------------------------------
# The run.


def run(args: argparse.Namespace, on_month: Any = None) -> dict[str, Any]:
    """Month by month; `on_month(result so far)` after each (the report is rewritten, so a
    cut-short run still shows what it measured, marked as partial)."""
    args.change_share = PRESETS[args.preset]["change_share"]
    cfg = bench_config(args)
    cfg.paths.ensure()
    args.questions = cfg.eval.max_questions or PRESETS[args.preset]["questions"]
    rehearsal = rehearsal_rows(cfg)
    team, months, seconds = lanes(), [], []
    result: dict[str, Any] = {}
    for month in range(1, args.months + 1):
        started = time.perf_counter()
        records = as_records(dirty_drop(month, args.change_share, args.noise, cfg.seed))
        costs = {
            name: train_lane(lane, month, records, cfg, rehearsal) for name, lane in team.items()
        }
        scored = evaluate_month(month, team, args, cfg)
        flags = review_lanes(team, month, args, cfg)
        months.append(month_entry(month, team, costs, scored, flags, args))
        seconds.append(round(time.perf_counter() - started, 1))
        print_month(months[-1], seconds[-1])
        result = {
            "config": vars_of(args),
            "settings": settings_of(cfg, rehearsal, args.questions),
            "months": months,
            "seconds": seconds,  # wall time per month, this run (a resumed month is quick)
            "claims": claims(months, args.relevance),
        }
        if on_month is not None:
            on_month(result)
    return result


def month_entry(month, team, costs, scored, flags, args) -> dict[str, Any]:
    entry: dict[str, Any] = {"month": month, "strategies": {}}
    for name in STRATEGIES:
        lane = team.get(name)
        this = costs.get(name, IDLE)
        entry["strategies"][name] = {
            **scored["figures"][name],
            **this,
            "cost": this["wall_s"] / 3600 * args.price_per_hour,
            "total_flops": lane.flops if lane else 0.0,
            "total_wall_s": lane.wall_s if lane else 0.0,
            "flags": flags.get(name, 0),
        }
    entry["outcomes"] = scored["outcomes"]
    entry["questions"] = scored["questions"]
    return entry


def vars_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def print_month(entry: dict[str, Any], seconds: float) -> None:
    print(f"\n== month {entry['month']} ({seconds:.0f} s)")
    print(
        f"{'strategy':<12}{'current':>9}{'earlier':>9}{'halluc.':>9}{'bias':>7}{'epochs':>8}"
        f"{'tokens':>8}  stop"
    )
    for name, s in entry["strategies"].items():
        print(
            f"{name:<12}{_pct(s['current']):>9}{_pct(s['earlier']):>9}"
            f"{_pct(s['hallucination']):>9}{_pct(s['bias']):>7}{_epochs(s):>8}"
            f"{s['tokens']:>8}  {s['stop']}"
        )


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.0f}%"


def _epochs(s: dict[str, Any]) -> str:
    return "-" if not s["tokens"] else f"{s['epochs']:g}"


# ---------------------------------------------------------------------------------------------
# The report: issue #16's bar, the claims with their intervals, month by month.


def plots(result: dict[str, Any], folder: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    months = result["months"]
    drawn = [
        ("accuracy", _interval_lines(known_interval), "accuracy on facts true that month (95% CI)"),
        ("compute", _compute_lines, "cumulative training TFLOP"),
    ]
    if asked_general(months):
        drawn.append(("general", _interval_lines(general_interval), "general questions (95% CI)"))
    made = [folder / f"{stem}-{name}.png" for name, _, _ in drawn]
    for path, (_, draw, ylabel) in zip(made, drawn, strict=True):
        fig, ax = plt.subplots(figsize=(7, 4))
        draw(ax, months)
        ax.set_xlabel("month")
        ax.set_ylabel(ylabel)
        ax.set_xticks([m["month"] for m in months])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return made


def _interval_lines(interval: Any) -> Any:
    """A drawer of `interval(month, strategy)` for every strategy, with its error bars."""

    def draw(ax: Any, months: list[dict]) -> None:
        for i, s in enumerate(STRATEGIES):
            spans = [interval(m, s) for m in months]
            est = [sp.estimate for sp in spans]
            errors = [
                [e - sp.low for e, sp in zip(est, spans)],
                [sp.high - e for e, sp in zip(est, spans)],
            ]
            # Side by side, so one strategy's bars do not hide another's.
            x = [m["month"] + (i - 2.5) * 0.06 for m in months]
            ax.errorbar(x, est, yerr=errors, marker="o", ms=3, capsize=2, lw=1, label=s)
        ax.set_ylim(-0.02, 1.02)

    return draw


def _compute_lines(ax: Any, months: list[dict]) -> None:
    x = [m["month"] for m in months]
    for s in STRATEGIES:
        ax.plot(x, [m["strategies"][s]["total_flops"] / 1e12 for m in months], marker="o", label=s)


def _span(interval: Any) -> str:
    if math.isnan(interval.estimate):
        return "-"
    return f"{_pct(interval.estimate)} ({100 * interval.low:.0f}-{100 * interval.high:.0f})"


def _epoch_cell(s: dict[str, Any]) -> str:
    """`5 target` (recall reached), `8 budget` (max_epochs spent), `3 fixed`, `-` (idle)."""
    if not s["tokens"]:
        return "-"
    stop = s["stop"]
    tag = "target" if stop.startswith("target") else "budget" if "max_epochs" in stop else "fixed"
    return f"{_epochs(s)} {tag}"


MONTH_TABLES = (
    (
        "Accuracy on every fact true that month (95% Wilson interval)",
        lambda m, s: _span(known_interval(m, s)),
    ),
    (
        "Hallucination rate (products never sold)",
        lambda m, s: _pct(m["strategies"][s]["hallucination"]),
    ),
    (
        "Epochs trained and why it stopped (target: recall reached; budget: max_epochs spent)",
        lambda m, s: _epoch_cell(m["strategies"][s]),
    ),
    (
        "Training compute so far (TFLOP)",
        lambda m, s: f"{m['strategies'][s]['total_flops'] / 1e12:.1f}",
    ),
)


# Asked by lane runs (bench/one_lane.py, merged), not by seasons.py itself.
GENERAL_TABLE = (
    "General questions, the gate's general slice (95% Wilson interval)",
    lambda m, s: _span(general_interval(m, s)),
)


def asked_general(months: list[dict[str, Any]]) -> bool:
    return any("general" in m["outcomes"].get("continuous", {}) for m in months)


def general_interval(entry: dict[str, Any], strategy: str) -> Any:
    from tasks.stats import wilson

    answered = unbits(entry["outcomes"][strategy].get("general", ""))
    return wilson(sum(answered), len(answered))


def month_tables(months: list[dict[str, Any]]) -> list[str]:
    """One row per month, one column per strategy, for the figures people compare."""
    lines = []
    for title, cell in (*MONTH_TABLES, GENERAL_TABLE) if asked_general(months) else MONTH_TABLES:
        lines += [f"### {title}", "", "| month | " + " | ".join(STRATEGIES) + " |"]
        lines.append("|---" * (len(STRATEGIES) + 1) + "|")
        lines += [
            f"| {m['month']} | " + " | ".join(cell(m, s) for s in STRATEGIES) + " |" for m in months
        ]
        lines.append("")
    return lines


def must_show_table(months: list[dict[str, Any]]) -> list[str]:
    n = len(months)
    lines = [
        f"## Issue #16's bar: accuracy on the facts true that month, months 2-{n}",
        "",
        f"Continuous must average at least {MUST_MEAN:.0%} with no month below "
        f"{MUST_FLOOR:.0%}; judged by the intervals (holds: the interval clears the bar; does "
        "not hold: it lies below; not shown: it straddles). Static and cumulative beside it.",
        "",
        f"| strategy | months 2-{n}, pooled (95% CI) | lowest month (95% CI) "
        f"| mean >= {MUST_MEAN:.0%} | no month < {MUST_FLOOR:.0%} |",
        "|---|---|---|---|---|",
    ]
    for strategy in ("continuous", "static", "cumulative"):
        bar = must_show(months, strategy)
        mean = _span(bar["mean"])
        low = f"month {bar['lowest_month']}: {_span(bar['lowest'])}" if bar["lowest"] else "-"
        lines.append(
            f"| {strategy} | {mean} | {low} | {bar['mean_verdict']} | {bar['floor_verdict']} |"
        )
    return [*lines, ""]


def age_table(months: list[dict[str, Any]]) -> list[str]:
    """Earlier facts known by how many months old their drop was, every month pooled: what
    each strategy keeps of old facts against recent ones (a replay that favours recent drops
    shows as a falling column)."""
    lines = [
        "### Earlier facts by age (months since their drop), every month pooled",
        "",
        "| age | " + " | ".join(STRATEGIES) + " |",
        "|---" * (len(STRATEGIES) + 1) + "|",
    ]
    for age in ages_asked(months):
        cells = [by_age(months, s, age, age) for s in STRATEGIES]
        lines.append(f"| {age} | " + " | ".join(share_text(c) for c in cells) + " |")
    return [*lines, ""]


def claims_table(result: dict[str, Any]) -> list[str]:
    return [
        "## The claims",
        "",
        "Verdicts by 95% intervals on the same questions pooled over months: holds only when "
        "the interval excludes zero in the claimed direction; does not hold when it excludes "
        "zero in the other; not shown when it straddles zero.",
        "",
        "| claim | told | measured (95% interval) | verdict | why | how it was measured |",
        "|---|---|---|---|---|---|",
        *[
            f"| {c['claim']} | {c['told']} | {c['measured']} | **{c['verdict']}** | {c['why']} "
            f"| {c['how']} |"
            for c in result["claims"]
        ],
        "",
    ]


def strategy_rows(months: list[dict[str, Any]]) -> list[str]:
    lines = [
        "### Every strategy, every month",
        "",
        "Accuracy on the month's new facts (current) and on still-true earlier facts, "
        "hallucination rate on products never sold, bias consistency on counterfactual pairs; "
        "the month's training: epochs and why it stopped, the mix (new + replayed or, for "
        "cumulative, earlier + review corrections + rehearsal rows) and what it cost.",
        "",
        "| month | strategy | current | earlier | hallucination | bias | epochs | stop | mix "
        "| tokens | TFLOP | wall s | cost $ | flags |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in months:
        for name, s in m["strategies"].items():
            mix = f"{s['new_rows']}+{s['replay_rows']}+{s['review_rows']}+{s['rehearsal_rows']}"
            lines.append(
                f"| {m['month']} | {name} | {_pct(s['current'])} | {_pct(s['earlier'])} "
                f"| {_pct(s['hallucination'])} | {_pct(s['bias'])} | {_epochs(s)} | {s['stop']} "
                f"| {mix} | {s['tokens']} | {s['flops'] / 1e12:.1f} | {s['wall_s']:.0f} "
                f"| {s['cost']:.4f} | {s['flags']} |"
            )
    return lines


def _done(result: dict[str, Any]) -> str:
    done, planned = len(result["months"]), result["config"]["months"]
    return f"{done} months" if done == planned else f"PARTIAL: {done} of {planned} months so far"


def _trained_how(settings: dict[str, Any]) -> str:
    if settings.get("target_recall") is None:
        until = f"{settings['epochs']:g} fixed epochs a cycle"
    else:
        until = (
            f"to target recall {settings['target_recall']:.2f} on the cycle's own training "
            f"questions, at least {settings.get('min_epochs', 1):g} and at most "
            f"{settings['max_epochs']:g} epochs"
        )
    made = settings.get("made_replay_share", 0)
    made = f" ({made:.0%} of it for rows made from flags)" if made else ""
    decay = settings.get("replay_age_decay", 0.5)  # runs before 2026-12-07 halved per snapshot
    made += ", every earlier row alike" if decay == 1 else f", weight x{decay:g} per snapshot"
    share = settings.get("replay_pool_share", 0)
    made += f", at least {share:.0%} of the earlier rows" if share else ""
    again = settings.get("continue_learning_rate")
    again = f" ({again:g} when it continues an adapter)" if again else ""
    rehearse = settings.get("continue_rehearsal_ratio")
    rehearse = f" ({rehearse:g} when it continues an adapter)" if rehearse is not None else ""
    return (
        f"Every trained lane trains as a product cycle does: {until}, peak learning rate "
        f"{settings['learning_rate']:g}{again}, replay ratio {settings['replay_ratio']:g}{made}, "
        f"rehearsal ratio {settings['rehearsal_ratio']:g}{rehearse} (drawn from the base's "
        f"{settings['rehearsal_set']} rehearsal answers, built once). Answers come from the "
        f"product's answer cache. Questions a month: every new fact's (up to "
        f"{settings['questions']}), {settings['questions']} still-true earlier ones, "
        f"{min(settings['questions'], 2 * len(NEVER_SOLD))} about products never sold, "
        f"{BIAS_ROWS} bias rows.{_refusals(settings)}"
    )


def _refusals(settings: dict[str, Any]) -> str:
    names = settings.get("refusal_names")
    if names is None:  # a report from before these were recorded
        return ""
    also = (
        ", with up to as many of the drop's rows asked those ways about names it sells"
        if settings.get("refusal_contrasts")
        else ""
    )
    return f" A flagged invention is also taught as refusals about {names} other names{also}."


def _merged_how(result: dict[str, Any]) -> str:
    lanes = result.get("lane_seconds")
    if not lanes:
        return ""
    each = ", ".join(f"{lane} {s / 60:.0f}" for lane, s in lanes.items())
    return (
        f" of lane runs added: assembled by `--merge` from one `bench/one_lane.py` run per "
        f"strategy with the same options ({each} minutes), their questions and the base's "
        "answers checked alike"
    )


def _seconds(result: dict[str, Any]) -> list[str]:
    seconds = result.get("seconds") or []
    if not seconds:
        return []
    months = ", ".join(f"{i} {s:.0f} s" for i, s in enumerate(seconds, 1))
    how = "the lanes' runs added" if result.get("lane_seconds") else "in this run"
    return [f"Wall time by month, {how} (a resumed month is quick): {months}.", ""]


def report(result: dict[str, Any], images: list[Path], wall_s: float) -> str:
    cfg, settings = result["config"], result.get("settings")
    lines = [
        "# Twelve months of freshtune: the claims, measured",
        "",
        f"Written by `bench/seasons.py` ({'--quick, ' if cfg['quick'] else ''}preset "
        f"`{cfg['preset']}`, {_done(result)}, base `{Path(cfg['model']).name}`, "
        f"reviewer checks {cfg['review_n']} answers a month, --noise {cfg['noise']}) "
        f"in {wall_s / 60:.0f} minutes{_merged_how(result)}. Rerun it to reproduce; numbers "
        "are whatever it measures.",
        "",
        *([_trained_how(settings), ""] if settings else []),
        *must_show_table(result["months"]),
        *claims_table(result),
        *[f"![{p.stem}]({p.name})" for p in images],
        "",
        "## Month by month",
        "",
        *_seconds(result),
        *month_tables(result["months"]),
        *age_table(result["months"]),
        *strategy_rows(result["months"]),
    ]
    return "\n".join(lines) + "\n"


def log_to_mlflow(result: dict[str, Any], files: list[Path], cfg_workspace: Path) -> str:
    """One run in experiment `freshtune-seasons`: params, per-month metrics, the claims'
    intervals, report, plots. A client with an explicit URI: the fluent API would set
    MLFLOW_TRACKING_URI process-wide."""
    import os

    from mlflow import MlflowClient
    from mlflow.entities import Param

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{cfg_workspace / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name("freshtune-seasons")
    experiment = found.experiment_id if found else client.create_experiment("freshtune-seasons")
    run_id = client.create_run(
        experiment, run_name=f"seasons-{result['config']['preset']}"
    ).info.run_id
    shown = {**result["config"], **(result.get("settings") or {})}
    params = [Param(k, str(v)) for k, v in shown.items() if v is not None]
    metrics = run_metrics(result)
    for start in range(0, len(metrics), 900):  # the REST API takes 1000 metrics a batch
        client.log_batch(
            run_id, metrics=metrics[start : start + 900], params=params if not start else []
        )
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


def run_metrics(result: dict[str, Any]) -> list[Any]:
    """Per month and strategy every number; per claim its estimate and interval."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    per_month = [
        (f"{name}.{k}", v, m["month"])
        for m in result["months"]
        for name, s in m["strategies"].items()
        for k, v in s.items()
    ]
    per_claim = [
        (f"claim.{c['key']}.{k}", c[k], 0)
        for c in result["claims"]
        for k in ("estimate", "low", "high")
    ]
    return [
        Metric(key, float(v), now, step)
        for key, v, step in per_month + per_claim
        if isinstance(v, int | float) and not math.isnan(v)
    ]


# ---------------------------------------------------------------------------------------------
# One report from lanes run apart (bench/one_lane.py): a lane's months depend on nothing but
# its own drops, adapters and reviews, so lanes can run in turn or on separate machines.

MERGE_IGNORES = ("--workspace", "--json", "--report")  # where a run wrote, not what it ran


def merged(files: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """The result seasons.py would write, from one run file per trained strategy; refuses
    files that are not the same run's lanes (options, questions, the base's answers)."""
    runs = {str(f): lane_run(f) for f in files}
    lanes_of = lane_files(runs)
    first = next(iter(runs.values()))
    for name, run in runs.items():
        if same_options(run["argv"]) != same_options(first["argv"]):
            sys.exit(f"{name} ran with other options than {files[0]}: {run['argv']}")
    months = [merged_month(i, runs, lanes_of, args.price_per_hour) for i in range(months_of(runs))]
    lane_args = parse_args(first["argv"])
    seconds = {name: [m["seconds"] for m in run["months"]] for name, run in runs.items()}
    return {
        "config": {**vars_of(lane_args), "merged": sorted(lanes_of.items())},
        "settings": next((r["settings"] for r in runs.values() if "settings" in r), None),
        "months": months,
        "seconds": [sum(each) for each in zip(*seconds.values(), strict=True)],
        "lane_seconds": {runs[name]["lane"]: sum(each) for name, each in seconds.items()},
        "claims": claims(months, lane_args.relevance),
        "elapsed_s": sum(sum(each) for each in seconds.values()),
    }


def lane_run(path: Path) -> dict[str, Any]:
    try:
        run = json.loads(path.read_text())
        if {"lane", "argv", "months"} <= run.keys() and run["months"]:
            return run
        why = "no lane, options or months"
    except (OSError, ValueError, AttributeError) as error:
        why = str(error)
    sys.exit(f"{path}: not a bench/one_lane.py run file ({why})")


def lane_files(runs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """strategy -> the file that ran it; every trained strategy once, the base from any."""
    lanes_of: dict[str, str] = {}
    for name, run in runs.items():
        if run["lane"] in lanes_of:
            sys.exit(f"{run['lane']} twice: {lanes_of[run['lane']]} and {name}")
        lanes_of[run["lane"]] = name
    missing = [s for s in TRAINED if s not in lanes_of]
    with_base = [n for n, r in runs.items() if "base" in r["months"][0]["strategies"]]
    if missing or not with_base:
        sys.exit(f"no run of {', '.join(missing or ['the base'])} among {', '.join(runs)}")
    return {"base": with_base[0], **{s: lanes_of[s] for s in TRAINED}}


def same_options(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv[1:] if argv and not argv[0].startswith("-") else argv:
        if not skip and arg not in MERGE_IGNORES:
            kept.append(arg)
        skip = arg in MERGE_IGNORES and not skip
    return kept


def months_of(runs: dict[str, dict[str, Any]]) -> int:
    counts = {name: len(run["months"]) for name, run in runs.items()}
    if len(set(counts.values())) != 1:
        sys.exit(f"the runs hold different months: {counts}")
    return next(iter(counts.values()))


def merged_month(i: int, runs: dict, lanes_of: dict[str, str], price: float) -> dict[str, Any]:
    """Month i+1 of every strategy, as month_entry writes it; the questions and the base's
    answers must be the same in every file (the lanes pair up on them)."""
    entries = {name: run["months"][i] for name, run in runs.items()}
    base, base_file = entries[lanes_of["base"]], lanes_of["base"]
    answers = dict(base["outcomes"]["base"])  # every slice some file asked the base
    for name, entry in entries.items():
        if entry["questions"] != base["questions"]:
            sys.exit(f"month {i + 1}: {name} asks other questions than {base_file}: not paired")
        theirs = entry["outcomes"].get("base", {})
        if any(answers.setdefault(s, o) != o for s, o in theirs.items()):
            sys.exit(f"month {i + 1}: the base answers otherwise in {name} than in {base_file}")
    out: dict[str, Any] = {"month": i + 1, "strategies": {}, "outcomes": {}}
    for strategy in STRATEGIES:
        run = runs[lanes_of[strategy]]["months"]
        this = run[i]["strategies"][strategy]
        out["strategies"][strategy] = {
            **this,
            "cost": this["wall_s"] / 3600 * price,
            "total_flops": sum(m["strategies"][strategy]["flops"] for m in run[: i + 1]),
            "total_wall_s": sum(m["strategies"][strategy]["wall_s"] for m in run[: i + 1]),
        }
        out["outcomes"][strategy] = run[i]["outcomes"][strategy]
    out["outcomes"]["base"] = answers
    general = [
        e["strategies"]["base"].get("general")
        for e in entries.values()
        if "base" in e["strategies"]
    ]
    out["strategies"]["base"]["general"] = next((g for g in general if g is not None), None)
    out["questions"] = base["questions"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    args.report.parent.mkdir(parents=True, exist_ok=True)

    def write(result: dict[str, Any]) -> list[Path]:
        images = plots(result, args.report.parent, args.report.stem)
        result["elapsed_s"] = result.get("elapsed_s") or time.perf_counter() - started
        args.report.write_text(report(result, images, result["elapsed_s"]))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=str))
        return images

    if args.render:  # the report and plots again from a saved run (no training)
        result = json.loads(args.render.read_text())
        if any("outcomes" not in m for m in result["months"]):
            sys.exit(f"{args.render}: written before per-question outcomes were kept; rerun")
        result["claims"] = claims(result["months"], result["config"]["relevance"])
        write(result)
        return result
    if args.merge:  # the lanes ran one by one (or on several machines): one report
        result = merged(args.merge, args)
    else:
        from bench.checkpoints import require_checkpoint

        require_checkpoint(args.model)
        result = run(args, on_month=lambda partial: write({**partial, "elapsed_s": 0}))
    images = write(result)
    print(f"\nreport: {args.report}")
    for c in result["claims"]:
        print(f"  {c['claim']}: told {c['told']}, measured {c['measured']}: {c['verdict']}")
    if not args.no_mlflow:
        print(f"MLflow run {log_to_mlflow(result, [args.report, *images], args.workspace)}")
    return result


if __name__ == "__main__":
    main()
