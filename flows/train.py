"""The training step as its own flow, for GPU workers: `train-on-gpu`.

Deploy it to the work pool named in `train.work_pool` as deployment `train-on-gpu/<pool>`;
the refresh flow's `train-candidate` task then calls it with `run_deployment` and waits.
Workers must see the same workspace (shared storage): only paths and ids travel.
"""

from __future__ import annotations

from prefect import flow

from freshtune.config import FreshtuneConfig
from tasks.train import train_mix_file


@flow(name="train-on-gpu")
def train_on_gpu(
    mix_file: str, parent_dir: str | None, config: FreshtuneConfig, run_id: str
) -> str:
    """Train a LoRA adapter on a saved training mix; returns the committed adapter folder."""
    return train_mix_file(mix_file, parent_dir, config, run_id)
