"""``torchrun tests/ddp_budget_driver.py pretrain ...``: ``byol`` with the time budget's rate
reads fixed (1 step/s with 2 s spent at the first probe, 0.5 step/s with 100 s spent at the
re-check), so that a distributed test sees the same step counts on any machine's speed. Every
process patches the same way; only rank 0's reading decides (it is broadcast)."""

from __future__ import annotations

import sys

from byol.cli import main
from byol.engine import Trainer

READINGS = [(1.0, 2.0), (0.5, 100.0)]


def _inputs(self):
    return READINGS[0] if not self.budget_fixed else READINGS[1]


Trainer._budget_inputs = _inputs

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
