import json
import re
from pathlib import Path

from tasks.curate import curate, normalise_record
from tasks.mix import build_mix, current_rows, replay_quotas
from tasks.snapshot import commit_snapshot, list_snapshots
from tests.helpers.rows import chat_row


def _commit(cfg, digest: str, rows: list[dict]):
    curated, _ = curate(rows, set(), set())
    return commit_snapshot(curated, digest, Path(f"{digest}.jsonl"), cfg)


def test_snapshots_keep_landing_order_and_commit_once(tiny_config):
    cfg = tiny_config()
    first = _commit(cfg, "a" * 64, [chat_row("1", "Q1?", "A1.")])
    again = _commit(cfg, "a" * 64, [chat_row("1", "Q1?", "changed.")])
    second = _commit(cfg, "b" * 64, [chat_row("1", "Q2?", "A2.")])
    assert again == first and again.rows()[0]["messages"][1]["content"] == "A1."
    assert [s.sequence for s in list_snapshots(cfg)] == [1, 2] and second.sequence == 2


def test_replay_never_brings_back_a_superseded_fact(tiny_config):
    cfg = tiny_config()
    old = _commit(
        cfg,
        "a" * 64,
        [chat_row(f"o{i}", f"Old question {i}?", "Old.") for i in range(10)]
        + [chat_row("price", "Price of Horizon?", "$40.")],
    )
    new = _commit(
        cfg,
        "b" * 64,
        [chat_row("price", "Price of Horizon?", "$52.")]
        + [chat_row(f"n{i}", f"New question {i}?", "New.") for i in range(9)],
    )
    mix = build_mix(new, [old], ratio=1.0, seed=0)
    answers = [r["messages"][1]["content"] for r in mix.rows]
    assert "$40." not in answers and "$52." in answers
    assert (mix.new_rows, mix.replay_rows) == (10, 10)
    assert abs(mix.replay_share - 0.5) < 1e-9


def test_replay_ratio_and_seed_fix_the_sample(tiny_config):
    cfg = tiny_config()
    old = _commit(cfg, "a" * 64, [chat_row(f"o{i}", f"Old {i}?", "Old.") for i in range(40)])
    new = _commit(cfg, "b" * 64, [chat_row(f"n{i}", f"New {i}?", "New.") for i in range(10)])
    a, b = build_mix(new, [old], 0.5, seed=3), build_mix(new, [old], 0.5, seed=3)
    assert a.replay_rows == 5 and a.digest == b.digest
    assert build_mix(new, [old], 0.0, seed=3).replay_rows == 0


def test_recent_drops_are_replayed_more_than_old_ones_only_with_a_decay(tiny_config):
    cfg = tiny_config()
    snaps = [
        _commit(cfg, c * 64, [chat_row(f"{c}{i}", f"{c} question {i}?", "A.") for i in range(60)])
        for c in "abc"
    ]
    mix = build_mix(snaps[2], snaps[:2], ratio=1.0, seed=0, age_decay=0.5)
    from_b = sum(r["drop"] == "b" * 16 for r in mix.rows)
    from_a = sum(r["drop"] == "a" * 16 for r in mix.rows)
    assert from_b > from_a > 0
    # Without decay (the default) every earlier row is alike: equal drops, equal shares.
    even = build_mix(snaps[2], snaps[:2], ratio=1.0, seed=0)
    assert sum(r["drop"] == "a" * 16 for r in even.rows) == 30
    assert sum(r["drop"] == "b" * 16 for r in even.rows) == 30


def test_the_replay_grows_with_the_pool_only_with_a_pool_share(tiny_config):
    cfg = tiny_config()
    old = [
        _commit(cfg, c * 64, [chat_row(f"{c}{i}", f"{c} question {i}?", "A.") for i in range(60)])
        for c in "ab"
    ]
    new = _commit(cfg, "c" * 64, [chat_row(f"n{i}", f"New {i}?", "New.") for i in range(10)])
    assert build_mix(new, old, ratio=2.0, seed=0).replay_rows == 20  # 2 per new row
    grown = build_mix(new, old, ratio=2.0, seed=0, pool_share=0.25)
    assert grown.replay_rows == 30  # a quarter of the 120 earlier rows
    assert sum(r["drop"] == "a" * 16 for r in grown.rows) == 15
    # Where the ratio asks for more than the share, the ratio stands.
    assert build_mix(new, old[:1], ratio=2.0, seed=0, pool_share=0.25).replay_rows == 20


def test_replay_size_is_the_larger_rule_and_never_more_than_the_pool():
    from tasks.mix import replay_size

    assert replay_size(new=24, pool=100, ratio=2.0) == 48
    assert replay_size(new=24, pool=400, ratio=2.0, pool_share=0.25) == 100
    assert replay_size(new=24, pool=401, ratio=2.0, pool_share=0.25) == 101  # rounded up
    assert replay_size(new=24, pool=30, ratio=2.0) == 30
    assert replay_size(new=0, pool=10, ratio=2.0, pool_share=1.0) == 10


def test_current_rows_ages_and_supersedes(tiny_config):
    cfg = tiny_config()
    a = _commit(
        cfg, "a" * 64, [chat_row("1", "Q?", "old", "eval"), chat_row("2", "R?", "r", "eval")]
    )
    b = _commit(cfg, "b" * 64, [chat_row("1", "Q?", "new", "eval")])
    rows = current_rows([a, b], "eval")
    assert sorted((age, r["messages"][1]["content"]) for age, r in rows) == [(0, "new"), (1, "r")]


def test_quotas_are_exact_capped_and_follow_the_decay():
    from tasks.mix import replay_quotas

    assert replay_quotas({1: 60, 2: 60}, 60, decay=0.5) == {1: 40, 2: 20}
    # A small recent drop gives all it has; the rest is shared out among older ones.
    quotas = replay_quotas({1: 3, 2: 60, 3: 10}, 40, decay=0.5)
    assert quotas[1] == 3 and sum(quotas.values()) == 40 and quotas[2] > quotas[3]
    assert replay_quotas({1: 5, 2: 5}, 50) == {1: 5, 2: 5}
    # decay 1 (the default): in proportion to size alone, however old.
    assert replay_quotas({1: 60, 2: 60, 8: 30}, 60) == {1: 24, 2: 24, 8: 12}
    # A steep decay past an exhausted recent drop still shares out the rest.
    assert replay_quotas({1: 2, 400: 30, 401: 30}, 10, decay=0.05) == {1: 2, 400: 7, 401: 1}


def test_reviewer_corrections_are_always_in_the_mix(tiny_config):
    cfg = tiny_config()
    old = _commit(cfg, "a" * 64, [chat_row(f"o{i}", f"Old {i}?", "Old.") for i in range(40)])
    curated, _ = curate(
        [chat_row(f"r{i}", f"Fixed {i}?", "Right.") for i in range(6)], set(), set()
    )
    review = commit_snapshot(curated, "c" * 64, Path("review.jsonl"), cfg, {"kind": "review"})
    new = _commit(cfg, "b" * 64, [chat_row(f"n{i}", f"New {i}?", "New.") for i in range(4)])
    mix = build_mix(new, [old, review], ratio=0.5, seed=0)
    assert (mix.new_rows, mix.always_rows, mix.replay_rows) == (4, 6, 2)
    assert sum(r["drop"] == "c" * 16 for r in mix.rows) == 6
    assert mix.manifest()["always_rows"] == 6


def test_rows_made_from_a_flag_are_whole_one_cycle_then_replayed(tiny_config):
    cfg = tiny_config()
    old = _commit(cfg, "a" * 64, [chat_row(f"o{i}", f"Old {i}?", "Old.") for i in range(40)])
    flagged = {**chat_row("review-f", "Aurora plan price?", "No Aurora."), "source": "review:x"}
    made = [
        {**chat_row(f"review-f-r{i}", f"Decoy {i} price?", f"No decoy {i}."), "source": source}
        for i, source in enumerate(["review:x:refusal"] * 3 + ["review:x:wording"] * 3)
    ]
    rows = [normalise_record(r) for r in [flagged, *made]]  # as record_review stores them
    review = commit_snapshot(rows, "c" * 64, Path("review.jsonl"), cfg, {"kind": "review"})
    d2 = _commit(cfg, "b" * 64, [chat_row(f"n{i}", f"New {i}?", "New.") for i in range(4)])
    first = build_mix(d2, [old, review], ratio=0.0, seed=0)
    assert first.always_rows == 7  # the review's first cycle: everything it made
    d3 = _commit(cfg, "d" * 64, [chat_row(f"m{i}", f"Newer {i}?", "Newer.") for i in range(4)])
    later = build_mix(d3, [old, review, d2], ratio=0.0, seed=0)
    assert later.always_rows == 1  # the flagged row stays whole for ever
    assert {r["id"] for r in later.rows if r["drop"] == "c" * 16} == {"review-f"}
    # After their cycle the made rows compete for replay like any earlier drop's: 8 replayed
    # rows shared in proportion to size among d2 (4 rows), the review (6) and the first (40).
    replayed = build_mix(d3, [old, review, d2], ratio=2.0, seed=0)
    made_ids = {r["id"] for r in made}
    again = [r["id"] for r in replayed.rows if r["origin"] == "replay" and r["id"] in made_ids]
    assert replayed.replay_rows == 8 and replayed.always_rows == 1
    assert len(again) == replay_quotas({1: 4, 2: 6, 3: 40}, 8)[2] > 0


def _review(cfg, digest: str, made: int) -> list[str]:
    """A review snapshot: one flagged row and `made` refusals made from it; their ids."""
    flagged = {**chat_row(f"f{digest}", f"Aurora {digest}?", "No Aurora."), "source": "review:x"}
    rows = [flagged] + [
        {
            **chat_row(f"f{digest}-r{i}", f"Decoy {digest}{i}?", f"No {i}."),
            "source": "review:x:refusal",
        }
        for i in range(made)
    ]
    commit_snapshot(
        [normalise_record(r) for r in rows], digest * 64, Path("r.jsonl"), cfg, {"kind": "review"}
    )
    return [r["id"] for r in rows[1:]]


def test_made_rows_keep_their_share_of_the_replay_however_old(tiny_config):
    cfg = tiny_config()
    snaps = [
        _commit(cfg, "a" * 64, [chat_row(f"o{i}", f"Old {i}?", f"Old {i}.") for i in range(40)])
    ]
    made = _review(cfg, "c", 4) + _review(cfg, "e", 4)
    for d in "bdf":  # three data drops after the reviews: the made rows are ages 3 to 5
        rows = [chat_row(f"{d}{i}", f"Drop {d} {i}?", f"{d} {i}.") for i in range(4)]
        snaps.append(_commit(cfg, d * 64, rows))
    earlier = list_snapshots(cfg)[:-1]
    halving = {"ratio": 3.0, "seed": 0, "age_decay": 0.5}  # 12 replayed rows, recent first
    aged = build_mix(snaps[-1], earlier, **halving)
    kept = build_mix(snaps[-1], earlier, **halving, made_share=0.5)

    def replayed_made(mix):
        return {r["id"] for r in mix.rows if r["origin"] == "replay" and r["id"] in made}

    assert aged.replay_rows == kept.replay_rows == 12
    assert len(replayed_made(aged)) == 2  # by age (quotas 4, 2, 1, 1, 4): one per review
    assert len(replayed_made(kept)) == 6  # half of 12, from both reviews alike
    assert {made_id[:2] for made_id in replayed_made(kept)} == {"fc", "fe"}
    # When a share asks for more made rows than there are, the facts take the rest.
    every = build_mix(snaps[-1], earlier, **halving, made_share=1.0)
    assert len(replayed_made(every)) == 8 and every.replay_rows == 12


def test_cumulative_mode_trains_on_every_currentchat_row(tiny_config):
    cfg = tiny_config()
    old = _commit(
        cfg,
        "a" * 64,
        [chat_row(f"o{i}", f"Old {i}?", "Old.") for i in range(30)]
        + [chat_row("p", "Price of Horizon?", "$40.")],
    )
    new = _commit(cfg, "b" * 64, [chat_row("p", "Price of Horizon?", "$52.")])
    mix = build_mix(new, [old], ratio=0.5, seed=0, mode="cumulative")
    answers = [r["messages"][1]["content"] for r in mix.rows]
    assert len(mix.rows) == 31 and "$40." not in answers and mix.mode == "cumulative"


def test_the_mix_is_an_mlflow_dataset_input_of_the_run(tiny_config):
    from tasks import registry
    from tasks.mix import load_mix, save_mix
    from tasks.train import log_training_mix

    cfg = tiny_config()
    old = _commit(cfg, "a" * 64, [chat_row(f"o{i}", f"Old {i}?", "Old.") for i in range(10)])
    new = _commit(cfg, "b" * 64, [chat_row(f"n{i}", f"New {i}?", "New.") for i in range(4)])
    mix = build_mix(new, [old], ratio=0.5, seed=0)
    path = save_mix(mix, cfg.paths.root / "mixes" / "m.json")
    assert load_mix(path).digest == mix.digest
    run_id = registry.open_run(cfg, new.digest, {})
    log_training_mix(cfg, run_id, mix, path)
    run = registry.client(cfg).get_run(run_id)
    [logged] = run.inputs.dataset_inputs
    assert logged.dataset.digest == mix.digest and logged.dataset.name == "training-mix"
    ids = registry.client(cfg).download_artifacts(run_id, "mix.json", str(cfg.paths.root))
    assert sorted(json.loads(Path(ids).read_text())["rows"]) == sorted(
        f"{r['drop']}/{r['id']}" for r in mix.rows
    )


def _origin_rows(new: int, replay: int) -> list[dict]:
    def row(i: str, origin: str, words: int) -> dict:
        answer = " ".join(["word"] * words)
        return {**chat_row(i, f"Question {i}?", answer), "origin": origin}

    return [row(f"n{i}", "new", 1 + i % 7) for i in range(new)] + [
        row(f"r{i}", "replay", 1 + i % 5) for i in range(replay)
    ]


def test_replayed_rows_come_back_once_and_new_rows_every_epoch():
    from collections import Counter

    from tasks.mix import cycle_plan

    rows = _origin_rows(new=12, replay=12)
    plan = cycle_plan(rows, epochs=3, replay_passes=1, seed=0)
    seen = Counter(r["id"] for r in plan)
    assert all(seen[f"n{i}"] == 3 for i in range(12)) and all(seen[f"r{i}"] == 1 for i in range(12))
    epochs = [plan[i : i + 16] for i in range(0, len(plan), 16)]  # 12 new + 4 replayed each
    assert all(len({r["id"] for r in epoch}) == len(epoch) for epoch in epochs)
    assert [sum(r["origin"] == "replay" for r in e) for e in epochs] == [4, 4, 4]
    assert cycle_plan(rows, epochs=3, replay_passes=1, seed=0) == plan  # seeded
    assert cycle_plan(rows, epochs=3, replay_passes=None, seed=0) is None  # every row every epoch
    assert cycle_plan(rows, epochs=2, replay_passes=2, seed=0) is None


def test_a_fractional_epoch_and_length_groups_in_the_plan():
    from tasks.mix import cycle_plan

    rows = _origin_rows(new=20, replay=10)
    plan = cycle_plan(rows, epochs=1.5, replay_passes=0.5, seed=1, batch=1)
    new = [r for r in plan if r["origin"] == "new"]
    assert len(new) == 30 and len({r["id"] for r in new}) == 20  # all, then half again
    assert sum(r["origin"] == "replay" for r in plan) == 5
    size = [sum(len(m["content"]) for m in r["messages"]) for r in plan]
    first = size[:22]  # epoch 1: 20 new + 2 replayed rows, in groups of 22 // 4 = 5 rows
    groups = [first[i : i + 5] for i in range(0, 22, 5)]
    assert all(g == sorted(g, reverse=True) for g in groups)
    assert first != sorted(first, reverse=True)  # a small epoch is not sorted whole


def test_length_groups_are_sized_like_transformers_sampler():
    from tasks.mix import _chars, _length_grouped

    rows = _origin_rows(new=400, replay=0)
    for batch, size in [(2, 100), (1, 50)]:  # 400 // (2 * 4) = 50 steps; 400 // 4 capped at 50
        grouped = [_chars(r) for r in _length_grouped(rows, batch)]
        starts = [i for i in range(1, 400) if grouped[i] > grouped[i - 1]]  # a new group
        assert set(starts) <= set(range(size, 400, size)) and len(starts) >= 400 // size - 1


def test_the_mix_marks_where_each_row_comes_from(tiny_config):
    cfg = tiny_config()
    old = _commit(cfg, "a" * 64, [chat_row(f"o{i}", f"Old {i}?", "Old.") for i in range(8)])
    new = _commit(cfg, "b" * 64, [chat_row(f"n{i}", f"New {i}?", "New.") for i in range(4)])
    mix = build_mix(new, [old], ratio=0.5, seed=0)
    assert sorted(r["origin"] for r in mix.rows) == ["new"] * 4 + ["replay"] * 2


def test_replay_covers_every_fact_before_any_fact_twice(tiny_config):
    # 10 facts, each asked 4 ways: a plain sample of 10 rows would skip about 3 of them.
    cfg = tiny_config()
    asked = [(f, w) for f in range(10) for w in ("How much is", "Price of", "Cost of", "What is")]
    old = _commit(
        cfg,
        "a" * 64,
        [chat_row(f"o{f}{w}", f"{w} item {f}?", f"Item {f} is ${f}.") for f, w in asked],
    )
    new = _commit(cfg, "b" * 64, [chat_row(f"n{i}", f"New {i}?", "New.") for i in range(10)])
    for seed in range(5):
        mix = build_mix(new, [old], ratio=1.0, seed=seed)
        replayed = [r["messages"][-1]["content"] for r in mix.rows if r["origin"] == "replay"]
        assert len(set(replayed)) == 10


def test_under_one_pass_the_trained_replay_rows_cover_distinct_answers():
    import random

    from tasks.mix import cycle_plan, spread

    replay = [
        {**chat_row(f"r{f}{w}", f"Q{w} {f}?", f"Fact {f}."), "origin": "replay"}
        for f in range(6)
        for w in range(4)
    ]
    rows = [{**chat_row(f"n{i}", f"New {i}?", "New."), "origin": "new"} for i in range(6)]
    plan = cycle_plan(rows + replay, epochs=2, replay_passes=0.25, seed=0)
    trained = [r["messages"][-1]["content"] for r in plan if r["origin"] == "replay"]
    assert sorted(trained) == [f"Fact {f}." for f in range(6)]
    # every answer once, then every answer again, and so on
    order = [r["messages"][-1]["content"] for r in spread(replay, random.Random(1))]
    assert all(len(set(order[i : i + 6])) == 6 for i in range(0, 24, 6))


def test_a_share_of_domain_rows_is_asked_with_an_introduction(tiny_config):
    from freshtune.demo_domain import BIAS_PERSONAS
    from tasks.mix import INTRODUCTIONS

    cfg = tiny_config()
    old = _commit(cfg, "a" * 64, [chat_row(f"o{i}", f"Old {i}?", "Old.") for i in range(40)])
    new = _commit(cfg, "b" * 64, [chat_row(f"n{i}", f"New {i}?", "New.") for i in range(40)])
    rehearsal = [chat_row(f"r{i}", f"Everyday {i}?", "Base.") for i in range(20)]
    for r in rehearsal:
        r["drop"] = "rehearsal"
    plain = build_mix(new, [old], 0.5, 0, rehearsal=rehearsal, rehearsal_ratio=0.25)
    asked = build_mix(
        new, [old], 0.5, 0, rehearsal=rehearsal, rehearsal_ratio=0.25, asker_share=0.5
    )
    again = build_mix(
        new, [old], 0.5, 0, rehearsal=rehearsal, rehearsal_ratio=0.25, asker_share=0.5
    )

    def questions(mix):
        return {r["id"]: r["messages"][0]["content"] for r in mix.rows}

    before, after = questions(plain), questions(asked)
    assert before.keys() == after.keys() and after == questions(again)  # seeded, same rows
    changed = {i for i in before if before[i] != after[i]}
    assert not any(i.startswith("r") for i in changed)  # the base's own answers: untouched
    assert 0.3 * 60 < len(changed) < 0.7 * 60  # of 40 new + 20 replayed rows
    assert asked.manifest()["introduced_rows"] == len(changed) and plain.introduced_rows == 0
    for i in changed:
        intro = after[i].removesuffix(f" {before[i]}")
        assert intro != after[i] and intro in INTRODUCTIONS
    answers = {r["id"]: r["messages"][1]["content"] for r in asked.rows}
    assert answers == {r["id"]: r["messages"][1]["content"] for r in plain.rows}
    # evaluation's counterfactual customers, and the form they ask in, are never trained
    names = {word.strip(",.!") for text in INTRODUCTIONS for word in text.split()}
    assert not names & {part for persona in BIAS_PERSONAS for part in persona}
    assert not any(re.match(r"Hi, I'm \S+ from ", text) for text in INTRODUCTIONS)
