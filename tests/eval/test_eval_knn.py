"""kNN protocol and feature extraction: exact answers on hand-built data."""

from __future__ import annotations

import math

import pytest
import torch

from byol.eval.features import (
    RESNET50_MHEAD_DIMS,
    cached_features,
    extract_features,
    mhead_pool,
)
from byol.eval.knn import knn_classify, knn_predict
from byol.eval.transforms import eval_transform
from byol.models import build_backbone


def test_knn_hand_built_points():
    # two clusters on the unit circle; a test point near each
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.95, -0.05], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    test = torch.tensor([[2.0, 0.1], [0.05, 3.0]])  # scale must not matter (cosine)
    res = knn_classify(train, labels, test, torch.tensor([0, 1]), ks=(1, 3))
    assert res["k=1"]["top1"] == 100.0
    assert res["k=3"]["top1"] == 100.0
    # with k=5 every test point sees both classes; the near class still wins by weight
    res = knn_classify(train, labels, test, torch.tensor([0, 1]), ks=(5,))
    assert res["k=5"]["top1"] == 100.0
    assert res["k=5"]["top5"] == 100.0


def test_knn_weight_beats_majority():
    # 1 very close neighbour of class 1 vs 2 far ones of class 0: exp(sim/T) decides
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([1, 0, 0])
    test = torch.tensor([[1.0, 0.05]])
    assert knn_classify(train, labels, test, torch.tensor([1]), ks=(3,))["k=3"]["top1"] == 100.0
    # unweighted (huge temperature) majority vote picks class 0
    res = knn_classify(train, labels, test, torch.tensor([1]), ks=(3,), temperature=1e6)
    assert res["k=3"]["top1"] == 0.0


def _brute_force(train, labels, test, k, t, c):
    tn = train / train.norm(dim=1, keepdim=True)
    out = torch.zeros(len(test), c, dtype=torch.float64)
    for i, q in enumerate(test):
        q = q / q.norm()
        sims = [(float(tn[j] @ q), j) for j in range(len(train))]
        sims.sort(key=lambda s: -s[0])
        for s, j in sims[:k]:
            out[i, labels[j]] += math.exp(s / t)
    return out


def test_knn_matches_brute_force_chunked():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(300, 16, generator=g)
    labels = torch.randint(0, 7, (300,), generator=g)
    test = torch.randn(50, 16, generator=g)
    test_labels = torch.randint(0, 7, (50,), generator=g)
    ref = _brute_force(train, labels, test, 20, 0.07, 7)
    got = knn_predict(train, labels, test, k=20, temperature=0.07, num_classes=7)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
    # chunked over test and blocked over train: same accuracy as the direct computation
    res = knn_classify(train, labels, test, test_labels, ks=(20,), chunk_size=7, train_block=33)
    ref_top1 = 100.0 * float((ref.argmax(1) == test_labels).double().mean())
    ref_top5 = 100.0 * float((ref.topk(5, 1).indices == test_labels[:, None]).any(1).double().mean())
    assert res["k=20"]["top1"] == pytest.approx(ref_top1)
    assert res["k=20"]["top5"] == pytest.approx(ref_top5)
    # k larger than the training set is clipped, not an error
    assert knn_classify(train[:5], labels[:5], test, test_labels, ks=(200,))["k=200"]["top1"] >= 0


def test_mhead_dims_resnet50_224_shapes():
    # stage shapes of ResNet-50 at 224 px, on the meta device: no compute
    shapes = {"feature1": (64, 112), "feature2": (256, 56), "feature3": (512, 28),
              "feature4": (1024, 14), "feature5": (2048, 7)}
    for name, (c, s) in shapes.items():
        x = torch.empty(2, c, s, s, device="meta")
        assert mhead_pool(x, name).flatten(1).shape[1] == RESNET50_MHEAD_DIMS[name]
    assert list(RESNET50_MHEAD_DIMS.values()) == [9216, 9216, 8192, 9216, 8192]


def test_mhead_dims_real_resnet50_forward():
    bb = build_backbone("resnet50").eval()
    feats = extract_features(bb, torch.zeros(1, 3, 224, 224, dtype=torch.uint8), image_size=224,
                             mean=(0.5,), std=(0.25,), resize_ratio=1.0, precision="fp32",
                             names=("pooled", "feature1", "feature2", "feature3", "feature4",
                                    "feature5"), progress=False)
    assert {k: v.shape[1] for k, v in feats.items()} == {"pooled": 2048, **RESNET50_MHEAD_DIMS}


def test_mhead_specified_pool_values_and_small_maps():
    x = torch.arange(7 * 7, dtype=torch.float32).view(1, 1, 7, 7)
    y = mhead_pool(x, "feature5")  # AvgPool2d(6, 1, 0) at the 224-px size
    assert y.shape == (1, 1, 2, 2)
    assert float(y[0, 0, 0, 0]) == pytest.approx(float(x[0, 0, :6, :6].mean()))
    # other sizes: adaptive to the same grid, never larger than the map
    assert mhead_pool(torch.zeros(1, 3, 32, 32), "feature1").shape[-2:] == (12, 12)
    assert mhead_pool(torch.zeros(1, 3, 4, 4), "feature5").shape[-2:] == (2, 2)
    assert mhead_pool(torch.zeros(1, 3, 2, 2), "feature4").shape[-2:] == (2, 2)


def test_eval_transform_resize_crop_normalise():
    img = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    out = eval_transform(img, 28, mean=(0.5,), std=(0.5,))
    assert out.shape == (2, 1, 28, 28)
    torch.testing.assert_close(out, torch.ones_like(out))
    # non-square: short side to round(24 * 256 / 224) = 27, then the central 24 x 24
    img = torch.randint(0, 256, (1, 3, 30, 60), dtype=torch.uint8)
    assert eval_transform(img, 24, (0.0,), (1.0,)).shape == (1, 3, 24, 24)
    # identity geometry when the image already has the crop size and resize_ratio=1
    x = eval_transform(img[..., :24, :24], 24, (0.0,), (1.0,), resize_ratio=1.0)
    torch.testing.assert_close(x, img[..., :24, :24].float() / 255)


def test_extract_restores_model_state_and_cache(tmp_path):
    torch.manual_seed(0)
    bb = build_backbone("resnet18", in_chans=1, small_stem=True, width=8)
    bb.train()
    imgs = torch.randint(0, 256, (10, 1, 16, 16), dtype=torch.uint8)
    kw = dict(image_size=16, mean=(0.5,), std=(0.25,), precision="fp32", progress=False)
    f1 = extract_features(bb, imgs, **kw)["pooled"]
    assert bb.training and bb.conv1.weight.is_contiguous()
    assert f1.shape == (10, 64) and f1.dtype == torch.float32
    with torch.no_grad():
        ref = bb.eval()(eval_transform(imgs, 16, (0.5,), (0.25,)))
    torch.testing.assert_close(f1, ref, rtol=1e-4, atol=1e-5)
    c1 = cached_features("random-init:resnet18:seed0", imgs, backbone=bb, cache_dir=tmp_path, **kw)
    assert len(list(tmp_path.glob("feats_*.pt"))) == 1
    bb.conv1.weight.data.zero_()  # a cache hit must not recompute
    c2 = cached_features("random-init:resnet18:seed0", imgs, backbone=bb, cache_dir=tmp_path, **kw)
    torch.testing.assert_close(c1["pooled"], c2["pooled"])
    torch.testing.assert_close(c1["pooled"], f1)


def test_file_source_features_match_in_memory(tmp_path):
    from PIL import Image

    from byol.data import open_source

    g = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            arr = torch.randint(0, 256, (18, 24, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(arr).save(tmp_path / "train" / cls / f"{i}.png")
    kw = dict(image_size=16, load_size=round(16 * 256 / 224))
    files = open_source("folder", str(tmp_path), "train", in_memory=False, **kw)
    mem = open_source("folder", str(tmp_path), "train", in_memory=True, **kw)
    assert not hasattr(files, "images") and hasattr(mem, "images")
    bb = build_backbone("resnet18", small_stem=True, width=8)
    ekw = dict(image_size=16, mean=(0.5,), std=(0.25,), precision="fp32", progress=False,
               batch_size=4, num_workers=0)
    a = extract_features(bb, files, **ekw)["pooled"]
    b = extract_features(bb, mem, **ekw)["pooled"]
    assert a.shape == (6, 64)
    torch.testing.assert_close(a, b)


def test_random_baseline_of_a_stride_2_checkpoint_has_the_checkpoint_s_stem(tmp_path):
    from byol.checkpoint import FORMAT, atomic_save
    from byol.config import Config
    from byol.eval.loading import load_eval_model
    from byol.models import build_byol

    cfg = Config()
    cfg.model.arch, cfg.model.small_stem, cfg.model.width, cfg.model.stem_stride = (
        "resnet18", True, 8, 2)
    cfg.model.proj_hidden_dim = cfg.model.pred_hidden_dim = cfg.model.proj_dim = 16
    atomic_save({"format": FORMAT, "config": cfg.to_dict(),
                 "model": build_byol(cfg.model).state_dict()}, tmp_path / "c.pt")
    trained = load_eval_model(str(tmp_path / "c.pt"))
    random = load_eval_model(str(tmp_path / "c.pt"), baseline="random", seed=0)
    assert trained.backbone.conv1.stride == random.backbone.conv1.stride == (2, 2)
    assert "stride2" in random.key


def test_random_baseline_of_a_checkpoint_is_its_run_s_initial_network(tmp_path):
    # without --seed, --baseline random next to a checkpoint is the network that run started
    # from (its train.seed), not whatever seed 0 would build; an explicit seed still wins
    from conftest import tiny_config

    from byol.engine import Trainer
    from byol.eval.loading import load_eval_model

    tr = Trainer(tiny_config(tmp_path / "r", **{"train.seed": 3, "train.max_steps": 1}))
    start = {k: v.clone() for k, v in tr.model.online.backbone.state_dict().items()}
    tr.train()
    ckpt = str(tmp_path / "r" / "last.pt")
    same = load_eval_model(ckpt, baseline="random").backbone.state_dict()
    assert all(torch.equal(same[k], v) for k, v in start.items())
    other = load_eval_model(ckpt, baseline="random", seed=0).backbone.state_dict()
    assert not torch.equal(other["conv1.weight"], start["conv1.weight"])
    assert "seed3" in load_eval_model(ckpt, baseline="random").key


def test_a_wide_last_stage_checkpoint_loads_and_its_random_baseline_is_the_same_network(tmp_path):
    from byol.checkpoint import FORMAT, atomic_save
    from byol.config import Config
    from byol.eval.loading import load_eval_model
    from byol.models import build_byol

    cfg = Config()
    cfg.model.arch, cfg.model.small_stem, cfg.model.width = "resnet10", True, 8
    cfg.model.last_stage_width = 80
    cfg.model.proj_hidden_dim = cfg.model.pred_hidden_dim = cfg.model.proj_dim = 16
    model = build_byol(cfg.model)
    atomic_save({"format": FORMAT, "config": cfg.to_dict(), "model": model.state_dict()},
                tmp_path / "c.pt")
    trained = load_eval_model(str(tmp_path / "c.pt"))
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(trained.backbone.eval()(x), model.online.backbone.eval()(x))
    random = load_eval_model(str(tmp_path / "c.pt"), baseline="random", seed=0)
    assert random.backbone.num_features == 80 and "last80" in random.key
    other = load_eval_model(str(tmp_path / "c.pt"), baseline="random", seed=0, width=4)
    assert other.backbone.num_features == 32  # another width: the standard last stage
