"""The training mix: the new rows plus a replay sample of earlier, still-current rows."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune.config import FreshtuneConfig
from tasks.snapshot import Snapshot, earlier_snapshots

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingMix:
    rows: list[dict[str, Any]]
    new_rows: int
    replay_rows: int
    drops: list[str]

    @property
    def replay_share(self) -> float:
        return self.replay_rows / max(1, len(self.rows))

    @property
    def digest(self) -> str:
        ids = sorted(f"{r['drop']}/{r['id']}" for r in self.rows)
        return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]

    def manifest(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "new_rows": self.new_rows,
            "replay_rows": self.replay_rows,
            "drops": self.drops,
            "rows": [f"{r['drop']}/{r['id']}" for r in self.rows],
        }


def current_rows(snapshots: list[Snapshot], split: str) -> list[tuple[int, dict[str, Any]]]:
    """Rows of `split`, oldest first, minus those a later snapshot supersedes.

    A later row with the same normalised prompt carries the newer truth (a price changed),
    so replaying or scoring the older row would teach or test a stale fact.
    """
    kept: list[tuple[int, dict[str, Any]]] = []
    later_prompts: set[str] = set()
    for age, snap in enumerate(reversed(snapshots)):
        rows = [r for r in snap.rows() if r["split"] == split]
        kept += [
            (age, {**r, "drop": snap.digest[:16]})
            for r in rows
            if r["prompt_key"] not in later_prompts
        ]
        later_prompts |= {r["prompt_key"] for r in rows}
    return kept


def build_mix(new: Snapshot, earlier: list[Snapshot], ratio: float, seed: int) -> TrainingMix:
    """New train rows + round(ratio x new) replayed rows, weighted toward recent drops."""
    fresh = [r for age, r in current_rows([*earlier, new], "train") if age == 0]
    pool = [(age, r) for age, r in current_rows([*earlier, new], "train") if age > 0]
    rng = random.Random(f"{seed}-{new.digest}")
    # Weighted sampling without replacement (Efraimidis-Spirakis); weight halves per drop of age.
    keyed = sorted(pool, key=lambda item: rng.random() ** (2.0 ** (item[0] - 1)), reverse=True)
    replay = [r for _, r in keyed[: round(ratio * len(fresh))]]
    rows = fresh + replay
    rng.shuffle(rows)
    log.info(
        "training mix: %d new + %d replayed rows from %d earlier drops",
        len(fresh),
        len(replay),
        len(earlier),
    )
    drops = sorted({r["drop"] for r in rows})
    return TrainingMix(rows, len(fresh), len(replay), drops)


@task(name="build-training-mix", cache_policy=NO_CACHE)
def build_training_mix(snapshot: Snapshot, cfg: FreshtuneConfig) -> TrainingMix:
    earlier = earlier_snapshots(cfg, snapshot.digest)
    return build_mix(snapshot, earlier, cfg.train.replay_ratio, cfg.seed)
