"""make gpu-check, rehearsed on the CPU: every part runs, fails soft and is summarised."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=900
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA rule")
def test_without_cuda_it_says_so_and_does_nothing(tmp_path: Path):
    done = _run("--out", str(tmp_path / "out"))
    assert done.returncode == 0
    assert "no CUDA device here" in done.stdout
    assert not any((tmp_path / "out").iterdir())


def test_the_rehearsal_runs_every_part_and_summarises_it(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "out"
    done = _run("--rehearse", "--out", str(out), "--model", str(tiny_model), "--budget-s", "840")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = {r["part"]: r for r in json.loads((out / "summary.json").read_text())}
    expected = {
        "env", "peak", "model", "throughput-1b", "qlora-cycle", "pytest-gpu", "seasons",
        "throughput-smollm2",
    }  # fmt: skip
    assert summary.keys() == expected
    assert {p: r["status"] for p, r in summary.items()} == dict.fromkeys(expected, "ok")
    assert "| qlora-cycle | ok |" in (out / "summary.md").read_text()
    throughput = json.loads((out / "throughput-1b.json").read_text())
    assert throughput["freshtune_tok_s"] > 0 and 0 < throughput["freshtune_share_of_peak"] < 1
    assert throughput["theoretical_peak_gflops"] > 0
    qlora = summary["qlora-cycle"]["figures"]
    assert qlora["verdict"] in {"BLESSED", "UNDECIDED", "NOT_BLESSED"} and qlora["version"] == "1"
    assert (out / "qlora-merged" / "model.safetensors").is_file()
    assert summary["seasons"]["figures"]["month"] == 1


def test_a_failing_part_is_recorded_and_the_next_still_runs(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "out"
    done = _run(
        "--rehearse", "--out", str(out), "--model", str(tiny_model),
        "--tokenizer", str(tmp_path / "missing"), "--only", "throughput-1b", "env",
    )  # fmt: skip
    assert done.returncode == 0
    summary = {r["part"]: r for r in json.loads((out / "summary.json").read_text())}
    assert summary["throughput-1b"]["status"].startswith("failed")
    assert "no tokenizer at" in (out / "logs" / "throughput-1b.log").read_text()
    assert summary["env"]["status"] == "ok"
