"""The workers' MLflow user: everything a cycle does, on freshtune's own experiment and model
only (MLflow's basic-auth app, on PostgreSQL, as in production)."""

from __future__ import annotations

import pytest

from deployments.deploy import WORKER_PASSWORD, WORKER_USER, ensure_worker_access
from tests.helpers.servers import mlflow_server, postgres_database

ADMIN = ("admin", "admin-pw-access")


def _as(monkeypatch, user: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


def test_the_workers_user_can_run_a_cycle_and_nothing_more(tiny_config, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    from tasks import registry, store

    with (
        postgres_database("access") as database,
        mlflow_server(tmp_path / "mlflow", database, admin=ADMIN) as url,
    ):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        _as(monkeypatch, *ADMIN)
        monkeypatch.setenv(WORKER_USER, "worker")
        monkeypatch.setenv(WORKER_PASSWORD, "worker-pw-long-enough")
        cfg = tiny_config()
        assert ensure_worker_access(cfg) == ensure_worker_access(cfg) == "worker"  # reruns
        other = MlflowClient(url).create_experiment("hr-analytics")

        _as(monkeypatch, "worker", "worker-pw-long-enough")
        folder = tmp_path / "adapter"
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
        store.put(cfg, store.ADAPTERS, "k", folder)  # the artifact store, through the proxy
        assert store.keys(cfg, store.ADAPTERS) == ["k"]
        store.put(cfg, store.CHECKPOINTS, "k-000000002", folder)
        store.delete(cfg, store.CHECKPOINTS, "k-000000002")  # checkpoint rotation deletes
        assert store.keys(cfg, store.CHECKPOINTS) == []
        run_id = registry.open_run(cfg, "d" * 64, {})
        registry.log_metrics(cfg, run_id, {"loss": 1.0})
        registry.log_artifacts(cfg, run_id, folder, "adapter")
        version = registry.register_adapter(cfg, run_id, {"adapter_key": "k", "drop_digest": "d"})
        registry.promote(cfg, version, None)
        assert registry.get_champion(cfg).version == version
        registry.client(cfg).set_registered_model_tag(cfg.tracking.model_name, "rollback.t", "{}")

        auth = get_app_client("basic-auth", tracking_uri=url)
        with pytest.raises(MlflowException):
            auth.create_user("intruder", "pw")  # no user management
        with pytest.raises(MlflowException):
            MlflowClient(url).get_experiment(other)  # no other experiment
