"""The data gate: a Great Expectations suite over a drop, and quarantine for rejected drops.

Results (JSON and GX Data Docs HTML) are written to `landing/gate/<digest16>/` and end up
beside the snapshot (`snapshots/<digest16>/gate/`) or the quarantined original.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune import faults
from freshtune.config import EXPECTATIONS_DIR, FreshtuneConfig
from freshtune.errors import DropRejected
from tasks.columns import gc_paused, release_memory
from tasks.ingest import StagedDrop
from tasks.pii import may_hold_pii, scrub_text
from tasks.quarantine import failure_table, gate_dir, quarantine
from tasks.records import Records

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


def _roles(records: Records) -> list[str | None]:
    joined: dict[tuple[str, ...], str] = {}  # role tuples are shared: join each once
    return [
        (joined.get(roles) or joined.setdefault(roles, ",".join(roles))) if roles else None
        for roles in records.roles
    ]


# One builder per column, so a pass that needs few columns builds only those. Prompt and
# response are scrubbed before GX sees them: its Data Docs show failing values verbatim.
_BUILDERS: dict[str, Callable[[Records], list[Any]]] = {
    "id": lambda records: _scrub_all(records.ids),
    "schema": lambda records: list(records.schemas),
    "shape": lambda records: list(records.shapes),
    "roles": _roles,
    "prompt": lambda records: _scrub_all(records.prompts()),
    "response": lambda records: _scrub_all(records.responses()),
    "split": lambda records: list(records.splits),
    "scrubbed": lambda records: _scrubbed(records),
}


@gc_paused()
def to_frame(records: Records, columns: Iterable[str] = FRAME_COLUMNS):
    """One row per record, indexed by its line in the file so failures name lines.

    `schema` says why a row is malformed (None when fine); `scrubbed` is the row's text after
    PII scrubbing, so the suite can check that nothing PII-shaped is left. Built column by
    column: no million tuples for pandas to take apart.
    """
    import pandas as pd

    names = [c for c in FRAME_COLUMNS if c in set(columns)]
    data = {name: _BUILDERS[name](records) for name in names}
    return pd.DataFrame(data, columns=names, index=list(records.lines))


def _scrub_all(texts: list[str | None]) -> list[str | None]:
    maybe = may_hold_pii([t or "" for t in texts])
    return [scrub_text(t) if m and t else t for t, m in zip(texts, maybe)]


def _scrubbed(records: Records) -> list[str]:
    texts = ["\n".join(records.texts[a:b]) for a, b in records.spans()]
    maybe = may_hold_pii(texts)
    return [scrub_text(t) if m else t for t, m in zip(texts, maybe)]


# Expectations that judge each row on its own: run over chunks of rows, their counts add up.
# Any other kind (row count, uniqueness, a user's own) is run once over the whole drop, on a
# frame of only the columns it names.
PER_ROW = frozenset(
    {
        "expect_column_values_to_be_null",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_not_be_in_set",
        "expect_column_values_to_match_regex",
        "expect_column_values_to_not_match_regex",
        "expect_column_values_to_match_regex_list",
        "expect_column_values_to_not_match_regex_list",
        "expect_column_value_lengths_to_be_between",
    }
)
# `mostly` and a row condition make success depend on more than the sum of the chunks' counts.
_WHOLE_KWARGS = ("mostly", "row_condition")
PARTIAL = 20  # unexpected values and lines GX keeps per rule (SUMMARY result format)


def _per_row(expectation: dict[str, Any]) -> bool:
    kwargs = expectation["kwargs"]
    return expectation["type"] in PER_ROW and not any(k in kwargs for k in _WHOLE_KWARGS)


def _columns_named(expectations: list[dict[str, Any]]) -> set[str]:
    names = set()
    for exp in expectations:
        kwargs = exp["kwargs"]
        names |= {kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs}
        names |= set(kwargs.get("column_list") or [])
    return names or {"id"}  # a table rule (row count) needs a column to count


@dataclass
class _Part:
    """Some of the suite's expectations, with their positions in it, run as one GX suite."""

    name: str
    positions: list[int]
    expectations: list[dict[str, Any]]
    definition: Any = None
    position_of: dict[str, int] = field(default_factory=dict)


def run_suite(
    records: Records | list[dict[str, Any]],
    suite: dict[str, Any],
    file: str,
    docs_dir: Path | None = None,
    chunk_rows: int = 100_000,
) -> ValidationReport:
    """Validate with GX in ephemeral mode, per-row rules `chunk_rows` rows at a time (memory
    stays bounded), the rest over the whole drop; with `docs_dir`, GX writes Data Docs there."""
    records = Records.of(records)
    context = _context(docs_dir)
    rows, whole = _parts(suite)
    for part in (rows, whole):
        part.definition = _definition(context, suite, part)
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": PARTIAL}
    results: list[Any] = [None] * len(suite["expectations"])
    run = None  # GX's last suite result: its batch and run metadata dress the Data Docs
    with _collected():
        for block in _chunks(len(records), chunk_rows, rows):
            run = _run_part(rows, to_frame(records[block]), result_format, results)
        if whole.definition is not None:
            columns = _columns_named(whole.expectations)
            run = _run_part(whole, to_frame(records, columns), result_format, results)
    if docs_dir is not None and run is not None:
        _build_docs(context, suite, run, results)
    _forget_batches(context, (rows, whole))
    release_memory()  # pandas' string columns of the chunks: 0.1 GB kept
    failures = _with_ids([_failure(r) for r in results if not r.success], records)
    return ValidationReport(file, suite["name"], len(records), not failures, failures)


def _context(docs_dir: Path | None) -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # Its "Calculating Metrics" bars, per chunk, say nothing the gate's lines do not.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        context.add_data_docs_site(site_name="gate", site_config=_docs_site(docs_dir))
    return context


def _forget_batches(context: Any, parts: Iterable[_Part]) -> None:
    """GX keeps the context (in its project manager) and each data source its last batch:
    a chunk's frame and the whole drop's ids, 0.1 GB for a million rows, until the next
    validation. Deleting the data sources lets them go now."""
    for part in parts:
        if part.definition is not None:
            context.data_sources.delete(f"drop-{part.name}")


def _parts(suite: dict[str, Any]) -> tuple[_Part, _Part]:
    rows, whole = _Part("rows", [], []), _Part("whole", [], [])
    for i, exp in enumerate(suite["expectations"]):
        part = rows if _per_row(exp) else whole
        part.positions.append(i)
        part.expectations.append(exp)
    return rows, whole


def _definition(context: Any, suite: dict[str, Any], part: _Part) -> Any:
    import great_expectations as gx

    if not part.expectations:
        return None
    batch = (
        context.data_sources.add_pandas(f"drop-{part.name}")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all")
    )
    name = f"{suite['name']}-{part.name}"
    subset = {**suite, "name": name, "expectations": part.expectations}
    gx_suite = context.suites.add(gx.ExpectationSuite(**subset))
    # GX answers with the suite's own expectation ids: they map results back to positions.
    part.position_of = {e.id: p for e, p in zip(gx_suite.expectations, part.positions)}
    return gx.ValidationDefinition(data=batch, suite=gx_suite, name=f"{name}-gate")


def _chunks(n: int, chunk_rows: int, part: _Part) -> list[slice]:
    if part.definition is None:
        return []
    # An empty drop is still one (empty) chunk, so every rule has a result.
    return [slice(start, start + chunk_rows) for start in range(0, max(n, 1), chunk_rows)]


def _run_part(part: _Part, frame: Any, result_format: dict, results: list[Any]) -> Any:
    """Run one part's suite on `frame`, merging each result into `results` at its position;
    returns GX's suite result (None when the part has no rules)."""
    if part.definition is None:
        return None
    run = part.definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
    del frame  # the chunk's rows go before the next chunk's are built
    gc.collect()
    for result in run.results:
        position = part.position_of[result.expectation_config.id]
        results[position] = _merged(results[position], result)
    return run


_COUNTS = ("element_count", "missing_count", "unexpected_count")
_PARTIALS = ("partial_unexpected_list", "partial_unexpected_index_list")


def _merged(before: Any, result: Any) -> Any:
    """One per-row rule's result over the chunks so far, in `before`'s GX result object:
    counts add up, and the first PARTIAL unexpected values and lines are kept, in file order."""
    if before is None:
        return result
    total, chunk = before.result, result.result
    for key in _COUNTS + _PARTIALS:
        if key in total:
            total[key] = total[key] + chunk.get(key, type(total[key])())
    for key in _PARTIALS:
        if key in total:
            total[key] = total[key][:PARTIAL]
    total.update({k: v for k, v in _percents(total).items() if k in total})
    if "partial_unexpected_counts" in total:  # Data Docs only: the chunks' top values summed
        total["partial_unexpected_counts"] = _top_counts(
            total["partial_unexpected_counts"] + chunk.get("partial_unexpected_counts", [])
        )
    before.success = before.success and result.success
    return before


def _percents(result: dict[str, Any]) -> dict[str, float | None]:
    """GX's percentages (`_format_map_output`), from the summed counts."""
    elements, unexpected = result["element_count"], result["unexpected_count"]
    if not elements:
        return {}
    out = {"unexpected_percent_total": unexpected / elements * 100}
    out["unexpected_percent"] = out["unexpected_percent_total"]
    if "missing_count" in result:
        present = elements - result["missing_count"]
        out["missing_percent"] = result["missing_count"] / elements * 100
        out["unexpected_percent"] = unexpected / present * 100 if present else None
        out["unexpected_percent_nonmissing"] = out["unexpected_percent"]
    return out


def _top_counts(counts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    summed: Counter = Counter()
    for item in counts:
        summed[item["value"]] += item["count"]
    return [{"value": v, "count": c} for v, c in summed.most_common(PARTIAL)]


@contextmanager
def _collected() -> Iterator[None]:
    """GX leaves each run's frames in reference cycles: collect them after every run, with
    the drop's rows (millions of objects) frozen so that a collection does not walk them."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _docs_site(docs_dir: Path) -> dict[str, Any]:
    return {
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir),
        },
    }


def _build_docs(context: Any, suite: dict[str, Any], run: Any, results: list[Any]) -> None:
    """Data Docs of the whole suite's merged results, as one validation run: GX's last run
    lends its batch and run metadata."""
    import great_expectations as gx
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )
    from great_expectations.validator.validation_statistics import calc_validation_statistics

    gx_suite = context.suites.add(gx.ExpectationSuite(**suite))
    stats = calc_validation_statistics(results)
    run.results, run.success, run.suite_name = results, stats.success, gx_suite.name
    run.statistics = {k: v for k, v in stats._asdict().items() if k != "success"}
    suite_id = ExpectationSuiteIdentifier(name=gx_suite.name)
    result_id = ValidationResultIdentifier(suite_id, run.meta["run_id"], run.batch_id)
    context.validation_results_store.set(result_id, run)
    context.build_data_docs(site_names=["gate"], resource_identifiers=[result_id, suite_id])


def _failure(result: Any) -> Failure:
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
        samples=[f"line {n}: {_shown(v)}" for n, v in zip(lines, values)][:SAMPLE_LINES],
        about=(config.meta or {}).get("rule", ""),
    )


def _with_ids(failures: list[Failure], records: Records) -> list[Failure]:
    """Each failure's sample lines' ids, scrubbed as the frame's id column is."""
    lines = {line for f in failures for line in f.lines}
    if not lines:
        return failures
    found = {line: i for line, i in zip(records.lines, records.ids) if line in lines}
    ids = dict(zip(found, _scrub_all(list(found.values()))))
    return [replace(f, ids=[str(ids.get(line)) for line in f.lines]) for f in failures]


def _shown(value: Any) -> str:
    missing = value is None or (isinstance(value, float) and value != value)  # None or NaN
    return "null" if missing else scrub_text(str(value))[:80]


def validate_records(
    records: Records | list[dict[str, Any]],
    file: Path,
    cfg: FreshtuneConfig,
    results_dir: Path | None = None,
) -> ValidationReport:
    """Run the configured suite; with `results_dir`, keep validation.json and the Data Docs."""
    docs = None if results_dir is None else results_dir / "data-docs"
    if docs is not None:
        shutil.rmtree(docs, ignore_errors=True)
    suite = load_suite(cfg.data.suite, cfg)
    report = run_suite(records, suite, str(file), docs, cfg.data.chunk_rows)
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
