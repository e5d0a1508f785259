"""The months at a glance: rows from cycle records, a table, a plot and MLflow metrics."""

from __future__ import annotations

import math
from pathlib import Path

from tasks.history import as_dicts, history_rows, plot_history, table_artifact, table_lines


def _record(version: int, when: float, current: float, promoted=True, **extra) -> dict:
    return {
        "digest": f"{version:064d}",
        "file": f"/landing/month-{version:02d}.jsonl",
        "version": version,
        "finished_at": when,
        "verdict": "BLESSED" if promoted else "NOT_BLESSED",
        "promoted": promoted,
        "review": {"mode": "auto", "approved": promoted, "reviewer": ""},
        "train": {"train_tokens": 1000.0 * version, "train_wall_s": 60.0, "train_cost": 0.5},
        "scores": {
            "current": {"candidate": {"accuracy": current}},
            "general": {"candidate": {"accuracy": 0.9}},
        },
        **extra,
    }


def test_rows_follow_the_cycles_in_time_and_skip_repeats():
    records = [
        _record(2, 200.0, 0.8, promoted=False),
        _record(1, 100.0, 0.7),
        _record(1, 300.0, 0.7, repeated=True),
    ]
    rows = history_rows(records)
    assert [(r.cycle, r.version, r.drop) for r in rows] == [
        (1, "1", "month-01.jsonl"),
        (2, "2", "month-02.jsonl"),
    ]
    assert rows[1].verdict == "NOT_BLESSED" and not rows[1].promoted
    assert rows[1].review == "auto: not approved" and rows[0].review == "auto: approved"
    # A slice the cycle did not measure is NaN, left out of MLflow and null in JSON.
    assert math.isnan(rows[0].earlier) and "history.earlier" not in rows[0].metrics()
    assert rows[0].metrics()["history.current"] == 0.7
    assert as_dicts(rows)[0]["earlier"] is None and as_dicts(rows)[1]["train_tokens"] == 2000.0


def test_the_table_and_the_plot(tmp_path: Path):
    rows = history_rows([_record(1, 100.0, 0.7), _record(2, 200.0, 0.85, promoted=False)])
    lines = table_lines(rows)
    assert len(lines) == 3 and "general" in lines[0]
    assert "month-02.jsonl" in lines[2] and " 85%" in lines[2] and "NOT_BLESSED" in lines[2]
    out = plot_history(rows, tmp_path / "plots" / "history.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_the_prefect_table_rounds_fractions_only():
    record = _record(1, 100.0, 5 / 12)
    record["train"] = {"train_tokens": 14420.0, "train_wall_s": 10.471643437, "train_cost": 0.5}
    (row,) = table_artifact(history_rows([record]))
    assert row["current"] == 0.4167 and row["train_s"] == 10.47 and row["train_tokens"] == 14420
    assert row["earlier"] is None and row["version"] == "1" and row["promoted"] is True
    assert as_dicts(history_rows([record]))[0]["current"] == 5 / 12  # --json keeps every digit
