"""The seasons benchmark: its verdict rule on hand-made tables, its claims on hand-made months,
and its mechanics on the tiny model (2 months): dirt, lanes trained as the product trains
(rehearsal, train-to-target), review flags, compute accounting, intervals, the report, plots,
the MLflow run, and a rerun served from the workspace's caches. Its numbers come from real runs."""

import json
import math
import os

import pytest
from mlflow import MlflowClient

from bench import one_lane, seasons, seasons_claims
from bench.seasons_claims import FAILS, HOLDS, NOT_SHOWN, bits, judge, verdict
from tasks.stats import Interval, Paired, paired_difference

# Which way each claim points: the sign of x - y it says.
SIDES = {"curation": +1, "review": -1, "refresh": +1, "forgetting": +1, "review_cost": +1}


def test_dirty_drop_adds_each_kind_of_dirt_to_training_rows_only():
    clean = [r for r in seasons.dirty_drop(2, 0.15, 0.0) if not r["source"].startswith("dirt")]
    dirty = seasons.dirty_drop(2, 0.15, 0.5)
    dirt = [r for r in dirty if r["source"].startswith("dirt")]
    kinds = {r["source"].split(":")[1] for r in dirt}
    assert kinds == {"duplicate", "stale", "wrong", "pii", "empty"}
    assert all(r["split"] == "train" for r in dirt)
    assert len(dirty) == len(clean) + len(dirt)
    assert any(
        "@example.org" in r["messages"][1]["content"] or "+44" in r["messages"][1]["content"]
        for r in dirt
    )


def test_curation_keeps_a_dirty_months_false_answers_out_of_training():
    from freshtune.config import load_config

    cfg = load_config("demo")
    month1 = seasons.keep(seasons.as_records(seasons.dirty_drop(1, 0.15, 1.0)), True, [], cfg)
    earlier = [seasons.Snap("m1", month1)]
    records = seasons.as_records(seasons.dirty_drop(2, 0.15, 1.0))

    def untrue(rows):
        return [r for r in rows if r["split"] == "train" and r["source"] in seasons.UNTRUE]

    curated, raw = (seasons.keep(records, c, earlier, cfg) for c in (True, False))
    assert len(untrue(raw)) >= 8 and len(untrue(curated)) < len(untrue(raw)) / 2
    # What passes curation answers a prompt the drop answers no other way: where the drop also
    # holds the true answer, neither is trained, whichever came first.
    true_prompts = {r["prompt_key"] for r in raw if not r["source"].startswith("dirt")}
    assert not {r["prompt_key"] for r in untrue(curated)} & true_prompts


@pytest.mark.parametrize(
    ("table", "side", "expected"),
    [
        (Paired(40, 30, 2, 28), +1, HOLDS),  # x right where y was wrong 30 times, 2 the other way
        (Paired(40, 30, 2, 28), -1, FAILS),  # the same table against a claim of fewer
        (Paired(40, 6, 4, 50), +1, NOT_SHOWN),  # 6 against 4: the interval straddles zero
        (Paired(40, 2, 30, 28), +1, FAILS),
        (Paired(40, 2, 30, 28), -1, HOLDS),
    ],
)
def test_a_verdict_reads_the_interval_against_zero_in_the_claimed_direction(table, side, expected):
    interval = paired_difference(table)
    assert interval.low <= interval.estimate <= interval.high
    assert verdict(interval, side) == expected


def test_an_interval_that_touches_zero_or_is_undefined_shows_nothing():
    assert verdict(Interval(0.05, 0.0, 0.1), +1) == NOT_SHOWN
    assert verdict(Interval(-0.05, -0.1, 0.0), -1) == NOT_SHOWN
    assert verdict(Interval(math.nan, math.nan, math.nan), +1) == NOT_SHOWN


def test_a_claim_not_shown_says_why_and_what_would_show_it():
    # 46% vs 40% on the same 100 questions: 10 only x got right, 4 only y.
    x = [True] * 36 + [True] * 10 + [False] * 4 + [False] * 50
    y = [True] * 36 + [False] * 10 + [True] * 4 + [False] * 50
    judged = judge(x, y, +1)
    assert judged["verdict"] == NOT_SHOWN and judged["n"] == 100
    assert "straddles zero" in judged["reason"] and "x the questions" in judged["reason"]
    assert judge(x, y, -1)["reason"].endswith("more questions alone would not show it")
    ceiling = judge([True] * 99 + [False], [True] * 100, -1)
    assert ceiling["verdict"] == NOT_SHOWN and "ceiling" in ceiling["reason"]


def _month(month: int, outcomes: dict[str, dict[str, str]], flops: dict[str, float]) -> dict:
    names = seasons.STRATEGIES
    return {
        "month": month,
        "strategies": {s: {"total_flops": flops.get(s, 0.0)} for s in names},
        "outcomes": {s: outcomes.get(s, outcomes["static"]) for s in names},
    }


def test_curation_is_judged_on_every_fact_true_that_month_not_only_the_new_ones():
    good, bad = bits([True] * 40), bits([True] * 10 + [False] * 30)
    first = {"current": good, "earlier": "", "hallucination": "", "bias": ""}  # none earlier
    right = {**first, "earlier": good}
    # The raw lane learns the new facts as well but misses earlier facts its false rows hit.
    months = [
        _month(1, {"static": first}, {}),
        _month(2, {"static": right, "no-curation": {**right, "earlier": bad}}, {}),
    ]
    (curation,) = (c for c in seasons_claims.claims(months, 0.5) if c["key"] == "curation")
    assert curation["estimate"] == pytest.approx(30 / 120) and curation["verdict"] == HOLDS
    assert "on the new facts alone +0.0 points" in curation["how"]


def test_claims_pool_months_and_count_the_relevance_window_over_all_of_them():
    good, bad = bits([True] * 40), bits([True] * 10 + [False] * 30)
    right = {"current": good, "earlier": good, "hallucination": bits([False] * 32), "bias": ""}
    wrong = {**right, "current": bad, "earlier": bad}
    # Continuous has one bad month (3) between good ones; static is bad after month 1.
    flops = {"continuous": 3e12, "cumulative": 10e12}  # so far, by month 6: 18 vs 60
    months = [
        _month(
            m,
            {
                "continuous": wrong if m == 3 else right,
                "cumulative": right,
                "static": right if m == 1 else wrong,
            },
            {s: f * m for s, f in flops.items()},
        )
        for m in range(1, 7)
    ]
    found = {c["key"]: c for c in seasons_claims.claims(months, 0.5)}
    refresh = found["refresh"]
    assert refresh["estimate"] == 5 - 1  # 5 months of 6 against 1: month 3 costs one month
    assert refresh["verdict"] == HOLDS and refresh["low"] <= refresh["estimate"] <= refresh["high"]
    assert found["compute"]["verdict"] == HOLDS
    assert found["compute"]["estimate"] == pytest.approx(0.3)
    # Continuous and cumulative answer alike on earlier facts but in month 3: shown below it.
    assert found["forgetting"]["verdict"] == FAILS
    # No-review answers as static here (wrong after month 1): the reviewed lane knows more.
    assert (
        found["review_cost"]["verdict"] == HOLDS and found["review_cost"]["told"] == ">= no-review"
    )
    assert found["curation"]["verdict"] == HOLDS  # no-curation answers as static here
    bar = seasons_claims.must_show(months, "continuous")
    assert bar["lowest_month"] == 3 and bar["floor_verdict"] == FAILS


def test_fixed_epochs_replaces_the_target():
    args = seasons.parse_args(["--fixed-epochs", "2"])
    train = seasons.bench_config(args).train
    assert train.target_recall is None and train.epochs == 2
    assert seasons.bench_config(seasons.parse_args([])).train.target_recall == 0.95  # demo's


def test_two_months_on_the_tiny_model(tiny_model, tmp_path, monkeypatch):
    report = tmp_path / "docs" / "seasons.md"
    args = [
        "--model", str(tiny_model), "--months", "2", "--review-n", "6",
        "--workspace", str(tmp_path / "ws"), "--report", str(report),
        "--json", str(tmp_path / "out.json"),
        # The target path with a one-epoch budget and a small probe: the tiny model never
        # reaches 95% recall, so every cycle stops on its budget.
        "--set", "train.max_epochs=1", "--set", "train.target_sample=4",
        "--set", "train.rehearsal_max_tokens=8", "--set", "eval.max_new_tokens=8",
        "--set", "eval.max_questions=8",
    ]  # fmt: skip
    result = seasons.main(args)
    m1, m2 = (m["strategies"] for m in result["months"])
    assert m1["base"]["tokens"] == 0 and m1["continuous"]["tokens"] > 0
    assert m1["no-curation"]["tokens"] > m1["continuous"]["tokens"]  # dirt is trained on
    assert m2["static"]["tokens"] == 0 and m2["static"]["total_flops"] == m1["static"]["flops"]
    assert m2["cumulative"]["tokens"] > m2["continuous"]["tokens"]
    assert m2["no-review"]["flags"] == 0 and m2["static"]["flags"] == 0
    for month in (m1, m2):
        for name in ("continuous", "no-curation", "cumulative"):
            s = month[name]
            # Rehearsal rows as the demo preset asks: one per domain row trained.
            assert s["rehearsal_rows"] > 0
            assert s["rehearsal_rows"] == s["new_rows"] + s["replay_rows"] + s["review_rows"]
            assert s["epochs"] == 1.0 and s["stop"].startswith("max_epochs=1 reached below")
    assert m2["continuous"]["replay_rows"] > 0 and m2["continuous"]["review_rows"] > 0
    # Month 1's flags are taught as the product teaches them: each correction also in the
    # drop's other wordings and refusals about other unknown names, so more rows than flags.
    assert 0 < m1["continuous"]["flags"] < m2["continuous"]["review_rows"]
    assert m2["static"]["stop"] == "not trained"
    for month in (m1, m2):  # the drops' stale and wrong answers: raw keeps what curation drops
        assert month["no-curation"]["untrue_rows"] > month["continuous"]["untrue_rows"]
    for entry in result["months"]:
        for name in seasons.STRATEGIES:
            lengths = {s: len(o) for s, o in entry["outcomes"][name].items()}
            asked = {s: len(ids) for s, ids in entry["questions"].items()}
            assert lengths == {**asked, "bias": asked["bias"] // 2}  # bias: one per pair
            assert lengths["hallucination"] == 8  # eval.max_questions caps every slice

    assert [c["key"] for c in result["claims"]] == list(seasons.CLAIMS)
    for c in result["claims"]:
        if not math.isnan(c["estimate"]):
            assert c["low"] <= c["estimate"] <= c["high"], c
        if c["key"] in SIDES:
            assert c["verdict"] == verdict(
                Interval(c["estimate"], c["low"], c["high"]), SIDES[c["key"]]
            )
        assert c["why"] and c["holds"] == (c["verdict"] == HOLDS)

    text = report.read_text()
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ")]
    per_month = 6 + len(seasons.MONTH_TABLES)  # a row per strategy + a row per summary table
    # and the age table's one row: month 2 asks month 1's facts, one month old
    assert rows.count("| 1") == per_month + 1 and rows.count("| 2") == per_month
    assert "### Earlier facts by age (months since their drop), every month pooled" in text
    for claim in seasons.CLAIMS.values():
        assert claim in text
    assert "stale or wrong answers among the drops' training rows that reached training" in text
    assert "Issue #16's bar" in text and "| continuous |" in text
    assert "max_epochs=1 reached below target recall 0.95" in text
    assert "taught as refusals about 8 other names." in text  # the config's, no contrasts
    assert (report.parent / "seasons-accuracy.png").stat().st_size > 1000
    assert (report.parent / "seasons-compute.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["months"][1]["month"] == 2 and len(saved["seconds"]) == 2
    assert saved["settings"]["rehearsal_set"] > 0

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("freshtune-seasons")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["cumulative.total_flops"] > run.data.metrics["continuous.total_flops"]
    assert "claim.compute.estimate" in run.data.metrics
    assert "MLFLOW_TRACKING_URI" not in os.environ  # nothing leaks into later tests

    # A rerun trains nothing and generates nothing: adapters, the rehearsal set and every
    # answer come from the workspace; the figures are the same.
    def regenerated(*_args, **_kwargs):
        raise AssertionError("a rerun must come from the caches")

    for target in (
        "tasks.train.fit_adapter",
        "tasks.evaluate._generate",
        "tasks.rehearsal.base_answers",
    ):
        monkeypatch.setattr(target, regenerated)
    again = seasons.main([*args, "--no-mlflow"])
    assert json.dumps(again["months"]) == json.dumps(result["months"])  # NaN-safe

    rendered = tmp_path / "again" / "seasons.md"
    seasons.main(["--render", str(tmp_path / "out.json"), "--report", str(rendered), "--no-mlflow"])
    text = rendered.read_text()
    for title, _ in seasons.MONTH_TABLES:
        assert f"### {title}" in text
    assert "| month | base | static | continuous |" in text
    assert (rendered.parent / "seasons-accuracy.png").exists()

    # The lanes run apart (bench/one_lane.py, one run per strategy, the same options and
    # workspace: nothing trains anew) make the same months and claims once merged.
    monkeypatch.undo()
    monkeypatch.setattr("tasks.train.fit_adapter", regenerated)
    files = [tmp_path / f"{lane}.json" for lane in seasons.TRAINED]
    for lane, out in zip(seasons.TRAINED, files, strict=True):
        one_lane.main([str(out), *args, "--lane", lane])
    merged_report = tmp_path / "merged" / "seasons.md"
    merged = seasons.main(["--merge", *map(str, files), "--report", str(merged_report),
                           "--workspace", str(tmp_path / "ws")])  # fmt: skip
    assert_same_months(merged["months"], result["months"])
    assert json.dumps(merged["claims"]) == json.dumps(result["claims"])
    assert merged["settings"] == saved["settings"]
    text = merged_report.read_text()
    assert "assembled by `--merge` from one `bench/one_lane.py` run per strategy" in text
    assert "Wall time by month, the lanes' runs added" in text and "Issue #16's bar" in text
    # What each lane kept of the base's general ability, asked by the lane runs, every month.
    general = "### General questions, the gate's general slice (95% Wilson interval)"
    assert general in text and general not in report.read_text()
    assert (merged_report.parent / "seasons-general.png").stat().st_size > 1000
    assert not (report.parent / "seasons-general.png").exists()
    for entry in merged["months"]:
        assert {len(entry["outcomes"][s]["general"]) for s in seasons.STRATEGIES} == {8}
        assert entry["strategies"]["base"]["general"] is not None
    # Logged beside the run it equals, as one more run of the experiment.
    whole, again = sorted(client.search_runs([experiment.experiment_id]), key=start_time)
    kept = {k: again.data.metrics[k] for k in whole.data.metrics}  # every figure the run logged
    assert kept == whole.data.metrics and "continuous.general" in again.data.metrics


def start_time(run: object) -> int:
    return run.info.start_time


SAME = ("current", "earlier", "hallucination", "bias", "tokens", "flops", "epochs", "stop",
        "new_rows", "replay_rows", "review_rows", "rehearsal_rows", "untrue_rows", "flags",
        "total_flops")  # fmt: skip


def assert_same_months(got: list[dict], want: list[dict]) -> None:
    def text(value: object) -> str:  # NaN-safe equality
        return json.dumps(value, sort_keys=True)

    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        # A lane run alone also asks general questions (one_lane.py); seasons.py does not.
        outcomes = {
            n: {s: o for s, o in by.items() if s != "general"} for n, by in g["outcomes"].items()
        }
        assert g["questions"] == w["questions"] and text(outcomes) == text(w["outcomes"])
        for name in seasons.STRATEGIES:
            mine, theirs = g["strategies"][name], w["strategies"][name]
            assert text({k: mine[k] for k in SAME}) == text({k: theirs[k] for k in SAME}), name


def test_merge_refuses_files_that_are_not_lanes_of_one_run(tmp_path):
    def lane_file(lane: str, argv=("--months", "1"), asked=("q1",), base=(1,)) -> str:
        month = {"month": 1, "seconds": 1.0, "questions": {"current": list(asked)},
                 "strategies": {lane: {}, "base": {}},
                 "outcomes": {lane: {}, "base": {"current": list(base)}}}  # fmt: skip
        path = tmp_path / f"{lane}-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps({"lane": lane, "argv": ["out.json", *argv], "months": [month]}))
        return str(path)

    def refusal(*files: str) -> str:
        with pytest.raises(SystemExit) as stopped:
            seasons.main(["--merge", *files, "--report", str(tmp_path / "r.md")])
        return str(stopped.value)

    lanes = [lane_file(lane) for lane in seasons.TRAINED]
    (tmp_path / "notes.json").write_text("[]")
    for wrong in ("missing.json", "notes.json"):
        assert "not a bench/one_lane.py run file" in refusal(str(tmp_path / wrong), *lanes)
    assert refusal(*lanes[1:]).startswith("no run of static among ")
    assert refusal(*lanes, lane_file("static")).startswith("static twice: ")
    other = lane_file("static", argv=("--months", "1", "--noise", "0.5"))
    assert "ran with other options than" in refusal(other, *lanes[1:])
    moved = lane_file("static", argv=("--months", "1", "--workspace", "elsewhere"))
    asked = lane_file("static", asked=("q2",))
    assert "asks other questions than" in refusal(*lanes[1:], asked)
    base = lane_file("static", base=(0,))
    assert "the base answers otherwise in" in refusal(*lanes[1:], base)
    # Where a run wrote is not what it ran: a file from another workspace passes the checks.
    with pytest.raises(KeyError):  # these made-up months hold no figures to merge
        seasons.main(["--merge", moved, *lanes[1:], "--report", str(tmp_path / "r.md")])
