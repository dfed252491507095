"""``byol bench``: steady-state pretraining throughput and peak memory of this engine.

Three modes, from the inside out:
  model    fixed pre-augmented views: the model step alone (forward, backward, LARS, EMA)
  augment  uint8 images resident on the device, the full two-view augmentation every step
  data     a real dataset through the engine's own feeder (in-memory or folder workers)

Every mode runs the engine's own ``Trainer.train_step``: what is measured is what trains.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from dataclasses import dataclass, field

import torch

from .config import load_config


@dataclass
class BenchResult:
    mode: str
    arch: str
    width: int
    image_size: int
    batch: int
    device: str
    precision: str
    channels_last: bool
    fuse_views: bool
    compile: bool
    steps: int
    seconds: float
    images_per_s: float
    peak_mem_gib: float
    gflop_per_image: float | None = None
    achieved_tflops: float | None = None
    peak_tflops: float | None = None
    utilisation: float | None = None
    last_stage_width: int = 0  # model.last_stage_width (0: 8 x width)
    # --repeat N: images/s of each timed block of ``steps`` steps, in order; images_per_s is
    # their median (a machine whose speed drifts shows it in the spread, not in one number)
    repeats: list[float] = field(default_factory=list)

    def row(self) -> str:
        util = f"{100 * self.utilisation:.1f}%" if self.utilisation is not None else "-"
        last = self.last_stage_width
        model = f"{self.arch} w{self.width}" + (f" last{last}" if last and last != 8 * self.width
                                                 else "")
        rate = f"{self.images_per_s:,.0f}"
        if len(self.repeats) > 1:
            rate += f" ({min(self.repeats):,.0f}-{max(self.repeats):,.0f}, {len(self.repeats)}x)"
        return (
            f"| {self.mode} | {model} | {self.image_size} | {self.batch} | "
            f"{self.device} | {self.precision} | {rate} | "
            f"{self.peak_mem_gib:.2f} | {util} |"
        )


TABLE_HEADER = (
    "| mode | model | px | batch | device | precision | images/s | peak mem GiB | FLOP util |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def bench_config(args: argparse.Namespace):
    sets = [
        f"model.arch={args.arch}",
        f"model.width={args.width}",
        f"model.small_stem={args.small_stem}",
        f"model.in_chans={args.in_chans}",
        f"augment.image_size={args.image_size}",
        f"augment.mean={[0.5] * args.in_chans}",
        f"augment.std={[0.25] * args.in_chans}",
        f"train.batch_size={args.batch}",
        f"train.device={args.device}",
        f"train.precision={args.precision}",
        f"train.compile={args.compile}",
        "train.epochs=1000",
        "log.tensorboard=false",
        "log.progress=false",
        f"log.out_dir={args.out}",
        f"data.source={args.source}",
        f"data.synthetic_size={max(args.batch * 2, 64)}",
    ]
    if args.data:
        sets.append(f"data.path={args.data}")
    if args.channels_last is not None:
        sets.append(f"train.channels_last={args.channels_last}")
    if args.fuse_views is not None:
        sets.append(f"train.fuse_views={args.fuse_views}")
    if args.proj_hidden_dim:
        sets += [f"model.proj_hidden_dim={args.proj_hidden_dim}",
                 f"model.pred_hidden_dim={args.proj_hidden_dim}"]
    return load_config(args.config, sets + list(args.set or []))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_tflops(device: torch.device, dtype=torch.bfloat16, n: int = 8192) -> float:
    """Measured dense matmul peak (the denominator of the utilisation figure)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def count_step_flops(trainer, micro) -> float:
    """FLOPs of one optimiser step (forward + backward of the online network, target forward),
    counted by PyTorch's FlopCounterMode (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    lr, tau = trainer.schedules(0)
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(micro, lr, tau)
    return float(counter.get_total_flops())


def run_bench(args: argparse.Namespace) -> BenchResult:
    from .engine import Trainer

    repeat = getattr(args, "repeat", 1)
    if args.steps < 1 or args.warmup < 0 or repeat < 1:
        raise SystemExit("bench: --steps and --repeat must be >= 1 and --warmup >= 0")
    cfg = bench_config(args)
    trainer = Trainer(cfg)
    dev = trainer.device
    trainer.model.train()
    perm = torch.randperm(len(trainer.feeder))
    if args.mode == "data":
        batches = trainer._epoch_batches(perm, 0, 0)

        def next_micro():
            nonlocal batches
            try:
                return next(batches)
            except StopIteration:
                batches = trainer._epoch_batches(torch.randperm(len(trainer.feeder)), 0, 0)
                return next(batches)
    else:
        if not hasattr(trainer.feeder, "views"):
            raise SystemExit("bench: modes model/augment need an in-memory source")

        def fresh(step: int):
            with torch.no_grad():
                return [trainer.feeder.views(idx, step) for _, idx in trainer._slot_indices(perm, step % trainer.steps_per_epoch)]

        fixed = fresh(0)
        counter = iter(range(10**9))

        def next_micro():
            return fixed if args.mode == "model" else fresh(next(counter))

    for i in range(args.warmup):
        lr, tau = trainer.schedules(i)
        trainer.train_step(next_micro(), lr, tau)
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    blocks: list[float] = []  # seconds of each timed block
    step = args.warmup
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(args.steps):
            lr, tau = trainer.schedules(step)
            loss, _ = trainer.train_step(next_micro(), lr, tau)
            step += 1
        _sync(dev)
        blocks.append(time.perf_counter() - t)
        if not torch.isfinite(loss):
            raise SystemExit(f"bench: loss became {loss.item()}")
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    rates = [args.steps * trainer.global_batch / b for b in blocks]
    seconds = sum(blocks)
    res = BenchResult(
        args.mode, cfg.model.arch, cfg.model.width, cfg.augment.image_size, trainer.global_batch,
        torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "fp32",
        trainer.channels_last, trainer.model.fuse_views, cfg.train.compile,
        args.steps * repeat, seconds, statistics.median(rates), peak,
        last_stage_width=cfg.model.last_stage_width, repeats=rates,
    )
    if args.flops:
        flops = count_step_flops(trainer, next_micro())
        res.gflop_per_image = flops / trainer.global_batch / 1e9
        res.achieved_tflops = flops * args.steps * repeat / seconds / 1e12
        if dev.type == "cuda":
            res.peak_tflops = measure_peak_tflops(dev)
            res.utilisation = res.achieved_tflops / res.peak_tflops
    return res
