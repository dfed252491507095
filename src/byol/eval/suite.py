"""The evaluation suite: the protocols for one model on one labelled train/test pair.

:class:`Evaluator` is what ``byol eval`` runs and what ``benchmarks/fmnist_suite.py`` drives,
so the command line and the Python API compute numbers the same way. Every result is an
evaluation record (:func:`byol.eval.report.make_record`). :func:`build_evaluators` turns a
:class:`~byol.eval.settings.ModelChoice`, a :class:`~byol.eval.settings.DataChoice` and
:class:`~byol.eval.settings.RunSettings` into evaluators sharing data and preprocessing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import EvalError
from .features import (
    ALL_NAMES,
    FEATURE_NAMES,
    PixelBackbone,
    cached_features,
    resolve_device,
    source_labels,
)
from .loading import load_eval_model
from .report import make_record
from .settings import (
    NATIVE_SIZE,
    DataChoice,
    EvalSettings,
    FinetuneSettings,
    KnnSettings,
    LinearSettings,
    LowshotSettings,
    MheadSettings,
    ModelChoice,
    RunSettings,
    SvmSettings,
    parse_costs,
)

log = logging.getLogger("byol.eval")


class Evaluator:
    """One model (:class:`byol.eval.loading.EvalModel`) on one labelled train/test pair.

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
        n_jobs: int = 1,
        data_info: dict[str, Any] | None = None,
        targets: tuple[Any, Any] | None = None,
        resize_ratio: float = 256 / 224,
        seed: int = 0,
        label: str | None = None,
    ) -> None:
        self.model = model
        self.train, self.test = train, test
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.num_workers = num_workers
        self.progress = progress
        self.n_jobs = n_jobs
        self.data_info = data_info or {}
        self.targets = targets
        self.resize_ratio = resize_ratio
        self.seed = seed
        self.label = label or model.label
        self._feats: dict[tuple[str, str], torch.Tensor] = {}

    # -- helpers -------------------------------------------------------------------------------

    @property
    def has_stages(self) -> bool:
        return not isinstance(self.model.backbone, PixelBackbone) and hasattr(
            self.model.backbone, "forward_stages")

    def labels(self, split: str) -> torch.Tensor:
        return source_labels(self.train if split == "train" else self.test)

    def features(self, split: str, names: Sequence[str], flip: bool = False
                 ) -> dict[str, torch.Tensor]:
        """{name: [N, D]} of ``split`` ("train"/"test"), each evaluation crop read as it is or
        mirrored left-right (``flip``)."""
        src = self.train if split == "train" else self.test
        key = f"{split}:flip" if flip else split
        todo = [n for n in names if (key, n) not in self._feats]
        if todo:
            feats = cached_features(
                self.model, src, names=todo, cache_dir=self.cache_dir,
                batch_size=self.batch_size, device=self.device, precision=self.precision,
                progress=self.progress, resize_ratio=self.resize_ratio,
                num_workers=self.num_workers, flip=flip)
            for n, v in feats.items():
                self._feats[(key, n)] = v
        return {n: self._feats[(key, n)] for n in names}

    def _record(self, protocol: str, results: dict, settings: dict, t0: float) -> dict:
        return make_record(protocol, self.label, results, checkpoint=self.model.checkpoint,
                           arch=self.model.arch, data=self.data_info,
                           settings={"image_size": self.model.image_size, **settings,
                                     **({"whitening": self.model.info["whitening"]}
                                        if "whitening" in self.model.info else {})},
                           wall_s=time.perf_counter() - t0)

    def _need_labels(self, what: str) -> None:
        if self.targets is not None:
            raise EvalError(f"{what} needs single-label data; VOC07 supports svm and lowshot only")

    def _layers(self, layers: Sequence[str]) -> list[str]:
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
        from .finetune import balanced_subset

        if not cap or cap >= len(labels):
            return torch.arange(len(labels))
        return balanced_subset(labels, cap / len(labels), self.seed)

    def prefetch(self, protocols: Sequence[str], layers: Sequence[str] = ()) -> None:
        """Extract every layer the protocols will need in one pass per split (a ResNet forward
        gives the pooled output and all stage maps at once); ``layers``: the SVM protocols'
        (:meth:`EvalSettings.feature_layers`)."""
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

    def run(self, protocol: str, settings: EvalSettings | None = None) -> dict:
        """The record of one protocol (``knn``, ``linear``, ``mhead``, ``svm``, ``lowshot`` or
        ``finetune``) with its part of ``settings``."""
        settings = settings or EvalSettings()
        methods = {"knn": self.knn, "linear": self.linear, "mhead": self.mhead, "svm": self.svm,
                   "lowshot": self.lowshot, "finetune": self.finetune}
        if protocol not in methods:
            raise EvalError(f"unknown protocol {protocol!r}; choose from {', '.join(methods)}")
        return methods[protocol](getattr(settings, protocol))

    def run_all(self, protocols: Sequence[str],
                settings: EvalSettings | None = None) -> Iterator[dict]:
        """The records of ``protocols`` in turn, features extracted once; a protocol that does
        not apply to this model or data is logged and skipped."""
        settings = settings or EvalSettings()
        self.prefetch(protocols, settings.feature_layers())
        for p in protocols:
            try:
                yield self.run(p, settings)
            except EvalError as e:
                log.warning("%s %s skipped: %s", self.label, p, e)

    def knn(self, s: KnnSettings | None = None) -> dict:
        from .knn import knn_classify

        s = s or KnnSettings()
        self._need_labels("kNN")
        t0 = time.perf_counter()
        ftr = self.features("train", ["pooled"])["pooled"]
        fte = self.features("test", ["pooled"])["pooled"]
        res = knn_classify(ftr, self.labels("train"), fte, self.labels("test"), ks=s.ks,
                           temperature=s.temperature)
        if s.tsne:
            from .plots import plot_tsne

            plot_tsne(fte, self.labels("test"), s.tsne,
                      classes=getattr(self.test, "classes", None), seed=self.seed,
                      title=f"t-SNE of test features: {self.label}")
        return self._record("knn", res, {"ks": list(s.ks), "temperature": s.temperature}, t0)

    def linear(self, s: LinearSettings | None = None) -> dict:
        s = s or LinearSettings()
        if s.mode == "augmented":
            return self._linear_augmented(s)
        from .linear import DEFAULT_LRS, linear_probe_features

        self._need_labels("the linear probe")
        t0 = time.perf_counter()
        epochs, batch_size = s.epochs or 50, s.batch_size or 1024
        views = [self.features("train", ["pooled"], flip=True)["pooled"]] if s.flip else []
        res = linear_probe_features(
            self.features("train", ["pooled"])["pooled"], self.labels("train"),
            self.features("test", ["pooled"])["pooled"], self.labels("test"),
            lrs=tuple(s.lrs or DEFAULT_LRS), epochs=epochs, batch_size=batch_size,
            seed=self.seed, weight_decay=0.0, device=self.device, train_views=views)
        return self._record("linear", res, {"mode": "features", "epochs": epochs,
                                            "batch_size": batch_size,
                                            **({"flip": True} if s.flip else {})}, t0)

    def _linear_augmented(self, s: LinearSettings) -> dict:
        from .linear import linear_probe_augmented

        self._need_labels("the linear probe")
        if not self.has_stages and not getattr(self.model.backbone, "num_features", 0):
            raise EvalError("the augmented probe needs a network; use --mode features for pixels")
        t0 = time.perf_counter()
        m, epochs = self.model, s.epochs or 90
        res = linear_probe_augmented(
            m.backbone, self.train, self.test, image_size=m.image_size, mean=m.mean, std=m.std,
            epochs=epochs, batch_size=s.batch_size or 256, optimizer=s.optimizer, lr=s.lr,
            seed=self.seed, device=self.device, precision=self.precision,
            num_workers=self.num_workers, progress=self.progress)
        return self._record("linear_aug", res, {"mode": "augmented", "epochs": epochs,
                                                "optimizer": s.optimizer}, t0)

    def mhead(self, s: MheadSettings | None = None) -> dict:
        from .linear import multihead_probe, multihead_probe_augmented, stage_channels

        s = s or MheadSettings()
        self._need_labels("the multi-head probe")
        if not self.has_stages:
            raise EvalError(f"{self.label} has no stage features: multi-head does not apply")
        names = [n for n in self._layers(s.layers) if n != "pooled"]
        milestones = list(s.milestones) if s.milestones else None
        t0 = time.perf_counter()
        augmented = s.mode == "augmented"
        if augmented:
            m = self.model
            res = multihead_probe_augmented(
                m.backbone, self.train, self.test, image_size=m.image_size, mean=m.mean,
                std=m.std, names=names, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
                milestones=milestones, seed=self.seed, device=self.device,
                precision=self.precision, num_workers=self.num_workers, progress=self.progress)
        else:
            ytr = self.labels("train")
            idx = self._cap(ytr, s.train_cap)
            ftr = {k: v[idx] for k, v in self.features("train", names).items()}
            res = multihead_probe(
                ftr, ytr[idx], self.features("test", names), self.labels("test"),
                channels=stage_channels(self.model.backbone, names), epochs=s.epochs,
                batch_size=s.batch_size, lr=s.lr, milestones=milestones, seed=self.seed,
                device=self.device)
        return self._record("mhead", res, {"mode": "augmented" if augmented else "features",
                                           "epochs": s.epochs, "lr": s.lr,
                                           "train_cap": s.train_cap}, t0)

    def _svm_data(self, layer: str, train_cap: int):
        from .svm import labels_to_targets

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

    def svm(self, s: SvmSettings | None = None) -> dict:
        from .svm import VOC_CLASSES, svm_voc07

        s = s or SvmSettings()
        t0 = time.perf_counter()
        costs = parse_costs(s.costs)
        per_layer = {}
        for layer in self._layers(s.layers):
            ftr, ttr, fte, tte = self._svm_data(layer, s.train_cap)
            classes = VOC_CLASSES if self.targets is not None else None
            per_layer[layer] = svm_voc07(ftr, ttr, fte, tte, costs=costs, folds=s.folds,
                                         n_jobs=self.n_jobs, classes=classes)
            log.info("%s SVM %s: mAP %.2f", self.label, layer, per_layer[layer]["map"])
        best = max(per_layer, key=lambda k: per_layer[k]["map"])
        res = {"layers": per_layer, "best_layer": best, "map": per_layer[best]["map"]}
        return self._record("svm", res, {"costs": list(costs), "train_cap": s.train_cap,
                                         "folds": s.folds}, t0)

    def lowshot(self, s: LowshotSettings | None = None) -> dict:
        from .svm import LOWSHOT_KS, lowshot_svm

        s = s or LowshotSettings()
        t0 = time.perf_counter()
        layer = self._layers([s.layer])[0]
        ftr, ttr, fte, tte = self._svm_data(layer, s.train_cap)
        costs = parse_costs(s.costs)
        negatives = s.negatives_value()
        res = lowshot_svm(ftr, ttr, fte, tte, ks=tuple(s.ks or LOWSHOT_KS), num_draws=s.draws,
                          seed=self.seed, costs=costs, negatives=negatives, n_jobs=self.n_jobs)
        res["layer"] = layer
        return self._record("lowshot", res, {"costs": list(costs), "draws": s.draws,
                                             "negatives": negatives}, t0)

    def finetune(self, s: FinetuneSettings | None = None) -> dict:
        from .finetune import finetune_fractions

        s = s or FinetuneSettings()
        self._need_labels("fine-tuning")
        if not self.has_stages:
            raise EvalError(f"{self.label} has no trainable network: fine-tuning does not apply")
        t0 = time.perf_counter()
        m = self.model
        epochs: int | list[int] = s.epochs[0] if len(s.epochs) == 1 else list(s.epochs)
        res = finetune_fractions(
            m.backbone, self.train, self.test, fractions=tuple(f / 100 for f in s.fractions),
            epochs=epochs, image_size=m.image_size, mean=m.mean, std=m.std,
            batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay,
            head_lr_mult=s.head_lr_mult, min_steps=s.min_steps, seed=self.seed,
            device=self.device, precision=self.precision, num_workers=self.num_workers,
            progress=self.progress)
        return self._record("finetune", res, {"epochs": epochs, "batch_size": s.batch_size,
                                              "weight_decay": s.weight_decay,
                                              "min_steps": s.min_steps}, t0)


# ---------------------------------------------------------------------------------------------
# building evaluators from a model, data and run choice


def _open(source: str, path: str, split: str, image_size: int, limit: int, synthetic_size: int,
          seed: int, option: str):
    from ..data import open_source

    return open_source(source, path, split, image_size=image_size,
                       load_size=round(image_size * 256 / 224), limit=limit,
                       synthetic_size=synthetic_size, seed=seed, split_option=option)


def open_eval_pair(data: DataChoice, source: str, path: str, image_size: int, seed: int,
                   default_test_split: str = "test", default_test_data: str = ""):
    """The train and test sets of an evaluation and the record of which images each holds.

    The test set is ``data.test_data`` (or ``default_test_data``, a checkpoint's
    ``data.val_path``) when given, else the ``test_split`` of the training data. A test set
    that holds the training images is refused (the numbers would be inflated) unless
    ``data.test_on_train`` asks for it."""
    test_split = data.test_split or default_test_split
    test_limit = data.limit if data.test_limit is None else data.test_limit
    spec = data.test_source_and_path(source) or (
        (source, default_test_data) if default_test_data else None)
    test_source, test_path = spec or (source, path)
    train = _open(source, path, data.train_split, image_size, data.limit, data.synthetic_size,
                  seed, "--train-split")
    test = _open(test_source, test_path, test_split, image_size, test_limit,
                 data.synthetic_size, seed, "--test-split")
    from ..data import same_images

    same = same_images(train, test)
    if same and not data.test_on_train:
        where = f"{source}:{path}" + (f" and {test_source}:{test_path}" if spec else "")
        raise EvalError(
            f"the test set is the training set ({where}, splits {data.train_split!r} and "
            f"{test_split!r} hold the same {len(train)} images): name a separate test set with "
            "--test-data PATH (or pass --test-on-train to score the training images against "
            "themselves, which overstates every number)")
    info = {"source": source, "path": path, "train": data.train_split, "test": test_split,
            "train_images": f"{source}:{path} split {data.train_split}",
            "test_images": f"{test_source}:{test_path} split {test_split}",
            "test_source": test_source, "test_path": test_path,
            "num_train": len(train), "num_test": len(test),
            "test_is_train": same, "test_on_train": bool(data.test_on_train)}
    return train, test, info


def _voc07_data(root: str, size: int):
    from ..data import ArraySource
    from .svm import load_voc_images, read_voc07

    trs, tes = read_voc07(root, "trainval"), read_voc07(root, "test")
    train = ArraySource(load_voc_images(trs, size), None, list(trs.classes), trs.name)
    test = ArraySource(load_voc_images(tes, size), None, list(tes.classes), tes.name)
    info = {"source": "voc07", "path": str(root), "train": "trainval", "test": "test",
            "num_train": len(train), "num_test": len(test)}
    return train, test, (trs.targets, tes.targets), info


def fit_random_whitening(m: Any, train: Any, device: torch.device) -> None:
    """The random-init baseline of a checkpoint with ``model.feature_whiten``: fit its whitening
    the way pretraining fitted the checkpoint's (the pooled features of up to WHITEN_IMAGES
    training images drawn with train.seed, no labels), here on the evaluation's training
    split, so that both rows read their features through the same kind of embedding. Unfitted,
    the layer is the identity and the baseline would be read without it."""
    layer = getattr(m.backbone, "feat_whiten", None)
    if m.label != "random-init" or layer is None or layer.is_fitted:
        return
    from ..models.whitening import WHITEN_IMAGES, fit_feature_whitening

    seed = m.config.train.seed if m.config is not None else 0
    t0 = time.perf_counter()
    n = fit_feature_whitening(m.backbone, train, images=WHITEN_IMAGES, seed=seed,
                              image_size=m.image_size, mean=m.mean, std=m.std, device=device)
    # the fitted map is part of the weights: the feature cache must tell fits apart
    digest = hashlib.sha256(layer.matrix.cpu().numpy().tobytes()).hexdigest()[:12]
    m.key += f":white{float(layer.shrink):g}:{digest}"
    m.info["whitening"] = {"shrink": float(layer.shrink), "images": n, "seed": seed}
    log.info("random-init baseline: its feature whitening (shrink %g) fitted like the "
             "checkpoint's, on %d training images (no labels) in %.1f s", float(layer.shrink), n,
             time.perf_counter() - t0)


def _protocol_seed(model: ModelChoice) -> int:
    """The seed of the protocols' draws (splits, subsets, initial heads): ``--seed``, or 0."""
    return 0 if model.seed is None else model.seed


def build_evaluators(model: ModelChoice, data: DataChoice, run: RunSettings | None = None,
                     baselines: Sequence[str] = ()) -> list[Evaluator]:
    """The Evaluator(s) of the model choice (a checkpoint or a baseline), then any extra
    ``baselines`` (random / pixels) with the same data and preprocessing."""
    run = run or RunSettings()
    if not model.checkpoint and not model.baseline:
        raise EvalError("give --checkpoint PATH (a byol checkpoint) or --baseline random|pixels")
    if model.checkpoint and not Path(model.checkpoint).is_file():
        raise EvalError(f"--checkpoint {model.checkpoint}: no such file")
    common = dict(which=model.which, arch=model.arch, in_chans=model.in_chans,
                  small_stem=model.small_stem, width=model.width, seed=model.seed,
                  image_size=data.image_size, mean=data.mean, std=data.std, trust=model.trust)
    first = load_eval_model(model.checkpoint, model.baseline, **common)
    cfg = first.config
    targets = None
    resize_ratio = 256 / 224
    if data.voc07:
        image_size = data.image_size or 224
        train, test, targets, data_info = _voc07_data(data.voc07, image_size)
        resize_ratio = 1.0
    else:
        spec = data.source_and_path()
        if spec is None:
            if cfg is None or cfg.name.startswith("imported"):
                raise EvalError("--data SOURCE:PATH is required (e.g. --data fashion_mnist: or "
                                "--data folder:/data/imagenet)")
            spec = (cfg.data.source, cfg.data.path)
        source, path = spec
        own_data = data.source_and_path() is None and cfg is not None
        image_size = data.image_size or (first.image_size if cfg is not None
                                         else NATIVE_SIZE.get(source, 224))
        train, test, data_info = open_eval_pair(
            data, source, path, image_size, _protocol_seed(model),
            default_test_split=cfg.data.val_split if cfg is not None else "test",
            default_test_data=cfg.data.val_path if own_data else "")
    if cfg is None:  # baseline without a checkpoint: fit the data
        chans = model.in_chans or (int(train.images.shape[1]) if hasattr(train, "images") else 3)
        common.update(in_chans=chans, image_size=image_size)
        if data.mean is None:
            common.update(mean=(0.5,) * chans if chans != 3 else None,
                          std=(0.25,) * chans if chans != 3 else None)
        first = load_eval_model(None, model.baseline, **common)
    models = [first]
    for b in baselines:
        if b != model.baseline:
            models.append(load_eval_model(model.checkpoint if cfg is not None else None, b,
                                          **{**common, "image_size": first.image_size,
                                             "mean": first.mean, "std": first.std,
                                             "in_chans": common.get("in_chans")}))
    if data.voc07:  # the VOC07 protocol scores the whole squashed image, whatever the model saw
        for m in models:
            m.image_size = image_size
    for m in models:
        fit_random_whitening(m, train, resolve_device(run.device))
    data_info["image_size"] = first.image_size
    return [Evaluator(
        m, train, test, device=run.device, precision=run.precision,
        batch_size=run.batch_size, cache_dir=run.cache_dir, num_workers=run.workers,
        progress=not run.quiet, n_jobs=run.n_jobs, data_info=data_info, targets=targets,
        resize_ratio=resize_ratio, seed=_protocol_seed(model),
        label=model.label if (i == 0 and model.label) else None)
        for i, m in enumerate(models)]
