"""Linear probes: separable features are learned perfectly; the protocols run end to end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from byol.eval.linear import (
    MultiHead,
    default_milestones,
    linear_probe_augmented,
    linear_probe_features,
    multihead_probe,
    multihead_probe_augmented,
    step_lr,
    topk_accuracy,
)
from byol.models import build_backbone


def _separable(n, d=32, c=4, seed=0, scale=50.0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g) * 3
    y = torch.arange(n) % c
    x = centres[y] + torch.randn(n, d, generator=g) * 0.3
    return x * scale + 7.0, y  # badly scaled: the probe standardises


def test_linear_probe_separable_reaches_100():
    xtr, ytr = _separable(400)
    xte, yte = _separable(200, seed=0)
    res = linear_probe_features(xtr, ytr, xte, yte, lrs=(0.01, 0.1, 1.0), epochs=10,
                                batch_size=64)
    assert res["top1"] == pytest.approx(100.0)
    assert res["top5"] == pytest.approx(100.0)
    assert res["lr"] in (0.01, 0.1, 1.0)
    assert set(res["val_top1"]) == {"0.01", "0.1", "1"}


def test_linear_probe_sweep_picks_best_heldout_lr():
    xtr, ytr = _separable(400, c=8, seed=5)
    res = linear_probe_features(xtr, ytr, xtr, ytr, lrs=(1e-7, 0.1), epochs=5, batch_size=64)
    assert res["val_top1"]["0.1"] > res["val_top1"]["1e-07"]
    assert res["lr"] == 0.1


def _scored_sweep(monkeypatch, score):
    """linear_probe_features with a held-out accuracy of ``score[lr]`` for each lr it fits."""
    from byol.eval import linear

    fitted = []

    def fake_fit(a, y, c, lr, *rest):
        fitted.append(lr)
        return nn.Linear(a.shape[1], c)

    monkeypatch.setattr(linear, "_fit_linear", fake_fit)
    monkeypatch.setattr(linear, "topk_accuracy",
                        lambda logits, y: {"top1": score[fitted[-1]], "top5": 100.0})
    xtr, ytr = _separable(100)
    return fitted, linear.linear_probe_features(xtr, ytr, xtr[:10], ytr[:10],
                                                lrs=(0.1, 0.3, 1.0), epochs=1)


def test_linear_sweep_goes_on_past_a_best_lr_at_its_top_edge(monkeypatch):
    # 1.0 beats 0.1 and 0.3 -> 3 (the grid's pattern) is tried, beats it -> 10, which does not
    fitted, res = _scored_sweep(monkeypatch, {0.1: 50.0, 0.3: 60.0, 1.0: 70.0, 3.0: 75.0,
                                              10.0: 72.0})
    assert fitted == [0.1, 0.3, 1.0, 3.0, 10.0, 3.0]  # the sweep, then the final fit at 3
    assert res["lr"] == 3.0 and set(res["val_top1"]) == {"0.1", "0.3", "1", "3", "10"}


def test_linear_sweep_goes_on_below_its_bottom_edge_and_stops_where_it_falls(monkeypatch):
    fitted, res = _scored_sweep(monkeypatch, {0.1: 70.0, 0.3: 60.0, 1.0: 50.0, 0.03: 65.0})
    assert fitted == [0.1, 0.3, 1.0, 0.03, 0.1]
    assert res["lr"] == 0.1


def test_linear_sweep_with_a_best_lr_inside_the_grid_is_not_extended(monkeypatch):
    fitted, res = _scored_sweep(monkeypatch, {0.1: 60.0, 0.3: 70.0, 1.0: 70.0})
    assert fitted == [0.1, 0.3, 1.0, 0.3] and res["lr"] == 0.3  # ties go to the smaller lr


def test_topk_accuracy_values():
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    acc = topk_accuracy(logits, torch.tensor([1, 2]))
    assert acc["top1"] == 50.0 and acc["top5"] == 100.0


def test_step_schedule_matches_mmselfsup():
    assert default_milestones(90) == (30, 60)
    lrs = [step_lr(0.01, e, (30, 60)) for e in (0, 29, 30, 59, 60, 89)]
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001])


def test_multihead_on_separable_features():
    x1, y = _separable(400, d=16 * 4, c=4, seed=1)
    x2, _ = _separable(400, d=24, c=4, seed=2)
    t1, yt = _separable(120, d=16 * 4, c=4, seed=1)
    t2, _ = _separable(120, d=24, c=4, seed=2)
    res = multihead_probe({"feature1": x1, "feature2": x2}, y, {"feature1": t1, "feature2": t2},
                          yt, channels={"feature1": 16}, epochs=6, batch_size=32, lr=0.1)
    assert res["feature1"]["top1"] == pytest.approx(100.0)
    assert res["feature2"]["top1"] == pytest.approx(100.0)


def test_multihead_norm_is_per_channel():
    head = MultiHead({"feature1": 8 * 4}, 3, channels={"feature1": 8})
    assert head.norms["feature1"].num_features == 8
    assert not any(p.requires_grad for p in head.norms.parameters())
    assert MultiHead({"f": 10}, 3).norms["f"].num_features == 10


def _tiny_sources():
    from byol.data import open_source

    tr = open_source("synthetic", split="train", image_size=16, synthetic_size=64)
    te = open_source("synthetic", split="test", image_size=16, synthetic_size=32)
    return tr, te


def test_augmented_probes_run_and_freeze_backbone():
    tr, te = _tiny_sources()
    torch.manual_seed(0)
    bb = build_backbone("resnet18", small_stem=True, width=8)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    res = linear_probe_augmented(bb, tr, te, image_size=16, mean=(0.5,), std=(0.25,), epochs=2,
                                 batch_size=32, precision="fp32", progress=False)
    assert 0.0 <= res["top1"] <= 100.0 and res["top5"] >= res["top1"]
    assert res["lr"] == pytest.approx(1.6 * 32 / 4096)
    for k, v in bb.state_dict().items():  # frozen, BN statistics included
        assert torch.equal(v, before[k]), k
    res = multihead_probe_augmented(bb, tr, te, image_size=16, mean=(0.5,), std=(0.25,),
                                    names=("feature4", "feature5"), epochs=1, batch_size=32,
                                    precision="fp32", progress=False)
    assert set(res) == {"feature4", "feature5"}
    res = linear_probe_augmented(bb, tr, te, image_size=16, mean=(0.5,), std=(0.25,), epochs=1,
                                 batch_size=32, optimizer="sgd", precision="fp32",
                                 progress=False)
    assert res["lr"] == pytest.approx(0.2 * 32 / 256)


def test_balanced_subset_is_balanced_and_seeded():
    from byol.eval.finetune import balanced_subset

    y = torch.cat([torch.full((100,), 0), torch.full((300,), 1), torch.full((50,), 2)])
    idx = balanced_subset(y, 0.1, seed=0)
    counts = torch.bincount(y[idx], minlength=3).tolist()
    assert counts == [10, 30, 5]
    assert torch.equal(idx, balanced_subset(y, 0.1, seed=0))
    assert not torch.equal(idx, balanced_subset(y, 0.1, seed=1))
    assert torch.bincount(y[balanced_subset(y, 0.01, 0)], minlength=3).tolist() == [1, 3, 1]
    assert len(balanced_subset(y, 1.0, 0)) == 450
    with pytest.raises(ValueError):
        balanced_subset(y, 0.0, 0)


def test_finetune_runs_and_leaves_original_untouched():
    from byol.eval.finetune import finetune_fractions

    tr, te = _tiny_sources()
    bb = build_backbone("resnet18", small_stem=True, width=8)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    res = finetune_fractions(bb, tr, te, fractions=(0.25, 1.0), epochs=1, image_size=16,
                             mean=(0.5,), std=(0.25,), batch_size=16, precision="fp32",
                             progress=False)
    assert set(res) == {"25%", "100%"}
    assert res["25%"]["num_train"] < res["100%"]["num_train"] == 64
    assert all(0 <= r["top1"] <= r["top5"] <= 100 for r in res.values())
    for k, v in bb.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_multihead_is_reproducible_from_seed():
    x, y = _separable(120, d=12, c=3, seed=7)
    kw = dict(epochs=2, batch_size=32, lr=0.05)
    a = multihead_probe({"feature5": x}, y, {"feature5": x}, y, seed=3, **kw)
    b = multihead_probe({"feature5": x}, y, {"feature5": x}, y, seed=3, **kw)
    assert a == b


def test_train_views_are_trained_on_and_never_held_out(monkeypatch):
    """Each view of a held-out image stays out of the sweep's training rows; the final fit
    trains on every view of every image; the held-out and test rows are one view each."""
    from byol.eval import linear

    n = 60
    xtr, ytr = _separable(n, d=4)
    xtr[:, 0] = torch.arange(n, dtype=torch.float32)  # column 0 names the image
    mirror = xtr.clone()
    mirror[:, 0] += 0.5  # ... and the view
    calls = []
    real = linear.standardize

    def recording(train, *others):
        calls.append((train[:, 0].clone(), [o[:, 0].clone() for o in others]))
        return real(train, *others)

    monkeypatch.setattr(linear, "standardize", recording)
    res = linear.linear_probe_features(xtr, ytr, xtr[:10], ytr[:10], lrs=(0.1, 1.0), epochs=1,
                                       train_views=[mirror])
    (sweep_rows, (held,)), (final_rows, (test,)) = calls
    held_ids = set(held.tolist())
    assert held_ids and all(v == int(v) for v in held_ids)  # held-out images: as they are
    trained = sweep_rows.tolist()
    assert len(trained) == 2 * (n - len(held_ids))
    assert not {int(v) for v in trained} & held_ids  # no view of a held-out image
    assert sorted(trained) == sorted([i for i in range(n) if i not in held_ids]
                                     + [i + 0.5 for i in range(n) if i not in held_ids])
    assert sorted(final_rows.tolist()) == sorted([*range(n)] + [i + 0.5 for i in range(n)])
    assert len(test) == 10 and res["train_views"] == 2 and res["num_train"] == n


def test_train_views_must_match_the_training_rows():
    from byol.errors import EvalError

    xtr, ytr = _separable(40)
    with pytest.raises(EvalError, match=r"train_views\[0\].*one row per training image"):
        linear_probe_features(xtr, ytr, xtr, ytr, lrs=(0.1,), epochs=1,
                              train_views=[xtr[:20]])


def test_flipped_features_read_the_mirrored_crops():
    from byol.eval.features import extract_features, feature_cache_key

    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(6, 1, 12, 12, generator=g)
    bb = build_backbone("resnet18", small_stem=True, width=8, in_chans=1).eval()
    kw = dict(image_size=12, mean=(0.5,), std=(0.25,), resize_ratio=1.0, precision="fp32",
              progress=False)
    flipped = extract_features(bb, imgs, flip=True, **kw)["pooled"]
    mirrored = extract_features(bb, imgs.flip(-1), **kw)["pooled"]
    plain = extract_features(bb, imgs, **kw)["pooled"]
    assert torch.allclose(flipped, mirrored, atol=1e-5)
    assert not torch.allclose(flipped, plain, atol=1e-3)
    key = dict(image_size=12, names=("pooled",), mean=(0.5,), std=(0.25,))
    assert feature_cache_key("m", imgs, flip=True, **key) != feature_cache_key("m", imgs, **key)


def test_flipped_features_are_cached_apart(tmp_path):
    from byol.eval.features import cached_features

    imgs = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    bb = build_backbone("resnet18", small_stem=True, width=8, in_chans=1).eval()
    kw = dict(backbone=bb, image_size=12, mean=(0.5,), std=(0.25,), cache_dir=tmp_path,
              resize_ratio=1.0, precision="fp32", progress=False)
    plain = cached_features("random-init:test", imgs, **kw)["pooled"]
    flipped = cached_features("random-init:test", imgs, flip=True, **kw)["pooled"]
    files = sorted(tmp_path.glob("feats_*.pt"))
    assert len(files) == 2 and not torch.allclose(plain, flipped, atol=1e-3)
    metas = [torch.load(f, weights_only=True)["meta"] for f in files]
    assert sorted(m.get("flip", False) for m in metas) == [False, True]
    again = cached_features("random-init:test", imgs, flip=True, **kw)["pooled"]
    assert torch.equal(again, flipped)


def test_evaluator_linear_flip_trains_on_both_views():
    from byol.eval.loading import load_eval_model
    from byol.eval.settings import LinearSettings
    from byol.eval.suite import Evaluator

    tr, te = _tiny_sources()
    m = load_eval_model(baseline="random", arch="resnet18", in_chans=3, small_stem=True, width=8,
                        image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    ev = Evaluator(m, tr, te, precision="fp32", progress=False)
    rec = ev.linear(LinearSettings(lrs=(0.1,), epochs=1, flip=True))
    assert rec["settings"]["flip"] is True
    assert rec["results"]["train_views"] == 2
    assert ("train:flip", "pooled") in ev._feats and ("test:flip", "pooled") not in ev._feats
    rec = ev.linear(LinearSettings(lrs=(0.1,), epochs=1))
    assert "flip" not in rec["settings"] and rec["results"]["train_views"] == 1
