"""A newcomer's first bench run without the model: one line naming the command, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "bench",
    ["train_throughput", "incremental_vs_cumulative", "seasons", "review_generalisation"],
)
def test_a_missing_checkpoint_names_the_command_that_fetches_it(bench: str, tmp_path: Path):
    missing = tmp_path / "no-model-here"
    args = [sys.executable, str(ROOT / "bench" / f"{bench}.py"), "--model", str(missing)]
    if bench == "seasons":
        args += ["--report", str(tmp_path / "seasons.md")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    assert "freshtune models fetch smollm2" in done.stderr and str(missing) in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
