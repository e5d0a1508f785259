"""The refresh flow end to end on the embedded default, with the tiny model."""

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file
from typer.testing import CliRunner

from flows.refresh import refresh
from freshtune.cli import app
from tasks import registry


def _alias(cfg) -> str | None:
    champion = registry.get_champion(cfg)
    return champion.version if champion else None


def _lora(cfg, version: str) -> dict:
    mv = MlflowClient(registry.tracking_uri(cfg)).get_model_version(
        cfg.tracking.model_name, version
    )
    return load_file(str(cfg.paths.adapters / mv.tags["adapter_key"] / "adapter_model.safetensors"))


def test_two_drops_promote_then_warm_start_from_the_champion(tiny_config, demo_drops):
    cfg = tiny_config()
    first = refresh(str(demo_drops[0]), cfg)
    assert first["verdict"] == "BLESSED" and first["promoted"] and _alias(cfg) == first["version"]
    assert first["champion_before"] is None and first["mix"]["replay_rows"] == 0
    champion_answers = _cached_answers(cfg, Path(first["adapter_dir"]))

    second = refresh(str(demo_drops[1]), cfg)
    assert second["promoted"] and _alias(cfg) == second["version"] != first["version"]
    assert second["champion_before"] == first["version"] and second["mix"]["replay_rows"] > 0
    assert {"current", "earlier", "general", "hallucination", "bias"} == set(second["scores"])
    assert set(second["scores"]["current"]) == {"base", "champion", "candidate"}

    mv = MlflowClient(registry.tracking_uri(cfg)).get_model_version(
        cfg.tracking.model_name, second["version"]
    )
    assert mv.tags["parent_version"] == first["version"]
    assert mv.tags["drop_digest"] == second["digest"] and mv.tags["base_model"] == cfg.base_model
    assert 0 < float(mv.tags["replay_share"]) < 1
    before, after = _lora(cfg, first["version"]), _lora(cfg, second["version"])
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    previous = MlflowClient(registry.tracking_uri(cfg)).get_model_version_by_alias(
        cfg.tracking.model_name, "previous"
    )
    assert str(previous.version) == first["version"]
    # The champion answered last month's questions and the shipped general ones as a
    # candidate: it only generated answers to this month's questions.
    added = _cached_answers(cfg, Path(first["adapter_dir"])) - champion_answers
    n = {name: by_model["champion"]["n"] for name, by_model in second["scores"].items()}
    assert n["current"] <= len(added) <= sum(n.values()) - n["earlier"] - n["general"]
    assert {"validate-drop", "train-candidate", "evaluate-models"} <= set(second["stages"])
    _assert_history(cfg, [first, second])
    _assert_run_named_after(cfg, second["run_id"], "month-02.jsonl")


def _assert_run_named_after(cfg, mlflow_run_id: str, drop: str) -> None:
    import time

    from prefect.client.orchestration import get_client

    tags = MlflowClient(registry.tracking_uri(cfg)).get_run(mlflow_run_id).data.tags
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(tags["freshtune.flow_run_id"])
    assert run.name == f"{drop} ({time.strftime('%Y-%m', time.gmtime())})"


def _assert_history(cfg, records) -> None:
    """The months at a glance: MLflow's history run stepped by cycle, the Prefect table."""
    from prefect.artifacts import Artifact

    mlc = MlflowClient(registry.tracking_uri(cfg))
    trend = mlc.get_metric_history(registry.named_run(cfg, "history"), "history.current")
    want = [r["scores"]["current"]["candidate"]["accuracy"] for r in records]
    assert [(m.step, m.value) for m in trend] == list(enumerate(want, 1))
    table = Artifact.get("freshtune-history")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [str(r["version"]) for r in rows] == [r["version"] for r in records]


def _cached_answers(cfg, adapter: Path | None) -> set[str]:
    from tasks.evaluate import scored_digest

    digest = scored_digest(cfg.resolved_base_model(), adapter)
    return set(json.loads((cfg.paths.eval_cache / f"{digest}.json").read_text()))


def test_run_logs_config_digests_metrics_and_a_stock_peft_adapter(tiny_config, demo_drops):
    from peft import PeftModel

    from tasks.models import load_causal_lm

    cfg = tiny_config()
    record = refresh(str(demo_drops[0]), cfg)
    mlc = MlflowClient(registry.tracking_uri(cfg))
    run = mlc.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["freshtune.drop_digest"] == record["digest"]
    assert run.data.params["train.lora.r"] == str(cfg.train.lora.r)
    assert {
        "current.base.accuracy",
        "current.candidate.accuracy",
        "train_tokens",
        "curate_removed_duplicate_in_drop",
        "step_loss",
    } <= set(run.data.metrics)
    assert run.data.metrics["curate_removed_duplicate_in_drop"] == 3
    folder = Path(mlc.download_artifacts(record["run_id"], "adapter", str(cfg.paths.root / "dl")))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in folder.iterdir()
    }
    model = PeftModel.from_pretrained(load_causal_lm(cfg.base_model), str(folder))
    assert any("lora_B" in name for name, _ in model.named_parameters())


def test_a_candidate_failing_the_gate_leaves_the_alias(tiny_config, demo_drops):
    cfg = tiny_config()
    first = refresh(str(demo_drops[0]), cfg)
    strict = tiny_config("gate.min_gain=1.01")
    second = refresh(str(demo_drops[1]), strict)
    assert second["verdict"] == "NOT_BLESSED" and not second["promoted"]
    assert "gate.min_gain" in second["reasons"][0]
    assert _alias(cfg) == first["version"]
    mv = MlflowClient(registry.tracking_uri(cfg)).get_model_version(
        cfg.tracking.model_name, second["version"]
    )
    assert mv.tags["gate"] == "NOT_BLESSED"


def test_the_same_drop_twice_makes_one_cycle(tiny_config, demo_drops):
    cfg = tiny_config()
    first = refresh(str(demo_drops[0]), cfg)
    again = refresh(str(demo_drops[0]), cfg)
    assert again["repeated"] and again["version"] == first["version"]
    versions = MlflowClient(registry.tracking_uri(cfg)).search_model_versions(
        f"name='{cfg.tracking.model_name}'"
    )
    assert len(versions) == 1


def _bad_drop(tmp_path: Path, good: Path) -> Path:
    rows = [json.loads(line) for line in good.read_text().splitlines()]
    rows[3]["split"] = "holdout"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return bad


def test_a_bad_drop_is_quarantined_and_nothing_moves(
    tiny_config, demo_drops, tmp_path, tiny_model, monkeypatch
):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    cfg = tiny_config()
    first = refresh(str(demo_drops[0]), cfg)
    adapters_before = sorted(p.name for p in cfg.paths.adapters.iterdir())
    bad = _bad_drop(tmp_path, demo_drops[1])
    result = CliRunner().invoke(
        app,
        [
            "refresh",
            str(bad),
            "--config",
            "tiny",
            "--set",
            f"base_model={tiny_model}",
            "-w",
            str(cfg.workspace),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "expect_column_values_to_be_in_set" in result.output and "bad.jsonl:4" in result.output
    [quarantined] = list(cfg.paths.quarantine.iterdir())
    assert (quarantined / "bad.jsonl").read_bytes() == bad.read_bytes()
    assert sorted(p.name for p in cfg.paths.adapters.iterdir()) == adapters_before
    assert _alias(cfg) == first["version"]
    assert len(list(cfg.paths.snapshots.iterdir())) == 1


def test_unreadable_drop_is_quarantined_with_its_line(tiny_config, tmp_path):
    from freshtune.errors import DropRejected

    cfg = tiny_config()
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"id": 1}\n{"id": 2,,}\n')
    with pytest.raises(DropRejected, match="broken.jsonl:2"):
        refresh(str(bad), cfg)
    assert (next(cfg.paths.quarantine.iterdir()) / "REJECTED.md").exists()
    assert registry.get_champion(cfg) is None


def test_a_cycle_that_fails_leaves_its_mlflow_run_failed(tiny_config, demo_drops, tmp_path):
    not_a_model = tmp_path / "empty-checkpoint"
    not_a_model.mkdir()
    cfg = tiny_config(f"base_model={not_a_model}")
    with pytest.raises(Exception):  # noqa: B017 - whatever transformers raises for a bad folder
        refresh(str(demo_drops[0]), cfg)
    mlc = MlflowClient(registry.tracking_uri(cfg))
    [run] = mlc.search_runs([registry.experiment_id(cfg)])
    assert run.info.status == "FAILED"
    assert registry.get_champion(cfg) is None and not list(cfg.paths.cycles.glob("*.json"))
