"""Compute accounting for training: FLOPs per token, the device's matmul peak, MFU and cost.

FLOPs are counted on the 4·N basis for LoRA: 2·N for the forward pass and 2·N for the
gradients flowing back through the frozen weights (which get no weight gradient of their own).
"""

from __future__ import annotations

import time
from typing import Any


def model_params(model: Any) -> int:
    """N: the parameters a token's matmuls touch; an untied input embedding is only a lookup."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    total = sum(p.numel() for p in base.parameters())
    embed = base.get_input_embeddings()
    out = base.get_output_embeddings()
    tied = out is not None and out.weight is embed.weight
    return total if tied else total - embed.weight.numel()


def flops_per_token(model: Any) -> float:
    return 4.0 * model_params(model)


def matmul_peak_flops(device: str = "cpu", dtype: str = "float32", size: int = 0) -> float:
    """The best FLOP/s of a square matmul on `device`, measured now (not a datasheet figure)."""
    import torch

    size = size or (1024 if device == "cpu" else 8192)
    torch_dtype = getattr(torch, dtype)
    a = torch.randn(size, size, device=device, dtype=torch_dtype)
    b = torch.randn(size, size, device=device, dtype=torch_dtype)
    best = float("inf")
    for _ in range(8 if device == "cpu" else 20):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
