"""benchmarks/shapes_data.py: the generated data of another kind that the learn-fast study checks
its recipe on (shapes, textures, coloured shapes) -- seeded, ten classes, readable by byol's numpy source."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from byol.data import open_source

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "shapes_data.py"


def _module():
    spec = importlib.util.spec_from_file_location("shapes_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("kind", ["shapes", "textures", "colours"])
def test_generators_are_seeded_and_cover_every_class(kind):
    make, classes = _module().KINDS[kind]
    x, y = make(300, 16, seed=3, batch=64)
    x2, y2 = make(300, 16, seed=3, batch=64)
    x3, _ = make(300, 16, seed=4, batch=64)
    assert x.shape == (300, 16, 16, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(x, x3)
    assert len(classes) == 10 and set(y.tolist()) == set(range(10))
    # an image is not one flat colour: every class draws a pattern or an object
    assert (x.reshape(300, -1, 3).std(axis=1).max(axis=1) > 5).all()


def test_written_files_open_as_a_numpy_source(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--kind", "textures", "--out", str(tmp_path),
                    "--train", "40", "--test", "20", "--size", "16"], check=True,
                   capture_output=True)
    train = open_source("numpy", str(tmp_path / "train.npz"), "train")
    test = open_source("numpy", str(tmp_path / "test.npz"), "train")
    assert tuple(train.images.shape) == (40, 3, 16, 16) and len(test.labels) == 20
    # train and test come from different seeds
    assert not np.array_equal(train.images[:20].numpy(), test.images.numpy())


def test_coloured_shapes_take_their_hue_from_the_class():
    """``--kind colours``: warm classes (0-4) are drawn in red-yellow hues, cool ones (5-9) in
    cyan-blue, on a grey background: the object's most saturated pixels tell the family."""
    import colorsys

    x, y = _module().make_colour_shapes(200, 32, seed=1, batch=64)
    rgb = x.reshape(200, -1, 3).astype(float) / 255
    sat = rgb.max(axis=2) - rgb.min(axis=2)
    for img, s, label in zip(rgb, sat, y):
        r, g, b = img[s.argmax()]  # a pixel of the object (the background is grey)
        h = colorsys.rgb_to_hsv(r, g, b)[0]
        warm = h >= 0.9 or h <= 0.2
        assert warm == (label < 5), (label, h)
