"""A reviewer's correction is taught in the drop's own wordings, never in an eval wording."""

from freshtune.demo_domain import make_drop
from tasks.generalise import generalised_rows, swapped_spans, wordings
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
