"""95% intervals for the gate: Wilson for one model's rate, Newcombe's for a paired difference.

Evaluation slices hold tens of questions, where one question moves a score by several points:
a threshold compared with a bare rate decides on noise. Both intervals are closed-form (no
seed, no resampling), stay inside [0, 1] and behave at 0% and 100%, where the normal
approximation and a bootstrap collapse to a point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

Z95 = 1.959964


class Interval(NamedTuple):
    estimate: float
    low: float
    high: float


class Paired(NamedTuple):
    """Counts of a 2x2 table over the same questions: both right, only x, only y, neither."""

    both: int
    only_x: int
    only_y: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.only_x + self.only_y + self.neither


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval of a proportion."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def paired(x: Sequence[bool], y: Sequence[bool]) -> Paired:
    if len(x) != len(y):
        raise ValueError(f"paired outcomes differ in length: {len(x)} vs {len(y)}")
    pairs = list(zip(x, y))
    return Paired(
        sum(a and b for a, b in pairs),
        sum(a and not b for a, b in pairs),
        sum(b and not a for a, b in pairs),
        sum(not a and not b for a, b in pairs),
    )


def paired_difference(t: Paired, z: float = Z95) -> Interval:
    """Interval of rate(x) - rate(y) on the same questions: Newcombe (1998), method 10.

    Wilson limits of each rate, combined with the correlation of the paired outcomes: two
    models that agree on most questions get a narrower interval than independent samples."""
    n = t.n
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    p1, l1, u1 = wilson(t.both + t.only_x, n, z)
    p2, l2, u2 = wilson(t.both + t.only_y, n, z)
    phi = _phi(t)
    low = (p1 - p2) - math.sqrt(
        max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    )
    high = (p1 - p2) + math.sqrt(
        max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    )
    return Interval(p1 - p2, max(-1.0, low), min(1.0, high))


def _phi(t: Paired) -> float:
    """Correlation of the paired outcomes with Newcombe's continuity correction (a positive
    cross-product is reduced by n/2, not below 0); 0 when a margin is empty."""
    margins = (
        (t.both + t.only_x) * (t.only_y + t.neither) * (t.both + t.only_y) * (t.only_x + t.neither)
    )
    if margins == 0:
        return 0.0
    cross = t.both * t.neither - t.only_x * t.only_y
    corrected = max(cross - t.n / 2, 0.0) if cross > 0 else cross
    return corrected / math.sqrt(margins)


def scaled(t: Paired, factor: float) -> Paired:
    """The same table with `factor` times the questions: what a bigger slice would show."""
    return Paired(*(round(c * factor) for c in t))
