"""The promotion gate: per-slice thresholds; a missing or NaN metric is never a pass."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune.config import FreshtuneConfig, GateSettings
from tasks.metrics import SliceScore

log = logging.getLogger(__name__)

Scores = dict[str, dict[str, SliceScore]]


@dataclass(frozen=True)
class GateDecision:
    blessed: bool
    reasons: list[str]
    reference: str
    notes: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        return "BLESSED" if self.blessed else "NOT_BLESSED"


def decide(scores: Scores, gate: GateSettings) -> GateDecision:
    """The candidate must gain on the new drop (vs the champion, or the base before the first
    promotion), and stay within each slice's budget. Slices without questions are noted, not
    failed; a slice with questions but a NaN metric fails."""
    reference = "champion" if "champion" in scores.get("current", {}) else "base"
    reasons: list[str] = []
    notes: list[str] = []
    gain = _delta(scores, "current", reference, "accuracy")
    if _n(scores, "current") == 0 or math.isnan(gain) or gain < gate.min_gain:
        reasons.append(
            f"current: accuracy gain vs {reference} is {gain:+.3f}, "
            f"below gate.min_gain={gate.min_gain:+.3f}"
        )
    _budget(
        scores, "earlier", reference, gate.max_forgetting, "gate.max_forgetting", reasons, notes
    )
    _budget(
        scores, "general", "base", gate.max_general_drop, "gate.max_general_drop", reasons, notes
    )
    _bound(
        scores,
        "hallucination",
        "hallucination",
        gate.max_hallucination_rate,
        True,
        "gate.max_hallucination_rate",
        reasons,
        notes,
    )
    _bound(
        scores,
        "bias",
        "consistency",
        gate.min_bias_consistency,
        False,
        "gate.min_bias_consistency",
        reasons,
        notes,
    )
    return GateDecision(not reasons, reasons, reference, tuple(notes))


def _n(scores: Scores, slice_: str) -> int:
    candidate = scores.get(slice_, {}).get("candidate")
    return candidate.n if candidate else 0


def _delta(scores: Scores, slice_: str, reference: str, metric: str) -> float:
    by_model = scores.get(slice_, {})
    if "candidate" not in by_model or reference not in by_model:
        return math.nan
    return getattr(by_model["candidate"], metric) - getattr(by_model[reference], metric)


def _budget(scores, slice_, reference, budget, field, reasons, notes) -> None:
    if _n(scores, slice_) == 0:
        notes.append(f"{slice_}: no questions, not gated")
        return
    drop = -_delta(scores, slice_, reference, "accuracy")
    if math.isnan(drop) or drop > budget:
        reasons.append(
            f"{slice_}: accuracy fell by {drop:.3f} vs {reference}, above {field}={budget:.3f}"
        )


def _bound(scores, slice_, metric, limit, above, field, reasons, notes) -> None:
    if _n(scores, slice_) == 0:
        notes.append(f"{slice_}: no questions, not gated")
        return
    value = getattr(scores[slice_]["candidate"], metric)
    if math.isnan(value) or (value > limit if above else value < limit):
        side = "above" if above else "below"
        reasons.append(f"{slice_}: candidate {metric} {value:.3f} is {side} {field}={limit:.3f}")


@task(name="apply-gate", cache_policy=NO_CACHE)
def apply_gate(scores: Scores, cfg: FreshtuneConfig, run_id: str) -> GateDecision:
    from tasks import registry

    decision = decide(scores, cfg.gate)
    registry.set_tags(
        cfg,
        run_id,
        {
            "freshtune.gate": decision.verdict,
            "freshtune.gate_reasons": "; ".join(decision.reasons),
        },
    )
    log.info("gate: %s %s", decision.verdict, decision.reasons)
    return decision
