"""Snapshot numbering: drops committed at once still get one landing order."""

import threading
from pathlib import Path

import pytest

from tasks.curate import curate
from tasks.snapshot import commit_snapshot, list_snapshots
from tests.helpers import servers
from tests.helpers.rows import chat_row


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_drops_committed_at_once_get_distinct_sequence_numbers(tiny_config, backend):
    import uuid

    overrides = [f"deploy.lock_url={servers.redis_url()}"] if backend == "redis" else []
    cfg = tiny_config(*overrides, f"tracking.experiment=seq-{uuid.uuid4().hex[:6]}")
    start = threading.Barrier(4)
    committed, errors = [], []

    def commit(i: int) -> None:
        curated, _ = curate([chat_row(str(i), f"Q{i}?", f"A{i}.")], set(), set())
        start.wait()
        try:
            committed.append(commit_snapshot(curated, f"{i}" * 64, Path(f"{i}.jsonl"), cfg))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert sorted(s.sequence for s in committed) == [1, 2, 3, 4]
    assert [s.sequence for s in list_snapshots(cfg)] == [1, 2, 3, 4]
