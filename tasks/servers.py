"""Preflight: every server a cycle needs answers now, or the cycle stops naming it.

Each check is one request with a short timeout, so an outage costs seconds, not the minutes
of retries a client library spends before it gives up (MLflow's took about 4 minutes).
Credentials are used, never shown: every URL in a message has its user:password removed.
"""

from __future__ import annotations

import base64
import os

from freshtune.config import FreshtuneConfig
from tasks.tracking import redacted

TIMEOUT_S = 5.0
PREFECT_CHECK = "that the Prefect server runs, PREFECT_API_URL and PREFECT_API_AUTH_STRING"


class ServerUnavailable(RuntimeError):
    """A server the cycle needs did not answer, or refused our credentials."""

    def __init__(self, server: str, url: str, why: str, check: str):
        self.server = server
        super().__init__(f"{server} at {redacted(url)} {why} (check {check})")


def check_servers(cfg: FreshtuneConfig) -> list[str]:
    """Check MLflow, Redis and Prefect where configured; the names of those checked."""
    checked = []
    if (uri := os.environ.get("MLFLOW_TRACKING_URI", "")).startswith("http"):
        check_mlflow(uri, cfg.tracking.experiment)
        checked.append("MLflow")
    if url := cfg.deploy.lock_url_value():
        check_redis(url)
        checked.append("Redis")
    if api := _prefect_api():
        check_prefect(api)
        checked.append("Prefect")
    return checked


def check_mlflow(uri: str, experiment: str) -> None:
    import httpx

    server = "MLflow tracking server"
    what = "that the server runs, MLFLOW_TRACKING_URI and MLFLOW_TRACKING_USERNAME/PASSWORD"
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    auth = (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", "")) if user else None
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name"
    try:
        reply = httpx.get(url, params={"experiment_name": experiment}, auth=auth, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise ServerUnavailable(server, uri, f"did not answer: {exc}", what) from None
    _judge(server, uri, reply.status_code, what, ok=(200, 404))


def check_redis(url: str) -> None:
    import redis

    what = "that Redis runs and deploy.lock_url / FRESHTUNE_LOCK_URL with its password"
    try:
        redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S).ping()
    except redis.exceptions.AuthenticationError as exc:
        raise ServerUnavailable("Redis", url, f"refused the credentials: {exc}", what) from None
    except redis.exceptions.RedisError as exc:
        raise ServerUnavailable("Redis", url, f"did not answer: {exc}", what) from None


def check_prefect(api: str) -> None:
    import httpx

    what = PREFECT_CHECK
    headers = {}
    if auth := os.environ.get("PREFECT_API_AUTH_STRING"):
        headers["Authorization"] = f"Basic {base64.b64encode(auth.encode()).decode()}"
    try:
        # /health answers without credentials; /admin/version needs them when auth is on.
        reply = httpx.get(f"{api.rstrip('/')}/admin/version", headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise ServerUnavailable("Prefect API", api, f"did not answer: {exc}", what) from None
    _judge("Prefect API", api, reply.status_code, what)


def _judge(server: str, url: str, status: int, what: str, ok: tuple[int, ...] = (200,)) -> None:
    if status in (401, 403):
        raise ServerUnavailable(server, url, f"refused the credentials (HTTP {status})", what)
    if status not in ok:
        raise ServerUnavailable(server, url, f"answered HTTP {status}", what)


def _prefect_api() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def named(exc: BaseException) -> BaseException:
    """The error to show for a cycle that failed. When the Prefect server goes away mid-run,
    the engine's own report of the failure fails too and raises a bare connection error: show
    the failure it was reporting if that named its server, else name the Prefect API."""
    import httpx

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ServerUnavailable):
            return seen
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, httpx.TransportError) and (api := _prefect_api()):
        return ServerUnavailable("Prefect API", api, f"did not answer: {exc}", PREFECT_CHECK)
    return exc
