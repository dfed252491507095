"""Resource preflight: will this run fit in memory?

Before anything is allocated, :func:`estimate_memory` builds the BYOL model on PyTorch's
``meta`` device (shapes only, no storage: a 5-trillion-parameter model costs nothing) and runs
one forward of both views there, summing the outputs of every layer that autograd keeps for
the backward pass. With the parameter counts this gives the bytes of one training step:

* weights of the online network, predictor and target (fp32),
* gradients of the trainable part and the optimiser's state (1 buffer for LARS/SGD, 2 for
  Adam/AdamW),
* activations kept for the backward pass: per sample from the meta forward, times the
  per-process batch (``train.batch_size``; accumulation reuses the memory of one
  micro-batch), in the autocast dtype.

:func:`check_memory` compares that with what the device has (:func:`byol.runtime.
available_memory`) and raises a :class:`TrainingError` naming both numbers and the settings
to lower, instead of letting the OOM killer end the run without a word. The estimate leaves
out allocator overhead and temporaries, so it errs on the low side: it never stops a run that
would fit, and catches the ones that are off by a wide margin (the defaults on a laptop, a
mistyped width).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from .config import Config
from .errors import TrainingError
from .runtime import available_memory

log = logging.getLogger("byol")

GiB = 2**30


@dataclass
class MemoryEstimate:
    params_trainable: int
    params_target: int
    state_bytes: float  # weights, gradients, optimiser state
    activation_bytes: float  # for one micro-batch on this process
    per_sample_bytes: float

    @property
    def total(self) -> float:
        return self.state_bytes + self.activation_bytes


def estimate_memory(cfg: Config, fuse_views: bool, amp_dtype: torch.dtype | None) -> MemoryEstimate:
    """Bytes one process needs for one training step of ``cfg`` (see the module docstring)."""
    from .models.byol import build_byol

    with torch.device("meta"):
        model = build_byol(cfg.model, fuse_views, False)
    trainable = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("target."))
    target = sum(p.numel() for n, p in model.named_parameters() if n.startswith("target."))
    opt_buffers = 2 if cfg.optim.name in ("adam", "adamw") else 1
    state = 4.0 * (trainable * (2 + opt_buffers) + target)

    kept = [0]
    act_bytes = 2 if amp_dtype in (torch.bfloat16, torch.float16) else 4

    def count(module, _inputs, output) -> None:
        if torch.is_grad_enabled() and not getattr(module, "inplace", False):  # (same storage)
            for t in output if isinstance(output, (tuple, list)) else (output,):
                if isinstance(t, torch.Tensor):
                    kept[0] += t.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    for m in model.modules():  # meta BatchNorm runs a slow Python decomposition; its output
        if isinstance(m, torch.nn.modules.batchnorm._NormBase):  # has the input's shape
            m.forward = torch.empty_like
    a, c = cfg.augment, cfg.model.in_chans
    n = 2  # BatchNorm needs more than one sample in training mode
    try:  # the online network and predictor on both views (the target runs without grad)
        model.train()
        views = [(2 * n, a.image_size)]
        if a.local_crops:
            views.append((n * a.local_crops, a.local_size or a.image_size // 2))
        for batch, side in views:
            x = torch.empty(batch, c, side, side, device="meta")
            model.predictor(model.online(x))
    finally:
        for h in hooks:
            h.remove()
    per_sample = kept[0] * act_bytes / n
    return MemoryEstimate(trainable, target, state, per_sample * cfg.train.batch_size, per_sample)


def check_memory(cfg: Config, device: torch.device, fuse_views: bool,
                 amp_dtype: torch.dtype | None) -> MemoryEstimate | None:
    """Raise a :class:`TrainingError` when the estimate exceeds what ``device`` has; returns
    the estimate (None when it could not be made, e.g. a timm model without meta support)."""
    try:
        est = estimate_memory(cfg, fuse_views, amp_dtype)
    except Exception as e:  # noqa: BLE001 - the preflight must never be the reason a run fails
        log.debug("memory preflight skipped: %s", e)
        return None
    avail, where = available_memory(device)
    # processes of one machine share its RAM (on GPUs each has its own device)
    share = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type != "cuda" else 1
    need = est.total * share
    if need > avail:
        t, a, m = cfg.train, cfg.augment, cfg.model
        procs = f" x {share} processes on this machine" if share > 1 else ""
        raise TrainingError(
            f"this run needs about {need / GiB:.1f} GiB{procs} but {device} has "
            f"{avail / GiB:.1f} GiB ({where}): {est.state_bytes / GiB:.1f} GiB for "
            f"{(est.params_trainable + est.params_target) / 1e6:,.1f} M parameters with their "
            f"gradients and optimiser state (model.arch={m.arch}, model.width={m.width}), and "
            f"{est.activation_bytes / GiB:.1f} GiB of activations for train.batch_size="
            f"{t.batch_size} x 2 views at augment.image_size={a.image_size} "
            f"({est.per_sample_bytes / 2**20:.1f} MiB per image). Lower train.batch_size (raise "
            "train.accumulate to keep the global batch), augment.image_size, model.width or "
            "model.arch; train.memory_check=false skips this check"
        )
    return est
