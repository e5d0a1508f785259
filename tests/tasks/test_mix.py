from pathlib import Path

from tasks.curate import curate
from tasks.mix import build_mix, current_rows
from tasks.snapshot import commit_snapshot, list_snapshots


def _row(i: str, q: str, a: str, split: str = "train") -> dict:
    return {
        "id": i,
        "split": split,
        "source": "",
        "facts": [],
        "line": 1,
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
    }


def _commit(cfg, digest: str, rows: list[dict]):
    curated, _ = curate(rows, set(), set())
    return commit_snapshot(curated, digest, Path(f"{digest}.jsonl"), cfg)


def test_snapshots_keep_landing_order_and_commit_once(tiny_config):
    cfg = tiny_config()
    first = _commit(cfg, "a" * 64, [_row("1", "Q1?", "A1.")])
    again = _commit(cfg, "a" * 64, [_row("1", "Q1?", "changed.")])
    second = _commit(cfg, "b" * 64, [_row("1", "Q2?", "A2.")])
    assert again == first and again.rows()[0]["messages"][1]["content"] == "A1."
    assert [s.sequence for s in list_snapshots(cfg)] == [1, 2] and second.sequence == 2


def test_replay_never_brings_back_a_superseded_fact(tiny_config):
    cfg = tiny_config()
    old = _commit(
        cfg,
        "a" * 64,
        [_row(f"o{i}", f"Old question {i}?", "Old.") for i in range(10)]
        + [_row("price", "Price of Horizon?", "$40.")],
    )
    new = _commit(
        cfg,
        "b" * 64,
        [_row("price", "Price of Horizon?", "$52.")]
        + [_row(f"n{i}", f"New question {i}?", "New.") for i in range(9)],
    )
    mix = build_mix(new, [old], ratio=1.0, seed=0)
    answers = [r["messages"][1]["content"] for r in mix.rows]
    assert "$40." not in answers and "$52." in answers
    assert (mix.new_rows, mix.replay_rows) == (10, 10)
    assert abs(mix.replay_share - 0.5) < 1e-9


def test_replay_ratio_and_seed_fix_the_sample(tiny_config):
    cfg = tiny_config()
    old = _commit(cfg, "a" * 64, [_row(f"o{i}", f"Old {i}?", "Old.") for i in range(40)])
    new = _commit(cfg, "b" * 64, [_row(f"n{i}", f"New {i}?", "New.") for i in range(10)])
    a, b = build_mix(new, [old], 0.5, seed=3), build_mix(new, [old], 0.5, seed=3)
    assert a.replay_rows == 5 and a.digest == b.digest
    assert build_mix(new, [old], 0.0, seed=3).replay_rows == 0


def test_recent_drops_are_replayed_more_than_old_ones(tiny_config):
    cfg = tiny_config()
    snaps = [
        _commit(cfg, c * 64, [_row(f"{c}{i}", f"{c} question {i}?", "A.") for i in range(60)])
        for c in "abc"
    ]
    mix = build_mix(snaps[2], snaps[:2], ratio=1.0, seed=0)
    from_b = sum(r["drop"] == "b" * 16 for r in mix.rows)
    from_a = sum(r["drop"] == "a" * 16 for r in mix.rows)
    assert from_b > from_a > 0


def test_current_rows_ages_and_supersedes(tiny_config):
    cfg = tiny_config()
    a = _commit(cfg, "a" * 64, [_row("1", "Q?", "old", "eval"), _row("2", "R?", "r", "eval")])
    b = _commit(cfg, "b" * 64, [_row("1", "Q?", "new", "eval")])
    rows = current_rows([a, b], "eval")
    assert sorted((age, r["messages"][1]["content"]) for age, r in rows) == [(0, "new"), (1, "r")]
