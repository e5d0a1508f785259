import json
from pathlib import Path

from freshtune.errors import DropRejected
from tasks.ingest import read_drop
from tasks.validate import quarantine, validate_records


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
