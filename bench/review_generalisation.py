"""Do a reviewer's flags teach the fact, or only the flagged sentence?

Run: python bench/review_generalisation.py [--json out.json] [--set train.target_recall=...]
     (about 20 minutes on 2 CPU cores with SmolLM2-135M; scratch state under --workspace)

Month 1 of the demo domain (domain rows only) trains a champion with the demo preset. A
simulated expert reviewer, who already knows next month's facts, reads its answers to month
2's evaluation questions (changed prices, new products) and, for every fact it got wrong,
flags one of the fact's two questions with the right answer. A review-only cycle then trains
twice from that champion (the corrections as its new rows, month 1 replayed, rehearsal):

  flagged-only   the flagged questions with their corrections (what a flag taught before)
  generalised    the same, plus each correction in the drop's other wordings (tasks.generalise)

Both are scored on the other question of each flagged fact, never flagged and never trained
(a customer asking the corrected fact another way), and on the flagged questions themselves.
The difference is reported with Newcombe's paired 95% interval (tasks.stats).

Then refusals: the reviewer flags the champion's inventions about products never sold, and a
review-only cycle trains on those flags alone, or (the product's default) with each also
taught as the same refusal about other names no row uses (`review.refusal_names`); both are
scored on 16 other never-sold names asked two ways, none flagged or trained on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import freshtune  # noqa: F401  (quiet defaults before prefect/mlflow load)
from bench.checkpoints import require_checkpoint
from bench.seasons import Snap  # an in-memory snapshot, as build_mix reads one

DEFAULT_MODEL = Path(".freshtune/models/smollm2-135m-instruct").resolve()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint folder")
    parser.add_argument("--config", default="demo", help="preset the cycles train with")
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/freshtune-bench-review"))
    parser.add_argument("--set", action="append", default=[], help="config override, as the CLI")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    return parser.parse_args(argv)


def month_rows(month: int) -> list[dict[str, Any]]:
    from freshtune.demo_domain import make_drop
    from tasks.curate import normalise_record

    return [normalise_record(r) for r in make_drop(month, noise=False, everyday=False)]


def snap(name: str, rows: list[dict[str, Any]], kind: str = "data") -> Snap:
    split = [r for r in rows if r["split"] == "train"]
    return Snap(name.ljust(64, "0"), split, kind)


def train(cfg, snaps: list[Snap], parent: Path | None, rehearsal) -> Path:
    from tasks.mix import build_mix
    from tasks.train import adapter_dir, train_adapter

    mix = build_mix(
        snaps[-1],
        snaps[:-1],
        cfg.train.replay_ratio,
        cfg.seed,
        rehearsal=rehearsal,
        rehearsal_ratio=cfg.train.rehearsal_ratio,
        made_share=cfg.train.made_replay_share,
    )
    out = adapter_dir(mix, parent, cfg)
    base = cfg.resolved_base_model()
    return train_adapter(base, mix.rows, cfg.train, out, parent, cfg.seed).adapter_dir


def correct(cfg, adapter: Path, rows: list[dict[str, Any]], slice_: str = "q") -> list[bool]:
    """Per row, answered right; in the `hallucination` slice, right is declining."""
    from tasks.evaluate import evaluate_models

    scores = evaluate_models(
        cfg.resolved_base_model(), {"m": adapter}, {slice_: rows}, cfg.eval, cfg.paths.eval_cache
    )
    return scores[slice_]["m"].outcomes


def flag_wrong(cfg, champion: Path, evals: list[dict[str, Any]]):
    """Per fact answered wrong: (flagged question, the fact's other question)."""
    from tasks.ingest import response_of

    by_fact: dict[str, list[dict[str, Any]]] = {}
    for row in evals:
        by_fact.setdefault(response_of(row), []).append(row)
    pairs = [rows[:2] for rows in by_fact.values() if len(rows) >= 2]
    right = correct(cfg, champion, [first for first, _ in pairs])
    return [(first, other) for (first, other), ok in zip(pairs, right) if not ok]


def review_snapshot(flags, train_rows, eval_prompts, generalise: bool) -> Snap:
    from tasks.generalise import generalised_rows
    from tasks.ingest import response_of

    rows = []
    for flagged, _ in flags:
        row = {**flagged, "id": f"review-{flagged['id']}", "split": "train", "facts": []}
        rows.append(row)
        if generalise:
            rows += generalised_rows(row, response_of(row), train_rows, eval_prompts)
    name = "review-generalised" if generalise else "review-flagged"
    return snap(name, rows, kind="review")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from freshtune.config import load_config
    from tasks.ingest import prompt_of
    from tasks.rehearsal import build_rehearsal
    from tasks.stats import paired, paired_difference

    cfg = load_config(args.config, [f"base_model={args.model}", *args.set], args.workspace)
    cfg.paths.ensure()
    rehearsal = build_rehearsal.fn(cfg)
    rehearsal = rehearsal.rows() if rehearsal else []
    m1, m2 = month_rows(1), month_rows(2)
    champion = train(cfg, [snap("month01", m1)], None, rehearsal)
    evals = [r for r in m2 if r["split"] == "eval" and not r.get("slice")]
    flags = flag_wrong(cfg, champion, evals)
    train_rows = [r for r in m1 + m2 if r["split"] == "train"]
    eval_prompts = {prompt_of(r) or "" for r in m1 + m2 if r["split"] == "eval"}
    out: dict[str, Any] = {"flags": len(flags), "arms": {}}
    for arm, generalise in (("flagged-only", False), ("generalised", True)):
        review = review_snapshot(flags, train_rows, eval_prompts, generalise)
        snaps = [snap("month01", m1), review]
        adapter = train(cfg, snaps, champion, rehearsal)
        out["arms"][arm] = {
            "review_rows": len(review.records),
            "unflagged": correct(cfg, adapter, [other for _, other in flags]),
            "flagged": correct(cfg, adapter, [first for first, _ in flags]),
        }
    a, b = out["arms"]["generalised"], out["arms"]["flagged-only"]
    out["unflagged_gain"] = paired_difference(paired(a["unflagged"], b["unflagged"]))._asdict()
    out["flagged_gain"] = paired_difference(paired(a["flagged"], b["flagged"]))._asdict()
    facts = [r for r in m1 if r["split"] == "eval" and not r.get("slice")]
    out["refusals"] = refusal_arms(cfg, champion, m1, rehearsal, (train_rows, eval_prompts), facts)
    return out


def refusal_arms(cfg, champion: Path, m1, rehearsal, drop, facts) -> dict:
    """The reviewer checks the champion on products never sold (month 2's review pool) and
    flags each invented answer as a hallucination with the refusal; a review-only cycle trains
    on the flags alone (`flagged-only`), or with each also taught as refusals about 2 or
    `review.refusal_names` other unknown names (`refusals-N`, tasks.generalise.refusal_rows).
    Each is scored on 16 other never-sold names, asked two ways (none flagged, none trained),
    and on month 1's fact questions: a refusal taught in the wordings of real products must
    not be said of them."""
    from bench.seasons import never_sold_eval
    from freshtune.demo_domain import review_questions
    from tasks.ingest import prompt_of

    train_rows, eval_prompts = drop
    pool = [r for r in review_questions(2, cfg.seed) if r["slice"] == "hallucination"]
    declined = correct(cfg, champion, pool, "hallucination")
    flagged = [r for r, ok in zip(pool, declined) if not ok]
    unseen = never_sold_eval()
    asked = {*eval_prompts, *(prompt_of(r) or "" for r in unseen)}
    out: dict[str, Any] = {"checked": len(pool), "flags": len(flagged), "arms": {}}
    for names in dict.fromkeys((0, 2, cfg.review.refusal_names)):
        rows = refusal_review(flagged, train_rows, asked, names)
        review = snap(f"refusals-{names}", rows, "review")
        adapter = train(cfg, [snap("month01", m1), review], champion, rehearsal)
        out["arms"]["flagged-only" if names == 0 else f"refusals-{names}"] = {
            "names": names,
            "review_rows": len(rows),
            "declined": correct(cfg, adapter, unseen, "hallucination"),
            "facts": correct(cfg, adapter, facts),
        }
    out["gains"] = gains_over(out["arms"], "flagged-only", ("declined", "facts"))
    return out


def gains_over(arms: dict[str, dict], reference: str, keys: tuple[str, ...]) -> dict:
    """Per arm and key, the paired difference from `reference` on the same questions."""
    from tasks.stats import paired, paired_difference

    return {
        arm: {k: paired_difference(paired(r[k], arms[reference][k]))._asdict() for k in keys}
        for arm, r in arms.items()
        if arm != reference
    }


def refusal_review(flagged, train_rows, eval_prompts, names: int) -> list[dict[str, Any]]:
    """The product's review rows (tasks.review.review_rows) for hallucination flags,
    normalised as record_review stores them."""
    from freshtune.config import ReviewSettings
    from tasks.curate import normalise_record
    from tasks.ingest import response_of
    from tasks.review import Flag, ReviewOutcome, review_rows

    flags = [Flag(id=r["id"], kind="hallucination", correct=response_of(r)) for r in flagged]
    outcome = ReviewOutcome(True, "bench", flags=flags)
    slices = {"hallucination": flagged}
    settings = ReviewSettings(refusal_names=names)
    taught = review_rows(outcome, slices, settings, train_rows, eval_prompts)
    return [normalise_record(r) for r in taught]


def print_table(out: dict[str, Any]) -> None:
    print(
        f"\n{out['flags']} of month 2's facts answered wrong by the month-1 champion, "
        "one question each flagged"
    )
    print(f"{'arm':<14}{'review rows':>12}{'unflagged right':>17}{'flagged right':>15}")
    for arm, r in out["arms"].items():
        n = len(r["unflagged"])
        print(
            f"{arm:<14}{r['review_rows']:>12}{sum(r['unflagged']):>11}/{n:<5}"
            f"{sum(r['flagged']):>9}/{len(r['flagged']):<5}"
        )
    for key in ("unflagged_gain", "flagged_gain"):
        print(_gain(f"generalised - flagged-only, {key.split('_')[0]} questions", out[key]))
    print_refusals(out["refusals"])


def print_refusals(refusals: dict[str, Any]) -> None:
    print(
        f"\n{refusals['flags']} of {refusals['checked']} never-sold questions answered with an "
        "invention by the champion, flagged as hallucinations"
    )
    print(f"{'arm':<14}{'review rows':>12}{'never-sold declined':>21}{'month-1 facts right':>21}")
    for arm, r in refusals["arms"].items():
        declined, facts = (f"{sum(r[k])}/{len(r[k])}" for k in ("declined", "facts"))
        print(f"{arm:<14}{r['review_rows']:>12}{declined:>21}{facts:>21}")
    for arm, by in refusals["gains"].items():
        for key, interval in by.items():
            print(_gain(f"{arm} - flagged-only, {key}", interval))


def _gain(label: str, interval: dict[str, float]) -> str:
    est, low, high = (100 * interval[k] for k in ("estimate", "low", "high"))
    return f"{label}: {est:+.1f} pts (95% CI {low:+.1f} to {high:+.1f})"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    require_checkpoint(args.model)
    shutil.rmtree(args.workspace / "adapters", ignore_errors=True)
    out = run(args)
    print_table(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
