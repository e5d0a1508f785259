import json
from pathlib import Path

import pytest

from freshtune.errors import DropRejected
from tasks.ingest import ReadLimits, assign_holdout, prompt_of, read_drop, response_of


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


# --- one test per bad input: the message names file, line and rule ---------------------------

ROW = {"id": "a", "prompt": "Q?", "response": "A."}


def _reject(path: Path, limits: ReadLimits | None = None) -> DropRejected:
    with pytest.raises(DropRejected) as err:
        read_drop(path, limits)
    assert path.name in str(err.value)
    return err.value


def test_truncated_last_line_is_named_as_cut_off(tmp_path: Path):
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + '{"id": "b", "prompt": "Q', encoding="utf-8")
    err = _reject(path)
    assert (err.rule, err.line) == ("truncated", 2) and "cut.jsonl:2" in str(err)


def test_empty_file_and_header_only_csv_are_rejected(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert _reject(empty).rule == "empty"
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    assert _reject(blank).rule == "empty"
    header = tmp_path / "header.csv"
    header.write_text("id,prompt,response\n")
    err = _reject(header)
    assert err.rule == "empty" and "CSV header but no rows" in str(err)


def test_utf16_is_rejected_unless_the_config_allows_it(tmp_path: Path):
    text = json.dumps(ROW) + "\n"
    with_bom = tmp_path / "bom16.jsonl"
    with_bom.write_bytes(text.encode("utf-16"))  # writes a BOM
    err = _reject(with_bom)
    assert err.rule == "encoding" and "UTF-16" in str(err) and "data.encoding=utf-16" in str(err)
    no_bom = tmp_path / "le16.jsonl"
    no_bom.write_bytes(text.encode("utf-16-le"))
    err = _reject(no_bom)
    assert err.rule == "encoding" and "UTF-16" in str(err) and err.line == 1
    [row] = read_drop(with_bom, ReadLimits(encoding="utf-16"))
    assert row["id"] == "a"


def test_latin1_and_bom_are_rejected_with_the_fix_unless_allowed(tmp_path: Path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes((json.dumps(ROW) + "\n" + '{"id": "caf\xe9"}\n').encode("latin-1"))
    err = _reject(latin)
    assert (err.rule, err.line) == ("encoding", 2) and "data.encoding=latin-1" in str(err)
    assert read_drop(latin, ReadLimits(encoding="latin-1"))[1]["id"] == "café"
    bom = tmp_path / "bom8.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROW).encode() + b"\n")
    assert "data.encoding=utf-8-sig" in str(_reject(bom))
    assert read_drop(bom, ReadLimits(encoding="utf-8-sig"))[0]["id"] == "a"


def test_a_line_over_the_size_limit_is_named(tmp_path: Path):
    path = tmp_path / "long.jsonl"
    rows = [ROW, {**ROW, "id": "b", "response": "x" * 5000}, ROW]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    err = _reject(path, ReadLimits(max_line_bytes=4096))
    assert (err.rule, err.line) == ("line_size", 2) and "data.max_line_kb=4" in str(err)
    err = _reject(path, ReadLimits(max_file_bytes=1000))
    assert err.rule == "size" and "data.max_file_mb" in str(err)


def test_schema_problems_are_kept_per_row_for_the_gate(tmp_path: Path):
    rows = [
        ROW,
        {"id": "m", "prompt": "Q?"},  # missing field
        {"id": "r", "question": "Q?", "answer": "A."},  # renamed fields
        {"id": "t", "prompt": "Q?", "response": 42},  # wrong type
        {"id": "c", "messages": [{"role": "user", "content": 7}]},
    ]
    problems = [r["_schema"] for r in read_drop(_write_jsonl(tmp_path / "d.jsonl", rows))]
    assert problems[0] is None
    assert problems[1] == "missing field response"
    assert "'question' looks like a renamed 'prompt'" in problems[2]
    assert "'answer' looks like a renamed 'response'" in problems[2]
    assert problems[3] == "field 'response' must be a string, got int"
    assert problems[4] == "messages[0].content must be a string, got int"


def test_json_line_breaks_inside_strings_and_nan_read_as_before(tmp_path: Path):
    """Lines end at "\\n" only: U+2028 inside a JSON string is text, not a new line; NaN,
    which orjson refuses and json accepts, still reads."""
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"id": "a", "prompt": "one\u2028two", "response": "A."}\n'
        '{"id": "b", "prompt": "Q?", "response": "B.", "score": NaN}\n'
        '{"id": "c", "prompt": null, "response": "C."}\n',
        encoding="utf-8",
    )
    records = read_drop(path)
    assert [r["line"] for r in records] == [1, 2, 3]
    assert prompt_of(records[0]) == "one\u2028two"
    assert response_of(records[1]) == "B."
    assert records[2]["messages"] is None  # a null prompt is not a conversation


@pytest.mark.parametrize(
    ("line", "rule", "says"),
    [
        ("[" * 5000 + "]" * 5000, "nesting", "deeper than 16"),
        ('{"id": 1, "x": ' + "[" * 40 + "]" * 40 + "}", "nesting", "deeper than 16"),
        ('{"id": 1, "prompt": "a\\ud800b", "response": "c"}', "characters", "['prompt']"),
        ('{"id": 1, "prompt": "a\\u0007b", "response": "c"}', "characters", "['prompt']"),
        (
            '{"id": 1, "prompt": "a", "response": "c", "facts": ["\\u001b[31m"]}',
            "characters",
            "['facts'][0]",
        ),
    ],
    ids=[
        "nesting-past-the-parser",
        "nesting-in-a-field",
        "lone-surrogate",
        "bell",
        "escape-in-facts",
    ],
)
def test_hostile_json_is_a_named_rejection(tmp_path: Path, line: str, rule: str, says: str):
    path = tmp_path / "drop.jsonl"
    path.write_text('{"id": 0, "prompt": "fine\\tand\\nfine", "response": "ok"}\n' + line + "\n")
    with pytest.raises(DropRejected) as caught:
        read_drop(path)
    assert caught.value.rule == rule and caught.value.line == 2 and says in str(caught.value)


def test_control_characters_in_csv_are_named_with_their_line(tmp_path: Path):
    path = tmp_path / "drop.csv"
    path.write_text("id,prompt,response\n1,fine,ok\n2,a\x08b,ok\n")
    with pytest.raises(DropRejected, match="drop.csv:3") as caught:
        read_drop(path)
    assert caught.value.rule == "characters"


def _rows_text(n: int) -> list[str]:
    return [json.dumps({"id": f"r{i}", "prompt": f"Q{i} é?", "response": "A."}) for i in range(n)]


@pytest.mark.parametrize(
    ("change", "rule", "line"),
    [
        ({}, None, None),
        ({6: '{"id": "x", "prompt": ', 8: b'{"id": "caf\xe9"}'}, "encoding", 9),  # bytes first
        ({2: '{"id": "\\u0007"}', 6: '{"id": "x", "prompt": '}, "json", 7),  # then parsing
        ({2: '{"id": "a\\u0007", "prompt": "Q", "response": "A"}'}, "characters", 3),
        ({4: "", 5: "  ", 9: '{"id": "x", "p'}, "truncated", 10),  # the last line, no newline
        ({3: json.dumps({"id": "x", "prompt": "q", "response": "y" * 300})}, "line_size", 4),
    ],
    ids=[
        "same-records",
        "encoding-beats-json",
        "json-beats-characters",
        "characters",
        "truncated",
        "line-size",
    ],
)
def test_a_file_larger_than_one_block_reads_as_one_block(tmp_path: Path, change, rule, line):
    """JSONL is read in blocks of ReadLimits.block_bytes; lines, records and the rule that
    rejects stay those of the whole file read at once."""
    lines: list = _rows_text(10)
    for i, text in change.items():
        lines[i] = text
    data = b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines)
    path = tmp_path / "drop.jsonl"
    path.write_bytes(data if rule == "truncated" else data + b"\n")
    results = []
    for block_bytes in (1 << 20, 40):  # one block; about one line a block
        try:
            results.append(read_drop(path, ReadLimits(max_line_bytes=256, block_bytes=block_bytes)))
        except DropRejected as exc:
            results.append((exc.rule, exc.line, str(exc)))
    assert results[0] == results[1]
    if rule is None:
        assert [r["line"] for r in results[1]] == list(range(1, 11))
        assert results[1][9]["id"] == "r9" and results[1][3]["messages"][0]["content"] == "Q3 é?"
    else:
        assert results[1][:2] == (rule, line)
