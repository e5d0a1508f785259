"""Claims that keep one drop to one cycle, across threads, processes and workers.

Event triggers have fired twice for one event (PITFALLS): the refresh flow claims the drop's
digest before doing any work; a second run for the same digest sees the claim and stands down.
With `deploy.lock_url` (redis://) the claim holds across machines; without it a file lock in
the workspace holds on one host. A claim dies with its holder (file lock) or after
`deploy.lock_ttl_s` (Redis), so a crashed run never blocks a drop for good.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from freshtune.config import FreshtuneConfig

log = logging.getLogger(__name__)


def holder_name() -> str:
    """Who holds a claim: the flow run when there is one, else host and process."""
    try:
        from prefect.runtime import flow_run

        run_id = flow_run.id
    except Exception:  # outside a run, or prefect not importable here
        run_id = None
    return f"flow-run {run_id}" if run_id else f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def claim(key: str, cfg: FreshtuneConfig) -> Iterator[str | None]:
    """Yields None when this process now holds `key`, else the name of who holds it."""
    # The URL may carry a password: FRESHTUNE_LOCK_URL keeps it out of the config, which
    # Prefect shows as a parameter.
    url = cfg.deploy.lock_url or os.environ.get("FRESHTUNE_LOCK_URL")
    inner = _redis_claim(key, url, cfg.deploy.lock_ttl_s) if url else _file_claim(key, cfg)
    with inner as other:
        yield other


@contextmanager
def _file_claim(key: str, cfg: FreshtuneConfig) -> Iterator[str | None]:
    path = cfg.paths.root / "locks" / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            yield handle.read().strip() or "another process"
            return
        handle.seek(0)
        handle.truncate()
        handle.write(holder_name())
        handle.flush()
        try:
            yield None
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _redis_claim(key: str, url: str, ttl_s: int) -> Iterator[str | None]:
    import redis

    conn = redis.Redis.from_url(url)
    name = f"freshtune:claim:{key}"
    me = holder_name()
    # SET NX EX is atomic: exactly one of several racing workers gets the claim.
    if not conn.set(name, me, nx=True, ex=ttl_s):
        yield (conn.get(name) or b"another worker").decode()
        return
    try:
        yield None
    finally:
        # Release only our own claim (it may have expired and been taken by someone else).
        conn.eval(_RELEASE_IF_MINE, 1, name, me)


_RELEASE_IF_MINE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def in_progress_record(file: str, digest: str, holder: str) -> dict[str, object]:
    """What a run that stood down returns: the drop is someone else's cycle right now."""
    log.info("drop %s (digest %s) is being processed by %s", file, digest[:12], holder)
    return {
        "digest": digest,
        "file": file,
        "verdict": "in-progress-elsewhere",
        "in_progress_by": holder,
        "repeated": True,
        "promoted": False,
    }
