"""The pretraining loop: one engine for CPU and GPU, one process or many (torchrun + DDP).

Data order and augmentation randomness are pure functions of (seed, epoch, step, micro-batch
slot), so a resumed run sees exactly the batches the uninterrupted run would have seen, and a
run on W processes x A accumulation steps sees the same global batch as one process with A*W
micro-batches. The learning rate and tau are pure functions of the optimiser step.

The trainer owns the loop, the optimiser step and the run state; the batches come from
:mod:`byol.data.feeders`, the files of the run folder (checkpoints, metrics, resume) from
:mod:`byol.runfolder`, the kNN monitor from :mod:`byol.monitor` and ``train.time_budget``'s
step count from :mod:`byol.budget`.
"""

from __future__ import annotations

import contextlib
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
from .budget import (
    BUDGET_CHUNKS,
    BUDGET_PROBE,
    RateProbe,
    budget_steps,
    late_windows,
    recheck_window,
)
from .checkpoint import FORMAT, load_state_reporting
from .config import Config, dump_yaml, parse_duration
from .data.feeders import build_feeder, epoch_permutation, slot_indices
from .errors import TrainingError
from .models.byol import build_byol, tau_schedule
from .models.whitening import WHITEN_IMAGES, fit_feature_whitening
from .monitor import KnnMonitor, monitor_verdict
from .optim import build_optimizer, scaled_lr, set_lr, warmup_cosine
from .precision import autocast, autocast_dtype
from .preflight import check_memory
from .runfolder import RunFolder, load_resumable, resumable_config
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


@dataclass
class RunState:
    step: int = 0  # optimiser steps done
    epoch: int = 0  # epoch in progress (or next)
    step_in_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0  # optimiser steps dropped for a non-finite loss/gradient (nonfinite=skip)
    elapsed_s: float = 0.0  # wall seconds of training in earlier sessions of this run (resumes)


@dataclass
class _LogWindow:
    """What the loop gathers between two metric rows."""

    loss_sum: torch.Tensor  # the kept steps' micro-batch losses, summed on the device (no sync)
    since_time: float  # perf_counter at the last row
    since_step: int  # optimiser step at the last row
    count: int = 0  # micro-batches in loss_sum
    skipped: int = 0  # steps dropped since the last row (train.nonfinite=skip)
    in_a_row: int = 0  # steps dropped in a row (across rows)
    z_last: torch.Tensor | None = None  # the online projections of the last kept step


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
        self.run = RunFolder(Path(cfg.log.out_dir), self.dist, self.device)
        self.out = self.run.out
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device)
        self.channels_last = t.channels_last if t.channels_last is not None else True
        self._stop_signal: int | None = None
        self._saved_step = -1
        self._skip_nonfinite = t.nonfinite == "skip"
        self.last_step_skipped = False
        self._fault_step = _fault_kill_step(self.dist.rank)
        # loss summed on the device since the last log (checked for NaN before each save)
        self._loss_sum: torch.Tensor | None = None

        self.model = self._build_model()
        self.global_batch = t.batch_size * t.accumulate * self.dist.world_size
        self.peak_lr = scaled_lr(cfg.optim.base_lr, self.global_batch)
        self.optimizer = build_optimizer(
            [self.model.online], cfg.optim, self.peak_lr, predictor=self.model.predictor
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )

        self.source, self.feeder = build_feeder(cfg, self.device)
        self.steps_per_epoch = self._check_sizes(len(self.feeder))
        self._plan_steps()
        self.state = RunState()
        if resume == "auto":  # torchrun --max-restarts: continue if this run saved anything
            resume = str(self.out) if self.run.has_checkpoint() else None
        if resume:
            self._resume(resume)
        self.ddp = self._wrap_model()
        if cfg.log.tensorboard:
            self.run.open_tensorboard()
        self.monitor = KnnMonitor(cfg, self.device, self.dist.is_main)
        self._t0: float | None = None  # perf_counter when this session's loop started
        self._rate: RateProbe | None = None  # train.time_budget's step rate, this session
        self._session_first = 0  # the step this session's loop started at
        # the next count decision: 0 the probe, 1 the re-check, 2 the first late check (may
        # lengthen the count when another check follows), 3 the later ones (may only shorten it)
        self._budget_stage = 0

    # -- building --------------------------------------------------------------------------

    def _build_model(self):
        cfg, t = self.cfg, self.cfg.train
        # One forward for both views pays on GPUs (bigger kernels); on CPUs the extra
        # concatenations cost more than they save (70 vs 80 images/s measured on 2 cores).
        fuse = t.fuse_views if t.fuse_views is not None else self.device.type == "cuda"
        if t.memory_check:  # before anything big is allocated: a clear stop, not the OOM killer
            check_memory(cfg, self.device, fuse, self.amp_dtype)
        model = build_byol(cfg.model, fuse, t.init_target_from_online).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.dist.enabled and cfg.model.sync_bn and self.device.type != "cuda":
            if self.dist.is_main:
                log.warning("model.sync_bn: SyncBatchNorm needs CUDA; on %s each process keeps "
                            "its own BatchNorm statistics", self.device.type)
        elif self.dist.enabled and cfg.model.sync_bn:
            model.convert_sync_batchnorm()
            model.to(self.device)
        return model

    def _wrap_model(self) -> nn.Module:
        """The module the steps call: the model (its parts compiled with train.compile), in
        DistributedDataParallel on more than one process."""
        if self.cfg.train.compile:
            for part in (self.model.online, self.model.predictor, self.model.target):
                part.compile()
        if not self.dist.enabled:
            return self.model
        return DDP(
            self.model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            broadcast_buffers=False,
        )

    def _plan_steps(self) -> None:
        """The run's length: total optimiser steps, epochs and warmup, from train.epochs or
        train.total_steps; with train.time_budget the count is fixed after BUDGET_PROBE[1]
        steps (until then the epochs-based count shapes the schedules and the run may go on
        past it), checked once more over budget.recheck_window and then over
        budget.late_windows (the first may lengthen it when another check follows, the later
        ones only shorten it)."""
        t = self.cfg.train
        self.total_steps = t.total_steps or self.steps_per_epoch * t.epochs
        self.num_epochs = -(-self.total_steps // self.steps_per_epoch)
        self.time_budget_s = parse_duration(t.time_budget)
        self.budget_fixed = not self.time_budget_s
        # the count is checked again later in the session (the re-check, then the late checks):
        # final after those, or when there is no budget, or once restored from a checkpoint
        self.budget_final = self.budget_fixed
        if not self.budget_fixed:
            self.num_epochs = 10**9
        self.warmup_steps = round(self.cfg.optim.warmup_epochs * self.steps_per_epoch)

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

    def _slot_indices(self, perm: torch.Tensor, step_in_epoch: int) -> list[tuple[int, torch.Tensor]]:
        """This process's micro-batches of one optimiser step: (global slot, indices)."""
        t = self.cfg.train
        return slot_indices(perm, step_in_epoch, t.batch_size, t.accumulate,
                            self.dist.world_size, self.dist.rank)

    def _epoch_batches(self, perm: torch.Tensor, epoch: int, first: int):
        """Yields, per optimiser step from ``first`` on, the list of (view1, view2) micro-batches
        of this process."""
        spe = self.steps_per_epoch
        plan = ((epoch * spe + s, self._slot_indices(perm, s)) for s in range(first, spe))
        return self.feeder.batches(plan, epoch, self.cfg.train.seed)

    # -- checkpoints -----------------------------------------------------------------------

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
                         "budget_final": self.budget_final,
                         "time_budget_s": self.time_budget_s},
            "rng": {"torch": torch.get_rng_state()},
            "world_size": self.dist.world_size,
        }

    def save(self) -> Path | None:
        """Write ckpt_<step>.pt atomically, point last.pt at it, prune to log.keep_last
        (:meth:`RunFolder.save <byol.runfolder.RunFolder.save>`).

        Refuses (TrainingError) to save non-finite weights or after a non-finite loss, so the
        newest checkpoint is always a good one; a failed write (full disk) leaves the previous
        checkpoints untouched and ends the run with a TrainingError on every process."""
        bad = self._nonfinite_state()
        if bad:
            raise TrainingError(
                f"{bad} at step {self.state.step}: training diverged; not saving it. "
                + self._diverged_advice())
        self._saved_step = self.state.step
        return self.run.save(self.state_dict, self.state.step, self.cfg.log.keep_last)

    def _diverged_advice(self, data: bool = False) -> str:
        return self.run.diverged_advice(self._saved_step, self.peak_lr, self._skip_nonfinite, data)

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
        path, ckpt = load_resumable(where, self.device, warn=self.dist.is_main)
        saved = resumable_config(path, ckpt, self.cfg)
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
                self.budget_fixed = self.budget_final = True
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

    # -- logging, the kNN monitor, the time budget -----------------------------------------

    def _record(self, row: dict[str, Any]) -> None:
        self.state.history.append(row)
        self.run.append(row)

    def _monitor_row(self, epoch: float, bar=None) -> None:
        res = self.monitor.measure(self.model.backbone)
        row = {"step": self.state.step, "epoch": epoch,
               "elapsed_s": round(self.state.elapsed_s + self._session_elapsed(), 2),
               "monitor_s": round(self.monitor.total, 2), **res}
        self._record(row)
        if bar is not None:
            # a disabled bar (log.progress=false) has no postfix until one is set
            shown = getattr(bar, "postfix", None) or ""
            bar.set_postfix_str(f"{shown}, knn={self.monitor.last:.1f}".lstrip(", "))
        if self.dist.is_main:
            log.info("step %d: kNN %s (%.1f s)", self.state.step,
                     ", ".join(f"{n}={v:.2f}" for n, v in res.items()), self.monitor.cost)

    def _session_elapsed(self) -> float:
        return time.perf_counter() - self._t0 if self._t0 is not None else 0.0

    def _budget_inputs(self) -> tuple[float, float]:
        """(optimiser steps per second over the probe, wall seconds of training so far)."""
        return self._rate.rate(), self.state.elapsed_s + self._session_elapsed()

    def _whiten_reserve(self, rate: float) -> float:
        """Seconds kept from train.time_budget for model.feature_whiten's fit: forwards of
        WHITEN_IMAGES images through two backbones, each counted as half a training image
        (a training image costs two views forward and backward plus the target's forwards:
        about eight forwards)."""
        if not self.cfg.model.feature_whiten:
            return 0.0
        n = min(WHITEN_IMAGES, len(self.source))
        return 2 * n * 0.5 / max(rate * self.global_batch, 1e-9)

    def _fix_budget(self) -> None:
        """Fix the total step count from the measured rate (train.time_budget), the same on
        every process (rank 0 decides). The probe plans the re-check; the re-check plans the
        late checks (budget.late_windows). The first late check may lengthen the count when
        another check follows it (a machine that sped up after the re-check uses its budget);
        the later ones may only shorten it, so the run never ends past its budget on a rate that
        was not checked again."""
        rate, elapsed = self._budget_inputs()
        lg = self.cfg.log
        stage, probe = self._budget_stage, self._rate
        budget_s = self.time_budget_s - self._whiten_reserve(rate)
        total = budget_steps(self.state.step, elapsed, budget_s, rate,
                             self.monitor.cost if lg.knn_every_steps else 0.0, lg.knn_every_steps)
        if stage == 3 or (stage == 2 and not late_windows(self._session_first, total, probe.end)):
            total = min(total, self.total_steps)
        if self.dist.enabled:
            t = torch.tensor([total], device=self.device, dtype=torch.int64)
            torch.distributed.broadcast(t, 0)
            total = int(t.item())
        self.total_steps = total
        self.num_epochs = -(-total // self.steps_per_epoch)
        self.budget_fixed = True
        if stage == 0:
            window = recheck_window(self._session_first, total)
        else:  # the next late check, placed on the count as it now stands
            window = next(iter(late_windows(self._session_first, total, probe.end)), None)
        self._budget_stage = min(stage + 1, 3)
        if window is None:
            self.budget_final = True
        else:
            self._rate = RateProbe(self._session_first, self.device, window, BUDGET_CHUNKS)
        if self.dist.is_main:
            log.info("time budget %s%s: %.2f steps/s (%.0f images/s) over steps %d-%d, %.0f s spent "
                     "-> %d optimiser steps in all (%.2f epochs); the lr and tau schedules end there%s",
                     self.cfg.train.time_budget,
                     ("", " (re-check)", " (late check)", " (late check)")[stage], rate,
                     rate * self.global_batch, probe.start, probe.end, elapsed, total,
                     total / self.steps_per_epoch,
                     f"; checked again over steps {window[0]}-{window[1]}" if window else "")
            self._record({"step": self.state.step, "budget_total_steps": total,
                          "budget_steps_per_s": rate})

    # -- the run ---------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = signum

    def train(self) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        if self.dist.is_main:
            self.run.write_config(self.config_header + dump_yaml(cfg))
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
            self.run.close()


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

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> dict[str, Any]:
        """Epochs until the stop step (or a signal); the run's summary."""
        self.model.train()
        self._session_first = self.state.step
        self._rate = RateProbe(self.state.step, self.device)
        self._loss_sum = torch.zeros((), device=self.device)
        win = _LogWindow(self._loss_sum, time.perf_counter(), self.state.step)
        t0 = self._t0 = time.perf_counter()
        if self.cfg.log.knn_every_steps and self.state.step == 0:
            self._monitor_row(0.0)  # the curve's first point: the network at init
        while self.state.step < self._stop_step() and self.state.epoch < self.num_epochs:
            stopped = self._run_epoch(win)
            if stopped is not None:
                return stopped
        return self._finish(t0)

    def _stop_step(self) -> int:
        """The step this session ends after: the run's total (while a time budget is not fixed
        yet, at least the end of its probe), or train.max_steps when that is sooner."""
        t = self.cfg.train
        total = self.total_steps if self.budget_fixed else max(self.total_steps, self._rate.end)
        return min(total, t.max_steps) if t.max_steps else total

    def _run_epoch(self, win: _LogWindow) -> dict[str, Any] | None:
        """The epoch in progress, from its next step to its end or the stop step; the summary of
        a stop for a signal, else None."""
        epoch, first = self.state.epoch, self.state.step_in_epoch
        perm = epoch_permutation(len(self.feeder), self.cfg.train.seed, epoch)
        bar = self._progress_bar(epoch, first)
        batches = self._epoch_batches(perm, epoch, first)
        for step_in_epoch, micro in zip(range(first, self.steps_per_epoch), batches):
            lr, tau = self.schedules(self.state.step)
            loss, z = self.train_step(micro, lr, tau)
            self._count_step(win, loss, z, len(micro))
            self.state.step += 1
            self.state.step_in_epoch = step_in_epoch + 1
            bar.update(1)
            if self.state.step == self._fault_step:  # test hook: a worker dies (see top)
                os._exit(1)
            where = epoch + (step_in_epoch + 1) / self.steps_per_epoch
            self._after_step(epoch, where, bar)
            if self._log_or_stop(win, lr, tau, where, bar):
                bar.close()
                return self._stop_for_signal()
            if self.state.step >= self._stop_step():
                break
        bar.close()
        if self.state.step_in_epoch >= self.steps_per_epoch:
            self.state.epoch += 1
            self.state.step_in_epoch = 0
            self._end_of_epoch()
        return None

    def _progress_bar(self, epoch: int, first: int):
        from tqdm import tqdm

        return tqdm(
            total=self.steps_per_epoch, initial=first,
            desc=f"epoch {epoch + 1}/{self.num_epochs if self.budget_fixed else '?'}",
            disable=not (self.dist.is_main and self.cfg.log.progress), dynamic_ncols=True,
            leave=False,
        )

    def _count_step(self, win: _LogWindow, loss: torch.Tensor, z: torch.Tensor, n_micro: int) -> None:
        """Add an optimiser step's loss to the window, or count it as dropped (nonfinite=skip):
        too many dropped in a row end the run."""
        if not self.last_step_skipped:
            win.loss_sum += loss
            win.count += n_micro
            win.in_a_row, win.z_last = 0, z
            return
        win.skipped, win.in_a_row = win.skipped + 1, win.in_a_row + 1
        self.state.skipped += 1
        if win.in_a_row >= MAX_CONSECUTIVE_SKIPS:
            raise TrainingError(
                f"{win.in_a_row} optimiser steps in a row up to step {self.state.step + 1} had a "
                "non-finite loss or gradient (train.nonfinite=skip): training "
                "diverged. " + self._diverged_advice(data=True))

    def _after_step(self, epoch: int, where: float, bar) -> None:
        """After an optimiser step: the time budget's probe (and fixing the step count at its
        end), the kNN monitor every log.knn_every_steps."""
        if not self.budget_final and self._rate.mark(self.state.step, self.monitor.total):
            self._fix_budget()
            bar.set_description(f"epoch {epoch + 1}/{self.num_epochs}")
        every = self.cfg.log.knn_every_steps
        if every and self.state.step % every == 0:
            self._monitor_row(where, bar)

    def _log_or_stop(self, win: _LogWindow, lr: float, tau: float, where: float, bar) -> bool:
        """A metrics row every log.log_every steps and at the stop step; True when the run is to
        stop for a signal (under DDP decided at a row, by all processes together)."""
        stop = self._stop_signal is not None
        if self.state.step % self.cfg.log.log_every == 0 or self.state.step == self._stop_step():
            return self._log_row(win, lr, tau, where, bar, stop)
        return stop and not self.dist.enabled

    def _log_row(self, win: _LogWindow, lr: float, tau: float, where: float, bar, stop: bool) -> bool:
        cfg = self.cfg
        mean_loss, stop = self._mean_loss_and_stop(win, stop)
        now = time.perf_counter()
        ips = (self.state.step - win.since_step) * self.global_batch / max(now - win.since_time, 1e-9)
        row = {"step": self.state.step, "epoch": where,
               "loss": mean_loss if win.count else None, "lr": lr, "tau": tau,
               "images_per_s": ips, "z_std": _normalised_std(win.z_last),
               "elapsed_s": round(self.state.elapsed_s + now - self._t0, 2)}
        if self._skip_nonfinite:
            row["skipped"] = win.skipped
            if win.skipped and self.dist.is_main:
                log.warning("skipped %d optimiser step(s) with a non-finite loss or "
                            "gradient up to step %d (train.nonfinite=skip)",
                            win.skipped, self.state.step)
        if not math.isfinite(mean_loss):
            raise TrainingError(
                f"the loss became {mean_loss} at step {self.state.step} (checked every "
                f"log.log_every={cfg.log.log_every} steps): training diverged. "
                + self._diverged_advice())
        if row["z_std"] < cfg.log.collapse_warn_std and self.dist.is_main:
            log.warning("possible collapse at step %d: per-dimension std of normalised "
                        "projections is %.4f (healthy ~%.3f)", self.state.step,
                        row["z_std"], 1 / math.sqrt(cfg.model.proj_dim))
        self._record(row)
        post = dict(loss=f"{mean_loss:.3f}", lr=f"{lr:.3g}", tau=f"{tau:.4f}", ips=f"{ips:.0f}")
        if self.monitor.last is not None:
            post["knn"] = f"{self.monitor.last:.1f}"
        bar.set_postfix(post)
        win.loss_sum.zero_()
        win.count, win.since_time, win.since_step, win.skipped = 0, now, self.state.step, 0
        return stop

    def _mean_loss_and_stop(self, win: _LogWindow, stop: bool) -> tuple[float, bool]:
        """The window's mean loss (over all processes: the global mean, as mmengine logs it) and
        whether any process got a stop signal (they may get it at different steps): the one
        host sync of a row."""
        mean = win.loss_sum / max(win.count, 1)
        if not self.dist.enabled:
            return mean.item(), stop
        both = torch.stack([mean, torch.tensor(float(stop), device=self.device)])
        torch.distributed.all_reduce(both)
        mean_loss, stop_votes = both.tolist()
        if stop_votes > 0 and self._stop_signal is None:
            self._stop_signal = signal.SIGTERM  # another process got it
        return mean_loss / self.dist.world_size, stop_votes > 0

    def _end_of_epoch(self) -> None:
        cfg = self.cfg
        e = self.state.epoch
        every_steps = cfg.log.knn_every_steps
        if cfg.log.knn_every and (e % cfg.log.knn_every == 0 or e == self.num_epochs) and not (
                every_steps and self.state.step % every_steps == 0):  # (not twice at one step)
            self._monitor_row(float(e))
        if e % cfg.log.save_every == 0 or e == self.num_epochs or self.state.step >= self._stop_step():
            self.save()

    def _finish(self, t0: float) -> dict[str, Any]:
        """The end of a run that was not stopped: the monitor's last point and a checkpoint
        unless this step has them, the summary (train_result.json) and the monitor's verdict."""
        cfg = self.cfg
        k = cfg.log.knn_k
        if cfg.log.knn_every_steps and not any(
                f"knn_top1_k{k}" in r and r["step"] == self.state.step for r in self.state.history[-3:]):
            self._monitor_row(self.state.epoch + self.state.step_in_epoch / self.steps_per_epoch)
        if cfg.model.feature_whiten:
            self._fit_whitening()
            self.save()
        elif self._saved_step != self.state.step:
            self.save()
        du.barrier()
        wall = time.perf_counter() - t0
        result = {"steps": self.state.step, "epochs": self.state.epoch, "wall_s": wall,
                  "total_steps": self.total_steps,
                  "elapsed_s": self.state.elapsed_s + wall,
                  "last": str(self.out / "last.pt"), "skipped_steps": self.state.skipped,
                  "final_loss": next((r["loss"] for r in reversed(self.state.history)
                                      if r.get("loss") is not None), None)}
        verdict = monitor_verdict(self.state.history, k)
        if verdict is not None:
            noise = self.monitor.noise(verdict)
            if noise is not None:
                verdict["noise"] = noise
            result["knn_monitor"] = verdict
            if self.dist.is_main:
                self.monitor.say_verdict(verdict)
        if self.dist.is_main:
            self.run.write_result(result)
        return result

    def _fit_whitening(self) -> None:
        """model.feature_whiten: fit the online and target backbones' whitening on the pooled
        features of up to WHITEN_IMAGES clean training images (no labels), drawn from
        train.seed; every process fits the same."""
        t0 = time.perf_counter()
        d, a = self.cfg.data, self.cfg.augment
        for net in (self.model.online.backbone, self.model.target.backbone):
            n = fit_feature_whitening(net, self.source, images=WHITEN_IMAGES,
                                      seed=self.cfg.train.seed, image_size=a.image_size,
                                      mean=a.mean, std=a.std, device=self.device)
        spent = time.perf_counter() - t0
        self._record({"step": self.state.step, "whiten_images": n, "whiten_s": round(spent, 2)})
        if self.dist.is_main:
            log.info("model.feature_whiten %g: fitted on the pooled features of %d training "
                     "images of %s (no labels) in %.1f s", self.cfg.model.feature_whiten, n,
                     d.source, spent)

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


def _normalised_std(z: torch.Tensor | None) -> float:
    """Mean over dimensions of the batch std of L2-normalised projections: ~1/sqrt(d) when
    healthy, -> 0 when the representation collapses to a constant."""
    if z is None or z.shape[0] < 2:
        return float("nan")
    zn = nn.functional.normalize(z.float(), dim=1)
    return zn.std(dim=0).mean().item()


def pretrain(cfg: Config, resume: str | None = None, config_header: str = "") -> dict[str, Any]:
    """Run (or resume) a pretraining; returns a summary with the final checkpoint path.
    ``config_header``: comment lines above the config in ``RUN/config.yaml`` (why it was
    chosen, for a run without a config)."""
    trainer = Trainer(cfg, resume, config_header)
    try:
        return trainer.train()
    finally:
        du.cleanup()
