"""The training step as its own flow, for GPU workers: `train-on-gpu`.

Deploy it to the work pool named in `train.work_pool` as deployment `train-on-gpu/<pool>`;
the refresh flow's `train-candidate` task then calls it with `run_deployment` and waits.
Workers share nothing but the servers: only digests and keys travel; the mix, the parent
adapter and the trained adapter go through MLflow's artifact store (tasks/store.py).
"""

from __future__ import annotations

from prefect import flow

from freshtune.config import FreshtuneConfig
from tasks.policy import enforce_policy
from tasks.train import train_stored_mix


@flow(name="train-on-gpu")
def train_on_gpu(
    mix_digest: str, parent_key: str | None, config: FreshtuneConfig, run_id: str
) -> str:
    """Train a LoRA adapter on a stored training mix; returns the stored adapter's key."""
    config = config.on_this_worker()
    enforce_policy(config)
    return train_stored_mix(mix_digest, parent_key, config, run_id)
