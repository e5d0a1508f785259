"""A training process killed mid-run resumes from its last complete checkpoint and ends with
the adapter an uninterrupted run makes (CPU, fixed seeds)."""

import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from freshtune.config import TrainSettings
from tasks.train import complete_checkpoints, train_adapter
from tests.tasks.test_train import _rows

SETTINGS = dict(
    epochs=2,
    learning_rate=5e-3,
    batch_size=4,
    max_length=64,
    warmup=0.2,
    logging_steps=1,
    save_steps=2,
    lora={"r": 4, "alpha": 8, "dropout": 0.1},  # dropout: the RNG state must resume too
)

# The child trains and SIGKILLs itself at step 5: checkpoints 2 and 4 are on disk, 6 is not.
CHILD = """
import os, signal, sys
from pathlib import Path
from freshtune.config import TrainSettings
from tasks.train import train_adapter
from tests.tasks.test_train import _rows
from tests.tasks.test_resume import SETTINGS

def die(metrics, step):
    if step >= 5:
        os.kill(os.getpid(), signal.SIGKILL)

train_adapter(sys.argv[1], _rows(), TrainSettings(**SETTINGS), Path(sys.argv[2]), on_log=die)
"""


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_killed_run_resumes_to_the_uninterrupted_adapter(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "killed"
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny_model), str(out)], cwd=repo, capture_output=True
    )
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    checkpoints = out.with_name("killed.partial") / "checkpoints"
    assert [p.name for p in complete_checkpoints(checkpoints)] == ["checkpoint-2", "checkpoint-4"]
    assert not out.exists()  # nothing committed, so nothing can be registered
    # A save cut short by the kill: the newest folder lacks its trainer state.
    torn = checkpoints / "checkpoint-6"
    shutil.copytree(checkpoints / "checkpoint-4", torn)
    (torn / "trainer_state.json").unlink()

    resumed = train_adapter(str(tiny_model), _rows(), TrainSettings(**SETTINGS), out)
    straight = train_adapter(
        str(tiny_model), _rows(), TrainSettings(**SETTINGS), tmp_path / "straight"
    )
    assert resumed.resumed_step == 4 and straight.resumed_step == 0
    assert resumed.steps == straight.steps == 8
    a, b = _weights(resumed.adapter_dir), _weights(straight.adapter_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert not (out / "checkpoints").exists()


# The same kill on a worker whose checkpoints go to the artifact store (`CheckpointMirror`).
MIRRORED_CHILD = """
import os, signal, sys
from pathlib import Path
from freshtune.config import TrainSettings, load_config
from tasks.train import CheckpointMirror, train_adapter
from tests.tasks.test_train import _rows
from tests.tasks.test_resume import SETTINGS

def die(metrics, step):
    if step >= 5:
        os.kill(os.getpid(), signal.SIGKILL)

cfg = load_config("tiny", [f"base_model={sys.argv[1]}"], sys.argv[2])
out = cfg.paths.adapters / "k"
train_adapter(sys.argv[1], _rows(), TrainSettings(**SETTINGS), out, on_log=die,
              mirror=CheckpointMirror(cfg, "k"))
"""


def test_a_run_killed_on_one_worker_resumes_on_another_from_the_store(
    tiny_model: Path, tmp_path: Path, monkeypatch
):
    from mlflow import MlflowClient

    from freshtune.config import load_config
    from tasks import store
    from tasks.train import CheckpointMirror

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    first, second = (load_config("tiny", [f"base_model={tiny_model}"], tmp_path / w) for w in "ab")
    MlflowClient(uri).create_experiment(
        first.tracking.experiment, artifact_location=(tmp_path / "artifacts").as_uri()
    )
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, "-c", MIRRORED_CHILD, str(tiny_model), str(first.workspace)],
        cwd=repo,
        capture_output=True,
    )
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    # Only the newest complete checkpoint stays in the store.
    assert store.keys(second, store.CHECKPOINTS) == ["k-000000004"]

    mirror = CheckpointMirror(second, "k")
    out = second.paths.adapters / "k"  # a worker that never saw the first one's files
    resumed = train_adapter(str(tiny_model), _rows(), TrainSettings(**SETTINGS), out, mirror=mirror)
    straight = train_adapter(
        str(tiny_model), _rows(), TrainSettings(**SETTINGS), tmp_path / "straight"
    )
    assert resumed.resumed_step == 4 and resumed.steps == straight.steps == 8
    a, b = _weights(resumed.adapter_dir), _weights(straight.adapter_dir)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    mirror.clear()
    assert store.keys(second, store.CHECKPOINTS) == []
