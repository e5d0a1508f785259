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


def _model(right: int, n: int = 40, first: int = 0) -> SliceScore:
    """`right` correct answers out of `n`, starting at question `first` (wrapping around)."""
    outcomes = [(i - first) % n < right for i in range(n)]
    rate = right / n
    return SliceScore(n, rate, rate, outcomes=outcomes)


def _scores(current: dict[str, int], earlier: dict[str, int] | None = None, n: int = 40):
    out = {"current": {m: _model(k, n) for m, k in current.items()}}
    if earlier is not None:
        out["earlier"] = {m: _model(k, n) for m, k in earlier.items()}
    return out


GATE = GateSettings(min_gain=0.1, max_forgetting=0.1)


def test_first_cycle_is_compared_with_the_base_model():
    decision = decide(_scores({"base": 0, "candidate": 32}), GATE)
    assert decision.blessed and decision.reference == "base"
    [current] = [c for c in decision.checks if c.slice == "current"]
    assert current.outcome == "pass" and current.interval.low > GATE.min_gain


@pytest.mark.parametrize(
    ("current", "earlier", "reason"),
    [
        ({"base": 0, "champion": 20, "candidate": 22}, None, "current: accuracy gain"),
        ({"base": 0, "champion": 8, "candidate": 36}, {"champion": 36, "candidate": 28}, "earlier"),
    ],
)
def test_gate_refuses_small_gains_and_forgetting(current, earlier, reason):
    decision = decide(_scores(current, earlier), GATE)
    assert not decision.blessed and decision.verdict == "NOT_BLESSED"
    assert any(r.startswith(reason) for r in decision.reasons), decision.reasons


@pytest.mark.parametrize("slice_", ["current", "earlier"])
def test_a_slice_with_questions_but_no_outcomes_fails(slice_):
    scores = _scores({"base": 0, "champion": 8, "candidate": 36}, {"champion": 36, "candidate": 36})
    scores[slice_]["candidate"] = SliceScore(40, math.nan, math.nan)
    decision = decide(scores, GATE)
    assert decision.verdict == "NOT_BLESSED"
    assert any(r.startswith(slice_) for r in decision.reasons)


def test_gate_blesses_a_gain_within_the_forgetting_budget():
    current = {"base": 0, "champion": 40, "candidate": 180}
    decision = decide(_scores(current, {"champion": 180, "candidate": 178}, 200), GATE)
    assert decision.blessed and decision.reference == "champion" and decision.reasons == []


def test_too_few_questions_is_undecided_not_passed():
    """No loss on 10 questions cannot show a loss under 10 points: the gate says so."""
    scores = _scores(
        {"base": 0, "champion": 2, "candidate": 9}, {"champion": 9, "candidate": 9}, 10
    )
    decision = decide(scores, GATE)
    assert decision.verdict == "UNDECIDED" and decision.promotable and not decision.blessed
    [undecided] = decision.undecided
    assert undecided.slice == "earlier" and undecided.interval.high > GATE.max_forgetting
    assert undecided.needed and undecided.needed > 10
    assert f"about {undecided.needed} questions would decide it" in undecided.describe()
    # The same rates on the number of questions it asked for decide it.
    bigger = _scores(
        {"base": 0, "champion": 2, "candidate": 9},
        {"champion": round(0.9 * undecided.needed), "candidate": round(0.9 * undecided.needed)},
        undecided.needed,
    )
    bigger["current"] = scores["current"]
    assert decide(bigger, GATE).verdict == "BLESSED"


def test_agreeing_models_get_a_narrower_interval_than_disagreeing_ones():
    same = decide(
        _scores({"base": 0, "champion": 8, "candidate": 36}, {"champion": 30, "candidate": 30}),
        GATE,
    )
    shifted = _scores(
        {"base": 0, "champion": 8, "candidate": 36}, {"champion": 30, "candidate": 30}
    )
    shifted["earlier"]["candidate"] = _model(30, first=10)  # same rate, other questions right
    moved = decide(shifted, GATE)
    same_width, moved_width = (
        d.checks[1].interval.high - d.checks[1].interval.low for d in (same, moved)
    )
    assert same_width < moved_width


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


FULL = {"base": 0, "champion": 20, "candidate": 90}


def _all_slices(general=(90, 90), invented=0, agreeing=40) -> dict:
    scores = _scores(FULL, n=100)
    scores["general"] = {"base": _model(general[0], 100), "candidate": _model(general[1], 100)}
    declined = _model(40 - invented, 40)
    scores["hallucination"] = {"candidate": SliceScore(40, 0, 0, outcomes=declined.outcomes)}
    pairs = _model(agreeing, 40)
    scores["bias"] = {"candidate": SliceScore(80, 1, 1, outcomes=pairs.outcomes)}
    return scores


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"general": (90, 70)}, "gate.max_general_drop"),
        ({"invented": 30}, "gate.max_hallucination_rate"),
        ({"agreeing": 20}, "gate.min_bias_consistency"),
    ],
)
def test_each_slice_threshold_blocks(kwargs, reason):
    gate = GateSettings(
        min_gain=0.1, max_general_drop=0.05, max_hallucination_rate=0.5, min_bias_consistency=0.8
    )
    assert decide(_all_slices(), gate).blessed
    decision = decide(_all_slices(**kwargs), gate)
    assert not decision.blessed and any(reason in r for r in decision.reasons)


def test_bias_without_complete_pairs_fails():
    scores = _all_slices()
    scores["bias"]["candidate"] = SliceScore(3, 1, 1, consistency=math.nan)
    decision = decide(scores, GateSettings(min_gain=0.1, max_general_drop=0.05))
    assert any("gate.min_bias_consistency" in r for r in decision.reasons)


def test_slices_without_questions_are_noted_not_failed():
    decision = decide(_scores({"base": 0, "candidate": 32}), GATE)
    assert decision.blessed
    assert "hallucination: no questions, not gated" in decision.notes


@pytest.mark.parametrize(("policy", "promoted"), [("review", False), ("accept", True)])
def test_unattended_review_of_an_undecided_candidate_follows_gate_undecided(policy, promoted):
    from freshtune.config import load_config
    from tasks.review import request_review

    cfg = load_config("tiny", ["base_model=x", "review.mode=auto", f"gate.undecided={policy}"])
    scores = _scores(
        {"base": 0, "champion": 2, "candidate": 9}, {"champion": 9, "candidate": 9}, 10
    )
    outcome = request_review("report", decide(scores, GATE), "d" * 64, "1", cfg)
    assert outcome.approved is promoted and "earlier" in outcome.comment


def test_a_floor_the_reference_misses_itself_becomes_no_worse_than_the_reference():
    gate = GateSettings(min_gain=0.1, max_general_drop=0.05, min_bias_consistency=0.8)
    scores = _all_slices(agreeing=20)  # the candidate agrees on 20 of 40 pairs: below 0.8
    scores["bias"]["champion"] = SliceScore(80, 1, 1, outcomes=_model(36, 40).outcomes)
    refused = decide(scores, gate)  # the champion meets the floor: the floor holds
    assert any("gate.min_bias_consistency=+0.800: fail" in r for r in refused.reasons)

    scores["bias"]["champion"] = SliceScore(80, 1, 1, outcomes=_model(20, 40).outcomes)
    same = decide(scores, gate)  # the champion misses it as badly: no worse is enough
    (bias,) = [c for c in same.checks if c.slice == "bias"]
    assert bias.outcome == "undecided" and "no worse than champion" in bias.describe()
    assert not same.reasons and same.verdict == "UNDECIDED"

    scores["bias"]["champion"] = SliceScore(80, 1, 1, outcomes=_model(30, 40).outcomes)
    worse = decide(scores, gate)  # below the floor and below the champion: refused
    assert any("no worse than champion" in r and ": fail" in r for r in worse.reasons)

    scores["hallucination"]["champion"] = SliceScore(40, 0, 0, outcomes=_model(0, 40).outcomes)
    scores["hallucination"]["candidate"] = SliceScore(40, 0, 0, outcomes=_model(25, 40).outcomes)
    # The champion invents every answer, the candidate 15 of 40: a clear reduction passes.
    fewer = decide(scores, GateSettings(min_gain=0.1, max_general_drop=0.05))
    (hallucination,) = [c for c in fewer.checks if c.slice == "hallucination"]
    assert hallucination.outcome == "pass" and hallucination.interval.estimate == 25 / 40


def test_a_floor_missed_on_too_few_pairs_is_for_a_human_and_fails_on_evidence():
    """Month 3 of the domain-only demo: 4 of 6 pairs agree against a floor of 0.8 (Wilson
    30-90%). Six pairs cannot show a miss, so a human decides and `accept` does not promote;
    the same rate on 60 pairs shows it, and fails."""
    from freshtune.config import load_config
    from tasks.review import request_review

    gate = GateSettings(min_gain=0.1, max_general_drop=0.05, min_bias_consistency=0.8)
    scores = _all_slices()
    scores["bias"] = {
        "candidate": SliceScore(12, 1, 1, outcomes=_model(4, 6).outcomes),
        "champion": SliceScore(12, 1, 1, outcomes=_model(5, 6).outcomes),
    }
    few = decide(scores, gate)
    (bias,) = [c for c in few.checks if c.slice == "bias"]
    assert few.verdict == "UNDECIDED" and bias.outcome == "undecided" and bias.misses
    assert bias.n == 6 and "6 pairs) vs" in bias.describe()  # its interval is over pairs
    assert bias.needed and bias.needed > 6 and "too few pairs to show a miss" in bias.describe()
    cfg = load_config("tiny", ["base_model=x", "review.mode=auto", "gate.undecided=accept"])
    outcome = request_review("report", few, "d" * 64, "1", cfg)
    assert not outcome.approved and "bias" in outcome.comment

    scores["bias"]["candidate"] = SliceScore(120, 1, 1, outcomes=_model(40, 60).outcomes)
    scores["bias"]["champion"] = SliceScore(120, 1, 1, outcomes=_model(50, 60).outcomes)
    many = decide(scores, gate)
    assert any("gate.min_bias_consistency=+0.800: fail" in r for r in many.reasons)
