"""LARS (as DeepMind's BYOL code), parameter groups and the warmup-cosine learning rate.

Biases and every normalisation parameter (BatchNorm weights and biases, the downsample BN
included) are excluded from both weight decay and the LARS trust ratio, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.optim import Optimizer

_NORMS = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def split_decay_groups(
    modules: Iterable[nn.Module], weight_decay: float, exclude_bias_and_norm: bool = True
) -> list[dict]:
    """Two parameter groups: regular weights (decay + LARS adaptation) and the excluded ones
    (every bias and every parameter of a normalisation layer: no decay, no adaptation)."""
    regular, excluded, seen = [], [], set()
    for module in modules:
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                if exclude_bias_and_norm and (isinstance(m, _NORMS) or name == "bias"):
                    excluded.append(p)
                else:
                    regular.append(p)
    groups = [{"params": regular, "weight_decay": weight_decay, "lars_exclude": False}]
    if excluded:
        groups.append({"params": excluded, "weight_decay": 0.0, "lars_exclude": True})
    return groups


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling, DeepMind's form:

        u = g + wd * w;  u *= eta * ||w|| / ||u||  (when both norms > 0);
        buf = momentum * buf + u;  w -= lr * buf

    Groups with ``lars_exclude=True`` skip the trust ratio (and have wd 0). The step runs as
    multi-tensor ``torch._foreach_*`` operations: one kernel per op for all parameters of a
    group, and no host synchronisation (norms and ratios stay on the device).
    """

    def __init__(
        self,
        params,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError("LARS needs lr >= 0, momentum >= 0, weight_decay >= 0, eta > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd, m, lr = group["weight_decay"], group["momentum"], group["lr"]
            if wd != 0:
                upd = torch._foreach_add(grads, params, alpha=wd)
            else:
                upd = [g.clone() for g in grads]
            if not group["lars_exclude"]:
                w_norm = torch.stack(torch._foreach_norm(params))
                u_norm = torch.stack(torch._foreach_norm(upd))
                ratio = torch.where(
                    (w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm,
                    torch.ones_like(w_norm),
                )
                torch._foreach_mul_(upd, list(ratio.unbind(0)))
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, m)
            torch._foreach_add_(bufs, upd)
            torch._foreach_add_(params, bufs, alpha=-lr)
        return loss


def build_optimizer(modules: Iterable[nn.Module], optim_cfg, lr: float,
                    predictor: nn.Module | None = None) -> Optimizer:
    """The optimiser of a :class:`byol.config.OptimConfig`, at the (already scaled) peak lr.

    With ``predictor`` given and ``optim_cfg.predictor_lr_mult != 1`` the predictor's parameters
    get their own groups (the same decay/LARS split) whose ``lr_mult`` is that multiplier;
    :func:`set_lr` applies it. At 1.0 the predictor joins the other groups (the paper)."""
    mult = float(getattr(optim_cfg, "predictor_lr_mult", 1.0))
    modules = list(modules)
    if predictor is not None and mult == 1.0:
        modules, predictor = [*modules, predictor], None
    groups = split_decay_groups(modules, optim_cfg.weight_decay, optim_cfg.exclude_bias_and_norm)
    if predictor is not None:
        own = split_decay_groups([predictor], optim_cfg.weight_decay, optim_cfg.exclude_bias_and_norm)
        taken = {id(p) for g in groups for p in g["params"]}
        for g in own:
            g["params"] = [p for p in g["params"] if id(p) not in taken]
            g["lr_mult"] = mult
        groups += [g for g in own if g["params"]]
    for g in groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
    if optim_cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=optim_cfg.momentum, eta=optim_cfg.eta)
    for g in groups:
        g.pop("lars_exclude")
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum, foreach=True)
    if optim_cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=optim_cfg.betas, foreach=True)
    raise ValueError(f"optim.name={optim_cfg.name!r}: choose lars, sgd or adamw")


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr`` times the group's ``lr_mult`` (1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule: lr = base_lr * global_batch / 256, where the global batch counts
    every process and every accumulated micro-batch of one optimiser step."""
    return base_lr * global_batch / 256


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float,
                  final: float = 0.0) -> float:
    """Linear warmup from ~0 to ``peak`` over ``warmup_steps``, then cosine to ``final``.
    A pure function of the step: resuming needs no scheduler state."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return peak
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return final + (peak - final) * (1 + math.cos(math.pi * progress)) / 2
