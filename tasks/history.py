"""The months at a glance: one row per cycle, for the CLI, MLflow's charts and the Prefect UI.

Each row is read from a cycle record (tasks.report): what the candidate scored on the month's
new facts, on earlier still-true facts, on general questions and on never-sold products, what
it cost to train, what the gate said and who reviewed it. `freshtune history` prints them,
MLflow gets them as metrics of one `history` run stepped by cycle (so its UI draws the trend),
and the Prefect UI as a table artifact that every cycle replaces.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HISTORY_RUN = "history"  # the MLflow run whose metrics are stepped by cycle
ARTIFACT_KEY = "freshtune-history"
TREND = ("current", "earlier", "general", "hallucination")


@dataclass(frozen=True)
class HistoryRow:
    cycle: int
    version: str
    drop: str
    finished: str  # UTC, minutes
    current: float
    earlier: float
    general: float
    hallucination: float
    train_tokens: float
    train_s: float
    train_cost: float
    verdict: str
    promoted: bool
    review: str

    def metrics(self) -> dict[str, float]:
        """What MLflow charts, NaN (not measured) left out."""
        values = {name: getattr(self, name) for name in (*TREND, "train_tokens", "train_s")}
        values["promoted"] = float(self.promoted)
        return {f"history.{k}": v for k, v in values.items() if not math.isnan(v)}


def history_rows(records: list[dict[str, Any]]) -> list[HistoryRow]:
    """One row per cycle that trained, oldest first (a repeated drop trained nothing)."""
    done = sorted((r for r in records if not r.get("repeated")), key=lambda r: r["finished_at"])
    return [_row(number, record) for number, record in enumerate(done, 1)]


def _row(number: int, record: dict[str, Any]) -> HistoryRow:
    train, review = record["train"], record["review"]
    who = review.get("reviewer") or review["mode"]
    return HistoryRow(
        cycle=number,
        version=str(record["version"]),
        drop=Path(record["file"]).name,
        finished=time.strftime("%Y-%m-%d %H:%M", time.gmtime(record["finished_at"])),
        current=_candidate(record, "current", "accuracy"),
        earlier=_candidate(record, "earlier", "accuracy"),
        general=_candidate(record, "general", "accuracy"),
        hallucination=_candidate(record, "hallucination", "hallucination"),
        train_tokens=float(train["train_tokens"]),
        train_s=float(train["train_wall_s"]),
        train_cost=float(train.get("train_cost", math.nan)),
        verdict=record["verdict"],
        promoted=bool(record["promoted"]),
        review=f"{who}: {'approved' if review['approved'] else 'not approved'}",
    )


def _candidate(record: dict[str, Any], slice_: str, metric: str) -> float:
    value = record["scores"].get(slice_, {}).get("candidate", {}).get(metric)
    return math.nan if value is None else float(value)


def as_dicts(rows: list[HistoryRow]) -> list[dict[str, Any]]:
    """JSON-ready rows (NaN becomes null)."""
    return [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(r).items()}
        for r in rows
    ]


def table_artifact(rows: list[HistoryRow]) -> list[dict[str, Any]]:
    """The rows as the Prefect UI's table shows them: fractions to 4 significant digits
    (0.4167, 10.47 s), not the 16 that floats print and that widen every column."""
    return [{k: _readable(v) for k, v in row.items()} for row in as_dicts(rows)]


def _readable(value: Any) -> Any:
    if isinstance(value, float) and not value.is_integer():
        return float(f"{value:.4g}")
    return value


def table_lines(rows: list[HistoryRow]) -> list[str]:
    head = (
        f"{'#':>3} {'version':>7}  {'drop':<24}{'finished (UTC)':<18}{'new':>7}{'earlier':>8}"
        f"{'general':>8}{'halluc.':>8}{'train':>8}  {'verdict':<12}{'champion':<9}review"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r.cycle:>3} {r.version:>7}  {r.drop[:23]:<24}{r.finished:<18}{_pct(r.current):>7}"
            f"{_pct(r.earlier):>8}{_pct(r.general):>8}{_pct(r.hallucination):>8}"
            f"{r.train_s:>7.0f}s  {r.verdict:<12}{'yes' if r.promoted else 'no':<9}{r.review}"
        )
    return lines


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.0f}%"


def plot_history(rows: list[HistoryRow], out: Path) -> Path:
    """Accuracy by slice over cycles (promoted cycles filled), training time below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    x = [r.cycle for r in rows]
    for name in TREND:
        top.plot(x, [100 * getattr(r, name) for r in rows], marker="o", label=name)
    for r in rows:
        if r.promoted:
            top.axvline(r.cycle, color="0.85", zorder=0)
    top.set_ylabel("candidate, % (hallucination: rate)")
    top.set_ylim(-5, 105)
    top.legend(loc="lower left", fontsize=8)
    top.set_title("freshtune: the months at a glance (grey: promoted)")
    bottom.bar(x, [r.train_s / 60 for r in rows], color="tab:gray")
    bottom.set_ylabel("training, min")
    bottom.set_xlabel("cycle")
    bottom.set_xticks(x, [f"{r.cycle}\nv{r.version}" for r in rows])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
