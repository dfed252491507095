"""Evaluation settings as typed objects, read by the suite and by the argument parser.

One dataclass per protocol (:class:`KnnSettings`, :class:`LinearSettings`, ...), gathered in
:class:`EvalSettings`; what to evaluate (:class:`ModelChoice`), on which data
(:class:`DataChoice`) and how to run (:class:`RunSettings`). Each protocol field carries its
command-line flag and help in ``metadata["flag"]`` so that ``byol eval PROTOCOL`` and ``byol
eval all`` (where the flags get a ``PROTOCOL-`` prefix) are generated from these classes and
cannot drift from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import EvalError

PROTOCOL_ORDER = ("knn", "linear", "mhead", "svm", "lowshot", "finetune")
# the native image side of each known source (a baseline without a checkpoint evaluates there)
NATIVE_SIZE = {"fashion_mnist": 28, "mnist": 28, "cifar10": 32, "cifar100": 32, "stl10": 96,
               "synthetic": 32}


def floats(text: str) -> list[float]:
    """``'0.01,0.1 1'`` -> ``[0.01, 0.1, 1.0]``."""
    return [float(v) for v in text.replace(",", " ").split()]


def opt(flag: str, default: Any = None, *, alone_only: bool = False, **argparse_kw: Any):
    """A settings field with its command-line flag (``--FLAG``, ``--PROTOCOL-FLAG`` in ``byol
    eval all``; ``alone_only``: the flag exists on the single-protocol command only)."""
    meta = {"flag": flag, "alone_only": alone_only, "argparse": argparse_kw}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def parse_costs(text: str | tuple[float, ...] | None) -> tuple[float, ...]:
    """``full`` (the protocol's 19 costs), ``fast`` (4) or a comma list such as ``0.1,1,10``."""
    from .svm import DEFAULT_COSTS, FAST_COSTS

    if isinstance(text, tuple):
        return text
    if text in (None, "", "full"):
        return DEFAULT_COSTS
    if text == "fast":
        return FAST_COSTS
    try:
        vals = tuple(floats(text))
    except ValueError:
        vals = ()
    if not vals or any(v <= 0 for v in vals):
        raise EvalError(f"--costs {text!r}: use full, fast or positive numbers like 0.1,1,10")
    return vals


# ---------------------------------------------------------------------------------------------
# the protocols


@dataclass
class KnnSettings:
    ks: tuple[int, ...] = opt("ks", (10, 20, 100, 200), type=int, nargs="+",
                              help="neighbour counts (default 10 20 100 200)")
    temperature: float = opt("temperature", 0.07, type=float,
                             help="vote weight exp(sim / T) (default 0.07)")
    tsne: str | None = opt("tsne", None, alone_only=True, metavar="PNG",
                           help="also plot a t-SNE of test features")


@dataclass
class LinearSettings:
    mode: str = opt("mode", "features", choices=("features", "augmented"),
                    help="features: cached features + lr sweep (fast); augmented: mmselfsup's "
                    "RandomResizedCrop protocol")
    epochs: int | None = opt("epochs", None, type=int,
                             help="default 50 (features) / 90 (augmented)")
    lrs: tuple[float, ...] | None = opt("lrs", None, type=floats,
                                        help="lr sweep for --mode features, e.g. '0.01,0.1,1' "
                                        "(3+ lrs: a best lr at an end goes on up to 2 "
                                        "more in the grid's pattern)")
    optimizer: str = opt("optimizer", "lars", choices=("lars", "sgd"),
                         help="augmented: LARS (mmselfsup) or SGD Nesterov (DeepMind)")
    lr: float | None = opt("lr", None, type=float,
                           help="augmented: lr (default LARS 1.6 per 4096, SGD 0.2 per 256 "
                           "images)")
    batch_size: int | None = opt("train-batch-size", None, type=int,
                                 help="default 1024 (features) / 256 (augmented)")
    flip: bool = opt("flip", False, action="store_true",
                     help="features: also train on the mirrored training images (the paper's "
                     "flip augmentation; held-out and test images are read as they are)")


@dataclass
class MheadSettings:
    mode: str = opt("mode", "features", choices=("features", "augmented"),
                    help="cached features or mmselfsup's augmented protocol")
    layers: tuple[str, ...] = opt("layers", ("all",), nargs="+",
                                  help="feature1..feature5 or all")
    epochs: int = opt("epochs", 90, type=int)
    lr: float = opt("lr", 0.01, type=float)
    milestones: tuple[int, ...] | None = opt("milestones", None, type=int, nargs="+",
                                             help="epochs of the x0.1 steps (default: 1/3 and "
                                             "2/3)")
    batch_size: int = opt("train-batch-size", 256, type=int)
    train_cap: int = opt("train-cap", 0, type=int,
                         help="class-balanced subset of N training samples (0: all)")


@dataclass
class SvmSettings:
    layers: tuple[str, ...] = opt("layers", ("feature5",), nargs="+",
                                  help="pooled, feature1..feature5 or all (the best one is "
                                  "reported)")
    costs: str = opt("costs", "full",
                     help="full (the protocol's 19), fast (4) or a list like 0.1,1,10")
    train_cap: int = opt("train-cap", 0, type=int,
                         help="class-balanced subset of N training samples (0: all)")
    folds: int = opt("folds", 3, type=int)


@dataclass
class LowshotSettings:
    layer: str = opt("layer", "feature5")
    ks: tuple[int, ...] | None = opt("ks", None, type=int, nargs="+",
                                     help="positives per class (default 1 2 4 8 16 32 64 96)")
    draws: int = opt("draws", 5, type=int)
    costs: str = opt("costs", "full", help="full, fast or a list like 0.1,1,10")
    negatives: str = opt("negatives", "protocol",
                         help="protocol ((C-1)*k per class), all, or a number")
    # in `byol eval all` the SVM's --svm-train-cap applies (see EvalSettings.__post_init__)
    train_cap: int = opt("train-cap", 0, alone_only=True, type=int,
                         help="class-balanced subset of N training samples to draw from")

    def negatives_value(self) -> str | int:
        neg = self.negatives
        return int(neg) if isinstance(neg, str) and neg.isdigit() else neg


@dataclass
class FinetuneSettings:
    fractions: tuple[float, ...] = opt("fractions", (1, 10, 100), type=float, nargs="+",
                                       help="label percentages (default 1 10 100)")
    epochs: tuple[int, ...] = opt("epochs", (30,), type=int, nargs="+",
                                  help="one number, or one per fraction")
    lr: float | None = opt("lr", None, type=float, help="default 0.05 per 256 images")
    weight_decay: float = opt("wd", 0.0, type=float)
    head_lr_mult: float = opt("head-lr-mult", 1.0, type=float)
    batch_size: int = opt("train-batch-size", 256, type=int)
    min_steps: int = opt("min-steps", 0, type=int,
                         help="raise the epochs of small fractions to at least N optimizer steps")


PROTOCOL_SETTINGS: dict[str, type] = {
    "knn": KnnSettings, "linear": LinearSettings, "mhead": MheadSettings, "svm": SvmSettings,
    "lowshot": LowshotSettings, "finetune": FinetuneSettings,
}


@dataclass
class EvalSettings:
    """Every protocol's settings; ``byol eval all`` and :meth:`Evaluator.run` read this."""

    knn: KnnSettings = field(default_factory=KnnSettings)
    linear: LinearSettings = field(default_factory=LinearSettings)
    mhead: MheadSettings = field(default_factory=MheadSettings)
    svm: SvmSettings = field(default_factory=SvmSettings)
    lowshot: LowshotSettings = field(default_factory=LowshotSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    def feature_layers(self) -> list[str]:
        """The layers the SVM protocols read (what :meth:`Evaluator.prefetch` extracts)."""
        return list(self.svm.layers) + [self.lowshot.layer]


# ---------------------------------------------------------------------------------------------
# what, on what, how


@dataclass
class ModelChoice:
    """A checkpoint, a baseline, or both (a baseline of the checkpoint's architecture)."""

    checkpoint: str | None = None
    which: str = "online"
    baseline: str | None = None
    arch: str | None = None
    in_chans: int | None = None
    small_stem: bool | None = None
    width: int | None = None
    seed: int | None = None  # None: see load_eval_model (random init) / 0 (protocols)
    label: str | None = None
    trust: bool = False


@dataclass
class DataChoice:
    """``data`` is ``SOURCE:PATH`` (or a bare source); ``source`` / ``data_path`` spell the same
    separately; nothing given means the checkpoint's own data."""

    data: str | None = None
    source: str | None = None
    data_path: str | None = None
    train_split: str = "train"
    test_split: str | None = None
    # a separate test set: PATH (read like the training data) or SOURCE:PATH; without it the
    # test split of the training data (or the checkpoint's data.val_path)
    test_data: str | None = None
    # score the training images against themselves when no separate test set exists (inflated
    # numbers; refused unless asked for by this name)
    test_on_train: bool = False
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    limit: int = 0
    test_limit: int | None = None
    synthetic_size: int = 1024
    voc07: str | None = None

    def source_and_path(self) -> tuple[str, str] | None:
        return parse_data(self.data, self.source, self.data_path)

    def test_source_and_path(self, train_source: str) -> tuple[str, str] | None:
        """``--test-data``: ``SOURCE:PATH``, or a PATH read by the training data's reader."""
        return parse_test_data(self.test_data, train_source)


@dataclass
class RunSettings:
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 256  # feature extraction
    workers: int | None = None
    cache_dir: str | None = None
    quiet: bool = False
    n_jobs: int = 1  # parallel SVM fits


def parse_test_data(spec: str | None, train_source: str) -> tuple[str, str] | None:
    """``--test-data PATH`` (the training data's reader) or ``--test-data SOURCE:PATH``."""
    from ..config import CHOICES

    if not spec:
        return None
    head, _, rest = spec.partition(":")
    if rest and head in CHOICES["data.source"]:
        return head, rest
    return train_source, spec


def parse_data(spec: str | None, source: str | None, path: str | None) -> tuple[str, str] | None:
    """``--data SOURCE:PATH`` (or a bare source name) / ``--source`` + ``--data-path``."""
    from ..config import CHOICES

    sources = CHOICES["data.source"]
    if spec:
        src, p = spec.split(":", 1) if ":" in spec else (spec, "")
        if src not in sources:
            raise EvalError(f"--data {spec!r}: write SOURCE:PATH (e.g. folder:/data/imagenet, "
                            f"fashion_mnist:); sources: {', '.join(sources)}")
        return src, p or (path or "")
    if source:
        if source not in sources:
            raise EvalError(f"--source {source!r}: choose one of {', '.join(sources)}")
        return source, path or ""
    if path:
        return "folder", path
    return None
