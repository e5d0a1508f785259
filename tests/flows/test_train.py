"""The `train-on-gpu` flow (what a GPU worker runs) trains a saved mix into a committed adapter."""

from pathlib import Path

from flows.train import train_on_gpu
from tasks import registry
from tasks.mix import TrainingMix, save_mix
from tasks.train import _load_result
from tests.tasks.test_train import _rows


def test_the_worker_flow_trains_a_saved_mix(tiny_config):
    cfg = tiny_config("train.mode=fresh")
    rows = [{**r, "drop": "d" * 16} for r in _rows(8)]
    mix = TrainingMix(rows, new_rows=8, replay_rows=0, drops=["d" * 16], mode="fresh")
    path = save_mix(mix, cfg.paths.root / "mixes" / f"{mix.digest}.json")
    run_id = registry.open_run(cfg, "d" * 64, {})
    adapter = Path(train_on_gpu(str(path), None, cfg, run_id))
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (
        _load_result(adapter).mode == "fresh"
        and not adapter.with_name(adapter.name + ".partial").exists()
    )
    metrics = registry.client(cfg).get_run(run_id).data.metrics
    assert {"train_tokens", "step_loss", "step_tokens_per_s", "step_flops"} <= set(metrics)
