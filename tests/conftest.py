"""Shared fixtures: tiny models and tiny training configs that keep every test CPU-cheap."""

from __future__ import annotations

import pytest
import torch

from byol.config import load_config
from byol.models import BYOL, build_backbone

torch.set_num_threads(1)

TINY = dict(hidden=32, dim=16)


def tiny_backbone(in_chans: int = 3, arch: str = "resnet18", width: int = 8) -> torch.nn.Module:
    return build_backbone(arch, in_chans=in_chans, small_stem=True, width=width)


def tiny_byol(in_chans: int = 3, fuse_views: bool = True, seed: int = 0) -> BYOL:
    torch.manual_seed(seed)
    return BYOL(
        tiny_backbone(in_chans),
        proj_hidden_dim=TINY["hidden"],
        proj_dim=TINY["dim"],
        pred_hidden_dim=TINY["hidden"],
        fuse_views=fuse_views,
    )


def tiny_overrides(out_dir, **extra) -> list[str]:
    """``--set`` items for a seconds-long pretraining on the synthetic source."""
    items = {
        "data.source": "synthetic",
        "data.synthetic_size": 64,
        "data.num_workers": 0,
        "model.arch": "resnet18",
        "model.in_chans": 3,
        "model.small_stem": True,
        "model.width": 8,
        "model.proj_hidden_dim": 32,
        "model.proj_dim": 16,
        "model.pred_hidden_dim": 32,
        "model.sync_bn": False,
        "augment.image_size": 16,
        "augment.interpolation": "bilinear",
        "train.batch_size": 16,
        "train.accumulate": 1,
        "train.epochs": 2,
        "train.device": "cpu",
        "train.precision": "fp32",
        "train.threads": 1,
        "optim.warmup_epochs": 0.5,
        "log.out_dir": str(out_dir),
        "log.log_every": 2,
        "log.save_every": 1,
        "log.progress": False,
        "log.tensorboard": False,
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def tiny_config(out_dir, **extra):
    return load_config(None, tiny_overrides(out_dir, **extra))


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """The Trainer sets process-wide torch state (threads, deterministic algorithms, seed):
    put it back after each test so tests stay independent."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det, warn_only=det_warn)


def save_gray_numpy_checkpoint(path, train_npz, val_npz=None, seed: int = 0):
    """A byol checkpoint at ``path`` of a tiny 1-channel ResNet-18 (width 8, 16 px, small stem)
    whose config points at ``train_npz`` (and ``val_npz``): untrained weights from ``seed``."""
    from byol.checkpoint import FORMAT, atomic_save
    from byol.config import Config
    from byol.models import build_byol

    cfg = Config()
    cfg.model.arch, cfg.model.small_stem, cfg.model.width, cfg.model.in_chans = (
        "resnet18", True, 8, 1)
    cfg.model.proj_hidden_dim = cfg.model.pred_hidden_dim = cfg.model.proj_dim = 16
    cfg.data.source, cfg.data.path = "numpy", str(train_npz)
    if val_npz is not None:
        cfg.data.val_path = str(val_npz)
    cfg.augment.image_size, cfg.augment.mean, cfg.augment.std = 16, (0.5,), (0.25,)
    torch.manual_seed(seed)
    atomic_save({"format": FORMAT, "config": cfg.to_dict(),
                 "model": build_byol(cfg.model).state_dict()}, path)


def tiny_set_args(out_dir, **extra) -> list[str]:
    """``tiny_overrides`` (one optimiser step unless ``extra`` says otherwise) as CLI ``--set``
    arguments."""
    args: list[str] = []
    for item in tiny_overrides(out_dir, **{"train.max_steps": 1, **extra}):
        args += ["--set", item]
    return args
