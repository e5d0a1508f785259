"""The UIs ops look at, in headless Debian Chromium: the Prefect UI on a suspended review run
(the review form) and the MLflow UI on the registered model (the `champion` alias).
The screenshots land in docs/, which the README shows."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from freshtune.demo_domain import write_drop
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
