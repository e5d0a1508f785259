"""The data gate: a Great Expectations suite over a drop, and quarantine for rejected drops.

Results (JSON and GX Data Docs HTML) are written to `landing/gate/<digest16>/` and end up
beside the snapshot (`snapshots/<digest16>/gate/`) or the quarantined original.
"""

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

from freshtune import faults
from freshtune.config import EXPECTATIONS_DIR, FreshtuneConfig
from freshtune.errors import DropRejected
from tasks.columns import gc_paused
from tasks.ingest import StagedDrop, prompt_of, response_of
from tasks.pii import may_hold_pii, scrub_text
from tasks.quarantine import failure_table, gate_dir, quarantine

log = logging.getLogger(__name__)

SAMPLE_LINES = 5
# Columns whose failing values could be PII: never copied into our reports.
_REDACTED = {"scrubbed"}


@dataclass(frozen=True)
class Failure:
    rule: str
    column: str | None
    unexpected: int
    lines: list[int]
    observed: Any = None
    ids: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    about: str = ""  # the suite's own words for the rule (its `meta.rule`)


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

    def rejection(self) -> DropRejected:
        first = self.failures[0]
        line = first.lines[0] if first.lines else None
        return DropRejected(self.file, first.rule, self.summary(), line)


def _describe(failure: Failure) -> str:
    target = f"{failure.rule}({failure.column})" if failure.column else failure.rule
    if failure.lines:
        seen = f" ({'; '.join(failure.samples[:2])})" if failure.samples else ""
        return f"{target}: {failure.unexpected} rows fail, e.g. lines {failure.lines}{seen}"
    return f"{target}: observed {failure.observed}"


def suite_path(name: str) -> Path:
    """A suite by name from expectations/, or any JSON file path (users' own suites)."""
    path = Path(name)
    if path.suffix == ".json" and path.exists():
        return path
    path = EXPECTATIONS_DIR / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in EXPECTATIONS_DIR.glob("*.json"))
        raise FileNotFoundError(f"data.suite={name!r}: no {path}; known suites: {known}")
    return path


def load_suite(name: str, cfg: FreshtuneConfig) -> dict[str, Any]:
    """The suite JSON, with the config's row minimum and length maximum applied."""
    suite = json.loads(suite_path(name).read_text(encoding="utf-8"))
    for exp in suite["expectations"]:
        kwargs = exp["kwargs"]
        if exp["type"] == "expect_table_row_count_to_be_between":
            kwargs["min_value"] = cfg.data.min_rows
        elif exp["type"] == "expect_column_value_lengths_to_be_between":
            kwargs["max_value"] = cfg.data.max_chars
    return suite


FRAME_COLUMNS = ["id", "schema", "shape", "roles", "prompt", "response", "split", "scrubbed"]


@gc_paused()
def to_frame(records: list[dict[str, Any]]):
    """One row per record, indexed by its line in the file so failures name lines.

    `schema` says why a row is malformed (None when fine); `scrubbed` is the row's text after
    PII scrubbing, so the suite can check that nothing PII-shaped is left.
    """
    import pandas as pd

    columns = {  # built column by column: no million tuples for pandas to take apart
        "id": _scrub_all([r["id"] for r in records]),
        "schema": [r.get("_schema") for r in records],
        "shape": [r.get("_shape") for r in records],
        "roles": [
            ",".join([m["role"] for m in r["messages"]]) if r["messages"] else None for r in records
        ],
        # Scrubbed before GX sees them: its Data Docs show failing values verbatim.
        "prompt": _scrub_all([prompt_of(r) for r in records]),
        "response": _scrub_all([response_of(r) for r in records]),
        "split": [r["split"] for r in records],
        "scrubbed": _scrubbed(records),
    }
    return pd.DataFrame(columns, columns=FRAME_COLUMNS, index=[r["line"] for r in records])


def _scrub_all(texts: list[str | None]) -> list[str | None]:
    maybe = may_hold_pii([t or "" for t in texts])
    return [scrub_text(t) if m and t else t for t, m in zip(texts, maybe)]


def _scrubbed(records: list[dict[str, Any]]) -> list[str]:
    texts = ["\n".join([m["content"] for m in r["messages"] or []]) for r in records]
    maybe = may_hold_pii(texts)
    return [scrub_text(t) if m else t for t, m in zip(texts, maybe)]


def run_suite(
    records: list[dict[str, Any]],
    suite: dict[str, Any],
    file: str,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Validate with GX in ephemeral mode; with `docs_dir`, GX also writes its Data Docs there."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # Its "Calculating Metrics" bars, twice per drop, say nothing the gate's lines do not.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        context.add_data_docs_site(site_name="gate", site_config=_docs_site(docs_dir))
    batch = (
        context.data_sources.add_pandas("drop")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all")
    )
    gx_suite = context.suites.add(gx.ExpectationSuite(**suite))
    definition = gx.ValidationDefinition(data=batch, suite=gx_suite, name=f"{suite['name']}-gate")
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
    frame = to_frame(records)
    if docs_dir is None:
        result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
    else:
        result = _run_with_docs(context, definition, frame, result_format)
    ids = dict(zip(frame.index, frame["id"]))
    failures = [_failure(r, ids) for r in result.results if not r.success]
    return ValidationReport(file, suite["name"], len(records), not failures, failures)


def _docs_site(docs_dir: Path) -> dict[str, Any]:
    return {
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir),
        },
    }


def _run_with_docs(context: Any, definition: Any, frame: Any, result_format: dict) -> Any:
    import great_expectations as gx

    definition = context.validation_definitions.add(definition)
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="gate",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs")],
            result_format=result_format,
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    return next(iter(result.run_results.values()))


def _failure(result: Any, ids: dict[int, Any]) -> Failure:
    config, detail = result.expectation_config, result.result or {}
    column = config.kwargs.get("column")
    lines = sorted(int(i) for i in detail.get("partial_unexpected_index_list") or [])
    lines = lines[:SAMPLE_LINES]
    values = [] if column in _REDACTED else detail.get("partial_unexpected_list") or []
    return Failure(
        rule=config.type,
        column=column,
        unexpected=int(detail.get("unexpected_count") or 0),
        lines=lines,
        observed=detail.get("observed_value"),
        ids=[str(ids.get(line)) for line in lines],
        samples=[f"line {n}: {_shown(v)}" for n, v in zip(lines, values)][:SAMPLE_LINES],
        about=(config.meta or {}).get("rule", ""),
    )


def _shown(value: Any) -> str:
    missing = value is None or (isinstance(value, float) and value != value)  # None or NaN
    return "null" if missing else scrub_text(str(value))[:80]


def validate_records(
    records: list[dict[str, Any]],
    file: Path,
    cfg: FreshtuneConfig,
    results_dir: Path | None = None,
) -> ValidationReport:
    """Run the configured suite; with `results_dir`, keep validation.json and the Data Docs."""
    docs = None if results_dir is None else results_dir / "data-docs"
    if docs is not None:
        shutil.rmtree(docs, ignore_errors=True)
    report = run_suite(records, load_suite(cfg.data.suite, cfg), str(file), docs)
    if results_dir is not None:
        (results_dir / "validation.json").write_text(report.to_json(), encoding="utf-8")
    log.info("validation of %s with suite %s: %s", file.name, report.suite, report.summary())
    return report


@task(name="validate-drop", cache_policy=NO_CACHE)
@faults.after("validate")
def validate_drop(staged: StagedDrop, cfg: FreshtuneConfig) -> ValidationReport:
    """Run the suite; on failure quarantine the drop and fail naming the rules and lines."""
    results = gate_dir(cfg, staged.digest)
    results.mkdir(parents=True, exist_ok=True)
    report = validate_records(staged.records, staged.file, cfg, results)
    publish_validation(report)
    if not report.success:
        error = report.rejection()
        quarantine(staged.file, staged.digest, error, cfg, report)
        raise error
    return report


def publish_validation(report: ValidationReport) -> None:
    from prefect.artifacts import create_markdown_artifact

    verdict = "passed" if report.success else "REJECTED"
    body = [
        f"## Data gate: `{Path(report.file).name}` {verdict}",
        f"Suite `{report.suite}`, {report.rows} rows.",
        "",
        *failure_table(report.failures),
    ]
    create_markdown_artifact("\n".join(body), key="data-gate", description="validation result")
