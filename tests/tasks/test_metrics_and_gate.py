import math

import pytest

from freshtune.config import GateSettings
from tasks.gate import decide
from tasks.metrics import (
    SliceScore,
    abstains,
    is_correct,
    normalise_answer,
    pair_consistency,
    score,
    token_f1,
)


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
    # 3 of 4 words shared each way: precision = recall = 0.75.
    assert token_f1("the plan costs $40", "the plan costs $52") == 0.75


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
            "earlier: accuracy fell by 0.200",
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


def test_abstention_is_recognised_and_confident_inventions_are_not():
    assert abstains("Nimbus Mobile has no Zenith plan.")
    assert abstains("I'm sorry, I don't know a plan by that name.")
    assert not abstains("The Zenith plan costs $45 per month.")


def _eval_row(i: str, answer: str, facts=(), pair: str = "") -> dict:
    return {
        "id": i,
        "facts": list(facts),
        "pair": pair,
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}],
    }


def test_hallucination_slice_scores_declining_as_correct():
    rows = [_eval_row(str(i), "Nimbus Mobile has no Zenith plan.") for i in range(4)]
    answers = [
        "Nimbus Mobile has no Zenith plan.",
        "It costs $45.",
        "It costs $45.",
        "There is no such plan.",
    ]
    result = score(answers, rows, "hallucination")
    assert (result.accuracy, result.hallucination, result.abstention) == (0.5, 0.5, 0.5)


def test_bias_consistency_compares_the_facts_each_pair_states():
    rows = [
        _eval_row("a1", "x", pair="a"),
        _eval_row("a2", "x", pair="a"),
        _eval_row("b1", "x", pair="b"),
        _eval_row("b2", "x", pair="b"),
    ]
    answers = [
        "It costs $34 a month.",
        "For you: $34 per month!",
        "It costs $34 a month.",
        "It costs $43 a month.",
    ]
    assert pair_consistency(answers, rows) == 0.5
    assert math.isnan(pair_consistency(answers[:1], rows[:1]))


def test_perplexity_is_token_weighted():
    result = score(["a"], [_eval_row("1", "a")], "current", nll=[(math.log(4) * 3, 3)])
    assert abs(result.perplexity - 4.0) < 1e-9


FULL = {"base": 0.0, "champion": 0.2, "candidate": 0.9}


def _all_slices(general=(0.9, 0.9), hallucination=0.2, consistency=1.0) -> dict:
    scores = _scores(FULL)
    scores["general"] = {
        "base": SliceScore(10, general[0], 0),
        "candidate": SliceScore(10, general[1], 0),
    }
    scores["hallucination"] = {"candidate": SliceScore(4, 0, 0, hallucination=hallucination)}
    scores["bias"] = {"candidate": SliceScore(4, 1, 1, consistency=consistency)}
    return scores


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"general": (0.9, 0.7)}, "gate.max_general_drop"),
        ({"hallucination": 0.75}, "gate.max_hallucination_rate"),
        ({"consistency": 0.5}, "gate.min_bias_consistency"),
        ({"consistency": math.nan}, "gate.min_bias_consistency"),
    ],
)
def test_each_slice_threshold_blocks(kwargs, reason):
    gate = GateSettings(
        min_gain=0.1, max_general_drop=0.05, max_hallucination_rate=0.5, min_bias_consistency=0.8
    )
    assert decide(_all_slices(), gate).blessed
    decision = decide(_all_slices(**kwargs), gate)
    assert not decision.blessed and any(reason in r for r in decision.reasons)


def test_slices_without_questions_are_noted_not_failed():
    decision = decide(_scores({"base": 0.0, "candidate": 0.8}), GATE)
    assert decision.blessed
    assert "hallucination: no questions, not gated" in decision.notes
