"""The seasons benchmark's mechanics on the tiny model (2 months): dirt, lanes, review flags,
compute accounting, the report, plots and the MLflow run. Its numbers come from real runs."""

import json
import os

from mlflow import MlflowClient

from bench import seasons


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


def test_two_months_on_the_tiny_model(tiny_model, tmp_path):
    report = tmp_path / "docs" / "seasons.md"
    args = [
        "--model",
        str(tiny_model),
        "--months",
        "2",
        "--review-n",
        "6",
        "--workspace",
        str(tmp_path / "ws"),
        "--report",
        str(report),
        "--json",
        str(tmp_path / "out.json"),
        "--set",
        "train.epochs=1",
    ]
    result = seasons.main(args)
    m1, m2 = (m["strategies"] for m in result["months"])
    assert m1["base"]["tokens"] == 0 and m1["continuous"]["tokens"] > 0
    assert m1["no-curation"]["tokens"] > m1["continuous"]["tokens"]  # dirt is trained on
    assert m2["static"]["tokens"] == 0 and m2["static"]["total_flops"] == m1["static"]["flops"]
    assert m2["cumulative"]["tokens"] > m2["continuous"]["tokens"]
    assert m2["no-review"]["flags"] == 0 and m2["static"]["flags"] == 0
    assert {c["claim"] for c in result["claims"]} == set(seasons.CLAIMS.values())

    text = report.read_text()
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ")]
    per_month = 6 + len(seasons.MONTH_TABLES)  # a row per strategy + a row per summary table
    assert rows.count("| 1") == per_month and rows.count("| 2") == per_month
    for claim in seasons.CLAIMS.values():
        assert claim in text
    assert (report.parent / "seasons-accuracy.png").stat().st_size > 1000
    assert (report.parent / "seasons-compute.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out.json").read_text())["months"][1]["month"] == 2

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("freshtune-seasons")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["cumulative.total_flops"] > run.data.metrics["continuous.total_flops"]
    assert "MLFLOW_TRACKING_URI" not in os.environ  # nothing leaks into later tests

    again = seasons.main(args)  # resumes from the cache: same figures
    assert json.dumps(again["months"]) == json.dumps(result["months"])  # NaN-safe

    rendered = tmp_path / "again" / "seasons.md"
    seasons.main(["--render", str(tmp_path / "out.json"), "--report", str(rendered), "--no-mlflow"])
    text = rendered.read_text()
    for title, _ in seasons.MONTH_TABLES:
        assert f"### {title}" in text
    assert "| month | base | static | continuous |" in text
    assert (rendered.parent / "seasons-accuracy.png").exists()
