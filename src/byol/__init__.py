"""byol: BYOL self-supervised pretraining and mmselfsup's evaluation suite.

The pieces of the algorithm, importable from the top::

    from byol import BYOL, build_backbone, BYOLAugment, LARS, tau_schedule, regression_loss
    from byol import warmup_cosine, Trainer, load_checkpoint

A whole workflow from Python, as the commands run it::

    byol.pretrain(data="my_images/", out="runs/mine")      # byol pretrain --data ...
    byol.embed("runs/mine/last.pt", "my_images/", "runs/mine/embeddings.npz")
    net = byol.load_backbone("runs/mine/last.pt", format="torchvision")

``Trainer`` (:mod:`byol.engine`) runs a whole configured pretraining; the README shows the
same loop written out with the other pieces.
"""

from ._version import __version__
from .api import load_backbone, pretrain
from .augment import BYOLAugment
from .checkpoint import load_checkpoint
from .embedding import embed
from .engine import Trainer
from .errors import ByolError
from .models import BYOL, build_backbone, regression_loss, tau_schedule
from .optim import LARS, warmup_cosine

__all__ = [
    "__version__",
    "BYOL",
    "LARS",
    "BYOLAugment",
    "ByolError",
    "Trainer",
    "build_backbone",
    "embed",
    "load_backbone",
    "load_checkpoint",
    "pretrain",
    "regression_loss",
    "tau_schedule",
    "warmup_cosine",
]
