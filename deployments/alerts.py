"""Alerts: Prefect automations that send a notification when something needs a person.

`freshtune deploy` creates one automation per alert kind (`deploy.alerts.kinds`), each sending
through every destination: a Custom Webhook block per `deploy.alerts.webhooks` URL (kept in
the block's secrets, never in its readable fields) and any notification block already saved in
Prefect (`deploy.alerts.blocks`). The server renders each message when the event arrives, with
the run's link; the events carry numbers, rules, file names and versions, never a secret or a
value from the data (tasks/events.py).

| kind | event | says |
|---|---|---|
| review_waiting | `freshtune.review.waiting` | the gate's verdict and rules; link to the form |
| cycle_failed | a freshtune flow run Failed, Crashed or TimedOut | state message; link |
| drop_rejected | `freshtune.drop.rejected` | file, line, rule, digest; link |
| champion_moved | `freshtune.champion.moved` | promoted or rolled back, from and to |
| decayed | `freshtune.model.decayed` | accuracy against the threshold |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from freshtune.config import AlertKind, FreshtuneConfig
from tasks.events import CHAMPION_MOVED, DROP_REJECTED, MODEL_DECAYED, REVIEW_WAITING

PREFIX = "freshtune alert: "
WEBHOOK_BLOCK = "freshtune-alert"
FLOWS = ["refresh", "monthly-refresh", "decay-monitor", "rollback", "train-on-gpu"]
LINK = "\n@LINK@"  # the run's page in the Prefect UI, see `run_link`


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    events: tuple[str, ...]
    subject: str
    body: str


ALERTS = (
    Alert(
        "review_waiting",
        (REVIEW_WAITING,),
        "freshtune: {{ flow_run.name }} waits for a {{ event.payload.what }} review",
        "{{ event.payload.summary }}\nApprove or reject in the Prefect UI:" + LINK,
    ),
    Alert(
        "cycle_failed",
        tuple(f"prefect.flow-run.{s}" for s in ("Failed", "Crashed", "TimedOut")),
        "freshtune: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}",
        "{{ flow_run.state.message }}" + LINK,
    ),
    Alert(
        "drop_rejected",
        (DROP_REJECTED,),
        "freshtune: drop {{ event.payload.file }} rejected by rule {{ event.payload.rule }}",
        "{{ event.payload.file }}{% if event.payload.line %} line {{ event.payload.line }}"
        "{% endif %} broke rule {{ event.payload.rule }}: the drop (digest "
        "{{ event.payload.digest }}) is quarantined with its report; nothing was trained." + LINK,
    ),
    Alert(
        "champion_moved",
        (CHAMPION_MOVED,),
        "freshtune: {{ event.payload.model }} champion {{ event.payload.action }} to version "
        "{{ event.payload.version }}",
        "champion: version {{ event.payload.previous or 'none' }} -> "
        "{{ event.payload.version }} ({{ event.payload.action }}). {{ event.payload.summary }}"
        + LINK,
    ),
    Alert(
        "decayed",
        (MODEL_DECAYED,),
        "freshtune: {{ event.payload.model }} champion v{{ event.payload.version }} decayed",
        "accuracy {{ (100 * event.payload.accuracy)|round(1) }}% on "
        "{{ event.payload.questions }} questions ({{ event.payload.source }}), below "
        "{{ (100 * event.payload.threshold)|round(1) }}%: a monthly refresh is triggered." + LINK,
    ),
)


def automation(alert: Alert, blocks: list[UUID]) -> Any:
    """One alert kind: every event of it, once, to every destination."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    related = {}
    if alert.kind == "cycle_failed":  # only freshtune's own flows, deployed or run by hand
        related = {"prefect.resource.role": "flow", "prefect.resource.name": FLOWS}
    return Automation(
        name=PREFIX + alert.kind.replace("_", " "),
        description=f"freshtune deploy: notify on {', '.join(alert.events)}",
        trigger=EventTrigger(
            expect=set(alert.events),
            match_related=ResourceSpecification(related),
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=b,
                subject=alert.subject,
                body=alert.body.replace("@LINK@", run_link()),
            )
            for b in blocks
        ],
    )


def run_link() -> str:
    """The UI address as the deploying client knows it (PREFECT_UI_URL, by default its API URL
    less `/api`): a server started without PREFECT_UI_URL renders `ui_url` as None."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    if not base:
        return "{{ flow_run|ui_url }}"
    return base.rstrip("/") + "/runs/flow-run/{{ flow_run.id }}"


def webhook_blocks(urls: list[str]) -> list[UUID]:
    """A Custom Webhook block per URL, the URL in its secrets; blocks of removed URLs go."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    ids = []
    for i, url in enumerate(urls):
        block = CustomWebhookNotificationBlock(
            name=f"{WEBHOOK_BLOCK}-{i}",
            url="{{url}}",
            json_data={
                "text": "{{subject}}\n{{body}}",
                "subject": "{{subject}}",
                "body": "{{body}}",
            },
            secrets={"url": url},
        )
        ids.append(block.save(f"{WEBHOOK_BLOCK}-{i}", overwrite=True))
    _delete_webhook_blocks(start=len(urls))
    return ids


def _delete_webhook_blocks(start: int) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    index = start
    while True:
        try:
            CustomWebhookNotificationBlock.delete(f"{WEBHOOK_BLOCK}-{index}")
        except ValueError:  # not there: the rest never were
            return
        index += 1


def saved_blocks(slugs: list[str]) -> list[UUID]:
    """Notification blocks ops saved in Prefect (`slack-webhook/ops`); a missing one is named."""
    from prefect.blocks.core import Block

    ids = []
    for slug in slugs:
        try:
            block = Block.load(slug)
        except ValueError as exc:
            raise ValueError(f"deploy.alerts.blocks: no Prefect block {slug!r} ({exc})") from None
        if "notify" not in block.get_block_capabilities():
            raise ValueError(f"deploy.alerts.blocks: {slug!r} is not a notification block")
        ids.append(block._block_document_id)
    return ids


def ensure_alerts(cfg: FreshtuneConfig) -> list[str]:
    """The alert automations the config asks for, created or updated; the others deleted
    (the config is the truth). Without a destination there are none."""

    settings = cfg.deploy.alerts
    blocks = webhook_blocks(settings.webhook_urls()) + saved_blocks(settings.blocks)
    applied = []
    for alert in ALERTS:
        wanted = automation(alert, blocks)
        found = read_automation(wanted.name)
        if not blocks or alert.kind not in settings.kinds:
            if found is not None:
                found.delete()
            continue
        if found is None:
            wanted.create()
        else:
            wanted.id = found.id
            wanted.update()
        applied.append(wanted.name)
    return applied


def read_automation(name: str) -> Any:
    from prefect.automations import Automation

    try:
        return Automation.read(name=name)
    except ValueError:
        return None
