"""Reviews that wait for a person: where the run waits, and a deadline no process has to keep.

A review is asked once per subject (a drop's drift, or one candidate version). The first run
that asks records its deadline (`review.timeout_s` from then) in the artifact store, and every
later run of the drop keeps it; the answer is recorded there too. So a run after a crash does
not ask again, and a run that reaches the review after the deadline with no answer takes it
as a rejection without asking (a suspended run that nobody resumed is failed by Prefect's
server, where none of our code runs).

In a deployment's run (with `review.suspend`) the run is suspended: its process exits and the
worker is free; an answer reschedules the run, which starts again from the top and, at the
same suspension (the same key), gets the answer. Elsewhere (`freshtune refresh`, tests, a
refresh inside monthly-refresh) the run pauses in process. A suspended run carries the tag
`freshtune-review-<digest16>`: another run of the drop sees it waiting and stands down.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput

from freshtune.config import FreshtuneConfig
from tasks import store
from tasks.pii import scrub_text

log = logging.getLogger(__name__)

Answer = dict[str, Any]
RESUME_CLAIM_WAIT_S = 120.0  # a duplicate run holds the drop's claim only while it stands down


@dataclass(frozen=True)
class Request:
    """A review asked for: by which flow run, when, and until when an answer counts."""

    key: str
    flow_run_id: str
    requested_at: float
    deadline: float

    def remaining_s(self) -> float:
        return self.deadline - time.time()


def review_key(digest: str, subject: str) -> str:
    """`<digest16>-drift` or `<digest16>-v<version>`: one review of one drop or candidate."""
    return f"{digest[:16]}-{subject}"


def waiting_tag(digest: str) -> str:
    return f"freshtune-review-{digest[:16]}"


def ask(
    form: type[RunInput],
    description: str,
    digest: str,
    subject: str,
    cfg: FreshtuneConfig,
    announce: Callable[[], None],
) -> Answer | None:
    """The reviewer's answer (the form's fields, PII-scrubbed), or None when the deadline
    passed without one. `announce` runs only when the run really starts waiting."""
    key = review_key(digest, subject)
    if (answer := recorded_answer(cfg, key)) is not None:
        log.info("review %s was answered in an earlier run; not asking again", key)
        return answer
    request = requested(cfg, key)
    suspend = can_suspend(cfg)
    resumed = suspend and fired_here(key)  # answered: the answer counts whatever the time
    if not resumed and request.remaining_s() <= 0:
        log.warning("review %s: no answer by its deadline %s: a rejection", key, _iso(request))
        return None
    if not resumed:
        announce()
    wanted = form.with_initial_data(description=description)  # one screen: report and form
    got = _suspend(wanted, key, digest, request) if suspend else _pause(wanted, request)
    if got is None:
        return None
    answer = _scrubbed(got.model_dump(mode="json"))
    record_answer(cfg, key, answer)
    return answer


def _pause(form: type[RunInput], request: Request) -> RunInput | None:
    """Wait in this process; None when the deadline passes first."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    timeout = max(1, math.ceil(request.remaining_s()))
    try:
        return pause_flow_run(wait_for_input=form, timeout=timeout, poll_interval=1)
    except FlowPauseTimeout:
        log.warning("no review within %d s: treated as a rejection", timeout)
        return None


def _suspend(form: type[RunInput], key: str, digest: str, request: Request) -> RunInput:
    """Suspend the run (this process exits) until answered; a run rescheduled by the answer
    gets it here, at the same key."""
    from prefect.flow_runs import suspend_flow_run

    if not fired_here(key):
        tag_this_run(waiting_tag(digest))
    timeout = max(1, math.ceil(request.remaining_s()))
    return suspend_flow_run(wait_for_input=form, timeout=timeout, key=key)


def can_suspend(cfg: FreshtuneConfig) -> bool:
    """Prefect suspends only a top-level flow run of a deployment."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    if run is None or not cfg.review.suspend:
        return False
    return run.deployment_id is not None and run.parent_task_run_id is None


def fired_here(key: str) -> bool:
    """Whether this flow run was suspended at `key` before this attempt (and so resumed)."""
    return key in _fired_keys()


def resumed_after_review() -> bool:
    """This attempt runs because a reviewer answered a suspended review."""
    return bool(_fired_keys())


def _fired_keys() -> set[str]:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    return set(run.empirical_policy.pause_keys or ()) if run is not None else set()


def tag_this_run(tag: str) -> None:
    from prefect import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
        client.update_flow_run(run.id, tags=sorted({*run.tags, tag}))


def requested(cfg: FreshtuneConfig, key: str) -> Request:
    """The review's request as first recorded, or recorded now (its deadline never moves)."""
    if (found := _read(cfg, key)) is not None:
        return Request(**found)
    from prefect.runtime import flow_run

    now = time.time()
    request = Request(key, str(flow_run.id or ""), now, now + cfg.review.timeout_s)
    _write(cfg, key, asdict(request))
    log.info("review %s asked; unanswered by %s it is a rejection", key, _iso(request))
    return request


def recorded_answer(cfg: FreshtuneConfig, key: str) -> Answer | None:
    return _read(cfg, f"{key}-answer")


def record_answer(cfg: FreshtuneConfig, key: str, answer: Answer) -> None:
    _write(cfg, f"{key}-answer", answer)


def _read(cfg: FreshtuneConfig, key: str) -> dict[str, Any] | None:
    found = store.find(cfg, store.REVIEWS, key, cfg.paths.reviews / f"{key}.json")
    return None if found is None else json.loads(found.read_text(encoding="utf-8"))


def _write(cfg: FreshtuneConfig, key: str, data: dict[str, Any]) -> None:
    """Into the artifact store (the first record of a key stays: `store.put` keeps it)."""
    with tempfile.TemporaryDirectory(prefix="freshtune-review-") as tmp:
        path = Path(tmp) / f"{key}.json"
        path.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        store.put(cfg, store.REVIEWS, key, path)


def _scrubbed(answer: Answer) -> Answer:
    """A reviewer's words are stored and trained on: PII in them is scrubbed first."""
    scrubbed = {**answer, "comment": scrub_text(answer.get("comment", ""))}
    if "flags" in answer:
        scrubbed["flags"] = [{**f, "correct": scrub_text(f["correct"])} for f in answer["flags"]]
    return scrubbed


def _iso(request: Request) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(request.deadline))


def waiting_run(digest: str) -> str | None:
    """Another flow run suspended for a review of this drop, or resuming after one: who it
    is, else None (a suspension past its deadline is over: Prefect fails it)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.runtime import flow_run

    alive = [StateType.PAUSED, StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
    wanted = FlowRunFilter(
        tags=FlowRunFilterTags(all_=[waiting_tag(digest)]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=alive)),
    )
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=wanted)
    for run in runs:
        if str(run.id) != flow_run.id and not _expired(run.state):
            return f"flow-run {run.id} ({run.state_name}: waiting for review)"
    return None


def _expired(state: Any) -> bool:
    timeout = state.state_details.pause_timeout if state is not None else None
    return bool(state.is_paused() and timeout is not None and timeout.timestamp() < time.time())


@task(name="find-waiting-review", cache_policy=NO_CACHE)
def find_waiting_review(digest: str) -> str | None:
    """A drop whose review waits on a suspended run is that run's: this one stands down."""
    if (holder := waiting_run(digest)) is not None:
        log.info("drop %s waits for review in %s", digest[:12], holder)
    return holder


def claim_wait_s() -> float:
    """A run resumed after its review waits for the drop's claim (a duplicate run may hold it
    for the moment it takes to stand down); any other run stands down at once."""
    return RESUME_CLAIM_WAIT_S if resumed_after_review() else 0.0
