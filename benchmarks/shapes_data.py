"""Procedural RGB datasets with known classes (data of another kind than Fashion-MNIST, for
checking that a recipe is not fitted to one dataset): shapes (the default) or textures.

Shapes: ten classes = five shapes (disk, square, triangle, cross, ring) x two fills (solid, striped),
drawn at a random position, size, rotation and colour on a noisy, shaded background of another
random colour, rendered at 2x and averaged down to ``--size`` px. Deterministic given the seed;
train and test use disjoint seeds. Writes OUT/train.npz and OUT/test.npz with ``images``
(uint8 [N, H, W, 3]), ``labels`` (int64 [N]) and ``classes``.

    python benchmarks/shapes_data.py --out data/shapes --train 20000 --test 5000 --size 32

Coloured shapes (``--kind colours``): where colour carries part of the class, as in natural
images: ten classes = five shapes x two colour families (warm: red-orange-yellow hues, cool:
cyan-blue hues), drawn like the shapes above (random position, size, rotation, solid or striped,
saturation and value) on a noisy, shaded background of a random grey; checks that a recipe which
plays colour down (heavy grayscale) does not lose what colour tells.

Textures (``--kind textures``): ten classes = ten texture families (stripes, checker, dots,
rings, waves, crosshatch, blobs, grain, spiral, bricks) filling the whole image at a random
frequency, rotation and offset in two random colours, shaded and noisy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SHAPES = ("disk", "square", "triangle", "cross", "ring")
FILLS = ("solid", "striped")
CLASSES = tuple(f"{s}-{f}" for f in FILLS for s in SHAPES)


def _masks(shape: np.ndarray, x: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    r = np.sqrt(x**2 + y**2)
    out = np.zeros_like(x, dtype=bool)
    for k, name in enumerate(SHAPES):
        sel = shape == k
        if not sel.any():
            continue
        xs, ys, ss, rs = x[sel], y[sel], s[sel], r[sel]
        if name == "disk":
            m = rs < ss
        elif name == "square":
            m = np.maximum(abs(xs), abs(ys)) < ss * 0.8
        elif name == "triangle":
            m = (ys > -0.5 * ss) & (abs(xs) < (ss - ys) / np.sqrt(3))
        elif name == "cross":
            m = ((abs(xs) < ss * 0.3) & (abs(ys) < ss)) | ((abs(ys) < ss * 0.3) & (abs(xs) < ss))
        else:  # ring
            m = (rs < ss) & (rs > ss * 0.55)
        out[sel] = m
    return out


def _start(n: int, classes: int, size: int, seed: int):
    """The generator, the output array, the labels and the 2x-resolution grid in [-1, 1]."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = rng.integers(0, classes, n)
    hi = 2 * size
    g = (np.arange(hi) + 0.5) / hi * 2 - 1
    gy, gx = np.meshgrid(g, g, indexing="ij")
    return rng, images, labels, gx, gy


def _rotated(gx: np.ndarray, gy: np.ndarray, cx, cy, ang) -> tuple[np.ndarray, np.ndarray]:
    """The grid moved to (cx, cy) and turned by ``ang``: per-image coordinates [b, H, W]."""
    x0, y0 = gx[None] - cx, gy[None] - cy
    return x0 * np.cos(ang) + y0 * np.sin(ang), -x0 * np.sin(ang) + y0 * np.cos(ang)


def _placed(rng: np.random.Generator, gx: np.ndarray, gy: np.ndarray, shape: np.ndarray):
    """Per-image coordinates of objects of kind ``shape`` [b] at a random size, position and
    rotation, and their masks [b, H, W]."""
    b = len(shape)
    scale = rng.uniform(0.35, 0.75, (b, 1, 1))
    cx, cy = rng.uniform(-0.3, 0.3, (2, b, 1, 1))
    ang = rng.uniform(0, 2 * np.pi, (b, 1, 1))
    x, y = _rotated(gx, gy, cx, cy, ang)
    mask = _masks(np.broadcast_to(shape[:, None, None], x.shape), x, y,
                  np.broadcast_to(scale, x.shape))
    return x, y, mask


def _stripes(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Stripes [b, H, W, 1] at a random angle and frequency on the objects' coordinates."""
    b = x.shape[0]
    phi = rng.uniform(0, np.pi, (b, 1, 1))
    freq = rng.uniform(5, 9, (b, 1, 1)) * np.pi
    return (np.sin(freq * (x * np.cos(phi) + y * np.sin(phi))) > 0)[..., None]


def _to_uint8(img: np.ndarray, size: int) -> np.ndarray:
    """A [b, 2*size, 2*size, 3] float image averaged down to ``size`` px, as uint8."""
    img = img.reshape(len(img), size, 2, size, 2, 3).mean(axis=(2, 4))
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def make_shapes(n: int, size: int = 32, seed: int = 0, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images uint8 [n, size, size, 3] and their labels (class = fill * 5 + shape)."""
    rng, images, labels, gx, gy = _start(n, len(CLASSES), size, seed)
    hi = gx.shape[0]
    for start in range(0, n, batch):
        lab = labels[start : start + batch]
        b = len(lab)
        shape, fill = lab % len(SHAPES), lab // len(SHAPES)

        x, y, mask = _placed(rng, gx, gy, shape)
        fg, fg2, bg = rng.uniform(0, 1, (3, b, 1, 1, 3))
        stripes = _stripes(rng, x, y)
        striped = (fill == 1)[:, None, None, None]
        paint = np.where(striped & stripes, fg2, fg)
        shade = 1 + rng.uniform(-0.3, 0.3, (b, 1, 1, 1)) * gx[None, ..., None]
        back = bg * shade + rng.normal(0, 0.06, (b, hi, hi, 3))
        img = np.where(mask[..., None], paint, back)
        images[start : start + b] = _to_uint8(img, size)
    return images, labels.astype(np.int64)


HUE_FAMILIES = ("warm", "cool")
COLOUR_CLASSES = tuple(f"{s}-{h}" for h in HUE_FAMILIES for s in SHAPES)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] (any matching shapes) -> RGB stacked on a new last axis."""
    i = np.floor(h * 6) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.select([i == 0, i == 1, i == 2, i == 3, i == 4, i == 5], [v, q, p, p, t, v])
    g = np.select([i == 0, i == 1, i == 2, i == 3, i == 4, i == 5], [t, v, v, q, p, p])
    b = np.select([i == 0, i == 1, i == 2, i == 3, i == 4, i == 5], [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def make_colour_shapes(n: int, size: int = 32, seed: int = 0,
                       batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images uint8 [n, size, size, 3] and labels (class = hue family * 5 + shape): the
    object's hue comes from its class's family (warm 0.95-1.15 mod 1, cool 0.45-0.65), half the
    objects striped with a second colour of the same family, on a random grey background."""
    rng, images, labels, gx, gy = _start(n, len(COLOUR_CLASSES), size, seed)
    hi = gx.shape[0]
    for start in range(0, n, batch):
        lab = labels[start : start + batch]
        b = len(lab)
        shape, family = lab % len(SHAPES), lab // len(SHAPES)
        x, y, mask = _placed(rng, gx, gy, shape)
        base = np.where(family == 0, 0.95, 0.45)[:, None, None]
        hues = (base[None] + rng.uniform(0, 0.2, (2, b, 1, 1))) % 1.0
        sat = rng.uniform(0.5, 1.0, (2, b, 1, 1))
        val = rng.uniform(0.5, 1.0, (2, b, 1, 1))
        fg, fg2 = _hsv_to_rgb(hues, sat, val)
        stripes = _stripes(rng, x, y)
        striped = (rng.uniform(0, 1, b) < 0.5)[:, None, None, None]
        paint = np.where(striped & stripes, fg2, fg)
        grey = rng.uniform(0.1, 0.9, (b, 1, 1, 1))
        shade = 1 + rng.uniform(-0.3, 0.3, (b, 1, 1, 1)) * gx[None, ..., None]
        back = grey * shade + rng.normal(0, 0.06, (b, hi, hi, 3))
        img = np.where(mask[..., None], paint, back)
        images[start : start + b] = _to_uint8(img, size)
    return images, labels.astype(np.int64)


TEXTURES = ("stripes", "checker", "dots", "rings", "waves", "crosshatch", "blobs", "grain",
            "spiral", "bricks")


def _pattern(kind: str, x: np.ndarray, y: np.ndarray, f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A [b, H, W] pattern in [0, 1] of texture ``kind`` on rotated coordinates x, y (image
    half-width = 1) at frequency ``f`` (cycles per unit, [b, 1, 1])."""
    two_pi = 2 * np.pi
    if kind == "stripes":
        return (np.sin(two_pi * f * x) > 0).astype(float)
    if kind == "checker":
        return ((np.sin(two_pi * f * x) > 0) ^ (np.sin(two_pi * f * y) > 0)).astype(float)
    if kind == "dots":
        u, v = (x * f) % 1 - 0.5, (y * f) % 1 - 0.5
        return (u**2 + v**2 < 0.09).astype(float)
    if kind == "rings":
        return (np.sin(two_pi * f * np.sqrt(x**2 + y**2)) > 0).astype(float)
    if kind == "waves":
        return (np.sin(two_pi * f * (y + 0.15 * np.sin(two_pi * f * 0.5 * x))) > 0).astype(float)
    if kind == "crosshatch":
        a, b = np.sin(two_pi * f * (x + y) / np.sqrt(2)), np.sin(two_pi * f * (x - y) / np.sqrt(2))
        return ((abs(a) > 0.8) | (abs(b) > 0.8)).astype(float)
    if kind == "blobs":  # smooth low-frequency noise, thresholded
        acc = np.zeros_like(x)
        for _ in range(4):
            k = rng.normal(0, 1, (x.shape[0], 1, 1, 2)) * f[..., None] * 0.6
            ph = rng.uniform(0, two_pi, (x.shape[0], 1, 1))
            acc += np.sin(two_pi * (k[..., 0] * x + k[..., 1] * y) + ph)
        return (acc > 0).astype(float)
    if kind == "grain":  # fine random speckle
        return (rng.uniform(0, 1, x.shape) > 0.5).astype(float)
    if kind == "spiral":
        r, t = np.sqrt(x**2 + y**2), np.arctan2(y, x)
        return (np.sin(two_pi * f * r + 3 * t) > 0).astype(float)
    # bricks: rows of offset rectangles
    row = np.floor(y * f)
    u = (x * f * 0.5 + 0.5 * (row % 2)) % 1
    v = (y * f) % 1
    return ((u > 0.08) & (v > 0.15)).astype(float)


def make_textures(n: int, size: int = 32, seed: int = 0, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images uint8 [n, size, size, 3] filled with one of ten texture families (the class)
    at a random frequency, rotation, offset and two random colours, with shading and noise."""
    rng, images, labels, gx, gy = _start(n, len(TEXTURES), size, seed)
    hi = gx.shape[0]
    for start in range(0, n, batch):
        lab = labels[start : start + batch]
        b = len(lab)
        ang = rng.uniform(0, 2 * np.pi, (b, 1, 1))
        off = rng.uniform(-1, 1, (2, b, 1, 1))
        x, y = _rotated(gx, gy, off[0], off[1], ang)
        f = rng.uniform(1.5, 3.0, (b, 1, 1))
        pat = np.zeros((b, hi, hi))
        for k, kind in enumerate(TEXTURES):
            sel = lab == k
            if sel.any():
                pat[sel] = _pattern(kind, x[sel], y[sel], f[sel], rng)
        c1, c2 = rng.uniform(0, 1, (2, b, 1, 1, 3))
        shade = 1 + rng.uniform(-0.3, 0.3, (b, 1, 1, 1)) * gx[None, ..., None]
        img = (c1 + (c2 - c1) * pat[..., None]) * shade + rng.normal(0, 0.05, (b, hi, hi, 3))
        images[start : start + b] = _to_uint8(img, size)
    return images, labels.astype(np.int64)


KINDS = {"shapes": (make_shapes, CLASSES), "textures": (make_textures, TEXTURES),
         "colours": (make_colour_shapes, COLOUR_CLASSES)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/shapes")
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--test", type=int, default=5000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", choices=sorted(KINDS), default="shapes",
                    help="shapes: an object on a background; textures: the whole image is one texture; "
                    "colours: an object whose hue family is half its class")
    args = ap.parse_args()
    make, classes = KINDS[args.kind]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", args.train, args.seed), ("test", args.test, args.seed + 10**6)):
        x, y = make(n, args.size, seed)
        np.savez(out / f"{split}.npz", images=x, labels=y, classes=np.array(classes))
        print(f"{out / split}.npz: {n} {args.kind} images {args.size}x{args.size}x3, {len(classes)} classes")


if __name__ == "__main__":
    main()
