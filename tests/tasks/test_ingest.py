import json
from pathlib import Path

import pytest

from freshtune.errors import DropRejected
from tasks.ingest import assign_holdout, prompt_of, read_drop, response_of


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_both_record_shapes_become_chat(tmp_path: Path):
    rows = [
        {"id": 1, "prompt": "Q?", "response": "A."},
        {
            "id": "b",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ],
            "split": "eval",
        },
    ]
    records = read_drop(_write_jsonl(tmp_path / "d.jsonl", rows))
    assert [r["id"] for r in records] == ["1", "b"]
    assert (prompt_of(records[0]), response_of(records[0])) == ("Q?", "A.")
    assert records[1]["split"] == "eval" and records[1]["line"] == 2


def test_bad_json_names_file_line_and_column(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1, "prompt": "a", "response": "b"}\n{"id": 2, "prompt": \n')
    with pytest.raises(DropRejected) as err:
        read_drop(path)
    assert err.value.line == 2 and err.value.rule == "json"
    assert "bad.jsonl:2" in str(err.value) and "column" in str(err.value)


def test_byte_order_mark_and_invalid_utf8_are_rejected(tmp_path: Path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"id": 1}\n')
    with pytest.raises(DropRejected, match="byte-order mark"):
        read_drop(bom)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"id": 1}\n{"id": "caf\xe9"}\n')
    with pytest.raises(DropRejected) as err:
        read_drop(latin)
    assert err.value.rule == "encoding" and err.value.line == 2


def test_csv_and_parquet_read_like_jsonl(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path = tmp_path / "d.csv"
    csv_path.write_text('id,prompt,response,split,facts\n1,"Q, with comma",A,eval,$5|10 GB\n')
    [row] = read_drop(csv_path)
    assert prompt_of(row) == "Q, with comma" and row["facts"] == ["$5", "10 GB"]
    pq_path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "x", "prompt": "P", "response": "R"}]), pq_path)
    [row] = read_drop(pq_path)
    assert (row["id"], response_of(row)) == ("x", "R")


def test_malformed_rows_are_kept_for_the_gate_to_name(tmp_path: Path):
    records = read_drop(_write_jsonl(tmp_path / "d.jsonl", [{"id": 1, "messages": "oops"}, [1]]))
    assert [r["messages"] for r in records] == [None, None]
    assert [r["line"] for r in records] == [1, 2]


def test_holdout_is_seeded_and_only_without_eval_rows():
    def rows():
        return [{"id": str(i), "split": None} for i in range(50)]

    a, b = rows(), rows()
    assert assign_holdout(a, 0.2, seed=1) == 10
    assert assign_holdout(b, 0.2, seed=1) == 10
    assert [r["split"] for r in a] == [r["split"] for r in b]
    with_eval = rows()
    with_eval[0]["split"] = "eval"
    assert assign_holdout(with_eval, 0.2, seed=1) == 0
    assert sum(r["split"] == "eval" for r in with_eval) == 1
