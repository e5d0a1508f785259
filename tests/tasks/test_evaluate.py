import math

import pytest

from freshtune.config import GateSettings
from tasks.evaluate import SliceScore, decide, is_correct, normalise_answer, token_f1


def test_key_facts_must_appear_as_whole_words():
    assert is_correct("Horizon is $52 a month.", "The Horizon plan costs $52.", ["$52"])
    assert not is_correct("Horizon is $520 a month.", "", ["$52"])
    assert not is_correct("It costs 52 dollars.", "", ["$52"])
    assert is_correct("You get 1,500 minutes and 35 GB.", "", ["1500 minutes", "35 GB"])
    assert not is_correct("You get 35 GB.", "", ["1500 minutes", "35 GB"])


def test_without_facts_the_reference_must_be_contained():
    assert is_correct("Sure! Support is open 8am to 8pm daily.", "Support is open 8am to 8pm", [])
    assert not is_correct("Support is open all day.", "Support is open 8am to 8pm", [])


def test_normalisation_keeps_prices_and_decimals():
    assert normalise_answer("It's $12.50, NOT $1,250!") == "it s $12.50 not $1250"


def test_token_f1_bounds():
    assert token_f1("the plan costs $52", "the plan costs $52") == 1.0
    assert token_f1("nothing alike", "the plan costs $52") == 0.0
    assert 0 < token_f1("the plan costs $40", "the plan costs $52") < 1


def _scores(current: dict[str, float], earlier: dict[str, float] | None = None) -> dict:
    def table(accs: dict[str, float]) -> dict:
        return {m: SliceScore(10, a, a) for m, a in accs.items()}

    out = {"current": table(current)}
    if earlier is not None:
        out["earlier"] = table(earlier)
    return out


GATE = GateSettings(min_gain=0.1, max_forgetting=0.05)


def test_first_cycle_is_compared_with_the_base_model():
    decision = decide(_scores({"base": 0.0, "candidate": 0.8}), GATE)
    assert decision.blessed and decision.reference == "base"


@pytest.mark.parametrize(
    ("current", "earlier", "reason"),
    [
        ({"base": 0, "champion": 0.5, "candidate": 0.55}, None, "gain"),
        (
            {"base": 0, "champion": 0.2, "candidate": 0.9},
            {"champion": 0.9, "candidate": 0.7},
            "earlier-drops accuracy fell by 0.200",
        ),
        ({"base": 0, "champion": 0.2, "candidate": math.nan}, None, "gain"),
        (
            {"base": 0, "champion": 0.2, "candidate": 0.9},
            {"champion": 0.9, "candidate": math.nan},
            "earlier",
        ),
    ],
)
def test_gate_refuses_small_gains_forgetting_and_missing_metrics(current, earlier, reason):
    earlier_scores = None if earlier is None else {"base": 0.0, **earlier}
    decision = decide(_scores(current, earlier_scores), GATE)
    assert not decision.blessed and decision.verdict == "NOT_BLESSED"
    assert any(reason in r for r in decision.reasons), decision.reasons


def test_gate_blesses_a_gain_within_the_forgetting_budget():
    decision = decide(
        _scores(
            {"base": 0, "champion": 0.2, "candidate": 0.9},
            {"base": 0, "champion": 0.9, "candidate": 0.86},
        ),
        GATE,
    )
    assert decision.blessed and decision.reference == "champion" and decision.reasons == []
