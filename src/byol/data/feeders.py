"""Feeders: the pretraining batches of an opened source, in an order and with augmentation
randomness that are pure functions of (seed, epoch, step, micro-batch slot).

:class:`MemoryFeeder` holds a uint8 tensor on the training device and augments there;
:class:`FolderFeeder` decodes and crops in DataLoader workers (seeded per image by
:class:`_SeededViews`) and finishes the photometric part on the device. Both yield, per optimiser
step, this process's micro-batches of views (:meth:`MemoryFeeder.batches`); which images a
micro-batch holds is :func:`slot_indices` over the epoch's :func:`epoch_permutation`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from ..augment import BYOLAugment, match_channels
from ..config import Config
from ..errors import TrainingError
from .base import ArraySource
from .folders import FolderViewsDataset
from .sources import open_source

#: One optimiser step's micro-batches of this process: (global step, [(slot, indices), ...]).
StepPlan = tuple[int, list[tuple[int, torch.Tensor]]]


def mix_seed(*xs: int) -> int:
    """A 63-bit seed from integers (splitmix64-style), so nearby inputs give unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h ^= (x + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, 1))
    return torch.randperm(n, generator=g)


def view_seed(seed: int, step: int, slot: int) -> int:
    """The augmentation seed of micro-batch ``slot`` of global optimiser step ``step``."""
    return mix_seed(seed, step, slot, 3)


def slot_indices(perm: torch.Tensor, step_in_epoch: int, batch_size: int, accumulate: int,
                 world_size: int, rank: int) -> list[tuple[int, torch.Tensor]]:
    """This process's micro-batches of one optimiser step: (global slot, indices into ``perm``'s
    source). Micro-batch ``j`` of process ``rank`` is slot ``j * world_size + rank``."""
    start = step_in_epoch * batch_size * accumulate * world_size
    out = []
    for j in range(accumulate):
        slot = j * world_size + rank
        out.append((slot, perm[start + slot * batch_size : start + (slot + 1) * batch_size]))
    return out


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

    def batches(self, plan: Iterator[StepPlan], epoch: int, seed: int) -> Iterator[list]:
        """Per optimiser step of ``plan``, the list of its micro-batches' views."""
        for step, slots in plan:
            with torch.no_grad():  # (never yield inside it: the caller would inherit it)
                micro = [self.views(idx, view_seed(seed, step, slot)) for slot, idx in slots]
            yield micro


class _SeededViews(torch.utils.data.Dataset):
    """Seeds the worker's torch RNG from (run seed, epoch, index) before each item, so crops
    done in DataLoader workers are reproducible and resume exactly."""

    def __init__(self, base, seed: int) -> None:
        self.base, self.seed = base, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        torch.manual_seed(mix_seed(self.seed, epoch, index, 2))
        return self.base[index]


class FolderFeeder:
    """Decode + crop + flip in DataLoader workers (fixed-size uint8), pinned non-blocking
    transfer, colour/blur/solarize on the device."""

    def __init__(self, src, cfg: Config, augment: BYOLAugment, device: torch.device) -> None:
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

    def batches(self, plan: Iterator[StepPlan], epoch: int, seed: int) -> Iterator[list]:
        """Per optimiser step of ``plan``, the list of its micro-batches' views: one DataLoader
        over the whole plan, so the workers run ahead across steps."""
        keys, seeds, accumulate = [], [], []
        for step, slots in plan:
            for slot, idx in slots:
                keys.extend((int(i), epoch) for i in idx)
                seeds.append(view_seed(seed, step, slot))
            accumulate.append(len(slots))
        it = iter(self.loader(keys, self.cfg.train.batch_size))
        k = 0
        for n in accumulate:
            micro = []
            for _ in range(n):
                try:
                    v1, v2, _labels = next(it)
                except RuntimeError as e:
                    if "DataLoader worker" not in str(e):
                        raise
                    out = Path(self.cfg.log.out_dir)
                    raise TrainingError(
                        f"a data loading worker died ({str(e).splitlines()[0]}); the checkpoints "
                        f"in {out} are intact: resume with --resume {out} (lower "
                        "data.num_workers if the machine ran out of memory)"
                    ) from e
                with torch.no_grad():
                    micro.append(self.finish(v1, v2, seeds[k]))
                k += 1
            yield micro


def build_feeder(cfg: Config, device: torch.device):
    """(the opened training source, its feeder): in memory when the source is an array source,
    DataLoader workers over its files otherwise."""
    d, a = cfg.data, cfg.augment
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
        seed=cfg.train.seed,
    )
    augment = BYOLAugment(a, cfg.model.in_chans)
    if isinstance(src, ArraySource):
        images = src.images
        if images.shape[1] != cfg.model.in_chans:
            images = _match_channels(images, cfg.model.in_chans, src.name)
        return src, MemoryFeeder(images, augment, device)
    if a.local_crops:
        raise TrainingError(
            f"augment.local_crops={a.local_crops} needs the dataset in memory, and "
            f"{src.name} is read from files: set data.in_memory=true (and data.load_size) or "
            "augment.local_crops=0"
        )
    return src, FolderFeeder(src, cfg, augment, device)


def _match_channels(images: torch.Tensor, in_chans: int, name: str) -> torch.Tensor:
    out = match_channels(images, in_chans)
    if out.shape[1] == in_chans:
        return out.contiguous()
    c = images.shape[1]
    raise TrainingError(f"{name} has {c} channels but model.in_chans={in_chans}: set model.in_chans={c}")
