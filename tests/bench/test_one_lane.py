"""bench/one_lane.py: one strategy of the seasons benchmark, and two runs compared paired."""

import json

import pytest

from bench import one_lane
from bench.seasons_claims import ages_asked, by_age

TINY = [
    "--set", "train.max_epochs=1", "--set", "train.target_sample=4",
    "--set", "train.rehearsal_max_tokens=8", "--set", "eval.max_new_tokens=8",
    "--set", "eval.max_questions=8", "--review-n", "6", "--months", "1",
]  # fmt: skip


def test_one_lane_trains_as_seasons_and_two_runs_compare_on_the_same_questions(
    tiny_model, tmp_path
):
    runs = {}
    for name, extra in (("asked", []), ("held", ["--set", "train.target_held_out=true"])):
        out = tmp_path / f"{name}.json"
        argv = [str(out), "--model", str(tiny_model), "--workspace", str(tmp_path / name)]
        one_lane.main([*argv, *TINY, *extra])
        runs[name] = json.loads(out.read_text())
    (asked,), (held,) = (r["months"] for r in runs.values())
    lane = asked["strategies"]["continuous"]
    assert lane["rehearsal_rows"] == lane["new_rows"] > 0 and lane["epochs"] == 1.0
    assert held["strategies"]["continuous"]["tokens"] < lane["tokens"]  # wordings held out
    assert asked["questions"] == held["questions"]
    assert len(asked["outcomes"]["continuous"]["current"]) == len(asked["questions"]["current"])
    lines = one_lane.compare(runs["held"], runs["asked"])
    assert lines[0].startswith("month 1: facts true") and "epochs 1 vs 1" in lines[0]
    assert lines[-1].startswith("training tokens:") and "never-sold declined" in lines[-5]
    assert lines[-4].startswith("general questions, every month:") and "n=8" in lines[-4]
    assert lines[-2].startswith("3+ months old:") and "n=0" in lines[-2]  # one month: none
    assert len(asked["outcomes"]["continuous"]["general"]) == 8  # eval.max_questions
    assert lines[1].startswith("facts true that month, every month:")
    # Another lane's run pairs on the same questions (curation: continuous vs no-curation).
    raw = {**asked, "strategies": {"no-curation": lane}}
    raw["outcomes"] = {"no-curation": asked["outcomes"]["continuous"]}
    assert one_lane.compare(runs["held"], {"lane": "no-curation", "months": [raw]}) == lines
    assert 0 <= lane["general"] <= 1
    with pytest.raises(SystemExit, match="different questions: not paired"):
        other = {**runs["asked"], "months": [{**asked, "questions": {"current": ["x"]}}]}
        one_lane.compare(runs["held"], other)
    with pytest.raises(SystemExit, match="1 months against 2: not paired"):
        one_lane.compare(runs["held"], {**runs["asked"], "months": [asked, asked]})


def test_the_cumulative_floor_counts_tokens_as_training_does(tiny_model, tmp_path, capsys):
    """Month 1 of cumulative retraining trains the continuous lane's month-1 mix: the floor
    (no training) and the trained lane count the same tokens; month 2's floor keeps month 1
    unchanged and holds more rows."""
    argv = ["--model", str(tiny_model), *TINY]
    run = tmp_path / "run.json"
    one_lane.main([str(run), "--workspace", str(tmp_path / "run"), *argv])
    trained = json.loads(run.read_text())["months"][0]["strategies"]["continuous"]["tokens"]
    floor_file = tmp_path / "floor.json"
    one_lane.main(["--floor", str(floor_file), "--workspace", str(tmp_path / "f"), *argv,
                   "--against", str(run)])  # fmt: skip
    [month] = json.loads(floor_file.read_text())["months"]
    assert month["floor_tokens"] == trained > 0  # max_epochs 1 caps the 4 minimum epochs
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"continuous: {trained} tokens, at most 1.00x cumulative's"
    )
    two = one_lane.cumulative_floor([*argv[:-1], "2", "--workspace", str(tmp_path / "f2")])
    assert two[0] == month and two[1]["rows"] > month["rows"]
    with pytest.raises(SystemExit, match="1 months against 2: not paired"):
        one_lane.floor_lines(two, json.loads(run.read_text()))


def test_trained_cumulative_months_replace_their_floor_and_tighten_the_bound():
    """Months a cumulative run trained count what they trained; the rest stay floored, and
    with none left the ratio is measured."""
    floor = [{"month": m, "rows": 9, "epoch_tokens": 25, "floor_tokens": 100} for m in (1, 2, 3)]

    def lane(name: str, *tokens: int) -> dict:
        return {"lane": name, "months": [{"strategies": {name: {"tokens": t}}} for t in tokens]}

    continuous = lane("continuous", 40, 40, 40)
    lines = one_lane.floor_lines(floor, continuous, lane("cumulative", 250, 350))
    assert lines[-2] == (
        "with months 1-2 as trained (600 tokens) and 1 floored (100): at least 700 tokens"
    )
    assert lines[-1] == "continuous: 120 tokens, at most 0.17x cumulative's"
    assert one_lane.floor_lines(floor, continuous)[-1].endswith("at most 0.40x cumulative's")
    every = one_lane.floor_lines(floor, continuous, lane("cumulative", 200, 200, 200))
    assert every[-2:] == [  # every month trained: measured, not bounded
        "as trained, months 1-3: 600 tokens",
        "continuous: 120 tokens, 0.20x cumulative's",
    ]
    for wrong in (continuous, lane("cumulative"), lane("cumulative", *[1] * 4)):
        with pytest.raises(SystemExit, match="--trained needs a cumulative run of 1-3 months"):
            one_lane.floor_lines(floor, None, wrong)


def test_earlier_facts_are_split_by_how_long_ago_their_drop_landed():
    month = {
        "month": 5,
        "questions": {"earlier": ["m04-eval-0001", "m02-eval-0007", "m01-eval-0003"]},
        "outcomes": {"continuous": {"earlier": "101"}},
    }
    assert by_age([month], "continuous", 1, 2) == [True]
    assert by_age([month], "continuous", 3, 99) == [False, True]
    assert ages_asked([month]) == [1, 3, 4]


def _month(n: int, current: str, earlier: dict[str, str]) -> dict:
    return {
        "month": n,
        "seconds": 90.0,
        "questions": {"current": ["q"] * len(current), "earlier": list(earlier)},
        "strategies": {"continuous": {"epochs": 2.0, "tokens": 1000, "general": 0.5}},
        "outcomes": {"continuous": {"current": current, "earlier": "".join(earlier.values())}},
    }


def test_a_run_summary_states_the_bar_and_the_facts_by_age():
    months = [
        _month(1, "1111", {}),
        _month(2, "1110", {"m01-eval-0001": "1", "m01-eval-0002": "1"}),
        _month(3, "10", {"m02-eval-0001": "1", "m01-eval-0001": "0", "m01-eval-0002": "0"}),
    ]
    lines = one_lane.summary({"lane": "continuous", "months": months})
    assert lines[0].startswith("month 1: facts true 100%") and "1.5 min" in lines[0]
    # Months 2-3: 5 of 6 and 2 of 5 facts true that month = 7/11; month 3 the lowest (40%).
    assert lines[3].startswith("facts true that month, months 2-3: 63.6%")
    assert "lowest month 3: 40%" in lines[3]
    assert lines[4:6] == [
        "earlier facts 1 months old: 100% (3/3)",
        "earlier facts 2 months old: 0% (0/2)",
    ]
    assert lines[-1] == "training tokens: 3000"
    alone = one_lane.summary({"lane": "continuous", "months": months[:1]})
    assert alone[-1] == "facts true that month, months 2..n: none (a one-month run)"
