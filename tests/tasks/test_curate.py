from tasks.curate import curate, normalise_text, row_key


def _row(i: str, q: str, a: str, split: str = "train") -> dict:
    return {
        "id": i,
        "split": split,
        "source": "",
        "facts": [],
        "line": 1,
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
    }


def test_normalisation_is_nfc_and_collapses_whitespace():
    assert (
        normalise_text("  Cafe\u0301 \t costs\u00a0 $5 \r\n\r\n\r\n\n ok ") == "Café costs $5\n\nok"
    )


def test_each_rule_removes_and_counts_its_rows():
    rows = [
        _row("1", "Price of Horizon?", "$52."),
        _row("2", "Price  of Horizon?", "$52."),  # duplicate after normalisation
        _row("3", "Cap of Horizon?", ""),  # empty answer
        _row("4", "How much is Comet?", "$30."),  # leaks the eval question below
        _row("5", "how much is comet?", "$30.", split="eval"),
        _row("6", "Seen last month?", "Yes."),  # duplicate of an earlier snapshot
        _row("7", "New fact?", "Yes."),
    ]
    seen = {f"train:{row_key(_row('x', 'Seen last month?', 'Yes.'))}"}
    kept, report = curate(rows, seen, eval_prompts=set())
    assert [r["id"] for r in kept] == ["1", "5", "7"]
    assert dict(report.removed) == {
        "empty_answer": 1,
        "duplicate_in_drop": 1,
        "duplicate_of_earlier": 1,
        "eval_leakage": 1,
    }
    assert (report.rows_in, report.rows_out, report.train_rows, report.eval_rows) == (7, 3, 2, 1)


def test_training_rows_matching_an_earlier_eval_prompt_are_dropped():
    from tasks.curate import text_key

    kept, report = curate(
        [_row("1", "Old eval question?", "A.")],
        set(),
        eval_prompts={text_key("Old eval question?")},
    )
    assert kept == [] and report.removed["eval_leakage"] == 1
