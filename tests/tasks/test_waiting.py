"""Reviews that wait: a deadline kept in the artifact store, answers not asked for twice, and
suspended runs that keep other runs of their drop away."""

import time

import pytest

from tasks import waiting
from tasks.review import ReviewInput

DIGEST = "ab" * 32


def _never(*_: object) -> None:
    raise AssertionError("asked or announced a review that must not be asked")


def test_the_first_request_sets_the_deadline_and_later_runs_keep_it(tiny_config):
    cfg = tiny_config("review.timeout_s=600")
    key = waiting.review_key(DIGEST, "v3")
    first = waiting.requested(cfg, key)
    assert 599 <= first.remaining_s() <= 600
    # Another run, another timeout setting: the deadline asked first holds.
    assert waiting.requested(tiny_config("review.timeout_s=5"), key) == first


def test_after_the_deadline_an_unanswered_review_is_not_asked_again(tiny_config, monkeypatch):
    cfg = tiny_config("review.mode=pause", "review.timeout_s=1")
    waiting.requested(cfg, waiting.review_key(DIGEST, "drift"))
    time.sleep(1.1)
    monkeypatch.setattr(waiting, "_pause", _never)
    assert waiting.ask(ReviewInput, "report", DIGEST, "drift", cfg, _never) is None


def test_a_recorded_answer_is_reused_scrubbed_and_not_asked_again(tiny_config, monkeypatch):
    cfg = tiny_config("review.mode=pause", "review.timeout_s=1")
    key = waiting.review_key(DIGEST, "v2")
    answer = {"reviewer": "ana", "approve": True, "comment": "ok", "flags": []}
    waiting.requested(cfg, key)
    waiting.record_answer(cfg, key, answer)
    time.sleep(1.1)  # an answer given in time counts after the deadline too
    monkeypatch.setattr(waiting, "_pause", _never)
    assert waiting.ask(ReviewInput, "report", DIGEST, "v2", cfg, _never) == answer
    scrubbed = waiting._scrubbed({**answer, "comment": "mail me at ana@example.com"})
    assert "ana@example.com" not in scrubbed["comment"]


def test_only_a_deployment_run_with_suspend_on_suspends(tiny_config):
    assert not waiting.can_suspend(tiny_config("review.mode=pause"))  # no flow run here
    assert waiting.claim_wait_s() == 0  # not resumed: a busy claim means stand down


def _run_in(state, tags: list[str]) -> str:
    from prefect import flow, get_client

    @flow(name="suspended-review-probe")
    def probe() -> None:
        pass

    with get_client(sync_client=True) as client:
        return str(client.create_flow_run(probe, tags=tags, state=state).id)


def test_a_run_suspended_for_a_drops_review_keeps_its_other_runs_away(prefect_harness):
    from prefect.states import Completed, Suspended

    digest = f"{time.time_ns():016x}" + "0" * 48
    tag = waiting.waiting_tag(digest)
    _run_in(Completed(), [tag])  # done: holds nothing
    _run_in(Suspended(timeout_seconds=0), [tag])  # past its deadline: Prefect fails it
    assert waiting.waiting_run(digest) is None
    waiting_id = _run_in(Suspended(timeout_seconds=600), ["freshtune", tag])
    assert waiting_id in waiting.waiting_run(digest)
    assert waiting.waiting_run("cd" * 32) is None  # another drop is free


@pytest.fixture(autouse=True)
def _no_flow_run(monkeypatch):
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
