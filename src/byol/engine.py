"""The pretraining loop: one engine for CPU and GPU, one process or many (torchrun + DDP).

Data order and augmentation randomness are pure functions of (seed, epoch, step, micro-batch
slot), so a resumed run sees exactly the batches the uninterrupted run would have seen, and a
run on W processes x A accumulation steps sees the same global batch as one process with A*W
micro-batches. The learning rate and tau are pure functions of the optimiser step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from . import distributed as du
from .augment import BYOLAugment, match_channels
from .checkpoint import (
    FORMAT,
    CheckpointError,
    atomic_save,
    load_checkpoint,
    load_state_reporting,
    remove_stale_temps,
    write_error,
)
from .config import Config, config_from_dict, dump_yaml, parse_duration
from .errors import TrainingError
from .models.byol import build_byol, tau_schedule
from .optim import build_optimizer, scaled_lr, set_lr, warmup_cosine
from .precision import autocast, autocast_dtype
from .runtime import keep_freed_memory

log = logging.getLogger("byol")


#: train.nonfinite=skip gives up (TrainingError) after this many non-finite steps in a row.
MAX_CONSECUTIVE_SKIPS = 25

#: Test hook (fault injection): with BYOL_FAULT_KILL_AT_STEP=N, the process of rank
#: BYOL_FAULT_KILL_RANK (default 1) dies with os._exit(1) right after optimiser step N, on the
#: first torchrun attempt only (TORCHELASTIC_RESTART_COUNT unset or "0"). Used by
#: tests/test_reliability.py to show that torchrun --max-restarts + --resume auto recovers.
FAULT_KILL_ENV = "BYOL_FAULT_KILL_AT_STEP"


def _fault_kill_step(rank: int) -> int:
    step = os.environ.get(FAULT_KILL_ENV, "")
    if not step.isdigit() or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return 0
    return int(step) if int(os.environ.get("BYOL_FAULT_KILL_RANK", "1")) == rank else 0


# ----------------------------------------------------------------------------------------------
# data feeding


def _mix(*xs: int) -> int:
    """A 63-bit seed from integers (splitmix64-style), so nearby inputs give unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h ^= (x + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_mix(seed, epoch, 1))
    return torch.randperm(n, generator=g)


class MemoryFeeder:
    """Batches from a uint8 tensor held on the training device; crops, flips and colour ops
    are computed there per sample (no DataLoader, no worker processes)."""

    def __init__(self, images: torch.Tensor, augment: BYOLAugment, device: torch.device) -> None:
        self.images = images.to(device, non_blocking=True)
        self.augment = augment
        self.device = device
        self.generator = torch.Generator(device=device)

    def __len__(self) -> int:
        return len(self.images)

    def views(self, idx: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
        """The two global views of the images at ``idx`` (and, with augment.local_crops, the
        small local views stacked as one batch), drawn from ``seed``."""
        self.generator.manual_seed(seed)
        batch = self.images[idx.to(self.device, non_blocking=True)]
        v1, v2 = self.augment(batch, self.generator)
        if self.augment.cfg.local_crops:
            return v1, v2, self.augment.local_views(batch, self.generator)
        return v1, v2


class _SeededViews(torch.utils.data.Dataset):
    """Seeds the worker's torch RNG from (run seed, epoch, index) before each item, so crops
    done in DataLoader workers are reproducible and resume exactly."""

    def __init__(self, base, seed: int) -> None:
        self.base, self.seed = base, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        torch.manual_seed(_mix(self.seed, epoch, index, 2))
        return self.base[index]


class FolderFeeder:
    """Decode + crop + flip in DataLoader workers (fixed-size uint8), pinned non-blocking
    transfer, colour/blur/solarize on the device."""

    def __init__(self, src, cfg: Config, augment: BYOLAugment, device: torch.device) -> None:
        from .data import FolderViewsDataset

        base = FolderViewsDataset(
            src,
            cfg.augment.image_size,
            views=(cfg.augment.view1, cfg.augment.view2),
            interpolation=cfg.augment.interpolation,
            strict=cfg.data.strict,
            in_chans=cfg.model.in_chans,
        )
        self.dataset = _SeededViews(base, cfg.train.seed)
        self.cfg, self.augment, self.device = cfg, augment, device
        self.generator = torch.Generator(device=device)
        self.n = len(base)

    def __len__(self) -> int:
        return self.n

    def loader(self, keys: list[tuple[int, int]], batch_size: int):
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=keys,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            persistent_workers=False,
            prefetch_factor=4 if self.cfg.data.num_workers > 0 else None,
        )

    def finish(self, v1: torch.Tensor, v2: torch.Tensor, seed: int):
        self.generator.manual_seed(seed)
        v1 = v1.to(self.device, non_blocking=True)
        v2 = v2.to(self.device, non_blocking=True)
        return self.augment.photometric(v1, v2, self.generator)


# ----------------------------------------------------------------------------------------------
# the run


# train.time_budget: the rate is measured over optimiser steps BUDGET_PROBE[0]..BUDGET_PROBE[1]
# (the first steps pay for allocations and kernel selection: on a 2-core CPU steps 3-23 ran 17%
# slower than the rest of the run, which then ended a fifth of its budget early), and a margin
# is kept for the checkpoint saves and the end of the run.
BUDGET_PROBE = (10, 50)
BUDGET_MARGIN = 0.97


def budget_steps(done: int, elapsed_s: float, budget_s: float, steps_per_s: float,
                 monitor_s: float = 0.0, monitor_every: int = 0, margin: float = BUDGET_MARGIN) -> int:
    """Total optimiser steps of a run with a wall-clock budget: the ``done`` steps plus as many
    as fit into what is left of ``budget_s`` at ``steps_per_s``, with ``margin`` of it kept in
    reserve and the kNN monitor's ``monitor_s`` every ``monitor_every`` steps paid for. At least
    ``done + 1``."""
    left = max(budget_s - elapsed_s, 0.0) * margin
    per_step = 1.0 / steps_per_s + (monitor_s / monitor_every if monitor_every else 0.0)
    return max(done + 1, done + int(left / per_step + 1e-9))


def monitor_subsets(n_bank_src: int, n_query_src: int, bank: int, queries: int, seed: int,
                    same_images: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices of the kNN monitor's bank (into the training split) and queries (into the
    validation split), a pure function of ``seed``. When both splits are the same images the
    queries are held out: no query is ever in the bank. 0 means all (what is left)."""
    g = torch.Generator().manual_seed(_mix(seed, 17))
    if same_images:
        perm = torch.randperm(n_bank_src, generator=g)
        nq = queries or max(1, n_bank_src // 5)
        nq = min(nq, n_bank_src - 1)
        q, rest = perm[:nq], perm[nq:]
        b = rest[:bank] if bank else rest
        return b.sort().values, q.sort().values
    b = torch.randperm(n_bank_src, generator=g)
    q = torch.randperm(n_query_src, generator=g)
    b = b[:bank] if bank else b
    q = q[:queries] if queries else q
    return b.sort().values, q.sort().values


def subset_source(src, idx: torch.Tensor, what: str):
    """The samples ``idx`` of an in-memory or file source, as a source of the same kind."""
    from .data import ArraySource, FileSource

    labels = src.labels[idx] if src.labels is not None else None
    name = f"{src.name} ({what}: {len(idx)} of {len(src)})"
    if isinstance(src, ArraySource):
        return ArraySource(src.images[idx], labels, src.classes, name)
    return FileSource([src.files[i] for i in idx.tolist()], labels, src.classes, name)


@dataclass
class RunState:
    step: int = 0  # optimiser steps done
    epoch: int = 0  # epoch in progress (or next)
    step_in_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0  # optimiser steps dropped for a non-finite loss/gradient (nonfinite=skip)
    elapsed_s: float = 0.0  # wall seconds of training in earlier sessions of this run (resumes)


class Trainer:
    """Builds everything a pretraining run needs from a :class:`Config` and runs it."""

    def __init__(self, cfg: Config, resume: str | None = None, config_header: str = "") -> None:
        self.cfg = cfg
        self.config_header = config_header  # comment lines written above RUN/config.yaml
        self.dist, self.device = du.init_distributed(cfg.train.device)
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        if self.device.type == "cpu":
            keep_freed_memory()  # no page-fault storm from re-mmapped activations
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(t.seed)
        self.out = Path(cfg.log.out_dir)
        if self.dist.is_main:
            _ensure_writable(self.out)
            stale = remove_stale_temps(self.out)
            if stale:
                log.info("removed %d temporary file(s) left in %s by an interrupted save: %s",
                         len(stale), self.out, ", ".join(p.name for p in stale))
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device)
        self.channels_last = t.channels_last if t.channels_last is not None else True
        self._stop_signal: int | None = None
        self._saved_step = -1
        self._skip_nonfinite = t.nonfinite == "skip"
        self.last_step_skipped = False
        self._fault_step = _fault_kill_step(self.dist.rank)
        self._metrics_warned = False
        # loss summed on the device since the last log (checked for NaN before each save)
        self._loss_sum: torch.Tensor | None = None

        # One forward for both views pays on GPUs (bigger kernels); on CPUs the extra
        # concatenations cost more than they save (70 vs 80 images/s measured on 2 cores).
        fuse = t.fuse_views if t.fuse_views is not None else self.device.type == "cuda"
        if t.memory_check:  # before anything big is allocated: a clear stop, not the OOM killer
            from .preflight import check_memory

            check_memory(cfg, self.device, fuse, self.amp_dtype)
        self.model = build_byol(cfg.model, fuse, t.init_target_from_online).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.dist.enabled and cfg.model.sync_bn and self.device.type != "cuda":
            if self.dist.is_main:
                log.warning("model.sync_bn: SyncBatchNorm needs CUDA; on %s each process keeps "
                            "its own BatchNorm statistics", self.device.type)
        elif self.dist.enabled and cfg.model.sync_bn:
            self.model.convert_sync_batchnorm()
            self.model.to(self.device)

        self.global_batch = t.batch_size * t.accumulate * self.dist.world_size
        self.peak_lr = scaled_lr(cfg.optim.base_lr, self.global_batch)
        self.optimizer = build_optimizer(
            [self.model.online], cfg.optim, self.peak_lr, predictor=self.model.predictor
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )

        self.feeder = self._build_feeder()
        self.steps_per_epoch = self._check_sizes(len(self.feeder))
        self.total_steps = t.total_steps or self.steps_per_epoch * t.epochs
        self.num_epochs = -(-self.total_steps // self.steps_per_epoch)
        self.time_budget_s = parse_duration(t.time_budget)
        # with a time budget the step count is fixed after BUDGET_PROBE[1] steps; until then the
        # epochs-based count shapes the schedules and the run may go on past it
        self.budget_fixed = not self.time_budget_s
        if not self.budget_fixed:
            self.num_epochs = 10**9
        self.warmup_steps = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.state = RunState()
        if resume == "auto":  # torchrun --max-restarts: continue if this run saved anything
            has = (self.out / "last.pt").is_file() or any(self.out.glob("ckpt_*.pt"))
            resume = str(self.out) if has else None
        if resume:
            self._resume(resume)

        if t.compile:
            for part in (self.model.online, self.model.predictor, self.model.target):
                part.compile()
        if self.dist.enabled:
            self.ddp: nn.Module = DDP(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        else:
            self.ddp = self.model
        self.writer = None
        if self.dist.is_main and cfg.log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed: no event files")
        self._knn_data = None
        self._monitor_cost = 0.0
        self._monitor_total = 0.0  # seconds this session spent in the monitor
        self._last_knn: float | None = None
        self.monitor_indices: dict[str, Any] | None = None
        self._t0: float | None = None
        self._probe: list[tuple[int, float]] = []

    # -- data ------------------------------------------------------------------------------

    def _check_sizes(self, n: int) -> int:
        """Optimiser steps per epoch for ``n`` images, checked before any schedule is built:
        every micro-batch of every step must hold at least one image."""
        t, d = self.cfg.train, self.cfg.data
        what = f"the dataset ({self.source.name}{f', {d.path}' if d.path else ''}) has {n} images"
        batch = (f"one global batch of {self.global_batch} (train.batch_size={t.batch_size} x "
                 f"train.accumulate={t.accumulate} x {self.dist.world_size} processes)")
        if n < self.global_batch:
            fit = max(1, n // (t.accumulate * self.dist.world_size))
            raise TrainingError(f"{what}, fewer than {batch}: lower train.batch_size (to at most "
                                f"{fit}) or give more images")
        if t.steps_per_epoch:
            last_slot = t.steps_per_epoch * self.global_batch - t.batch_size
            if last_slot >= n:
                raise TrainingError(
                    f"{what}: train.steps_per_epoch={t.steps_per_epoch} x {batch} needs "
                    f"{t.steps_per_epoch * self.global_batch}, so some micro-batches would be "
                    f"empty: set train.steps_per_epoch to at most {n // self.global_batch} (or 0: "
                    "as many as the data gives)")
            return t.steps_per_epoch
        return n // self.global_batch

    def _build_feeder(self):
        from .data import ArraySource, open_source

        d, a = self.cfg.data, self.cfg.augment
        src = open_source(
            d.source,
            d.path,
            d.split,
            image_size=a.image_size,
            in_memory=d.in_memory,
            max_memory_gb=d.max_memory_gb,
            load_size=d.load_size,
            strict=d.strict,
            synthetic_size=d.synthetic_size,
            limit=d.limit,
            seed=self.cfg.train.seed,
        )
        self.source = src
        augment = BYOLAugment(a, self.cfg.model.in_chans)
        if isinstance(src, ArraySource):
            images = src.images
            if images.shape[1] != self.cfg.model.in_chans:
                images = _match_channels(images, self.cfg.model.in_chans, src.name)
            return MemoryFeeder(images, augment, self.device)
        if a.local_crops:
            raise TrainingError(
                f"augment.local_crops={a.local_crops} needs the dataset in memory, and "
                f"{src.name} is read from files: set data.in_memory=true (and data.load_size) or "
                "augment.local_crops=0"
            )
        return FolderFeeder(src, self.cfg, augment, self.device)

    def _slot_indices(self, perm: torch.Tensor, step_in_epoch: int) -> list[tuple[int, torch.Tensor]]:
        """This process's micro-batches of one optimiser step: (global slot, indices)."""
        b, w, acc, r = self.cfg.train.batch_size, self.dist.world_size, self.cfg.train.accumulate, self.dist.rank
        start = step_in_epoch * self.global_batch
        out = []
        for j in range(acc):
            slot = j * w + r
            out.append((slot, perm[start + slot * b : start + (slot + 1) * b]))
        return out

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.state.step,
            "epoch": self.state.epoch,
            "step_in_epoch": self.state.step_in_epoch,
            "history": self.state.history,
            "skipped_steps": self.state.skipped,
            "elapsed_s": self.state.elapsed_s + self._session_elapsed(),
            "schedule": {"total_steps": self.total_steps, "num_epochs": self.num_epochs,
                         "budget_fixed": self.budget_fixed,
                         "time_budget_s": self.time_budget_s},
            "rng": {"torch": torch.get_rng_state()},
            "world_size": self.dist.world_size,
        }

    def save(self) -> Path | None:
        """Write ckpt_<step>.pt atomically, point last.pt at it, prune to log.keep_last.

        Refuses (TrainingError) to save non-finite weights or after a non-finite loss, so the
        newest checkpoint is always a good one; a failed write (full disk) leaves the previous
        checkpoints untouched and ends the run with a TrainingError on every process."""
        bad = self._nonfinite_state()
        if bad:
            raise TrainingError(
                f"{bad} at step {self.state.step}: training diverged; not saving it. "
                + self._diverged_advice())
        self._saved_step = self.state.step
        path = self.out / f"ckpt_{self.state.step:08d}.pt"
        error: OSError | None = None
        if self.dist.is_main:
            try:
                atomic_save(self.state_dict(), path)
                _link_or_copy(path, self.out / "last.pt")
            except Exception as e:  # noqa: BLE001 - any failure of the writer is a failed save
                error = e if isinstance(e, OSError) else write_error(e, path)
        if self.dist.enabled:  # every process stops if rank 0 could not write
            flag = torch.tensor([float(error is not None)], device=self.device)
            torch.distributed.all_reduce(flag)
            failed = bool(flag.item())
        else:
            failed = error is not None
        if failed:
            prev = self.out / "last.pt"
            why = f"{error.strerror or error}" if error is not None else "see rank 0"
            then = (f"the previous checkpoint {prev} is intact. Free space in {self.out} (or "
                    f"choose another --out), then resume with --resume {self.out}"
                    if prev.is_file() else f"no earlier checkpoint exists. Free space in "
                    f"{self.out} (or choose another --out), then run again")
            raise TrainingError(f"cannot write checkpoint {path} ({why}); {then}") from error
        if not self.dist.is_main:
            return None
        for old in sorted(self.out.glob("ckpt_*.pt"))[: -self.cfg.log.keep_last]:
            try:
                old.unlink()
            except OSError as e:  # pruning is housekeeping: never lose a run over it
                log.warning("could not delete old checkpoint %s (%s)", old, e.strerror or e)
        return path

    def _diverged_advice(self, data: bool = False) -> str:
        """What a diverged run keeps and what to change: the newest checkpoint only if one
        exists, and train.nonfinite=skip only when it is not already on."""
        last = self.out / "last.pt"
        saved = self._saved_step if self._saved_step >= 0 else None
        if last.is_file():
            kept = (f"The last good checkpoint is kept in {self.out} ({last.name}"
                    f"{f', step {saved}' if saved is not None else ''})")
            then = "then --resume " + str(self.out)
        else:
            kept = f"No checkpoint was saved yet in {self.out}"
            then = "then run again"
        fixes = [f"lower optim.base_lr (peak lr was {self.peak_lr:.3g})"]
        if not self._skip_nonfinite:
            fixes += ["raise optim.warmup_epochs", "set train.nonfinite=skip"]
        elif data:
            fixes.append("check the data")
        return f"{kept}; {', '.join(fixes[:-1])}{' or ' if len(fixes) > 1 else ''}{fixes[-1]}, {then}"

    def _nonfinite_state(self) -> str | None:
        """What is non-finite in the pending loss or the weights, or None (one host sync)."""
        checks = []
        if self._loss_sum is not None:
            checks.append(self._loss_sum.reshape(1).float())
        params = [p.detach() for p in self.model.parameters()]
        if params:
            checks.append(torch.stack(torch._foreach_norm(params)).float())
        flags = torch.stack([(~torch.isfinite(c)).any() for c in checks]).float()
        if self.dist.enabled:
            torch.distributed.all_reduce(flags)
        flags = flags.tolist()
        if self._loss_sum is not None and flags[0]:
            return "the loss became non-finite (nan/inf)"
        if flags[-1]:
            return "the weights became non-finite (nan/inf)"
        return None

    def _resume(self, where: str) -> None:
        path, ckpt = self._load_resumable(where)
        if ckpt.get("format") != FORMAT:
            raise TrainingError(f"'{path}' is not a byol training checkpoint; cannot resume from it")
        missing = [k for k in ("config", "model", "optimizer", "step", "epoch", "step_in_epoch")
                   if k not in ckpt]
        if missing:
            raise TrainingError(
                f"'{path}' has no {', '.join(missing)} (an imported or exported checkpoint?): it "
                "can be evaluated but not resumed; start a new run without --resume"
            )
        saved = config_from_dict(ckpt["config"], str(path))
        if saved.model != self.cfg.model:
            mine, theirs = self.cfg.to_dict()["model"], saved.to_dict()["model"]
            diff = ", ".join(f"model.{k}: checkpoint {theirs[k]!r} vs config {mine[k]!r}"
                             for k in mine if mine[k] != theirs[k])
            raise TrainingError(
                f"'{path}' was trained with other model settings ({diff}); resume with the same "
                "config (it is stored in the checkpoint: `byol config show --checkpoint`)"
            )
        load_state_reporting(self.model, ckpt["model"], str(path))
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if "scaler" in ckpt:
                self.scaler.load_state_dict(ckpt["scaler"])
            if "rng" in ckpt:
                torch.set_rng_state(ckpt["rng"]["torch"])
            self.state = RunState(int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["step_in_epoch"]),
                                  list(ckpt.get("history", [])), int(ckpt.get("skipped_steps", 0)),
                                  float(ckpt.get("elapsed_s", 0.0)))
            sched = ckpt.get("schedule") or {}
            if self.time_budget_s and sched.get("budget_fixed"):
                # the budgeted run ends at the step count it chose, whatever this machine's speed
                self.total_steps = int(sched["total_steps"])
                self.num_epochs = int(sched["num_epochs"])
                self.budget_fixed = True
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise TrainingError(
                f"'{path}': its optimiser/run state does not fit this run ({type(e).__name__}: "
                f"{e}); was optim.name changed? Resume with the config stored in the checkpoint"
            ) from None
        saved_batch = saved.train.batch_size * saved.train.accumulate * int(ckpt.get("world_size", 1))
        if saved_batch != self.global_batch and self.dist.is_main:
            log.warning("resuming a run trained with global batch %d at global batch %d: the data "
                        "order and schedules will differ from the original run",
                        saved_batch, self.global_batch)
        if self.dist.is_main:
            log.info("resumed from %s at step %d (epoch %d)", path, self.state.step, self.state.epoch)

    def _load_resumable(self, where: str) -> tuple[Path, dict[str, Any]]:
        """The checkpoint to resume from: a file, or a run folder's newest readable one (a
        damaged last.pt falls back to the next newest ckpt_*.pt, with a warning)."""
        p = Path(where)
        if not p.is_dir():
            path = find_checkpoint(p)
            return path, load_checkpoint(path, map_location=str(self.device))
        candidates = [p / "last.pt"] if (p / "last.pt").is_file() else []
        candidates += sorted(p.glob("ckpt_*.pt"), reverse=True)
        if not candidates:
            find_checkpoint(p)  # raises the "no checkpoint" error
        errors = []
        for path in candidates:
            try:
                return path, load_checkpoint(path, map_location=str(self.device))
            except CheckpointError as e:
                errors.append(str(e))
                if self.dist.is_main:
                    log.warning("skipping unreadable checkpoint: %s", e)
        raise TrainingError(f"no readable checkpoint in '{p}' to resume from: {'; '.join(errors)}")

    # -- logging ----------------------------------------------------------------------------

    def _record(self, row: dict[str, Any]) -> None:
        self.state.history.append(row)
        if not self.dist.is_main:
            return
        try:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:  # the row stays in the checkpoint's history; keep training
            if not self._metrics_warned:
                log.warning("cannot append to %s (%s); rows are still kept in the checkpoints' "
                            "history", self.out / "metrics.jsonl", e.strerror or e)
                self._metrics_warned = True
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"train/{k}" if "knn" not in k else f"eval/{k}", v, row["step"])

    def _monitor_sources(self):
        """The monitor's bank and queries: fixed subsets drawn from train.seed (see
        :func:`monitor_subsets`), opened once; the queries never include a bank image."""
        from .data import open_source

        d, a, lg = self.cfg.data, self.cfg.augment, self.cfg.log
        kw = dict(image_size=a.image_size, in_memory=d.in_memory, max_memory_gb=d.max_memory_gb,
                  load_size=d.load_size, strict=d.strict, synthetic_size=d.synthetic_size,
                  seed=self.cfg.train.seed)
        train_src = open_source(d.source, d.path, d.split, **kw)
        same = d.val_split == d.split and not d.val_path
        val_src = train_src if same else open_source(d.source, d.val_path or d.path, d.val_split,
                                                     split_option="data.val_split", **kw)
        if train_src.labels is None or val_src.labels is None:
            raise TrainingError(
                f"the kNN monitor (log.knn_every / log.knn_every_steps) needs labels: data.split="
                f"{d.split!r} and data.val_split={d.val_split!r} of {d.source} must both be "
                "labeled (or set log.knn_every=0 and log.knn_every_steps=0)"
            )
        if not same and _same_images(train_src, val_src):
            same = True
        if same and self.dist.is_main:
            log.warning("kNN monitor: data.val_split=%r holds the training images; its queries "
                        "are held out of the bank (set data.val_split to a separate split for "
                        "an honest monitor)", d.val_split)
        bank, queries = lg.knn_bank, lg.knn_queries
        if lg.knn_limit:
            bank = min(bank or lg.knn_limit, lg.knn_limit)
            queries = min(queries or lg.knn_limit, lg.knn_limit)
        bi, qi = monitor_subsets(len(train_src), len(val_src), bank, queries,
                                 self.cfg.train.seed, same)
        self.monitor_indices = {"bank": bi, "queries": qi, "same_images": same}
        return subset_source(train_src, bi, "bank"), subset_source(val_src, qi, "queries")

    def _knn_monitor(self) -> dict[str, float]:
        from .eval.features import extract_features
        from .eval.knn import knn_classify

        a = self.cfg.augment
        if self._knn_data is None:
            self._knn_data = self._monitor_sources()
        train_src, val_src = self._knn_data
        backbone = self.model.backbone
        was_training = backbone.training
        kw = dict(image_size=a.image_size, mean=a.mean, std=a.std, device=self.device,
                  progress=False, batch_size=512)
        t0 = time.perf_counter()
        try:
            ftr = extract_features(backbone, train_src, **kw)["pooled"]
            fte = extract_features(backbone, val_src, **kw)["pooled"]
        finally:
            backbone.train(was_training)
        k = self.cfg.log.knn_k
        res = knn_classify(ftr, train_src.labels, fte, val_src.labels, ks=(k,))
        self._monitor_cost = time.perf_counter() - t0
        self._monitor_total += self._monitor_cost
        return {f"knn_top1_k{k}": res[f"k={k}"]["top1"], f"knn_top5_k{k}": res[f"k={k}"]["top5"]}

    def _monitor_row(self, epoch: float, bar=None) -> None:
        res = self._knn_monitor()
        row = {"step": self.state.step, "epoch": epoch,
               "elapsed_s": round(self.state.elapsed_s + self._session_elapsed(), 2),
               "monitor_s": round(self._monitor_total, 2), **res}
        self._record(row)
        k = self.cfg.log.knn_k
        self._last_knn = res[f"knn_top1_k{k}"]
        if bar is not None:
            bar.set_postfix_str(f"{bar.postfix or ''}, knn={self._last_knn:.1f}".lstrip(", "))
        if self.dist.is_main:
            log.info("step %d: kNN %s (%.1f s)", self.state.step,
                     ", ".join(f"{n}={v:.2f}" for n, v in res.items()), self._monitor_cost)

    def _session_elapsed(self) -> float:
        return time.perf_counter() - self._t0 if self._t0 is not None else 0.0

    def _budget_inputs(self) -> tuple[float, float]:
        """(optimiser steps per second over the probe, wall seconds of training so far)."""
        (s0, t0), (s1, t1) = self._probe
        return (s1 - s0) / max(t1 - t0, 1e-9), self.state.elapsed_s + self._session_elapsed()

    def _fix_budget(self) -> None:
        """Fix the total step count from the measured rate (train.time_budget), the same on
        every process (rank 0 decides)."""
        rate, elapsed = self._budget_inputs()
        lg = self.cfg.log
        total = budget_steps(self.state.step, elapsed, self.time_budget_s, rate,
                             self._monitor_cost if lg.knn_every_steps else 0.0, lg.knn_every_steps)
        if self.dist.enabled:
            t = torch.tensor([total], device=self.device, dtype=torch.int64)
            torch.distributed.broadcast(t, 0)
            total = int(t.item())
        self.total_steps = total
        self.num_epochs = -(-total // self.steps_per_epoch)
        self.budget_fixed = True
        if self.dist.is_main:
            log.info("time budget %s: %.2f steps/s (%.0f images/s) over steps %d-%d, %.0f s spent "
                     "-> %d optimiser steps in all (%.2f epochs); the lr and tau schedules end there",
                     self.cfg.train.time_budget, rate, rate * self.global_batch, self._probe[0][0],
                     self._probe[1][0], elapsed, total, total / self.steps_per_epoch)
            self._record({"step": self.state.step, "budget_total_steps": total,
                          "budget_steps_per_s": rate})

    # -- the loop ---------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = signum

    def train(self) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        main = self.dist.is_main
        if main:
            (self.out / "config.yaml").write_text(self.config_header + dump_yaml(cfg))
            log.info(
                "BYOL %s | %d images | global batch %d (%d x %d accum x %d procs) | peak lr %.4g | "
                "%s steps (%d/epoch) | device %s | %s | channels_last=%s",
                cfg.model.arch, len(self.feeder), self.global_batch, t.batch_size, t.accumulate,
                self.dist.world_size, self.peak_lr,
                self.total_steps if self.budget_fixed else
                f"time budget {t.time_budget}: count fixed after {BUDGET_PROBE[1]}",
                self.steps_per_epoch,
                self.device, self.amp_dtype or "fp32", self.channels_last,
            )
        old_handlers = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                old_handlers[s] = signal.signal(s, self._on_signal)
        try:
            return self._loop()
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if self.writer is not None:
                self.writer.close()

    def schedules(self, step: int) -> tuple[float, float]:
        """Learning rate and EMA decay of optimiser step ``step`` (pure functions of it)."""
        t = self.cfg.train
        lr = warmup_cosine(step, self.total_steps, self.warmup_steps, self.peak_lr,
                           self.cfg.optim.final_lr)
        return lr, tau_schedule(step, self.total_steps, t.tau_base, t.tau_final)

    def train_step(
        self, micro: list[tuple[torch.Tensor, torch.Tensor]], lr: float, tau: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step over this process's micro-batches of augmented views: forward and
        backward each (gradients synchronised across processes on the last one only), one
        optimiser step, one EMA update of the target. Returns the summed micro-batch losses
        (on the device: no host sync) and the last online projections.

        With ``train.nonfinite=skip`` a step whose loss or gradients are not finite changes
        nothing (weights, EMA target, optimiser state, BatchNorm statistics) and sets
        ``self.last_step_skipped``; that check costs one host sync per step, so it is only done
        in that mode."""
        opt, ddp = self.optimizer, self.ddp
        set_lr(opt, lr)
        skip_mode = self._skip_nonfinite
        if skip_mode:  # BatchNorm statistics, restored if the step is dropped
            buffers = [(b, b.clone()) for b in self.model.buffers()]
        loss_sum = torch.zeros((), device=self.device)
        z = None
        for j, (v1, v2, *extra) in enumerate(micro):
            local = extra[0] if extra else None  # multi-crop: [L*B, C, s, s] small views
            if self.channels_last:
                v1 = v1.contiguous(memory_format=torch.channels_last)
                v2 = v2.contiguous(memory_format=torch.channels_last)
                if local is not None:
                    local = local.contiguous(memory_format=torch.channels_last)
            sync = contextlib.nullcontext()
            if self.dist.enabled and j < len(micro) - 1:
                sync = ddp.no_sync()
            with sync:
                with self.autocast():
                    loss, z = ddp(v1, v2) if local is None else ddp(v1, v2, local)
                self.scaler.scale(loss / len(micro)).backward()
            loss_sum += loss.detach()
        self.last_step_skipped = False
        if skip_mode:
            self.scaler.unscale_(opt)  # (a no-op without fp16 loss scaling)
            if not self._finite_step(loss_sum):
                self.scaler.update()  # fp16: lowers the loss scale, as a scaler-skipped step does
                opt.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for b, saved in buffers:
                        b.copy_(saved)
                self.last_step_skipped = True
                return loss_sum, z
        if self.cfg.optim.grad_clip > 0:
            if not skip_mode:
                self.scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(self.model.online_parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()
        opt.zero_grad(set_to_none=True)
        self.model.update_target(tau)  # once per optimiser step, never per micro-batch
        return loss_sum, z

    def _finite_step(self, loss_sum: torch.Tensor) -> bool:
        """True when every gradient (and, on one process, the loss) is finite: one fused norm
        per parameter, one host sync. Under DDP the gradients are already averaged over the
        processes, so every process takes the same decision.

        The same sync also checks the weights: an update can overflow although its gradients
        were finite (a huge learning rate times weight decay), and no later step can be dropped
        to undo it, so that stops the run (TrainingError) instead of skipping every step."""
        online = list(self.model.online_parameters())
        grads = [p.grad for p in online if p.grad is not None]
        weights = [p.detach() for p in online]
        norms = torch._foreach_norm(grads + weights) if grads or weights else []
        g_ok = torch.isfinite(torch.stack(norms[: len(grads)])).all() if grads else \
            torch.isfinite(loss_sum)
        w_ok = torch.isfinite(torch.stack(norms[len(grads):])).all() if weights else g_ok
        if not self.dist.enabled:
            g_ok = g_ok & torch.isfinite(loss_sum)
        g_ok, w_ok = torch.stack([g_ok, w_ok]).tolist()
        if not w_ok:
            raise TrainingError(
                f"the weights became non-finite (nan/inf) in the update of step {self.state.step}, "
                "although its loss and gradients were finite: the update itself overflowed, which "
                "train.nonfinite=skip cannot drop. " + self._diverged_advice())
        return bool(g_ok)

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _loop(self) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        main = self.dist.is_main
        self.model.train()
        probe_from = self.state.step + BUDGET_PROBE[0]
        probe_to = self.state.step + BUDGET_PROBE[1]

        def stop_step() -> int:
            total = self.total_steps if self.budget_fixed else max(self.total_steps, probe_to)
            return min(total, t.max_steps) if t.max_steps else total

        stop_at = stop_step()
        loss_sum = self._loss_sum = torch.zeros((), device=self.device)
        loss_count, last_log_time, last_log_step = 0, time.perf_counter(), self.state.step
        skipped, in_a_row = 0, 0  # train.nonfinite=skip: dropped steps since the last log / in a row
        z_last = None
        t0 = self._t0 = time.perf_counter()
        every = cfg.log.knn_every_steps
        from tqdm import tqdm

        if every and self.state.step == 0:  # the curve's first point: the network at init
            self._monitor_row(0.0)
        while self.state.step < stop_at and self.state.epoch < self.num_epochs:
            epoch = self.state.epoch
            perm = epoch_permutation(len(self.feeder), t.seed, epoch)
            first = self.state.step_in_epoch
            steps = range(first, self.steps_per_epoch)
            bar = tqdm(
                total=self.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{self.num_epochs if self.budget_fixed else '?'}",
                disable=not (main and cfg.log.progress), dynamic_ncols=True, leave=False,
            )
            batches = self._epoch_batches(perm, epoch, first)
            for step_in_epoch, micro in zip(steps, batches):
                step = self.state.step
                lr, tau = self.schedules(step)
                loss, z = self.train_step(micro, lr, tau)
                if self.last_step_skipped:
                    skipped, in_a_row, self.state.skipped = skipped + 1, in_a_row + 1, self.state.skipped + 1
                    if in_a_row >= MAX_CONSECUTIVE_SKIPS:
                        raise TrainingError(
                            f"{in_a_row} optimiser steps in a row up to step {step + 1} had a "
                            "non-finite loss or gradient (train.nonfinite=skip): training "
                            "diverged. " + self._diverged_advice(data=True))
                else:
                    loss_sum += loss
                    loss_count += len(micro)
                    in_a_row, z_last = 0, z
                self.state.step += 1
                self.state.step_in_epoch = step_in_epoch + 1
                bar.update(1)
                if self.state.step == self._fault_step:  # test hook: a worker dies (see top)
                    os._exit(1)
                if not self.budget_fixed and self.state.step in (probe_from, probe_to):
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    self._probe.append((self.state.step, time.perf_counter()))
                    if self.state.step == probe_to:
                        self._fix_budget()
                        stop_at = stop_step()
                        bar.set_description(f"epoch {epoch + 1}/{self.num_epochs}")
                if every and self.state.step % every == 0:
                    self._monitor_row(epoch + (step_in_epoch + 1) / self.steps_per_epoch, bar)

                stop = self._stop_signal is not None
                if self.state.step % cfg.log.log_every == 0 or self.state.step == stop_at:
                    mean = loss_sum / max(loss_count, 1)
                    if self.dist.enabled:  # log the global mean, as mmengine does; and agree on
                        # stopping (a signal may reach the processes at different steps)
                        both = torch.stack([mean, torch.tensor(float(stop), device=self.device)])
                        torch.distributed.all_reduce(both)
                        mean_loss, stop_votes = both.tolist()  # the one host sync
                        mean_loss /= self.dist.world_size
                        stop = stop_votes > 0
                        if stop and self._stop_signal is None:
                            self._stop_signal = signal.SIGTERM  # another process got it
                    else:
                        mean_loss = mean.item()  # the one host sync
                    now = time.perf_counter()
                    ips = (self.state.step - last_log_step) * self.global_batch / max(now - last_log_time, 1e-9)
                    row = {"step": self.state.step, "epoch": epoch + (step_in_epoch + 1) / self.steps_per_epoch,
                           "loss": mean_loss if loss_count else None, "lr": lr, "tau": tau,
                           "images_per_s": ips, "z_std": _normalised_std(z_last),
                           "elapsed_s": round(self.state.elapsed_s + now - t0, 2)}
                    if self._skip_nonfinite:
                        row["skipped"] = skipped
                        if skipped and main:
                            log.warning("skipped %d optimiser step(s) with a non-finite loss or "
                                        "gradient up to step %d (train.nonfinite=skip)",
                                        skipped, self.state.step)
                    if not math.isfinite(mean_loss):
                        raise TrainingError(
                            f"the loss became {mean_loss} at step {self.state.step} (checked every "
                            f"log.log_every={cfg.log.log_every} steps): training diverged. "
                            + self._diverged_advice())
                    if row["z_std"] < cfg.log.collapse_warn_std and main:
                        log.warning("possible collapse at step %d: per-dimension std of normalised "
                                    "projections is %.4f (healthy ~%.3f)", self.state.step,
                                    row["z_std"], 1 / math.sqrt(cfg.model.proj_dim))
                    self._record(row)
                    post = dict(loss=f"{mean_loss:.3f}", lr=f"{lr:.3g}", tau=f"{tau:.4f}",
                                ips=f"{ips:.0f}")
                    if self._last_knn is not None:
                        post["knn"] = f"{self._last_knn:.1f}"
                    bar.set_postfix(post)
                    loss_sum.zero_()
                    loss_count, last_log_time, last_log_step, skipped = 0, now, self.state.step, 0
                    if stop:
                        bar.close()
                        return self._stop_for_signal()
                elif stop and not self.dist.enabled:
                    bar.close()
                    return self._stop_for_signal()
                if self.state.step >= stop_at:
                    break
            bar.close()
            if self.state.step_in_epoch >= self.steps_per_epoch:
                self.state.epoch += 1
                self.state.step_in_epoch = 0
                self._end_of_epoch(stop_at)
            elif self.state.step >= stop_at:
                break
        if every and not any(f"knn_top1_k{cfg.log.knn_k}" in r and r["step"] == self.state.step
                            for r in self.state.history[-3:]):
            self._monitor_row(self.state.epoch + self.state.step_in_epoch / self.steps_per_epoch)
        if self._saved_step != self.state.step:
            self.save()
        du.barrier()
        wall = time.perf_counter() - t0
        result = {"steps": self.state.step, "epochs": self.state.epoch, "wall_s": wall,
                  "total_steps": self.total_steps,
                  "elapsed_s": self.state.elapsed_s + wall,
                  "last": str(self.out / "last.pt"), "skipped_steps": self.state.skipped,
                  "final_loss": next((r["loss"] for r in reversed(self.state.history)
                                      if r.get("loss") is not None), None)}
        verdict = monitor_verdict(self.state.history, cfg.log.knn_k)
        if verdict is not None:
            result["knn_monitor"] = verdict
            if main:
                self._say_verdict(verdict)
        if main:
            (self.out / "train_result.json").write_text(json.dumps(result, indent=2))
        return result

    def _say_verdict(self, v: dict[str, float]) -> None:
        """Did pretraining help? The monitor's last kNN next to its first (the same network at
        its random initialisation, on the same bank and queries), and what to try when not."""
        k, a = self.cfg.log.knn_k, self.cfg.augment
        log.info("kNN monitor (k=%d, %s): BYOL %.2f%% after %d steps vs the same network at random "
                 "init %.2f%% (%+.2f points)", k, self._monitor_what(), v["final"], v["step"],
                 v["init"], v["gain"])
        if v["gain"] < HELPED_MARGIN:
            log.warning(
                "pretraining has not (yet) improved the features: kNN %.2f%% vs %.2f%% at random "
                "init. Likely causes: too few optimiser steps (%d; raise train.epochs or "
                "train.time_budget), augmentation too strong for %d px images (try "
                "augment.view1.crop_scale=[0.5,1.0], the same for view2, and blur_p=0), or steps "
                "too small (raise optim.eta with LARS, or optim.base_lr)",
                v["final"], v["init"], v["step"], a.image_size)

    def _monitor_what(self) -> str:
        idx = self.monitor_indices
        if idx is None:
            return "monitor subsets"
        return f"bank {len(idx['bank'])} train images, {len(idx['queries'])} held-out queries"

    def _epoch_batches(self, perm: torch.Tensor, epoch: int, first: int):
        """Yields, per optimiser step, the list of (view1, view2) micro-batches of this process."""
        t = self.cfg.train
        if isinstance(self.feeder, MemoryFeeder):
            for s in range(first, self.steps_per_epoch):
                step = epoch * self.steps_per_epoch + s
                with torch.no_grad():  # (never yield inside it: the caller would inherit it)
                    micro = [self.feeder.views(idx, _mix(t.seed, step, slot, 3))
                             for slot, idx in self._slot_indices(perm, s)]
                yield micro
            return
        keys, seeds = [], []
        for s in range(first, self.steps_per_epoch):
            step = epoch * self.steps_per_epoch + s
            for slot, idx in self._slot_indices(perm, s):
                keys.extend((int(i), epoch) for i in idx)
                seeds.append(_mix(t.seed, step, slot, 3))
        it = iter(self.feeder.loader(keys, t.batch_size))
        k = 0
        for _ in range(first, self.steps_per_epoch):
            micro = []
            for _ in range(t.accumulate):
                try:
                    v1, v2, _labels = next(it)
                except RuntimeError as e:
                    if "DataLoader worker" not in str(e):
                        raise
                    raise TrainingError(
                        f"a data loading worker died ({str(e).splitlines()[0]}); the checkpoints "
                        f"in {self.out} are intact: resume with --resume {self.out} (lower "
                        "data.num_workers if the machine ran out of memory)"
                    ) from e
                with torch.no_grad():
                    micro.append(self.feeder.finish(v1, v2, seeds[k]))
                k += 1
            yield micro

    def _end_of_epoch(self, stop_at: int) -> None:
        cfg = self.cfg
        e = self.state.epoch
        every_steps = cfg.log.knn_every_steps
        if cfg.log.knn_every and (e % cfg.log.knn_every == 0 or e == self.num_epochs) and not (
                every_steps and self.state.step % every_steps == 0):  # (not twice at one step)
            self._monitor_row(float(e))
        if e % cfg.log.save_every == 0 or e == self.num_epochs or self.state.step >= stop_at:
            self.save()

    def _stop_for_signal(self) -> dict[str, Any]:
        name = signal.Signals(self._stop_signal).name
        path = self.save()
        du.barrier()
        if self.dist.is_main:
            log.warning(
                "%s received: stopped after step %d and saved %s. Resume with: byol pretrain "
                "--config %s --resume %s", name, self.state.step, path, self.out / "config.yaml", self.out,
            )
        return {"steps": self.state.step, "interrupted": name, "last": str(self.out / "last.pt")}


HELPED_MARGIN = 1.0  # kNN points over random init below which a run is said not to have helped


def monitor_verdict(history: list[dict[str, Any]], k: int) -> dict[str, float] | None:
    """The kNN monitor's first point at step 0 (the network at its random initialisation) and
    its last point, from a run's metric rows; None without both."""
    key = f"knn_top1_k{k}"
    rows = [r for r in history if key in r]
    init = next((r for r in rows if r["step"] == 0), None)
    if init is None or rows[-1]["step"] == 0:
        return None
    last = rows[-1]
    return {"init": init[key], "final": last[key], "gain": round(last[key] - init[key], 2),
            "step": last["step"]}


def _same_images(a, b) -> bool:
    """True when two opened splits hold the same images (:func:`byol.data.same_images`)."""
    from .data import same_images

    return same_images(a, b)


def _link_or_copy(path: Path, last: Path) -> None:
    """Point ``last`` at ``path`` atomically: a hard link, or a copy where the file system has
    none; a temporary file is never left behind."""
    tmp = last.with_name(f".{last.name}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(path, tmp)
        except OSError:  # no hard links here (some network / FUSE file systems)
            import shutil

            shutil.copyfile(path, tmp)
        os.replace(tmp, last)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _normalised_std(z: torch.Tensor | None) -> float:
    """Mean over dimensions of the batch std of L2-normalised projections: ~1/sqrt(d) when
    healthy, -> 0 when the representation collapses to a constant."""
    if z is None or z.shape[0] < 2:
        return float("nan")
    zn = nn.functional.normalize(z.float(), dim=1)
    return zn.std(dim=0).mean().item()


def _match_channels(images: torch.Tensor, in_chans: int, name: str) -> torch.Tensor:
    out = match_channels(images, in_chans)
    if out.shape[1] == in_chans:
        return out.contiguous()
    c = images.shape[1]
    raise TrainingError(f"{name} has {c} channels but model.in_chans={in_chans}: set model.in_chans={c}")


def _ensure_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TrainingError(
            f"output folder '{out}' is not writable ({e.strerror}); choose another with --out"
        ) from None


def find_checkpoint(where: str | os.PathLike) -> Path:
    """A checkpoint file, or the newest one in a run folder."""
    p = Path(where)
    if p.is_dir():
        if (p / "last.pt").is_file():
            return p / "last.pt"
        found = sorted(p.glob("ckpt_*.pt"))
        if not found:
            raise TrainingError(f"no checkpoint in '{p}' to resume from (expected last.pt or ckpt_*.pt)")
        return found[-1]
    if not p.is_file():
        raise TrainingError(f"checkpoint '{p}' does not exist")
    return p


def pretrain(cfg: Config, resume: str | None = None, config_header: str = "") -> dict[str, Any]:
    """Run (or resume) a pretraining; returns a summary with the final checkpoint path.
    ``config_header``: comment lines above the config in ``RUN/config.yaml`` (why it was
    chosen, for a run without a config)."""
    trainer = Trainer(cfg, resume, config_header)
    try:
        return trainer.train()
    finally:
        du.cleanup()
