"""``byol``: the command line. Each command parses its arguments and calls the library.

:func:`build_parser` gathers the commands of :mod:`.pretrain` (pretrain, config),
:mod:`.eval` (eval, export, import, report), :mod:`.transfer` and :mod:`.bench`; :func:`main`
runs the chosen one through :func:`byol.cli.common.guarded`, the one error wrapper.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, embed, eval, pretrain, transfer
from .common import EXIT_BAD_INPUT, guarded, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byol",
        description="BYOL self-supervised pretraining and mmselfsup's evaluation suite.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `byol COMMAND --help` for each command's options and examples.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (pretrain, eval, embed, transfer, bench):
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    setup_logging(False)
    return guarded(args.error_name, args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
