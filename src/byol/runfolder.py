"""A pretraining run's folder: what a run writes there and what a resume reads back.

``RUN/config.yaml`` (the run's settings), ``RUN/metrics.jsonl`` (one row per log or monitor
point, mirrored to ``RUN/tb/`` with tensorboard), ``RUN/ckpt_<step>.pt`` with ``RUN/last.pt``
pointing at the newest (written atomically, pruned to ``log.keep_last``) and
``RUN/train_result.json``. Only the main process writes; every process agrees on a failed save.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    FORMAT,
    CheckpointError,
    atomic_save,
    load_checkpoint,
    remove_stale_temps,
    write_error,
)
from .config import Config, config_from_dict
from .distributed import DistInfo
from .errors import TrainingError

log = logging.getLogger("byol")


class RunFolder:
    """The folder ``out`` of one run, seen from one process of it."""

    def __init__(self, out: Path, dist: DistInfo, device: torch.device) -> None:
        self.out, self.dist, self.device = Path(out), dist, device
        self.writer = None  # tensorboard's SummaryWriter, once opened
        self._metrics_warned = False
        if dist.is_main:
            _ensure_writable(self.out)
            stale = remove_stale_temps(self.out)
            if stale:
                log.info("removed %d temporary file(s) left in %s by an interrupted save: %s",
                         len(stale), self.out, ", ".join(p.name for p in stale))

    def has_checkpoint(self) -> bool:
        return (self.out / "last.pt").is_file() or any(self.out.glob("ckpt_*.pt"))

    def open_tensorboard(self) -> None:
        if not self.dist.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            log.warning("tensorboard is not installed: no event files")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def write_config(self, text: str) -> None:
        (self.out / "config.yaml").write_text(text)

    def write_result(self, result: dict[str, Any]) -> None:
        (self.out / "train_result.json").write_text(json.dumps(result, indent=2))

    def append(self, row: dict[str, Any]) -> None:
        """One metrics row: a line of metrics.jsonl and tensorboard scalars (main process). A
        failed write warns once and training goes on (the checkpoints keep the history)."""
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

    def save(self, state: Callable[[], dict[str, Any]], step: int, keep_last: int) -> Path | None:
        """Write ``state()`` as ckpt_<step>.pt atomically, point last.pt at it, prune to
        ``keep_last`` files. A failed write (full disk) leaves the previous checkpoints
        untouched and ends the run with a TrainingError on every process. The path on the main
        process, None on the others."""
        path = self.out / f"ckpt_{step:08d}.pt"
        error: OSError | None = None
        if self.dist.is_main:
            try:
                atomic_save(state(), path)
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
        for old in sorted(self.out.glob("ckpt_*.pt"))[:-keep_last]:
            try:
                old.unlink()
            except OSError as e:  # pruning is housekeeping: never lose a run over it
                log.warning("could not delete old checkpoint %s (%s)", old, e.strerror or e)
        return path

    def diverged_advice(self, saved_step: int, peak_lr: float, skip_nonfinite: bool,
                        data: bool = False) -> str:
        """What a diverged run keeps and what to change: the newest checkpoint only if one
        exists (saved at ``saved_step``, -1 for none this session), and train.nonfinite=skip
        only when it is not already on."""
        last = self.out / "last.pt"
        saved = saved_step if saved_step >= 0 else None
        if last.is_file():
            kept = (f"The last good checkpoint is kept in {self.out} ({last.name}"
                    f"{f', step {saved}' if saved is not None else ''})")
            then = "then --resume " + str(self.out)
        else:
            kept = f"No checkpoint was saved yet in {self.out}"
            then = "then run again"
        fixes = [f"lower optim.base_lr (peak lr was {peak_lr:.3g})"]
        if not skip_nonfinite:
            fixes += ["raise optim.warmup_epochs", "set train.nonfinite=skip"]
        elif data:
            fixes.append("check the data")
        return f"{kept}; {', '.join(fixes[:-1])}{' or ' if len(fixes) > 1 else ''}{fixes[-1]}, {then}"


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


def load_resumable(where: str, device: torch.device, warn: bool = True) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to resume from: a file, or a run folder's newest readable one (a
    damaged last.pt falls back to the next newest ckpt_*.pt, with a warning when ``warn``)."""
    p = Path(where)
    if not p.is_dir():
        path = find_checkpoint(p)
        return path, load_checkpoint(path, map_location=str(device))
    candidates = [p / "last.pt"] if (p / "last.pt").is_file() else []
    candidates += sorted(p.glob("ckpt_*.pt"), reverse=True)
    if not candidates:
        find_checkpoint(p)  # raises the "no checkpoint" error
    errors = []
    for path in candidates:
        try:
            return path, load_checkpoint(path, map_location=str(device))
        except CheckpointError as e:
            errors.append(str(e))
            if warn:
                log.warning("skipping unreadable checkpoint: %s", e)
    raise TrainingError(f"no readable checkpoint in '{p}' to resume from: {'; '.join(errors)}")


def resumable_config(path: Path, ckpt: dict[str, Any], cfg: Config) -> Config:
    """The config stored in training checkpoint ``ckpt``, checked to resume a run of ``cfg``: a
    byol training checkpoint with its run state, of the same model settings."""
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
    if saved.model != cfg.model:
        mine, theirs = cfg.to_dict()["model"], saved.to_dict()["model"]
        diff = ", ".join(f"model.{k}: checkpoint {theirs[k]!r} vs config {mine[k]!r}"
                         for k in mine if mine[k] != theirs[k])
        raise TrainingError(
            f"'{path}' was trained with other model settings ({diff}); resume with the same "
            "config (it is stored in the checkpoint: `byol config show --checkpoint`)"
        )
    return saved


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
