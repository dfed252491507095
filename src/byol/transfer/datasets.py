"""Readers for the transfer benchmarks' data: COCO json and Pascal VOC devkit folders.

Detection (:func:`read_detection`) accepts

* a **VOC folder** (``VOCdevkit/VOC2007``)::

      ROOT/Annotations/<id>.xml          objects: name, bndbox (1-based pixels), difficult
      ROOT/JPEGImages/<id>.jpg
      ROOT/ImageSets/Main/<split>.txt    one <id> per line
      ROOT/SegmentationObject/<id>.png   instance masks (only for Mask R-CNN): value k = the
                                         k-th <object> of the xml, 255 = void

* a **COCO json** file (``annotations/instances_val2017.json``; images in ``--images`` or, by
  COCO's layout, ``<json folder>/../val2017``), or a COCO root with
  ``annotations/instances_<split>.json`` and ``<split>/``.

Boxes are held as float ``[x0, y0, x1, y1]`` in continuous 0-based pixel coordinates: COCO's
``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]`` and VOC's inclusive 1-based
``xmin..xmax`` becomes ``[xmin - 1, ymin - 1, xmax, ymax]`` (detectron2's convention), so a box
covering pixels 0..9 is ``[0, 0, 10, 10]`` in both formats.

Segmentation (:func:`read_voc_segmentation`) reads ``JPEGImages`` + ``SegmentationClass``
(palette or grayscale index PNGs, 255 = ignore) + ``ImageSets/Segmentation/<split>.txt``.

Every layout problem raises :class:`TransferError` with the expected layout in the message.
"""

from __future__ import annotations

import json
import math
import random
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import TransferError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOC_SEG_CLASSES = ("background",) + VOC_CLASSES
IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")

VOC_LAYOUT = ("ROOT/Annotations/<id>.xml, ROOT/JPEGImages/<id>.jpg and "
              "ROOT/ImageSets/Main/<split>.txt (a VOCdevkit/VOC2007-style folder)")
COCO_LAYOUT = ("a COCO json file (images, annotations, categories), or a folder with "
               "annotations/instances_<split>.json and the images in <split>/")
SEG_LAYOUT = ("ROOT/JPEGImages/<id>.jpg, ROOT/SegmentationClass/<id>.png (palette or grayscale "
              "class indices, 255 = ignore) and ROOT/ImageSets/Segmentation/<split>.txt")


# ---------------------------------------------------------------------------------------------
# records


@dataclass
class DetRecord:
    """One image and its objects. ``labels`` are 0-based indices into the set's ``classes``."""

    image: Path
    image_id: int
    width: int
    height: int
    boxes: np.ndarray  # float32 [N, 4] xyxy
    labels: np.ndarray  # int64 [N]
    iscrowd: np.ndarray  # bool [N] (COCO crowd regions; ignored in training and evaluation)
    difficult: np.ndarray  # bool [N] (VOC 'difficult'; trained on, ignored in evaluation)
    areas: np.ndarray  # float64 [N] (COCO: annotation area; VOC: box area)
    segms: list[Any] | None = None  # COCO polygons / RLE per object
    instance_png: Path | None = None  # VOC SegmentationObject png


@dataclass
class DetectionSet:
    """A detection split: records, class names, and where it came from."""

    records: list[DetRecord]
    classes: list[str]
    format: str  # "voc" | "coco"
    source: str
    split: str
    cat_ids: list[int] = field(default_factory=list)  # COCO category ids per class index

    def __len__(self) -> int:
        return len(self.records)

    @property
    def has_masks(self) -> bool:
        return bool(self.records) and all(
            r.segms is not None or r.instance_png is not None for r in self.records)

    def masks(self, i: int) -> np.ndarray:
        """uint8 [N, H, W] instance masks of record ``i`` (in its object order)."""
        r = self.records[i]
        if r.segms is not None:
            return np.stack([segm_to_mask(s, r.height, r.width) for s in r.segms]) if r.segms \
                else np.zeros((0, r.height, r.width), np.uint8)
        if r.instance_png is not None:
            inst = read_index_png(r.instance_png)
            if inst.shape != (r.height, r.width):
                raise TransferError(f"{r.instance_png}: size {inst.shape[::-1]} differs from its "
                                    f"image's {(r.width, r.height)}")
            return np.stack([(inst == k + 1) for k in range(len(r.boxes))]).astype(np.uint8) \
                if len(r.boxes) else np.zeros((0, r.height, r.width), np.uint8)
        raise TransferError(f"{self.source}: no instance masks for {r.image.name}; Mask R-CNN "
                            "needs COCO segmentations or VOC SegmentationObject/<id>.png")

    def subset(self, n: int) -> DetectionSet:
        """The first ``n`` records (all when ``n`` is 0)."""
        if not n or n >= len(self.records):
            return self
        return DetectionSet(self.records[:n], self.classes, self.format, self.source,
                            self.split, self.cat_ids)

    def ground_truth(self, i: int, with_masks: bool = False) -> dict[str, Any]:
        """Record ``i`` as the metrics' ground truth dict."""
        from .metrics import crop_mask

        r = self.records[i]
        gt = {"boxes": r.boxes, "labels": r.labels, "iscrowd": r.iscrowd,
              "difficult": r.difficult, "areas": r.areas, "size": (r.height, r.width)}
        if with_masks:
            gt["masks"] = [crop_mask(m) for m in self.masks(i)]
        return gt


def concat_sets(sets: Sequence[DetectionSet]) -> DetectionSet:
    """VOC07 trainval + VOC12 trainval style union (same classes required)."""
    if len(sets) == 1:
        return sets[0]
    first = sets[0]
    for s in sets[1:]:
        if s.classes != first.classes:
            raise TransferError(f"{s.source} has classes {s.classes[:5]}... but {first.source} "
                                f"has {first.classes[:5]}...; pass the same --classes to both")
    records: list[DetRecord] = []
    for k, s in enumerate(sets):
        for r in s.records:
            # image ids must stay unique across the union
            records.append(DetRecord(**{**r.__dict__, "image_id": k * 10**9 + r.image_id}))
    return DetectionSet(records, first.classes, first.format,
                        "+".join(s.source for s in sets), "+".join(s.split for s in sets),
                        first.cat_ids)


# ---------------------------------------------------------------------------------------------
# format detection


def detect_format(path: str | Path, split: str) -> str:
    """``voc`` or ``coco`` for a detection path; :class:`TransferError` when neither fits."""
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        return "coco"
    if p.is_dir():
        if (p / "Annotations").is_dir():
            return "voc"
        if (p / "annotations" / f"instances_{split}.json").is_file():
            return "coco"
        if (p / "VOC2007").is_dir() or (p / "VOC2012").is_dir():
            raise TransferError(f"--data {p} is a VOCdevkit folder: give its VOC2007 (and "
                                f"VOC2012) subfolder(s), e.g. --data {p / 'VOC2007'}")
    if not p.exists():
        raise TransferError(f"--data {p}: no such file or folder")
    raise TransferError(f"--data {p} is neither a VOC folder ({VOC_LAYOUT}) nor COCO "
                        f"({COCO_LAYOUT}) for split '{split}'")


def read_detection(path: str | Path, split: str, *, classes: Sequence[str] | None = None,
                   images: str | Path | None = None) -> DetectionSet:
    """A detection split from a VOC folder or COCO json (format detected from the layout)."""
    fmt = detect_format(path, split)
    if fmt == "voc":
        return read_voc_detection(path, split, classes=classes)
    p = Path(path)
    if p.is_dir():
        return read_coco(p / "annotations" / f"instances_{split}.json",
                         images or p / split, split=split)
    return read_coco(p, images, split=split)


# ---------------------------------------------------------------------------------------------
# VOC


def _split_ids(root: Path, sub: str, split: str, layout: str) -> list[str]:
    f = root / "ImageSets" / sub / f"{split}.txt"
    if not f.is_file():
        have = sorted(x.stem for x in (root / "ImageSets" / sub).glob("*.txt")) \
            if (root / "ImageSets" / sub).is_dir() else []
        hint = f"; splits there: {', '.join(have[:10])}" if have else ""
        raise TransferError(f"{root}: missing ImageSets/{sub}/{split}.txt{hint}. "
                            f"Expected layout: {layout}")
    ids = [line.split()[0] for line in f.read_text().splitlines() if line.strip()]
    if not ids:
        raise TransferError(f"{f} lists no images")
    return ids


def _find_image(folder: Path, stem: str) -> Path | None:
    for suf in IMAGE_SUFFIXES:
        p = folder / f"{stem}{suf}"
        if p.is_file():
            return p
    return None


def _xml_int(node: ET.Element | None, tag: str, default: int | None = None) -> int | None:
    if node is None:
        return default
    t = node.find(tag)
    if t is None or t.text is None:
        return default
    return int(float(t.text))


def parse_voc_xml(path: Path) -> dict[str, Any]:
    """{filename, width, height, objects: [{name, box (xyxy, 0-based), difficult}]}."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise TransferError(f"{path}: not a readable VOC annotation ({e})") from None
    size = root.find("size")
    out: dict[str, Any] = {"filename": (root.findtext("filename") or "").strip(),
                           "width": _xml_int(size, "width", 0),
                           "height": _xml_int(size, "height", 0), "objects": []}
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if not name or bb is None:
            raise TransferError(f"{path}: every <object> needs <name> and <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(t) or "nan")
                                      for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise TransferError(f"{path}: non-numeric <bndbox> of '{name}'") from None
        if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
            raise TransferError(f"{path}: <bndbox> of '{name}' lacks xmin/ymin/xmax/ymax")
        out["objects"].append({"name": name, "box": [xmin - 1.0, ymin - 1.0, xmax, ymax],
                               "difficult": bool(_xml_int(obj, "difficult", 0))})
    return out


def read_voc_detection(root: str | Path, split: str, *,
                       classes: Sequence[str] | None = None) -> DetectionSet:
    """A VOC detection split. ``classes``: the label order (default: VOC's 20 classes when every
    name is one of them, else the sorted names found)."""
    root = Path(root)
    missing = [d for d in ("Annotations", "JPEGImages") if not (root / d).is_dir()]
    if missing:
        raise TransferError(f"{root}: no {' or '.join(missing)} folder. "
                            f"Expected layout: {VOC_LAYOUT}")
    ids = _split_ids(root, "Main", split, VOC_LAYOUT)
    parsed = []
    for i in ids:
        xml = root / "Annotations" / f"{i}.xml"
        if not xml.is_file():
            raise TransferError(f"{root}: ImageSets/Main/{split}.txt lists '{i}' but "
                                f"Annotations/{i}.xml is missing")
        parsed.append(parse_voc_xml(xml))
    names = sorted({o["name"] for p in parsed for o in p["objects"]})
    if classes is None:
        classes = list(VOC_CLASSES) if set(names) <= set(VOC_CLASSES) else names
    index = {c: k for k, c in enumerate(classes)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise TransferError(f"{root} ({split}): classes {unknown[:5]} are not among the "
                            f"{len(classes)} training classes; pass --classes or fix the xml")
    seg_obj = root / "SegmentationObject"
    records = []
    for k, (i, p) in enumerate(zip(ids, parsed)):
        img = _find_image(root / "JPEGImages", i)
        if img is None and p["filename"]:
            cand = root / "JPEGImages" / p["filename"]
            img = cand if cand.is_file() else None
        if img is None:
            raise TransferError(f"{root}: no JPEGImages/{i}.jpg for Annotations/{i}.xml")
        w, h = p["width"], p["height"]
        if not w or not h:
            with Image.open(img) as im:
                w, h = im.size
        objs = p["objects"]
        boxes = np.array([o["box"] for o in objs], np.float32).reshape(-1, 4)
        png = seg_obj / f"{i}.png"
        records.append(DetRecord(
            image=img, image_id=k, width=int(w), height=int(h), boxes=boxes,
            labels=np.array([index[o["name"]] for o in objs], np.int64),
            iscrowd=np.zeros(len(objs), bool),
            difficult=np.array([o["difficult"] for o in objs], bool),
            areas=((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float64),
            instance_png=png if png.is_file() else None))
    return DetectionSet(records, list(classes), "voc", str(root), split)


# ---------------------------------------------------------------------------------------------
# COCO


def read_coco(json_path: str | Path, images: str | Path | None = None, *,
              split: str = "") -> DetectionSet:
    """A COCO instances file. Classes follow the sorted category ids; ``cat_ids`` keeps them."""
    jp = Path(json_path)
    if not jp.is_file():
        raise TransferError(f"{jp}: no such COCO json. Expected {COCO_LAYOUT}")
    try:
        doc = json.loads(jp.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TransferError(f"{jp}: not readable JSON ({e})") from None
    if not isinstance(doc, dict) or not all(k in doc for k in ("images", "annotations",
                                                                "categories")):
        raise TransferError(f"{jp}: a COCO file needs 'images', 'annotations' and 'categories' "
                            "lists")
    if images is None:
        cands = [jp.parent / "images", jp.parent]
        if jp.stem.startswith("instances_"):
            cands.insert(0, jp.parent.parent / jp.stem[len("instances_"):])
        first = doc["images"][0]["file_name"] if doc["images"] else ""
        images = next((c for c in cands if (c / first).is_file()), cands[0])
    img_dir = Path(images)
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    cat_ids = [int(c["id"]) for c in cats]
    index = {cid: k for k, cid in enumerate(cat_ids)}
    anns: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        if a.get("category_id") not in index:
            raise TransferError(f"{jp}: annotation {a.get('id')} has category_id "
                                f"{a.get('category_id')} missing from 'categories'")
        anns.setdefault(int(a["image_id"]), []).append(a)
    records = []
    for im in doc["images"]:
        f = img_dir / im["file_name"]
        if not f.is_file():
            raise TransferError(f"{jp}: image '{im['file_name']}' not found in {img_dir}; pass "
                                "--images DIR (the folder the file_name entries are relative to)")
        objs = [a for a in anns.get(int(im["id"]), [])
                if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in objs], np.float32).reshape(-1, 4)
        has_segm = all("segmentation" in a for a in objs)
        records.append(DetRecord(
            image=f, image_id=int(im["id"]), width=int(im["width"]), height=int(im["height"]),
            boxes=boxes, labels=np.array([index[a["category_id"]] for a in objs], np.int64),
            iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in objs], bool),
            difficult=np.zeros(len(objs), bool),
            areas=np.array([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in objs],
                           np.float64),
            segms=[a["segmentation"] for a in objs] if has_segm else None))
    return DetectionSet(records, [str(c["name"]) for c in cats], "coco", str(jp),
                        split or jp.stem, cat_ids)


# masks ---------------------------------------------------------------------------------------


def rle_string_to_counts(s: str | bytes) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools' ``rleFrString``)."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, 1
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = c & 0x20
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_counts_to_mask(counts: Sequence[int], h: int, w: int) -> np.ndarray:
    """Uncompressed COCO RLE (column-major runs, starting with zeros) -> uint8 [h, w]."""
    flat = np.zeros(h * w, np.uint8)
    pos, val = 0, 0
    for c in counts:
        if val:
            flat[pos:pos + c] = 1
        pos += c
        val ^= 1
    return flat.reshape((h, w), order="F")


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Binary [h, w] mask -> uncompressed COCO RLE ``{"size": [h, w], "counts": [...]}``."""
    flat = np.asarray(mask, bool).reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def segm_to_mask(segm: Any, h: int, w: int) -> np.ndarray:
    """COCO segmentation (polygon list, RLE, compressed RLE) -> uint8 [h, w]."""
    try:
        from pycocotools import mask as mask_util
    except ImportError:
        mask_util = None
    if mask_util is not None:
        if isinstance(segm, list):
            rle = mask_util.merge(mask_util.frPyObjects(segm, h, w))
        elif isinstance(segm.get("counts"), list):
            rle = mask_util.frPyObjects(segm, h, w)
        else:
            rle = segm
        with warnings.catch_warnings():  # pycocotools vs numpy 2 'copy' keyword notice
            warnings.simplefilter("ignore", DeprecationWarning)
            return np.asarray(mask_util.decode(rle), np.uint8)
    if isinstance(segm, list):
        img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(img)
        for poly in segm:
            if len(poly) >= 6:
                draw.polygon([(float(poly[j]), float(poly[j + 1]))
                              for j in range(0, len(poly) - 1, 2)], fill=1)
        return np.asarray(img, np.uint8)
    counts = segm["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_string_to_counts(counts)
    return rle_counts_to_mask(counts, h, w)


def read_index_png(path: Path) -> np.ndarray:
    """Palette ('P') or grayscale ('L') PNG -> its index values, uint8 [H, W]."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise TransferError(f"{path}: a {im.mode} image; label PNGs must hold class/instance "
                                "indices (palette or grayscale mode), as VOC's do")
        return np.asarray(im).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# torch datasets


def load_image(path: Path, in_chans: int) -> torch.Tensor:
    """float [C, H, W] in [0, 1]; grayscale for 1-channel backbones, RGB otherwise."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if in_chans == 1 else "RGB"), np.uint8)
    except OSError as e:
        raise TransferError(f"{path}: unreadable image ({e})") from None
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
    return t.float().div_(255.0)


class DetectionDataset(torch.utils.data.Dataset):
    """(image float [C, H, W], target) pairs for torchvision's detection models.

    ``train=True`` drops crowd objects (and keeps VOC 'difficult' ones, as detectron2 does) and
    flips horizontally with probability ``flip``; resizing (including multi-scale training) is
    the model's GeneralizedRCNNTransform's job. Labels are 1-based (0 is background).
    """

    def __init__(self, data: DetectionSet, in_chans: int = 3, *, train: bool = True,
                 flip: float = 0.5, with_masks: bool = False) -> None:
        self.data, self.in_chans, self.train = data, in_chans, train
        self.flip, self.with_masks = flip, with_masks
        self.indices = [i for i, r in enumerate(data.records)
                        if not train or (~r.iscrowd).any()]
        if train and not self.indices:
            raise TransferError(f"{data.source} ({data.split}): no image has a (non-crowd) object "
                                "to train on")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        i = self.indices[k]
        r = self.data.records[i]
        img = load_image(r.image, self.in_chans)
        if img.shape[1:] != (r.height, r.width):
            raise TransferError(f"{r.image}: size {tuple(img.shape[:0:-1])} differs from its "
                                f"annotation's {(r.width, r.height)}")
        keep = ~r.iscrowd if self.train else np.ones(len(r.boxes), bool)
        boxes = torch.from_numpy(r.boxes[keep].copy())
        target = {"boxes": boxes, "labels": torch.from_numpy(r.labels[keep] + 1),
                  "image_id": torch.tensor(r.image_id)}
        if self.with_masks:
            target["masks"] = torch.from_numpy(self.data.masks(i)[keep].copy())
        if self.train and self.flip > 0 and random.random() < self.flip:
            img = img.flip(-1)
            w = img.shape[-1]
            target["boxes"] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0],
                                           boxes[:, 3]], 1) if len(boxes) else boxes
            if self.with_masks:
                target["masks"] = target["masks"].flip(-1)
        return img, target


@dataclass
class SegmentationSet:
    images: list[Path]
    masks: list[Path]
    source: str
    split: str

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, n: int) -> SegmentationSet:
        if not n or n >= len(self.images):
            return self
        return SegmentationSet(self.images[:n], self.masks[:n], self.source, self.split)


def read_voc_segmentation(root: str | Path, split: str, *,
                          mask_dir: str = "SegmentationClass") -> SegmentationSet:
    """A VOC-style segmentation split (``mask_dir``: SegmentationClass, or SegmentationClassAug
    for the augmented set)."""
    root = Path(root)
    if not root.is_dir():
        raise TransferError(f"--data {root}: no such folder. Expected layout: {SEG_LAYOUT}")
    if (root / "VOC2012").is_dir() and not (root / "JPEGImages").is_dir():
        raise TransferError(f"--data {root} is a VOCdevkit folder: give {root / 'VOC2012'}")
    missing = [d for d in ("JPEGImages", mask_dir) if not (root / d).is_dir()]
    if missing:
        raise TransferError(f"{root}: no {' or '.join(missing)} folder. Expected layout: "
                            f"{SEG_LAYOUT}" + (" (or pass --mask-dir)" if mask_dir in missing
                                                else ""))
    ids = _split_ids(root, "Segmentation", split, SEG_LAYOUT)
    images, masks = [], []
    for i in ids:
        img = _find_image(root / "JPEGImages", i)
        m = root / mask_dir / f"{i}.png"
        if img is None or not m.is_file():
            what = f"JPEGImages/{i}.jpg" if img is None else f"{mask_dir}/{i}.png"
            raise TransferError(f"{root}: ImageSets/Segmentation/{split}.txt lists '{i}' but "
                                f"{what} is missing")
        images.append(img)
        masks.append(m)
    return SegmentationSet(images, masks, str(root), split)


def read_class_names(root: str | Path) -> list[str] | None:
    """``ROOT/class_names.txt`` (one object class per line, no background), if present: the
    detection label order, and segmentation labels 1..K (0 being the background)."""
    f = Path(root) / "class_names.txt"
    if f.is_file():
        return [line.strip() for line in f.read_text().splitlines() if line.strip()]
    return None


# ---------------------------------------------------------------------------------------------
# writers (benchmarks and tests generate VOC-layout data with these)


def voc_palette() -> list[int]:
    """The 256-colour Pascal VOC palette (flattened RGB)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_index_png(path: Path, arr: np.ndarray) -> None:
    """Save class/instance indices as a VOC palette PNG."""
    im = Image.fromarray(np.asarray(arr, np.uint8), mode="P")
    im.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def write_voc_xml(path: Path, filename: str, width: int, height: int,
                  objects: Sequence[tuple[str, Sequence[float], bool]], depth: int = 3) -> None:
    """VOC annotation; ``objects``: (name, [x0, y0, x1, y1] 0-based continuous, difficult)."""
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(d)}</difficult><bndbox><xmin>{round(b[0]) + 1}</xmin>"
        f"<ymin>{round(b[1]) + 1}</ymin><xmax>{round(b[2])}</xmax><ymax>{round(b[3])}</ymax>"
        "</bndbox></object>" for n, b, d in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><folder>VOC</folder><filename>{filename}</filename><size>"
                    f"<width>{width}</width><height>{height}</height><depth>{depth}</depth>"
                    f"</size><segmented>1</segmented>{objs}</annotation>\n")
