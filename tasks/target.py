"""Train to a target: stop a cycle once the month's facts are learned, not after a fixed count.

A seeded sample of the cycle's own new training questions (never an evaluation row), and with
`train.target_replay_sample` of the earlier rows it replays, is asked at every epoch boundary;
when the share answered right reaches `train.target_recall` (and `train.target_min_epochs` are
done) the Trainer stops, else it runs to `train.max_epochs`. The recall curve goes to the step
metrics, the Trainer's log history (so it survives a resume) and the adapter's
train_result.json.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any

from freshtune.config import EvalSettings, TrainSettings
from tasks.ingest import response_of
from tasks.metrics import recalled

log = logging.getLogger(__name__)
RECALL_KEY = "target_recall"
HOLD_OUT_FROM = 3  # wordings a fact needs before one is held out: two still train it


@dataclass(frozen=True)
class Probe:
    rows: list[dict[str, Any]]
    target: float
    epochs: float  # the budget: the Trainer is scheduled for this many
    settings: EvalSettings
    min_epochs: float = 1.0  # no stop before this many, whatever the recall


def build_probe(
    rows: list[dict[str, Any]],
    settings: TrainSettings,
    seed: int,
    held_out: list[dict[str, Any]] | None = None,
) -> Probe | None:
    """The questions that say whether this cycle learned its facts, and with
    `target_replay_sample`, still knows the earlier ones it replays; None: fixed epochs.
    `held_out` (`hold_out_wordings`) stand in for the new rows when there are any."""
    if settings.target_recall is None:
        return None
    new = held_out or own_rows(rows)
    fixes = [r for r in rows if r.get("origin") == "review"]
    if not new and not fixes:
        return None
    rng = random.Random(f"probe-{seed}")
    picked = probe_sample(new, fixes, settings.target_sample, rng)
    replay = [r for r in rows if r.get("origin") == "replay"]
    picked += rng.sample(replay, min(settings.target_replay_sample, len(replay)))
    # Long enough for the longest reference answer to be restated, short enough to be cheap.
    words = max(len((response_of(r) or "").split()) for r in picked)
    budget = min(settings.max_length // 2, 2 * words + 8)
    probe_settings = EvalSettings(max_new_tokens=budget, batch_size=2 * settings.batch_size)
    target = settings.target_recall
    return Probe(picked, target, settings.epochs, probe_settings, settings.target_min_epochs)


def own_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("origin") == "new"] or [r for r in rows if "origin" not in r]


def hold_out_wordings(
    rows: list[dict[str, Any]], settings: TrainSettings, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows to train, rows held out). With `target_held_out`: of up to `target_sample` of
    the month's new facts taught in `HOLD_OUT_FROM` or more wordings (rows with the same
    answer), one wording is not trained this cycle; the probe asks it, so the target
    measures the fact learned rather than its question memorised."""
    if settings.target_recall is None or not settings.target_held_out:
        return rows, []
    by_answer: dict[str, list[dict[str, Any]]] = {}
    for row in own_rows(rows):
        by_answer.setdefault(" ".join((response_of(row) or "").lower().split()), []).append(row)
    facts = [group for answer, group in sorted(by_answer.items()) if answer]
    facts = [group for group in facts if len(group) >= HOLD_OUT_FROM]
    rng = random.Random(f"held-out-{seed}")
    held = [rng.choice(g) for g in rng.sample(facts, min(settings.target_sample, len(facts)))]
    ids = {id(r) for r in held}
    # The mix's manifest lists every row; the log says which of them this cycle did not train.
    log.info("target probe: %d wordings held out of training: %s", len(held), _ids(held))
    return [r for r in rows if id(r) not in ids], held


def _ids(rows: list[dict[str, Any]], shown: int = 8) -> str:
    names = [str(r.get("id")) for r in rows[:shown]]
    return ", ".join(names) + (f" and {len(rows) - shown} more" if len(rows) > shown else "")


def probe_sample(
    new: list[dict[str, Any]], fixes: list[dict[str, Any]], n: int, rng: random.Random
) -> list[dict[str, Any]]:
    """`n` questions, the month's new rows first: corrections get a quarter, or what the new
    rows leave. Drawn in proportion from both, months of easy refusals (58 corrections against
    21 new rows) met the target after one epoch, and the cycle knew 70% of its new facts."""
    fix_n = min(len(fixes), max(n - len(new), n // 4))
    picked = rng.sample(new, min(len(new), n - fix_n))
    return picked + rng.sample(fixes, fix_n)


def probe_recall(model: Any, tokenizer: Any, probe: Probe) -> float:
    """Share of the probe's questions answered with what their training row teaches."""
    from tasks.chat import generate_answers

    was_training = model.training
    model.eval()
    try:
        answers = generate_answers(model, tokenizer, probe.rows, probe.settings)
    finally:
        model.train(was_training)
    return sum(recalled(a, r) for a, r in zip(answers, probe.rows)) / len(probe.rows)


def recall_curve(log_history: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(epoch, recall) pairs from the Trainer's log history, in order."""
    return [(h["epoch"], h[RECALL_KEY]) for h in log_history if RECALL_KEY in h]


def target_callback(probe: Probe, tokenizer: Any, sink: Any) -> Any:
    """Asks the probe at every epoch boundary (in steps, so a plan that holds every epoch in
    one pass is checked too) and stops the Trainer at the target. Every process asks, so
    all stop together (FSDP needs every rank in a generate call anyway)."""
    from transformers import TrainerCallback

    class TargetCallback(TrainerCallback):
        every = 1

        def on_train_begin(self, args, state, control, **kwargs):
            self.every = max(1, math.ceil(state.max_steps / probe.epochs))

        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            if step % self.every and step != state.max_steps:
                return
            recall = probe_recall(model, tokenizer, probe)
            epoch = round(step / self.every, 2)
            state.log_history.append({"epoch": epoch, "step": step, RECALL_KEY: recall})
            if sink is not None and state.is_world_process_zero:
                sink({RECALL_KEY: recall, "target_epoch": epoch}, step)
            if recall >= probe.target and epoch >= probe.min_epochs:
                control.should_training_stop = True

    return TargetCallback()


def stop_reason(curve: list[tuple[float, float]], probe: Probe | None) -> str:
    if probe is None:
        return "fixed epochs"
    if curve and curve[-1][1] >= probe.target:
        return f"target recall {probe.target:.2f} reached"
    return f"max_epochs={probe.epochs:g} reached below target recall {probe.target:.2f}"
