"""`freshtune validate`: the whole gate as a dry run, exit 0 pass / 1 rejected."""

import json
from pathlib import Path

from typer.testing import CliRunner

from freshtune.cli import app

runner = CliRunner()


def _validate(drop: Path, ws: Path, *extra: str):
    return runner.invoke(app, ["validate", str(drop), "--config", "demo", "-w", str(ws), *extra])


def test_demo_drop_passes_and_nothing_is_committed(demo_drops, tmp_path: Path):
    result = _validate(demo_drops[0], tmp_path / "ws", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{") :])
    assert out["passed"] and out["validation"]["success"]
    curation = out["curation"]
    assert (
        curation["removed"]["duplicate_in_drop"] == 3 and curation["removed"]["empty_answer"] == 2
    )
    assert curation["removed"]["eval_leakage"] == 0 and curation["removed"]["near_duplicate"] == 0
    train_in = sum('"split": "train"' in line for line in demo_drops[0].read_text().splitlines())
    assert curation["train_rows"] == train_in - 5  # only the planted duplicates and empties go
    assert not list((tmp_path / "ws" / "snapshots").iterdir())
    assert not list((tmp_path / "ws" / "quarantine").iterdir())


def test_rejected_drop_prints_each_failed_rule_with_lines_and_ids(demo_drops, tmp_path: Path):
    rows = [json.loads(line) for line in demo_drops[1].read_text().splitlines()]
    rows[3]["split"] = "holdout"
    rows[5]["id"] = rows[6]["id"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = _validate(bad, tmp_path / "ws")
    assert result.exit_code == 1
    assert "FAIL expect_column_values_to_be_in_set(split): 1 rows" in result.output
    assert f"lines [4]  ids ['{rows[3]['id']}']" in result.output
    assert "FAIL expect_column_values_to_be_unique(id): 2 rows" in result.output
    # The first failing rule in suite order (unique ids) names the rejection's line.
    assert "REJECTED" in result.output and "bad.jsonl:6" in result.output


def test_unknown_suite_is_a_usage_error(demo_drops, tmp_path: Path):
    result = _validate(demo_drops[0], tmp_path / "ws", "--suite", "nope")
    assert result.exit_code == 2 and "known suites" in result.output
