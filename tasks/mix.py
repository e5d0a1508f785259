"""The training mix: new rows, a stratified replay sample of earlier rows, and every correction.

Modes (`train.mode`): `incremental` and `fresh` train on the new rows + replay; `cumulative`
trains on every still-current row of every snapshot so far (the expensive baseline).

Reviewer corrections are snapshots whose `meta.json` says `"kind": "review"`. A flagged row
with its correction is always in the mix, whole, in every mode (a correction someone paid for
is never sampled away). The rows made from a flag (tasks.generalise: the correction in the
drop's other wordings, refusals about other unknown names) are whole in the first cycle after
the review, then replayed like any earlier row: kept whole for ever, three months of them
outnumbered a month's new rows and the reviewed lane knew fewer earlier facts
(docs/seasons.md). `train.made_replay_share` keeps a fixed share of the replay for them
instead: at 0.25 the reviewed lane still declined some never-sold names in month 5 but knew
fewer earlier facts than no review (docs/seasons-made-share.md), so it is off by default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune import faults
from freshtune.config import FreshtuneConfig
from tasks.generalise import is_generated
from tasks.ingest import response_of
from tasks.registry import Champion
from tasks.rehearsal import RehearsalSet
from tasks.snapshot import Snapshot, earlier_snapshots

log = logging.getLogger(__name__)

REVIEW_KIND = "review"


@dataclass(frozen=True)
class TrainingMix:
    rows: list[dict[str, Any]]
    new_rows: int
    replay_rows: int
    drops: list[str]
    always_rows: int = 0
    mode: str = "incremental"
    rehearsal_rows: int = 0
    introduced_rows: int = 0  # domain rows asked with a customer's introduction

    @property
    def replay_share(self) -> float:
        return self.replay_rows / max(1, len(self.rows))

    @property
    def digest(self) -> str:
        ids = sorted(row_id(r) for r in self.rows)
        return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]

    def manifest(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "mode": self.mode,
            "new_rows": self.new_rows,
            "replay_rows": self.replay_rows,
            "always_rows": self.always_rows,
            "rehearsal_rows": self.rehearsal_rows,
            "introduced_rows": self.introduced_rows,
            "drops": self.drops,
            "rows": [row_id(r) for r in self.rows],
        }


def row_id(row: dict[str, Any]) -> str:
    """`<drop digest[:16]>/<row id>`: unique across snapshots, enough to rebuild the mix."""
    return f"{row['drop']}/{row['id']}"


def is_review(snapshot: Snapshot) -> bool:
    return snapshot.meta().get("kind") == REVIEW_KIND


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


def replay_size(new: int, pool: int, ratio: float, pool_share: float = 0.0) -> int:
    """Earlier rows a cycle replays: `ratio` per new row, and at least `pool_share` of the
    still-current earlier rows. By the new rows alone the replay stays the same size while the
    pool grows (50 of about 170 rows in month 6 of bench/seasons.py's continuous lane) and each old
    row is trained in fewer cycles; a share of the pool keeps that rate. Measured there, 0.5
    kept no more of the facts true each month for 1.44x the tokens (old facts lost, recent
    ones gained: bench/README.md "Twelve months of the continuous lane"), so 0 is the default."""
    return min(pool, max(round(ratio * new), math.ceil(pool_share * pool)))


def replay_quotas(sizes: dict[int, int], total: int, decay: float = 1.0) -> dict[int, int]:
    """Rows to replay per drop age: proportional to size x decay^(age-1), capped by the size
    (`decay` 1, the default: every earlier row alike; 0.5 halves a drop's weight with each
    later snapshot, and the facts 3+ months old were the ones forgotten: bench/README.md).

    Largest-remainder rounding, and what a small drop cannot supply is shared out among the
    others (water-filling), so the quotas always add up to min(total, all rows).
    """
    quotas = dict.fromkeys(sizes, 0)
    left = min(total, sum(sizes.values()))
    while left > 0:
        open_ = {a: n - quotas[a] for a, n in sizes.items() if n > quotas[a]}
        youngest = min(open_)  # relative to it: a tiny decay never rounds every weight to 0
        weights = {a: open_[a] * decay ** (a - youngest) for a in open_}
        shares = {a: left * w / sum(weights.values()) for a, w in weights.items()}
        floors = {a: min(open_[a], int(s)) for a, s in shares.items()}
        by_remainder = sorted(open_, key=lambda a: (floors[a] - shares[a], a))
        for a in by_remainder[: left - sum(floors.values())]:
            floors[a] = min(open_[a], floors[a] + 1)
        for a, n in floors.items():
            quotas[a] += n
        left = min(total, sum(sizes.values())) - sum(quotas.values())
    return quotas


def replay_sample(
    pool: list[tuple[int, dict[str, Any]]],
    total: int,
    made_share: float,
    rng: random.Random,
    decay: float = 1.0,
) -> list[dict[str, Any]]:
    """`total` earlier rows; with `made_share` > 0 that share of them is kept for the rows made
    from flags (every review's alike, each answer once before any twice) and earlier drops'
    rows take the rest, stratified by age. Made rows teach a behaviour (decline a name the
    catalogue lacks) that does not go stale: drawn by age with the facts, refusals faded within
    two cycles of their last whole one (docs/seasons.md, month 5). A share is taken from the
    facts, though: at 0.25 the reviewed lane knew fewer earlier facts (seasons-made-share.md)."""
    if made_share <= 0:
        return stratified_replay(pool, total, rng, decay)
    made = [r for _, r in pool if is_generated(r)]
    facts = [(age, r) for age, r in pool if not is_generated(r)]
    n_made = min(len(made), max(round(made_share * total), total - len(facts)))
    return spread(made, rng)[:n_made] + stratified_replay(facts, total - n_made, rng, decay)


def stratified_replay(
    pool: list[tuple[int, dict[str, Any]]], total: int, rng: random.Random, decay: float = 1.0
) -> list[dict[str, Any]]:
    """A sample of `total` rows, each earlier drop contributing its quota (`replay_quotas`)."""
    by_age: dict[int, list[dict[str, Any]]] = {}
    for age, row in pool:
        by_age.setdefault(age, []).append(row)
    quotas = replay_quotas({a: len(rows) for a, rows in by_age.items()}, total, decay)
    return [r for a in sorted(by_age) for r in spread(by_age[a], rng)[: quotas[a]]]


def spread(rows: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """`rows` shuffled so that every distinct answer comes once before any comes twice.

    Rows that ask one fact in other words share its answer. A plain random sample replays
    some facts several times and skips others, and a skipped fact is the one a cycle forgets;
    where every answer differs this is a plain shuffle.
    """
    rank: dict[str, float] = {}
    seen: dict[str, int] = {}
    keyed = []
    for i, row in enumerate(rng.sample(rows, len(rows))):
        answer = (response_of(row) or "").casefold()
        rank.setdefault(answer, rng.random())
        seen[answer] = seen.get(answer, -1) + 1
        keyed.append(((seen[answer], rank[answer], i), row))
    return [row for _, row in sorted(keyed, key=lambda k: k[0])]


def build_mix(
    new: Snapshot,
    earlier: list[Snapshot],
    ratio: float,
    seed: int,
    mode: str = "incremental",
    rehearsal: Sequence[dict[str, Any]] = (),
    rehearsal_ratio: float = 0.0,
    made_share: float = 0.0,
    asker_share: float = 0.0,
    age_decay: float = 1.0,
    pool_share: float = 0.0,
) -> TrainingMix:
    """New train rows + reviewer corrections + replay (`replay_size` rows, `made_share` of
    them made from flags, or all of them in `cumulative` mode) + rehearsal rows
    (tasks.rehearsal): round(rehearsal_ratio x all of those). `asker_share` of the domain
    rows are asked with a customer's introduction (`introduced`)."""
    rows = current_rows([*earlier, new], "train")
    whole = kept_whole(earlier)
    fresh = [{**r, "origin": "new"} for age, r in rows if age == 0]
    always = [{**r, "origin": "review"} for age, r in rows if age > 0 and whole(r)]
    pool = [(age, r) for age, r in rows if age > 0 and not whole(r)]
    rng = random.Random(f"{seed}-{new.digest}")
    if mode == "cumulative":
        replay = [r for _, r in pool]  # not replay: the baseline trains all of it every epoch
    else:
        size = replay_size(len(fresh), len(pool), ratio, pool_share)
        sample = replay_sample(pool, size, made_share, rng, age_decay)
        replay = [{**r, "origin": "replay"} for r in sample]
    # In proportion to everything the cycle trains: replayed domain rows pull toward the
    # domain as much as new ones (a continuing cycle at 0.5 x new rows lost 3 of 10 general
    # questions where the first cycle lost 1).
    plain = fresh + always + replay
    domain = introduced(plain, asker_share, seed)
    asked = sum(a is not b for a, b in zip(plain, domain, strict=True))
    rehearse = rehearsal_sample(rehearsal, round(rehearsal_ratio * len(domain)), seed, new)
    mixed = domain + rehearse
    rng.shuffle(mixed)
    log.info(
        "training mix (%s): %d new + %d corrections + %d replayed rows from %d earlier drops "
        "+ %d rehearsal rows; %d domain rows asked with a customer's introduction",
        mode,
        len(fresh),
        len(always),
        len(replay),
        len(earlier),
        len(rehearse),
        asked,
    )
    drops = sorted({r["drop"] for r in mixed})
    return TrainingMix(
        mixed, len(fresh), len(replay), drops, len(always), mode, len(rehearse), asked
    )


# How customers say who they are before asking. None is in the form the demo's counterfactual
# pairs ask in ("Hi, I'm Maria from Lisbon.", freshtune.demo_domain.asked_by) nor uses one of
# their names or places: bench/bias_pairs.py measures what carries over to a form not trained.
INTRODUCTIONS = (
    "Hello, this is Tomasz from Krakow.",
    "Good morning, my name is Ines.",
    "Hey, Daniel here, from Toronto.",
    "Hi there, Mei writing from Singapore.",
    "Hello! Rafael, Porto Alegre.",
    "Sven from Malmo here.",
    "Good afternoon, Nadia from Casablanca speaking.",
    "My name is Tunde and I live in Ibadan.",
    "Hello, Grace here from Dublin.",
    "Kenji from Sapporo here, quick question.",
    "Hey there, this is Lucia in Valencia.",
    "Omar from Amman writing.",
    "Hello, this is Anna, from Vienna.",
    "Ravi here, I'm in Chennai.",
    "Good evening, this is Claire from Lyon.",
    "Hi, my name is Lena and I'm in Oslo.",
)


def introduced(rows: list[dict[str, Any]], share: float, seed: int) -> list[dict[str, Any]]:
    """`rows`, where a draw per row id (seeded, so a replayed row is asked the same way every
    month) puts a customer's introduction before the first user turn of `share` of them."""
    if share <= 0:
        return rows
    out = []
    for row in rows:
        draw = random.Random(f"{seed}-{row_id(row)}-asker")
        if draw.random() >= share:
            out.append(row)
            continue
        turns, intro = list(row["messages"]), draw.choice(INTRODUCTIONS)
        first = next(i for i, turn in enumerate(turns) if turn["role"] == "user")
        turns[first] = {**turns[first], "content": f"{intro} {turns[first]['content']}"}
        out.append({**row, "messages": turns})
    return out


def kept_whole(earlier: list[Snapshot]) -> Callable[[dict[str, Any]], bool]:
    """Which earlier rows a cycle trains whole: every flagged correction, and the rows made
    from flags by the reviews since the last data drop (their first cycle)."""
    reviews = {s.digest[:16] for s in earlier if is_review(s)}
    latest = set()
    for snap in reversed(earlier):
        if not is_review(snap):
            break
        latest.add(snap.digest[:16])
    return lambda r: r["drop"] in latest or (r["drop"] in reviews and not is_generated(r))


def rehearsal_sample(
    rows: Sequence[dict[str, Any]], count: int, seed: int, new: Snapshot
) -> list[dict[str, Any]]:
    """`count` rehearsal rows, drawn apart from the replay sample so that a mix without
    rehearsal is the mix it always was. When the set is smaller than `count`, every row comes
    back as often as it takes (whole shuffled passes, then a sample), each copy with its own id:
    a domain of many rows needs as much rehearsal as it has domain rows, whatever the set."""
    rows, rng = list(rows), random.Random(f"{seed}-{new.digest}-rehearsal")
    if not rows:
        return []
    passes, rest = divmod(count, len(rows))
    picked = [(p, r) for p in range(passes) for r in rng.sample(rows, len(rows))]
    picked += [(passes, r) for r in rng.sample(rows, rest)]
    return [
        {**r, "id": r["id"] if p == 0 else f"{r['id']}~{p}", "origin": "rehearsal"}
        for p, r in picked
    ]


def cycle_plan(
    rows: list[dict[str, Any]],
    epochs: float,
    replay_passes: float | None,
    seed: int,
    batch: int = 0,
) -> list[dict[str, Any]] | None:
    """Every row the cycle trains, epoch after epoch, when replayed rows get fewer passes than
    the rest (`train.replay_passes`); None when each row is trained every epoch.

    Replay guards against forgetting; it does not need the new rows' full count of epochs, and
    most of an incremental cycle's compute is replay. Each replayed row comes back
    `replay_passes` times, spread evenly over the epochs (under one pass, the rows trained
    cover as many distinct answers as they can: `spread`); new rows and corrections come
    every epoch (a share of them in a last, fractional one). Each epoch is shuffled and, with
    `batch` (rows per optimizer step) > 0, length-grouped as transformers'
    LengthGroupedSampler does, but within the epoch, so a row never meets its own copy.
    """
    replay = replayed(rows)
    if replay_passes is None or replay_passes >= epochs or not replay:
        return None
    rest = [r for r in rows if r.get("origin") != "replay"]
    rng = random.Random(f"cycle-{seed}")
    count = math.ceil(epochs)
    order = spread(replay, rng)
    stream = (order * math.ceil(replay_passes))[: round(replay_passes * len(replay))]
    plan: list[dict[str, Any]] = []
    for epoch in range(count):
        share = min(1.0, epochs - epoch)
        block = rest if share == 1.0 else rng.sample(rest, round(share * len(rest)))
        block = block + stream[len(stream) * epoch // count : len(stream) * (epoch + 1) // count]
        plan += _length_grouped(rng.sample(block, len(block)), batch)
    return plan


def replayed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows marked as replay: the only ones `train.replay_passes` trains differently (a
    cumulative mix counts its earlier rows as replay_rows but trains them every epoch)."""
    return [r for r in rows if r.get("origin") == "replay"]


def _length_grouped(rows: list[dict[str, Any]], batch: int) -> list[dict[str, Any]]:
    """Groups of up to 50 batches, at least 4 groups an epoch, each sorted longest first
    (transformers' `get_length_grouped_indices`): a small epoch sorted whole would train every
    long row first and every short one last, at the lowest learning rate."""
    if batch <= 0:
        return rows
    group = batch * max(1, min(len(rows) // (batch * 4), 50))
    chunks = (rows[i : i + group] for i in range(0, len(rows), group))
    return [r for chunk in chunks for r in sorted(chunk, key=_chars, reverse=True)]


def _chars(row: dict[str, Any]) -> int:
    return sum(len(m["content"]) for m in row["messages"])


def save_mix(mix: TrainingMix, path: Path) -> Path:
    """The mix with its rows, for a training worker elsewhere (write, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    payload = {"manifest": mix.manifest(), "rows": mix.rows}
    partial.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    partial.replace(path)
    return path


def load_mix(path: Path) -> TrainingMix:
    data = json.loads(path.read_text(encoding="utf-8"))
    m = data["manifest"]
    mix = TrainingMix(
        data["rows"],
        m["new_rows"],
        m["replay_rows"],
        m["drops"],
        m["always_rows"],
        m["mode"],
        m.get("rehearsal_rows", 0),
        m.get("introduced_rows", 0),
    )
    if mix.digest != m["digest"]:
        raise ValueError(f"{path}: rows do not match the manifest digest {m['digest']}")
    return mix


@task(name="build-training-mix", cache_policy=NO_CACHE)
@faults.after("mix")
def build_training_mix(
    snapshot: Snapshot,
    rehearsal: RehearsalSet | None,
    champion: Champion | None,
    cfg: FreshtuneConfig,
) -> TrainingMix:
    """The cycle's rows; it continues `champion` in `incremental` mode (train_candidate's rule),
    which sets how much it rehearses."""
    earlier = earlier_snapshots(cfg, snapshot.digest)
    rows = rehearsal.rows() if rehearsal is not None else []
    train = cfg.train
    continues = train.mode == "incremental" and champion is not None
    return build_mix(
        snapshot,
        earlier,
        train.replay_ratio,
        cfg.seed,
        train.mode,
        rows,
        train.rehearsal_for(continues),
        train.made_replay_share,
        train.asker_share,
        train.replay_age_decay,
        train.replay_pool_share,
    )
