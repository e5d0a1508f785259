import json
from collections import Counter
from pathlib import Path

import pytest

from freshtune.demo_domain import (
    SYSTEM_PROMPT,
    Fact,
    Record,
    answer_for,
    changed_facts,
    make_drop,
    still_true_eval,
    world_at,
    write_drop,
)

MONTHS = range(1, 13)


def question(record: Record) -> str:
    return record["messages"][1]["content"]


def answer(record: Record) -> str:
    return record["messages"][2]["content"]


def split(records: list[Record], name: str) -> list[Record]:
    return [r for r in records if r["split"] == name]


def prompts_about(fact: Fact, records: list[Record]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {"train": set(), "eval": set()}
    for r in records:
        if answer(r) == answer_for(fact) and "slice" not in r:
            found[r["split"]].add(question(r))
    return found


def test_same_month_and_seed_give_identical_drops() -> None:
    assert make_drop(3, seed=7) == make_drop(3, seed=7)
    assert world_at(5, seed=7) == world_at(5, seed=7)


def test_different_seed_gives_different_values() -> None:
    values = {s: [f.value for f in world_at(1, seed=s).values()] for s in (0, 1)}
    assert values[0] != values[1]


def test_month_one_covers_every_fact_of_the_world() -> None:
    world = world_at(1)
    assert 16 <= len(world) <= 18
    assert changed_facts(1) == list(world.values())
    rows = make_drop(1, noise=False)
    for fact in world.values():
        assert fact.value in answer_for(fact)
        prompts = prompts_about(fact, rows)
        assert (len(prompts["train"]), len(prompts["eval"])) == (4, 2), fact
    facts_rows = [
        r
        for r in rows
        if "slice" not in r
        and "Nimbus Mobile has no" not in answer(r)
        and r["source"] != "general-keep"
    ]
    assert len(facts_rows) == 6 * len(world)


def test_records_have_the_chat_format() -> None:
    for r in make_drop(2):
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == SYSTEM_PROMPT
        assert r["source"] == "demo-month-02" and r["id"].startswith("m02-")
        assert ("facts" in r) == (r["split"] == "eval")


def test_month_two_restates_changed_facts_with_new_values_and_old_prompts() -> None:
    before = world_at(1)
    changed = [f for f in changed_facts(2) if f.fact_id in before]
    assert changed, "month 2 should change some existing facts"
    rows1, rows2 = make_drop(1, noise=False), make_drop(2, noise=False)
    for fact in changed:
        assert fact.value != before[fact.fact_id].value
        new = prompts_about(fact, rows2)
        assert len(new["train"]) == 4 and len(new["eval"]) == 2
        # Identical prompts, only the answer changes: the newer row supersedes the older one.
        assert new == prompts_about(before[fact.fact_id], rows1)


def test_new_and_changed_facts_are_set_in_their_month() -> None:
    for month in range(2, 7):
        facts = changed_facts(month)
        assert all(f.month_set == month for f in facts)
        assert len(facts) >= 5


def test_eval_questions_never_equal_train_questions() -> None:
    drops = [r for m in range(1, 7) for r in make_drop(m)]
    train = {question(r) for r in split(drops, "train")}
    assert not train & {question(r) for r in split(drops, "eval")}


def test_eval_facts_appear_in_the_reference_answer() -> None:
    for month in range(1, 7):
        for r in split(make_drop(month), "eval"):
            if r.get("slice") == "hallucination":
                assert "Nimbus Mobile has no" in answer(r) and "facts" not in r
                continue
            assert r["facts"] and all(f in answer(r) for f in r["facts"]), r


def test_never_sold_products_teach_and_test_abstention_on_different_names() -> None:
    rows = make_drop(1, noise=False)
    train = {
        question(r) for r in rows if "Nimbus Mobile has no" in answer(r) and r["split"] == "train"
    }
    tested = [r for r in rows if r.get("slice") == "hallucination"]
    assert len(train) == 15 and len(tested) == 4
    for r in tested:
        assert not any(name in question(r) for name in ("Nebula", "Fold", "Orbit"))
    assert not any(r.get("slice") == "hallucination" for r in make_drop(2))


def test_bias_pairs_ask_the_same_question_for_different_customers() -> None:
    for month in (1, 2, 3):
        pairs: dict[str, list[Record]] = {}
        for r in make_drop(month):
            if r.get("slice") == "bias":
                pairs.setdefault(r["pair"], []).append(r)
        assert len(pairs) == 2
        for a, b in pairs.values():
            assert answer(a) == answer(b) and question(a) != question(b)
            assert question(a).split(". ", 1)[1] == question(b).split(". ", 1)[1]


@pytest.mark.parametrize("month", [1, 2, 5])
def test_noise_adds_duplicates_and_empty_answers(month: int) -> None:
    def content(r: Record) -> str:
        return json.dumps({k: v for k, v in r.items() if k != "id"}, sort_keys=True)

    noisy, clean = make_drop(month), make_drop(month, noise=False)
    assert len(noisy) == len(clean) + 5
    assert sum(n - 1 for n in Counter(map(content, noisy)).values()) == 3
    assert sum(answer(r) == "" for r in noisy) == 2
    assert len(set(map(content, clean))) == len(clean)
    assert all(answer(r) for r in clean)
    assert split(noisy, "eval") and {r["id"] for r in split(noisy, "eval")} == {
        r["id"] for r in split(clean, "eval")
    }


@pytest.mark.parametrize("month", MONTHS)
def test_every_drop_passes_the_row_gate_with_unique_ids(month: int) -> None:
    for noise in (True, False):
        rows = make_drop(month, noise=noise)
        assert len(split(rows, "train")) >= 20
        assert len({r["id"] for r in rows}) == len(rows)


def test_later_drops_are_smaller_than_month_one() -> None:
    assert all(len(make_drop(m)) < len(make_drop(1)) for m in range(2, 5))


def test_retired_products_lose_their_facts() -> None:
    retired = [f for f in world_at(12).values() if f.attribute == "availability"]
    assert retired
    for fact in retired:
        assert {f.attribute for f in world_at(12).values() if f.subject == fact.subject} == {
            "availability"
        }


def test_still_true_eval_keeps_only_current_values() -> None:
    world = world_at(6)
    rows = still_true_eval(6)
    current = {answer_for(f) for f in world.values()}
    assert all(r["split"] == "eval" and answer(r) in current for r in rows)
    assert len({question(r) for r in rows}) == len(rows) == 2 * len(world)
    assert {r["source"] for r in rows} > {"demo-month-01", "demo-month-06"}


def test_write_drop_round_trips_as_jsonl(tmp_path: Path) -> None:
    out = write_drop(2, tmp_path / "drops" / "m02.jsonl")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == make_drop(2)
    assert not out.with_suffix(".jsonl.partial").exists()


def test_write_drop_refuses_other_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="jsonl"):
        write_drop(1, tmp_path / "m01.csv")


def test_invalid_month_is_rejected() -> None:
    with pytest.raises(ValueError, match="month"):
        world_at(0)


def test_a_domain_only_drop_has_no_everyday_or_never_sold_rows():
    from freshtune.demo_domain import make_drop

    full, domain = make_drop(1, noise=False), make_drop(1, noise=False, everyday=False)
    sources = {r.get("source") for r in domain}
    assert "general-keep" not in sources
    assert not any(r.get("slice") == "hallucination" for r in domain)
    assert not any("Nimbus Mobile has no" in r["messages"][-1]["content"] for r in domain)
    # The domain's own rows are the same ones.
    facts = [r for r in full if r.get("source") != "general-keep" and "has no" not in str(r)]
    assert len(domain) == len(facts)
