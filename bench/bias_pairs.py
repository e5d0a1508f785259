"""What the bias slice can tell: counterfactual-pair consistency of the base and of trained
adapters on every new fact of the demo's months, each asked by several customers.

Run: python bench/bias_pairs.py --adapter m1=.freshtune/adapters/KEY [--adapter m2=...]
     [--months 1 2] [--personas 8] [--json out.json]
     (about 25 s a model on 2 CPU cores with SmolLM2-135M, months 1-2 and 8 customers)

A demo drop pairs two customers on two of its facts a month, so the gate judges
`gate.min_bias_consistency` on 4-6 pairs, where one pair moves the estimate by 17-25 points.
This asks each new fact's evaluation question of `--personas` customers ("Hi, I'm Aisha from
Lagos. ..."), pairs them as the drops do (first with second, third with fourth, ...), and
reports per model, with 95% intervals: the pairs whose answers state the same facts (the
gate's `bias` metric), the share of answers right with the customer's introduction and
without it (the same questions), the change of consistency against the base (or
`--reference`) on the same pairs, and about how many pairs would show the floor met (or
missed) at the rate seen.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import freshtune  # noqa: F401  (quiet defaults before prefect/mlflow load)
from bench.checkpoints import require_checkpoint

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / ".freshtune/models/smollm2-135m-instruct"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="base checkpoint folder")
    parser.add_argument("--adapter", action="append", default=[], help="NAME=PATH, repeatable")
    parser.add_argument("--months", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--personas", type=int, default=8, help="even, at most 8")
    parser.add_argument("--floor", type=float, default=0.8, help="gate.min_bias_consistency")
    parser.add_argument("--reference", default="base", help="the model the others are paired with")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.personas % 2 or not 2 <= args.personas <= 8:
        parser.error("--personas: an even number from 2 to 8")
    if any("=" not in a for a in args.adapter):
        parser.error("--adapter: NAME=PATH")
    if args.reference not in ["base", *(a.split("=", 1)[0] for a in args.adapter)]:
        parser.error(f"--reference {args.reference}: not base nor an --adapter name")
    return args


def question_rows(months: list[int], personas: int) -> dict[str, list[dict[str, Any]]]:
    """`bias`: each new fact asked by every customer, paired in twos; `plain`: each fact's
    same question with no introduction."""
    from freshtune.demo_domain import (
        BIAS_PERSONAS,
        answer_for,
        asked_by,
        changed_facts,
        chat,
        eval_question,
    )

    bias, plain = [], []
    for month in months:
        for fact in changed_facts(month):
            key, row = f"m{month}-{fact.fact_id}", {"split": "eval", "facts": [fact.value]}
            question = chat(eval_question(fact), answer_for(fact))
            plain.append({**row, "id": key, "messages": question})
            for i, persona in enumerate(BIAS_PERSONAS[:personas]):
                asked = chat(asked_by(persona, fact), answer_for(fact))
                pair = {"id": f"{key}-{i}", "pair": f"{key}-{i // 2}"}
                bias.append({**row, **pair, "messages": asked})
    return {"bias": bias, "plain": plain}


def pairs_to_decide(outcomes: list[bool], floor: float) -> str:
    """Whether the gate's bias floor is decided on these pairs, or how many pairs, at the rate
    seen, would decide it: the gate's own rule (tasks.gate.rate_check)."""
    from tasks.gate import rate_check

    check = rate_check("bias", outcomes, floor, True, "consistency", "gate.min_bias_consistency")
    if check.outcome != "undecided":
        return f"decided ({check.outcome})"
    return str(check.needed) if check.needed else "over 32x"


def summarise(
    scores: dict[str, Any], floor: float, reference: str = "base"
) -> dict[str, dict[str, Any]]:
    from tasks.stats import paired, paired_difference, wilson

    against = scores["bias"][reference].outcomes
    out = {}
    for name, bias in scores["bias"].items():
        agreeing, n = sum(bias.outcomes), len(bias.outcomes)
        figures = {
            "pairs": n,
            "consistency": tuple(wilson(agreeing, n)),
            "right_introduced": bias.accuracy,
            "right_plain": scores["plain"][name].accuracy,
            "pairs_to_decide": pairs_to_decide(list(bias.outcomes), floor),
        }
        if name != reference:
            figures["vs_reference"] = tuple(paired_difference(paired(bias.outcomes, against)))
        out[name] = figures
    return out


def table(summary: dict[str, dict[str, Any]], floor: float, reference: str = "base") -> str:
    lines = [
        f"| model | pairs | consistency (95% CI) | vs {reference} | right, introduced "
        "| right, plain "
        f"| pairs to decide {floor:g} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in summary.items():
        value, low, high = f["consistency"]
        change = f.get("vs_reference")
        delta = _points(*change) if change else ""
        lines.append(
            f"| {name} | {f['pairs']} | {100 * value:.0f}% ({100 * low:.0f}-{100 * high:.0f}) "
            f"| {delta} | {100 * f['right_introduced']:.0f}% "
            f"| {100 * f['right_plain']:.0f}% | {f['pairs_to_decide']} |"
        )
    return "\n".join(lines)


def _points(value: float, low: float, high: float) -> str:
    return f"{100 * value:+.1f} ({100 * low:+.1f} to {100 * high:+.1f})"


def main(argv: list[str] | None = None) -> int:
    from freshtune.config import EvalSettings
    from tasks.evaluate import evaluate_models

    args = parse_args(argv)
    base = require_checkpoint(args.model)
    adapters = dict(a.split("=", 1) for a in args.adapter)
    missing = [p for p in adapters.values() if not Path(p, "adapter_config.json").is_file()]
    if missing:
        sys.exit(f"no adapter at {', '.join(missing)} (adapter_config.json)")
    slices = question_rows(args.months, args.personas)
    settings = EvalSettings(max_new_tokens=20)  # the demo preset's answer budget
    scores = evaluate_models(base, {n: Path(p) for n, p in adapters.items()}, slices, settings)
    summary = summarise(scores, args.floor, args.reference)
    print(table(summary, args.floor, args.reference))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
