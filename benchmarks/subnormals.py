"""Does a trained network compute on subnormal floats, and does flushing them speed a CPU step?

x86 cores handle subnormal floats (below float32's 1.2e-38) through a slow path, and
``torch.set_flush_denormal(True)`` turns them into zero. This script answers the two questions
for a checkpoint (docs/RESULTS.md, tenth pass, found "no" to both for fmnist_cpu1h):

1. How many subnormal values one training step produces: every leaf module's output, the
   gradient reaching every conv/linear output, the weight gradients and the optimiser state.
2. The step's speed with and without flushing, in alternating rounds (separate processes: the
   flag is per thread and threads inherit it only when created, so it is set before torch's
   OpenMP pool starts), for the fresh network and the checkpoint.

    python benchmarks/subnormals.py runs/fmnist_cpu1h/last.pt --rounds 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch


def _trainer(config: str, checkpoint: str | None):
    from byol.config import load_config
    from byol.engine import Trainer

    sets = ["log.progress=false", "log.tensorboard=false", "log.out_dir=/tmp/byol_subnormals",
            "train.time_budget=", "train.total_steps=100000", "log.knn_every_steps=0"]
    tr = Trainer(load_config(config, sets), resume=checkpoint)
    tr.model.train()
    perm = torch.randperm(len(tr.feeder))

    def views(step: int):
        with torch.no_grad():
            return [tr.feeder.views(idx, step) for _, idx in
                    tr._slot_indices(perm, step % tr.steps_per_epoch)]

    return tr, views


def _subnormal(t) -> int:
    if not torch.is_tensor(t) or not t.is_floating_point():
        return 0
    a = t.detach().abs()
    return int(((a > 0) & (a < torch.finfo(t.dtype).tiny)).sum())


def count(config: str, checkpoint: str | None) -> dict[str, int]:
    tr, views = _trainer(config, checkpoint)
    n = {"activations": 0, "activation gradients": 0}

    def on_output(module, inputs, out):
        for o in out if isinstance(out, (tuple, list)) else (out,):
            n["activations"] += _subnormal(o)
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and o.requires_grad:
                o.register_hook(lambda g: n.__setitem__(
                    "activation gradients", n["activation gradients"] + _subnormal(g)))

    for m in tr.model.modules():
        if not list(m.children()):
            m.register_forward_hook(on_output)
    lr, tau = tr.schedules(tr.state.step)
    opt = tr.optimizer
    micro = views(1)
    # the weight gradients are read before the step clears them
    grads = {"weight gradients": 0}
    orig_step = opt.step

    def step_and_count(*a, **k):
        grads["weight gradients"] = sum(_subnormal(p.grad) for p in tr.model.parameters())
        return orig_step(*a, **k)

    opt.step = step_and_count
    tr.train_step(micro, lr, tau)
    state = sum(_subnormal(v) for s in opt.state.values() for v in s.values())
    return {**n, **grads, "optimiser state": state,
            "parameters": sum(p.numel() for p in tr.model.parameters())}


def time_steps(config: str, checkpoint: str | None, flush: bool, steps: int) -> float:
    torch.set_flush_denormal(flush)  # before any parallel op: the pool's threads inherit it
    tr, views = _trainer(config, checkpoint)
    start = tr.state.step
    for i in range(5):
        tr.train_step(views(i), *tr.schedules(start + i))
    t = time.perf_counter()
    for i in range(steps):
        tr.train_step(views(5 + i), *tr.schedules(start + 5 + i))
    return steps * tr.global_batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--config", default="fmnist_cpu1h", help="preset or YAML of the network")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per reading")
    ap.add_argument("--_time", nargs=2, help=argparse.SUPPRESS)  # (flush 0/1, checkpoint or -)
    args = ap.parse_args()
    if args._time:
        ck = None if args._time[1] == "-" else args._time[1]
        print(time_steps(args.config, ck, args._time[0] == "1", args.steps))
        return
    print("| network | " + " | ".join(["activations", "activation gradients", "weight gradients",
                                         "optimiser state", "parameters"]) + " |")
    print("|---|---|---|---|---|---|")
    for name, ck in (("fresh", None), ("checkpoint", args.checkpoint)):
        c = count(args.config, ck)
        print(f"| {name} | " + " | ".join(str(c[k]) for k in (
            "activations", "activation gradients", "weight gradients", "optimiser state",
            "parameters")) + " |", flush=True)
    print("\n| round | flushing | fresh (images/s) | checkpoint (images/s) |\n|---|---|---|---|")
    for r in range(args.rounds):
        for flush in ("0", "1"):
            rates = []
            for ck in ("-", args.checkpoint):
                out = subprocess.run([sys.executable, __file__, args.checkpoint, "--config",
                                      args.config, "--steps", str(args.steps), "--_time", flush, ck],
                                     capture_output=True, text=True, check=True).stdout
                rates.append(float(out.strip().splitlines()[-1]))
            print(f"| {r + 1} | {'on' if flush == '1' else 'off'} | {rates[0]:.0f} | {rates[1]:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
