"""Real servers for the deployment tests, started on 127.0.0.1 and stopped after.

PostgreSQL and Redis already run on the machine (and on CI's); each test session gets its own
PostgreSQL databases, dropped at the end. The Prefect server, the MLflow server and the
Prefect worker are subprocesses of the test, in their own process groups.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A fresh database; yields its name."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(**PG)
    conn.autocommit = True
    try:
        conn.cursor().execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited {proc.returncode}\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout} s\n{log.read_text()[-3000:]}")


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen, grace: float = 15) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def quiet_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        **extra,
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, **extra}


@contextmanager
def prefect_server(home: Path, database: str) -> Iterator[str]:
    """`prefect server start` on PostgreSQL; yields the API URL."""
    port = free_port()
    env = quiet_env(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=(
            f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
        ),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",
    )
    args = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    log = home / "prefect-server.log"
    home.mkdir(parents=True, exist_ok=True)
    with process(args, env, log) as proc:
        wait_http(f"http://127.0.0.1:{port}/api/health", proc, log)
        yield f"http://127.0.0.1:{port}/api"


@contextmanager
def mlflow_server(root: Path, database: str) -> Iterator[str]:
    """`mlflow server` on PostgreSQL with served artifacts; yields its URL."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    args = [
        str(BIN / "mlflow"),
        "server",
        "--host=127.0.0.1",
        f"--port={port}",
        "--workers=1",
        f"--backend-store-uri=postgresql+psycopg2://postgres@127.0.0.1:5432/{database}",
        f"--artifacts-destination={root / 'artifacts'}",
        "--serve-artifacts",
    ]
    log = root / "mlflow-server.log"
    with process(args, quiet_env(), log) as proc:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}"


@contextmanager
def prefect_worker(pool: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    args = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    with process(args, {**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}, log) as proc:
        yield proc
