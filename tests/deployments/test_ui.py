"""The UIs ops look at, in headless Debian Chromium: the Prefect UI on a suspended review run
(the review form) and the MLflow UI on the registered model (the `champion` alias); after
three more cycles, the charts of MLflow's `history` run and Prefect's `freshtune-history` table.
The screenshots land in docs/, which the README shows."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from freshtune.demo_domain import write_drop
from tasks.history import ARTIFACT_KEY, HISTORY_RUN
from tests.deployments.conftest import Stack

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]
HISTORY_MONTHS = (5, 6, 7)
HISTORY_SEED = 101  # bytes no other test of the session lands (they use the default seed)
TREND_KEYS = ("history.current", "history.general")  # new facts, general knowledge

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed: apt-get install chromium"
)


@contextmanager
def browser() -> Iterator:
    """Debian's chromium driven by Playwright (its event loop runs on this thread while open:
    start Prefect runs before opening it)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium.new_page(viewport={"width": 1440, "height": 900})
        finally:
            chromium.close()


def _wait_paused(stack: Stack, deployment: str, before: int, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = stack.runs_of(deployment)[before:]
        paused = [r for r in runs if r.state_type.value == "PAUSED"]
        if paused:
            return str(paused[0].id)
        failed = [r for r in runs if r.state_type.value in ("FAILED", "CRASHED")]
        assert not failed, [(r.name, r.state and r.state.message) for r in failed]
        time.sleep(2)
    raise TimeoutError(f"no paused run of {deployment}\n{stack.tail()}")


def test_review_form_in_prefect_ui_then_champion_alias_in_mlflow_ui(stack: Stack, tmp_path):
    from prefect.deployments import run_deployment

    from tasks.landing import land

    # Landed first: the deployment's policy takes drops from its landing folder only.
    drop = land(write_drop(4, tmp_path / "month-04.jsonl"), stack.cfg).url
    before = len(stack.runs_of("refresh/on-data-drop"))
    paused_cfg = stack.cfg.model_copy(
        update={"review": stack.cfg.review.model_copy(update={"mode": "pause"})}
    )
    with stack.settings():
        run_deployment(
            "refresh/on-data-drop",
            parameters={"drop": drop, "config": paused_cfg.model_dump(mode="json")},
            timeout=0,
        )
    run_id = _wait_paused(stack, "refresh/on-data-drop", before)

    ui = stack.prefect_url.removesuffix("/api")
    DOCS.mkdir(exist_ok=True)
    with browser() as page:
        page.goto(f"{ui}/runs/flow-run/{run_id}")
        page.get_by_role("button", name="Resume").first.click(timeout=60_000)
        form = page.get_by_role("dialog")
        form.get_by_text("approve", exact=False).first.wait_for(timeout=30_000)
        text = form.inner_text().lower()
        assert "comment" in text and "flags" in text
        page.screenshot(path=str(DOCS / "prefect-review-form.png"))

    stack.cli("review", "approve", run_id, "--comment", "checked the new plans", configured=False)
    stack.wait_runs("refresh/on-data-drop", before + 1)
    champion = stack.mlflow().get_model_version_by_alias("freshtune-adapter", "champion")

    with browser() as page:
        page.goto(f"{stack.mlflow_url}/#/models/freshtune-adapter")
        page.get_by_text("champion").first.wait_for(timeout=60_000)
        assert f"Version {champion.version}" in page.inner_text("body")
        page.screenshot(path=str(DOCS / "mlflow-champion.png"))


def test_history_trend_in_mlflow_ui_and_history_table_in_prefect_ui(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    names = _run_cycles(stack, tmp_path, monkeypatch)
    run = _history_run(stack)
    steps = {key: _steps(stack, run, key) for key in sorted(run.data.metrics)}
    assert all(len(steps[key]) >= 3 for key in TREND_KEYS), steps
    versions = _history_artifacts(stack)
    rows = json.loads(versions[0].data)
    assert len(versions) >= 3 and len(rows) >= 3 and len(rows) == max(steps[TREND_KEYS[0]])
    assert all(any(r["drop"].endswith(n) for r in rows) for n in names), (names, rows)

    DOCS.mkdir(exist_ok=True)
    with browser() as page:
        _shoot_mlflow_history(page, stack.mlflow_url, run, steps)
        _shoot_prefect_history(page, stack.prefect_url, versions, names)


def _shoot_mlflow_history(page: Any, mlflow_url: str, run: Any, steps: dict[str, list]) -> None:
    """The `history` run's Model metrics tab: one chart per metric over the cycles."""
    page.set_viewport_size({"width": 1440, "height": 1000})  # two rows of charts
    info = run.info
    page.goto(f"{mlflow_url}/#/experiments/{info.experiment_id}/runs/{info.run_id}/model-metrics")
    _close_mlflow_assistant(page)
    expected = sorted(len(s) for s in steps.values())
    assert _drawn_points(page, expected) == expected, steps  # every chart, every cycle
    for key in steps:
        assert page.get_by_text(key, exact=True).first.is_visible(), key
    page.screenshot(path=str(DOCS / "mlflow-history-trend.png"))


def _shoot_prefect_history(
    page: Any, prefect_url: str, versions: list[Any], names: list[str]
) -> None:
    """The key's page lists a table per cycle by short id; the newest shows every cycle."""
    page.set_viewport_size({"width": 2048, "height": 600})  # all 14 columns
    page.goto(f"{prefect_url.removesuffix('/api')}/artifacts/key/{ARTIFACT_KEY}")
    for version in versions[:3]:
        page.get_by_text(str(version.id)[:8], exact=True).wait_for(timeout=60_000)
    page.get_by_text(str(versions[0].id)[:8], exact=True).click()
    rows, cycles = page.locator("table tbody tr"), len(json.loads(versions[0].data))
    rows.nth(cycles - 1).wait_for(timeout=60_000)
    shown = page.locator("table tbody").inner_text()
    assert rows.count() == cycles, shown
    assert all(name in shown for name in names), shown
    assert page.locator("table").evaluate("t => t.scrollWidth <= t.parentElement.clientWidth")
    page.screenshot(path=str(DOCS / "prefect-history-artifact.png"))


def _run_cycles(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Three tiny cycles in this process against the stack's servers (the worker would pay a
    fresh interpreter and torch import per run), drops landed as the policy wants; returns
    the drops' file names."""
    from flows.refresh import refresh
    from tasks.landing import land

    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_url)
    monkeypatch.setenv("FRESHTUNE_LOCK_URL", stack.env["FRESHTUNE_LOCK_URL"])
    files = [
        write_drop(m, tmp_path / f"month-{m:02d}.jsonl", seed=HISTORY_SEED) for m in HISTORY_MONTHS
    ]
    with stack.settings():
        for file in files:
            record = refresh(land(file, stack.cfg).url, stack.cfg)
            assert not record.get("repeated"), record
    return [file.name for file in files]


def _history_run(stack: Stack) -> Any:
    mlc = stack.mlflow()
    experiment = mlc.get_experiment_by_name(stack.cfg.tracking.experiment)
    found = mlc.search_runs(
        [experiment.experiment_id], f"tags.`freshtune.kind` = '{HISTORY_RUN}'", max_results=2
    )
    assert len(found) == 1, [r.info.run_name for r in found]
    return found[0]


def _steps(stack: Stack, run: Any, key: str) -> list[int]:
    return sorted(m.step for m in stack.mlflow().get_metric_history(run.info.run_id, key))


def _history_artifacts(stack: Stack) -> list[Any]:
    """Every version of the `freshtune-history` table artifact, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    key = ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY]))
    with stack.settings(), get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=key, sort=ArtifactSort.CREATED_DESC)


def _close_mlflow_assistant(page: Any) -> None:
    """MLflow 3 opens its Assistant panel beside every page; closed, the charts get the width."""
    close = page.get_by_role("button", name="Close")
    close.wait_for(timeout=60_000)
    close.click()


def _drawn_points(page: Any, expected: list[int], timeout: float = 60) -> list[int]:
    """Markers drawn per plotly chart, sorted, once they match `expected` or at `timeout`
    (the charts arrive one metric at a time)."""
    plots = page.locator(".js-plotly-plot")
    deadline = time.monotonic() + timeout
    while True:
        counts = [
            plots.nth(i).locator(".scatterlayer .points path").count() for i in range(plots.count())
        ]
        if sorted(counts) == expected or time.monotonic() > deadline:
            return sorted(counts)
        page.wait_for_timeout(250)
