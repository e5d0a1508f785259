"""The production path, for real: Prefect server and MLflow server on PostgreSQL, Redis locks,
`freshtune deploy` applied, and a process worker on the cpu pool running the tiny model."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from freshtune.config import FreshtuneConfig, load_config
from tests.helpers import servers

CLI = str(servers.BIN / "freshtune")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Stack:
    prefect_url: str
    mlflow_url: str
    env: dict[str, str]
    overrides: list[str]
    cfg: FreshtuneConfig
    logs: Path

    def cli(self, *args: str, configured: bool = True) -> subprocess.CompletedProcess:
        """`freshtune ARGS` as a user runs it (with this stack's config unless told not to)."""
        options = ["--config", "tiny", "--workspace", str(self.cfg.workspace)] if configured else []
        for override in self.overrides if configured else []:
            options += ["--set", override]
        result = subprocess.run(
            [CLI, *args, *options], env=self.env, capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            raise AssertionError(f"freshtune {args} exited {result.returncode}:\n{result.stderr}")
        return result

    def settings(self) -> Any:
        return servers.prefect_at(self.prefect_url)

    def runs_of(self, deployment: str) -> list[Any]:
        """Flow runs of `flow/deployment`, oldest first."""
        with self.settings():
            return servers.deployment_runs(deployment)

    def wait_runs(self, deployment: str, count: int, timeout: float = 420) -> list[Any]:
        """Wait until `deployment` has `count` runs, all finished; a failed one is an error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs_of(deployment)
            if len(runs) >= count and all(r.state_type.value in TERMINAL for r in runs):
                bad = [r for r in runs if r.state_type.value != "COMPLETED"]
                assert not bad, [(r.name, r.state_name, r.state and r.state.message) for r in bad]
                return runs
            time.sleep(2)
        raise TimeoutError(f"{deployment}: {[(r.name, r.state_name) for r in runs]}\n{self.tail()}")

    def tail(self) -> str:
        return (self.logs / "worker.log").read_text()[-4000:]

    def mlflow(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow_url, registry_uri=self.mlflow_url)


@pytest.fixture(scope="session")
def stack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    overrides = [f"base_model={tiny_model}", "deploy.timezone=Europe/Berlin"]
    cfg = load_config("tiny", overrides, root / "ws")
    with (
        servers.postgres_database("freshtune_prefect") as prefect_db,
        servers.postgres_database("freshtune_mlflow") as mlflow_db,
        servers.prefect_server(root / "prefect", prefect_db) as prefect_url,
        servers.mlflow_server(root / "mlflow", mlflow_db) as mlflow_url,
    ):
        env = servers.quiet_env(
            PREFECT_API_URL=prefect_url,
            MLFLOW_TRACKING_URI=mlflow_url,
            FRESHTUNE_LOCK_URL=servers.redis_url(),
            PREFECT_HOME=str(root / "client"),
        )
        stack = Stack(prefect_url, mlflow_url, env, overrides, cfg, root)
        stack.cli("deploy")
        with servers.prefect_worker("cpu", env, root / "worker.log"):
            yield stack


def drop_event_id(output: str) -> str:
    return output.strip().splitlines()[-1].split()[-1]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
