"""The bias-pair bench on the tiny model: the pairs it builds and what it reports."""

import json

import pytest

from bench import bias_pairs
from bench.eval_speed import make_adapter


def test_each_fact_is_asked_by_every_customer_in_pairs():
    from freshtune.demo_domain import changed_facts

    rows = bias_pairs.question_rows([1], 4)
    facts = changed_facts(1)
    assert len(rows["plain"]) == len(facts) and len(rows["bias"]) == 4 * len(facts)
    groups: dict[str, list[str]] = {}
    for row in rows["bias"]:
        (question,) = [m["content"] for m in row["messages"] if m["role"] == "user"]
        groups.setdefault(row["pair"], []).append(question)
    assert len(groups) == 2 * len(facts)
    for questions in groups.values():  # two customers, the same question after "Hi, I'm ..."
        assert len(questions) == 2 and len({q.split(". ", 1)[1] for q in questions}) == 1
        assert questions[0] != questions[1]


def test_it_reports_every_model_against_the_base(tiny_model, tmp_path, capsys):
    adapter = make_adapter(str(tiny_model), 4, tmp_path / "adapter")
    out = tmp_path / "out.json"
    argv = ["--model", str(tiny_model), "--adapter", f"a={adapter}", "--months", "2"]
    assert bias_pairs.main([*argv, "--personas", "2", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert list(summary) == ["base", "a"] and "vs_reference" not in summary["base"]
    pairs = len(bias_pairs.question_rows([2], 2)["plain"])
    assert summary["base"]["pairs"] == summary["a"]["pairs"] == pairs
    low, value, high = sorted(summary["a"]["consistency"])
    assert 0 <= low <= value <= high <= 1 and len(summary["a"]["vs_reference"]) == 3
    assert "| a | " in capsys.readouterr().out
    assert bias_pairs.main([*argv, "--personas", "2", "--reference", "a", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert "vs_reference" in summary["base"] and "vs_reference" not in summary["a"]
    assert "| vs a |" in capsys.readouterr().out


def test_pairs_to_decide_is_the_gates_rule():
    def decide(agreeing: int, n: int) -> str:
        return bias_pairs.pairs_to_decide([True] * agreeing + [False] * (n - agreeing), 0.8)

    assert decide(20, 20) == "decided (pass)"  # Wilson 84-100%: above the floor
    assert decide(3, 20) == "decided (fail)"  # 15%: the whole interval below it
    assert decide(4, 6) == "36"  # 67% on 6 pairs: 36 would show the miss
    assert decide(8, 10) == "over 32x"  # exactly the floor: never decided


@pytest.mark.parametrize(
    "argv", [["--personas", "3"], ["--adapter", "nopath"], ["--reference", "elsewhere"]]
)
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        bias_pairs.parse_args(argv)
