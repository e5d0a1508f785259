"""train.processes > 1 launches torchrun: DDP on CPU (gloo) matches one process, same batch."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from freshtune.config import TrainSettings
from tasks.train import train_adapter
from tests.tasks.test_train import _rows


def _settings(**changes) -> TrainSettings:
    base = dict(epochs=1, learning_rate=5e-3, max_length=64, logging_steps=1)
    return TrainSettings(**base, lora={"r": 4, "alpha": 8, "dropout": 0.0}, **changes)


def test_two_process_ddp_equals_one_process(tiny_model: Path, tmp_path: Path, monkeypatch):
    from mlflow import MlflowClient

    from freshtune.config import load_config
    from tasks import store
    from tasks.train import CheckpointMirror

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the torchrun ranks inherit it
    cfg = load_config("tiny", [f"base_model={tiny_model}"], tmp_path / "ws")
    MlflowClient(uri).create_experiment(
        cfg.tracking.experiment, artifact_location=(tmp_path / "artifacts").as_uri()
    )
    steps: list[int] = []
    one = train_adapter(str(tiny_model), _rows(), _settings(batch_size=8), tmp_path / "one")
    two = train_adapter(
        str(tiny_model),
        _rows(),
        _settings(batch_size=4, processes=2, save_steps=1),  # 2 x 4: the same global batch
        tmp_path / "two",
        on_log=lambda metrics, step: steps.append(step),
        mirror=CheckpointMirror(cfg, "k"),
    )
    # Rank 0 uploaded each checkpoint as it was written; the newest one stays.
    assert store.keys(cfg, store.CHECKPOINTS) == ["k-000000002"]
    assert one.steps == two.steps == 2 and steps[-1] == 2
    assert abs(one.loss - two.loss) < 1e-4
    a = load_file(str(one.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(two.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
