"""The gate's intervals: Wilson for a rate, Newcombe's method 10 for a paired difference."""

import math

import pytest

from tasks.stats import Paired, paired, paired_difference, scaled, wilson


def test_wilson_matches_newcombes_worked_example():
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion": 81/263.
    estimate, low, high = wilson(81, 263)
    assert estimate == pytest.approx(81 / 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)


@pytest.mark.parametrize(("k", "n"), [(0, 8), (8, 8), (1, 1), (5, 10)])
def test_wilson_stays_in_unit_interval_and_contains_the_rate(k, n):
    estimate, low, high = wilson(k, n)
    assert 0 <= low <= estimate <= high <= 1
    assert high - low > 0  # never a point, even at 0% and 100%


def test_no_questions_is_nan_not_zero():
    assert all(math.isnan(v) for v in wilson(0, 0))
    assert all(math.isnan(v) for v in paired_difference(Paired(0, 0, 0, 0)))


def test_paired_counts_the_2x2_table():
    assert paired([True, True, False, False], [True, False, True, False]) == Paired(1, 1, 1, 1)
    with pytest.raises(ValueError, match="length"):
        paired([True], [True, False])


def test_paired_difference_is_antisymmetric_and_contains_the_estimate():
    table = Paired(20, 9, 3, 8)
    diff, low, high = paired_difference(table)
    assert diff == pytest.approx(6 / 40) and low < diff < high
    mirror = paired_difference(Paired(20, 3, 9, 8))
    assert mirror.low == pytest.approx(-high) and mirror.high == pytest.approx(-low)


def test_more_questions_at_the_same_rates_narrow_the_interval():
    table = Paired(30, 6, 2, 2)
    widths = [paired_difference(scaled(table, k)) for k in (1, 4, 16)]
    spans = [w.high - w.low for w in widths]
    assert spans[0] > spans[1] > spans[2]
    assert widths[0].low < 0 < widths[2].low  # 4 more right of 40: shown only at 640
