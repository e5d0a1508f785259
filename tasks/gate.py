"""The promotion gate: per-slice thresholds judged on 95% intervals; a missing or NaN metric
is never a pass, and a slice too small to tell is said to be so, never passed silently."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune.config import FreshtuneConfig, GateSettings
from tasks.metrics import SliceScore
from tasks.stats import Interval, paired, paired_difference, scaled, wilson

log = logging.getLogger(__name__)

Scores = dict[str, dict[str, SliceScore]]


Outcome = Literal["pass", "fail", "undecided", "skipped"]


@dataclass(frozen=True)
class Check:
    """One rule of the gate on one slice, with its 95% interval.

    It passes when the whole interval is on the right side of the threshold and is undecided
    when the interval straddles it: the slice holds too few questions to tell. A rule that
    fails on the estimate (gain, forgetting) fails when the estimate is on the wrong side:
    the candidate must show what it is for. A floor (hallucination, bias: `fails_on`
    "evidence") fails only when its whole interval is on the wrong side; an estimate that
    misses it on too few questions to show a miss is undecided, and a human decides
    (`misses` says so: `gate.undecided=accept` never promotes it)."""

    slice: str
    what: str  # "accuracy gain vs champion", "hallucination rate", ...
    field: str  # the config field of the threshold
    threshold: float
    higher_is_better: bool
    interval: Interval
    n: int
    needed: int | None = None  # questions that would decide an undecided check
    rule: str = ""  # how the threshold reads, when not `field=threshold`
    fails_on: Literal["estimate", "evidence"] = "estimate"
    unit: str = "questions"  # what `n` and `needed` count: the bias slice's interval is over pairs

    @property
    def outcome(self) -> Outcome:
        value, low, high = self.interval
        worst, best = (low, high) if self.higher_is_better else (high, low)
        if self.n == 0:
            return "skipped"
        if math.isnan(value):
            return "fail"
        if not self._ok(value):
            return "undecided" if self.fails_on == "evidence" and self._ok(best) else "fail"
        return "pass" if self._ok(worst) else "undecided"

    @property
    def misses(self) -> bool:
        """Undecided with its estimate on the wrong side: no evidence either way, and the
        point estimate is against the candidate."""
        return self.outcome == "undecided" and not self._ok(self.interval.estimate)

    def _ok(self, value: float) -> bool:
        return value >= self.threshold if self.higher_is_better else value <= self.threshold

    def describe(self) -> str:
        value, low, high = self.interval
        if self.n == 0:
            return f"{self.slice}: no questions, not gated"
        text = (
            f"{self.slice}: {self.what} {value:+.3f} (95% CI {low:+.3f} to {high:+.3f}, "
            f"{self.n} {self.unit}) vs {self.rule or f'{self.field}={self.threshold:+.3f}'}: "
            f"{self.outcome}"
        )
        if self.misses:
            text += f" (its estimate misses the threshold; too few {self.unit} to show a miss)"
        if self.outcome == "undecided" and self.needed:
            text += f"; about {self.needed} {self.unit} would decide it at these rates"
        return text


@dataclass(frozen=True)
class GateDecision:
    blessed: bool
    reasons: list[str]
    reference: str
    notes: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()

    @property
    def promotable(self) -> bool:
        """No check failed: blessed, or undecided for a human (or gate.undecided) to settle."""
        return not self.reasons

    @property
    def undecided(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.outcome == "undecided")

    @property
    def verdict(self) -> str:
        """BLESSED: every check passed; UNDECIDED: none failed but some could not be decided
        on this many questions (a human decides, see gate.undecided); else NOT_BLESSED."""
        if self.blessed:
            return "BLESSED"
        return "NOT_BLESSED" if self.reasons else "UNDECIDED"

    def summary(self) -> str:
        """One line for an alert: the verdict, then each rule's estimate, interval, outcome."""
        rules = "; ".join(
            f"{c.slice} {c.what} {100 * c.interval[0]:.1f}% "
            f"({100 * c.interval[1]:.0f} to {100 * c.interval[2]:.0f}) {c.outcome}"
            for c in self.checks
            if c.outcome != "skipped"
        )
        return f"{self.verdict} vs {self.reference}" + (f": {rules}" if rules else "")


def decide(scores: Scores, gate: GateSettings) -> GateDecision:
    """The candidate must gain on the new drop (vs the champion, or the base before the first
    promotion), and stay within each slice's budget; every rule is judged on a 95% interval.
    Slices without questions are noted, not failed; a slice with questions but a NaN metric
    fails, and so does a drop without new questions."""
    reference = "champion" if "champion" in scores.get("current", {}) else "base"
    checks = [
        _delta(scores, "current", reference, gate.min_gain, "gate.min_gain"),
        _delta(scores, "earlier", reference, gate.max_forgetting, "gate.max_forgetting"),
        _delta(scores, "general", "base", gate.max_general_drop, "gate.max_general_drop"),
        _floor(
            scores,
            reference,
            _rate(
                scores,
                "hallucination",
                gate.max_hallucination_rate,
                False,
                "hallucination rate",
                "gate.max_hallucination_rate",
            ),
        ),
        _floor(
            scores,
            reference,
            _rate(
                scores,
                "bias",
                gate.min_bias_consistency,
                True,
                "pair consistency",
                "gate.min_bias_consistency",
            ),
        ),
    ]
    reasons = [c.describe() for c in checks if c.outcome == "fail"]
    if checks[0].outcome == "skipped":
        reasons.insert(0, "current: the drop has no evaluation questions; nothing shows a gain")
    notes = [c.describe() for c in checks if c.outcome in ("skipped", "undecided")]
    blessed = all(c.outcome in ("pass", "skipped") for c in checks) and not reasons
    return GateDecision(blessed, reasons, reference, tuple(notes), tuple(checks))


def _n(scores: Scores, slice_: str) -> int:
    candidate = scores.get(slice_, {}).get("candidate")
    return candidate.n if candidate else 0


def _outcomes(scores: Scores, slice_: str, model: str) -> list[bool]:
    found = scores.get(slice_, {}).get(model)
    return list(found.outcomes) if found and found.n else []


def _delta(scores: Scores, slice_: str, reference: str, threshold: float, field: str) -> Check:
    """Gain (current) or loss (earlier, general) of the candidate against `reference` on the
    same questions: Newcombe's paired interval. Missing outcomes make a NaN, so a fail."""
    cand, ref = _outcomes(scores, slice_, "candidate"), _outcomes(scores, slice_, reference)
    gain, n = slice_ == "current", _n(scores, slice_)
    what = f"accuracy {'gain' if gain else 'loss'} vs {reference}"
    if not cand or len(ref) != len(cand):
        nan = Interval(math.nan, math.nan, math.nan)
        return Check(slice_, what, field, threshold, gain, nan, n)
    table = paired(cand, ref) if gain else paired(ref, cand)
    check = Check(slice_, what, field, threshold, gain, paired_difference(table), n)
    return replace(check, needed=_needed(check, lambda k: paired_difference(scaled(table, k))))


def _rate(scores, slice_, threshold, higher_is_better, what, field) -> Check:
    outcomes = _counted(scores, slice_, "candidate")
    if slice_ == "bias" and outcomes:  # one outcome per pair of questions
        return rate_check(slice_, outcomes, threshold, higher_is_better, what, field, unit="pairs")
    return rate_check(
        slice_, outcomes, threshold, higher_is_better, what, field, _n(scores, slice_)
    )


def rate_check(
    slice_: str,
    outcomes: list[bool],
    threshold: float,
    higher_is_better: bool,
    what: str,
    field: str,
    n: int | None = None,
    unit: str = "questions",
) -> Check:
    """A floor on a rate (hallucination, bias consistency): Wilson's interval over `outcomes`
    (one per pair for bias), reported over `n` questions (default: one `unit` per outcome)."""
    k, m = sum(outcomes), len(outcomes)
    interval = wilson(k, m) if m else Interval(math.nan, math.nan, math.nan)
    check = Check(
        slice_,
        what,
        field,
        threshold,
        higher_is_better,
        interval,
        m if n is None else n,
        fails_on="evidence",
        unit=unit,
    )
    return replace(check, needed=_needed(check, lambda f: wilson(round(k * f), round(m * f))))


def _counted(scores: Scores, slice_: str, model: str) -> list[bool]:
    found = scores.get(slice_, {}).get(model)
    metric = "hallucination" if slice_ == "hallucination" else "consistency"
    return found.counted(metric) if found and found.n else []


def _floor(scores: Scores, reference: str, check: Check) -> Check:
    """A floor (hallucination, bias) that the model being replaced misses itself becomes a
    no-worse-than-it rule, on the same questions: refusing every candidate for missing it would
    keep serving a model that misses it too, and by as much or more (the demo's base agrees
    on 1 of its 2 month-1 bias pairs against a floor of 0.8)."""
    cand, ref = _counted(scores, check.slice, "candidate"), _counted(scores, check.slice, reference)
    theirs = sum(ref) / len(ref) if ref else math.nan
    if not cand or len(ref) != len(cand) or check._ok(theirs):
        return check
    table = paired(cand, ref) if check.higher_is_better else paired(ref, cand)
    change = "gain" if check.higher_is_better else "reduction"
    what = (
        f"{check.what} {change} vs {reference} (whose {100 * theirs:.0f}% misses the floor itself)"
    )
    rule = f"{check.field}={check.threshold:g} relaxed to no worse than {reference} (+0.000)"
    interval = paired_difference(table)
    no_worse = Check(
        check.slice,
        what,
        check.field,
        0.0,
        True,
        interval,
        check.n,
        rule=rule,
        fails_on="evidence",
        unit=check.unit,
    )
    return replace(
        no_worse, needed=_needed(no_worse, lambda k: paired_difference(scaled(table, k)))
    )


def _needed(check: Check, at_scale) -> int | None:
    """Questions that, at the rates seen, would decide an undecided check (pass, or fail for a
    floor whose estimate misses it)."""
    if check.outcome != "undecided":
        return None
    for factor in (1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32):
        if replace(check, interval=at_scale(factor)).outcome != "undecided":
            return round(check.n * factor)
    return None


def check_record(check: Check) -> dict[str, Any]:
    estimate, low, high = check.interval
    return {
        "slice": check.slice,
        "what": check.what,
        "estimate": estimate,
        "low": low,
        "high": high,
        "threshold": check.threshold,
        "field": check.field,
        "questions": check.n,
        "unit": check.unit,
        "outcome": check.outcome,
        "needed": check.needed,
    }


def checks_table(checks: list[dict[str, Any]]) -> list[str]:
    """The gate's rules as a markdown table: estimate, 95% interval, threshold, outcome."""
    lines = [
        "| slice | rule | estimate | 95% interval | threshold | counted | outcome |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        if not c["questions"]:
            continue
        unit = c.get("unit", "questions")
        needed = f" (~{c['needed']} {unit} needed)" if c.get("needed") else ""
        lines.append(
            f"| {c['slice']} | {c['what']} | {_signed(c['estimate'])} | "
            f"{_signed(c['low'])} to {_signed(c['high'])} | {c['field']} = "
            f"{_signed(c['threshold'])} | {c['questions']} {unit} | **{c['outcome']}**{needed} |"
        )
    return lines


def _signed(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:+.1f} pts"


@task(name="apply-gate", cache_policy=NO_CACHE)
def apply_gate(scores: Scores, cfg: FreshtuneConfig, run_id: str) -> GateDecision:
    from tasks import registry

    decision = decide(scores, cfg.gate)
    registry.log_metrics(cfg, run_id, gate_metrics(decision))
    registry.set_tags(
        cfg,
        run_id,
        {
            "freshtune.gate": decision.verdict,
            "freshtune.gate_reasons": "; ".join(decision.reasons),
            "freshtune.gate_undecided": "; ".join(c.describe() for c in decision.undecided),
        },
    )
    log.info("gate: %s %s", decision.verdict, [c.describe() for c in decision.checks])
    return decision


def gate_metrics(decision: GateDecision) -> dict[str, float]:
    """Each check's estimate and 95% interval, as MLflow metrics (gate.<slice>.low, ...)."""
    return {
        f"gate.{c.slice}.{name}": value
        for c in decision.checks
        if c.n
        for name, value in zip(("estimate", "low", "high"), c.interval)
    }
