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
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
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


def wait_http(
    url: str, proc: subprocess.Popen, log: Path, timeout: float = 180, auth: str | None = None
) -> None:
    import base64

    headers = {"Authorization": f"Basic {base64.b64encode(auth.encode()).decode()}"} if auth else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited {proc.returncode}\n{log.read_text()[-3000:]}")
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=2) as response:
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


def redis_url() -> str:
    """The machine's Redis, one database per pytest-xdist worker (`make test` runs two): tests
    running side by side never see each other's claims."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw-1")
    return f"redis://127.0.0.1:6379/{int(worker.removeprefix('gw')) + 1}"


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
def prefect_server(
    home: Path, database: str, host: str = "127.0.0.1", auth: str | None = None
) -> Iterator[str]:
    """`prefect server start` on PostgreSQL (with `auth` as its "user:password" auth string
    when given); yields the API URL."""
    port = free_port(host)
    env = quiet_env(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=(
            f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
        ),
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_API_URL=f"http://{host}:{port}/api",
        **({"PREFECT_SERVER_API_AUTH_STRING": auth} if auth else {}),
    )
    args = [str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(port)]
    log = home / "prefect-server.log"
    home.mkdir(parents=True, exist_ok=True)
    with process(args, env, log) as proc:
        wait_http(f"http://{host}:{port}/api/health", proc, log, auth=auth)
        yield f"http://{host}:{port}/api"


@contextmanager
def mlflow_server(
    root: Path,
    database: str,
    host: str = "127.0.0.1",
    admin: tuple[str, str] | None = None,
    port: int | None = None,
) -> Iterator[str]:
    """`mlflow server` on PostgreSQL with served artifacts (and MLflow's basic-auth app with
    `admin` as its admin user when given); yields its URL."""
    port = port or free_port(host)
    root.mkdir(parents=True, exist_ok=True)
    # As docker/compose.yaml runs it: without the job runner's 7 polling huey processes.
    env = quiet_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    auth_args = []
    if admin is not None:
        ini = root / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{root / 'basic_auth.db'}\nadmin_username = {admin[0]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(ini),
            MLFLOW_AUTH_ADMIN_PASSWORD=admin[1],
            MLFLOW_FLASK_SERVER_SECRET_KEY=uuid.uuid4().hex,
        )
        auth_args = ["--app-name=basic-auth"]
    args = [
        str(BIN / "mlflow"),
        "server",
        *auth_args,
        f"--host={host}",
        f"--port={port}",
        "--workers=1",
        f"--backend-store-uri=postgresql+psycopg2://postgres@127.0.0.1:5432/{database}",
        f"--artifacts-destination={root / 'artifacts'}",
        "--serve-artifacts",
    ]
    log = root / "mlflow-server.log"
    with process(args, env, log) as proc:
        wait_http(f"http://{host}:{port}/health", proc, log)
        yield f"http://{host}:{port}"


def wait_tcp(host: str, port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{host}:{port}: nothing listening (exit code {proc.poll()})")


@contextmanager
def redis_server(root: Path, host: str, password: str) -> Iterator[str]:
    """A Redis of this test's own with a password, keeping nothing on disk; yields its URL."""
    port = free_port(host)
    root.mkdir(parents=True, exist_ok=True)
    args = ["redis-server", "--bind", host, "--port", str(port), "--requirepass", password]
    args += ["--save", "", "--appendonly", "no", "--dir", str(root)]
    with process(args, quiet_env(), root / "redis.log") as proc:
        wait_tcp(host, port, proc)
        yield f"redis://:{password}@{host}:{port}/0"


def deployment_runs(deployment: str) -> list:
    """Flow runs of `flow/deployment` on the server of the active settings, oldest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id]))
        )
    # The scheduler books the cron runs ahead of time; those are not a test's runs.
    return sorted((r for r in runs if not r.auto_scheduled), key=lambda r: r.created)


@contextmanager
def prefect_worker(pool: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    args = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    with process(args, {**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}, log) as proc:
        yield proc


@contextmanager
def ftp_server(root: Path, host: str, user: str, password: str) -> Iterator[str]:
    """An FTP server (pyftpdlib) standing in for object storage: files reach a worker only over
    the network. Yields its URL, without the credentials (fsspec reads them from the env:
    FSSPEC_FTP_USERNAME, FSSPEC_FTP_PASSWORD)."""
    port = free_port(host)
    (root / "files").mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pyftpdlib", "-i", host, "-p", str(port), "-w"]
    args += ["-d", str(root / "files"), "-u", user, "-P", password]
    with process(args, quiet_env(), root / "ftp.log") as proc:
        wait_tcp(host, port, proc)
        yield f"ftp://{host}:{port}"


class TcpProxy:
    """127.0.0.1:`port` forwarding to `target`; `cut()` closes the port and every open
    connection (clients get "connection refused", as from a server that went down),
    `restore()` opens it again. The server behind it keeps its state."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        import threading

        if self._listener is not None:
            return
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with _quiet():  # wakes the thread blocked in accept(); close() alone does not
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in list(self._open):
            with _quiet():
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(self.target)
            self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with _quiet():
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with _quiet():
                sock.shutdown(socket.SHUT_RDWR)
            self._open.discard(sock)


def _quiet() -> suppress:
    return suppress(OSError)


class WebhookReceiver:
    """A webhook endpoint on 127.0.0.1 (its path holds a token, as real webhook URLs do) that
    keeps every JSON body POSTed to it, in arrival order."""

    def __init__(self, token: str = "s3cr3t-alert-token") -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                import json

                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append({"path": self.path, **json.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:  # not on the test's terminal
                pass

        self.token = token
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hook/{token}"

    def __enter__(self) -> WebhookReceiver:
        import threading

        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, containing: str, timeout: float = 60) -> list[dict]:
        """The messages whose subject contains `containing`, once there are `count` of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.received if containing in m["subject"]]
            if len(found) >= count:
                return found
            time.sleep(0.5)
        raise TimeoutError(f"{count} alert(s) with {containing!r}: got {self.received}")


@contextmanager
def prefect_at(api: str, **more: Any) -> Iterator[None]:
    """This process's Prefect client pointed at `api` (plus other settings, by their
    `PREFECT_*` names) for the block. Prefect's events worker is a process-wide service that
    keeps the orchestration client it started with: it is drained on the way out, so the next
    server this process talks to gets a worker of its own and its events are not lost."""
    import prefect.settings as settings
    from prefect.events.worker import EventsWorker

    updates = {settings.PREFECT_API_URL: api}
    updates.update({getattr(settings, name): value for name, value in more.items()})
    EventsWorker.drain_all(timeout=30, at_exit=False)
    try:
        with settings.temporary_settings(updates=updates):
            yield
    finally:
        EventsWorker.drain_all(timeout=30, at_exit=False)
