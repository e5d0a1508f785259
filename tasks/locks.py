"""Claims that keep one drop to one cycle, across threads, processes and workers.

Event triggers have fired twice for one event (PITFALLS): the refresh flow claims the drop's
digest before doing any work; a second run for the same digest sees the claim and stands down.
With `deploy.lock_url` (redis://) the claim holds across machines; without it a file lock in
the workspace holds on one host. A claim dies with its holder: the file lock at once, the
Redis claim (a lease of `deploy.lock_ttl_s` that a thread of the holder renews every third of
it, through a wait in review or a queued GPU run alike) within one lease. A crashed run never
blocks a drop for long, and a long cycle never loses its claim to a duplicate event. A run
suspended for review holds no claim (its process has exited): its waiting review keeps other
runs of the drop away instead (tasks/waiting.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
def claim(key: str, cfg: FreshtuneConfig, wait_s: float = 0) -> Iterator[str | None]:
    """Yields None when this process now holds `key`, else (after trying for `wait_s`) the
    name of who holds it."""
    url = cfg.deploy.lock_url_value()
    deadline = time.monotonic() + wait_s
    while True:
        inner = _redis_claim(key, url, cfg.deploy.lock_ttl_s) if url else _file_claim(key, cfg)
        with inner as other:
            if other is None or time.monotonic() >= deadline:
                yield other
                return
        time.sleep(0.2)


@contextmanager
def held(key: str, cfg: FreshtuneConfig, timeout_s: float = 600) -> Iterator[None]:
    """Wait for `key`, hold it for the block: a short critical section across workers."""
    with claim(key, cfg, wait_s=timeout_s) as other:
        if other is not None:
            raise TimeoutError(f"{key} is still held by {other} after {timeout_s:.0f} s")
        yield


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
    # redis-py's Lock: SET NX PX to take it (exactly one of several racing workers does), a
    # token check to renew or release only our own. The token is who holds it, for others.
    lease = conn.lock(f"freshtune:claim:{key}", timeout=ttl_s, thread_local=False)
    if not lease.acquire(blocking=False, token=holder_name()):
        yield (conn.get(lease.name) or b"another worker").decode()
        return
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(lease, ttl_s / 3, stop), name=f"lease {key}", daemon=True
    )
    renewer.start()
    try:
        yield None
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(redis.exceptions.LockError):  # lost it: nothing to release
            lease.release()


def _renew(lease: Any, every_s: float, stop: threading.Event) -> None:
    """Reset the lease to its full length until told to stop; say so loudly if it was lost."""
    import redis

    while not stop.wait(every_s):
        try:
            lease.reacquire()
        except redis.exceptions.LockNotOwnedError:
            log.error("lost the claim %s: another run may process this drop", lease.name)
            return
        except redis.exceptions.ConnectionError as exc:  # try again next time round
            log.warning("could not renew the claim %s: %s", lease.name, exc)


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
