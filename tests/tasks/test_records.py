"""A drop's records as columns (`tasks/records.py`): the rows they hand out are the dicts the
reader always made, and the gate gives the same answers on them as on plain dicts."""

import json
from pathlib import Path

from tasks.curate import curate
from tasks.ingest import assign_holdout, read_drop, to_record
from tasks.records import Records, Uniform
from tasks.validate import validate_records

ROWS = [
    {"id": 1, "prompt": "Q?", "response": "A.", "facts": ["$5", 10], "source": "crm"},
    {
        "id": "c",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
    },
    {"id": "x", "messages": [{"content": "Hi", "role": "user", "name": "jo"}], "split": "eval"},
    {"id": 2, "prompt": None, "response": "A."},
    {"id": 3, "messages": None, "prompt": "Q?", "response": "A."},
    {"id": 4, "messages": []},
    [1],
]


def test_records_hand_out_the_readers_dicts_key_order_included(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    records = read_drop(path)
    assert records[3] == {
        "id": "2",
        "messages": None,
        "split": None,
        "source": "",
        "facts": [],
        "slice": "",
        "pair": "",
        "line": 4,
        "_schema": None,  # a null prompt passes the schema check: no conversation
        "_shape": "prompt_response",
    }
    assert records[0]["facts"] == ["$5", "10"] and records[1]["_shape"] == "chat"
    assert records[2]["messages"] == ROWS[2]["messages"]  # as read: key order, extra keys
    assert records[4]["messages"][0] == {"role": "user", "content": "Q?"}
    assert records[5]["messages"] == [] and records[6]["messages"] is None
    expected = [to_record(json.loads(json.dumps(r)), i) for i, r in enumerate(ROWS, start=1)]
    assert json.dumps(list(records)) == json.dumps(expected)
    assert records == expected and records[2:5] == expected[2:5] and records[-1] == expected[-1]


def test_a_column_of_one_value_is_held_once():
    same = Uniform.of([None] * 3)
    assert isinstance(same, Uniform) and list(same) == [None] * 3 and same[1:] == [None] * 2
    assert not isinstance(Uniform.of(["", "crm"]), Uniform)
    assert not isinstance(Uniform.of([[], []]), Uniform)  # equal, not the same object


def test_holdout_is_the_same_on_columns_and_on_dicts():
    rows = [{"id": str(i), "split": None, "prompt": "Q?", "response": "A."} for i in range(50)]
    dicts = [to_record(r, i) for i, r in enumerate(rows)]
    records = Records.of(dicts)
    columns = Records()
    for row in dicts:
        columns.add(row)
    assert assign_holdout(columns.compact(), 0.2, seed=1) == assign_holdout(dicts, 0.2, seed=1)
    assert [r["split"] for r in columns] == [r["split"] for r in records]


def test_the_gate_says_the_same_of_columns_and_of_dicts(tmp_path: Path, tiny_config):
    rows = [
        {"id": f"r{i}", "prompt": f"Price of plan {i % 30}?", "response": "$5."} for i in range(60)
    ]
    rows[3]["response"] = "Mail jane.doe@example.com  today."
    rows[7] = {
        "id": "m",
        "messages": [
            {"role": "user", "content": "Hi  there"},
            {"role": "assistant", "content": "Hello, how can I help?"},
        ],
    }
    rows[9]["split"] = "eval"
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = read_drop(path)
    dicts = [to_record(json.loads(json.dumps(r)), i) for i, r in enumerate(rows, start=1)]
    cfg = tiny_config()
    assert validate_records(records, path, cfg) == validate_records(dicts, path, cfg)
    (kept, report), (kept_dicts, report_dicts) = curate(records), curate(dicts)
    assert json.dumps(kept) == json.dumps(kept_dicts) and len(kept) < len(rows)
    report.seconds = report_dicts.seconds = {}
    assert report.to_json() == report_dicts.to_json() and report.pii["EMAIL"] == 1
