"""Shared fixtures: offline settings, a tiny local Llama, demo drops and a tiny config."""

from __future__ import annotations

import os

# Before anything imports prefect, mlflow or transformers (they read these at import).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

from pathlib import Path

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


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's loadgroup (`make test`): a module's tests run in one worker, so
    its module and session fixtures start their servers once; every test on the deployed
    `stack` shares one worker too, since the stack is built once per worker. And `gpu` tests
    need a CUDA device: skipped elsewhere (make gpu-check runs them)."""
    import torch

    skip = pytest.mark.skip(reason="needs a CUDA device (make gpu-check runs it)")
    for item in items:
        group = "stack" if "stack" in item.fixturenames else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
        if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
            item.add_marker(skip)
