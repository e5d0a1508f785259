"""The peak MFU is measured against, and what a 4-bit model counts as N."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from freshtune.config import TrainSettings
from tasks.throughput import (
    _matmul_rate,
    _shapes,
    effective_peak,
    measure_peak,
    model_params,
    theoretical_peak,
)


def test_the_peak_sweeps_shapes_and_threads_and_restores_the_thread_count():
    import torch

    threads = torch.get_num_threads()
    peak = measure_peak("cpu", "float32", quick=True)
    assert peak.threads in {threads, max(1, threads // 2)}
    assert peak.shape in _shapes(on_gpu=False, quick=True)
    # One more single-shape measurement cannot beat the best by much (noise: 30%).
    single = _matmul_rate("cpu", "float32", (512, 512, 512), repeats=3)
    assert peak.flops > 0.7 * single
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
