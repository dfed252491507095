"""Every setting of a pretraining run, in one typed tree.

A config is loaded from YAML (a file or a preset shipped in ``byol/configs``), then ``--set
key.path=value`` overrides are applied, then it is validated. Unknown keys, ill-typed values and
impossible values raise :class:`ConfigError` naming the key, the source and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import types
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError


@dataclass
class ModelConfig:
    arch: str = "resnet50"  # resnet18..wide_resnet101_2, or timm:<name>
    in_chans: int = 3
    small_stem: bool = False  # 3x3 stride-1 conv, no max-pool: for 28-64 px images
    # stride of the small stem's conv: 1 = the CIFAR-style stem of the papers (every preset); 2
    # halves every stage's resolution (4x less compute per image, more epochs in a CPU budget)
    # and leaves the last stage a 2x2 map at 28-32 px: lower on Fashion-MNIST and generated
    # shapes at equal time, higher on generated textures; the no-config CPU recipe keeps it
    # (docs/RESULTS.md, sixth pass). Only the small stem has it (the standard stem is always
    # 7x7 stride 2 + max-pool).
    stem_stride: int = 1
    width: int = 64  # first-stage channels (64 = torchvision)
    # channels of the last stage (layer4's planes; 0 = 8 x width, torchvision's doubling). Wider
    # than that gives the probes more features for little compute where the last stage runs on
    # a small map: fmnist_cpu1h uses 256 at width 16 (docs/RESULTS.md, ninth pass). ResNets only.
    last_stage_width: int = 0
    # a BatchNorm without scale or shift on the pooled features (the backbone's output, what the
    # probes and `byol embed` read): per-dimension standardised features, by the running
    # statistics of training. ReLU features are non-negative and share one large direction that
    # enters every cosine similarity; standardising removes it (re-identification's "BNNeck"
    # for cosine retrieval). Off = torchvision's ResNet (every paper and mmselfsup preset);
    # fmnist_cpu1h has it on (docs/RESULTS.md, eleventh pass). ResNets only; the exports that
    # rebuild a stock ResNet (torchvision, timm, mm*, detectron2) have no place for it.
    feature_bn: bool = False
    # ZCA whitening of the pooled features (after feature_bn), fitted at the end of pretraining
    # on the features of up to 10,000 clean training images (no labels); the value is its
    # shrinkage (a fraction of the largest eigenvalue added to every eigenvalue; 0 = off, the
    # paper's and mmselfsup's features). BYOL's features keep most variance in a few
    # directions that dominate a cosine similarity; whitening lets the kNN read the rest
    # (docs/RESULTS.md, eleventh pass). A fixed linear map: a linear probe can absorb it.
    # ResNets only; the stock-ResNet exports leave it out (safetensors keeps it).
    feature_whiten: float = 0.0
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    sync_bn: bool = True  # SyncBatchNorm when more than one process trains


@dataclass
class ViewConfig:
    """One of BYOL's two augmentation pipelines (paper, appendix B)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1  # kernel side ~ this fraction of the image side (23 at 224 px)
    solarize_p: float = 0.0


def _view2() -> ViewConfig:
    return ViewConfig(blur_p=0.1, solarize_p=0.2)


@dataclass
class AugmentConfig:
    image_size: int = 224
    interpolation: str = "bicubic"  # bicubic (paper) or bilinear (faster)
    view1: ViewConfig = field(default_factory=ViewConfig)
    view2: ViewConfig = field(default_factory=_view2)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    # multi-crop (off by default; not in the BYOL paper): this many extra small views per image,
    # cropped with local_crop_scale and resized to local_size (0: half of image_size), coloured
    # like view1. They pass through the online network only and regress onto both global
    # targets; the loss is rescaled so that it keeps the two-view loss's range.
    local_crops: int = 0
    local_size: int = 0
    local_crop_scale: tuple[float, float] = (0.05, 0.4)


@dataclass
class DataConfig:
    """Where the images come from. ``source`` picks the reader; ``path`` is its file or folder."""

    source: str = "folder"  # folder | unlabeled_folder | idx | fashion_mnist | mnist | cifar10 | cifar100 | stl10 | numpy | synthetic
    path: str = ""
    split: str = "train"
    val_split: str = "test"  # labeled split for the kNN monitor and evaluations
    val_path: str = ""  # file or folder of the val_split when it is not in data.path (a test .npz)
    in_memory: bool | None = None  # None: in memory when the decoded set fits in max_memory_gb
    max_memory_gb: float = 8.0
    load_size: int = 0  # folder sources held in memory are resized to this side (0: image_size)
    num_workers: int = 8
    strict: bool = False  # unreadable images: error instead of skip-with-warning
    synthetic_size: int = 1024  # images in the synthetic source (tests, benchmarks)
    limit: int = 0  # use only the first N samples (0: all)


@dataclass
class OptimConfig:
    name: str = "lars"  # lars | sgd | adamw
    base_lr: float = 0.3  # lr = base_lr * global_batch / 256
    weight_decay: float = 1e-6
    momentum: float = 0.9
    eta: float = 1e-3  # LARS trust coefficient
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    warmup_epochs: float = 10.0
    final_lr: float = 0.0
    exclude_bias_and_norm: bool = True  # from weight decay and LARS adaptation
    grad_clip: float = 0.0  # 0: off
    # the predictor's learning rate is lr x this (1.0: the paper, one lr for all). SimSiam fixes
    # the predictor's lr; the BYOL paper's appendix discusses a faster predictor.
    predictor_lr_mult: float = 1.0


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 256  # per process
    accumulate: int = 1  # micro-batches per optimizer step
    tau_base: float = 0.99
    tau_final: float = 1.0
    init_target_from_online: bool = True
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    channels_last: bool | None = None  # None: on where measured faster (CUDA, and CPU)
    compile: bool = False
    fuse_views: bool | None = None  # one forward for both views, BN kept per view (None: on CUDA)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    deterministic: bool = False
    threads: int = 0  # torch CPU threads (0: torch's default)
    steps_per_epoch: int = 0  # 0: len(dataset) // global batch
    max_steps: int = 0  # stop after this many optimizer steps (0: all epochs)
    # the schedule's length in optimizer steps (0: train.epochs x steps per epoch); the run
    # ends there, in the middle of an epoch if need be
    total_steps: int = 0
    # wall-clock budget for the whole schedule, e.g. "10m", "90s", "1.5h" ("" or 0: off). The
    # throughput of the first steps fixes the total step count so that the cosine lr and tau
    # end when the budget is spent; the count is stored in the checkpoint (a resume ends at the
    # same step). It replaces train.epochs as the schedule's length.
    time_budget: str = ""
    # a non-finite loss or gradient: stop (raise, keeping the last good checkpoint) or skip
    # that optimizer step (no weight/EMA update; costs one host sync per step)
    nonfinite: str = "stop"
    # before the first step, estimate the memory the model, optimiser and one batch need and
    # stop (naming the numbers and the settings to lower) when the device does not have it
    memory_check: bool = True


@dataclass
class LogConfig:
    out_dir: str = "runs/byol"
    log_every: int = 20  # optimizer steps between loss/lr/tau logs (the only host syncs)
    save_every: int = 10  # epochs between checkpoints (and always at the end)
    keep_last: int = 3
    knn_every: int = 0  # epochs between kNN monitor runs (0: off)
    knn_every_steps: int = 0  # optimizer steps between kNN monitor runs (0: off); both may be on
    knn_k: int = 20
    # the monitor's images, drawn once from train.seed: a bank from data.split and queries from
    # data.val_split (disjoint from the bank when both splits are the same images); 0: all
    knn_bank: int = 10000
    knn_queries: int = 2000
    knn_limit: int = 0  # older name: caps both bank and queries (0: no cap)
    tensorboard: bool = True
    progress: bool = True
    collapse_warn_std: float = 0.01  # warn when per-dim std of normalised z falls below this (healthy ~1/sqrt(proj_dim))


@dataclass
class Config:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


# ----------------------------------------------------------------------------------------------
# loading, overriding, validating

# the torchvision ResNets byol.models.backbones builds (model.arch; timm:<name> also works)
RESNET_NAMES = (
    "resnet10",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
)

CHOICES = {
    "data.source": (
        "folder",
        "unlabeled_folder",
        "idx",
        "fashion_mnist",
        "mnist",
        "cifar10",
        "cifar100",
        "stl10",
        "numpy",
        "synthetic",
    ),
    "optim.name": ("lars", "sgd", "adamw"),
    "train.precision": ("auto", "bf16", "fp16", "fp32"),
    "train.nonfinite": ("stop", "skip"),
    "augment.interpolation": ("bicubic", "bilinear"),
}


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def preset_names() -> list[str]:
    files = resources.files("byol") / "configs"
    return sorted(
        p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml") and p.name[0] != "_"
    )


def _read_yaml(name_or_path: str, chain: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    if not isinstance(name_or_path, str) or not name_or_path or "\0" in name_or_path:
        raise ConfigError(f"config {name_or_path!r} is not a file name or preset name")
    path = Path(name_or_path)
    try:
        is_file = path.suffix in (".yaml", ".yml") and path.exists()
    except OSError:  # e.g. a name too long for the file system
        is_file = False
    if is_file:
        try:
            text, where = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config '{path}' cannot be read ({e}); pass a UTF-8 YAML file") from None
    else:
        stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
        res = resources.files("byol") / "configs" / f"{stem}.yaml"
        if not res.is_file():
            raise ConfigError(
                f"config '{name_or_path}' is neither a YAML file nor a preset. "
                f"Presets: {', '.join(preset_names())}"
            )
        text, where = res.read_text(), f"preset {stem}"
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(e).split())})") from None
    if raw is None or raw == {}:  # every default (ResNet-50, 224 px, batch 256) is never meant
        raise ConfigError(
            f"config '{where}' is empty (no settings): write the settings to change, or start "
            "from a preset, e.g. `byol config show --config fmnist_quick > my.yaml`; "
            "`byol config list` lists the presets"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections")
    base = raw.pop("_base_", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{where}: '_base_' must be a preset name or YAML path, got {base!r}")
        if where in chain or len(chain) > 16:
            raise ConfigError(f"{where}: '_base_' chain {' -> '.join((*chain, where))} is circular")
        try:
            parent, _ = _read_yaml(base, (*chain, where))
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(f"{where}:") or "circular" in msg
                              else f"{where}: '_base_': {msg}") from None
        raw = _deep_merge(parent, raw)
    return raw, where


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, where)
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: '{key}' needs {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, key, where) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise ConfigError(f"{where}: '{key}' must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, raw: dict[str, Any], prefix: str, where: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        key = sorted(unknown, key=str)[0]
        raise ConfigError(
            f"{where}: unknown key '{prefix}{key}'. Allowed keys in "
            f"'{prefix.rstrip('.') or 'top level'}': {', '.join(sorted(names))}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp, value, key = hints[f.name], raw[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: '{key}' must be a mapping of settings")
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else tp()
            base = _to_plain(dataclasses.asdict(default))
            kwargs[f.name] = _build(tp, _deep_merge(base, value), key + ".", where)
        else:
            kwargs[f.name] = _coerce(value, tp, key, where)
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.path=value (e.g. optim.base_lr=0.3)")
    key, text = item.split("=", 1)
    if any(not part.strip() for part in key.split(".")):
        raise ConfigError(f"override '{item}': the key {key.strip()!r} has an empty part; write "
                          "key.path=value (e.g. optim.base_lr=0.3)")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key.strip().split("."), value


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Preset name or YAML path (or None for defaults), then ``key.path=value`` overrides."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if name_or_path:
        raw, where = _read_yaml(name_or_path)
    for item in overrides or []:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[path[-1]] = value
    where_all = where + (" with --set overrides" if overrides else "")
    cfg = _build(Config, raw, "", where_all)
    validate(cfg, where_all)
    return cfg


def config_from_dict(raw: dict[str, Any], where: str = "checkpoint") -> Config:
    cfg = _build(Config, raw, "", where)
    validate(cfg, where)
    return cfg


def validate(cfg: Config, where: str = "config") -> None:
    def bad(key: str, msg: str) -> None:
        raise ConfigError(f"{where}: '{key}' {msg}")

    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            bad(key, f"is {value!r}; allowed: {', '.join(allowed)}")
    t, o, a, m = cfg.train, cfg.optim, cfg.augment, cfg.model
    if t.batch_size < 1:
        bad("train.batch_size", f"must be >= 1, got {t.batch_size}")
    if m.stem_stride not in (1, 2):
        bad("model.stem_stride", f"must be 1 or 2, got {m.stem_stride}")
    if m.last_stage_width < 0:
        bad("model.last_stage_width", f"must be 0 (= 8 x model.width) or more, got "
            f"{m.last_stage_width}")
    if m.last_stage_width and m.arch.startswith("timm:"):
        bad("model.last_stage_width", f"is {m.last_stage_width} but model.arch {m.arch} is a timm "
            "model: only byol's ResNets have it; set it to 0")
    if m.feature_whiten < 0 or m.feature_whiten >= 1:
        bad("model.feature_whiten", f"must be 0 (off) or a shrinkage in (0, 1), e.g. 0.01; got "
            f"{m.feature_whiten}")
    if m.feature_whiten and m.arch.startswith("timm:"):
        bad("model.feature_whiten", f"is {m.feature_whiten} but model.arch {m.arch} is a timm "
            "model: only byol's ResNets have it; set it to 0")
    if m.feature_bn and m.arch.startswith("timm:"):
        bad("model.feature_bn", f"is true but model.arch {m.arch} is a timm model: only byol's "
            "ResNets have it; set it to false")
    if t.accumulate < 1:
        bad("train.accumulate", f"must be >= 1, got {t.accumulate}")
    if t.epochs < 1:
        bad("train.epochs", f"must be >= 1, got {t.epochs}")
    for k in ("steps_per_epoch", "max_steps", "threads", "total_steps"):
        if getattr(t, k) < 0:
            bad(f"train.{k}", "must be >= 0")
    if not 0.0 <= t.tau_base <= 1.0:
        bad("train.tau_base", f"must lie in [0, 1], got {t.tau_base}")
    if not t.tau_base <= t.tau_final <= 1.0:
        bad("train.tau_final", f"must lie in [tau_base, 1], got {t.tau_final}")
    if not (o.base_lr > 0 and math.isfinite(o.base_lr)):
        bad("optim.base_lr", f"must be a positive number, got {o.base_lr}")
    if o.weight_decay < 0:
        bad("optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    if not 0 <= o.momentum < 1:
        bad("optim.momentum", f"must lie in [0, 1), got {o.momentum}")
    if o.warmup_epochs < 0:  # longer than the run: the run is all warmup (short test runs)
        bad("optim.warmup_epochs", f"must be >= 0, got {o.warmup_epochs}")
    if o.eta <= 0:
        bad("optim.eta", "must be > 0")
    if not o.predictor_lr_mult > 0:
        bad("optim.predictor_lr_mult", f"must be > 0, got {o.predictor_lr_mult}")
    try:
        budget = parse_duration(t.time_budget)
    except ValueError as e:
        bad("train.time_budget", str(e))
    if budget and t.total_steps:
        bad("train.total_steps", "and train.time_budget both fix the schedule's length: set one")
    if a.local_crops < 0:
        bad("augment.local_crops", f"must be >= 0, got {a.local_crops}")
    if a.local_size and a.local_size < 8:
        bad("augment.local_size", f"must be 0 (half of image_size) or >= 8 pixels, got {a.local_size}")
    if not 0 < a.local_crop_scale[0] <= a.local_crop_scale[1] <= 1:
        bad("augment.local_crop_scale", f"must satisfy 0 < min <= max <= 1, got {a.local_crop_scale}")
    if a.image_size < 8:
        bad("augment.image_size", f"must be >= 8 pixels, got {a.image_size}")
    if len(a.mean) != len(a.std) or any(s <= 0 for s in a.std):
        bad("augment.std", "needs one positive value per entry of augment.mean")
    for vname in ("view1", "view2"):
        v = getattr(a, vname)
        for pk in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(v, pk)
            if not 0 <= p <= 1:
                bad(f"augment.{vname}.{pk}", f"is a probability: must lie in [0, 1], got {p}")
        lo, hi = v.crop_scale
        if not 0 < lo <= hi <= 1:
            bad(f"augment.{vname}.crop_scale", f"must satisfy 0 < min <= max <= 1, got {v.crop_scale}")
        if not 0 < v.crop_ratio[0] <= v.crop_ratio[1]:
            bad(f"augment.{vname}.crop_ratio", f"must satisfy 0 < min <= max, got {v.crop_ratio}")
        if not 0 < v.blur_sigma[0] <= v.blur_sigma[1]:
            bad(f"augment.{vname}.blur_sigma", f"must satisfy 0 < min <= max, got {v.blur_sigma}")
        for jk in ("brightness", "contrast", "saturation"):
            if getattr(v, jk) < 0:
                bad(f"augment.{vname}.{jk}", "must be >= 0")
        if not 0 <= v.hue <= 0.5:
            bad(f"augment.{vname}.hue", f"must lie in [0, 0.5], got {v.hue}")
    if m.arch not in RESNET_NAMES and not m.arch.startswith("timm:"):
        bad("model.arch", f"is {m.arch!r}; allowed: {', '.join(RESNET_NAMES)} or timm:<model name>")
    if m.in_chans < 1:
        bad("model.in_chans", f"must be >= 1, got {m.in_chans}")
    if len(a.mean) not in (1, m.in_chans):
        bad("augment.mean", f"needs model.in_chans={m.in_chans} values, got {len(a.mean)}")
    for k in ("proj_hidden_dim", "proj_dim", "pred_hidden_dim", "width"):
        if getattr(m, k) < 1:
            bad(f"model.{k}", "must be >= 1")
    for section in ("model", "augment", "data", "optim", "train", "log"):
        for key, value in _leaves(getattr(cfg, section), section):
            if isinstance(value, float) and not math.isfinite(value):
                bad(key, f"must be a finite number, got {value}")
    d, lg = cfg.data, cfg.log
    for key, value, low in (
        ("log.keep_last", lg.keep_last, 1), ("log.log_every", lg.log_every, 1),
        ("log.save_every", lg.save_every, 1), ("log.knn_every", lg.knn_every, 0),
        ("log.knn_k", lg.knn_k, 1), ("log.knn_limit", lg.knn_limit, 0),
        ("log.knn_every_steps", lg.knn_every_steps, 0), ("log.knn_bank", lg.knn_bank, 0),
        ("log.knn_queries", lg.knn_queries, 0),
        ("data.num_workers", d.num_workers, 0), ("data.load_size", d.load_size, 0),
        ("data.synthetic_size", d.synthetic_size, 1), ("data.limit", d.limit, 0),
        ("data.max_memory_gb", d.max_memory_gb, 0), ("optim.final_lr", o.final_lr, 0),
        ("optim.grad_clip", o.grad_clip, 0),
    ):
        if value < low:
            bad(key, f"must be >= {low}, got {value}")
    if not all(0 <= b < 1 for b in o.betas):
        bad("optim.betas", f"must lie in [0, 1), got {o.betas}")
    for vname in ("view1", "view2"):
        if getattr(a, vname).blur_kernel_frac <= 0:
            bad(f"augment.{vname}.blur_kernel_frac", "must be > 0")


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration such as ``"10m"``, ``"90s"``, ``"1.5h"`` or ``600``; 0 for ``""``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        s = str(text).strip().lower()
        if s in ("", "0", "off", "none"):
            return 0.0
        num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = s[len(num):]
        try:
            value = float(num)
        except ValueError:
            value = float("nan")
        if unit not in _UNITS or not math.isfinite(value):
            raise ValueError(f"is {text!r}: write a duration such as 10m, 90s or 1.5h (or '' for off)")
    if value < 0:
        raise ValueError(f"is {text!r}: a duration must be >= 0")
    return value * _UNITS[unit]


def _leaves(obj: Any, prefix: str):
    """(dotted key, value) of every setting under a config section, tuples flattened."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, key)
        elif isinstance(value, tuple):
            yield from ((key, v) for v in value)
        else:
            yield key, value


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
