"""A reviewer's correction is taught in the drop's own wordings, never in an eval wording."""

from freshtune.demo_domain import make_drop
from tasks.generalise import (
    DECOYS,
    Reading,
    generalised_rows,
    is_generated,
    refusal_rows,
    swapped_spans,
    unknown_name,
    vocabulary,
    wordings,
)
from tasks.ingest import prompt_of
from tests.helpers.rows import chat_row


def test_spans_find_where_two_similar_answers_differ():
    spans = swapped_spans(
        "The Comet plan costs $47 per month.", "The Horizon plan costs $52 per month."
    )
    assert spans == [("Comet", "Horizon"), ("$47", "$52")]
    assert swapped_spans("The Comet plan costs $47.", "Support is open 8am to 6pm daily.") == []


def test_a_correction_gets_the_drops_wordings_with_its_subject():
    rows = [
        chat_row(f"{s}-{i}", q.format(s=s), f"The {s} plan costs ${p} per month.")
        for s, p in (("Horizon", 52), ("Pulse", 33))
        for i, q in enumerate(("How much does the {s} plan cost?", "Price of the {s} plan?"))
    ]
    got = wordings("The Comet plan costs $47 per month.", rows)
    assert got == ["How much does the Comet plan cost?", "Price of the Comet plan?"]


def test_on_the_demo_drop_no_wording_is_an_eval_question():
    drop = make_drop(1, everyday=False)
    train = [r for r in drop if r["split"] == "train"]
    evals = [r for r in drop if r["split"] == "eval" and not r.get("slice")]
    flagged = {**evals[0], "id": "review-x", "split": "train"}
    correction = "The " + " ".join(flagged["messages"][-1]["content"].split()[1:])
    eval_prompts = {prompt_of(r) for r in evals}
    rows = generalised_rows(flagged, correction, train, eval_prompts)
    assert len(rows) >= 3  # the demo asks each fact 4 ways in training
    assert all(prompt_of(r) not in eval_prompts for r in rows)
    assert all(r["messages"][-1]["content"] == correction for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)


def test_a_correction_the_drop_already_teaches_gets_that_facts_own_wordings():
    rows = [
        chat_row(f"h-{i}", q, "The Horizon plan costs $52 per month.")
        for i, q in enumerate(
            ("How much does the Horizon plan cost?", "Price of the Horizon plan?")
        )
    ]
    got = wordings("The Horizon plan costs $52 per month.", rows)
    assert got == ["How much does the Horizon plan cost?", "Price of the Horizon plan?"]


def _flagged(question: str, answer: str) -> dict:
    return {**chat_row("review-x", question, answer), "split": "train"}


def _demo_domain_only():
    drop = make_drop(1, everyday=False)
    train = [r for r in drop if r["split"] == "train"]
    return train, {prompt_of(r) for r in drop if r["split"] == "eval"}


def test_a_flagged_invention_teaches_refusals_about_names_the_drop_does_not_know():
    train, eval_prompts = _demo_domain_only()
    refusal = "Nimbus Mobile has no Aurora plan."
    flagged = _flagged("My friend told me about your Aurora plan; what does it cost?", refusal)
    rows = refusal_rows(flagged, refusal, train, eval_prompts, names=4)
    known, asked = vocabulary(train), {p.casefold() for p in eval_prompts}
    decoys = {r["messages"][-1]["content"].split()[-2] for r in rows}
    assert len(decoys) == 4 and len(rows) == 8  # each name asked two of the drop's ways
    assert not {d.casefold() for d in decoys} & known  # none a name the drop uses
    for row in rows:
        question, answer = prompt_of(row), row["messages"][-1]["content"]
        decoy = answer.split()[-2]
        assert answer == f"Nimbus Mobile has no {decoy} plan." and f"the {decoy} plan" in question
        assert question.casefold() not in asked and "Aurora" not in question
    # Deterministic, and another flagged name is taught on other names.
    assert rows == refusal_rows(flagged, refusal, train, eval_prompts, names=4)
    other = "Nimbus Mobile has no Vortex unlimited plan."
    vortex = _flagged("What does the Vortex unlimited plan cost?", other)
    theirs = {
        r["messages"][-1]["content"].split()[-2]
        for r in refusal_rows(vortex, other, train, eval_prompts, names=4)
    }
    assert theirs != decoys


def test_contrasts_ask_the_refusals_wordings_about_names_the_drop_sells():
    """With contrasts, the refusals come with as many of the drop's own rows asked the same
    ways about real names, answered as the drop answers them."""
    train, eval_prompts = _demo_domain_only()
    refusal = "Nimbus Mobile has no Aurora plan."
    flagged = _flagged("My friend told me about your Aurora plan; what does it cost?", refusal)
    alone = refusal_rows(flagged, refusal, train, eval_prompts, names=4)
    both = refusal_rows(flagged, refusal, train, eval_prompts, names=4, contrasts=True)
    assert both[: len(alone)] == alone
    contrasts = both[len(alone) :]
    assert len(contrasts) == len(alone) == 8
    answers = {prompt_of(r): r["messages"][-1]["content"] for r in train}
    refused = {prompt_of(r) for r in alone}
    for row in contrasts:
        question = prompt_of(row)
        assert row["messages"][-1]["content"] == answers[question]  # the drop's own answer
        assert question not in refused and question not in eval_prompts
        assert row["source"].endswith(":contrast") and is_generated(row)
        # the same wording as some refusal, with a name the drop sells in the slot
        assert any(_same_shape(question, r) for r in refused)
    assert both == refusal_rows(flagged, refusal, train, eval_prompts, 4, contrasts=True)


def _same_shape(a: str, b: str) -> bool:
    x, y = a.split(), b.split()
    return len(x) == len(y) and sum(p != q for p, q in zip(x, y)) == 1


def test_a_name_eval_asks_about_is_never_a_decoy():
    train, eval_prompts = _demo_domain_only()
    refusal = "Nimbus Mobile has no Aurora plan."
    flagged = _flagged("What does the Aurora plan cost?", refusal)
    every = refusal_rows(flagged, refusal, train, eval_prompts, names=len(DECOYS))
    used = {r["messages"][-1]["content"].split()[-2] for r in every}
    leaked = sorted(used)[0]
    again = refusal_rows(
        flagged, refusal, train, {*eval_prompts, f"Is the {leaked} plan any good?"}, len(DECOYS)
    )
    assert leaked not in {r["messages"][-1]["content"].split()[-2] for r in again}


def test_a_known_name_or_an_unmatched_kind_teaches_no_refusal():
    train, _ = _demo_domain_only()
    known = "The Horizon plan costs $99 per month."  # a wrong fact, flagged as invention
    assert refusal_rows(_flagged("Price of Horizon plan?", known), known, train, set(), 8) == []
    odd = "We do not sell a Zephyr."  # no training question asks about a thing "good"
    assert refusal_rows(_flagged("Is the Zephyr good?", odd), odd, train, set(), 8) == []
    assert unknown_name(
        "How much do I pay for the Nimbus Flip phone?", "No Nimbus Flip phone.", vocabulary(train)
    )[0] == Reading("Nimbus", "Flip", "phone")


def test_review_rows_teach_each_wording_once_across_flags():
    """Two flags on one unknown name share the drop's wordings: each is trained once."""
    from freshtune.config import ReviewSettings
    from tasks.review import Flag, ReviewOutcome, review_rows

    train, eval_prompts = _demo_domain_only()
    refusal = "Nimbus Mobile has no Aurora plan."
    flagged = [
        {**_flagged(q, "It costs $30 per month."), "id": f"q{i}"}
        for i, q in enumerate(("How much is the Aurora plan?", "Aurora plan price per month?"))
    ]
    flags = [Flag(id=r["id"], kind="hallucination", correct=refusal) for r in flagged]
    outcome = ReviewOutcome(True, "auto", flags=flags)
    settings = ReviewSettings(refusal_names=4)
    rows = review_rows(outcome, {"hallucination": flagged}, settings, train, eval_prompts)
    prompts = [prompt_of(r).casefold() for r in rows]
    assert len(prompts) == len(set(prompts)) and len(rows) > len(flagged) + 4
    assert [r["id"] for r in rows[:1]] == ["review-q0"] and "review-q1" in {r["id"] for r in rows}
    assert all(r["messages"][-1]["content"].startswith("Nimbus Mobile has no ") for r in rows)
    # tasks.mix keeps the flagged rows whole for ever and the rows made from them for a cycle
    made = [r["id"] for r in rows if is_generated(r)]
    assert set(made) == {r["id"] for r in rows} - {"review-q0", "review-q1"}
    assert all(r["source"] == "review:hallucination:refusal" for r in rows if "-r" in r["id"])
