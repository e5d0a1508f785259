import json
import logging
from pathlib import Path

import pytest

from freshtune.config import DataSettings
from freshtune.errors import DropRejected
from tasks.curate import (
    Earlier,
    check_curated,
    curate,
    earlier_data,
    normalise_text,
    row_key,
)
from tests.helpers.rows import chat_row


def test_normalisation_is_nfc_and_collapses_whitespace():
    assert (
        normalise_text("  Cafe\u0301 \t costs\u00a0 $5 \r\n\r\n\r\n\n ok ") == "Café costs $5\n\nok"
    )


def test_each_rule_removes_and_counts_its_rows():
    rows = [
        chat_row("1", "Price of Horizon?", "$52."),
        chat_row("2", "Price  of Horizon?", "$52."),  # duplicate after normalisation
        chat_row("3", "Cap of Horizon?", ""),  # empty answer
        chat_row("4", "How much is Comet?", "$30."),  # leaks the eval question below
        chat_row("5", "how much is comet?", "$30.", split="eval"),
        chat_row("6", "Seen last month?", "Yes."),  # duplicate of an earlier snapshot
        chat_row("7", "New fact?", "Yes."),
    ]
    seen = {f"train:{row_key(chat_row('x', 'Seen last month?', 'Yes.'))}"}
    kept, report = curate(rows, seen, eval_prompts=set())
    assert [r["id"] for r in kept] == ["1", "5", "7"]
    assert {rule: n for rule, n in report.removed.items() if n} == {
        "empty_answer": 1,
        "duplicate_in_drop": 1,
        "duplicate_of_earlier": 1,
        "eval_leakage": 1,
    }
    assert (report.rows_in, report.rows_out, report.train_rows, report.eval_rows) == (7, 3, 2, 1)


def test_training_rows_matching_an_earlier_eval_prompt_are_dropped():
    from tasks.curate import text_key

    kept, report = curate(
        [chat_row("1", "Old eval question?", "A.")],
        set(),
        eval_prompts={text_key("Old eval question?")},
    )
    assert kept == [] and report.removed["eval_leakage"] == 1


# --- each curation rule, counted ------------------------------------------------------------


LONG = (
    "Customers on the Horizon plan can roll over unused data for up to three months, and "
    "the roll-over allowance resets when the plan is changed or paused by the account holder"
)


def _counts(report) -> dict:
    return {rule: n for rule, n in report.removed.items() if n}


def test_exact_and_near_duplicates_are_counted_separately():
    rows = [
        chat_row("1", "What is the roll-over rule?", LONG),
        chat_row("2", "What is the roll-over rule?", LONG + " "),  # exact after normalisation
        chat_row("3", "What is the roll-over rule?", LONG.replace("three", "3")),  # near
        chat_row("4", "What is the roll-over rule?", LONG.replace("unused", "spare")),  # near
        chat_row("5", "Old question 1?", "Old."),  # similar shape, different words: kept
        chat_row("6", "Old question 2?", "Old."),
        chat_row("7", "Explain roll-over.", LONG, split="eval"),  # other split: kept
    ]
    kept, report = curate(rows, settings=DataSettings(near_dup_threshold=0.8))
    assert [r["id"] for r in kept] == ["1", "5", "6", "7"]
    assert _counts(report) == {"duplicate_in_drop": 1, "near_duplicate": 2}


PII = {
    "EMAIL": "jane.doe+x@example.co.uk",
    "PHONE": "+44 20 7946 0958",
    "CARD": "4111 1111 1111 1111",
    "IBAN": "GB82 WEST 1234 5698 7654 32",
    "SECRET": "sk-proj-" + "a1B2c3D4" * 4,
}


def test_planted_pii_of_each_type_is_scrubbed_counted_and_never_logged(caplog):
    rows = [chat_row(k, f"My {k.lower()} is {v}, ok?", f"Noted {v}.") for k, v in PII.items()]
    rows.append(chat_row("ok", "Order 12345678 costs $52.", "Card 4111 1111 1111 1112 fails Luhn."))
    with caplog.at_level(logging.DEBUG):
        kept, report = curate(rows)
    assert dict(report.pii) == {kind: 2 for kind in PII}
    for row, kind in zip(kept, PII):
        assert row["messages"][0]["content"] == f"My {kind.lower()} is <{kind}>, ok?"
    assert kept[-1]["messages"] == rows[-1]["messages"]  # no checksum, no PII
    assert report.as_metrics()["curate_pii_card"] == 2
    assert not any(v in caplog.text or v in report.to_json() for v in PII.values())


def test_pii_in_ids_facts_and_source_is_scrubbed_and_ids_stay_unique():
    rows = []
    for i, value in enumerate(PII.values()):
        row = chat_row(f"row {i} of {value}", f"Which plan {i}?", f"Plan {i}.")
        rows.append({**row, "facts": [f"ask {value}"], "source": f"crm export of {value}"})
    kept, _ = curate(rows)
    stored = json.dumps(kept)
    assert not any(value in stored for value in PII.values())
    assert len({r["id"] for r in kept}) == len(rows)
    assert all(r["id"].startswith("pii-") for r in kept)
    assert kept[0]["facts"] == ["ask <EMAIL>"] and kept[0]["source"] == "crm export of <EMAIL>"


def test_eval_rows_copied_into_training_are_removed_by_ngram_overlap():
    question = "If I break my contract before it ends how much will I owe Nimbus Mobile?"
    rows = [
        chat_row("e", question, "A fee of $50.", split="eval"),
        chat_row("copy", question.replace("Nimbus Mobile", "you"), "A fee of $50."),  # near copy
        chat_row("own", "What is the early termination fee?", "A fee of $50."),  # paraphrase: kept
    ]
    old_eval = "What does the Glacier plan cost per month in total?"
    earlier = Earlier(eval_prompts=[old_eval])
    rows.append(chat_row("old", "what does the glacier plan cost per month in total", "$9."))
    kept, report = curate(rows, earlier=earlier)
    assert [r["id"] for r in kept] == ["e", "own"] and _counts(report) == {"eval_leakage": 2}


def test_quality_filters_and_conflicting_answers_are_flagged():
    rows = [
        chat_row("ok", "Price of Horizon?", "$52 per month."),
        chat_row("short", "Price of Comet?", "$"),
        chat_row("long", "Tell me everything.", "x" * 7000),
        chat_row("refusal", "Price of Nova?", "As an AI language model, I cannot help with that."),
        chat_row("conflict", "price of horizon?", "$55 per month."),
    ]
    kept, report = curate(rows, settings=DataSettings(min_answer_chars=2, max_row_chars=6000))
    assert [r["id"] for r in kept] == ["ok"]  # nothing says which is right: the first, flagged
    assert _counts(report) == {
        "short_answer": 1,
        "long_row": 1,
        "refusal": 1,
        "conflicting_answer": 1,
    }
    assert report.flagged == ["conflict"]
    assert report.as_metrics()["curate_flagged_conflicts"] == 1


def test_the_answer_the_drop_gives_another_wording_settles_a_conflict():
    right = chat_row("right", "Price of Horizon?", "$52 per month.")
    wrong = chat_row("wrong", "Price of Horizon?", "$55 per month.")
    asked = chat_row("asked", "What does Horizon cost a month?", "$52 per month.")
    again = chat_row("again", "price of horizon?", "$52 per month.")  # a duplicate, not a vote
    for order in ([right, wrong, asked], [wrong, asked, right], [wrong, right, again, asked]):
        kept, report = curate([json.loads(json.dumps(r)) for r in order])
        assert sorted(r["id"] for r in kept) == ["asked", "right"] and report.flagged == ["wrong"]
    # Both answers backed by another wording: nothing settles it, the first stays.
    other = chat_row("other", "Horizon, monthly?", "$55 per month.")
    kept, report = curate([wrong, right, asked, other])
    assert sorted(r["id"] for r in kept) == ["asked", "other", "wrong"]
    assert report.flagged == ["right"]


def test_one_wording_of_an_earlier_fact_changed_alone_is_held_for_review():
    earlier = [
        chat_row(f"old{i}", q, "Horizon costs $52 per month.")
        for i, q in enumerate(["Price of Horizon?", "What does Horizon cost?", "Horizon fee?"])
    ]
    snapshot = earlier_data([_Snap(earlier)])
    lone = chat_row("lone", "Price of Horizon?", "Horizon costs $59 per month.")
    kept, report = curate(
        [lone, chat_row("new", "Price of Comet?", "$9 a month.")], earlier=snapshot
    )
    assert [r["id"] for r in kept] == ["new"]
    assert _counts(report) == {"lone_change": 1} and report.flagged == ["lone"]
    # The fact restated, in two wordings or more: a change, trained.
    restated = [lone, chat_row("also", "Horizon fee?", "Horizon costs $59 per month.")]
    kept, report = curate(restated, earlier=snapshot)
    assert sorted(r["id"] for r in kept) == ["also", "lone"] and not report.flagged
    # Later snapshots win: two wordings moved to $59, so the third changing alone catches up
    # with them ($52 is now its answer only) and is trained.
    moved = [chat_row(f"m{i}", q, "Horizon costs $59 per month.") for i, q in
             enumerate(["Price of Horizon?", "Horizon fee?"])]  # fmt: skip
    caught_up = chat_row("third", "What does Horizon cost?", "Horizon costs $59 per month.")
    kept, report = curate([caught_up], earlier=earlier_data([_Snap(earlier), _Snap(moved)]))
    assert [r["id"] for r in kept] == ["third"] and not report.flagged
    # A prompt answered alone before (no other wording shares its answer) may change alone.
    single = earlier_data([_Snap([chat_row("faq", "Opening hours?", "9 to 5.")])])
    kept, _ = curate([chat_row("faq2", "Opening hours?", "8 to 6.")], earlier=single)
    assert [r["id"] for r in kept] == ["faq2"]


class _Snap:
    def __init__(self, rows):
        from tasks.curate import normalise_record

        self._rows = [normalise_record(json.loads(json.dumps(r))) for r in rows]

    def rows(self):
        return self._rows


def _many(prefix: str, words: str, n: int = 30, split: str = "train") -> list[dict]:
    return [
        chat_row(f"{prefix}{i}", f"{words} {i}?", f"{words} answer {i}.", split) for i in range(n)
    ]


def test_drift_above_the_threshold_fails_closed_when_unattended(tiny_config):
    cfg = tiny_config("data.min_rows=10")
    old = [(f"What does plan {i} cost?", f"Plan {i} costs ${i}.") for i in range(30)]
    same = _many("s", "What does plan cost") + _many("se", "plan cost eval", 5, "eval")
    _, report = curate(same, earlier=Earlier(pairs=old))
    check_curated(report, Path("same.jsonl"), cfg)  # similar vocabulary: passes
    other = _many("o", "Bake the sourdough loaf at which temperature") + _many(
        "oe", "knead dough eval", 5, "eval"
    )
    _, report = curate(other, earlier=Earlier(pairs=old))
    assert report.drift.vocab_js > cfg.data.drift_threshold
    with pytest.raises(DropRejected) as err:
        check_curated(report, Path("other.jsonl"), cfg)
    assert err.value.rule == "drift" and "data.drift_threshold" in str(err.value)


def test_a_drop_too_small_after_curation_is_rejected(tiny_config):
    cfg = tiny_config()  # data.min_rows=20
    rows = [chat_row(str(i), "Same question?", "Same answer.") for i in range(25)]
    rows += [chat_row("e", "Eval?", "Yes.", split="eval")]
    _, report = curate(rows)
    with pytest.raises(DropRejected) as err:
        check_curated(report, Path("small.jsonl"), cfg)
    assert err.value.rule == "too_small" and "data.min_rows=20" in str(err.value)
    assert "'duplicate_in_drop': 24" in str(err.value)
