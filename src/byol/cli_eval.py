"""``byol eval knn|linear|mhead|svm|lowshot|finetune|all``, ``byol export``, ``byol import``,
``byol report``: the evaluation half of the command line.

:func:`add_commands` registers the subcommands on the main parser's subparsers (cli.py calls
it). :class:`Evaluator` runs the protocols for one model on one dataset and is also what
``benchmarks/fmnist_suite.py`` drives, so the CLI and the benchmark compute numbers the same
way. Every result is an evaluation record (:mod:`byol.eval.report`) printed as one line,
written with ``--json`` and/or into ``--out-dir`` for ``byol report``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("byol.eval")

EXIT_BAD_INPUT = 2
PROTOCOL_ORDER = ("knn", "linear", "mhead", "svm", "lowshot", "finetune")
NATIVE_SIZE = {"fashion_mnist": 28, "mnist": 28, "cifar10": 32, "cifar100": 32, "stl10": 96,
               "synthetic": 32}


# ---------------------------------------------------------------------------------------------
# the protocols for one model


class Evaluator:
    """One model (:class:`byol.eval.features.EvalModel`) on one labelled train/test pair.

    Features are computed once per (split, layer) and shared by the protocols (and cached on
    disk under ``cache_dir``). Multi-label data (VOC07) passes ``targets=(train, test)`` in
    VOC's -1/0/1 encoding; then only the SVM protocols apply.
    """

    def __init__(
        self,
        model: Any,
        train: Any,
        test: Any,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 256,
        cache_dir: str | None = None,
        num_workers: int | None = None,
        progress: bool = True,
        data_info: dict[str, Any] | None = None,
        targets: tuple[Any, Any] | None = None,
        resize_ratio: float = 256 / 224,
        seed: int = 0,
        label: str | None = None,
    ) -> None:
        from .eval.features import resolve_device

        self.model = model
        self.train, self.test = train, test
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.num_workers = num_workers
        self.progress = progress
        self.data_info = data_info or {}
        self.targets = targets
        self.resize_ratio = resize_ratio
        self.seed = seed
        self.label = label or model.label
        self._feats: dict[tuple[str, str], torch.Tensor] = {}

    # -- helpers -------------------------------------------------------------------------------

    @property
    def has_stages(self) -> bool:
        from .eval.features import PixelBackbone

        return not isinstance(self.model.backbone, PixelBackbone) and hasattr(
            self.model.backbone, "forward_stages")

    def labels(self, split: str) -> torch.Tensor:
        from .eval.features import source_labels

        return source_labels(self.train if split == "train" else self.test)

    def features(self, split: str, names: Sequence[str]) -> dict[str, torch.Tensor]:
        from .eval.features import cached_features

        src = self.train if split == "train" else self.test
        todo = [n for n in names if (split, n) not in self._feats]
        if todo:
            feats = cached_features(
                self.model, src, names=todo, cache_dir=self.cache_dir,
                batch_size=self.batch_size, device=self.device, precision=self.precision,
                progress=self.progress, resize_ratio=self.resize_ratio,
                num_workers=self.num_workers)
            for n, v in feats.items():
                self._feats[(split, n)] = v
        return {n: self._feats[(split, n)] for n in names}

    def _record(self, protocol: str, results: dict, settings: dict, t0: float) -> dict:
        from .eval.report import make_record

        return make_record(protocol, self.label, results, checkpoint=self.model.checkpoint,
                           arch=self.model.arch, data=self.data_info,
                           settings={"image_size": self.model.image_size, **settings},
                           wall_s=time.perf_counter() - t0)

    def _need_labels(self, what: str) -> None:
        if self.targets is not None:
            from .eval.features import EvalError

            raise EvalError(f"{what} needs single-label data; VOC07 supports svm and lowshot only")

    def _layers(self, layers: Sequence[str]) -> list[str]:
        from .eval.features import ALL_NAMES, FEATURE_NAMES, EvalError

        out = []
        for layer in layers:
            out += list(FEATURE_NAMES) if layer == "all" else [layer]
        bad = [n for n in out if n not in ALL_NAMES]
        if bad:
            raise EvalError(f"--layers {' '.join(bad)}: use pooled, feature1..feature5 or all")
        if not self.has_stages:
            out = ["pooled"]  # raw pixels / backbones without stage taps
        return list(dict.fromkeys(out))

    def _cap(self, labels: torch.Tensor, cap: int) -> torch.Tensor:
        from .eval.finetune import balanced_subset

        if not cap or cap >= len(labels):
            return torch.arange(len(labels))
        return balanced_subset(labels, cap / len(labels), self.seed)

    def prefetch(self, protocols: Sequence[str], layers: Sequence[str] = ()) -> None:
        """Extract every layer the protocols will need in one pass per split (a ResNet forward
        gives the pooled output and all stage maps at once)."""
        names: list[str] = []
        if self.targets is None and any(p in protocols for p in ("knn", "linear")):
            names.append("pooled")
        if self.has_stages and self.targets is None and "mhead" in protocols:
            names += list(self._layers(["all"]))
        if any(p in protocols for p in ("svm", "lowshot")):
            names += self._layers(layers or ["feature5"])
        names = list(dict.fromkeys(names))
        if names:
            self.features("train", names)
            self.features("test", names)

    # -- protocols -----------------------------------------------------------------------------

    def knn(self, ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07,
            tsne: str | None = None) -> dict:
        from .eval.knn import knn_classify

        self._need_labels("kNN")
        t0 = time.perf_counter()
        ftr = self.features("train", ["pooled"])["pooled"]
        fte = self.features("test", ["pooled"])["pooled"]
        res = knn_classify(ftr, self.labels("train"), fte, self.labels("test"), ks=ks,
                           temperature=temperature)
        if tsne:
            from .eval.plots import plot_tsne

            plot_tsne(fte, self.labels("test"), tsne,
                      classes=getattr(self.test, "classes", None), seed=self.seed,
                      title=f"t-SNE of test features: {self.label}")
        return self._record("knn", res, {"ks": list(ks), "temperature": temperature}, t0)

    def linear(self, lrs: Sequence[float] | None = None, epochs: int = 50,
               batch_size: int = 1024, weight_decay: float = 0.0) -> dict:
        from .eval.linear import DEFAULT_LRS, linear_probe_features

        self._need_labels("the linear probe")
        t0 = time.perf_counter()
        res = linear_probe_features(
            self.features("train", ["pooled"])["pooled"], self.labels("train"),
            self.features("test", ["pooled"])["pooled"], self.labels("test"),
            lrs=tuple(lrs or DEFAULT_LRS), epochs=epochs, batch_size=batch_size,
            seed=self.seed, weight_decay=weight_decay, device=self.device)
        return self._record("linear", res, {"mode": "features", "epochs": epochs,
                                            "batch_size": batch_size}, t0)

    def linear_aug(self, epochs: int = 90, batch_size: int = 256, optimizer: str = "lars",
                   lr: float | None = None) -> dict:
        from .eval.features import EvalError
        from .eval.linear import linear_probe_augmented

        self._need_labels("the linear probe")
        if not self.has_stages and not getattr(self.model.backbone, "num_features", 0):
            raise EvalError("the augmented probe needs a network; use --mode features for pixels")
        t0 = time.perf_counter()
        m = self.model
        res = linear_probe_augmented(
            m.backbone, self.train, self.test, image_size=m.image_size, mean=m.mean, std=m.std,
            epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, seed=self.seed,
            device=self.device, precision=self.precision, num_workers=self.num_workers,
            progress=self.progress)
        return self._record("linear_aug", res, {"mode": "augmented", "epochs": epochs,
                                                "optimizer": optimizer}, t0)

    def mhead(self, layers: Sequence[str] = ("all",), epochs: int = 90, batch_size: int = 256,
              lr: float = 0.01, milestones: Sequence[int] | None = None, train_cap: int = 0,
              augmented: bool = False) -> dict:
        from .eval.features import EvalError
        from .eval.linear import multihead_probe, multihead_probe_augmented, stage_channels

        self._need_labels("the multi-head probe")
        if not self.has_stages:
            raise EvalError(f"{self.label} has no stage features: multi-head does not apply")
        names = [n for n in self._layers(layers) if n != "pooled"]
        t0 = time.perf_counter()
        if augmented:
            m = self.model
            res = multihead_probe_augmented(
                m.backbone, self.train, self.test, image_size=m.image_size, mean=m.mean,
                std=m.std, names=names, epochs=epochs, batch_size=batch_size, lr=lr,
                milestones=milestones, seed=self.seed, device=self.device,
                precision=self.precision, num_workers=self.num_workers, progress=self.progress)
        else:
            ytr = self.labels("train")
            idx = self._cap(ytr, train_cap)
            ftr = {k: v[idx] for k, v in self.features("train", names).items()}
            res = multihead_probe(
                ftr, ytr[idx], self.features("test", names), self.labels("test"),
                channels=stage_channels(self.model.backbone, names), epochs=epochs,
                batch_size=batch_size, lr=lr, milestones=milestones, seed=self.seed,
                device=self.device)
        return self._record("mhead", res, {"mode": "augmented" if augmented else "features",
                                           "epochs": epochs, "lr": lr,
                                           "train_cap": train_cap}, t0)

    def _svm_data(self, layer: str, train_cap: int):
        from .eval.svm import labels_to_targets

        ftr = self.features("train", [layer])[layer]
        fte = self.features("test", [layer])[layer]
        if self.targets is not None:
            ttr, tte = self.targets
            idx = torch.arange(len(ftr))
        else:
            ytr, yte = self.labels("train"), self.labels("test")
            c = int(max(int(ytr.max()), int(yte.max()))) + 1
            idx = self._cap(ytr, train_cap)
            ttr, tte = labels_to_targets(ytr, c), labels_to_targets(yte, c)
        return ftr[idx], ttr[idx.numpy()], fte, tte

    def svm(self, layers: Sequence[str] = ("feature5",), costs: Sequence[float] | None = None,
            n_jobs: int = 1, train_cap: int = 0, folds: int = 3) -> dict:
        from .eval.svm import DEFAULT_COSTS, VOC_CLASSES, svm_voc07

        t0 = time.perf_counter()
        costs = tuple(costs or DEFAULT_COSTS)
        per_layer = {}
        for layer in self._layers(layers):
            ftr, ttr, fte, tte = self._svm_data(layer, train_cap)
            classes = VOC_CLASSES if self.targets is not None else None
            per_layer[layer] = svm_voc07(ftr, ttr, fte, tte, costs=costs, folds=folds,
                                         n_jobs=n_jobs, classes=classes)
            log.info("%s SVM %s: mAP %.2f", self.label, layer, per_layer[layer]["map"])
        best = max(per_layer, key=lambda k: per_layer[k]["map"])
        res = {"layers": per_layer, "best_layer": best, "map": per_layer[best]["map"]}
        return self._record("svm", res, {"costs": list(costs), "train_cap": train_cap,
                                         "folds": folds}, t0)

    def lowshot(self, layer: str = "feature5", ks: Sequence[int] | None = None, draws: int = 5,
                costs: Sequence[float] | None = None, negatives: str | int = "protocol",
                n_jobs: int = 1, train_cap: int = 0) -> dict:
        from .eval.svm import DEFAULT_COSTS, LOWSHOT_KS, lowshot_svm

        t0 = time.perf_counter()
        layer = self._layers([layer])[0]
        ftr, ttr, fte, tte = self._svm_data(layer, train_cap)
        costs = tuple(costs or DEFAULT_COSTS)
        res = lowshot_svm(ftr, ttr, fte, tte, ks=tuple(ks or LOWSHOT_KS), num_draws=draws,
                          seed=self.seed, costs=costs, negatives=negatives, n_jobs=n_jobs)
        res["layer"] = layer
        return self._record("lowshot", res, {"costs": list(costs), "draws": draws,
                                             "negatives": negatives}, t0)

    def finetune(self, fractions: Sequence[float] = (0.01, 0.1, 1.0),
                 epochs: Sequence[int] | int = 30, batch_size: int = 256,
                 lr: float | None = None, weight_decay: float = 0.0,
                 head_lr_mult: float = 1.0, min_steps: int = 0) -> dict:
        from .eval.features import EvalError
        from .eval.finetune import finetune_fractions

        self._need_labels("fine-tuning")
        if not self.has_stages:
            raise EvalError(f"{self.label} has no trainable network: fine-tuning does not apply")
        t0 = time.perf_counter()
        m = self.model
        res = finetune_fractions(
            m.backbone, self.train, self.test, fractions=tuple(fractions), epochs=epochs,
            image_size=m.image_size, mean=m.mean, std=m.std, batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, head_lr_mult=head_lr_mult, min_steps=min_steps,
            seed=self.seed,
            device=self.device, precision=self.precision, num_workers=self.num_workers,
            progress=self.progress)
        return self._record("finetune", res, {"epochs": epochs, "batch_size": batch_size,
                                              "weight_decay": weight_decay,
                                              "min_steps": min_steps}, t0)


# ---------------------------------------------------------------------------------------------
# argument helpers


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace(",", " ").split()]


def parse_costs(text: str | None) -> tuple[float, ...] | None:
    """``full`` (the protocol's 19 costs), ``fast`` (4) or a comma list such as ``0.1,1,10``."""
    from .eval.features import EvalError
    from .eval.svm import DEFAULT_COSTS, FAST_COSTS

    if text in (None, "", "full"):
        return DEFAULT_COSTS
    if text == "fast":
        return FAST_COSTS
    try:
        vals = tuple(_floats(text))
    except ValueError:
        vals = ()
    if not vals or any(v <= 0 for v in vals):
        raise EvalError(f"--costs {text!r}: use full, fast or positive numbers like 0.1,1,10")
    return vals


def parse_data(spec: str | None, source: str | None, path: str | None) -> tuple[str, str] | None:
    """``--data SOURCE:PATH`` (or a bare source name) / ``--source`` + ``--data-path``."""
    from .data import SOURCES
    from .eval.features import EvalError

    if spec:
        if ":" in spec:
            src, p = spec.split(":", 1)
        else:
            src, p = spec, ""
        if src not in SOURCES:
            raise EvalError(f"--data {spec!r}: write SOURCE:PATH (e.g. folder:/data/imagenet, "
                            f"fashion_mnist:); sources: {', '.join(SOURCES)}")
        return src, p or (path or "")
    if source:
        if source not in SOURCES:
            raise EvalError(f"--source {source!r}: choose one of {', '.join(SOURCES)}")
        return source, path or ""
    if path:
        return "folder", path
    return None


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (a checkpoint, or a baseline)")
    g.add_argument("--checkpoint", "-c", metavar="PATH",
                   help="byol checkpoint (mmselfsup/torchvision weights also load)")
    g.add_argument("--which", choices=("online", "target"), default="online",
                   help="evaluate the online encoder (default) or its EMA target")
    g.add_argument("--baseline", choices=("random", "pixels", "torchvision"),
                   help="random-init backbone (the checkpoint's architecture when --checkpoint "
                   "is given too), raw pixels, or torchvision's supervised weights (local cache)")
    g.add_argument("--arch", help="baseline architecture, e.g. resnet18 (default resnet50)")
    g.add_argument("--in-chans", type=int, help="baseline input channels (default: the data's)")
    g.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None,
                   help="baseline uses the 3x3 stride-1 stem without max-pool")
    g.add_argument("--width", type=int, help="baseline first-stage width (default 64)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random init and protocols")
    g.add_argument("--label", help="row name in reports (default: byol / random-init / pixels)")
    g.add_argument("--trust", action="store_true",
                   help="allow full unpickling of a foreign checkpoint you trust")


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="SOURCE:PATH",
                   help="e.g. fashion_mnist:, cifar10:/data/cifar-10-batches-py, "
                   "folder:/data/imagenet (default: the checkpoint's data)")
    g.add_argument("--source", help="data reader (alternative to SOURCE in --data)")
    g.add_argument("--data-path", help="file or folder (alternative to PATH in --data)")
    g.add_argument("--train-split", default="train", help="labelled split to fit on")
    g.add_argument("--test-split", default=None,
                   help="split to evaluate on (default: the checkpoint's data.val_split, or test)")
    g.add_argument("--image-size", type=int, help="evaluation crop (default: the checkpoint's)")
    g.add_argument("--mean", type=float, nargs="+", help="normalisation mean(s)")
    g.add_argument("--std", type=float, nargs="+", help="normalisation std(s)")
    g.add_argument("--limit", type=int, default=0, help="use the first N train samples (0: all)")
    g.add_argument("--test-limit", type=int, default=None,
                   help="use the first N test samples (default: --limit)")
    g.add_argument("--synthetic-size", type=int, default=1024,
                   help="size of the synthetic source's splits")


def _run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--batch-size", type=int, default=256, help="feature extraction batch")
    g.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="autocast for the backbone (auto: bf16 on CUDA and on CPUs with fast bf16, else fp32)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers (file data)")
    g.add_argument("--cache-dir", help="reuse features across commands from this folder")
    g.add_argument("--json", metavar="PATH", help="write the result record(s) to this file")
    g.add_argument("--out-dir", metavar="DIR",
                   help="also write <protocol>_<model>.json here (RUN_DIR/eval for byol report)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _knn_opts(p, pre: str = "") -> None:
    p.add_argument(f"--{pre}ks", dest="knn_ks", type=int, nargs="+", default=[10, 20, 100, 200],
                   help="neighbour counts (default 10 20 100 200)")
    p.add_argument(f"--{pre}temperature", dest="knn_t", type=float, default=0.07,
                   help="vote weight exp(sim / T) (default 0.07)")


def _linear_opts(p, pre: str = "") -> None:
    p.add_argument(f"--{pre}mode", dest="linear_mode", choices=("features", "augmented"),
                   default="features", help="features: cached features + lr sweep (fast); "
                   "augmented: mmselfsup's RandomResizedCrop protocol")
    p.add_argument(f"--{pre}epochs", dest="linear_epochs", type=int, default=None,
                   help="default 50 (features) / 90 (augmented)")
    p.add_argument(f"--{pre}lrs", dest="linear_lrs", type=_floats, default=None,
                   help="lr sweep for --mode features, e.g. '0.01,0.1,1'")
    p.add_argument(f"--{pre}optimizer", dest="linear_opt", choices=("lars", "sgd"),
                   default="lars", help="augmented: LARS (mmselfsup) or SGD Nesterov (DeepMind)")
    p.add_argument(f"--{pre}lr", dest="linear_lr", type=float, default=None,
                   help="augmented: lr (default LARS 1.6 per 4096, SGD 0.2 per 256 images)")
    p.add_argument(f"--{pre}train-batch-size", dest="linear_bs", type=int, default=None,
                   help="default 1024 (features) / 256 (augmented)")


def _mhead_opts(p, pre: str = "") -> None:
    p.add_argument(f"--{pre}mode", dest="mhead_mode", choices=("features", "augmented"),
                   default="features", help="cached features or mmselfsup's augmented protocol")
    p.add_argument(f"--{pre}layers", dest="mhead_layers", nargs="+", default=["all"],
                   help="feature1..feature5 or all")
    p.add_argument(f"--{pre}epochs", dest="mhead_epochs", type=int, default=90)
    p.add_argument(f"--{pre}lr", dest="mhead_lr", type=float, default=0.01)
    p.add_argument(f"--{pre}milestones", dest="mhead_milestones", type=int, nargs="+",
                   default=None, help="epochs of the x0.1 steps (default: 1/3 and 2/3)")
    p.add_argument(f"--{pre}train-batch-size", dest="mhead_bs", type=int, default=256)
    p.add_argument(f"--{pre}train-cap", dest="mhead_cap", type=int, default=0,
                   help="class-balanced subset of N training samples (0: all)")


def _svm_opts(p, pre: str = "") -> None:
    p.add_argument(f"--{pre}layers", dest="svm_layers", nargs="+", default=["feature5"],
                   help="pooled, feature1..feature5 or all (the best one is reported)")
    p.add_argument(f"--{pre}costs", dest="svm_costs", default="full",
                   help="full (the protocol's 19), fast (4) or a list like 0.1,1,10")
    p.add_argument(f"--{pre}train-cap", dest="svm_cap", type=int, default=0,
                   help="class-balanced subset of N training samples (0: all)")
    p.add_argument(f"--{pre}folds", dest="svm_folds", type=int, default=3)


def _lowshot_opts(p, pre: str = "") -> None:
    p.add_argument(f"--{pre}layer", dest="lowshot_layer", default="feature5")
    p.add_argument(f"--{pre}ks", dest="lowshot_ks", type=int, nargs="+", default=None,
                   help="positives per class (default 1 2 4 8 16 32 64 96)")
    p.add_argument(f"--{pre}draws", dest="lowshot_draws", type=int, default=5)
    p.add_argument(f"--{pre}costs", dest="lowshot_costs", default="full",
                   help="full, fast or a list like 0.1,1,10")
    p.add_argument(f"--{pre}negatives", dest="lowshot_neg", default="protocol",
                   help="protocol ((C-1)*k per class), all, or a number")


def _finetune_opts(p, pre: str = "") -> None:
    p.add_argument(f"--{pre}fractions", dest="ft_fractions", type=float, nargs="+",
                   default=[1, 10, 100], help="label percentages (default 1 10 100)")
    p.add_argument(f"--{pre}epochs", dest="ft_epochs", type=int, nargs="+", default=[30],
                   help="one number, or one per fraction")
    p.add_argument(f"--{pre}lr", dest="ft_lr", type=float, default=None,
                   help="default 0.05 per 256 images")
    p.add_argument(f"--{pre}wd", dest="ft_wd", type=float, default=0.0)
    p.add_argument(f"--{pre}head-lr-mult", dest="ft_head_mult", type=float, default=1.0)
    p.add_argument(f"--{pre}train-batch-size", dest="ft_bs", type=int, default=256)
    p.add_argument(f"--{pre}min-steps", dest="ft_min_steps", type=int, default=0,
                   help="raise the epochs of small fractions to at least N optimizer steps")


# ---------------------------------------------------------------------------------------------
# setup from arguments


def _open(source: str, path: str, split: str, image_size: int, limit: int, synthetic_size: int,
          seed: int):
    from .data import open_source

    return open_source(source, path, split, image_size=image_size,
                       load_size=round(image_size * 256 / 224), limit=limit,
                       synthetic_size=synthetic_size, seed=seed)


def _data_channels(src: Any) -> int:
    return int(src.images.shape[1]) if hasattr(src, "images") else 3


def build_evaluators(args: argparse.Namespace, baselines: Sequence[str] = ()) -> list[Evaluator]:
    """The Evaluator(s) the arguments describe: the checkpoint or baseline, then any extra
    ``baselines`` (random / pixels) with the same data and preprocessing."""
    from .eval.features import EvalError, load_eval_model
    from .eval.svm import load_voc_images, read_voc07

    if not args.checkpoint and not args.baseline:
        raise EvalError("give --checkpoint PATH (a byol checkpoint) or --baseline random|pixels")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise EvalError(f"--checkpoint {args.checkpoint}: no such file")
    common = dict(which=args.which, arch=args.arch, in_chans=args.in_chans,
                  small_stem=args.small_stem, width=args.width, seed=args.seed,
                  image_size=args.image_size, mean=args.mean, std=args.std, trust=args.trust)
    first = load_eval_model(args.checkpoint, args.baseline, **common)
    cfg = first.config
    voc = getattr(args, "voc07", None)
    targets = None
    resize_ratio = 256 / 224
    if voc:
        size = args.image_size or 224
        trs, tes = read_voc07(voc, "trainval"), read_voc07(voc, "test")
        from .data import ArraySource

        train = ArraySource(load_voc_images(trs, size), None, list(trs.classes), trs.name)
        test = ArraySource(load_voc_images(tes, size), None, list(tes.classes), tes.name)
        targets = (trs.targets, tes.targets)
        resize_ratio = 1.0
        data_info = {"source": "voc07", "path": str(voc), "train": "trainval", "test": "test",
                     "num_train": len(train), "num_test": len(test)}
        image_size = size
    else:
        spec = parse_data(args.data, args.source, args.data_path)
        if spec is None:
            if cfg is None or cfg.name.startswith("imported"):
                raise EvalError("--data SOURCE:PATH is required (e.g. --data fashion_mnist: or "
                                "--data folder:/data/imagenet)")
            spec = (cfg.data.source, cfg.data.path)
        source, path = spec
        test_split = args.test_split or (cfg.data.val_split if cfg is not None else "test")
        image_size = args.image_size or (first.image_size if cfg is not None
                                         else NATIVE_SIZE.get(source, 224))
        test_limit = args.limit if args.test_limit is None else args.test_limit
        train = _open(source, path, args.train_split, image_size, args.limit,
                      args.synthetic_size, args.seed)
        test = _open(source, path, test_split, image_size, test_limit, args.synthetic_size,
                     args.seed)
        data_info = {"source": source, "path": path, "train": args.train_split,
                     "test": test_split, "num_train": len(train), "num_test": len(test)}
    if cfg is None:  # baseline without a checkpoint: fit the data
        chans = args.in_chans or _data_channels(train)
        common.update(in_chans=chans, image_size=image_size)
        if args.mean is None:
            common.update(mean=(0.5,) * chans if chans != 3 else None,
                          std=(0.25,) * chans if chans != 3 else None)
        first = load_eval_model(None, args.baseline, **common)
    models = [first]
    for b in baselines:
        if b != args.baseline:
            models.append(load_eval_model(args.checkpoint if cfg is not None else None, b,
                                          **{**common, "image_size": first.image_size,
                                             "mean": first.mean, "std": first.std,
                                             "in_chans": common.get("in_chans")}))
    if voc:  # the VOC07 protocol scores the whole squashed image, whatever the model saw
        for m in models:
            m.image_size = image_size
    data_info["image_size"] = first.image_size
    out = []
    for i, m in enumerate(models):
        out.append(Evaluator(
            m, train, test, device=args.device, precision=args.precision,
            batch_size=args.batch_size, cache_dir=args.cache_dir, num_workers=args.workers,
            progress=not args.quiet, data_info=data_info, targets=targets,
            resize_ratio=resize_ratio, seed=args.seed,
            label=args.label if (i == 0 and args.label) else None))
    return out


# ---------------------------------------------------------------------------------------------
# output


def summary_line(rec: dict[str, Any]) -> str:
    """One human-readable line per record."""
    r, p = rec["results"], rec["protocol"]

    def f(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, (int, float)) else "–"

    if p == "knn":
        body = "  ".join(f"{k} {f(v.get('top1'))}" for k, v in r.items() if isinstance(v, dict))
    elif p in ("linear", "linear_aug"):
        body = f"top-1 {f(r.get('top1'))}  top-5 {f(r.get('top5'))}  lr {r.get('lr')}"
    elif p == "mhead":
        body = "  ".join(f"{k} {f(v.get('top1'))}" for k, v in r.items())
    elif p == "svm":
        body = "  ".join(f"{k} {f(v.get('map'))}" for k, v in r["layers"].items())
        body += f"  (best {r['best_layer']})"
    elif p == "lowshot":
        body = "  ".join(f"{k} {f(v.get('map'))}" for k, v in r.items()
                         if k.startswith("k=")) + f"  [{r.get('layer')}]"
    elif p == "finetune":
        body = "  ".join(f"{k} {f(v.get('top1'))}" for k, v in r.items())
    else:
        body = str(r)
    return f"{rec['model']:>14s} {p:<10s} {body}   ({rec.get('wall_s') or 0:.1f} s)"


def emit(args: argparse.Namespace, records: list[dict[str, Any]]) -> None:
    from .eval.report import write_json

    for rec in records:
        print(summary_line(rec), flush=True)
    if getattr(args, "json", None):
        write_json(records[0] if len(records) == 1 else {"records": records}, args.json)
    if getattr(args, "out_dir", None):
        for rec in records:
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in rec["model"])
            write_json(rec, Path(args.out_dir) / f"{rec['protocol']}_{safe}.json")


def _known_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .eval.features import EvalError

    errs: tuple[type[BaseException], ...] = (EvalError, CheckpointError, ConfigError)
    try:
        from .data import DataError

        errs += (DataError,)
    except ImportError:  # pragma: no cover
        pass
    return errs


def _wrap(name: str, fn, extra_errors: tuple[type[BaseException], ...] = ()):
    """Bad input ends in one line naming the flag/file and the fix, exit code 2."""
    from .cli import one_line

    def run(args: argparse.Namespace) -> int:
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                                datefmt="%H:%M:%S")
        try:
            return int(fn(args) or 0)
        except _known_errors() + extra_errors as e:
            if getattr(args, "debug", False):
                raise
            print(f"byol {name}: error: {one_line(e)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except FileNotFoundError as e:
            if getattr(args, "debug", False):
                raise
            print(f"byol {name}: error: {e.filename or e}: no such file or folder",
                  file=sys.stderr)
            return EXIT_BAD_INPUT

    return run


# ---------------------------------------------------------------------------------------------
# commands


def _run_protocol(ev: Evaluator, protocol: str, args: argparse.Namespace) -> dict[str, Any]:
    if protocol == "knn":
        return ev.knn(args.knn_ks, args.knn_t, tsne=getattr(args, "tsne", None))
    if protocol == "linear":
        if args.linear_mode == "augmented":
            return ev.linear_aug(epochs=args.linear_epochs or 90,
                                 batch_size=args.linear_bs or 256,
                                 optimizer=args.linear_opt, lr=args.linear_lr)
        return ev.linear(lrs=args.linear_lrs, epochs=args.linear_epochs or 50,
                         batch_size=args.linear_bs or 1024)
    if protocol == "mhead":
        return ev.mhead(args.mhead_layers, epochs=args.mhead_epochs, batch_size=args.mhead_bs,
                        lr=args.mhead_lr, milestones=args.mhead_milestones,
                        train_cap=args.mhead_cap, augmented=args.mhead_mode == "augmented")
    if protocol == "svm":
        return ev.svm(args.svm_layers, parse_costs(args.svm_costs), n_jobs=args.n_jobs,
                      train_cap=args.svm_cap, folds=args.svm_folds)
    if protocol == "lowshot":
        neg: str | int = args.lowshot_neg
        if isinstance(neg, str) and neg.isdigit():
            neg = int(neg)
        return ev.lowshot(args.lowshot_layer, args.lowshot_ks, args.lowshot_draws,
                          parse_costs(args.lowshot_costs), neg, n_jobs=args.n_jobs,
                          train_cap=getattr(args, "svm_cap", 0))
    if protocol == "finetune":
        ep = args.ft_epochs
        return ev.finetune([f / 100 for f in args.ft_fractions], ep[0] if len(ep) == 1 else ep,
                           batch_size=args.ft_bs, lr=args.ft_lr, weight_decay=args.ft_wd,
                           head_lr_mult=args.ft_head_mult, min_steps=args.ft_min_steps)
    raise ValueError(protocol)


def _cmd_protocol(protocol: str):
    def cmd(args: argparse.Namespace) -> int:
        ev = build_evaluators(args)[0]
        emit(args, [_run_protocol(ev, protocol, args)])
        return 0

    return cmd


def cmd_eval_all(args: argparse.Namespace) -> int:
    from .eval.features import EvalError

    protocols = [p for p in (args.only or PROTOCOL_ORDER) if p not in (args.skip or [])]
    if getattr(args, "voc07", None):
        protocols = [p for p in protocols if p in ("svm", "lowshot")]
    if not protocols:
        raise EvalError("--only/--skip leave no protocol to run")
    if args.out_dir is None and args.checkpoint:
        args.out_dir = str(Path(args.checkpoint).resolve().parent / "eval")
    records = []
    for ev in build_evaluators(args, baselines=args.baselines or ()):
        ev.prefetch(protocols, list(args.svm_layers) + [args.lowshot_layer])
        for p in protocols:
            try:
                rec = _run_protocol(ev, p, args)
            except EvalError as e:
                log.warning("%s %s skipped: %s", ev.label, p, e)
                continue
            emit(argparse.Namespace(out_dir=args.out_dir), [rec])
            records.append(rec)
    if args.json:
        from .eval.report import write_json

        write_json({"records": records}, args.json)
    if args.out_dir:
        print(f"results in {args.out_dir}; `byol report {Path(args.out_dir).parent}` tabulates "
              "them")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import DEFAULT_SUFFIX, export_checkpoint

    out = args.out or str(Path(args.checkpoint).with_suffix("")) + f"_{args.format}" + \
        DEFAULT_SUFFIX[args.format]
    rep = export_checkpoint(args.checkpoint, out, args.format, which=args.which,
                            force=args.force, trust=args.trust, verify=not args.no_verify)
    print(f"wrote {rep['out']} ({args.format}, {rep['arch']}, {rep['keys']} tensors, "
          f"from a {rep['layout']} checkpoint)")
    for n in rep["notes"]:
        print(f"  note: {n}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .export import import_checkpoint

    rep = import_checkpoint(args.source, args.out, trust=args.trust, image_size=args.image_size,
                            mean=tuple(args.mean) if args.mean else None,
                            std=tuple(args.std) if args.std else None)
    print(f"wrote {rep['out']} (byol checkpoint, {rep['arch']}, from {rep['layout']} layout)")
    print(f"  missing keys ({len(rep['missing'])}): {', '.join(rep['missing'][:10]) or 'none'}")
    print(f"  unexpected keys ({len(rep['unexpected'])}): "
          f"{', '.join(rep['unexpected'][:10]) or 'none'}")
    for n in rep["notes"]:
        print(f"  note: {n}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .eval.report import write_report

    path, text = write_report(args.run_dir, out=args.out, plots=not args.no_plots,
                              reference=not args.no_reference, extra=args.extra or ())
    if args.print:
        print(text)
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------
# registration

_RAW = argparse.RawDescriptionHelpFormatter

EPILOGS = {
    "knn": """examples:
  byol eval knn --checkpoint runs/fmnist_quick/last.pt --json runs/fmnist_quick/eval/knn.json
  byol eval knn --baseline random --checkpoint runs/fmnist_quick/last.pt   # same arch, random init
  byol eval knn --baseline pixels --data fashion_mnist: --ks 20
  byol eval knn --checkpoint byol_r50.pt --data folder:/data/imagenet --test-split val --device cuda
""",
    "linear": """examples:
  byol eval linear --checkpoint runs/fmnist_quick/last.pt                 # cached features, lr sweep
  byol eval linear --checkpoint byol_r50.pt --data folder:/data/imagenet --test-split val \\
      --mode augmented --optimizer lars --epochs 90 --train-batch-size 4096 --device cuda
""",
    "mhead": """examples:
  byol eval mhead --checkpoint runs/fmnist_quick/last.pt --epochs 30 --train-cap 10000
  byol eval mhead --checkpoint byol_r50.pt --data folder:/data/imagenet --test-split val \\
      --mode augmented --epochs 90 --device cuda
""",
    "svm": """examples:
  byol eval svm --checkpoint runs/fmnist_quick/last.pt --layers feature5 --costs fast --train-cap 5000
  byol eval svm --checkpoint byol_r50.pt --voc07 /data/VOCdevkit --layers all --n-jobs 16
""",
    "lowshot": """examples:
  byol eval lowshot --checkpoint runs/fmnist_quick/last.pt --costs fast --ks 1 4 16 --draws 3
  byol eval lowshot --checkpoint byol_r50.pt --voc07 /data/VOCdevkit --layer feature5 --n-jobs 16
""",
    "finetune": """examples:
  byol eval finetune --checkpoint runs/fmnist_quick/last.pt --fractions 1 10 100 --epochs 5
  byol eval finetune --checkpoint byol_r50.pt --data folder:/data/imagenet --test-split val \\
      --fractions 1 10 --epochs 30 50 --train-batch-size 1024 --device cuda
""",
    "all": """examples:
  byol eval all --checkpoint runs/fmnist_quick/last.pt --baselines random pixels \\
      --cache-dir runs/cache --svm-train-cap 5000 --finetune-epochs 3
  byol report runs/fmnist_quick
""",
}


def add_commands(subparsers: Any) -> None:
    """Register ``eval``, ``export``, ``import`` and ``report`` on the main CLI's subparsers."""
    ev = subparsers.add_parser(
        "eval", help="evaluate a checkpoint or baseline (kNN, linear, multi-head, SVM, ...)",
        formatter_class=_RAW,
        epilog="examples:\n  byol eval knn --checkpoint runs/fmnist_quick/last.pt\n"
        "  byol eval all --checkpoint runs/fmnist_quick/last.pt --baselines random pixels\n")
    evs = ev.add_subparsers(dest="eval_command", metavar="PROTOCOL")
    helps = {
        "knn": "weighted kNN (T=0.07) on GAP features, k = 10 20 100 200",
        "linear": "linear probe on GAP features (fast lr sweep, or mmselfsup's augmented one)",
        "mhead": "multi-head linear probe on feature1..feature5",
        "svm": "VOC07 SVM protocol (one-vs-rest on single-label data)",
        "lowshot": "low-shot SVM, k = 1..96 positives per class, 5 seeded draws",
        "finetune": "fine-tune the whole network on 1% / 10% / 100% of the labels",
    }
    adders = {"knn": _knn_opts, "linear": _linear_opts, "mhead": _mhead_opts,
              "svm": _svm_opts, "lowshot": _lowshot_opts, "finetune": _finetune_opts}
    for name, h in helps.items():
        p = evs.add_parser(name, help=h.replace("%", "%%"), description=h, epilog=EPILOGS[name],
                           formatter_class=_RAW)
        _model_args(p)
        _data_args(p)
        _run_args(p)
        g = p.add_argument_group(f"{name} options")
        adders[name](g)
        if name in ("svm", "lowshot"):
            g.add_argument("--voc07", metavar="ROOT",
                           help="VOC2007 devkit: trainval/test images and -1/0/1 labels")
            g.add_argument("--n-jobs", type=int, default=1, help="parallel SVM fits (joblib)")
        if name == "lowshot":
            g.add_argument("--train-cap", dest="svm_cap", type=int, default=0,
                           help="class-balanced subset of N training samples to draw from")
        if name == "knn":
            g.add_argument("--tsne", metavar="PNG", help="also plot a t-SNE of test features")
        p.set_defaults(func=_wrap(f"eval {name}", _cmd_protocol(name)))

    p = evs.add_parser("all", help="every protocol (plus baselines), results for byol report",
                       description="Run kNN, linear, multi-head, SVM, low-shot SVM and "
                       "fine-tuning, sharing the features between protocols.",
                       epilog=EPILOGS["all"], formatter_class=_RAW)
    _model_args(p)
    _data_args(p)
    _run_args(p)
    g = p.add_argument_group("suite")
    g.add_argument("--baselines", nargs="*", choices=("random", "pixels"), default=[],
                   help="also evaluate these baselines the same way")
    g.add_argument("--only", nargs="+", choices=PROTOCOL_ORDER, help="run only these protocols")
    g.add_argument("--skip", nargs="+", choices=PROTOCOL_ORDER, help="skip these protocols")
    g.add_argument("--voc07", metavar="ROOT", help="run svm and lowshot on VOC2007 instead")
    g.add_argument("--n-jobs", type=int, default=1, help="parallel SVM fits (joblib)")
    _knn_opts(g, "knn-")
    _linear_opts(g, "linear-")
    _mhead_opts(g, "mhead-")
    _svm_opts(g, "svm-")
    _lowshot_opts(g, "lowshot-")
    _finetune_opts(g, "finetune-")
    p.set_defaults(func=_wrap("eval all", cmd_eval_all))

    def eval_help(args: argparse.Namespace) -> int:  # noqa: ARG001
        ev.print_help()
        return EXIT_BAD_INPUT

    ev.set_defaults(func=eval_help)

    from .export import FORMATS

    p = subparsers.add_parser(
        "export", help="write a backbone for torchvision, timm, mmdet/mmseg, detectron2, ...",
        description="Export the (online) backbone of a byol, mmselfsup or torchvision "
        "checkpoint. torchvision/timm files get a zero-initialised 1000-class fc so that "
        "strict loading works.", formatter_class=_RAW,
        epilog="examples:\n  byol export runs/in1k/last.pt --format torchvision --out r50_byol.pth\n"
        "  byol export runs/in1k/last.pt --format detectron2 --out r50_byol.pkl\n"
        "  byol export runs/in1k/last.pt --format mmdet --out r50_byol_mmdet.pth\n"
        "  byol export runs/fmnist_quick/last.pt --format safetensors\n")
    p.add_argument("checkpoint", help="byol / mmselfsup / torchvision checkpoint")
    p.add_argument("--format", "-f", choices=FORMATS, default="torchvision")
    p.add_argument("--out", "-o", help="output file (default: next to the checkpoint)")
    p.add_argument("--which", choices=("online", "target"), default="online")
    p.add_argument("--force", action="store_true",
                   help="write non-torchvision variants (small stem, narrow) anyway")
    p.add_argument("--trust", action="store_true", help="allow full unpickling of the input")
    p.add_argument("--no-verify", action="store_true",
                   help="skip loading the torchvision/timm file back into the stock model")
    p.set_defaults(func=_wrap("export", cmd_export))

    p = subparsers.add_parser(
        "import", help="convert mmselfsup / torchvision weights into a byol checkpoint",
        description="Convert an mmselfsup BYOL checkpoint (1.x or 0.x key layout), an "
        "mmpretrain or a torchvision ResNet state dict into a byol checkpoint; prints the "
        "missing and unexpected keys.", formatter_class=_RAW,
        epilog="examples:\n  byol import byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth "
        "byol_r50.pt\n  byol eval knn --checkpoint byol_r50.pt --data folder:/data/imagenet "
        "--test-split val\n")
    p.add_argument("source", help="checkpoint to convert (.pth/.pt/.safetensors)")
    p.add_argument("out", help="byol checkpoint to write")
    p.add_argument("--trust", action="store_true",
                   help="allow full unpickling (mmengine checkpoints with Python objects in meta)")
    p.add_argument("--image-size", type=int, help="evaluation size to record (default 224)")
    p.add_argument("--mean", type=float, nargs="+", help="normalisation mean to record")
    p.add_argument("--std", type=float, nargs="+", help="normalisation std to record")
    p.set_defaults(func=_wrap("import", cmd_import))

    p = subparsers.add_parser(
        "report", help="tabulate RUN_DIR/eval/*.json and plot training curves",
        description="Gather the JSON results of `byol eval` in RUN_DIR/eval into a Markdown "
        "table laid out like mmselfsup's BYOL page, and plot loss / kNN curves from "
        "RUN_DIR/metrics.jsonl.", formatter_class=_RAW,
        epilog="examples:\n  byol eval all --checkpoint runs/fmnist_quick/last.pt --baselines "
        "random pixels\n  byol report runs/fmnist_quick --print\n")
    p.add_argument("run_dir", help="run folder (with eval/*.json and/or metrics.jsonl)")
    p.add_argument("--out", help="Markdown file (default RUN_DIR/report.md)")
    p.add_argument("--extra", nargs="+", help="more result JSON files to include")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-reference", action="store_true",
                   help="omit the published mmselfsup/paper reference rows")
    p.add_argument("--print", action="store_true", help="also print the Markdown")
    p.set_defaults(func=_wrap("report", cmd_report))


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (``python -m byol.cli_eval``) for when cli.py is not wired yet."""
    parser = argparse.ArgumentParser(prog="byol")
    parser.add_argument("--debug", action="store_true")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
