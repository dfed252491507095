"""What every ``byol`` command shares: the one error wrapper, logging, the model arguments
and writing result records.

Bad input ends with one line naming the file or key and the fix, exit code 2, and no
traceback (``--debug`` shows it): every :class:`byol.errors.ByolError`, a missing file and an
environment failure (full disk, read-only folder) are reported that way by :func:`guarded`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ByolError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
RAW = argparse.RawDescriptionHelpFormatter


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )


def one_line(e: BaseException) -> str:
    """The message of a known error; one re-raised from a DataLoader worker carries the worker's
    traceback text, of which only the last line (the original message) is kept."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = msg.strip().splitlines()[-1]
        msg = last.split(": ", 1)[1] if ": " in last else last
    return msg


def guarded(name: str, fn: Callable[[argparse.Namespace], int | None],
            args: argparse.Namespace) -> int:
    """Run ``fn(args)``; known errors become ``NAME: error: MESSAGE`` on stderr and exit code 2
    (re-raised with ``--debug``), Ctrl-C exit code 130."""
    debug = getattr(args, "debug", False)
    try:
        return int(fn(args) or 0)
    except ByolError as e:
        if debug:
            raise
        print(f"{name}: error: {one_line(e)}", file=sys.stderr)
    except FileNotFoundError as e:
        if debug:
            raise
        print(f"{name}: error: {e.filename or e}: no such file or folder", file=sys.stderr)
    except OSError as e:  # full disk, read-only or vanished folders: the environment, not a bug
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"{name}: error: {where}{e.strerror or e} (run again with --debug for the "
              "traceback)", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT


def command(parser: argparse.ArgumentParser, fn: Callable[[argparse.Namespace], int | None],
            name: str = "byol") -> None:
    """Make ``fn`` the parser's command; its errors are reported as ``NAME: error: ...``."""
    parser.set_defaults(func=fn, error_name=name)


def help_command(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A command that prints ``parser``'s help and exits 2 (a group called without an action)."""

    def show(args: argparse.Namespace) -> int:  # noqa: ARG001
        parser.print_help()
        return EXIT_BAD_INPUT

    return show


def model_args(p: argparse.ArgumentParser, *, verb: str, baselines: tuple[str, ...],
               in_chans_default: str, label_default: str) -> argparse._ArgumentGroup:
    """The model arguments of ``byol eval`` and ``byol transfer``: a checkpoint, or a baseline
    (``verb``: what the command does with it, e.g. ``evaluate``)."""
    g = p.add_argument_group("model (a checkpoint, or a baseline)")
    g.add_argument("--checkpoint", "-c", metavar="PATH",
                   help="byol checkpoint (mmselfsup/torchvision weights also load)")
    g.add_argument("--which", choices=("online", "target"), default="online",
                   help=f"{verb} the online encoder (default) or its EMA target")
    described = {"random": "a random-init backbone (the checkpoint's architecture when "
                 "--checkpoint is given too)", "pixels": "raw pixels",
                 "torchvision": "torchvision's supervised weights (local cache)"}
    g.add_argument("--baseline", choices=baselines,
                   help=f"{verb} " + ", ".join(described[b] for b in baselines))
    g.add_argument("--arch", help="baseline architecture without a checkpoint (default resnet50)")
    g.add_argument("--in-chans", type=int, help=f"baseline input channels (default "
                   f"{in_chans_default})")
    g.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None,
                   help="baseline uses the 3x3 stride-1 stem without max-pool")
    g.add_argument("--width", type=int, help="baseline first-stage width (default 64)")
    g.add_argument("--seed", type=int, default=None,
                   help="seed of the random init (default: the checkpoint's training seed, so "
                   "--baseline random is that network before training; 0 without a "
                   "checkpoint) and of the protocols' draws (default 0)")
    g.add_argument("--label", help=f"row name in reports (default {label_default})")
    g.add_argument("--trust", action="store_true",
                   help="allow full unpickling of a foreign checkpoint you trust")
    return g


def from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """An instance of the dataclass ``cls`` from the arguments named like its fields."""
    import dataclasses

    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**kw, **fixed})


def write_records(args: argparse.Namespace, records: list[dict[str, Any]]) -> None:
    """``--json PATH`` (one record, or ``{"records": [...]}``) and ``--out-dir DIR``
    (``<protocol>_<model>.json`` each, what ``byol report`` gathers)."""
    from ..eval.report import write_json

    if getattr(args, "json", None):
        write_json(records[0] if len(records) == 1 else {"records": records}, args.json)
    if getattr(args, "out_dir", None):
        for rec in records:
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in rec["model"])
            write_json(rec, Path(args.out_dir) / f"{rec['protocol']}_{safe}.json")
