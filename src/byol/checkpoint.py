"""Checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) so that the safe loader
accepts it: ``format``, ``config`` (the resolved config as a dict), ``model`` (the BYOL state
dict: ``online.backbone.*``, ``online.projector.*``, ``predictor.*``, ``target.*``),
``optimizer``, ``step``, ``epoch``, ``rng`` and ``metrics``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, config_from_dict
from .errors import CheckpointError
from .models import build_backbone

FORMAT = "byol/1"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Run ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then rename it
    into place: a crash or a full disk mid-write leaves any previous file at ``path`` intact and
    never a truncated file that a loader would half-read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read safely ({type(e).__name__}: {e}). "
            "Is it a byol, mmselfsup or torchvision checkpoint? Convert others with `byol import`."
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(ckpt).__name__}, not a dict")
    return ckpt


def load_state_reporting(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True
) -> tuple[list[str], list[str]]:
    """load_state_dict that explains shape mismatches and missing/unexpected keys by name."""
    own = module.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        raise CheckpointError(
            f"'{source}' was made for another architecture: {len(mismatched)} tensors differ in "
            f"shape, e.g. {'; '.join(mismatched[:3])}. Use the model settings it was trained with."
        )
    result = module.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"'{source}' does not fit the model: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    return missing, unexpected


def is_byol_checkpoint(obj: Any) -> bool:
    """Whether a loaded checkpoint has byol's layout, by its keys: ``format`` is
    ``byol/1`` and it holds ``config`` and ``model``. Anything else is a foreign layout
    (:mod:`byol.weights.foreign`)."""
    return (isinstance(obj, dict) and obj.get("format") == FORMAT and "config" in obj
            and isinstance(obj.get("model"), dict))


def backbone_from_checkpoint(
    ckpt: dict, source: str, which: str = "online"
) -> tuple[nn.Module, Config]:
    """The ``which`` (online / target) backbone of a loaded byol checkpoint, and its config."""
    if which not in ("online", "target"):
        raise CheckpointError(f"which={which!r}: choose 'online' or 'target'")
    cfg = config_from_dict(ckpt["config"], where=source)
    m = cfg.model
    backbone = build_backbone(m.arch, m.in_chans, m.small_stem, m.width)
    prefix = f"{which}.backbone."
    state = {k[len(prefix) :]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    load_state_reporting(backbone, state, source)
    return backbone, cfg


def load_backbone(
    path: str | os.PathLike, which: str = "online", map_location: str = "cpu"
) -> tuple[nn.Module, Config]:
    """The pretrained backbone of a byol checkpoint, and the run's :class:`byol.config.Config`.

    ``which``: ``online`` (the encoder BYOL keeps) or ``target`` (its EMA).
    """
    ckpt = load_checkpoint(path, map_location)
    if not is_byol_checkpoint(ckpt):
        raise CheckpointError(
            f"'{path}' is not a byol checkpoint (no format '{FORMAT}'); "
            "convert mmselfsup/torchvision weights with `byol import` first"
        )
    return backbone_from_checkpoint(ckpt, str(path), which)
