"""Procedural RGB shapes-and-textures dataset with known classes (data of another kind than
Fashion-MNIST, for checking that a recipe is not fitted to one dataset).

Ten classes = five shapes (disk, square, triangle, cross, ring) x two fills (solid, striped),
drawn at a random position, size, rotation and colour on a noisy, shaded background of another
random colour, rendered at 2x and averaged down to ``--size`` px. Deterministic given the seed;
train and test use disjoint seeds. Writes OUT/train.npz and OUT/test.npz with ``images``
(uint8 [N, H, W, 3]), ``labels`` (int64 [N]) and ``classes``.

    python benchmarks/shapes_data.py --out data/shapes --train 20000 --test 5000 --size 32
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


def make_shapes(n: int, size: int = 32, seed: int = 0, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images uint8 [n, size, size, 3] and their labels (class = fill * 5 + shape)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = rng.integers(0, len(CLASSES), n)
    hi = 2 * size
    g = (np.arange(hi) + 0.5) / hi * 2 - 1
    gy, gx = np.meshgrid(g, g, indexing="ij")
    for start in range(0, n, batch):
        lab = labels[start : start + batch]
        b = len(lab)
        shape, fill = lab % len(SHAPES), lab // len(SHAPES)

        scale = rng.uniform(0.35, 0.75, (b, 1, 1))
        cx, cy = rng.uniform(-0.3, 0.3, (2, b, 1, 1))
        ang = rng.uniform(0, 2 * np.pi, (b, 1, 1))
        x0, y0 = gx[None] - cx, gy[None] - cy
        x = x0 * np.cos(ang) + y0 * np.sin(ang)
        y = -x0 * np.sin(ang) + y0 * np.cos(ang)
        mask = _masks(np.broadcast_to(shape[:, None, None], x.shape), x, y,
                      np.broadcast_to(scale, x.shape))
        fg, fg2, bg = rng.uniform(0, 1, (3, b, 1, 1, 3))
        phi = rng.uniform(0, np.pi, (b, 1, 1))
        freq = rng.uniform(5, 9, (b, 1, 1)) * np.pi
        stripes = (np.sin(freq * (x * np.cos(phi) + y * np.sin(phi))) > 0)[..., None]
        striped = (fill == 1)[:, None, None, None]
        paint = np.where(striped & stripes, fg2, fg)
        shade = 1 + rng.uniform(-0.3, 0.3, (b, 1, 1, 1)) * gx[None, ..., None]
        back = bg * shade + rng.normal(0, 0.06, (b, hi, hi, 3))
        img = np.where(mask[..., None], paint, back)
        img = img.reshape(b, size, 2, size, 2, 3).mean(axis=(2, 4))
        images[start : start + b] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/shapes")
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--test", type=int, default=5000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", args.train, args.seed), ("test", args.test, args.seed + 10**6)):
        x, y = make_shapes(n, args.size, seed)
        np.savez(out / f"{split}.npz", images=x, labels=y, classes=np.array(CLASSES))
        print(f"{out / split}.npz: {n} images {args.size}x{args.size}x3, {len(CLASSES)} classes")


if __name__ == "__main__":
    main()
