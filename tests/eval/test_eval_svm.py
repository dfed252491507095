"""VOC07 SVM protocol, low-shot sampling and the VOC devkit reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from byol.eval.svm import (
    DEFAULT_COSTS,
    FAST_COSTS,
    labels_to_targets,
    load_voc_images,
    lowshot_sample,
    lowshot_single_label,
    read_voc07,
    svm_single_label,
    svm_voc07,
    voc_ap,
)


def test_cost_grid_is_the_protocols():
    assert DEFAULT_COSTS[:3] == (1.0, 10.0, 100.0)
    assert DEFAULT_COSTS[3:] == tuple(0.5**k for k in range(4, 20))
    assert len(DEFAULT_COSTS) == 19


def test_voc_ap_hand_computed():
    assert voc_ap(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 1, 0, 0])) == 1.0
    # ranks: P R N N -> precision 1 at recall .5, 2/3 at recall 1
    ap = voc_ap(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # N P P N: precision 1/2 at recall .5 is interpolated up to the 2/3 reached at recall 1
    ap = voc_ap(np.array([4, 3, 2, 1.0]), np.array([0, 1, 1, 0]))
    assert ap == pytest.approx(0.5 * 2 / 3 + 0.5 * 2 / 3)
    assert np.isnan(voc_ap(np.array([1.0]), np.array([0])))


def _multilabel(n, seed):
    # 3 classes, each present when one feature dimension is positive: linearly separable
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 6))
    t = np.where(x[:, :3] > 0, 1, -1).astype(np.int8)
    x[:, :3] += np.sign(x[:, :3]) * 2.0  # a margin
    return x, t


def test_svm_separable_gives_map_100_and_ignores_difficult():
    x, t = _multilabel(90, 0)
    xt, tt = _multilabel(60, 1)
    # difficult test samples with misleading features are excluded from AP
    xt[:10, :3] = -xt[:10, :3]
    tt[:10] = 0
    res = svm_voc07(x, t, xt, tt, costs=DEFAULT_COSTS, n_jobs=1, classes=("a", "b", "c"))
    assert res["map"] == pytest.approx(100.0)
    assert set(res["ap"]) == {"a", "b", "c"}
    assert all(c in DEFAULT_COSTS for c in res["cost"].values())
    assert all(v > 90 for v in res["cv_ap"].values())
    # difficult train samples (0) are negatives: flipping some positives to 0 still trains
    t2 = t.copy()
    t2[:5] = np.where(t2[:5] == 1, 0, t2[:5])
    assert svm_voc07(x, t2, xt, tt, costs=FAST_COSTS)["map"] > 95


def test_svm_single_label_one_vs_rest_parallel():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 4
    y = torch.arange(80) % 4
    x = centres[y] + torch.randn(80, 16, generator=g) * 0.2
    res = svm_single_label(x[:60], y[:60], x[60:], y[60:], costs=FAST_COSTS, n_jobs=2)
    assert res["map"] == pytest.approx(100.0)
    assert len(res["ap"]) == 4


def test_lowshot_sampling_balanced_and_reproducible():
    y = np.repeat(np.arange(5), 40)
    t = labels_to_targets(y)
    assert t.shape == (200, 5) and set(np.unique(t)) == {-1, 1}
    for k in (1, 4, 16):
        draw = lowshot_sample(t, k, seed=3)
        for j, (pos, neg) in enumerate(draw):
            assert len(pos) == k and (y[pos] == j).all()
            assert len(neg) == 4 * k and (y[neg] != j).all()
            assert len(set(pos)) == k and len(set(neg)) == len(neg)
        again = lowshot_sample(t, k, seed=3)
        assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(draw, again))
    other = lowshot_sample(t, 16, seed=4)
    assert any((a[0] != b[0]).any() for a, b in zip(lowshot_sample(t, 16, seed=3), other))
    capped = lowshot_sample(t, 2, seed=0, negatives=5)
    assert all(len(neg) == 5 for _, neg in capped)
    assert all(len(neg) == 160 for _, neg in lowshot_sample(t, 2, seed=0, negatives="all"))
    # difficult samples are never drawn
    t[:, 0][y == 1] = 0
    assert not any(np.isin(np.flatnonzero(y == 1), neg).any()
                   for neg in [lowshot_sample(t, 8, seed=1)[0][1]])


def test_lowshot_svm_on_separable_data():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 4
    y = torch.arange(120) % 3
    x = centres[y] + torch.randn(120, 8, generator=g) * 0.2
    res = lowshot_single_label(x[:90], y[:90], x[90:], y[90:], ks=(1, 4), num_draws=3,
                               costs=(0.1, 1.0))
    assert set(res) == {"k=1", "k=4", "nonconverged"}
    assert res["k=4"]["map"] == pytest.approx(100.0)
    assert len(res["k=1"]["per_draw"]) == 3 and res["k=1"]["cost"] in (0.1, 1.0)
    assert res["k=1"]["std"] == pytest.approx(float(np.std(res["k=1"]["per_draw"])))


def test_read_voc07_devkit(tmp_path):
    from PIL import Image

    from byol.eval.svm import VOC_CLASSES

    root = tmp_path / "VOCdevkit" / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    ids = ["000005", "000007"]
    for i in ids:
        Image.new("RGB", (50, 30), (200, 10, 10)).save(root / "JPEGImages" / f"{i}.jpg")
    for c in VOC_CLASSES:
        lab = {"chair": ("1", "0"), "car": ("-1", "1")}.get(c, ("-1", "-1"))
        text = "".join(f"{i} {v}\n" for i, v in zip(ids, lab))
        (root / "ImageSets" / "Main" / f"{c}_trainval.txt").write_text(text)
    split = read_voc07(tmp_path, "trainval")
    assert split.ids == ids and split.targets.shape == (2, 20)
    ci, ca = VOC_CLASSES.index("chair"), VOC_CLASSES.index("car")
    assert split.targets[:, ci].tolist() == [1, 0] and split.targets[:, ca].tolist() == [-1, 1]
    imgs = load_voc_images(split, size=32, threads=2)
    assert imgs.shape == (2, 3, 32, 32) and imgs.dtype == torch.uint8
    with pytest.raises(ValueError, match="test"):
        read_voc07(tmp_path, "test")
