"""Alerts from the real Prefect server to a real webhook receiver on 127.0.0.1: each kind once
per event, with the run's link, never the webhook's secret or a value from the data."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from uuid import UUID

import pytest

from deployments.alerts import PREFIX, ensure_alerts, read_automation
from flows.decay import decay_monitor
from flows.refresh import refresh
from flows.rollback import rollback
from freshtune import faults
from freshtune.errors import DropRejected
from tests.helpers.servers import WebhookReceiver

KINDS = ("review_waiting", "cycle_failed", "drop_rejected", "champion_moved", "decayed")
EMAIL = "jane.doe@example.com"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture
def alerting(tiny_config, receiver):
    """A config whose alerts go to the receiver, its automations applied; all gone after."""

    def make(*overrides: str):
        return tiny_config(f"deploy.alerts.webhooks=[{receiver.url}]", *overrides)

    assert len(ensure_alerts(make())) == len(KINDS)
    yield make
    assert ensure_alerts(tiny_config()) == []  # no destination: every alert automation goes
    assert all(read_automation(PREFIX + k.replace("_", " ")) is None for k in KINDS)


def _link(message: dict) -> str:
    return message["body"].rsplit("\n", 1)[-1]


def _run_id_of(message: dict) -> str:
    link = _link(message)
    assert "/runs/flow-run/" in link, message
    return link.rsplit("/", 1)[-1]


def test_every_alert_kind_reaches_the_webhook_once_per_event(
    alerting, receiver, demo_drops, tmp_path
):
    cfg = alerting("review.mode=auto")
    first = refresh(str(demo_drops[0]), cfg)
    [promoted] = receiver.wait_for(1, "promoted to version 1")
    assert "version none -> 1 (promoted)" in promoted["body"] and "vs base" in promoted["body"]

    paused = alerting("review.mode=pause", "review.timeout_s=600")
    thread = threading.Thread(target=refresh, args=(str(demo_drops[1]), paused), daemon=True)
    thread.start()
    [waiting] = receiver.wait_for(1, "waits for a candidate review")
    run_id = _run_id_of(waiting)
    assert "vs champion" in waiting["body"] and "% (" in waiting["body"]  # rules, intervals
    _approve(run_id)
    thread.join(300)
    [moved] = receiver.wait_for(1, "promoted to version 2")
    assert _run_id_of(moved) == run_id

    rollback(cfg, reason="alert test")
    [back] = receiver.wait_for(1, "rolled back to version 1")
    assert "version 2 -> 1 (rolled back)" in back["body"]

    bad = tmp_path / "broken.jsonl"
    bad.write_text(f'{{"id": "1", "messages": [{{"role": "user", "content": "{EMAIL}"')
    with pytest.raises(DropRejected):
        refresh(str(bad), cfg)
    [rejected] = receiver.wait_for(1, "rejected by rule")
    assert "broken.jsonl line 1 broke rule" in rejected["body"]

    faults.when("stage", _raise)
    refresh_state = refresh(str(demo_drops[2]), cfg, return_state=True)
    assert refresh_state.is_failed()
    [failed] = receiver.wait_for(1, "Failed")
    assert "refresh run" in failed["subject"] and "injected" in failed["body"]
    assert _run_id_of(failed) == str(refresh_state.state_details.flow_run_id)

    decay_monitor(alerting("deploy.decay_min_accuracy=1.0"))
    [decayed] = receiver.wait_for(1, "decayed")
    assert "below 100.0%" in decayed["body"]

    assert first["promoted"]
    _assert_once_each(receiver)


def _assert_once_each(receiver: WebhookReceiver) -> None:
    """Late duplicates would arrive within seconds; none may, and nothing secret or personal
    was sent."""
    time.sleep(8)
    subjects = sorted(m["subject"].split(":", 1)[1] for m in receiver.received)
    assert len(subjects) == 7, subjects  # 3 champion moves, 1 review, 1 each of the rest
    assert all(m["path"] == f"/hook/{receiver.token}" for m in receiver.received)
    for message in receiver.received:
        text = message["text"]
        assert receiver.token not in text and EMAIL not in text
        assert message["text"] == f"{message['subject']}\n{message['body']}"
        UUID(_run_id_of(message))  # every alert ends with its run's page in the Prefect UI


def _raise() -> None:
    raise RuntimeError("injected: a stage broke")


def _approve(run_id: str) -> None:
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(run_id, run_input={"approve": True, "comment": "ok", "reviewer": "ana"})


def test_the_webhook_url_is_kept_secret_in_prefect(alerting, receiver):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    alerting()
    saved = CustomWebhookNotificationBlock.load("freshtune-alert-0")
    assert receiver.token not in saved.url and receiver.token not in str(saved.model_dump())
    automation = read_automation(PREFIX + "review waiting")
    assert receiver.token not in automation.model_dump_json()


def test_an_unknown_notification_block_is_named(tiny_config):
    with pytest.raises(ValueError, match="no Prefect block 'slack-webhook/nope'"):
        ensure_alerts(tiny_config("deploy.alerts.blocks=[slack-webhook/nope]"))
