"""The ``byol`` command line (``byol = "byol.cli:main"``); the library never imports it."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
