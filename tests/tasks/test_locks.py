"""Drop claims: one holder at a time, on one host (file lock) and across hosts (Redis)."""

import multiprocessing
import threading
import time
import uuid

import pytest

from tasks.locks import claim
from tests.helpers import servers


def _hold_and_report(cfg, key, ready, release, result):
    with claim(key, cfg) as other:
        result.put(other)
        ready.set()
        release.wait(30)


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_a_second_process_sees_the_claim_and_who_holds_it(tiny_config, backend):
    overrides = [f"deploy.lock_url={servers.redis_url()}"] if backend == "redis" else []
    cfg = tiny_config(*overrides)
    key = f"drop-{uuid.uuid4().hex[:8]}"
    holder, ready, release, result = _holder(cfg, key)
    try:
        assert ready.wait(30) and result.get(timeout=5) is None  # the first one holds it
        with claim(key, cfg) as other:
            assert other is not None and str(holder.pid) in other
    finally:
        release.set()
        holder.join(30)
    with claim(key, cfg) as other:  # released: free again
        assert other is None


def test_a_dead_holder_frees_the_file_claim(tiny_config):
    cfg = tiny_config()
    key = f"drop-{uuid.uuid4().hex[:8]}"
    holder, ready, _release, _result = _holder(cfg, key)
    assert ready.wait(30)
    holder.kill()  # a crashed run
    holder.join(10)
    with claim(key, cfg) as other:
        assert other is None


def test_a_redis_claim_is_a_lease_renewed_while_held_and_lost_when_the_holder_dies(tiny_config):
    import redis

    cfg = tiny_config(f"deploy.lock_url={servers.redis_url()}", "deploy.lock_ttl_s=3")
    key = f"drop-{uuid.uuid4().hex[:8]}"
    conn = redis.Redis.from_url(servers.redis_url())
    holder, ready, _release, result = _holder(cfg, key)
    assert ready.wait(30) and result.get(timeout=5) is None
    time.sleep(7)  # more than two leases: only renewal keeps the claim
    with claim(key, cfg) as other:
        assert other is not None and str(holder.pid) in other
    assert 0 < conn.pttl(f"freshtune:claim:{key}") <= 3000
    holder.kill()  # a crashed run: nothing renews the lease any more
    holder.join(10)
    died = time.monotonic()
    while conn.exists(f"freshtune:claim:{key}") and time.monotonic() - died < 10:
        time.sleep(0.1)
    assert time.monotonic() - died <= 3.5
    with claim(key, cfg) as other:
        assert other is None
    assert not conn.exists(f"freshtune:claim:{key}")  # released on exit


def test_a_claim_waited_for_is_taken_once_its_holder_lets_go(tiny_config):
    cfg = tiny_config()
    key = f"drop-{uuid.uuid4().hex[:8]}"
    holder, ready, release, _result = _holder(cfg, key)
    assert ready.wait(30)
    with claim(key, cfg, wait_s=0.5) as other:  # still held when the wait runs out
        assert other is not None
    threading.Timer(1, release.set).start()  # the duplicate stands down a second later
    with claim(key, cfg, wait_s=30) as other:  # a resumed run waits out a duplicate
        assert other is None
    holder.join(10)


def _holder(cfg, key: str):
    """A forked process that takes `key` and holds it until `release` is set."""
    ctx = multiprocessing.get_context("fork")
    ready, release, result = ctx.Event(), ctx.Event(), ctx.Queue()
    holder = ctx.Process(target=_hold_and_report, args=(cfg, key, ready, release, result))
    holder.start()
    return holder, ready, release, result
