"""`decay-monitor`: weekly, score the champion on the newest eval data; raise the alarm.

Below `deploy.decay_min_accuracy` it emits `freshtune.model.decayed`, which the deployed
automation turns into a `monthly-refresh` run (every drop landed since the last cycle).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from freshtune.config import FreshtuneConfig
from tasks.decay import check_champion_health, raise_decay_alarm
from tasks.policy import enforce_policy
from tasks.registry import find_champion


@flow(name="decay-monitor")
def decay_monitor(config: FreshtuneConfig) -> dict[str, Any]:
    """The champion's accuracy on the newest eval data, and the event when it decayed."""
    config = config.on_this_worker()
    enforce_policy(config)
    champion = find_champion(config)
    if champion is None:
        return {"decayed": False, "reason": "no champion yet"}
    health = check_champion_health(champion, config)
    return raise_decay_alarm(health, config)
