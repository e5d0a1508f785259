"""Shared fixtures: offline settings, a tiny local Llama, demo drops and a tiny config."""

from __future__ import annotations

import os

# Before anything imports prefect, mlflow or transformers (they read these at import).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
# Each xdist worker, and every process it starts, gets its share of the cores: with torch's
# default of a thread per core in both workers, OpenMP threads spin against each other. Two
# copies of the GPU check's rehearsal took 205 s each side by side, 105 s with one thread
# each, 95 s alone either way (2 cores).
os.environ.setdefault(
    "OMP_NUM_THREADS",
    str(len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) or 1),
)

from pathlib import Path
from typing import Any

import pytest

import freshtune  # noqa: F401  (sets the quiet defaults)
from freshtune.config import FreshtuneConfig, load_config
from freshtune.demo_domain import write_drop
from tests.helpers.tiny import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def demo_drops(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("drops")
    return [write_drop(m, root / f"month-{m:02d}.jsonl") for m in (1, 2, 3)]


@pytest.fixture
def tiny_config(tiny_model: Path, tmp_path: Path):
    """A factory: the tiny preset on the tiny model in a fresh workspace, plus overrides."""

    def make(*overrides: str) -> FreshtuneConfig:
        cfg = load_config("tiny", [f"base_model={tiny_model}", *overrides], tmp_path / "ws")
        cfg.paths.ensure()
        return cfg

    return make


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the session (a cold start takes 20-30 s here)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test`'s workers take whole modules (tests/helpers/xdist.py)."""
    from tests.helpers import xdist

    return xdist.scheduler(config, log)


def pytest_itemcollected(item: pytest.Item) -> None:
    """A test on the deployed stack must be in a module that shares the stack's worker."""
    from tests.helpers.xdist import STACK_MODULES, module_of

    if "stack" in item.fixturenames and module_of(item.nodeid) not in STACK_MODULES:
        raise pytest.UsageError(f"{item.nodeid} uses `stack`: add its module to STACK_MODULES")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need a CUDA device: skipped elsewhere (make gpu-check runs them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (make gpu-check runs it)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
