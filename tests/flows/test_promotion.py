"""Promotion is serialised and compare-and-move; rollback and export restore and agree."""

import threading

import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.refresh import refresh
from freshtune.cli import app
from tasks import registry
from tasks.promote import promote_serialised

runner = CliRunner()


def _alias(cfg, alias: str) -> str:
    mv = MlflowClient(registry.tracking_uri(cfg)).get_model_version_by_alias(
        cfg.tracking.model_name, alias
    )
    return str(mv.version)


def test_two_racing_promotions_move_the_alias_once(tiny_config, demo_drops):
    cfg = tiny_config("review.mode=auto", "gate.min_gain=2")  # register, never promote
    versions = [refresh(str(d), cfg)["version"] for d in demo_drops[:2]]
    outcomes: list[str] = []

    def attempt(version: str) -> None:
        try:
            promote_serialised(cfg, version, expected=None)
            outcomes.append(f"moved:{version}")
        except registry.ChampionMoved:
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(o.split(":")[0] for o in outcomes) == ["moved", "refused"]
    winner = next(o.split(":")[1] for o in outcomes if o.startswith("moved"))
    assert registry.get_champion(cfg).version == winner


def test_a_stale_candidate_is_reevaluated_before_it_moves_the_alias(tiny_config, demo_drops):
    from tasks.gate import GateDecision
    from tasks.promote import promote_candidate
    from tasks.snapshot import list_snapshots

    cfg = tiny_config()
    first = refresh(str(demo_drops[0]), cfg)
    second = refresh(str(demo_drops[1]), tiny_config("gate.min_gain=2"))  # registered only
    assert registry.get_champion(cfg).version == first["version"]
    snapshot = list_snapshots(cfg)[-1]
    before = GateDecision(True, [], "base")  # as the gate decided against no champion
    decision = promote_candidate.fn(
        second["version"], second["adapter_dir"], snapshot, None, before, cfg, second["run_id"]
    )
    assert decision is not before  # decided again, against the champion it now replaces
    assert decision.blessed and decision.reference == "champion"
    assert registry.get_champion(cfg).version == second["version"]
    metrics = MlflowClient(registry.tracking_uri(cfg)).get_run(second["run_id"]).data.metrics
    assert any(key.startswith("reeval.current.candidate") for key in metrics)


def test_rollback_restores_the_previous_version_and_records_why(
    tiny_config, demo_drops, tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    cfg = tiny_config()
    v1, v2 = (refresh(str(d), cfg)["version"] for d in demo_drops[:2])
    args = ["--config", "tiny", "--set", f"base_model={tiny_model}", "-w", str(cfg.workspace)]
    result = runner.invoke(app, ["rollback", "--reason", "complaints", *args])
    assert result.exit_code == 0, result.output
    assert (_alias(cfg, "champion"), _alias(cfg, "previous")) == (v1, v2)
    mv = MlflowClient(registry.tracking_uri(cfg)).get_model_version(cfg.tracking.model_name, v1)
    assert "complaints" in mv.tags["rolled_back_to_at"]
    assert runner.invoke(app, ["rollback", "--to", v2, *args]).exit_code == 0
    assert _alias(cfg, "champion") == v2
    assert len((cfg.paths.root / "rollbacks.jsonl").read_text().splitlines()) == 2
    audit = _audit(cfg)
    assert [(a["from"], a["to"], a["state"]) for a in audit] == [(v2, v1, "done"), (v1, v2, "done")]

    # A version the gate refused and nobody promoted serves only when forced.
    refused = _refused_version(cfg, v2)
    result = runner.invoke(app, ["rollback", "--to", refused, *args])
    assert (
        result.exit_code == 1 and "never champion" in result.output and "--force" in result.output
    )
    assert _alias(cfg, "champion") == v2 and len(_audit(cfg)) == 2
    assert runner.invoke(app, ["rollback", "--to", refused, "--force", *args]).exit_code == 0
    assert _alias(cfg, "champion") == refused

    # Forcing is the operator's to forbid: in the config, and in a policy no run can weaken.
    another = _refused_version(cfg, v2)
    forced = ["rollback", "--to", another, "--force", *args]
    result = runner.invoke(app, [*forced, "--set", "review.forced_rollback=false"])
    assert result.exit_code == 1 and "review.forced_rollback is off" in result.output
    monkeypatch.setenv("FRESHTUNE_POLICY", '{"forced_rollback": false}')
    result = runner.invoke(app, forced)
    assert result.exit_code == 1 and "rollback --force, which the policy does not allow" in (
        result.output
    )
    assert _alias(cfg, "champion") == refused and len(_audit(cfg)) == 3


def _audit(cfg) -> list[dict]:
    import json

    model = MlflowClient(registry.tracking_uri(cfg)).get_registered_model(cfg.tracking.model_name)
    return [json.loads(v) for k, v in sorted(model.tags.items()) if k.startswith("rollback.")]


def _refused_version(cfg, like: str) -> str:
    mv = MlflowClient(registry.tracking_uri(cfg)).get_model_version(cfg.tracking.model_name, like)
    tags = {"adapter_key": mv.tags["adapter_key"], "gate": "NOT_BLESSED"}
    return registry.register_adapter(cfg, mv.run_id, tags)


def test_exported_adapter_and_merged_model_agree_with_evaluation(
    tiny_config, demo_drops, tiny_model, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tasks.chat import generate_answers
    from tasks.export import export_adapter
    from tasks.models import load_causal_lm, load_tokenizer
    from tasks.snapshot import list_snapshots

    cfg = tiny_config()
    refresh(str(demo_drops[0]), cfg)
    rows = [r for r in list_snapshots(cfg)[0].rows() if r["split"] == "eval"][:6]
    adapter = export_adapter(cfg, "champion", tmp_path / "adapter")
    merged = export_adapter(cfg, "champion", tmp_path / "merged", merged=True)
    tokenizer = load_tokenizer(str(tiny_model))
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(adapter)
    ).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(merged)).eval()
    ours = PeftModel.from_pretrained(
        load_causal_lm(str(tiny_model)),
        str(registry.local_adapter(cfg, registry.get_champion(cfg))),
    )
    expected = generate_answers(ours.eval(), tokenizer, rows, cfg.eval)
    assert generate_answers(peft_model, tokenizer, rows, cfg.eval) == expected
    assert generate_answers(plain, load_tokenizer(str(merged)), rows, cfg.eval) == expected
    with pytest.raises(FileExistsError):
        export_adapter(cfg, "champion", tmp_path / "adapter")
    # Today's config names another base: the version's recorded base is merged all the same.
    moved_on = cfg.model_copy(update={"base_model": str(tmp_path / "next-base")})
    again = export_adapter(moved_on, "champion", tmp_path / "merged-again", merged=True)
    assert (again / "model.safetensors").read_bytes() == (merged / "model.safetensors").read_bytes()
    assert not torch.equal(
        plain.model.layers[0].self_attn.q_proj.weight,
        AutoModelForCausalLM.from_pretrained(str(tiny_model))
        .model.layers[0]
        .self_attn.q_proj.weight,
    )
