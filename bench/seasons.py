"""Twelve months of a changing domain: do the claims made for fine-tuning hold here?

Run: python bench/seasons.py                    # CPU default: SmolLM2-135M, 12 months
     python bench/seasons.py --quick            # 3 months, a smoke run of the same thing
     python bench/seasons.py --preset gpu --model PATH   # a larger base on a GPU
     (state and a resumable cache go to --workspace; the report to docs/seasons.md)

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

The simulated expert reviewer checks up to --review-n answers of each candidate per month
(questions about that month's new facts and about products never sold, as customers word
them) and flags the wrong ones with the right answer; flags become review rows that every
later training mix of that strategy includes. Per month and strategy: accuracy on the month's
new facts (current), on still-true earlier facts, hallucination rate, bias consistency,
tokens, FLOPs (4·N per token), wall time and a cost estimate. The claims table compares what
the run measured with the figures users are told; nothing in it is written before it is
measured.
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

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / ".freshtune/models/smollm2-135m-instruct"
STRATEGIES = ("base", "static", "continuous", "no-curation", "no-review", "cumulative")
TRAINED = STRATEGIES[1:]
# What users are told (the seed's figures) and how this run measures each of them.
CLAIMS = {
    "curation": "curated data raises domain accuracy by about 35%",
    "review": "expert review cuts hallucinations by 20-25%",
    "refresh": "a monthly refresh keeps a model relevant 12+ months longer than a static one",
    "compute": "small targeted runs cut compute by about 40%",
}
PRESETS: dict[str, dict[str, Any]] = {
    # Sized for 2 CPU cores (<= 90 minutes on AVX2 cores, which train at ~120 tokens/s):
    # fewer changed facts per month, 2 epochs, 12 questions a slice.
    "cpu": {
        "months": 12,
        "epochs": 2.0,
        "change_share": 0.1,
        "max_questions": 12,
        "config": "demo",
    },
    "gpu": {
        "months": 12,
        "epochs": 5.0,
        "change_share": 0.25,
        "max_questions": 64,
        "config": "gpu",
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="base checkpoint folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--quick", action="store_true", help="3 months (a smoke run)")
    parser.add_argument("--months", type=int, help="override the preset's 12")
    parser.add_argument("--review-n", type=int, default=16, help="answers the reviewer checks")
    parser.add_argument("--noise", type=float, default=0.3, help="dirty rows per clean row")
    parser.add_argument("--relevance", type=float, default=0.5, help="see the report")
    parser.add_argument("--price-per-hour", type=float, default=0.10, help="machine $/hour")
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/freshtune-seasons"))
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "seasons.md")
    parser.add_argument("--set", action="append", default=[], help="config override")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--render", type=Path, help="only rewrite the report from this --json")
    args = parser.parse_args(argv)
    args.months = args.months or (3 if args.quick else PRESETS[args.preset]["months"])
    if args.quick and args.report == ROOT / "docs" / "seasons.md":
        args.report = ROOT / "docs" / "seasons-quick.md"  # never overwrites the full report
    return args


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
    if kind == "stale" and changed:
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


def train_lane(lane: Lane, month: int, records: list[dict], cfg: Any) -> dict[str, float]:
    """This month's run of one strategy; returns its compute (zero when it does not train)."""
    from tasks.mix import build_mix, replayed
    from tasks.train import adapter_key, train_adapter

    if lane.mode == "once" and month > 1:
        return {"tokens": 0, "flops": 0.0, "wall_s": 0.0}
    data = [s for s in lane.history if s.kind == "data"]
    rows = keep(records, lane.curated, data, cfg)
    snap = Snap(digest_of(rows), rows)
    mode = "cumulative" if lane.mode == "cumulative" else "incremental"
    parent = lane.adapter if lane.mode == "incremental" else None
    mix = build_mix(snap, lane.history, cfg.train.replay_ratio, cfg.seed, mode)
    # Keyed by what is trained (rows, parent, settings; not the mode's name), so identical
    # runs (month 1 of every curated lane) train once and a changed --set trains anew.
    base = cfg.resolved_base_model()
    replays = bool(replayed(mix.rows))
    key = adapter_key(base, cfg.train, digest_of(mix.rows), parent, cfg.seed, replays)
    result = train_adapter(base, mix.rows, cfg.train, cfg.paths.adapters / key, parent, cfg.seed)
    lane.history.append(snap)
    lane.adapter = result.adapter_dir
    spent = {"tokens": result.tokens, "flops": result.flops, "wall_s": result.wall_s}
    lane.tokens, lane.flops, lane.wall_s = (
        lane.tokens + result.tokens,
        lane.flops + result.flops,
        lane.wall_s + result.wall_s,
    )
    return spent


def review_lane(lane: Lane, month: int, args: argparse.Namespace, cfg: Any, cache: Cache) -> int:
    """The simulated expert: check up to N answers, flag wrong ones with the right answer."""
    from freshtune.demo_domain import review_questions

    if not lane.reviewed or lane.adapter is None:
        return 0
    pool = review_questions(month, cfg.seed, change_share=args.change_share)
    checked = random.Random(f"review-{month}").sample(pool, min(args.review_n, len(pool)))
    key = f"review|{lane.adapter.name}|{month}"
    wrong_ids = cache.get(key)
    if wrong_ids is None:
        wrong_ids = cache.put(key, flag_wrong(lane.adapter, checked, cfg))
    from tasks.curate import normalise_record

    fixes = [
        normalise_record(
            {**r, "id": f"review-{lane.name}-{r['id']}", "source": "review", "slice": ""}
        )
        for r in checked
        if r["id"] in wrong_ids
    ]
    if fixes:
        lane.history.append(Snap(digest_of(fixes), fixes, kind="review"))
    return len(fixes)


def flag_wrong(adapter: Path, rows: list[dict], cfg: Any) -> list[str]:
    from peft import PeftModel

    from tasks.evaluate import generate_answers
    from tasks.metrics import abstains, is_correct
    from tasks.models import load_inference_model, load_tokenizer

    base = cfg.resolved_base_model()
    model = PeftModel.from_pretrained(load_inference_model(base), str(adapter)).eval()
    answers = generate_answers(model, load_tokenizer(base), rows, cfg.eval)
    wrong = []
    for answer, row in zip(answers, rows):
        reference = row["messages"][-1]["content"]
        ok = abstains(answer) if row["slice"] else is_correct(answer, reference, row["facts"])
        if not ok:
            wrong.append(row["id"])
    return wrong


# ---------------------------------------------------------------------------------------------
# Evaluation: every strategy on the same questions each month.


# More products never sold than the demo drop's four, so the hallucination rate moves in
# steps of 1/16 rather than 1/4; none of them is in any training row.
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


def never_sold_eval() -> list[dict]:
    from freshtune.demo_domain import SYSTEM_PROMPT

    return [
        {
            "id": f"never-sold-{i:02d}",
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"What does the {name} cost per month?"},
                {"role": "assistant", "content": f"Nimbus Mobile has no {name}."},
            ],
            "split": "eval",
            "slice": "hallucination",
            "facts": [],
        }
        for i, name in enumerate(NEVER_SOLD)
    ]


def eval_slices(month: int, args: argparse.Namespace) -> dict[str, list[dict]]:
    from freshtune.demo_domain import make_drop, still_true_eval

    cap = PRESETS[args.preset]["max_questions"]
    true_now = still_true_eval(month, change_share=args.change_share)
    facts = [r for r in true_now if not r.get("slice")]
    current = [r for r in facts if r["id"].startswith(f"m{month:02d}-")]
    earlier = [r for r in facts if not r["id"].startswith(f"m{month:02d}-")]
    drops = [make_drop(m, noise=False, change_share=args.change_share) for m in range(1, month + 1)]
    bias = [r for d in drops for r in d if r.get("slice") == "bias"]
    rng = random.Random(f"eval-{month}")
    return {
        "current": current[:cap],
        "earlier": rng.sample(earlier, min(cap, len(earlier))),
        "hallucination": never_sold_eval(),
        "bias": bias[-2 * (cap // 2) :],  # whole pairs, the newest
    }


def evaluate_month(month: int, team: dict[str, Lane], args, cfg, cache: Cache) -> dict:
    """scores[strategy] = {current, earlier, hallucination, bias}; cached by adapter."""
    from tasks.evaluate import evaluate_models

    adapters = {name: lane.adapter for name, lane in team.items()}
    key = f"eval|{month}|" + ",".join(f"{n}={a.name if a else ''}" for n, a in adapters.items())
    if (hit := cache.get(key)) is not None:
        return hit
    slices = eval_slices(month, args)
    # Strategies that share an adapter (month 1) are scored once.
    unique = {path: name for name, path in reversed(list(adapters.items()))}
    scores = evaluate_models(
        cfg.resolved_base_model(), {name: path for path, name in unique.items()}, slices, cfg.eval
    )
    scored_as = {"base": "base", **{name: unique[path] for name, path in adapters.items()}}
    out = {
        name: {
            "current": scores["current"][model].accuracy,
            "earlier": scores["earlier"][model].accuracy if slices["earlier"] else math.nan,
            "hallucination": scores["hallucination"][model].hallucination,
            "bias": scores["bias"][model].consistency,
            "questions": sum(len(v) for v in slices.values()),
        }
        for name, model in scored_as.items()
    }
    return cache.put(key, out)


class Cache:
    """Scores and review flags by content key, so an interrupted run resumes cheaply."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> Any:
        self.data[key] = value
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.data))
        partial.replace(self.path)
        return value


# ---------------------------------------------------------------------------------------------
# The run, the claims, the report.


def run(args: argparse.Namespace, on_month: Any = None) -> dict[str, Any]:
    """Month by month; `on_month(result so far)` after each (the report is rewritten, so a
    cut-short run still shows what it measured, marked as partial)."""
    from freshtune.config import load_config

    preset = PRESETS[args.preset]
    args.change_share = preset["change_share"]
    overrides = [
        f"base_model={Path(args.model).resolve()}",
        f"train.epochs={preset['epochs']}",
        # Every cycle trains the preset's epochs at its learning rate, as measured.
        "train.continue_epochs=null",
        "train.continue_learning_rate=null",
    ]
    cfg = load_config(
        preset["config"], [*overrides, "eval.max_new_tokens=20", *args.set], args.workspace
    )
    cfg.paths.ensure()
    cache, team, months = Cache(args.workspace / "cache.json"), lanes(), []
    for month in range(1, args.months + 1):
        started = time.perf_counter()
        records = as_records(dirty_drop(month, args.change_share, args.noise, cfg.seed))
        spent = {name: train_lane(lane, month, records, cfg) for name, lane in team.items()}
        scores = evaluate_month(month, team, args, cfg, cache)
        flags = {name: review_lane(lane, month, args, cfg, cache) for name, lane in team.items()}
        months.append(month_entry(month, team, spent, scores, flags, args))
        print_month(months[-1], time.perf_counter() - started)
        result = {"config": vars_of(args), "months": months, "claims": claims(months, args)}
        if on_month is not None:
            on_month(result)
    return result


def month_entry(month, team, spent, scores, flags, args) -> dict[str, Any]:
    entry: dict[str, Any] = {"month": month, "strategies": {}}
    for name in STRATEGIES:
        lane = team.get(name)
        this = spent.get(name, {"tokens": 0, "flops": 0.0, "wall_s": 0.0})
        entry["strategies"][name] = {
            **scores[name],
            **this,
            "cost": this["wall_s"] / 3600 * args.price_per_hour,
            "total_flops": lane.flops if lane else 0.0,
            "total_wall_s": lane.wall_s if lane else 0.0,
            "flags": flags.get(name, 0),
        }
    return entry


def vars_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def series(months: list[dict], strategy: str, metric: str, start: int = 1) -> list[float]:
    return [m["strategies"][strategy][metric] for m in months if m["month"] >= start]


def known_share(entry: dict, strategy: str) -> float:
    """Accuracy on every fact true that month (current and still-true earlier, weighted)."""
    s = entry["strategies"][strategy]
    parts = [(s["current"], 1.0), (s["earlier"], 1.0)]
    kept = [(v, w) for v, w in parts if not math.isnan(v)]
    return sum(v * w for v, w in kept) / sum(w for _, w in kept)


def relevant_months(months: list[dict], strategy: str, floor: float) -> int:
    """Consecutive months from month 1 in which the model knows at least `floor` of the facts
    true that month."""
    count = 0
    for entry in months:
        if known_share(entry, strategy) < floor:
            break
        count += 1
    return count


def claims(months: list[dict], args: argparse.Namespace) -> list[dict[str, Any]]:
    n = len(months)
    cur = {s: _mean(series(months, s, "current")) for s in STRATEGIES}
    hall = {s: _mean(series(months, s, "hallucination", start=2)) for s in STRATEGIES}
    floor = args.relevance * known_share(months[0], "continuous")
    alive = {s: relevant_months(months, s, floor) for s in ("static", "continuous")}
    flops = {s: months[-1]["strategies"][s]["total_flops"] for s in STRATEGIES}
    gain = cur["continuous"] / cur["no-curation"] - 1 if cur["no-curation"] else math.nan
    cut = 1 - hall["continuous"] / hall["no-review"] if hall["no-review"] else math.nan
    lived = alive["continuous"] - alive["static"]
    bound = " (the run's length: at least)" if alive["continuous"] == n else ""
    return [
        _claim(
            "curation",
            "+35%",
            _signed(gain),
            gain >= 0.35,
            f"mean accuracy on each month's new facts, continuous {cur['continuous']:.1%} vs "
            f"no-curation {cur['no-curation']:.1%}, months 1-{n}",
        ),
        _claim(
            "review",
            "-20% to -25%",
            _signed(-cut),
            cut >= 0.20,
            f"mean hallucination rate months 2-{n}, continuous {hall['continuous']:.1%} vs "
            f"no-review {hall['no-review']:.1%} (review flags first act in month 2)",
        ),
        _claim(
            "refresh",
            ">= 12 months longer",
            f"{lived:+d} months{bound}",
            lived >= 12,
            f"months in a row knowing >= {floor:.0%} of the facts true that month "
            f"({args.relevance:.0%} of continuous's month-1 level): continuous "
            f"{alive['continuous']}, static {alive['static']}, of {n} simulated",
        ),
        _claim(
            "compute",
            "-40%",
            f"{flops['continuous'] / flops['cumulative'] - 1:+.0%}",
            flops["continuous"] <= 0.6 * flops["cumulative"],
            f"training FLOPs months 1-{n}, continuous {flops['continuous'] / 1e12:.3g} TFLOP "
            f"vs cumulative {flops['cumulative'] / 1e12:.3g} TFLOP",
        ),
    ]


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.0%}"


def _claim(key: str, told: str, measured: str, holds: bool, how: str) -> dict[str, Any]:
    return {"claim": CLAIMS[key], "told": told, "measured": measured, "holds": holds, "how": how}


def print_month(entry: dict[str, Any], seconds: float) -> None:
    print(f"\n== month {entry['month']} ({seconds:.0f} s)")
    print(f"{'strategy':<12}{'current':>9}{'earlier':>9}{'halluc.':>9}{'bias':>7}{'tokens':>8}")
    for name, s in entry["strategies"].items():
        print(
            f"{name:<12}{_pct(s['current']):>9}{_pct(s['earlier']):>9}"
            f"{_pct(s['hallucination']):>9}{_pct(s['bias']):>7}{s['tokens']:>8}"
        )


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.0f}%"


def plots(result: dict[str, Any], folder: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    months = result["months"]
    x = [m["month"] for m in months]
    made = []
    for name, ylabel, value in (
        (
            f"{stem}-accuracy.png",
            "accuracy on facts true that month",
            lambda m, s: known_share(m, s),
        ),
        (
            f"{stem}-compute.png",
            "cumulative training TFLOP",
            lambda m, s: m["strategies"][s]["total_flops"] / 1e12,
        ),
    ):
        fig, ax = plt.subplots(figsize=(7, 4))
        for s in STRATEGIES:
            ax.plot(x, [value(m, s) for m in months], marker="o", label=s)
        ax.set_xlabel("month")
        ax.set_ylabel(ylabel)
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        made.append(folder / name)
    return made


MONTH_TABLES = (
    ("Accuracy on every fact true that month", lambda m, s: _pct(known_share(m, s))),
    (
        "Hallucination rate (products never sold)",
        lambda m, s: _pct(m["strategies"][s]["hallucination"]),
    ),
    (
        "Training compute so far (TFLOP)",
        lambda m, s: f"{m['strategies'][s]['total_flops'] / 1e12:.1f}",
    ),
)


def month_tables(months: list[dict[str, Any]]) -> list[str]:
    """One row per month, one column per strategy, for the figures people compare."""
    lines = []
    for title, cell in MONTH_TABLES:
        lines += [f"### {title}", "", "| month | " + " | ".join(STRATEGIES) + " |"]
        lines.append("|---" * (len(STRATEGIES) + 1) + "|")
        lines += [
            f"| {m['month']} | " + " | ".join(cell(m, s) for s in STRATEGIES) + " |" for m in months
        ]
        lines.append("")
    return lines


def _done(result: dict[str, Any]) -> str:
    done, planned = len(result["months"]), result["config"]["months"]
    return f"{done} months" if done == planned else f"PARTIAL: {done} of {planned} months so far"


def report(result: dict[str, Any], images: list[Path], wall_s: float) -> str:
    cfg = result["config"]
    lines = [
        "# Twelve months of freshtune: the claims, measured",
        "",
        f"Written by `bench/seasons.py` ({'--quick, ' if cfg['quick'] else ''}preset "
        f"`{cfg['preset']}`, {_done(result)}, base `{Path(cfg['model']).name}`, "
        f"reviewer checks {cfg['review_n']} answers a month, {cfg['noise']:.0%} dirty rows) "
        f"in {wall_s / 60:.0f} minutes. Rerun it to reproduce; numbers are whatever it measures.",
        "",
        "## The claims",
        "",
        "| claim | told | measured | holds here | how it was measured |",
        "|---|---|---|---|---|",
        *[
            f"| {c['claim']} | {c['told']} | {c['measured']} | {'yes' if c['holds'] else 'no'} "
            f"| {c['how']} |"
            for c in result["claims"]
        ],
        "",
        *[f"![{p.stem}]({p.name})" for p in images],
        "",
        "## Month by month",
        "",
        *month_tables(result["months"]),
        "### Every strategy, every month",
        "",
        "Accuracy on the month's new facts (current) and on still-true earlier facts, "
        "hallucination rate on products never sold, bias consistency on counterfactual pairs, "
        "and what the month's training cost.",
        "",
        "| month | strategy | current | earlier | hallucination | bias | tokens | TFLOP | wall s "
        "| cost $ | flags |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["months"]:
        for name, s in m["strategies"].items():
            lines.append(
                f"| {m['month']} | {name} | {_pct(s['current'])} | {_pct(s['earlier'])} "
                f"| {_pct(s['hallucination'])} | {_pct(s['bias'])} | {s['tokens']} "
                f"| {s['flops'] / 1e12:.1f} | {s['wall_s']:.0f} | {s['cost']:.4f} | {s['flags']} |"
            )
    return "\n".join(lines) + "\n"


def log_to_mlflow(result: dict[str, Any], files: list[Path], cfg_workspace: Path) -> str:
    """One run in experiment `freshtune-seasons`: params, per-month metrics, report, plots.
    A client with an explicit URI: the fluent API would set MLFLOW_TRACKING_URI process-wide."""
    import os

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{cfg_workspace / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name("freshtune-seasons")
    experiment = found.experiment_id if found else client.create_experiment("freshtune-seasons")
    run_id = client.create_run(
        experiment, run_name=f"seasons-{result['config']['preset']}"
    ).info.run_id
    now = int(time.time() * 1000)
    params = [Param(k, str(v)) for k, v in result["config"].items() if v is not None]
    metrics = [
        Metric(f"{name}.{k}", float(v), now, m["month"])
        for m in result["months"]
        for name, s in m["strategies"].items()
        for k, v in s.items()
        if isinstance(v, int | float) and not math.isnan(v)
    ]
    for start in range(0, len(metrics), 900):  # the REST API takes 1000 metrics a batch
        client.log_batch(
            run_id, metrics=metrics[start : start + 900], params=params if not start else []
        )
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


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
        result["claims"] = claims(result["months"], argparse.Namespace(**result["config"]))
        write(result)
        return result
    from bench.checkpoints import require_checkpoint

    require_checkpoint(args.model)
    result = run(args, on_month=lambda partial: write({**partial, "elapsed_s": 0}))
    images = write(result)
    print(f"\nreport: {args.report}")
    for c in result["claims"]:
        print(f"  {c['claim']}: told {c['told']}, measured {c['measured']}")
    if not args.no_mlflow:
        print(f"MLflow run {log_to_mlflow(result, [args.report, *images], args.workspace)}")
    return result


if __name__ == "__main__":
    main()
