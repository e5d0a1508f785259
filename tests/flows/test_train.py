"""The `train-on-gpu` flow (what a GPU worker runs): a worker that shares nothing with the
refresh worker but the tracking server and its artifact store trains the stored mix."""

from pathlib import Path

import pytest

from flows.train import train_on_gpu
from tasks import registry, store
from tasks.mix import TrainingMix, save_mix
from tasks.train import _load_result, mix_file, stored_adapter
from tests.tasks.test_train import _rows


@pytest.fixture
def shared_tracking(tmp_path, monkeypatch):
    """A tracking store outside every workspace, as a server would be (sqlite stands in)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}"
    (tmp_path / "server").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(tracking_uri=uri), (tmp_path / "server" / "artifacts").as_uri()


def test_a_worker_with_an_empty_workspace_trains_the_stored_mix(
    tiny_config, shared_tracking, tmp_path, monkeypatch
):
    mlc, artifacts = shared_tracking
    cfg = tiny_config("train.mode=fresh")
    mlc.create_experiment(cfg.tracking.experiment, artifact_location=artifacts)
    rows = [{**r, "drop": "d" * 16} for r in _rows(8)]
    mix = TrainingMix(rows, new_rows=8, replay_rows=0, drops=["d" * 16], mode="fresh")
    store.put(cfg, store.MIXES, mix.digest, save_mix(mix, mix_file(cfg, mix.digest)))
    run_id = registry.open_run(cfg, "d" * 64, {})

    gpu_home = tmp_path / "gpu-worker"
    monkeypatch.setenv("FRESHTUNE_HOME", str(gpu_home))
    key = train_on_gpu(mix.digest, None, cfg, run_id)
    monkeypatch.delenv("FRESHTUNE_HOME")

    trained = gpu_home / "adapters" / key
    assert (trained / "adapter_model.safetensors").is_file()
    assert mix_file(cfg.model_copy(update={"workspace": gpu_home}), mix.digest).is_file()
    assert not (cfg.paths.adapters / key).exists()  # nothing shared: it went through the store
    fetched = stored_adapter(cfg, key)
    assert fetched == cfg.paths.adapters / key
    assert store.folder_files(fetched) == store.folder_files(trained)
    assert _load_result(fetched).mode == "fresh"
    metrics = registry.client(cfg).get_run(run_id).data.metrics
    assert {"train_tokens", "step_loss", "step_tokens_per_s", "step_flops"} <= set(metrics)


def test_a_damaged_stored_object_is_refused_by_digest(tiny_config, shared_tracking, tmp_path):
    mlc, artifacts = shared_tracking
    cfg = tiny_config()
    mlc.create_experiment(cfg.tracking.experiment, artifact_location=artifacts)
    folder = tmp_path / "obj"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x00" * 64)
    store.put(cfg, store.ADAPTERS, "k1", folder)
    stored = Path(artifacts.removeprefix("file://")) / "store" / "adapters" / "k1" / "weights.bin"
    stored.write_bytes(b"\x01" * 64)
    with pytest.raises(store.StoreError, match="weights.bin does not match its manifest"):
        store.get(cfg, store.ADAPTERS, "k1", cfg.paths.adapters / "k1")
    assert not (cfg.paths.adapters / "k1").exists()  # nothing half-fetched left to trust
    assert not list(cfg.paths.adapters.glob(".k1*"))
