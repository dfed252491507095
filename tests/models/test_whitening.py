"""model.feature_whiten: the ZCA whitening of the pooled features, its fit at the end of
pretraining, its time reserved from a budget, and its travel through checkpoints and exports."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from byol.models import build_backbone
from byol.models.whitening import FeatureWhitening


def test_whitening_is_the_identity_until_fitted_then_whitens_with_shrinkage():
    torch.manual_seed(0)
    w = FeatureWhitening(4, shrink=1e-9)
    x = torch.randn(5, 4)
    assert torch.equal(w(x), x)  # not fitted: the features as they are
    # correlated features with one dominant direction
    mix = torch.tensor([[10.0, 0, 0, 0], [3, 1, 0, 0], [0, 0.5, 0.2, 0], [1, 0, 0, 0.05]])
    f = torch.randn(20000, 4) @ mix + torch.tensor([5.0, -1, 2, 0])
    w.fit(f)
    assert int(w.fitted) == 20000
    out = w(f).double()
    torch.testing.assert_close(out.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-3,
                               rtol=0)
    cov = torch.cov(out.T)
    torch.testing.assert_close(cov, torch.eye(4, dtype=torch.float64), atol=2e-3, rtol=0)
    # ZCA: the symmetric whitening matrix (the one closest to the identity map)
    torch.testing.assert_close(w.matrix, w.matrix.T)
    # shrinkage: eigenvalues get shrink x the largest added, so weak directions are damped
    s = FeatureWhitening(4, shrink=0.1)
    s.fit(f)
    ev = torch.linalg.eigvalsh(torch.cov(s(f).double().T))
    lam = torch.linalg.eigvalsh(torch.cov(f.double().T))
    want = lam / (lam + 0.1 * lam.max())
    torch.testing.assert_close(ev, want, atol=1e-3, rtol=1e-3)
    # fp32 whatever the autocast: bf16 would erase the small directions it exists to read
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert s(f[:8].bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="shrink"):
        FeatureWhitening(4, shrink=0)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        s.fit(torch.randn(10, 3))


def test_backbone_whitens_after_the_feature_bn_and_only_the_pooled_output():
    torch.manual_seed(0)
    plain = build_backbone("resnet10", in_chans=1, small_stem=True, width=8, feature_bn=True)
    white = build_backbone("resnet10", in_chans=1, small_stem=True, width=8, feature_bn=True,
                           feature_whiten=0.01)
    white.load_state_dict(plain.state_dict(), strict=False)
    extra = set(white.state_dict()) - set(plain.state_dict())
    assert extra == {"feat_whiten.shrink", "feat_whiten.mean", "feat_whiten.matrix",
                     "feat_whiten.fitted"}
    plain.eval(), white.eval()
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(white(x), plain(x))  # unfitted: the same network
        white.feat_whiten.fit(plain(x))
        torch.testing.assert_close(white(x), (plain(x) - white.feat_whiten.mean)
                                   @ white.feat_whiten.matrix)
        for k, v in plain.forward_stages(x).items():
            torch.testing.assert_close(white.forward_stages(x)[k], v)
    with pytest.raises(ValueError, match="feature_whiten"):
        build_backbone("timm:resnet18", feature_whiten=0.01)


def test_config_checks_the_shrinkage():
    from byol.config import Config, validate
    from byol.errors import ConfigError

    cfg = Config()
    assert cfg.model.feature_whiten == 0.0  # off: the paper's and mmselfsup's features
    for bad in (-0.1, 1.0):
        cfg.model.feature_whiten = bad
        with pytest.raises(ConfigError, match="model.feature_whiten"):
            validate(cfg)
    cfg.model.feature_whiten, cfg.model.arch = 0.01, "timm:resnet18"
    with pytest.raises(ConfigError, match="model.feature_whiten.*timm"):
        validate(cfg)


def test_pretraining_fits_the_whitening_at_the_end_and_evaluation_reads_it(tmp_path):
    from byol.checkpoint import load_backbone, load_checkpoint
    from byol.data.feeders import build_feeder
    from byol.engine import Trainer
    from byol.eval.features import extract_features
    from byol.eval.loading import load_eval_model
    from byol.weights.export import export_checkpoint

    cfg = tiny_config(tmp_path, **{"model.feature_whiten": 0.05, "train.epochs": 1})
    trainer = Trainer(cfg)
    res = trainer.train()
    assert trainer.model.online.backbone.training  # the fit keeps the network's mode
    ck = load_checkpoint(tmp_path / "last.pt")
    n = cfg.data.synthetic_size  # fewer images than WHITEN_IMAGES: all of them
    for net in ("online", "target"):
        assert int(ck["model"][f"{net}.backbone.feat_whiten.fitted"]) == n
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("whiten_images") == n and r["step"] == res["steps"] for r in rows)
    # the fitted map whitens the training images' pooled features (before it) exactly
    bb, _ = load_backbone(str(tmp_path / "last.pt"))
    src, _ = build_feeder(cfg, torch.device("cpu"))
    bb.eval()
    layer = bb.feat_whiten
    a = cfg.augment
    # the same extraction (and precision) as the fit's
    kw = dict(image_size=a.image_size, mean=a.mean, std=a.std, progress=False, batch_size=512)
    out = extract_features(bb, src, **kw)["pooled"].double()
    torch.testing.assert_close(out.mean(0), torch.zeros_like(out.mean(0)), atol=1e-4, rtol=0)
    cov = torch.cov(out.T)
    ev = torch.linalg.eigvalsh(cov)
    assert float(ev.max()) < 1.0 + 1e-3  # every direction at most unit variance after it
    assert float(layer.shrink) == pytest.approx(0.05)
    # evaluation and the safetensors export rebuild it; torchvision's export leaves it out
    ev_model = load_eval_model(str(tmp_path / "last.pt"))
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ev_model.backbone.eval()(x), bb(x))
    export_checkpoint(tmp_path / "last.pt", tmp_path / "b.safetensors", "safetensors")
    again = load_eval_model(str(tmp_path / "b.safetensors"))
    assert again.config.model.feature_whiten == pytest.approx(0.05)
    with torch.no_grad():
        torch.testing.assert_close(again.backbone.eval()(x), bb(x))


def test_a_budget_keeps_time_for_the_fit(tmp_path, monkeypatch):
    from byol import budget
    from byol.budget import budget_steps
    from byol.engine import Trainer

    monkeypatch.setattr(Trainer, "_budget_inputs", lambda self: (1.0, 2.0))
    cfg = tiny_config(tmp_path, **{"train.time_budget": "100s", "train.epochs": 1,
                                   "log.save_every": 100, "model.feature_whiten": 0.01})
    t = Trainer(cfg)
    # 64 images, two backbones, half a training image each, at 1 step/s of 16 images: 4 s
    assert t._whiten_reserve(1.0) == pytest.approx(2 * 64 * 0.5 / 16)
    res = t.train()
    assert res["steps"] == budget_steps(budget.BUDGET_PROBE[1], 2.0, 100.0 - 4.0, 1.0)
    cfg.model.feature_whiten = 0.0
    assert Trainer(tiny_config(tmp_path / "b", **{"train.time_budget": "100s"}))\
        ._whiten_reserve(1.0) == 0.0


def test_the_random_baseline_of_a_whitened_checkpoint_gets_the_same_fit(tmp_path):
    """--baseline random next to a checkpoint with feature_whiten: the same network before
    training, read through a whitening fitted the way pretraining fits the checkpoint's (train
    split, train.seed, no labels); a checkpoint without it gets no whitening."""
    from byol.checkpoint import FORMAT, atomic_save
    from byol.config import Config
    from byol.eval.features import extract_features
    from byol.eval.loading import load_eval_model
    from byol.eval.settings import DataChoice, KnnSettings, ModelChoice, RunSettings
    from byol.eval.suite import build_evaluators
    from byol.models import build_byol

    def checkpoint(path, shrink):
        cfg = Config()
        cfg.model.arch, cfg.model.in_chans, cfg.model.small_stem, cfg.model.width = (
            "resnet18", 3, True, 8)
        cfg.model.proj_hidden_dim = cfg.model.pred_hidden_dim = 32
        cfg.model.proj_dim, cfg.model.feature_whiten = 16, shrink
        cfg.data.source, cfg.augment.image_size, cfg.train.seed = "synthetic", 16, 5
        torch.manual_seed(5)
        atomic_save({"format": FORMAT, "config": cfg.to_dict(),
                     "model": build_byol(cfg.model).state_dict()}, path)
        return str(path)

    data = DataChoice(synthetic_size=96)
    run = RunSettings(device="cpu", precision="fp32", quiet=True, workers=0)
    ckpt = checkpoint(tmp_path / "w.pt", 0.05)
    byol_ev, rand_ev = build_evaluators(ModelChoice(checkpoint=ckpt), data, run,
                                        baselines=["random"])
    layer = rand_ev.model.backbone.feat_whiten
    assert layer.is_fitted and int(layer.fitted) == len(rand_ev.train)  # fewer than 10,000: all
    assert ":white0.05:" in rand_ev.model.key  # the fit is part of the cache's identity
    # the same map as fitting the run's initial network by hand on the training split
    own = load_eval_model(ckpt, "random")
    assert not own.backbone.feat_whiten.is_fitted
    feats = extract_features(own.backbone, rand_ev.train, image_size=16, mean=own.mean,
                             std=own.std, progress=False, batch_size=512)["pooled"]
    want = FeatureWhitening(feats.shape[1], shrink=0.05)
    want.fit(feats.float())
    torch.testing.assert_close(layer.matrix, want.matrix)
    torch.testing.assert_close(layer.mean, want.mean)
    rec = rand_ev.knn(KnnSettings(ks=(5,)))
    n = len(rand_ev.train)
    assert rec["settings"]["whitening"] == {"shrink": 0.05, "images": n, "seed": 5}
    assert "whitening" not in byol_ev.knn(KnnSettings(ks=(5,)))["settings"]
    # without feature_whiten the baseline reads its features as they are
    plain = checkpoint(tmp_path / "p.pt", 0.0)
    _, rand_plain = build_evaluators(ModelChoice(checkpoint=plain), data, run,
                                     baselines=["random"])
    assert getattr(rand_plain.model.backbone, "feat_whiten", None) is None
    assert ":white" not in rand_plain.model.key


def test_stock_resnet_exports_leave_out_both_pooled_feature_layers():
    from byol.weights.export import drop_feature_layers

    t = torch.zeros(2)
    kept, dropped = drop_feature_layers({"conv1.weight": t, "feat_norm.running_mean": t,
                                         "feat_whiten.matrix": t, "feat_whiten.fitted": t})
    assert dropped and set(kept) == {"conv1.weight"}
    kept, dropped = drop_feature_layers({"conv1.weight": t})
    assert not dropped and set(kept) == {"conv1.weight"}
