"""The data gate: a Great Expectations suite over a drop, and quarantine for rejected drops."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune.config import EXPECTATIONS_DIR, FreshtuneConfig
from freshtune.errors import DropRejected
from tasks.ingest import StagedDrop, prompt_of, response_of

log = logging.getLogger(__name__)

SAMPLE_LINES = 5


@dataclass(frozen=True)
class Failure:
    rule: str
    column: str | None
    unexpected: int
    lines: list[int]
    observed: Any = None


@dataclass(frozen=True)
class ValidationReport:
    file: str
    suite: str
    rows: int
    success: bool
    failures: list[Failure] = field(default_factory=list)

    def summary(self) -> str:
        return "; ".join(_describe(f) for f in self.failures) or "all expectations hold"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def _describe(failure: Failure) -> str:
    target = f"{failure.rule}({failure.column})" if failure.column else failure.rule
    if failure.lines:
        return f"{target}: {failure.unexpected} rows fail, e.g. lines {failure.lines}"
    return f"{target}: observed {failure.observed}"


def load_suite(name: str, cfg: FreshtuneConfig) -> dict[str, Any]:
    """The suite JSON, with the config's row minimum and length maximum applied."""
    path = EXPECTATIONS_DIR / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in EXPECTATIONS_DIR.glob("*.json"))
        raise FileNotFoundError(f"data.suite={name!r}: no {path}; known suites: {known}")
    suite = json.loads(path.read_text(encoding="utf-8"))
    for exp in suite["expectations"]:
        kwargs = exp["kwargs"]
        if exp["type"] == "expect_table_row_count_to_be_between":
            kwargs["min_value"] = cfg.data.min_rows
        elif exp["type"] == "expect_column_value_lengths_to_be_between":
            kwargs["max_value"] = cfg.data.max_chars
    return suite


def to_frame(records: list[dict[str, Any]]):
    """One row per record, indexed by its line in the file so failures name lines."""
    import pandas as pd

    rows = [
        {
            "id": r["id"],
            "roles": ",".join(m["role"] for m in r["messages"]) if r["messages"] else None,
            "prompt": prompt_of(r),
            "response": response_of(r),
            "split": r["split"],
        }
        for r in records
    ]
    columns = ["id", "roles", "prompt", "response", "split"]
    return pd.DataFrame(rows, columns=columns, index=[r["line"] for r in records])


def run_suite(records: list[dict[str, Any]], suite: dict[str, Any], file: str) -> ValidationReport:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    batch = (
        context.data_sources.add_pandas("drop")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all")
    )
    gx_suite = context.suites.add(gx.ExpectationSuite(**suite))
    definition = gx.ValidationDefinition(data=batch, suite=gx_suite, name=f"{suite['name']}-gate")
    result = definition.run(
        batch_parameters={"dataframe": to_frame(records)},
        result_format={"result_format": "COMPLETE"},
    )
    failures = [_failure(r) for r in result.results if not r.success]
    return ValidationReport(file, suite["name"], len(records), not failures, failures)


def _failure(result: Any) -> Failure:
    config, detail = result.expectation_config, result.result or {}
    lines = [int(i) for i in detail.get("unexpected_index_list") or []]
    return Failure(
        rule=config.type,
        column=config.kwargs.get("column"),
        unexpected=int(detail.get("unexpected_count") or 0),
        lines=sorted(lines)[:SAMPLE_LINES],
        observed=detail.get("observed_value"),
    )


def validate_records(
    records: list[dict[str, Any]], file: Path, cfg: FreshtuneConfig
) -> ValidationReport:
    report = run_suite(records, load_suite(cfg.data.suite, cfg), str(file))
    log.info("validation of %s with suite %s: %s", file.name, report.suite, report.summary())
    return report


def quarantine(
    file: Path,
    digest: str,
    reason: DropRejected,
    cfg: FreshtuneConfig,
    report: ValidationReport | None = None,
) -> Path:
    """Move nothing, lose nothing: copy the original bytes beside the report and the reason."""
    target = cfg.paths.quarantine / digest[:16]
    if target.exists():
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(file, staging / file.name)
    if report is not None:
        (staging / "validation.json").write_text(report.to_json(), encoding="utf-8")
    (staging / "REJECTED.md").write_text(_rejection_note(file, digest, reason, report), "utf-8")
    staging.rename(target)
    log.warning("quarantined %s at %s: %s", file, target, reason)
    return target


def _rejection_note(
    file: Path, digest: str, reason: DropRejected, report: ValidationReport | None
) -> str:
    lines = [
        f"# Rejected drop `{file.name}`",
        "",
        f"- digest: `{digest}`",
        f"- rule: `{reason.rule}`",
        f"- why: {reason}",
        "",
        "Nothing was trained on it; the champion did not move. Fix the file and land it again.",
    ]
    if report is not None and report.failures:
        lines += ["", "| rule | column | failing rows | sample lines |", "|---|---|---|---|"]
        lines += [
            f"| {f.rule} | {f.column or ''} | {f.unexpected or f.observed} | "
            f"{', '.join(map(str, f.lines))} |"
            for f in report.failures
        ]
    return "\n".join(lines) + "\n"


@task(name="validate-drop", cache_policy=NO_CACHE)
def validate_drop(staged: StagedDrop, cfg: FreshtuneConfig) -> ValidationReport:
    """Run the suite; on failure quarantine the drop and fail naming the rules and lines."""
    report = validate_records(staged.records, staged.file, cfg)
    publish_validation(report)
    if not report.success:
        first = report.failures[0]
        error = DropRejected(
            staged.file, first.rule, report.summary(), first.lines[0] if first.lines else None
        )
        quarantine(staged.file, staged.digest, error, cfg, report)
        raise error
    return report


def publish_validation(report: ValidationReport) -> None:
    from prefect.artifacts import create_markdown_artifact

    rows = [
        f"| {f.rule} | {f.column or ''} | {f.unexpected or f.observed} | "
        f"{', '.join(map(str, f.lines))} |"
        for f in report.failures
    ]
    table = ["| rule | column | failing rows | sample lines |", "|---|---|---|---|", *rows]
    verdict = "passed" if report.success else "REJECTED"
    body = [
        f"## Data gate: `{Path(report.file).name}` {verdict}",
        f"Suite `{report.suite}`, {report.rows} rows.",
        "",
        *(table if rows else []),
    ]
    create_markdown_artifact("\n".join(body), key="data-gate", description="validation result")
