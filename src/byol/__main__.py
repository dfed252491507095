"""``python -m byol`` (also what ``torchrun -m byol pretrain ...`` runs)."""

import sys

from .cli import main

sys.exit(main())
