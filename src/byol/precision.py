"""Which reduced precision pays off on which device (one rule for training and evaluation)."""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX-512 BF16 or AMX). Elsewhere
    oneDNN emulates bf16 and autocast is ~10x slower than fp32 (measured: 4 vs 52 images/s for
    a BYOL step on an AVX2-only EPYC), so ``auto`` stays in fp32 there."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (auto | bf16 | fp16 | fp32) on ``device``; None
    means full fp32. ``auto``: bf16 on CUDA (fp16 on pre-Ampere GPUs) and on CPUs with fast
    bf16, fp32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, precision: str | torch.dtype | None):
    """The autocast context on ``device`` for ``precision``: a dtype already chosen (the
    trainer's; None is fp32) is applied as given; a name (auto | bf16 | fp16 | fp32, the
    evaluation flags) goes through :func:`autocast_dtype`, and fp16 then applies on CUDA only."""
    if not isinstance(precision, str):
        if precision is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=precision)
    dtype = autocast_dtype(precision, device)
    if dtype is None or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    if dtype == torch.float16 and device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
