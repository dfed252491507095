"""A complete config from a data path: ``byol pretrain --data PATH`` with no config.

:func:`auto_config` detects the reader, splits, image size and channels
(:func:`byol.data.detect.detect_data`), computes the normalisation statistics from a bounded
sample (:func:`byol.data.stats.image_stats`), picks the recipe by device and dataset size
(:func:`byol.recipes.choose_recipe`) and returns the :class:`~byol.config.Config` with the
reasons, which :func:`choice_block` prints and the run folder's ``config.yaml`` keeps as a
comment. :func:`fit_preset_to_data` is the counterpart when a preset *is* named with another
dataset: it keeps the preset, points it at the data, and warns when the preset's statistics are
not the data's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .data.detect import Detected, detect_data, detect_test_data
from .errors import DataError
from .recipes import choose_recipe

log = logging.getLogger("byol")

MAX_SIDE = 224  # larger images are trained at this side
STATS_TOLERANCE = 0.05  # a preset's mean/std this far from the data's gets a warning


@dataclass
class AutoChoice:
    config: Config
    detected: Detected
    lines: list[tuple[str, str]] = field(default_factory=list)  # (what was chosen, why)


def _training_side(side: int) -> int:
    """The training crop: the images' own side up to :data:`MAX_SIDE`, a multiple of 4."""
    return max(8, min(MAX_SIDE, side) // 4 * 4)


def _open_sample_source(d: Detected, side: int):
    from .data import open_source

    return open_source(d.source, d.path, d.split, image_size=side, in_memory=False)


def _device_type(device: str) -> str:
    from .runtime import resolve_device

    try:
        return resolve_device(device).type
    except RuntimeError as e:
        raise DataError(str(e)) from None


def auto_config(data: str, *, test_data: str | None = None, device: str = "auto",
                overrides: list[str] | tuple[str, ...] = (), stats_sample: int = 2000,
                out_dir: str | None = None) -> AutoChoice:
    """The config of a no-config run on ``data`` (see the module docstring); ``overrides``
    (``key=value``) apply last. Setting ``train.epochs`` or ``train.total_steps`` there turns
    the CPU recipe's time budget off unless ``train.time_budget`` is set too."""
    from .data.stats import image_stats

    d = detect_data(data)
    lines: list[tuple[str, str]] = [(f"data.source={d.source} data.path={d.path}", d.why)]
    sets: dict[str, Any] = {"data.source": d.source, "data.path": d.path,
                            "data.split": d.split, "data.val_split": d.val_split}
    if test_data:
        _, tpath = detect_test_data(test_data, d)
        d.val_path, d.has_test = tpath, True
        lines.append((f"data.val_path={tpath}", "--test-data: the kNN monitor's queries"))
    if d.val_path:
        sets["data.val_path"] = d.val_path
    if not d.has_test and d.labeled:
        lines.append(("no separate test set", "the kNN monitor holds its queries out of the "
                      "bank; for evaluations pass --test-data PATH"))
    side = _training_side(d.side)
    dev = _device_type(device)
    sets.update({"augment.image_size": side, "train.device": device})
    lines.append((f"augment.image_size={side} model.in_chans={d.channels}",
                  f"{d.num_images} images, typical side {d.side} px, "
                  f"{'grayscale' if d.channels == 1 else 'colour'}"
                  + (f" (trained at {side} px)" if side != d.side else "")))
    sample = _open_sample_source(d, side)
    mean, std, used = image_stats(sample, max_images=stats_sample, side=min(side, 64),
                                  channels=d.channels)
    sets.update({"augment.mean": list(mean), "augment.std": list(std)})
    lines.append((f"augment.mean={list(mean)} augment.std={list(std)}",
                  f"computed from {used} of the {len(sample)} images"))
    recipe, reasons = choose_recipe(dev, d.num_images, side, d.channels, labeled=d.labeled)
    sets.update(recipe)
    lines += [("recipe", r) for r in reasons]
    lines.append(("augment.view1/2.flip_p=0.5", "mirrored images count as the same image; set "
                  "augment.view1.flip_p=0 and augment.view2.flip_p=0 for text, digits or "
                  "anything whose mirror image differs"))
    sets["name"] = "auto"
    sets["log.out_dir"] = out_dir or f"runs/{Path(d.path).stem or 'byol'}"
    items = [f"{k}={_yaml_value(v)}" for k, v in sets.items()]
    user_keys = {o.split("=", 1)[0].strip() for o in overrides}
    if user_keys & {"train.epochs", "train.total_steps"} and "train.time_budget" not in user_keys:
        items.append("train.time_budget=")
    if overrides:
        lines.append(("--set / flags", ", ".join(overrides)))
    cfg = load_config(None, items + list(overrides))
    return AutoChoice(cfg, d, lines)


def _yaml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_yaml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return v
    return repr(v)


def choice_block(choice: AutoChoice, header: str = "no config given: chosen from the data"
                 ) -> str:
    """The printed block: what was chosen and why, one line each."""
    out = [f"byol pretrain: {header}"]
    for what, why in choice.lines:
        out.append(f"  {what}: {why}" if what in ("recipe", "--set / flags")
                   else f"  {what}\n      {why}")
    c = choice.config
    out.append(f"  run folder {c.log.out_dir}; the whole config is in {c.log.out_dir}/config.yaml "
               "(edit it and pass --config to change anything)")
    return "\n".join(out)


def as_comment(text: str) -> str:
    return "".join(f"# {line}\n" for line in text.splitlines())


def fit_preset_to_data(cfg: Config, preset: str, data: str, *, source_given: bool = False,
                       stats_sample: int = 500) -> tuple[Config, list[str]]:
    """A named preset run on ``data``: the reader is detected unless ``--source`` was given
    (or the preset's own reader reads it), and a warning names ``augment.mean`` /
    ``augment.std`` when the preset's statistics are not those of the data."""
    from .config import config_from_dict
    from .data import open_source
    from .data.stats import image_stats

    notes: list[str] = []
    own = load_config(preset)
    if Path(data).expanduser().resolve() == Path(own.data.path or ".").expanduser().resolve():
        return cfg, notes  # the preset's own data: its statistics apply
    raw = cfg.to_dict()
    if not source_given:
        same_reader = own.data.source in ("fashion_mnist", "mnist", "cifar10", "cifar100",
                                          "stl10") and Path(data).is_dir()
        d = detect_data(data)
        if not (same_reader and d.source in (own.data.source, "idx")):
            raw["data"].update(source=d.source, path=d.path, split=d.split,
                               val_split=d.val_split, val_path=d.val_path)
            notes.append(f"--data {data}: read as data.source={d.source} ({d.why})")
    new = config_from_dict(raw, f"preset {preset} with --data")
    a = new.augment
    src = open_source(new.data.source, new.data.path, new.data.split,
                      image_size=a.image_size, in_memory=False,
                      synthetic_size=new.data.synthetic_size)
    mean, std, used = image_stats(src, max_images=stats_sample, side=min(a.image_size, 64),
                                  channels=new.model.in_chans if new.model.in_chans in (1, 3)
                                  else None)
    if len(mean) != len(a.mean) or max(
            max(abs(x - y) for x, y in zip(mean, a.mean)),
            max(abs(x - y) for x, y in zip(std, a.std))) > STATS_TOLERANCE:
        notes.append(
            f"preset {preset}'s augment.mean={list(a.mean)} augment.std={list(a.std)} were "
            f"measured on its own data ({own.data.source}); {used} images of yours give "
            f"mean={list(mean)} std={list(std)}: override with --set augment.mean="
            f"{_yaml_value(list(mean))} --set augment.std={_yaml_value(list(std))}")
    flips = (a.view1.flip_p, a.view2.flip_p)
    if any(flips):
        notes.append(f"preset {preset} flips images horizontally (augment.view1/2.flip_p="
                     f"{flips[0]}); set both to 0 if a mirrored image of yours is not the same")
    return new, notes
