"""Expert review: a report of what changed, a human decision, and flags that teach the next cycle.

`review.mode`: `auto` skips the human (unattended runs, said so in the report); `pause` stops
the flow run at a form in the Prefect UI (or `freshtune review approve|reject RUN_ID`):
suspended in a deployment's run, paused in process elsewhere (tasks/waiting.py);
`terminal` asks the same questions on the terminal that runs the flow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from pydantic import BaseModel, Field

from freshtune import faults
from freshtune.config import FreshtuneConfig, ReviewSettings
from tasks import events, waiting
from tasks.gate import GateDecision, Scores, check_record, checks_table
from tasks.ingest import prompt_of
from tasks.pii import scrub_text
from tasks.snapshot import Snapshot, commit_snapshot
from tasks.stats import wilson

log = logging.getLogger(__name__)

FLAG_KINDS = ("hallucination", "wrong_fact", "tone")


class Flag(BaseModel):
    id: str
    kind: Literal["hallucination", "wrong_fact", "tone"] = "wrong_fact"
    correct: str = ""


class ReviewInput(RunInput):
    """The form the Prefect UI shows on the paused run."""

    reviewer: str = Field(min_length=1, description="your name, recorded with the decision")
    approve: bool = False
    comment: str = ""
    flags: list[Flag] = Field(default_factory=list)


@dataclass(frozen=True)
class ReviewOutcome:
    approved: bool
    mode: str
    comment: str = ""
    reviewer: str = ""
    flags: list[Flag] = field(default_factory=list)
    timed_out: bool = False

    def flag_counts(self) -> dict[str, float]:
        counts = Counter(f.kind for f in self.flags)
        return {f"review_flags_{kind}": float(counts.get(kind, 0)) for kind in FLAG_KINDS}


def _cell(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _with_interval(score, metric: str) -> str:
    """ "76.5% (52.7–90.4)": the rate and its 95% Wilson interval."""
    hits = score.counted(metric)
    if not hits:
        return _cell(getattr(score, metric))
    _, low, high = wilson(sum(hits), len(hits))
    return f"{_cell(getattr(score, metric))} ({100 * low:.0f}–{100 * high:.0f})"


def _regressed(scores: dict, model: str, metric: str) -> bool:
    cand, other = scores.get("candidate"), scores.get(model)
    if not cand or not other:
        return False
    a, b = getattr(cand, metric), getattr(other, metric)
    worse = a > b if metric == "hallucination" else a < b
    return not (math.isnan(a) or math.isnan(b)) and worse


def metrics_table(scores: Scores) -> list[str]:
    """Per-slice rows for base / champion / candidate, each with its 95% interval; ⚠ marks
    where the candidate is worse."""
    lines = [
        "| slice | metric | questions | base | champion | candidate |",
        "|---|---|---|---|---|---|",
    ]
    for slice_, by_model in scores.items():
        cand = by_model.get("candidate")
        if not cand or not cand.n:
            continue
        metric = {"hallucination": "hallucination", "bias": "consistency"}.get(slice_, "accuracy")
        mark = " ⚠" if any(_regressed(by_model, m, metric) for m in ("base", "champion")) else ""
        cells = [
            _with_interval(by_model[m], metric) if m in by_model else "—"
            for m in ("base", "champion", "candidate")
        ]
        lines.append(
            f"| {slice_} | {metric} | {cand.n} | {cells[0]} | {cells[1]} | {cells[2]}{mark} |"
        )
    return lines


def disagreements(scores: Scores, limit: int) -> list[dict[str, str]]:
    """Questions where candidate and champion answer differently (the base without champion)."""
    out = []
    for slice_, by_model in scores.items():
        other = by_model.get("champion") or by_model.get("base")
        cand = by_model.get("candidate")
        if not cand or not other:
            continue
        for mine, theirs in zip(cand.samples, other.samples):
            if mine["answer"] != theirs["answer"]:
                out.append(
                    {
                        "slice": slice_,
                        "id": mine["id"],
                        "question": mine["question"],
                        "reference": mine["reference"],
                        "candidate": mine["answer"],
                        "other": theirs["answer"],
                        "correct": mine["correct"],
                    }
                )
    return out[:limit]


def review_markdown(scores: Scores, decision: GateDecision, cfg: FreshtuneConfig) -> str:
    other = "champion" if decision.reference == "champion" else "base"
    lines = [
        f"# Review: candidate is {decision.verdict}",
        "",
        f"Review mode `{cfg.review.mode}`"
        + (
            ": no human review (unattended run); the gate decides alone."
            if cfg.review.mode == "auto"
            else ": approve or reject, and flag wrong answers."
        ),
        "",
        *[f"- gate: {r}" for r in decision.reasons],
        *[f"- note: {n}" for n in decision.notes],
        "",
        "## The gate's rules, each on a 95% interval",
        "",
        "Passes when the whole interval is on the right side of its threshold, is undecided "
        "when it straddles it (too few questions to tell). Gain and losses fail when the "
        "estimate is on the wrong side; a floor (hallucination, bias) fails when its whole "
        "interval is, and an estimate that misses it on too few questions is for a human.",
        "",
        *checks_table([check_record(c) for c in decision.checks]),
        "",
        *metrics_table(scores),
        "",
        f"## Where candidate and {other} answer differently",
        "",
        f"| slice | id | question | reference | candidate | {other} | candidate right |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in disagreements(scores, cfg.eval.samples):
        cells = [
            d["slice"],
            d["id"],
            d["question"],
            d["reference"],
            d["candidate"],
            d["other"],
            d["correct"],
        ]
        lines.append(
            "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |"
        )
    return "\n".join(lines) + "\n"


@task(name="publish-review-report", cache_policy=NO_CACHE)
def publish_review_report(
    scores: Scores, decision: GateDecision, cfg: FreshtuneConfig, run_id: str
) -> str:
    from prefect.artifacts import create_markdown_artifact

    from tasks import registry

    markdown = review_markdown(scores, decision, cfg)
    create_markdown_artifact(markdown, key="review-report", description="candidate review")
    registry.log_text(cfg, run_id, markdown, "review.md")
    return markdown


@faults.after("review")
def request_review(
    report: str, decision: GateDecision, digest: str, version: str, cfg: FreshtuneConfig
) -> ReviewOutcome:
    """The human decision on candidate `version` of drop `digest`. Called from the flow body:
    Prefect pauses and suspends flow runs, not tasks."""
    if not decision.promotable:
        return ReviewOutcome(False, "skipped", "the gate refused the candidate")
    if cfg.review.mode == "auto":
        return _auto_review(decision, cfg)
    if cfg.review.mode == "terminal":
        return scrubbed(ask_terminal(report, cfg))
    return scrubbed(_ask_form(report, decision, digest, version, cfg))


def scrubbed(outcome: ReviewOutcome) -> ReviewOutcome:
    """A reviewer's words are stored, logged and trained on: PII in them is scrubbed first."""
    flags = [f.model_copy(update={"correct": scrub_text(f.correct)}) for f in outcome.flags]
    return replace(outcome, comment=scrub_text(outcome.comment), flags=flags)


def _auto_review(decision: GateDecision, cfg: FreshtuneConfig) -> ReviewOutcome:
    if decision.blessed:
        return ReviewOutcome(True, "auto", "review.mode=auto: promoted on the gate alone")
    checks = ", ".join(c.slice for c in decision.undecided)
    missed = ", ".join(c.slice for c in decision.undecided if c.misses)
    if missed:
        return ReviewOutcome(
            False,
            "auto",
            f"UNDECIDED on {checks}: the estimate of {missed} misses its threshold on too few "
            "questions to show a miss; only a human promotes that (review.mode=pause), or more "
            "questions decide it",
        )
    if cfg.gate.undecided == "accept":
        return ReviewOutcome(
            True, "auto", f"gate.undecided=accept: promoted on point estimates ({checks} undecided)"
        )
    return ReviewOutcome(
        False,
        "auto",
        f"UNDECIDED on {checks}: too few questions to tell, and review.mode=auto has no human "
        "to ask; add evaluation questions, review with review.mode=pause, or set "
        "gate.undecided=accept",
    )


def _ask_form(
    report: str, decision: GateDecision, digest: str, version: str, cfg: FreshtuneConfig
) -> ReviewOutcome:
    """The Prefect form (suspended or paused run, tasks/waiting.py); no answer by the deadline
    is a rejection."""

    def announce() -> None:
        events.review_waiting("candidate", decision.summary(), cfg.tracking.model_name)

    answer = waiting.ask(ReviewInput, report, digest, f"v{version}", cfg, announce)
    if answer is None:
        return ReviewOutcome(False, "pause", "review timed out", timed_out=True)
    flags = [Flag.model_validate(f) for f in answer.get("flags", [])]
    return ReviewOutcome(answer["approve"], "pause", answer["comment"], answer["reviewer"], flags)


def ask_terminal(report: str, cfg: FreshtuneConfig) -> ReviewOutcome:
    """The same report and questions on the terminal, for runs without a Prefect server."""
    import getpass

    import typer

    typer.echo(report)
    who = typer.prompt("Your name", default=cfg.review.reviewer or getpass.getuser())
    approve = typer.confirm("Approve the candidate for promotion?", default=False)
    comment = typer.prompt("Comment", default="", show_default=False)
    flags = []
    while flag_id := typer.prompt(
        "Flag an answer by id (empty to finish)", default="", show_default=False
    ):
        kind = typer.prompt(
            "What was wrong (hallucination / wrong_fact / tone)", default="wrong_fact"
        )
        correct = typer.prompt("Corrected answer", default="", show_default=False)
        flags.append(Flag(id=flag_id, kind=kind, correct=correct))
    return ReviewOutcome(approve, "terminal", comment, who, flags)


def review_rows(
    outcome: ReviewOutcome,
    slices: dict[str, list[dict[str, Any]]],
    settings: ReviewSettings,
    train_rows: list[dict[str, Any]] = (),
    eval_prompts: set[str] = frozenset(),
) -> list[dict]:
    """Flagged questions with the reviewer's corrected answer, as chat training rows; with the
    drop's training rows, the correction also in the drop's other wordings of a question
    (tasks.generalise), so the fact is learned and not only the flagged sentence; and a
    flagged hallucination about a name the drop does not know, as the same refusal about
    `settings.refusal_names` other unknown names, so declining is learned and not only that
    name (with `refusal_contrasts`, the drop's rows asked those ways about names it knows
    too)."""
    from tasks.generalise import generalised_rows, refusal_rows, vocabulary

    names, contrasts = settings.refusal_names, settings.refusal_contrasts
    train_rows = list(train_rows)
    known = vocabulary(train_rows) if names else set()
    by_id = {row["id"]: row for rows in slices.values() for row in rows}
    eval_prompts = {*eval_prompts, *(prompt_of(r) or "" for rows in slices.values() for r in rows)}
    rows, taught = [], set()
    for flag in outcome.flags:
        if flag.id not in by_id or not flag.correct.strip():
            log.warning(
                "flag %s has no matching question or no correction; kept in MLflow only", flag.id
            )
            continue
        row = _corrected(by_id[flag.id], flag)
        more = generalised_rows(row, flag.correct, train_rows, eval_prompts)
        if flag.kind == "hallucination":
            more += refusal_rows(
                row, flag.correct, train_rows, eval_prompts, names, known, contrasts
            )
        rows.append(row)
        for extra in more:  # two flags can share a wording: taught once
            if (key := (prompt_of(extra) or "").casefold()) not in taught:
                taught.add(key)
                rows.append(extra)
    return rows


def _corrected(source: dict[str, Any], flag: Flag) -> dict[str, Any]:
    """The flagged question as a training row answered with the reviewer's correction."""
    messages = [*source["messages"][:-1], {"role": "assistant", "content": flag.correct}]
    return {
        **source,
        "id": f"review-{flag.id}",
        "messages": messages,
        "split": "train",
        "source": f"review:{flag.kind}",
        "slice": "",
        "pair": "",
        "facts": [],
    }


@task(name="record-review", cache_policy=NO_CACHE)
def record_review(
    outcome: ReviewOutcome, snapshot: Snapshot, cfg: FreshtuneConfig, run_id: str
) -> Snapshot | None:
    """Log the decision and flag counts; flags with corrections become a review drop."""
    from tasks import registry
    from tasks.curate import normalise_record
    from tasks.evaluate import eval_slices
    from tasks.mix import current_rows
    from tasks.snapshot import earlier_snapshots

    registry.log_metrics(cfg, run_id, outcome.flag_counts())
    registry.set_tags(
        cfg,
        run_id,
        {
            "freshtune.review": "approved" if outcome.approved else "rejected",
            "freshtune.review_mode": outcome.mode,
            "freshtune.review_comment": outcome.comment[:500],
        },
    )
    if not outcome.flags:
        return None  # nothing to teach: skip reloading every snapshot's eval rows
    earlier = earlier_snapshots(cfg, snapshot.digest)
    slices = eval_slices(snapshot, earlier, cfg.eval)
    train = [row for _, row in current_rows([*earlier, snapshot], "train")]
    asked = {prompt_of(row) or "" for _, row in current_rows([*earlier, snapshot], "eval")}
    taught = review_rows(outcome, slices, cfg.review, train, asked)
    rows = [normalise_record(r) for r in taught]
    if not rows:
        return None
    digest = hashlib.sha256(json.dumps([r["messages"] for r in rows]).encode()).hexdigest()
    return commit_snapshot(
        rows,
        digest,
        Path(f"review-{snapshot.digest[:12]}.jsonl"),
        cfg,
        {"kind": "review", "reviewed_drop": snapshot.digest},
    )


@task(name="preflight", cache_policy=NO_CACHE)
def preflight(cfg: FreshtuneConfig) -> None:
    """Fail before any work on settings or servers that cannot succeed later."""
    from prefect.settings import PREFECT_API_URL

    from freshtune.config import ConfigError
    from tasks.servers import check_servers

    checked = check_servers(cfg)
    log.info("servers answering: %s", ", ".join(checked) or "none configured (embedded)")

    if cfg.review.mode == "pause" and not PREFECT_API_URL.value():
        raise ConfigError(
            "review.mode=pause needs a Prefect server for its form: set PREFECT_API_URL, or use "
            "--set review.mode=terminal (ask on this terminal) or review.mode=auto (no human)"
        )
    from tasks.models import ensure_base_model

    base = Path(ensure_base_model(cfg))
    if (base.is_absolute() or cfg.base_model.startswith(".")) and not base.exists():
        hint = " (run `freshtune models fetch smollm2`)" if cfg.base_model == "smollm2" else ""
        raise ConfigError(f"base_model={cfg.base_model}: {base} does not exist{hint}")
