"""The events freshtune sends to the Prefect server: some start deployments (a drop landed, the
champion decayed), some tell people what happened through the alert automations that
`freshtune deploy` creates (deployments/alerts.py).

An alert event carries numbers, file names, rules and versions: never a secret or a value from
the data. Its id is derived from what it reports, so a retried task or a rerun of the same
drop sends the same id and the server's triggers act on it once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

log = logging.getLogger(__name__)

DROP_LANDED = "freshtune.drop.landed"
MODEL_DECAYED = "freshtune.model.decayed"
DROP_REJECTED = "freshtune.drop.rejected"
REVIEW_WAITING = "freshtune.review.waiting"
CHAMPION_MOVED = "freshtune.champion.moved"

_IDS = uuid.UUID("5f1e0c3a-9d7b-4c55-8f0e-7a1d2b3c4d5e")


def event_id(event: str, key: str) -> uuid.UUID:
    """The same (event, key), the same id: Prefect's triggers see a repeat as already seen."""
    return uuid.uuid5(_IDS, f"{event}:{key}")


def emit(
    event: str, resource_id: str, name: str, payload: dict[str, Any], key: str | None = None
) -> str:
    """Inside a flow run through Prefect's events worker (related to the run); outside one,
    straight to the server, so that a CLI process does not exit before the event is sent."""
    from prefect.context import FlowRunContext
    from prefect.events import Event, emit_event
    from prefect.events.clients import get_events_client

    resource = {"prefect.resource.id": resource_id, "prefect.resource.name": name}
    ident = event_id(event, key) if key else uuid.uuid4()
    if FlowRunContext.get() is not None:
        sent = emit_event(event=event, resource=resource, payload=payload, id=ident)
        return str(sent.id) if sent else ""
    message = Event(event=event, resource=resource, payload=payload, id=ident)

    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(message)

    asyncio.run(send())
    log.info("emitted %s for %s", event, resource_id)
    return str(message.id)


def announce(event: str, resource_id: str, name: str, payload: dict[str, Any], key: str) -> None:
    """An alert's event, sent only from inside a flow run: there the run's Prefect server is
    known and the event links to the run; a bare CLI call may have no server at all."""
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    emit(event, resource_id, name, payload, key)


def drop_rejected(file: str, digest: str, rule: str, line: int | None) -> None:
    """Rule, file and line only: a rejection's detail may quote the data."""
    payload = {"file": file, "rule": rule, "line": line, "digest": digest[:16]}
    announce(DROP_REJECTED, f"freshtune.drop.{digest[:16]}", file, payload, digest)


def review_waiting(what: str, summary: str, model: str) -> None:
    """A reviewer's form waits on this flow run (`what`: candidate or drift)."""
    from prefect.runtime import flow_run

    payload = {"what": what, "summary": summary, "model": model}
    key = f"{flow_run.id}:{what}"
    announce(REVIEW_WAITING, f"freshtune.review.{flow_run.id}", what, payload, key)


def champion_moved(model: str, action: str, version: str, previous: str | None, summary: str):
    """`action`: promoted or rolled back; once per (version, action, previous)."""
    payload = {
        "action": action,
        "model": model,
        "version": version,
        "previous": previous,
        "summary": summary,
    }
    key = f"{model}:{action}:{previous}->{version}"
    announce(CHAMPION_MOVED, f"freshtune.model.{model}", model, payload, key)
