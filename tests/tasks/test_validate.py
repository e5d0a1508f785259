import json
from pathlib import Path

import pytest

from freshtune.errors import DropRejected
from tasks.ingest import read_drop
from tasks.quarantine import quarantine
from tasks.validate import validate_records


def _chat(i: int, answer: str = "Fine.") -> dict:
    return {
        "id": f"r{i}",
        "split": "train",
        "messages": [
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": answer},
        ],
    }


def _drop(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "drop.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_clean_drop_passes(tmp_path: Path, tiny_config):
    path = _drop(tmp_path, [_chat(i) for i in range(25)])
    report = validate_records(read_drop(path), path, tiny_config())
    assert report.success, report.summary()


def test_each_broken_rule_is_named_with_its_lines(tmp_path: Path, tiny_config):
    rows = [_chat(i) for i in range(25)]
    rows[2]["id"] = "r1"  # duplicate id, line 3
    rows[4]["messages"] = rows[4]["messages"][::-1]  # assistant before user, line 5
    rows[6]["split"] = "test"  # line 7
    rows[8]["messages"][0]["content"] = ""  # empty prompt, line 9
    path = _drop(tmp_path, rows)
    report = validate_records(read_drop(path), path, tiny_config())
    failed = {(f.rule, f.column): f.lines for f in report.failures}
    assert not report.success
    assert failed[("expect_column_values_to_be_unique", "id")] == [2, 3]
    assert failed[("expect_column_values_to_match_regex", "roles")] == [5]
    assert failed[("expect_column_values_to_be_in_set", "split")] == [7]
    assert failed[("expect_column_value_lengths_to_be_between", "prompt")] == [9]


def test_too_few_rows_fails_even_though_map_rules_pass_on_nothing(tmp_path: Path, tiny_config):
    path = _drop(tmp_path, [_chat(i) for i in range(3)])
    report = validate_records(read_drop(path), path, tiny_config())
    assert [f.rule for f in report.failures] == ["expect_table_row_count_to_be_between"]
    assert report.failures[0].observed == 3


def test_quarantine_keeps_the_original_bytes_and_says_why(tmp_path: Path, tiny_config):
    cfg = tiny_config()
    path = _drop(tmp_path, [_chat(i) for i in range(3)])
    report = validate_records(read_drop(path), path, cfg)
    error = DropRejected(path, report.failures[0].rule, report.summary())
    target = quarantine(path, "ab" * 32, error, cfg, report)
    assert target.parent == cfg.paths.quarantine
    assert (target / "drop.jsonl").read_bytes() == path.read_bytes()
    assert "expect_table_row_count_to_be_between" in (target / "REJECTED.md").read_text()
    assert json.loads((target / "validation.json").read_text())["success"] is False


# --- one test per bad input: the failing rule, its line and the row's id ----------------------


def _failures(tmp_path: Path, cfg, rows: list) -> dict:
    path = _drop(tmp_path, rows)
    report = validate_records(read_drop(path), path, cfg)
    assert not report.success
    return {(f.rule, f.column): f for f in report.failures}


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"id": "x", "prompt": "Q?"}, "missing field response"),
        ({"id": "x", "prompt": "Q?", "answer": "A."}, "'answer' looks like a renamed 'response'"),
        ({"id": "x", "prompt": "Q?", "response": 3}, "field 'response' must be a string, got int"),
    ],
    ids=["missing-field", "renamed-field", "wrong-type"],
)
def test_schema_problems_fail_the_schema_rule_naming_the_line(tmp_path, tiny_config, bad, says):
    rows = [_chat(i) for i in range(25)]
    rows[3] = bad
    failure = _failures(tmp_path, tiny_config(), rows)[
        ("expect_column_values_to_be_null", "schema")
    ]
    assert failure.lines == [4] and failure.ids == ["x"] and says in failure.samples[0]
    assert "fields present, named and typed" in failure.about


def test_unknown_roles_and_a_user_last_turn_are_named(tmp_path: Path, tiny_config):
    rows = [_chat(i) for i in range(25)]
    rows[1]["messages"][0]["role"] = "human"
    rows[5]["messages"] = rows[5]["messages"] + [{"role": "user", "content": "And?"}]
    path = _drop(tmp_path, rows)
    report = validate_records(read_drop(path), path, tiny_config())
    regex = {f.about: f.lines for f in report.failures if f.column == "roles"}
    assert regex == {
        "roles are system, user or assistant": [2],
        "roles in a valid order: user/assistant alternate, the assistant ends": [2, 6],
    }


def test_the_prompt_response_suite_rejects_chat_rows(tmp_path: Path, tiny_config):
    rows = [{"id": f"r{i}", "prompt": f"Q{i}?", "response": "A."} for i in range(25)]
    rows[7] = _chat(99)
    failed = _failures(tmp_path, tiny_config("data.suite=prompt_response"), rows)
    assert failed[("expect_column_values_to_be_in_set", "shape")].lines == [8]


def test_pii_left_after_scrubbing_fails_and_is_never_reported(tmp_path, tiny_config, monkeypatch):
    import tasks.validate

    monkeypatch.setattr(tasks.validate, "scrub_text", lambda text: text)  # a scrubber that missed
    rows = [_chat(i) for i in range(25)]
    rows[2]["messages"][1]["content"] = "Write to jane.doe@example.com"
    failure = _failures(tmp_path, tiny_config(), rows)[
        ("expect_column_values_to_not_match_regex_list", "scrubbed")
    ]
    assert failure.lines == [3] and failure.samples == []
    assert "jane.doe" not in json.dumps(failure.__dict__)


def test_failing_values_reach_no_report_or_data_docs_with_their_pii(tmp_path, tiny_config):
    rows = [_chat(i) for i in range(25)]
    rows[1]["id"] = rows[2]["id"] = "jane.doe@example.com"  # a duplicate id that is PII
    path = _drop(tmp_path, rows)
    results = tmp_path / "results"
    results.mkdir()
    report = validate_records(read_drop(path), path, tiny_config(), results)
    failure = next(f for f in report.failures if f.column == "id")
    assert failure.lines == [2, 3] and failure.ids == ["<EMAIL>", "<EMAIL>"]
    readable = [report.to_json(), report.summary()]
    readable += [p.read_text() for p in (results / "data-docs").rglob("*.html")]
    assert readable[2:] and not any("jane.doe" in text for text in readable)


def test_results_keep_json_and_gx_data_docs(tmp_path: Path, tiny_config):
    cfg = tiny_config()
    rows = [_chat(i) for i in range(25)]
    rows[4]["split"] = "test"
    path = _drop(tmp_path, rows)
    results = tmp_path / "results"
    results.mkdir()
    report = validate_records(read_drop(path), path, cfg, results)
    assert json.loads((results / "validation.json").read_text())["success"] is False
    assert (results / "data-docs" / "index.html").exists()
    [page] = (results / "data-docs" / "validations").rglob("*.html")  # GX rendered the run
    assert "value_set" in page.read_text() or "values must belong" in page.read_text()
    target = quarantine(path, "cd" * 32, report.rejection(), cfg, report)
    assert (target / "drop.jsonl").read_bytes() == path.read_bytes()
    assert "sample ids" in (target / "REJECTED.md").read_text()


def test_a_drop_larger_than_one_chunk_gives_the_one_chunk_report(tmp_path: Path, tiny_config):
    """data.chunk_rows bounds the rows GX holds at once; counts, lines and samples stay global."""
    rows = [_chat(i) for i in range(40)]
    rows[2]["id"] = rows[30]["id"] = "r9"  # duplicate ids in different chunks (lines 3, 31, 10)
    for i in (4, 12, 13, 26, 38):  # schema problems in four chunks
        rows[i] = {"id": f"x{i}", "prompt": "Q?"}
    rows[20]["split"] = "test"
    rows[35]["messages"][1]["content"] = "x" * 9000  # past data.max_chars
    path = _drop(tmp_path, rows)
    records = read_drop(path)
    chunked = validate_records(records, path, tiny_config("data.chunk_rows=7"))
    whole = validate_records(records, path, tiny_config("data.chunk_rows=1000"))
    assert chunked == whole and not chunked.success
    failed = {(f.rule, f.column): f for f in chunked.failures}
    schema = failed[("expect_column_values_to_be_null", "schema")]
    assert schema.unexpected == 5 and schema.lines == [5, 13, 14, 27, 39]
    assert schema.ids == ["x4", "x12", "x13", "x26", "x38"]
    assert failed[("expect_column_values_to_be_unique", "id")].lines == [3, 10, 31]
    assert failed[("expect_column_values_to_be_in_set", "split")].lines == [21]
    assert failed[("expect_column_value_lengths_to_be_between", "response")].lines == [36]
    assert [f.rule for f in chunked.failures] == [f.rule for f in whole.failures]
    results = tmp_path / "results"
    results.mkdir()
    validate_records(records, path, tiny_config("data.chunk_rows=7"), results)
    [page] = (results / "data-docs" / "validations").rglob("*.html")  # one run, all chunks
    assert "5 unexpected values found. 12.5% of 40 total rows." in page.read_text()
