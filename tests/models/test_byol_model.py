"""The BYOL module: loss, EMA schedule and update, per-view BatchNorm, encoders and heads."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny_backbone, tiny_byol
from torch import nn

from byol.models import BYOL, MLP, build_backbone, regression_loss, tau_schedule
from byol.models.viewnorm import split_views

# ------------------------------------------------------------------------------------------
# regression loss: 2 - 2 cos
# ------------------------------------------------------------------------------------------


def update_target_reference(model: BYOL, tau: float) -> None:
    """Per-parameter form of :meth:`BYOL.update_target`, kept to test the fused one against."""
    with torch.no_grad():
        for t, o in zip(model.target.parameters(), model.online.parameters()):
            t.mul_(tau).add_(o.detach(), alpha=1 - tau)


def test_regression_loss_hand_values():
    p = torch.tensor([[1.0, 0.0]])
    assert regression_loss(p, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(2.0, abs=1e-6)
    assert regression_loss(p, p.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert regression_loss(p, -p).item() == pytest.approx(4.0, abs=1e-6)
    # 45 degrees: 2 - 2 / sqrt(2)
    val = regression_loss(p, torch.tensor([[1.0, 1.0]])).item()
    assert val == pytest.approx(2 - math.sqrt(2), abs=1e-6)


def test_regression_loss_is_batch_mean_and_scale_invariant():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    z = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [3.0, 4.0]])
    # per-row 2, 4, 0 -> mean 2
    assert regression_loss(p, z).item() == pytest.approx(2.0, abs=1e-6)
    torch.manual_seed(0)
    a, b = torch.randn(5, 7), torch.randn(5, 7)
    ref = (2 - 2 * nn.functional.cosine_similarity(a, b, dim=-1)).mean()
    assert regression_loss(a, b).item() == pytest.approx(ref.item(), abs=1e-6)
    scales = torch.tensor([[0.01], [3.0], [100.0], [7.0], [0.5]])
    assert regression_loss(a * scales, b * 42.0).item() == pytest.approx(ref.item(), abs=1e-5)


# ------------------------------------------------------------------------------------------
# forward loss: SUM of the two directions
# ------------------------------------------------------------------------------------------


def _views(n=6, c=3, side=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, side, side, generator=g), torch.rand(n, c, side, side, generator=g)


def test_forward_loss_is_sum_of_two_directions():
    model = tiny_byol(fuse_views=False)
    # make target differ from online so the two directions are not trivially symmetric
    with torch.no_grad():
        for p in model.target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    by_hand = copy.deepcopy(model)
    v1, v2 = _views()
    loss, z1 = model(v1, v2)

    with torch.no_grad():
        q1 = by_hand.predictor(by_hand.online(v1))
        q2 = by_hand.predictor(by_hand.online(v2))
        t1, t2 = by_hand.target(v1), by_hand.target(v2)
        d12, d21 = regression_loss(q1, t2), regression_loss(q2, t1)
    assert abs(d12.item() - d21.item()) > 1e-4  # two genuinely different directions
    assert loss.item() == pytest.approx((d12 + d21).item(), abs=1e-5)
    assert loss.item() != pytest.approx(((d12 + d21) / 2).item(), abs=1e-3)  # not the average
    assert z1.shape == (6, 16) and not z1.requires_grad


@pytest.mark.parametrize("fuse", [True, False])
def test_forward_loss_range_zero_to_eight(fuse):
    model = tiny_byol(fuse_views=fuse)
    v1, _ = _views()
    loss, _ = model(v1, v1.clone())  # identical views, target == online
    assert 0.0 <= loss.item() <= 8.0
    assert loss.item() > 0.0  # the predictor makes q != z even for identical views


# ------------------------------------------------------------------------------------------
# tau schedule
# ------------------------------------------------------------------------------------------


def test_tau_schedule_values():
    K, base = 1000, 0.99
    assert tau_schedule(0, K, base) == pytest.approx(base, abs=1e-12)
    assert tau_schedule(K // 2, K, base) == pytest.approx((base + 1) / 2, abs=1e-12)
    assert tau_schedule(K, K, base) == pytest.approx(1.0, abs=1e-12)
    for k in (1, 137, 250, 777, 999):
        expected = 1 - (1 - base) * (math.cos(math.pi * k / K) + 1) / 2
        assert tau_schedule(k, K, base) == pytest.approx(expected, abs=1e-12)
    assert tau_schedule(250, K, 0.996) == pytest.approx(
        1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2, abs=1e-12
    )
    # monotone non-decreasing
    vals = [tau_schedule(k, K, base) for k in range(0, K + 1, 50)]
    assert all(a <= b for a, b in zip(vals, vals[1:]))


# ------------------------------------------------------------------------------------------
# per-view BatchNorm: fused forward == two separate forwards
# ------------------------------------------------------------------------------------------


def _grads(model):
    return [p.grad.clone() for p in model.online_parameters()]


def _float_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def test_fused_views_equal_separate_forwards():
    fused = tiny_byol(fuse_views=True)
    sep = copy.deepcopy(fused)
    sep.fuse_views = False
    v1, v2 = _views()
    lf, zf = fused(v1, v2)
    ls, zs = sep(v1, v2)
    torch.testing.assert_close(lf, ls, rtol=0, atol=1e-5)
    torch.testing.assert_close(zf, zs, rtol=1e-5, atol=1e-5)
    lf.backward()
    ls.backward()
    n = 0
    for gf, gs in zip(_grads(fused), _grads(sep)):
        torch.testing.assert_close(gf, gs, rtol=1e-4, atol=1e-5)
        n += 1
    assert n == len(list(fused.online_parameters()))
    bf, bs = _float_buffers(fused), _float_buffers(sep)
    assert any(k.startswith("target.") for k in bf)  # the target's statistics count too
    for k in bf:
        torch.testing.assert_close(bf[k], bs[k], rtol=1e-5, atol=1e-5, msg=k)
    # the statistics really moved (not a vacuous comparison of initial values)
    init = _float_buffers(tiny_byol())
    assert any((bf[k] - init[k]).abs().max() > 1e-3 for k in bf)


def test_naive_mixed_view_batchnorm_differs():
    """A single forward of both views with ordinary BN (statistics of the mixed batch) gives
    another loss: the equality test above is sensitive to the per-view split."""
    model = tiny_byol(fuse_views=True)
    ref = copy.deepcopy(model)
    ref.fuse_views = False
    v1, v2 = _views()
    # shift view 2 so the two views have different statistics
    v2 = v2 * 0.3 + 0.6
    with split_views(model._norms, 1):  # no split: mixed statistics
        both = torch.cat([v1, v2])
        z = model.online(both)
        p1, p2 = model.predictor(z).chunk(2)
        with torch.no_grad():
            t1, t2 = model.target(both).chunk(2)
        naive = regression_loss(p1, t2) + regression_loss(p2, t1)
    good, _ = ref(v1, v2)
    assert abs(naive.item() - good.item()) > 1e-3


# ------------------------------------------------------------------------------------------
# target network: EMA update, no gradients, train mode
# ------------------------------------------------------------------------------------------


def test_update_target_fused_equals_reference_and_formula():
    a = tiny_byol()
    with torch.no_grad():
        for p in a.online_parameters():
            p.add_(torch.randn_like(p))
    b = copy.deepcopy(a)
    xi = [p.clone() for p in a.target.parameters()]
    theta = [p.clone() for p in a.online.parameters()]
    tau = 0.9
    a.update_target(tau)
    update_target_reference(b, tau)
    count = 0
    for pa, pb, x, t in zip(a.target.parameters(), b.target.parameters(), xi, theta):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(pa, tau * x + (1 - tau) * t, rtol=1e-6, atol=1e-6)
        count += 1
    assert count == len(theta) > 0
    assert any((pa - x).abs().max() > 1e-3 for pa, x in zip(a.target.parameters(), xi))
    # online untouched
    for p, t in zip(a.online.parameters(), theta):
        assert torch.equal(p, t)
    # tau = 1 keeps the target, tau = 0 copies online
    before = [p.clone() for p in a.target.parameters()]
    a.update_target(1.0)
    assert all(torch.equal(p, q) for p, q in zip(a.target.parameters(), before))
    a.update_target(0.0)
    assert all(torch.equal(p, q) for p, q in zip(a.target.parameters(), a.online.parameters()))


def test_target_gets_no_gradients_and_trains_in_train_mode():
    model = tiny_byol()
    model.train()
    assert all(not p.requires_grad for p in model.target.parameters())
    assert all(m.training for m in model.target.modules())
    tracked = [b.clone() for n, b in model.target.named_buffers() if "num_batches" in n]
    v1, v2 = _views()
    loss, _ = model(v1, v2)
    loss.backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert all(p.grad is not None for p in model.online_parameters())
    after = [b for n, b in model.target.named_buffers() if "num_batches" in n]
    # train-mode BN: each view updates the running statistics once
    assert all(int(a) == int(b) + 2 for a, b in zip(after, tracked))
    # batch statistics: a sample's target projection depends on the rest of the batch
    with torch.no_grad():
        full = model.target(v1)[0]
        part = model.target(torch.cat([v1[:1], v2[1:]]))[0]
    assert (full - part).abs().max() > 1e-4


def test_target_init_copy_and_independent():
    torch.manual_seed(0)
    from byol.models import BYOL

    m = BYOL(tiny_backbone(), 32, 16, 32, init_target_from_online=True)
    assert all(torch.equal(a, b) for a, b in zip(m.online.parameters(), m.target.parameters()))
    m2 = BYOL(tiny_backbone(), 32, 16, 32, init_target_from_online=False)
    pairs = zip(m2.online.modules(), m2.target.modules())
    weighted = [(a, b) for a, b in pairs if isinstance(a, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == 20 + 2  # resnet18 convs (incl. downsample) + projector Linears
    assert all(not torch.equal(a.weight, b.weight) for a, b in weighted)
    assert all(not p.requires_grad for p in m2.target.parameters())


# ------------------------------------------------------------------------------------------
# backbones and heads
# ------------------------------------------------------------------------------------------


def test_resnet50_feature_taps_shapes():
    torch.manual_seed(0)
    bb = build_backbone("resnet50").eval()
    assert bb.stage_channels == (64, 256, 512, 1024, 2048)
    assert bb.num_features == 2048
    with torch.no_grad():
        feats = bb.forward_stages(torch.rand(2, 3, 64, 64))
    expected = {
        "feature1": (2, 64, 32, 32),
        "feature2": (2, 256, 16, 16),
        "feature3": (2, 512, 8, 8),
        "feature4": (2, 1024, 4, 4),
        "feature5": (2, 2048, 2, 2),
    }
    assert {k: tuple(v.shape) for k, v in feats.items()} == expected


def test_small_stem_resnet18_feature_taps_shapes():
    bb = tiny_backbone().eval()
    assert bb.stage_channels == (8, 8, 16, 32, 64)
    assert bb.num_features == 64
    with torch.no_grad():
        x = torch.rand(2, 3, 16, 16)
        feats = bb.forward_stages(x)
        pooled = bb(x)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "feature1": (2, 8, 16, 16),
        "feature2": (2, 8, 16, 16),
        "feature3": (2, 16, 8, 8),
        "feature4": (2, 32, 4, 4),
        "feature5": (2, 64, 2, 2),
    }
    torch.testing.assert_close(pooled, feats["feature5"].mean(dim=(2, 3)))
    # asking for a shallow tap only returns that tap
    with torch.no_grad():
        only = bb.forward_stages(x, ["feature2"])
    assert list(only) == ["feature2"]
    torch.testing.assert_close(only["feature2"], feats["feature2"])
    with pytest.raises(ValueError, match="feature9"):
        bb.forward_stages(x, ["feature9"])


def test_resnet50_loads_strictly_into_torchvision():
    import torchvision

    torch.manual_seed(0)
    bb = build_backbone("resnet50").eval()
    with torch.no_grad():  # non-trivial BN statistics so eval outputs exercise them
        for name, buf in bb.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.1, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    tv = torchvision.models.resnet50()
    tv.fc = nn.Identity()
    result = tv.load_state_dict(bb.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    tv.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out_bb, out_tv = bb(x), tv(x)
    assert out_bb.shape == (2, 2048)
    torch.testing.assert_close(out_bb, out_tv, rtol=1e-5, atol=1e-5)
    # and the zero-init of the last BN gamma is off (paper results were obtained without it)
    assert all(float(b.bn3.weight.detach().abs().min()) == 1.0 for b in bb.layer1)


def test_mlp_layout():
    mlp = MLP(64, 32, 16)
    layers = list(mlp)
    assert len(layers) == 4
    lin1, bn, relu, lin2 = layers
    assert isinstance(lin1, nn.Linear) and lin1.in_features == 64 and lin1.out_features == 32
    assert lin1.bias is not None
    assert isinstance(bn, nn.BatchNorm1d) and bn.num_features == 32
    assert isinstance(relu, nn.ReLU)
    assert isinstance(lin2, nn.Linear) and lin2.out_features == 16 and lin2.bias is None
    model = tiny_byol()
    assert list(model.online.projector[0].weight.shape) == [32, 64]
    assert list(model.predictor[0].weight.shape) == [32, 16]
    assert model.predictor[3].out_features == 16
    # no BN after the last layer of either head
    assert not isinstance(list(model.online.projector)[-1], nn.modules.batchnorm._NormBase)


def test_one_channel_input():
    model = tiny_byol(in_chans=1)
    assert model.backbone.conv1.in_channels == 1
    v1, v2 = _views(c=1)
    loss, z = model(v1, v2)
    assert torch.isfinite(loss) and 0 <= loss.item() <= 8
    loss.backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    bb = build_backbone("resnet18", in_chans=1).eval()  # standard stem, 1 channel
    assert bb.conv1.weight.shape == (64, 1, 7, 7)
    with torch.no_grad():
        assert bb(torch.rand(1, 1, 32, 32)).shape == (1, 512)


def test_timm_backbone_by_name():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    bb = build_backbone("timm:resnet18", in_chans=3).eval()
    ref = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert bb.num_features == ref.num_features == 512
    with torch.no_grad():
        out = bb(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 512)
    with torch.no_grad():
        feats = bb.forward_stages(torch.rand(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "feature1": (1, 64, 32, 32),
        "feature2": (1, 64, 16, 16),
        "feature3": (1, 128, 8, 8),
        "feature4": (1, 256, 4, 4),
        "feature5": (1, 512, 2, 2),
    }
    # usable inside BYOL
    from byol.models import BYOL

    m = BYOL(build_backbone("timm:resnet18", in_chans=1), 32, 16, 32)
    loss, _ = m(torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16))
    assert torch.isfinite(loss)


def test_stem_stride_2_halves_every_stage_with_the_same_weights():
    from byol.models import build_backbone

    torch.manual_seed(0)
    one = build_backbone("resnet18", in_chans=1, small_stem=True, width=8).eval()
    torch.manual_seed(0)
    two = build_backbone("resnet18", in_chans=1, small_stem=True, width=8, stem_stride=2).eval()
    # same parameters, same keys: only the first conv's stride differs
    sd1, sd2 = one.state_dict(), two.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        f1, f2 = one.forward_stages(x), two.forward_stages(x)
    assert [tuple(v.shape[-2:]) for v in f1.values()] == [(28, 28), (28, 28), (14, 14), (7, 7), (4, 4)]
    assert [tuple(v.shape[-2:]) for v in f2.values()] == [(14, 14), (14, 14), (7, 7), (4, 4), (2, 2)]
    # the stride-2 stem is the stride-1 stem's output sampled at every other pixel
    torch.testing.assert_close(two.conv1(x), one.conv1(x)[..., ::2, ::2])
    with pytest.raises(ValueError, match="1 or 2"):
        build_backbone("resnet18", small_stem=True, stem_stride=3)
    assert build_backbone("resnet18", stem_stride=2).conv1.kernel_size == (7, 7)  # moot


def test_last_stage_width_widens_only_the_last_stage_and_the_features():
    from byol.config import Config
    from byol.models import build_byol

    std = build_backbone("resnet10", in_chans=1, small_stem=True, width=8)
    wide = build_backbone("resnet10", in_chans=1, small_stem=True, width=8, last_stage_width=96)
    assert std.num_features == 64 and wide.num_features == 96
    assert wide.stage_channels == (8, 8, 16, 32, 96) and std.stage_channels[-1] == 64
    sw, ss = wide.state_dict(), std.state_dict()
    for k, v in ss.items():  # stem and layer1-3 keep their shapes; layer4 grows
        assert (sw[k].shape == v.shape) == (not k.startswith("layer4.")) or v.dim() == 0, k
    assert sw["layer4.0.conv1.weight"].shape == (96, 32, 3, 3)
    assert sw["layer4.0.downsample.0.weight"].shape == (96, 32, 1, 1)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert wide.eval()(x).shape == (2, 96)
        assert wide.forward_stages(x)["feature5"].shape == (2, 96, 4, 4)
    # bottlenecks: planes x 4 features; 0 and 8 x width are the standard network
    assert build_backbone("resnet50", width=8, last_stage_width=16).num_features == 64
    assert build_backbone("resnet50", width=8, last_stage_width=64).state_dict().keys() == \
        build_backbone("resnet50", width=8).state_dict().keys()
    cfg = Config()
    cfg.model.arch, cfg.model.in_chans, cfg.model.small_stem, cfg.model.width = "resnet10", 1, True, 8
    cfg.model.last_stage_width = 96
    cfg.model.proj_hidden_dim = cfg.model.pred_hidden_dim = cfg.model.proj_dim = 16
    m = build_byol(cfg.model)
    first = next(x for x in m.online.projector.modules() if isinstance(x, nn.Linear))
    assert m.online.backbone.num_features == 96 and first.in_features == 96
    with pytest.raises(ValueError, match="last_stage_width"):
        build_backbone("resnet18", last_stage_width=-1)
    with pytest.raises(ValueError, match="timm"):
        build_backbone("timm:resnet18", last_stage_width=64)


def test_feature_bn_standardises_the_pooled_features_and_nothing_else():
    from byol.config import Config
    from byol.models import build_byol

    torch.manual_seed(0)
    plain = build_backbone("resnet10", in_chans=1, small_stem=True, width=8)
    fbn = build_backbone("resnet10", in_chans=1, small_stem=True, width=8, feature_bn=True)
    extra = set(fbn.state_dict()) - set(plain.state_dict())
    assert extra == {"feat_norm.running_mean", "feat_norm.running_var",
                     "feat_norm.num_batches_tracked"}
    assert not any(k.startswith("feat_norm") for k in plain.state_dict())  # torchvision's keys
    assert not list(fbn.feat_norm.parameters())  # no scale, no shift: nothing to learn
    fbn.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        raw = plain.train()(x)
        out = fbn.train()(x)
        mu, var = raw.mean(0), raw.var(0, unbiased=False)
        torch.testing.assert_close(out, (raw - mu) / torch.sqrt(var + 1e-5))
        # the running statistics follow training (momentum 0.1) and are what eval mode reads
        torch.testing.assert_close(fbn.feat_norm.running_mean, 0.1 * mu)
        rm, rv = fbn.feat_norm.running_mean, fbn.feat_norm.running_var
        plain.eval(), fbn.eval()
        raw = plain(x)
        torch.testing.assert_close(fbn(x), (raw - rm) / torch.sqrt(rv + 1e-5))
        assert fbn(x).min() < 0  # centred: no longer all non-negative like the ReLU features
        for k, v in plain.forward_stages(x).items():  # the stage outputs do not pass it
            torch.testing.assert_close(fbn.forward_stages(x)[k], v)
    cfg = Config()
    cfg.model.arch, cfg.model.in_chans, cfg.model.small_stem, cfg.model.width = "resnet10", 1, True, 8
    cfg.model.proj_hidden_dim = cfg.model.pred_hidden_dim = cfg.model.proj_dim = 16
    cfg.model.feature_bn = True
    m = build_byol(cfg.model)
    assert m.online.backbone.feat_norm is not None and m.target.backbone.feat_norm is not None
    with pytest.raises(ValueError, match="feature_bn"):
        build_backbone("timm:resnet18", feature_bn=True)
