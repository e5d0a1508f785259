"""Drift of a drop against earlier drops: length distributions and vocabulary, each as a
Jensen-Shannon divergence (base 2, so 0 = same distribution, 1 = nothing in common).

Above `data.drift_threshold` the data may still be right (a new product line), but a human
should say so: unattended (`review.mode=auto`) the gate fails closed.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect.input import RunInput
from pydantic import Field

from freshtune.config import FreshtuneConfig
from freshtune.errors import DropRejected
from tasks import events, waiting
from tasks.columns import blocks
from tasks.ngrams import tokenise

log = logging.getLogger(__name__)

SAMPLE = 100_000  # rows per side; plenty for a histogram and a vocabulary of common words
# Character-length bins, doubling: short answers and long ones land in different bins.
_LENGTH_EDGES = np.array([0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, np.inf])


@dataclass(frozen=True)
class DriftReport:
    earlier_rows: int
    prompt_length_js: float
    response_length_js: float
    vocab_js: float
    threshold: float

    @property
    def score(self) -> float:
        return max(self.prompt_length_js, self.response_length_js, self.vocab_js)

    @property
    def exceeded(self) -> bool:
        return self.score > self.threshold

    def as_metrics(self) -> dict[str, float]:
        return {
            "curate_drift_prompt_length_js": self.prompt_length_js,
            "curate_drift_response_length_js": self.response_length_js,
            "curate_drift_vocab_js": self.vocab_js,
        }

    def summary(self) -> str:
        return (
            f"vocabulary JS {self.vocab_js:.3f}, prompt length JS {self.prompt_length_js:.3f}, "
            f"response length JS {self.response_length_js:.3f} against {self.earlier_rows} "
            f"earlier rows (data.drift_threshold={self.threshold})"
        )


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, (kl(p) + kl(q)) / 2)


def _length_js(new: list[str], old: list[str]) -> float:
    def hist(texts: list[str]) -> np.ndarray:
        counts = np.histogram([len(t) for t in texts], bins=_LENGTH_EDGES)[0]
        return counts.astype(float) + 1e-9

    return js_divergence(hist(new), hist(old))


def _vocab_js(new: list[str], old: list[str]) -> float:
    index: dict[str, int] = {}  # every word's position, in order of first appearance
    p, q = _word_counts(new, index), _word_counts(old, index)
    p, q = (np.pad(x, (0, len(index) - len(x))) for x in (p, q))
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    return js_divergence(p, q)


def _word_counts(texts: list[str], index: dict[str, int]) -> np.ndarray:
    """Each word's count in `texts` at its position in `index` (new words are added), a block
    of texts at a time: tokenising 400,000 texts at once took 0.6 GB."""
    counts = np.zeros(len(index))
    for block in blocks(len(texts)):
        tokens = tokenise(texts[block])
        where = np.array([index.setdefault(w, len(index)) for w in tokens.vocab], dtype=np.int64)
        found = np.bincount(where[tokens.ids], minlength=len(index)).astype(float)
        counts = np.pad(counts, (0, len(index) - len(counts))) + found
    return counts


def measure_drift(
    new: list[tuple[str, str]], old: list[tuple[str, str]], threshold: float
) -> DriftReport | None:
    """`new` and `old` are (prompt, response) pairs; None when there is nothing earlier."""
    if not new or not old:
        return None
    # Distributions, not rows: a seeded sample keeps a million-row drop at a few seconds.
    new, old = _sample(new), _sample(old)
    new_p, new_r = (list(x) for x in zip(*new))
    old_p, old_r = (list(x) for x in zip(*old))
    return DriftReport(
        earlier_rows=len(old),
        prompt_length_js=round(_length_js(new_p, old_p), 4),
        response_length_js=round(_length_js(new_r, old_r), 4),
        vocab_js=round(_vocab_js(new_p + new_r, old_p + old_r), 4),
        threshold=threshold,
    )


def _sample(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return random.Random(0).sample(pairs, SAMPLE) if len(pairs) > SAMPLE else pairs


def decide_on_drift(report: DriftReport | None, file: Path, cfg: FreshtuneConfig) -> None:
    """Unattended (`review.mode=auto`), drift above the threshold fails closed; with a
    reviewer it waits for their word (`review_drift`, in the flow)."""
    if report is None or not report.exceeded or cfg.review.mode != "auto":
        return
    log.warning("drift above threshold for %s: %s", file.name, report.summary())
    raise DropRejected(
        file, "drift", f"{report.summary()}; a human must accept this drop (review.mode=auto)"
    )


class DriftInput(RunInput):
    """The form the Prefect UI shows on a run paused for drift (`freshtune review approve RUN`
    answers it too: the same field names as the candidate's review form)."""

    reviewer: str = Field(min_length=1, description="your name, recorded with the decision")
    approve: bool = False
    comment: str = ""


def review_drift(report: DriftReport | None, staged: Any, cfg: FreshtuneConfig) -> None:
    """Drift above the threshold waits for a reviewer (form or terminal): accepted, the cycle
    goes on; rejected or no answer within `review.timeout_s`, the drop is quarantined. Called
    from the flow body: Prefect pauses flow runs, not tasks."""
    if report is None or not report.exceeded or cfg.review.mode == "auto":
        return
    question = drift_markdown(report, staged.file)
    if cfg.review.mode == "terminal":
        accepted, comment = _ask_terminal(question, cfg)
    else:
        accepted, comment = _ask_form(question, report, staged, cfg)
    log.warning(
        "drift of %s %s: %s", staged.file.name, "accepted" if accepted else "rejected", comment
    )
    if accepted:
        return
    from tasks.quarantine import quarantine

    error = DropRejected(
        staged.file, "drift", f"{report.summary()}; the reviewer rejected it: {comment}"
    )
    quarantine(staged.file, staged.digest, error, cfg)
    raise error


def drift_markdown(report: DriftReport, file: Path) -> str:
    return "\n".join(
        [
            f"# Drift: `{file.name}` is unlike the earlier drops",
            "",
            f"{report.summary()}.",
            "",
            "It may still be right (a new product line, a new form); accept it to curate and "
            "train on it, or reject it to quarantine the drop.",
        ]
    )


def _ask_form(
    question: str, report: DriftReport, staged: Any, cfg: FreshtuneConfig
) -> tuple[bool, str]:
    """The Prefect form (suspended or paused run, tasks/waiting.py); no answer by the
    deadline is a rejection."""

    def announce() -> None:
        summary = f"{staged.file.name}: {report.summary()}"
        events.review_waiting("drift", summary, cfg.tracking.model_name)

    answer = waiting.ask(DriftInput, question, staged.digest, "drift", cfg, announce)
    if answer is None:
        return False, f"no answer within review.timeout_s={cfg.review.timeout_s}"
    return answer["approve"], f"{answer['reviewer']}: {answer['comment']}"


def _ask_terminal(question: str, cfg: FreshtuneConfig) -> tuple[bool, str]:
    import typer

    typer.echo(question)
    accepted = typer.confirm("Accept this drop despite its drift?", default=False)
    return accepted, typer.prompt("Comment", default="", show_default=False)
