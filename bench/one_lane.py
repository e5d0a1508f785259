"""One strategy of bench/seasons.py alone, for a paired experiment on a training setting.

Run: python bench/one_lane.py A.json --quick --set train.dtype=bfloat16 [--set ...]
     python bench/one_lane.py B.json --quick --set ... --set train.target_held_out=true
     python bench/one_lane.py --compare B.json A.json   # B - A, paired, with 95% intervals
     python bench/one_lane.py --summary A.json          # one run: the bar, facts by age
     python bench/one_lane.py --floor F.json --months 12 --against A.json [--trained C.json]
                                 # cumulative's tokens at the fewest epochs, no training: A's
                                 # tokens over them bound A's compute ratio from above; C, a
                                 # cumulative run of the first months, counts those as trained
     (every seasons.py option applies; --lane picks the strategy, continuous by default)

The lane trains, is scored and reviewed exactly as in seasons.py (its drops, curation, mix,
train-to-target, evaluation slices and simulated reviewer), without the other strategies: 3
months of the continuous lane took 16-21 minutes with two runs side by side on 2 cores,
against 67-74 for seasons.py --quick. Two runs with the same seed ask the same questions, so
their outcomes pair up; what it cannot say is how a setting moves the claims between lanes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import seasons
from bench.seasons_claims import (
    ages_asked,
    by_age,
    judge,
    known_interval,
    must_show,
    pooled,
    pts,
    share_text,
)

FACTS = ("current", "earlier")  # the facts true that month


def run(out: Path, argv: list[str], lane: str = "continuous") -> list[dict[str, Any]]:
    """Months 1..n of `lane`; each month's entry (as seasons.py writes it) into `out`."""
    args, cfg = bench(argv)
    cfg.paths.ensure()
    args.questions = cfg.eval.max_questions or seasons.PRESETS[args.preset]["questions"]
    rehearsal = seasons.rehearsal_rows(cfg)
    team, months = {lane: seasons.lanes()[lane]}, []
    for month in range(1, args.months + 1):
        started = time.perf_counter()
        records = drop(month, args, cfg)
        spent = seasons.train_lane(team[lane], month, records, cfg, rehearsal)
        scored = seasons.evaluate_month(month, team, args, cfg)
        general = general_scores(cfg, lane, team[lane].adapter)
        for name in ("base", lane):
            scored["outcomes"][name]["general"] = seasons.bits(general[name].outcomes)
        flags = seasons.review_lanes(team, month, args, cfg)
        strategy = {**scored["figures"][lane], **spent, "general": general[lane].accuracy}
        strategy["flags"] = flags.get(lane, 0)
        base = {**scored["figures"]["base"], **seasons.IDLE, "general": general["base"].accuracy}
        base["flags"] = 0
        months.append(
            {
                "month": month,
                # the base, scored anyway, lets seasons.py --merge check that lanes pair up
                "strategies": {"base": base, lane: strategy},
                "outcomes": {"base": scored["outcomes"]["base"], lane: scored["outcomes"][lane]},
                "questions": scored["questions"],
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        settings = seasons.settings_of(cfg, rehearsal, args.questions)
        out.write_text(json.dumps({"lane": lane, "argv": argv, "settings": settings,
                                   "months": months}, indent=1))  # fmt: skip
    return months


def cumulative_floor(argv: list[str]) -> list[dict[str, Any]]:
    """The cumulative lane's training tokens month by month, without training it: each
    month's mix as seasons.py builds it from the lane's data snapshots, its tokens per epoch
    (as the Trainer counts them) x the fewest epochs a cycle trains (`train.target_min_epochs`
    under a target, else `train.epochs`). Review snapshots are left out (their rows come from
    the lane's own answers), so this is a floor under cumulative retraining's cost, and a
    lane's tokens over it bound that lane's compute ratio from above."""
    from tasks.models import load_tokenizer
    from tasks.train import build_dataset

    args, cfg = bench(argv)
    train, rehearsal = cfg.train, seasons.rehearsal_rows(cfg)
    budget = train.for_cycle(continues=False).epochs  # cumulative starts from the base
    epochs = budget if train.target_recall is None else min(train.target_min_epochs, budget)
    tokenizer = load_tokenizer(cfg.resolved_base_model())
    lane, out = seasons.lanes()["cumulative"], []
    for month in range(1, args.months + 1):
        snap, mix = seasons.lane_mix(lane, drop(month, args, cfg), cfg, rehearsal)
        lane.history.append(snap)
        per_epoch = sum(build_dataset(tokenizer, mix.rows, train.max_length)["length"])
        out.append({"month": month, "rows": len(mix.rows), "epoch_tokens": per_epoch,
                    "floor_tokens": round(per_epoch * epochs)})  # fmt: skip
    return out


def floor_lines(
    floor: list[dict[str, Any]], run: dict[str, Any] | None, trained: dict[str, Any] | None = None
) -> list[str]:
    """The floor month by month, and with a run (same months) its tokens against the floor.
    With `trained` (a cumulative run of the first months), those months count what they
    trained and only the rest are floored: a tighter bound while months remain, a measurement
    once none do."""
    lines = [f"month {m['month']}: {m['rows']} rows, {m['epoch_tokens']} tokens an epoch, "
             f"at least {m['floor_tokens']}" for m in floor]  # fmt: skip
    total = sum(m["floor_tokens"] for m in floor)
    lines.append(f"cumulative retraining, months 1-{len(floor)}: at least {total} tokens")
    measured = False  # every month trained: the ratio is measured, not bounded
    if trained is not None:
        total, line = with_trained(floor, trained)
        lines.append(line)
        measured = len(trained["months"]) == len(floor)
    if run is not None:
        if len(run["months"]) != len(floor):
            raise SystemExit(f"{len(run['months'])} months against {len(floor)}: not paired")
        spent = lane_tokens(run)
        ratio = f"{'' if measured else 'at most '}{spent / total:.2f}x"
        lines.append(f"{run['lane']}: {spent} tokens, {ratio} cumulative's")
    return lines


def with_trained(floor: list[dict[str, Any]], trained: dict[str, Any]) -> tuple[int, str]:
    """Cumulative's tokens over `floor`'s months, its trained months counted as trained
    (exact when every month trained, else at least this many), and a line that says which."""
    if trained["lane"] != "cumulative" or not 0 < len(trained["months"]) <= len(floor):
        got = f"{trained['lane']}'s {len(trained['months'])}"
        raise SystemExit(f"--trained needs a cumulative run of 1-{len(floor)} months, not {got}")
    done = len(trained["months"])
    spent = lane_tokens(trained)
    rest = sum(m["floor_tokens"] for m in floor[done:])
    if done == len(floor):
        return spent, f"as trained, months 1-{done}: {spent} tokens"
    return spent + rest, (
        f"with months 1-{done} as trained ({spent} tokens) and {len(floor) - done} floored "
        f"({rest}): at least {spent + rest} tokens"
    )


def lane_tokens(run: dict[str, Any]) -> int:
    """The training tokens of a run file's lane, every month it holds."""
    return sum(m["strategies"][run["lane"]]["tokens"] for m in run["months"])


def bench(argv: list[str]) -> tuple[Any, Any]:
    """seasons.py's options and the config its lanes train with."""
    args = seasons.parse_args(argv)
    args.change_share = seasons.PRESETS[args.preset]["change_share"]
    return args, seasons.bench_config(args)


def drop(month: int, args: Any, cfg: Any) -> list[dict[str, Any]]:
    """The month's dirty drop as seasons.py reads it."""
    return seasons.as_records(seasons.dirty_drop(month, args.change_share, args.noise, cfg.seed))


def general_scores(cfg: Any, lane: str, adapter: Path | None) -> dict[str, Any]:
    """The lane's and the base's scores on the product's shipped general questions (the
    gate's general slice), which seasons.py does not ask: what the lane kept of the base."""
    from tasks.evaluate import GENERAL_FILE, load_eval_file

    rows = load_eval_file(cfg.eval.general_file or GENERAL_FILE, "general")
    rows = rows[: cfg.eval.max_questions] if cfg.eval.max_questions else rows
    scores = seasons.score_models(cfg, {lane: adapter}, {"general": rows})
    return {name: by["general"] for name, by in scores.items()}


def compare(x: dict[str, Any], y: dict[str, Any]) -> list[str]:
    """x - y on the same questions: the facts true each month, months 2..n pooled, per slice,
    and the earlier facts by their age. The runs may be of two lanes (continuous against
    no-curation: curation's effect)."""
    la, lb = x["lane"], y["lane"]
    if len(x["months"]) != len(y["months"]):
        raise SystemExit(f"{len(x['months'])} months against {len(y['months'])}: not paired")
    pairs = list(zip(x["months"], y["months"]))
    if any(a["questions"] != b["questions"] for a, b in pairs):
        raise SystemExit("the two runs asked different questions: not paired (seed, --quick?)")
    lines = []
    for a, b in pairs:
        sa, sb = a["strategies"][la], b["strategies"][lb]
        ka, kb = known_interval(a, la), known_interval(b, lb)
        lines.append(
            f"month {a['month']}: facts true {ka.estimate:.0%} vs {kb.estimate:.0%}, "
            f"general {sa.get('general', math.nan):.0%} vs {sb.get('general', math.nan):.0%}, "
            f"epochs {sa['epochs']:g} vs {sb['epochs']:g}, tokens {sa['tokens']} vs {sb['tokens']}"
        )
    for name, slices, first in (
        ("facts true that month, every month", FACTS, 1),
        ("facts true that month, months 2..n", FACTS, 2),
        ("earlier facts, months 2..n", ("earlier",), 2),
        ("never-sold declined, every month", ("hallucination",), 1),
        ("general questions, every month", ("general",), 1),
    ):
        xs = [o for s in slices for o in pooled(x["months"], la, s, first)]
        ys = [o for s in slices for o in pooled(y["months"], lb, s, first)]
        lines.append(judged(name, xs, ys))
    for name, ages in (("earlier facts 1-2 months old", (1, 2)), ("3+ months old", (3, 99))):
        xs, ys = by_age(x["months"], la, *ages), by_age(y["months"], lb, *ages)
        lines.append(judged(name, xs, ys, rates=True))
    tokens = [lane_tokens(x), lane_tokens(y)]
    lines.append(f"training tokens: {tokens[0]} vs {tokens[1]} ({tokens[0] / tokens[1]:.2f}x)")
    return lines


def judged(name: str, xs: list[bool], ys: list[bool], rates: bool = False) -> str:
    """One compare line: x - y in points with its 95% interval and verdict."""
    j = judge(xs, ys, +1)
    both = f"; {j['rates'][0]:.0%} vs {j['rates'][1]:.0%}" if rates else ""
    return (
        f"{name}: {pts(j['estimate'])} points ({pts(j['low'])} to {pts(j['high'])}, "
        f"n={j['n']}{both}): {j['verdict']}"
    )


def summary(x: dict[str, Any]) -> list[str]:
    """One run alone: each month, issue #16's bar over months 2..n, the earlier facts by age."""
    lane, months = x["lane"], x["months"]
    lines = []
    for m in months:
        s, k = m["strategies"][lane], known_interval(m, lane)
        lines.append(
            f"month {m['month']}: facts true {k.estimate:.0%} ({k.low:.0%}-{k.high:.0%}), "
            f"general {s.get('general', math.nan):.0%}, epochs {s['epochs']:g}, "
            f"tokens {s['tokens']}, {m['seconds'] / 60:.1f} min"
        )
    bar = must_show(months, lane)
    mean, low = bar["mean"], bar["lowest"]
    if low is None:  # one month: nothing after the first to judge
        return [*lines, "facts true that month, months 2..n: none (a one-month run)"]
    lines.append(
        f"facts true that month, months 2-{len(months)}: {mean.estimate:.1%} "
        f"({mean.low:.1%}-{mean.high:.1%}), {bar['mean_verdict']} against 80%; lowest month "
        f"{bar['lowest_month']}: {low.estimate:.0%}, {bar['floor_verdict']} against 60%"
    )
    for age in ages_asked(months):
        got = share_text(by_age(months, lane, age, age))
        lines.append(f"earlier facts {age} months old: {got}")
    tokens = lane_tokens(x)
    return [*lines, f"training tokens: {tokens}"]


def main(argv: list[str]) -> None:
    if argv[:1] == ["--summary"]:
        print("\n".join(summary(read(argv[1]))))
        return
    if argv[:1] == ["--compare"]:
        x, y = (read(p) for p in argv[1:3])
        print("\n".join(compare(x, y)))
        return
    if argv[:1] == ["--floor"]:
        (against, trained), argv = options(argv, "--against", "--trained")
        floor = cumulative_floor(argv[2:])
        Path(argv[1]).write_text(json.dumps({"argv": argv[2:], "months": floor}, indent=1))
        print("\n".join(floor_lines(floor, read(against), read(trained))))
        return
    lane, argv = option(argv, "--lane")
    run(Path(argv[0]), argv[1:], lane or "continuous")


def option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """The value after `name` in `argv` (None when absent) and `argv` without the two."""
    if name not in argv:
        return None, argv
    at = argv.index(name)
    return argv[at + 1], argv[:at] + argv[at + 2 :]


def options(argv: list[str], *names: str) -> tuple[list[str | None], list[str]]:
    """`option` for each of `names`, in order."""
    values = []
    for name in names:
        value, argv = option(argv, name)
        values.append(value)
    return values, argv


def read(path: str | None) -> dict[str, Any] | None:
    """A run file's contents; None for no file."""
    return json.loads(Path(path).read_text()) if path else None


if __name__ == "__main__":
    main(sys.argv[1:])
