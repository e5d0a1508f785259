"""The MLflow connection every task shares: which server, which experiment, and its errors."""

from __future__ import annotations

import os
import re

from freshtune.config import FreshtuneConfig


def tracking_uri(cfg: FreshtuneConfig) -> str:
    """`MLFLOW_TRACKING_URI` wins; otherwise SQLite inside the workspace."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{cfg.paths.mlflow / 'mlflow.db'}"


def client(cfg: FreshtuneConfig):
    from mlflow import MlflowClient

    cfg.paths.mlflow.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri(cfg), registry_uri=tracking_uri(cfg))


def experiment_id(cfg: FreshtuneConfig) -> str:
    """The experiment, created with its artifacts in the workspace when tracking is local."""
    mlc = client(cfg)
    found = mlc.get_experiment_by_name(cfg.tracking.experiment)
    if found is not None:
        return found.experiment_id
    local = not os.environ.get("MLFLOW_TRACKING_URI")
    location = (cfg.paths.mlflow / "artifacts").as_uri() if local else None
    return mlc.create_experiment(cfg.tracking.experiment, artifact_location=location)


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server did not answer: never read as "no champion"."""


def redacted(text: str) -> str:
    """`text` with the user:password part of every URL in it removed."""
    return re.sub(r"://[^/@\s]+@", "://", text)
