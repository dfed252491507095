"""BYOL pretraining throughput: this library against the loops users write with its peers.

Runs, one after another in this one process and on the same network (``byol.models``'s backbone
with the same arch / width / stem, 3-channel input, the same projector and predictor sizes),
batch and image size (precision and memory format: see the setups below):

  byol (ours)     ``byol bench`` (``byol.bench.run_bench``) in modes augment and data, synthetic
                  source
  lightly         lightly's BYOL example: DataLoader + BYOLTransform (benchmarks/peers.py)
  byol-pytorch    lucidrains' BYOL learner with its on-device default augmentation

and prints a Markdown table (library / mode / setup / images/s / ours(augment) over this row /
peak memory) under the command line, date and machine.

The peers run in one or both of two setups (``--peer-setup``):

  documented      as their documentation runs them: float32, default (NCHW) memory format. This
                  is what a user who follows their examples gets.
  matched         our precision and memory format (bf16 autocast where it is fast, channels_last):
                  the same arithmetic as ours, so the ratio is what each library's own machinery
                  (data path, augmentation, optimiser, EMA) costs.

examples:
  python benchmarks/throughput.py --tiny --device cpu
  python benchmarks/throughput.py --arch resnet18 --small-stem --image-size 32 --batch 256 \\
      --steps 20 --device cpu --peers lightly,byol-pytorch --markdown docs/bench_cpu.md
  python benchmarks/throughput.py --arch resnet50 --image-size 224 --batch 128 --device cuda \\
      --with-model --json bench_gpu.json
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import sys
import tempfile
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402  (benchmarks/ is not a package)

from byol.bench import BenchResult, run_bench  # noqa: E402
from byol.cli.bench import add_arguments  # noqa: E402

PEERS = {"lightly": "lightly", "byol-pytorch": "byol_pytorch"}  # name -> module
ALIASES = {"byol_pytorch": "byol-pytorch", "byol-pytorch": "byol-pytorch", "lightly": "lightly"}
OURS = "byol (ours)"

DEFAULTS = dict(arch="resnet18", width=64, small_stem=False, image_size=32, batch=256, steps=20,
                warmup=5, num_workers=None, proj_hidden_dim=4096)
TINY = dict(arch="resnet18", width=8, small_stem=True, image_size=16, batch=8, steps=2, warmup=1,
            num_workers=0)

NOTES = {
    (OURS, "augment"): "uint8 images on the device, per-sample BYOL augmentation there; LARS; "
                       "EMA tau cosine 0.99->1",
    (OURS, "data"): "the engine's own feeder over the synthetic source (in memory), same "
                    "augmentation and step",
    (OURS, "model"): "one batch of views reused: forward, backward, LARS, EMA only",
    ("lightly", "data"): "lightly's BYOL example: DataLoader + BYOLTransform, SGD",
    ("lightly", "model"): "lightly's BYOL example, one batch of views reused",
    ("byol-pytorch", "augment"): "byol-pytorch's BYOL learner, DEFAULT_AUG on the device, Adam",
    ("byol-pytorch", "model"): "byol-pytorch's BYOL learner, one augmented batch reused",
}


# ----------------------------------------------------------------------------------------------
# arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/throughput.py",
        description="BYOL pretraining images/s: byol against lightly and byol-pytorch.",
        epilog=__doc__[__doc__.index("examples:"):],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bool_arg = lambda s: s.lower() in ("1", "true", "yes", "on")  # noqa: E731
    p.add_argument("--arch", help="ResNet name (default resnet18)")
    p.add_argument("--width", type=int, help="first-stage channels (default 64)")
    p.add_argument("--small-stem", dest="small_stem", action="store_true", default=None,
                   help="3x3 stride-1 stem, no max-pool (28-64 px images)")
    p.add_argument("--image-size", dest="image_size", type=int, help="default 32")
    p.add_argument("--batch", type=int, help="images per step (default 256)")
    p.add_argument("--steps", type=int, help="timed steps per row (default 20)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 5)")
    p.add_argument("--proj-hidden-dim", dest="proj_hidden_dim", type=int,
                   help="projector and predictor hidden width (default 4096)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="every row (auto: bf16 on CUDA, fp32 on CPUs without fast bf16)")
    p.add_argument("--channels-last", dest="channels_last", type=bool_arg, default=None,
                   help="every row (default: on, as ours)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile our rows (the peers run eagerly, as their docs do)")
    p.add_argument("--peer-setup", dest="peer_setup", default="both",
                   choices=("documented", "matched", "both"),
                   help="peers as documented (fp32, NCHW), with our precision and memory "
                        "format, or both (default)")
    p.add_argument("--peers", default="lightly,byol-pytorch",
                   help="comma-separated: lightly, byol-pytorch ('' for ours only)")
    p.add_argument("--num-workers", dest="num_workers", type=int,
                   help="lightly's DataLoader workers (default: all cores)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for every row (default: all cores)")
    p.add_argument("--with-model", dest="with_model", action="store_true",
                   help="also the model-only rows (one batch of views reused) of every library")
    p.add_argument("--tiny", action="store_true",
                   help="resnet18 width 8, 16 px, batch 8, 2 steps after 1 warmup, no workers: "
                        "a seconds-long smoke run (explicit flags still win)")
    p.add_argument("--out", default="", help="scratch folder for our runs (default: a temp dir)")
    p.add_argument("--markdown", help="also write the report here")
    p.add_argument("--json", help="write settings, machine and rows as JSON here")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    base = TINY if args.tiny else DEFAULTS
    for key, default in {**DEFAULTS, **base}.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    args.small_stem = bool(args.small_stem)
    args.threads = args.threads or peers.cpu_count()
    names = []
    for raw in filter(None, (s.strip() for s in args.peers.split(","))):
        if raw not in ALIASES:
            raise SystemExit(f"throughput: unknown peer {raw!r}; choose from {', '.join(PEERS)}")
        names.append(ALIASES[raw])
    for name in names:
        if importlib.util.find_spec(PEERS[name]) is None:
            raise SystemExit(f"throughput: {name} is not installed (pip install {name}); "
                             "install it or leave it out of --peers")
    args.peer_names = list(dict.fromkeys(names))
    return args


# ----------------------------------------------------------------------------------------------
# rows


@dataclasses.dataclass
class Row:
    library: str
    mode: str
    result: BenchResult | None
    notes: str
    error: str = ""
    setup: str = "defaults"

    @property
    def ips(self) -> float | None:
        return self.result.images_per_s if self.result else None


def ours_args(args: argparse.Namespace, mode: str, out: str) -> argparse.Namespace:
    argv = [
        "--mode", mode, "--arch", args.arch, "--width", str(args.width), "--in-chans", "3",
        "--image-size", str(args.image_size), "--batch", str(args.batch),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
        "--precision", args.precision, "--source", "synthetic", "--out", out,
        "--set", f"train.threads={args.threads}",
    ]
    if args.small_stem:
        argv.append("--small-stem")
    if args.channels_last is not None:
        argv += ["--channels-last", str(args.channels_last)]
    argv += ["--proj-hidden-dim", str(args.proj_hidden_dim)]
    if args.compile:
        argv.append("--compile")
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)


def spec_of(args: argparse.Namespace, setup: str = "matched") -> peers.LoopSpec:
    """The peers' loop settings: ``matched`` shares our precision and memory format,
    ``documented`` is what their examples run (float32, NCHW)."""
    documented = setup == "documented"
    return peers.LoopSpec(
        arch=args.arch, width=args.width, small_stem=args.small_stem, in_chans=3,
        image_size=args.image_size, batch=args.batch, steps=args.steps, warmup=args.warmup,
        device=args.device, precision="fp32" if documented else args.precision,
        channels_last=False if documented else args.channels_last,
        proj_hidden_dim=args.proj_hidden_dim,
    )


def peer_setups(args: argparse.Namespace) -> tuple[str, ...]:
    return ("documented", "matched") if args.peer_setup == "both" else (args.peer_setup,)


def plan(args: argparse.Namespace, out: str) -> list[tuple[str, str, str, object]]:
    """(library, mode, setup, thunk) in the order they run: documented peers first, then ours,
    then matched peers. Our engine tunes the process's allocator on CPU when it starts
    (``byol.runtime.keep_freed_memory``), which lasts for the process: documented rows run
    before it, as their users would run them, and matched rows after it, on the same footing."""
    ours = [(OURS, mode, "defaults", lambda m=mode: run_bench(ours_args(args, m, out)))
            for mode in ("augment", "data") + (("model",) if args.with_model else ())]
    extra = ("model",) if args.with_model else ()
    by_setup: dict[str, list[tuple[str, str, str, object]]] = {}
    for setup in peer_setups(args):
        spec, rows = spec_of(args, setup), by_setup.setdefault(setup, [])
        if "lightly" in args.peer_names:
            rows += [("lightly", mode, setup, lambda m=mode, s=spec: peers.lightly_loop(
                s, mode=m, num_workers=args.num_workers)) for mode in ("data", *extra)]
        if "byol-pytorch" in args.peer_names:
            rows += [("byol-pytorch", mode, setup, lambda m=mode, s=spec: peers.byol_pytorch_loop(
                s, mode=m)) for mode in ("augment", *extra)]
    return by_setup.get("documented", []) + ours + by_setup.get("matched", [])


def _release_memory() -> None:
    """Free what earlier rows left behind, so each row's peak is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:  # hand freed heap back to the OS (glibc), so the next RSS peak starts low
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_row(library: str, mode: str, thunk, args: argparse.Namespace,
            setup: str = "defaults") -> Row:
    _release_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    on_cpu = peers.resolve_device(args.device).type == "cpu"
    reset = peers.reset_peak_rss()
    print(f"throughput: {library} / {mode} / {setup} ...", file=sys.stderr, flush=True)
    try:
        res = thunk()
    except (Exception, SystemExit) as e:  # one failing row must not lose the others
        traceback.print_exc()
        return Row(library, mode, None, NOTES.get((library, mode), ""),
                   f"{type(e).__name__}: {e}", setup)
    if on_cpu and reset:  # every row's peak from its own start, whoever measured it
        res.peak_mem_gib = peers.peak_rss_gib()
    notes = getattr(res, "notes", "") or NOTES.get((library, mode), "")
    print(f"throughput: {library} / {mode} / {setup}: {res.images_per_s:,.1f} images/s",
          file=sys.stderr, flush=True)
    return Row(library, mode, res, notes, setup=setup)


# ----------------------------------------------------------------------------------------------
# report


def machine_info(args: argparse.Namespace) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for dist in ("byol", "torch", "torchvision", "lightly", "byol-pytorch"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    gpu = None
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return {
        "cpu": cpu,
        "cores": peers.cpu_count(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": args.threads,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "gpu": gpu,
        "versions": versions,
    }


def _fmt_ips(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def report(args: argparse.Namespace, rows: list[Row], command: str, date: str,
           machine: dict) -> str:
    ref = next((r.ips for r in rows if r.library == OURS and r.mode == "augment" and r.ips), None)
    first = next((r.result for r in rows if r.result), None)
    v = machine["versions"]
    lines = [
        "# BYOL pretraining throughput",
        "",
        f"- command: `{command}`",
        f"- date: {date}",
        f"- machine: {machine['cpu']}, {machine['cores']} cores; torch threads "
        f"{machine['torch_threads']}; GPU: {machine['gpu'] or 'none'}",
        f"- software: Python {machine['python']}, torch {v['torch']}"
        + (f" (CUDA {machine['cuda']})" if machine["cuda"] else "")
        + f", byol {v['byol']}, lightly {v['lightly'] or '-'}, byol-pytorch {v['byol-pytorch'] or '-'}",
    ]
    if first is not None:
        lines.append(
            f"- setup: {args.arch} width {args.width}{' small stem' if args.small_stem else ''}, "
            f"3 channels, {args.image_size} px, batch {args.batch}, projector/predictor "
            f"{args.proj_hidden_dim} -> 256, device {first.device}; {args.steps} timed steps "
            f"after {args.warmup} warmup"
        )
    lines += [
        "",
        "| library | mode | setup | precision, memory format | images/s "
        "| ratio ours(augment)/this | peak memory |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        if r.result is None:
            lines.append(f"| {r.library} | {r.mode} | {r.setup} | - | failed | - | - |")
            continue
        ratio = f"{ref / r.ips:.2f}" if ref and r.ips else "-"
        fmt = "channels_last" if r.result.channels_last else "NCHW"
        lines.append(f"| {r.library} | {r.mode} | {r.setup} | {r.result.precision}, {fmt} | "
                     f"{_fmt_ips(r.ips)} | {ratio} | {r.result.peak_mem_gib:.2f} GiB |")
    lines += ["", "Rows:", ""]
    for r in rows:
        extra = f" **failed: {r.error}**" if r.error else ""
        lines.append(f"- {r.library} / {r.mode} / {r.setup}: {r.notes}{extra}")
    lines += [
        "",
        "Peak memory: on CUDA the allocator's peak over the timed steps; on CPU the benchmark "
        "process's peak resident memory since the row began (DataLoader workers not counted).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = resolve(build_parser().parse_args(argv))
    command = "python benchmarks/throughput.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="byol-throughput-") as tmp:
        out = args.out or tmp
        for library, mode, setup, thunk in plan(args, out):
            rows.append(run_row(library, mode, thunk, args, setup))
    machine = machine_info(args)
    text = report(args, rows, command, date, machine)
    print(text, end="")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    if args.json:
        ref = next((r.ips for r in rows if r.library == OURS and r.mode == "augment" and r.ips),
                   None)
        payload = {
            "command": command,
            "date": date,
            "machine": machine,
            "settings": {k: getattr(args, k) for k in (*DEFAULTS, "device", "precision",
                                                        "channels_last", "compile", "threads",
                                                        "peer_setup",
                                                        "peer_names", "tiny", "with_model")},
            "rows": [
                {"library": r.library, "mode": r.mode, "setup": r.setup, "notes": r.notes,
                 "error": r.error or None,
                 "ratio_ours_augment": (ref / r.ips) if ref and r.ips else None,
                 **(dataclasses.asdict(r.result) if r.result else {})}
                for r in rows
            ],
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
