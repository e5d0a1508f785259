"""Drop claims: one holder at a time, on one host (file lock) and across hosts (Redis)."""

import multiprocessing
import uuid

import pytest

from tasks.locks import claim


def _hold_and_report(cfg, key, ready, release, result):
    with claim(key, cfg) as other:
        result.put(other)
        ready.set()
        release.wait(30)


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_a_second_process_sees_the_claim_and_who_holds_it(tiny_config, backend):
    overrides = ["deploy.lock_url=redis://127.0.0.1:6379/0"] if backend == "redis" else []
    cfg = tiny_config(*overrides)
    key = f"drop-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("fork")
    ready, release, result = ctx.Event(), ctx.Event(), ctx.Queue()
    holder = ctx.Process(target=_hold_and_report, args=(cfg, key, ready, release, result))
    holder.start()
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
    ctx = multiprocessing.get_context("fork")
    ready, release, result = ctx.Event(), ctx.Event(), ctx.Queue()
    holder = ctx.Process(target=_hold_and_report, args=(cfg, key, ready, release, result))
    holder.start()
    assert ready.wait(30)
    holder.kill()  # a crashed run
    holder.join(10)
    with claim(key, cfg) as other:
        assert other is None


def test_redis_claim_expires_after_its_ttl(tiny_config):
    import redis

    cfg = tiny_config("deploy.lock_url=redis://127.0.0.1:6379/0", "deploy.lock_ttl_s=60")
    key = f"drop-{uuid.uuid4().hex[:8]}"
    conn = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    with claim(key, cfg) as other:
        assert other is None
        ttl = conn.ttl(f"freshtune:claim:{key}")
        assert 0 < ttl <= 60
    assert conn.get(f"freshtune:claim:{key}") is None
