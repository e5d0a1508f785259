"""Compute accounting for training: FLOPs per token, the device's matmul peak, MFU and cost.

FLOPs are counted on the 4·N basis for LoRA: 2·N for the forward pass and 2·N for the
gradients flowing back through the frozen weights (which get no weight gradient of their own).

Two peaks: the *measured* one (the best of several matmul shapes, repeats and, on the CPU,
thread counts: what this device really does) is the denominator of MFU; the *theoretical* one
(units × width × clock, from the CPU's flags or the GPU's compute capability) is printed beside
it, so a measured peak far below the datasheet is visible rather than flattering.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Dense bf16 tensor-core FLOPs per SM per clock, by compute capability (vendor datasheets:
# A100 312 TFLOP/s = 108 SMs x 1.41 GHz x 2048; H100/H200 SXM 989 = 132 x 1.83 GHz x 4096).
GPU_BF16_PER_SM_CLOCK = {(8, 0): 2048, (8, 6): 1024, (8, 9): 1024, (9, 0): 4096, (10, 0): 8192}
# FP32 FMA lanes per vector instruction, by the widest flag; server cores issue two a cycle.
CPU_FP32_LANES = (("avx512f", 16), ("avx2", 8), ("avx", 8), ("sse2", 4))
CPU_FMA_UNITS = 2


def model_params(model: Any) -> int:
    """N: the parameters a token's matmuls touch; an untied input embedding is only a lookup."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    total = sum(_numel(p) for p in base.parameters())
    embed = base.get_input_embeddings()
    out = base.get_output_embeddings()
    tied = out is not None and out.weight is embed.weight
    return total if tied else total - _numel(embed.weight)


def _numel(param: Any) -> int:
    # bitsandbytes packs two 4-bit weights a byte; quant_state.shape holds the logical shape.
    state = getattr(param, "quant_state", None)
    return math.prod(state.shape) if state is not None else param.numel()


def flops_per_token(model: Any) -> float:
    return 4.0 * model_params(model)


@dataclass(frozen=True)
class Peak:
    """The best matmul rate measured now, the shape and threads that gave it, and the
    theoretical rate of the same device (NaN where it cannot be derived)."""

    flops: float
    shape: tuple[int, int, int]
    threads: int
    theoretical: float
    basis: str  # how the theoretical figure was derived

    def share_of_theory(self) -> float:
        return self.flops / self.theoretical if self.theoretical > 0 else math.nan


def measure_peak(device: str = "cpu", dtype: str = "float32", quick: bool = False) -> Peak:
    """The best of several shapes, repeats and (CPU) thread counts; never a single shot."""
    import torch

    on_gpu = device.startswith("cuda")
    sizes = _shapes(on_gpu, quick)
    thread_counts = [torch.get_num_threads()] if on_gpu else _thread_counts()
    saved = torch.get_num_threads()
    best = (0.0, sizes[0], saved)
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for shape in sizes:
                rate = _matmul_rate(device, dtype, shape, repeats=3 if quick else 6)
                best = max(best, (rate, shape, threads))
    finally:
        torch.set_num_threads(saved)
    theory, basis = theoretical_peak(device, dtype)
    return Peak(best[0], best[1], best[2], theory, basis)


def matmul_peak_flops(device: str = "cpu", dtype: str = "float32") -> float:
    """The measured peak FLOP/s (see `measure_peak`), the denominator of MFU."""
    return measure_peak(device, dtype, quick=True).flops


def effective_peak(measured: float, achieved: float) -> float:
    """A peak that is a peak: never below a rate that training itself reached."""
    return max(measured, achieved)


def _shapes(on_gpu: bool, quick: bool) -> list[tuple[int, int, int]]:
    if on_gpu:
        shapes = [(8192, 8192, 8192), (4096, 4096, 16384), (16384, 8192, 8192)]
    else:
        shapes = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 1024, 4096)]
    return shapes[:2] if quick else shapes


def _thread_counts() -> list[int]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    return sorted({cores, max(1, cores // 2)}, reverse=True)


def _matmul_rate(device: str, dtype: str, shape: tuple[int, int, int], repeats: int) -> float:
    """FLOP/s of the fastest of `repeats` timed (m x k) @ (k x n) products after a warm-up,
    on random data (zeros run faster than real data on some GPUs)."""
    import torch

    m, k, n = shape
    torch_dtype = getattr(torch, dtype)
    a = torch.randn(m, k, device=device, dtype=torch_dtype)
    b = torch.randn(k, n, device=device, dtype=torch_dtype)
    a @ b  # warm-up: kernel selection, library handles
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * m * k * n / best


def theoretical_peak(device: str, dtype: str) -> tuple[float, str]:
    """(FLOP/s, how it was derived) from the hardware's description; NaN when unknown."""
    if device.startswith("cuda"):
        return _gpu_theoretical(dtype)
    return _cpu_theoretical(dtype)


def _gpu_theoretical(dtype: str) -> tuple[float, str]:
    import torch

    props = torch.cuda.get_device_properties(0)
    per_clock = GPU_BF16_PER_SM_CLOCK.get((props.major, props.minor))
    clock_hz = _gpu_max_clock_hz()
    if dtype != "bfloat16" or per_clock is None or not clock_hz:
        return math.nan, f"unknown for sm_{props.major}{props.minor} {dtype}"
    flops = props.multi_processor_count * clock_hz * per_clock
    basis = (
        f"{props.multi_processor_count} SMs x {clock_hz / 1e9:.2f} GHz x {per_clock} "
        f"dense bf16 FLOP/clock (sm_{props.major}{props.minor})"
    )
    return flops, basis


def nvidia_smi(field: str) -> str:
    """One `--query-gpu` field of GPU 0 as nvidia-smi prints it; "" when it cannot tell."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def _gpu_max_clock_hz() -> float:
    try:
        return float(nvidia_smi("clocks.max.sm")) * 1e6
    except ValueError:
        return 0.0


def _cpu_theoretical(dtype: str) -> tuple[float, str]:
    """cores x FMA units x lanes x 2 FLOPs x clock; bf16 counts AVX512-BF16's doubled lanes."""
    flags = set(_cpuinfo_field("flags").split())
    lanes = next((n for flag, n in CPU_FP32_LANES if flag in flags), 1)
    if dtype == "bfloat16" and "avx512_bf16" in flags:
        lanes *= 2
    fma = 2 if "fma" in flags or "avx512f" in flags else 1
    clock_hz, clock_source = _cpu_clock_hz()
    cores = _thread_counts()[0]
    if not clock_hz:
        return math.nan, "unknown clock"
    flops = cores * CPU_FMA_UNITS * lanes * fma * clock_hz
    basis = (
        f"{cores} cores x {CPU_FMA_UNITS} FMA units x {lanes} {dtype} lanes x {fma} x "
        f"{clock_hz / 1e9:.2f} GHz ({clock_source})"
    )
    return flops, basis


def _cpu_clock_hz() -> tuple[float, str]:
    """The highest clock the system reports: cpufreq's maximum, the model name's rating, or
    the current clock (which under-states turbo)."""
    sysfs = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if sysfs.is_file():
        return float(sysfs.read_text().strip()) * 1e3, "cpufreq max"
    rated = re.search(r"@\s*([\d.]+)\s*GHz", _cpuinfo_field("model name"))
    if rated:
        return float(rated.group(1)) * 1e9, "model name"
    current = _cpuinfo_field("cpu MHz")
    return (float(current) * 1e6, "current clock") if current else (0.0, "unknown")


def _cpuinfo_field(name: str) -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    match = re.search(rf"^{re.escape(name)}\s*:\s*(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
