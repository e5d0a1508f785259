"""The peak MFU is measured against, and what a 4-bit model counts as N."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from freshtune.config import TrainSettings
from tasks.throughput import (
    _shapes,
    effective_peak,
    measure_peak,
    model_params,
    theoretical_peak,
)


def test_the_peak_sweeps_shapes_and_threads_and_restores_the_thread_count(monkeypatch):
    import torch

    import tasks.throughput as throughput

    threads = torch.get_num_threads()
    seen: list[tuple[float, tuple[int, int, int], int]] = []
    real = throughput._matmul_rate

    def recorded(device, dtype, shape, repeats):
        rate = real(device, dtype, shape, repeats)
        seen.append((rate, shape, torch.get_num_threads()))
        return rate

    monkeypatch.setattr(throughput, "_matmul_rate", recorded)
    peak = measure_peak("cpu", "float32", quick=True)
    # Every shape at every thread count was timed, and the peak is the best of them all
    # (a comparison with a second timing would be flaky on a loaded machine).
    shapes = _shapes(on_gpu=False, quick=True)
    expected = {(s, t) for s in shapes for t in throughput._thread_counts()}
    assert {(shape, t) for _, shape, t in seen} == expected
    assert (peak.flops, peak.shape, peak.threads) == max(seen)
    assert torch.get_num_threads() == threads  # restored after the sweep


def test_the_theoretical_cpu_peak_is_derived_from_flags_and_clock():
    flops, basis = theoretical_peak("cpu", "float32")
    assert flops > 1e9 and "cores x" in basis and "GHz" in basis
    bf16, _ = theoretical_peak("cpu", "bfloat16")
    assert bf16 >= flops


def test_a_peak_is_never_below_what_training_reached():
    assert effective_peak(100.0, 120.0) == 120.0
    assert effective_peak(100.0, 80.0) == 100.0


def test_a_4bit_model_counts_the_parameters_it_stands_for(tiny_model: Path):
    from tasks.models import load_causal_lm
    from tasks.train import load_training_model

    full = model_params(load_causal_lm(str(tiny_model)))
    quantized = load_training_model(str(tiny_model), TrainSettings(quantization="nf4"))
    assert model_params(quantized) == full


@pytest.mark.gpu
def test_the_gpu_peak_has_a_theoretical_twin():
    peak = measure_peak("cuda", "bfloat16", quick=True)
    assert peak.flops > 1e12
    assert math.isnan(peak.theoretical) or 0.2 < peak.share_of_theory() < 1.2
