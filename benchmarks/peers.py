"""The BYOL training loops a user would otherwise write with two peer libraries, timed the way
``byol bench`` times ours.

* :func:`lightly_loop`: lightly's documented BYOL example (``examples/pytorch/byol.py``): a module
  with backbone + ``BYOLProjectionHead`` + ``BYOLPredictionHead``, momentum copies made with
  ``copy.deepcopy`` + ``deactivate_requires_grad``, ``update_momentum`` with
  ``cosine_schedule(step, total, 0.996, 1)``, the symmetric ``NegativeCosineSimilarity`` loss,
  SGD at lr 0.06, and images fed through a torch ``DataLoader`` over a dataset of PIL images
  transformed by lightly's ``BYOLTransform`` in worker processes.
* :func:`byol_pytorch_loop`: lucidrains' byol-pytorch as its README runs it: ``BYOL(net, ...)``
  wrapping the network, its built-in augmentation applied on the device to a batch held in
  memory, Adam at lr 3e-4 and ``learner.update_moving_average()`` after each step.

Both train the network ``byol.models.build_backbone`` builds for the same arch / width / stem,
with the same projector and predictor sizes, batch and image size as ours, so the network FLOPs
per image are identical. Precision and memory format come from the :class:`LoopSpec`: ours
(``precision="auto"``, channels_last) to compare each library's own machinery (augmentation,
data path, optimiser, EMA), or fp32 + NCHW as their documentation runs them.

Each loop runs ``warmup`` untimed steps, then ``steps`` timed ones (CUDA synchronised on both
ends), and returns a :class:`PeerResult`: a :class:`byol.bench.BenchResult` (same fields, same
``row()``) plus the library name and a one-line description of the setup.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from byol.bench import BenchResult
from byol.models import build_backbone

__all__ = [
    "LoopSpec",
    "PeerResult",
    "byol_pytorch_loop",
    "cpu_count",
    "lightly_loop",
    "peak_rss_gib",
    "reset_peak_rss",
    "resolve_device",
    "resolve_precision",
]


@dataclass
class PeerResult(BenchResult):
    library: str = ""
    notes: str = ""


@dataclass
class LoopSpec:
    """What every row of a comparison shares."""

    arch: str = "resnet18"
    width: int = 64
    small_stem: bool = False
    in_chans: int = 3
    image_size: int = 32
    batch: int = 256
    steps: int = 20
    warmup: int = 5
    device: str = "auto"
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (auto: bf16 on CUDA, fp32 on CPUs without fast bf16)
    channels_last: bool | None = None  # None: on, as ours
    proj_hidden_dim: int = 4096  # projector and predictor hidden width
    proj_dim: int = 256
    pool_size: int = 0  # distinct images in memory (0: max(2 * batch, 64), as ``byol bench``)
    seed: int = 0


# ----------------------------------------------------------------------------------------------
# shared helpers


def cpu_count() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The same autocast rule as our engine (byol.precision), so every row runs alike."""
    from byol.precision import autocast_dtype

    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    return autocast_dtype(precision, device)


def _precision_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "fp32"


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set size (Linux ``clear_refs``); False if it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    """Peak resident set size of this process (since the last reset) in GiB. DataLoader worker
    processes are not included."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # KiB -> GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _spec(spec: LoopSpec | None, overrides: dict) -> LoopSpec:
    spec = spec or LoopSpec()
    return dataclasses.replace(spec, **overrides) if overrides else spec


def _check_rgb(spec: LoopSpec, library: str) -> None:
    if spec.in_chans != 3:
        raise ValueError(
            f"{library} is benchmarked on 3-channel images (its augmentations are RGB): "
            f"use in_chans=3 for every row, got {spec.in_chans}"
        )


def _pool(spec: LoopSpec) -> torch.Tensor:
    """uint8 [N, 3, H, W]: the images of ``byol bench``'s synthetic source, so every library
    sees the same pixels."""
    from byol.data import make_synthetic

    n = spec.pool_size or max(2 * spec.batch, 64)
    return make_synthetic(n, spec.image_size, seed=spec.seed).images


def _backbone(spec: LoopSpec) -> nn.Module:
    return build_backbone(spec.arch, in_chans=spec.in_chans, small_stem=spec.small_stem,
                          width=spec.width)


class _ChannelsLastInput(nn.Module):
    """Hands the network channels-last input, as our engine does with its views, for libraries
    that augment inside their own forward."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _measure(
    step: Callable[[int], torch.Tensor], spec: LoopSpec, device: torch.device
) -> tuple[float, float]:
    """Run ``warmup`` untimed then ``steps`` timed steps; (seconds, peak memory GiB). The peak is
    CUDA's allocator peak over the timed steps, or on CPU the process's peak RSS since the loop
    began (model, data and workers' parent side included)."""
    loss = None
    for i in range(spec.warmup):
        loss = step(i)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for i in range(spec.steps):
        loss = step(spec.warmup + i)
    _sync(device)
    seconds = time.perf_counter() - t
    if loss is not None and not torch.isfinite(loss.detach().float()).item():
        raise RuntimeError(f"the loss became {loss.item()}")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = peak_rss_gib()
    return seconds, peak


def _result(library: str, mode: str, spec: LoopSpec, device: torch.device,
            dtype: torch.dtype | None, channels_last: bool, seconds: float, peak: float,
            notes: str) -> PeerResult:
    return PeerResult(
        mode=mode,
        arch=spec.arch,
        width=spec.width,
        image_size=spec.image_size,
        batch=spec.batch,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        precision=_precision_name(dtype),
        channels_last=channels_last,
        fuse_views=library == "byol-pytorch",  # it concatenates the two views in one forward
        compile=False,
        steps=spec.steps,
        seconds=seconds,
        images_per_s=spec.steps * spec.batch / seconds,
        peak_mem_gib=peak,
        library=library,
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------
# lightly


class _PILDataset(torch.utils.data.Dataset):
    """A dataset of PIL images, as torchvision's CIFAR10: uint8 HWC pixels in memory, one
    ``PIL.Image`` made per item and passed through ``transform``. It cycles over its ``len(
    images)`` pictures for ``length`` items so one epoch covers every step of the benchmark (no
    worker restart at an epoch boundary inside the timed steps)."""

    def __init__(self, images_nchw: torch.Tensor, length: int, transform) -> None:
        self.images = images_nchw.permute(0, 2, 3, 1).contiguous().numpy()
        self.length = length
        self.transform = transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        from PIL import Image

        img = Image.fromarray(self.images[index % len(self.images)], mode="RGB")
        return self.transform(img), 0


def lightly_transform(image_size: int, mean: Sequence[float], std: Sequence[float]):
    """lightly's ``BYOLTransform`` with BYOL's two views (blur 1.0 / 0.1, solarize 0 / 0.2,
    lightly's defaults) at ``image_size`` and the given normalisation."""
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    norm = {"mean": list(mean), "std": list(std)}
    return BYOLTransform(
        view_1_transform=BYOLView1Transform(
            input_size=image_size, gaussian_blur=1.0, solarization_prob=0.0, normalize=norm
        ),
        view_2_transform=BYOLView2Transform(
            input_size=image_size, gaussian_blur=0.1, solarization_prob=0.2, normalize=norm
        ),
    )


class _LightlyBYOL(nn.Module):
    """The module of lightly's BYOL example, on our backbone."""

    def __init__(self, backbone: nn.Module, feat_dim: int, hidden: int, out: int) -> None:
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feat_dim, hidden, out)
        self.prediction_head = BYOLPredictionHead(out, hidden, out)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone(x).flatten(start_dim=1)
        return self.prediction_head(self.projection_head(y))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone_momentum(x).flatten(start_dim=1)
        return self.projection_head_momentum(y).detach()


def lightly_loop(
    spec: LoopSpec | None = None,
    *,
    mode: str = "data",
    num_workers: int | None = None,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.25, 0.25, 0.25),
    lr: float = 0.06,
    **overrides,
) -> PeerResult:
    """lightly's BYOL example, timed.

    mode ``data``: end to end, as users run it: a ``DataLoader`` (shuffle, drop_last,
    ``num_workers`` processes, default all cores) over PIL images with ``BYOLTransform``, views
    moved to the device each step; 2 x ``num_workers`` more untimed steps use up the batches the
    workers queued while the first steps ran. Mode ``model``: one batch of views made once and reused (the
    model step alone). ``mean``/``std`` default to ``byol bench``'s normalisation.
    """
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.utils import update_momentum
    from lightly.utils.scheduler import cosine_schedule

    if mode not in ("data", "model"):
        raise ValueError(f"lightly_loop: mode must be data or model, got {mode!r}")
    spec = _spec(spec, overrides)
    _check_rgb(spec, "lightly")
    reset_peak_rss()
    device = resolve_device(spec.device)
    dtype = resolve_precision(spec.precision, device)
    channels_last = True if spec.channels_last is None else spec.channels_last
    workers = cpu_count() if num_workers is None else num_workers
    torch.manual_seed(spec.seed)

    backbone = _backbone(spec)
    model = _LightlyBYOL(backbone, backbone.num_features, spec.proj_hidden_dim, spec.proj_dim)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    backlog = 2 * workers if mode == "data" else 0
    total = spec.warmup + backlog + spec.steps
    n_batches = total if mode == "data" else 1
    dataset = _PILDataset(_pool(spec), spec.batch * n_batches,
                          lightly_transform(spec.image_size, mean, std))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=spec.batch, shuffle=True, drop_last=True, num_workers=workers
    )
    batches = iter(loader)

    def to_device(views):
        x0, x1 = views
        x0, x1 = x0.to(device), x1.to(device)
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
            x1 = x1.contiguous(memory_format=torch.channels_last)
        return x0, x1

    fixed = to_device(next(batches)[0]) if mode == "model" else None

    def step(i: int) -> torch.Tensor:
        m = cosine_schedule(i, total, 0.996, 1)
        update_momentum(model.backbone, model.backbone_momentum, m=m)
        update_momentum(model.projection_head, model.projection_head_momentum, m=m)
        x0, x1 = fixed if fixed is not None else to_device(next(batches)[0])
        with _autocast(device, dtype):
            p0 = model(x0)
            z0 = model.forward_momentum(x0)
            p1 = model(x1)
            z1 = model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        return loss.detach()

    # The workers keep up to prefetch_factor (2) x workers batches queued; those made while the
    # first (slow) steps ran would be handed out for free at the start of the timed steps, so
    # they are used up by as many extra untimed steps.
    # (the worker processes end when the iterator is freed, as this function returns)
    seconds, peak = _measure(step, dataclasses.replace(spec, warmup=spec.warmup + backlog), device)
    if mode == "data":
        notes = (f"DataLoader, {workers} workers, PIL + BYOLTransform; SGD lr {lr:g}; "
                 "update_momentum (cosine 0.996->1)")
        if backlog:
            notes += f"; {backlog} extra warmup steps drain the prefetch queue"
    else:
        notes = f"one pre-made batch of BYOLTransform views reused; SGD lr {lr:g}"
    return _result("lightly", mode, spec, device, dtype, channels_last, seconds, peak, notes)


# ----------------------------------------------------------------------------------------------
# byol-pytorch


def byol_pytorch_loop(
    spec: LoopSpec | None = None,
    *,
    mode: str = "augment",
    lr: float = 3e-4,
    moving_average_decay: float = 0.99,
    **overrides,
) -> PeerResult:
    """lucidrains' byol-pytorch, timed.

    Our backbone returns pooled features, so ``hidden_layer=-1`` (the network's output is the
    representation: no hook). Simplicial embeddings (on by default in byol-pytorch >= 0.8) are
    turned off so the projector is BYOL's MLP, the same network as the other rows.

    mode ``augment``: a uint8 batch drawn each step from images held on the device, scaled to
    [0, 1] and given to the learner, which applies its default augmentation there (as the
    README, which feeds in-memory tensors; no DataLoader). Mode ``model``: one batch augmented
    once with that augmentation and fed with the augmentation replaced by the identity.
    """
    from byol_pytorch import BYOL

    if mode not in ("augment", "model"):
        raise ValueError(f"byol_pytorch_loop: mode must be augment or model, got {mode!r}")
    spec = _spec(spec, overrides)
    _check_rgb(spec, "byol-pytorch")
    reset_peak_rss()
    device = resolve_device(spec.device)
    dtype = resolve_precision(spec.precision, device)
    channels_last = True if spec.channels_last is None else spec.channels_last
    torch.manual_seed(spec.seed)

    net: nn.Module = _backbone(spec)
    if channels_last:
        net = _ChannelsLastInput(net)
    net.to(device)
    kwargs = dict(
        image_size=spec.image_size,
        hidden_layer=-1,
        projection_size=spec.proj_dim,
        projection_hidden_size=spec.proj_hidden_dim,
        moving_average_decay=moving_average_decay,
    )
    if "use_simplicial_embeddings" in inspect.signature(BYOL.__init__).parameters:
        kwargs["use_simplicial_embeddings"] = False
    learner = BYOL(net, **kwargs)
    if channels_last:
        learner.to(memory_format=torch.channels_last)
    learner.train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    pool = _pool(spec).to(device)
    gen = torch.Generator(device=device).manual_seed(spec.seed)

    def draw() -> torch.Tensor:
        idx = torch.randint(len(pool), (spec.batch,), generator=gen, device=device)
        return pool[idx].float().div_(255)

    fixed = None
    if mode == "model":  # augment one batch with its default augmentation, then switch it off
        with torch.no_grad():
            fixed = learner.augment1(draw())
        learner.augment1 = learner.augment2 = nn.Identity()

    def step(i: int) -> torch.Tensor:  # noqa: ARG001
        x = fixed if fixed is not None else draw()
        with _autocast(device, dtype):
            loss = learner(x)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        learner.update_moving_average()
        return loss.detach()

    seconds, peak = _measure(step, spec, device)
    if mode == "augment":
        notes = (f"uint8 images on the device, its DEFAULT_AUG there; Adam lr {lr:g}; "
                 f"update_moving_average ({moving_average_decay:g})")
    else:
        notes = f"one batch augmented once (DEFAULT_AUG) and reused, augmentation set to Identity; Adam lr {lr:g}"
    return _result("byol-pytorch", mode, spec, device, dtype, channels_last, seconds, peak, notes)

