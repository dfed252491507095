"""What detection and segmentation transfer share: presets, the backbone to fine-tune, the
iteration sampler, learning-rate schedules and evaluation records."""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from ..eval.report import make_record
from .datasets import TransferError

log = logging.getLogger("byol.transfer")


# ---------------------------------------------------------------------------------------------
# presets


def resolve_settings(table: Mapping[str, dict[str, Any]], preset: str | dict[str, Any],
                     overrides: Mapping[str, Any] | None = None, *,
                     flag: str = "--preset") -> dict[str, Any]:
    """A preset (name in ``table``, YAML file, or dict; YAML/dicts may name a ``base`` preset)
    with ``overrides`` applied (``None`` values are skipped).

    Overriding ``batch_size`` without ``lr`` scales the lr linearly (the preset's lr is for its
    batch); overriding ``iterations`` without ``steps`` / ``warmup_iters`` scales those too."""
    if isinstance(preset, dict):
        raw, name = dict(preset), str(preset.get("name", "custom"))
    elif preset in table:
        raw, name = {}, preset
        raw["base"] = preset
    else:
        p = Path(preset)
        if p.suffix not in (".yaml", ".yml") or not p.is_file():
            raise TransferError(f"{flag} {preset!r}: not a preset ({', '.join(table)}) nor a "
                                "YAML file")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise TransferError(f"{p}: invalid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise TransferError(f"{p}: expected a mapping of settings")
        name = p.stem
    base_name = raw.pop("base", None)
    raw.pop("name", None)
    if base_name is not None and base_name not in table:
        raise TransferError(f"{flag}: base {base_name!r} is not one of {', '.join(table)}")
    base = copy.deepcopy(table[base_name or next(iter(table))])
    s = dict(base)
    keys = set(base)
    for src, where in ((raw, f"{flag} {name}"), (overrides or {}, "--set")):
        unknown = sorted(k for k in src if k not in keys)
        if unknown:
            raise TransferError(f"{where}: unknown setting(s) {unknown}; known: "
                                f"{', '.join(sorted(keys))}")
    s.update(raw)
    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    ref = dict(s)
    s.update(ov)
    if "batch_size" in ov and "lr" not in ov and ov["batch_size"] != ref["batch_size"]:
        s["lr"] = ref["lr"] * ov["batch_size"] / ref["batch_size"]
        log.info("lr %.4g scaled linearly from the preset's %.4g at batch %d", s["lr"],
                 ref["lr"], ref["batch_size"])
    if "iterations" in ov and ov["iterations"] != ref["iterations"]:
        r = ov["iterations"] / ref["iterations"]
        if "steps" in s and "steps" not in ov:
            s["steps"] = [max(1, round(v * r)) for v in ref["steps"]]
        if "warmup_iters" in s and "warmup_iters" not in ov:
            s["warmup_iters"] = round(ref["warmup_iters"] * r)
    s["preset"] = name
    if int(s["iterations"]) < 1 or int(s["batch_size"]) < 1:
        raise TransferError("iterations and batch size must be >= 1")
    return s


def parse_set(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set key=value`` items (values parsed as YAML: numbers, lists, booleans)."""
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise TransferError(f"--set {item!r}: write KEY=VALUE, e.g. --set iterations=100")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def dump_presets(table: Mapping[str, dict[str, Any]]) -> str:
    return yaml.safe_dump({k: dict(v) for k, v in table.items()}, sort_keys=False,
                          default_flow_style=None)


# ---------------------------------------------------------------------------------------------
# the backbone


def load_transfer_backbone(checkpoint: str | None, baseline: str | None, *, which="online",
                           arch=None, in_chans=None, small_stem=None, width=None, seed=None,
                           trust=False):
    """:class:`byol.eval.features.EvalModel` for a byol checkpoint (foreign ResNet weights also
    load) or a baseline: ``random`` (the checkpoint's architecture when one is given, seeded) or
    ``torchvision`` (supervised ImageNet weights from the local cache)."""
    from ..eval.loading import load_eval_model

    if not checkpoint and not baseline:
        raise TransferError("give --checkpoint PATH (a byol checkpoint) or --baseline random")
    if baseline not in (None, "", "random", "torchvision"):
        raise TransferError(f"--baseline {baseline}: transfer supports random and torchvision")
    if checkpoint and not Path(checkpoint).is_file():
        raise TransferError(f"--checkpoint {checkpoint}: no such file")
    m = load_eval_model(checkpoint, baseline, which=which, arch=arch, in_chans=in_chans,
                        small_stem=small_stem, width=width, seed=seed, trust=trust)
    if not hasattr(m.backbone, "layer4") or not hasattr(m.backbone, "stage_channels"):
        raise TransferError(f"{m.arch}: transfer needs one of byol's ResNets (torchvision module "
                            "names); timm backbones are not supported")
    return m


def stem_stride(backbone: nn.Module) -> int:
    """Stride of the stem (conv1 + max-pool): 4 for torchvision's, 1 for the small-image stem."""
    s = int(backbone.conv1.stride[0])
    if isinstance(backbone.maxpool, nn.MaxPool2d):
        s *= 2
    return s


# ---------------------------------------------------------------------------------------------
# training helpers


class InfiniteBatchSampler(torch.utils.data.Sampler):
    """Endless shuffled batches (detectron2's TrainingSampler); with ``world > 1`` each rank
    takes its slice of the same permutation."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed)
        buf: list[int] = []
        while True:
            for i in torch.randperm(self.n, generator=g).tolist()[self.rank::self.world]:
                buf.append(i)
                if len(buf) == self.batch_size:
                    yield buf
                    buf = []


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def list_collate(batch):
    return tuple(zip(*batch))


def warmup_multistep(it: int, steps: Sequence[int], gamma: float, warmup_iters: int,
                     warmup_factor: float) -> float:
    """detectron2's WarmupMultiStepLR factor at iteration ``it`` (linear warmup)."""
    f = gamma ** sum(1 for s in steps if it >= s)
    if it < warmup_iters:
        a = it / warmup_iters
        f *= warmup_factor * (1 - a) + a
    return f


def poly(it: int, total: int, power: float, base: float, min_lr: float) -> float:
    """mmseg's PolyLR: (base - min) * (1 - it / total) ** power + min."""
    return (base - min_lr) * (1 - min(it, total) / total) ** power + min_lr


def default_workers(device: torch.device) -> int:
    import os

    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


class Progress:
    """Iteration log lines (loss, lr, seconds per iteration) every ``every`` iterations."""

    def __init__(self, total: int, every: int, label: str, enabled: bool = True) -> None:
        self.total, self.every, self.label, self.enabled = total, max(1, every), label, enabled
        self.t0 = time.perf_counter()

    def __call__(self, it: int, loss: float, lr: float, parts: Mapping[str, float] | None = None):
        if not self.enabled or not ((it + 1) % self.every == 0 or it + 1 == self.total):
            return
        dt = (time.perf_counter() - self.t0) / (it + 1)
        extra = "  ".join(f"{k} {v:.3f}" for k, v in (parts or {}).items())
        log.info("%s iter %d/%d  loss %.4f  lr %.4g  %.2f s/it  %s", self.label, it + 1,
                 self.total, loss, lr, dt, extra)


def train_iterations(model: nn.Module, train: torch.utils.data.Dataset, settings: Mapping[str, Any],
                     *, optimizer: Callable[[nn.Module], torch.optim.Optimizer],
                     lr_at: Callable[[int], float],
                     losses_of: Callable[[nn.Module, Any, int],
                                         tuple[torch.Tensor, Mapping[str, torch.Tensor]]],
                     label: str, device: torch.device, seed: int = 0, workers: int | None = None,
                     collate_fn: Callable | None = None, log_every: int = 20, rank: int = 0,
                     world: int = 1, progress: bool = True) -> dict[str, Any]:
    """The fine-tuning loop both tasks run: ``settings["iterations"]`` SGD steps on endless
    shuffled batches of ``settings["batch_size"]`` (split over ``world`` processes, the model
    wrapped in DistributedDataParallel when ``world > 1``), every parameter group at
    ``lr_at(it)``. ``optimizer(model)`` builds the optimizer; ``losses_of(net, batch, it)``
    returns the loss and its named parts (and rejects a non-finite loss as it sees fit).
    Returns {"losses", "final_loss" (mean of the last 20), "train_s"}."""
    iters, batch = int(settings["iterations"]), int(settings["batch_size"])
    if batch % world:
        raise TransferError(f"--batch-size {batch} must be divisible by the {world} processes")
    seed_all(seed + rank)
    model.to(device).train()
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = optimizer(model)
    workers = default_workers(device) if workers is None else workers
    loader = torch.utils.data.DataLoader(
        train, batch_sampler=InfiniteBatchSampler(len(train), batch // world, seed, rank, world),
        collate_fn=collate_fn, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=False)
    show = Progress(iters, log_every, label, enabled=progress and rank == 0)
    losses: list[float] = []
    t0 = time.perf_counter()
    it = 0
    for batch_ in loader:
        lr = lr_at(it)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, parts = losses_of(net, batch_, it)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        show(it, losses[-1], lr, {k: float(v.detach()) for k, v in parts.items()})
        it += 1
        if it >= iters:
            break
    tail = losses[-min(20, len(losses)):]
    return {"losses": losses, "final_loss": float(np.mean(tail)),
            "train_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# records


def save_finetuned(path: str, fmt: str, settings: Mapping[str, Any], model: nn.Module,
                   **meta: Any) -> None:
    """The fine-tuned model as {"format", "settings", **meta, "model"} (``--save``)."""
    from ..checkpoint import atomic_save

    atomic_save({"format": fmt, "settings": settings, **meta, "model": model.state_dict()}, path)


def transfer_record(task: str, model_spec: Any, results: dict[str, Any], hist: Mapping[str, Any],
                    *, settings: dict[str, Any], data_info: dict | None, t0: float, t1: float,
                    **more: Any) -> dict[str, Any]:
    """The evaluation record of a transfer run started at ``t0`` and evaluated from ``t1``:
    ``results`` plus the training losses and times (and ``more``)."""
    results.update(final_loss=hist["final_loss"], first_loss=hist["losses"][0],
                   train_s=hist["train_s"], eval_s=time.perf_counter() - t1, **more)
    return make_record(
        task, model_spec.label, results, checkpoint=model_spec.checkpoint,
        arch=model_spec.arch, data=data_info or {}, settings=settings,
        wall_s=time.perf_counter() - t0)


def pct(d: Mapping[str, Any]) -> dict[str, Any]:
    """Fractions -> percentages (lists element-wise; NaN stays NaN, written as null)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, (list, tuple)):
            out[k] = [100.0 * float(x) for x in v]
        elif isinstance(v, (int, float, np.floating)):
            out[k] = 100.0 * float(v)
        else:
            out[k] = v
    return out


def summary_line(rec: dict[str, Any], task: str, keys: Sequence[str], prefix: str = "") -> str:
    """One line for a transfer record: model, task, ``prefix``, the ``keys`` of its results
    (two decimals, a dash where missing or not finite), final loss and wall time."""
    r = rec["results"]

    def f(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, (int, float)) and math.isfinite(v) else "–"

    body = "  ".join(f"{k} {f(r.get(k))}" for k in keys)
    return (f"{rec['model']:>14s} {task}  {prefix}{body}  loss {f(r.get('final_loss'))}   "
            f"({rec.get('wall_s') or 0:.1f} s)")
