"""``byol transfer detection|segmentation|presets``: parse the arguments and run
:mod:`byol.transfer`.

:func:`add_commands` registers ``transfer`` on the main parser's subparsers. Results are byol
evaluation records (protocols ``detection`` / ``segmentation``), printed one line per model and
written with ``--json`` / ``--out-dir`` like ``byol eval``. ``--baselines random`` fine-tunes a
random-init backbone of the same architecture the same way, in the same command.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from .common import RAW, command, help_command, model_args, write_records

# the choices, here so that registering the commands imports no torchvision detection code
# (tests check them against byol.transfer.detection / segmentation)
DETECTION_MODELS = ("faster_rcnn_c4", "faster_rcnn_fpn", "mask_rcnn_fpn")
DETECTION_PRESET_NAMES = ("voc0712_24k", "coco_1x", "cpu_small")
SEGMENTATION_PRESET_NAMES = ("voc12aug_20k", "cpu_small")
EVALS = ("voc", "coco", "both")
log = logging.getLogger("byol.transfer")

DET_EPILOG = """examples:
  # MoCo's VOC protocol (Faster R-CNN R50-C4, VOC07+12 trainval -> VOC07 test), 8 GPUs
  torchrun --nproc_per_node 8 -m byol transfer detection --checkpoint byol_r50.pt \\
      --preset voc0712_24k --data /data/VOCdevkit/VOC2007 /data/VOCdevkit/VOC2012 \\
      --test-data /data/VOCdevkit/VOC2007 --device cuda --json runs/det_voc.json
  # COCO Mask R-CNN R50-FPN 1x
  torchrun --nproc_per_node 8 -m byol transfer detection --checkpoint byol_r50.pt \\
      --preset coco_1x --data /data/coco --device cuda --out-dir runs/in1k/eval
  # a CPU-sized run next to the random-init baseline
  byol transfer detection --checkpoint runs/fmnist_quick/last.pt --preset cpu_small \\
      --data runs/fmnist_det --baselines random --json runs/det.json
  byol transfer detection --baseline random --arch resnet18 --preset cpu_small --data DIR
"""
SEG_EPILOG = """examples:
  # mmseg's FCN-D8 VOC12aug protocol (512x512 crops, 20k iterations, batch 16)
  torchrun --nproc_per_node 4 -m byol transfer segmentation --checkpoint byol_r50.pt \\
      --preset voc12aug_20k --data /data/VOCdevkit/VOC2012 --device cuda
  byol transfer segmentation --checkpoint runs/fmnist_quick/last.pt --preset cpu_small \\
      --data runs/fmnist_seg --baselines random --json runs/seg.json
"""


# ---------------------------------------------------------------------------------------------
# arguments


def _model_args(p: argparse.ArgumentParser) -> None:
    g = model_args(p, verb="fine-tune", baselines=("random", "torchvision"), in_chans_default="3",
                   label_default="byol / random-init")
    g.add_argument("--baselines", nargs="*", choices=("random",), default=[],
                   help="also fine-tune these baselines the same way (e.g. --baselines random)")


def _schedule_args(p: argparse.ArgumentParser, presets: tuple[str, ...]) -> argparse._ArgumentGroup:
    g = p.add_argument_group("protocol (preset values unless given)")
    g.add_argument("--preset", default="cpu_small",
                   help=f"{', '.join(presets)} or a YAML file of settings (optionally "
                   "'base: <preset>'); `byol transfer presets` lists them (default cpu_small)")
    g.add_argument("--iterations", type=int, help="training iterations (steps scale along)")
    g.add_argument("--batch-size", type=int,
                   help="images per iteration over all processes (lr scales linearly)")
    g.add_argument("--lr", type=float, help="base learning rate")
    g.add_argument("--norm", choices=("bn", "syncbn", "frozen"),
                   help="backbone BatchNorm: trainable, SyncBN when distributed, or frozen")
    g.add_argument("--trainable-layers", type=int, help="0-5 backbone stages to train")
    g.add_argument("--test-size", type=int, help="test-time short side (0: native size)")
    g.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override any preset setting, e.g. --set warmup_iters=10 (repeatable)")
    return g


def _run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="cpu, cuda or auto")
    g.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers (default: 0 on CPU, up to 8 on CUDA)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--log-every", type=int, default=20, help="iterations between log lines")
    g.add_argument("--json", metavar="PATH", help="write the result record(s) to this file")
    g.add_argument("--out-dir", metavar="DIR",
                   help="also write <protocol>_<model>.json here (RUN_DIR/eval for byol report)")
    g.add_argument("--save", metavar="PATH",
                   help="save the fine-tuned model (baselines get a -<label> suffix)")
    g.add_argument("--quiet", "-q", action="store_true", help="no per-iteration log lines")


def add_commands(subparsers: Any) -> None:
    """Register ``transfer detection``, ``transfer segmentation`` and ``transfer presets``."""
    tr = subparsers.add_parser(
        "transfer", help="fine-tune on detection (Faster/Mask R-CNN) or segmentation (FCN)",
        formatter_class=RAW,
        epilog="examples:\n  byol transfer detection --checkpoint CKPT --preset voc0712_24k "
        "--data VOC2007 VOC2012 --test-data VOC2007\n  byol transfer segmentation --checkpoint "
        "CKPT --preset voc12aug_20k --data VOC2012\n  byol transfer presets\n")
    sub = tr.add_subparsers(dest="transfer_command", metavar="TASK")

    p = sub.add_parser("detection", help="Faster R-CNN C4/FPN or Mask R-CNN FPN; COCO mAP, VOC AP",
                       description="Fine-tune a detector with the BYOL backbone and evaluate it.",
                       epilog=DET_EPILOG, formatter_class=RAW)
    _model_args(p)
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", metavar="PATH", required=True,
                   help="training VOC folder(s) (VOC2007 VOC2012: their union), a COCO json, or a "
                   "COCO root with annotations/instances_<split>.json")
    g.add_argument("--train-split", help="default: the preset's (trainval, train2017, train)")
    g.add_argument("--test-data", metavar="PATH", help="evaluation data (default: first --data)")
    g.add_argument("--test-split", help="default: the preset's (test, val2017, test)")
    g.add_argument("--images", metavar="DIR", help="image folder of a --data COCO json")
    g.add_argument("--test-images", metavar="DIR", help="image folder of a --test-data COCO json")
    g.add_argument("--classes", help="VOC class order: comma list or a file with one per line")
    g.add_argument("--limit", type=int, default=0, help="first N training images (0: all)")
    g.add_argument("--test-limit", type=int, default=0, help="first N test images (0: all)")
    g = _schedule_args(p, DETECTION_PRESET_NAMES)
    g.add_argument("--model", choices=DETECTION_MODELS, help="detector (preset's by default)")
    g.add_argument("--steps", type=int, nargs="+", help="lr x0.1 iterations")
    g.add_argument("--warmup-iters", type=int, help="linear warmup iterations")
    g.add_argument("--min-size", type=int, nargs="+",
                   help="training short side(s); several = multi-scale (one picked per image)")
    g.add_argument("--max-size", type=int, help="longest side cap")
    g.add_argument("--eval", choices=EVALS, help="COCO mAP, VOC AP (11-point) or both")
    g.add_argument("--fpn-channels", type=int, help="FPN width (256 in the paper setting)")
    _run_args(p)
    command(p, cmd_detection, "byol transfer detection")

    p = sub.add_parser("segmentation", help="FCN on a dilated ResNet (OS 8); mIoU",
                       description="Fine-tune an FCN with the BYOL backbone and evaluate mIoU.",
                       epilog=SEG_EPILOG, formatter_class=RAW)
    _model_args(p)
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="ROOT", required=True,
                   help="VOC-style folder: JPEGImages, SegmentationClass, ImageSets/Segmentation")
    g.add_argument("--test-data", metavar="ROOT", help="evaluation folder (default: --data)")
    g.add_argument("--train-split", help="default: the preset's (trainaug, train)")
    g.add_argument("--test-split", help="default: the preset's (val, test)")
    g.add_argument("--mask-dir", help="label folder (SegmentationClass, SegmentationClassAug)")
    g.add_argument("--test-mask-dir", help="label folder of the test split (default "
                   "SegmentationClass when --mask-dir is the Aug folder, else --mask-dir)")
    g.add_argument("--num-classes", type=int,
                   help="classes incl. background (default: the preset's, 1 + the lines of "
                   "ROOT/class_names.txt, or 1 + the largest label)")
    g.add_argument("--limit", type=int, default=0, help="first N training images (0: all)")
    g.add_argument("--test-limit", type=int, default=0, help="first N test images (0: all)")
    g = _schedule_args(p, SEGMENTATION_PRESET_NAMES)
    g.add_argument("--crop-size", type=int, help="training crop side")
    g.add_argument("--base-size", type=int, help="training short side before the random ratio")
    g.add_argument("--output-stride", type=int, choices=(8, 16, 32), help="dilated ResNet stride")
    _run_args(p)
    command(p, cmd_segmentation, "byol transfer segmentation")

    p = sub.add_parser("presets", help="print the protocol presets as YAML",
                       epilog="example:\n  byol transfer presets > my_protocol.yaml",
                       formatter_class=RAW)
    command(p, cmd_presets, "byol transfer presets")

    command(tr, help_command(tr))


# ---------------------------------------------------------------------------------------------
# running


def _overrides(args: argparse.Namespace, keys: dict[str, str]) -> dict[str, Any]:
    from ..transfer.common import parse_set

    ov = parse_set(args.set)
    for attr, key in keys.items():
        v = getattr(args, attr, None)
        if v is not None:
            ov[key] = v
    return ov


def _specs(args: argparse.Namespace):
    """The model(s) to fine-tune, loaded lazily (each run changes its backbone in place)."""
    from ..transfer.common import load_transfer_backbone

    common = dict(which=args.which, arch=args.arch, in_chans=args.in_chans,
                  small_stem=args.small_stem, width=args.width, seed=args.seed, trust=args.trust)
    first = load_transfer_backbone(args.checkpoint, args.baseline, **common)
    if args.label:
        first.label = args.label
    yield first
    for b in args.baselines:
        if b != args.baseline:
            m = load_transfer_backbone(args.checkpoint, b, **common)
            # a baseline normalises inputs as the checkpoint's model does, so only weights differ
            m.mean, m.std = first.mean, first.std
            yield m


def _save_path(args: argparse.Namespace, label: str, first: bool) -> str | None:
    if not args.save or first:
        return args.save
    p = Path(args.save)
    return str(p.with_name(f"{p.stem}-{label}{p.suffix}"))


def _setup(args: argparse.Namespace):
    import torch

    from ..distributed import init_distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        info, device = init_distributed(args.device)
    except RuntimeError as e:
        from ..transfer.datasets import TransferError

        raise TransferError(f"--device {args.device}: {e}") from None
    return info, device


def _classes(text: str | None) -> list[str] | None:
    if not text:
        return None
    p = Path(text)
    if p.is_file():
        return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    return [c.strip() for c in text.split(",") if c.strip()]


def cmd_detection(args: argparse.Namespace) -> int:
    from ..transfer.common import resolve_settings
    from ..transfer.datasets import TransferError, concat_sets, read_class_names, read_detection
    from ..transfer.detection import DETECTION_PRESETS, run_detection, summary

    s = resolve_settings(DETECTION_PRESETS, args.preset, _overrides(args, {
        "model": "model", "iterations": "iterations", "batch_size": "batch_size", "lr": "lr",
        "norm": "norm", "trainable_layers": "trainable_layers", "test_size": "test_size",
        "steps": "steps", "warmup_iters": "warmup_iters", "min_size": "min_size",
        "max_size": "max_size", "eval": "eval", "fpn_channels": "fpn_channels",
        "train_split": "train_split", "test_split": "test_split"}))
    info, device = _setup(args)
    t0 = time.perf_counter()
    classes = _classes(args.classes) or read_class_names(args.data[0])
    sets = []
    for path in args.data:
        sets.append(read_detection(path, s["train_split"], images=args.images,
                                   classes=sets[0].classes if sets else classes))
    train = concat_sets(sets).subset(args.limit)
    test_path = args.test_data or args.data[0]
    test = read_detection(test_path, s["test_split"], classes=train.classes,
                          images=args.test_images).subset(args.test_limit)
    if test.classes != train.classes:
        raise TransferError(f"--test-data {test_path} has classes {test.classes[:5]}... but the "
                            f"training data {train.classes[:5]}...; they must be the same")
    data_info = {"source": train.format, "path": " ".join(str(d) for d in args.data),
                 "train": s["train_split"], "test_path": str(test_path), "test": s["test_split"],
                 "num_train": len(train), "num_test": len(test),
                 "num_classes": len(train.classes)}
    log.info("data read in %.1f s: %d train / %d test images, %d classes",
             time.perf_counter() - t0, len(train), len(test), len(train.classes))
    return _run_models(args, summary, lambda spec, save: run_detection(
        spec, train, test, s, device=device, seed=args.seed or 0, workers=args.workers,
        log_every=args.log_every, data_info=data_info, save=save, rank=info.rank,
        world=info.world_size, progress=not args.quiet))


def cmd_segmentation(args: argparse.Namespace) -> int:
    from ..transfer.common import resolve_settings
    from ..transfer.datasets import read_class_names, read_voc_segmentation
    from ..transfer.segmentation import SEGMENTATION_PRESETS, run_segmentation, summary

    s = resolve_settings(SEGMENTATION_PRESETS, args.preset, _overrides(args, {
        "iterations": "iterations", "batch_size": "batch_size", "lr": "lr", "norm": "norm",
        "trainable_layers": "trainable_layers", "test_size": "test_size",
        "crop_size": "crop_size", "base_size": "base_size", "output_stride": "output_stride",
        "num_classes": "num_classes", "train_split": "train_split",
        "test_split": "test_split", "mask_dir": "mask_dir"}))
    if s.get("test_size") == 0:
        s["test_size"] = None
    info, device = _setup(args)
    t0 = time.perf_counter()
    train = read_voc_segmentation(args.data, s["train_split"],
                                  mask_dir=s["mask_dir"]).subset(args.limit)
    test_mask = args.test_mask_dir or (
        "SegmentationClass" if s["mask_dir"].endswith("Aug") else s["mask_dir"])
    test_root = args.test_data or args.data
    test = read_voc_segmentation(test_root, s["test_split"],
                                 mask_dir=test_mask).subset(args.test_limit)
    objects = read_class_names(args.data)  # object classes, as for detection (no background)
    names = ["background", *objects] if objects else None
    if names is None and s.get("num_classes") == 21:
        from ..transfer.datasets import VOC_SEG_CLASSES

        names = list(VOC_SEG_CLASSES)
    data_info = {"source": "voc-seg", "path": str(args.data), "train": s["train_split"],
                 "test_path": str(test_root), "test": s["test_split"], "num_train": len(train),
                 "num_test": len(test)}
    log.info("data read in %.1f s: %d train / %d test images", time.perf_counter() - t0,
             len(train), len(test))
    return _run_models(args, summary, lambda spec, save: run_segmentation(
        spec, train, test, s, device=device, seed=args.seed or 0, workers=args.workers,
        log_every=args.log_every, data_info=data_info, class_names=names, save=save,
        rank=info.rank, world=info.world_size, progress=not args.quiet))


def _run_models(args: argparse.Namespace, summary, run_one) -> int:
    """Run ``run_one(spec, save_path)`` for the checkpoint and each baseline; rank 0 prints each
    record's summary line and writes them all; the process group is always torn down."""
    from ..distributed import barrier, cleanup

    records = []
    try:
        for k, spec in enumerate(_specs(args)):
            rec = run_one(spec, _save_path(args, spec.label, k == 0))
            if rec is not None:
                print(summary(rec), flush=True)
                records.append(rec)
            barrier()  # other ranks wait for rank 0's evaluation
    finally:
        cleanup()
    if records:
        write_records(args, records)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:  # noqa: ARG001
    from ..transfer.common import dump_presets
    from ..transfer.detection import DETECTION_PRESETS
    from ..transfer.segmentation import SEGMENTATION_PRESETS

    print("# byol transfer detection --preset NAME")
    print(dump_presets(DETECTION_PRESETS), end="")
    print("\n# byol transfer segmentation --preset NAME")
    print(dump_presets(SEGMENTATION_PRESETS), end="")
    return 0
