"""The MLflow connection every task shares: which server, which experiment, and its errors."""

from __future__ import annotations

import functools
import os
import re
from typing import Any

from freshtune.config import FreshtuneConfig


def tracking_uri(cfg: FreshtuneConfig) -> str:
    """`MLFLOW_TRACKING_URI` wins; otherwise SQLite inside the workspace."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{cfg.paths.mlflow / 'mlflow.db'}"


def client(cfg: FreshtuneConfig):
    """An MlflowClient whose calls raise `TrackingUnavailable`, naming the server, when the
    server cannot be reached (MLflow's own error names only the endpoint it tried)."""
    from mlflow import MlflowClient

    cfg.paths.mlflow.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(cfg)
    return Named(MlflowClient(tracking_uri=uri, registry_uri=uri), uri)


class Named:
    """`inner` whose calls that get no answer from the server raise `error(message)`, the
    message naming the server and what to check (MLflow's own names only the endpoint)."""

    def __init__(self, inner: Any, uri: str, error: type[Exception] | None = None) -> None:
        self._inner, self._uri, self._error = inner, uri, error

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                named = unavailable(self._uri, name, exc)
                raise (self._error(str(named)) if self._error else named) from None

        return call


def is_outage(exc: BaseException) -> bool:
    """A request that never got an answer (refused, reset, timed out), not a refusal."""
    text = str(exc)
    return any(mark in text for mark in _OUTAGE) or isinstance(exc, ConnectionError)


_OUTAGE = ("failed with exception", "Max retries exceeded", "Connection refused", "timed out")


def unavailable(uri: str, doing: str, exc: BaseException) -> TrackingUnavailable:
    first = redacted(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:300]
    return TrackingUnavailable(
        f"MLflow tracking server {redacted(uri)} did not answer ({doing}): {first} (check that "
        "it runs and MLFLOW_TRACKING_URI and its credentials; rerun the drop once it answers)"
    )


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
