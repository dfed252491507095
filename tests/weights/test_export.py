"""Export to torchvision / timm / OpenMMLab / detectron2 / safetensors, and import of mmselfsup
checkpoints."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision

from byol.checkpoint import FORMAT, CheckpointError, atomic_save, load_backbone, load_checkpoint
from byol.config import Config
from byol.models import build_byol
from byol.weights.export import export_checkpoint, import_checkpoint
from byol.weights.foreign import mlp_to_neck


def _byol_ckpt(path, arch="resnet18", in_chans=3, small_stem=True, width=8, hidden=32, dim=16,
               feature_bn=False):
    torch.manual_seed(0)
    cfg = Config()
    cfg.model.arch, cfg.model.in_chans, cfg.model.small_stem, cfg.model.width = (
        arch, in_chans, small_stem, width)
    cfg.model.feature_bn = feature_bn
    cfg.model.proj_hidden_dim, cfg.model.proj_dim, cfg.model.pred_hidden_dim = hidden, dim, hidden
    cfg.data.source = "synthetic"
    if in_chans == 1:
        cfg.augment.mean, cfg.augment.std = (0.5,), (0.25,)
    model = build_byol(cfg.model)
    with torch.no_grad():  # non-trivial BN statistics and distinct target weights
        for name, buf in model.named_buffers():
            if "running_mean" in name:
                buf.normal_(0, 0.1)
            elif "running_var" in name:
                buf.uniform_(0.5, 1.5)
        for p in model.target.parameters():
            p.add_(0.01)
    atomic_save({"format": FORMAT, "config": cfg.to_dict(), "model": model.state_dict()}, path)
    return model


def test_resnet50_torchvision_export_same_features(tmp_path):
    ck = tmp_path / "byol.pt"
    model = _byol_ckpt(ck, arch="resnet50", small_stem=False, width=64)
    out = tmp_path / "r50_tv.pth"
    rep = export_checkpoint(ck, out, "torchvision")
    assert any("zero-initialised" in n for n in rep["notes"])
    sd = torch.load(out, weights_only=True)
    tv = torchvision.models.resnet50()
    tv.load_state_dict(sd, strict=True)
    assert float(sd["fc.weight"].abs().sum()) == 0.0
    tv.fc = torch.nn.Identity()
    tv.eval()
    bb = model.online.backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tv(x), bb(x), rtol=1e-5, atol=1e-5)
    timm = pytest.importorskip("timm")
    tm = timm.create_model("resnet50", pretrained=False)
    tm.load_state_dict(sd, strict=True)
    rep = export_checkpoint(ck, tmp_path / "r50_timm.pth", "timm")  # verifies into timm too
    assert rep["format"] == "timm"


def test_gray_backbone_exports_equivalent_rgb(tmp_path):
    ck = tmp_path / "gray.pt"
    model = _byol_ckpt(ck, arch="resnet18", in_chans=1, small_stem=False, width=64)
    out = tmp_path / "tv.pth"
    rep = export_checkpoint(ck, out, "torchvision")
    assert any("divided by 3" in n for n in rep["notes"])
    tv = torchvision.models.resnet18()
    tv.load_state_dict(torch.load(out, weights_only=True), strict=True)
    tv.fc = torch.nn.Identity()
    gray = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(tv.eval()(gray.repeat(1, 3, 1, 1)),
                                   model.online.backbone.eval()(gray), rtol=1e-4, atol=1e-5)


def test_refuses_non_torchvision_variants_unless_forced(tmp_path):
    ck = tmp_path / "small.pt"
    _byol_ckpt(ck)  # small stem, width 8
    with pytest.raises(CheckpointError, match="small-image stem.*--force"):
        export_checkpoint(ck, tmp_path / "x.pth", "torchvision")
    with pytest.raises(CheckpointError, match="width is 8"):
        export_checkpoint(ck, tmp_path / "x.pkl", "detectron2")
    rep = export_checkpoint(ck, tmp_path / "x.pth", "torchvision", force=True)
    assert rep["notes"] and (tmp_path / "x.pth").is_file()
    # safetensors takes any variant
    from safetensors.torch import load_file

    export_checkpoint(ck, tmp_path / "x.safetensors", "safetensors")
    st = load_file(str(tmp_path / "x.safetensors"))
    bb, _ = load_backbone(ck)
    for k, v in bb.state_dict().items():
        torch.testing.assert_close(st[k], v)


def test_detectron2_and_openmmlab_layouts(tmp_path):
    ck = tmp_path / "r18.pt"
    model = _byol_ckpt(ck, arch="resnet18", small_stem=False, width=64)
    export_checkpoint(ck, tmp_path / "d2.pkl", "detectron2")
    blob = pickle.loads((tmp_path / "d2.pkl").read_bytes())
    assert blob["__author__"] == "byol" and blob["matching_heuristics"] is True
    keys = set(blob["model"])
    for k in ("stem.conv1.weight", "stem.conv1.norm.weight", "stem.conv1.norm.running_var",
              "res2.0.conv1.weight", "res2.0.conv1.norm.weight", "res2.1.conv2.norm.bias",
              "res3.0.shortcut.weight", "res3.0.shortcut.norm.running_mean",
              "res5.0.shortcut.weight", "res5.1.conv2.weight"):
        assert k in keys, k
    assert not any("num_batches_tracked" in k or k.startswith(("layer", "fc", "bn1")) for k in keys)
    bb = model.online.backbone.state_dict()
    assert (blob["model"]["res3.0.shortcut.norm.running_mean"]
            == bb["layer2.0.downsample.1.running_mean"].numpy()).all()
    assert (blob["model"]["stem.conv1.norm.weight"] == bb["bn1.weight"].numpy()).all()
    for fmt in ("mmdet", "mmseg", "mmpretrain"):
        export_checkpoint(ck, tmp_path / f"{fmt}.pth", fmt)
        obj = torch.load(tmp_path / f"{fmt}.pth", weights_only=True)
        assert set(obj) == {"state_dict", "meta"}
        assert set(obj["state_dict"]) == {f"backbone.{k}" for k in bb}
        assert obj["meta"]["arch"] == "resnet18"


def _to_mmselfsup(model, layout: str) -> dict:
    sd = model.state_dict()

    def part(prefix):
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

    out = {}
    if layout == "1.x":
        out.update({f"backbone.{k}": v for k, v in part("online.backbone.").items()})
        out.update({f"neck.{k}": v for k, v in mlp_to_neck(part("online.projector.")).items()})
        out.update({f"target_net.0.{k}": v for k, v in part("target.backbone.").items()})
        out.update({f"target_net.1.{k}": v
                    for k, v in mlp_to_neck(part("target.projector.")).items()})
        out["data_preprocessor.mean"] = torch.zeros(3, 1, 1)
    else:  # 0.x: online_net registered as (backbone, neck) Sequential and as .backbone/.neck
        out.update({f"online_net.0.{k}": v for k, v in part("online.backbone.").items()})
        out.update({f"backbone.{k}": v for k, v in part("online.backbone.").items()})
        out.update({f"online_net.1.mlp.{k}": v for k, v in part("online.projector.").items()})
        out.update({f"target_net.0.{k}": v for k, v in part("target.backbone.").items()})
        out.update({f"target_net.1.mlp.{k}": v for k, v in part("target.projector.").items()})
    out.update({f"head.predictor.{k}": v for k, v in mlp_to_neck(part("predictor.")).items()})
    return out


@pytest.mark.parametrize("layout", ["1.x", "0.x"])
def test_import_mmselfsup_round_trip(tmp_path, layout):
    src = tmp_path / "mmselfsup.pth"
    model = _byol_ckpt(tmp_path / "orig.pt")
    torch.save({"meta": {"epoch": 200, "iter": 1000}, "state_dict": _to_mmselfsup(model, layout)},
               src)
    rep = import_checkpoint(src, tmp_path / "imported.pt")
    assert rep["missing"] == []
    assert rep["arch"] == "resnet18"
    assert rep["unexpected"] == (["data_preprocessor.mean"] if layout == "1.x" else [])
    ck = load_checkpoint(tmp_path / "imported.pt")
    assert ck["format"] == FORMAT and ck["epoch"] == 200
    ref = model.state_dict()
    assert set(ck["model"]) == set(ref)
    for k, v in ref.items():
        assert torch.equal(ck["model"][k], v), k
    bb, cfg = load_backbone(tmp_path / "imported.pt", which="target")
    assert cfg.model.small_stem and cfg.model.width == 8 and cfg.model.proj_dim == 16
    torch.testing.assert_close(bb.state_dict()["conv1.weight"],
                               model.target.backbone.conv1.weight)


def test_import_torchvision_state_dict(tmp_path):
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    rep = import_checkpoint(tmp_path / "tv.pth", tmp_path / "byol.pt")
    assert rep["arch"] == "resnet18"
    assert rep["missing"]  # projector / predictor are not in a torchvision file
    bb, cfg = load_backbone(tmp_path / "byol.pt")
    assert cfg.model.width == 64 and not cfg.model.small_stem
    x = torch.randn(1, 3, 64, 64)
    tv.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(bb.eval()(x), tv.eval()(x))


def test_unsafe_pickle_needs_trust(tmp_path):
    import argparse

    tv = torchvision.models.resnet18()
    # an arbitrary Python object in the meta, like mmengine's message hub
    torch.save({"state_dict": tv.state_dict(), "meta": argparse.Namespace(a=1)}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="--trust"):
        import_checkpoint(tmp_path / "m.pth", tmp_path / "o.pt")
    rep = import_checkpoint(tmp_path / "m.pth", tmp_path / "o.pt", trust=True)
    assert rep["layout"] == "torchvision" and rep["arch"] == "resnet18"


def _small_resnet10_exported(tmp_path, **model):
    """A byol checkpoint of a width-8 small-stem ResNet-10 with ``model`` settings at c.pt, its
    backbone exported as b.safetensors and evaluated from there: (model, eval model)."""
    from byol.eval.loading import load_eval_model

    cfg = Config()
    cfg.model.arch, cfg.model.small_stem, cfg.model.width = "resnet10", True, 8
    cfg.model.proj_hidden_dim = cfg.model.pred_hidden_dim = cfg.model.proj_dim = 16
    for k, v in model.items():
        setattr(cfg.model, k, v)
    torch.manual_seed(0)
    net = build_byol(cfg.model)
    atomic_save({"format": FORMAT, "config": cfg.to_dict(), "model": net.state_dict()},
                tmp_path / "c.pt")
    export_checkpoint(tmp_path / "c.pt", tmp_path / "b.safetensors", "safetensors")
    ev = load_eval_model(str(tmp_path / "b.safetensors"))
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():  # the exported file rebuilds the same network
        torch.testing.assert_close(ev.backbone.eval()(x), net.online.backbone.eval()(x))
    return net, ev


def test_safetensors_export_keeps_the_stride_2_stem(tmp_path):
    # the stride is not in the tensors' shapes: evaluating the exported file must rebuild it
    _, ev = _small_resnet10_exported(tmp_path, stem_stride=2)
    assert ev.backbone.conv1.stride == (2, 2) and ev.config.model.stem_stride == 2


def test_a_wide_last_stage_exports_to_safetensors_and_refuses_torchvision(tmp_path):
    # the last stage's width is in the tensors' shapes: the exported file rebuilds it
    from byol.weights.foreign import infer_resnet

    _, ev = _small_resnet10_exported(tmp_path, last_stage_width=80)
    assert ev.config.model.last_stage_width == 80 and ev.backbone.num_features == 80
    std = build_byol(Config().model).online.backbone.state_dict()
    assert infer_resnet(std)["last_stage_width"] == 0
    with pytest.raises(CheckpointError, match="last stage has 80 planes"):
        export_checkpoint(tmp_path / "c.pt", tmp_path / "t.pth", "torchvision")


def test_feature_bn_travels_in_safetensors_and_is_left_out_of_stock_resnets(tmp_path):
    from byol.api import load_backbone as api_load_backbone
    from byol.eval.loading import load_eval_model
    from byol.weights.foreign import infer_resnet

    ck = tmp_path / "fbn.pt"
    model = _byol_ckpt(ck, arch="resnet18", small_stem=False, width=64, feature_bn=True)
    bb = model.online.backbone.eval()
    norm = bb.feat_norm
    assert float(norm.running_mean.abs().sum()) > 0  # non-trivial statistics to carry
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = bb(x)
        raw = ours * torch.sqrt(norm.running_var + norm.eps) + norm.running_mean
    # byol's own checkpoint and its safetensors export rebuild the BatchNorm with its statistics
    ev = load_eval_model(str(ck))
    assert ev.config.model.feature_bn
    assert ":fbn" in load_eval_model(str(ck), baseline="random").key
    rep = export_checkpoint(ck, tmp_path / "b.safetensors", "safetensors")
    assert not any("feature_bn" in n for n in rep["notes"])
    ev2 = load_eval_model(str(tmp_path / "b.safetensors"))
    assert ev2.config.model.feature_bn
    from safetensors.torch import load_file

    assert infer_resnet(load_file(str(tmp_path / "b.safetensors")))["feature_bn"]
    with torch.no_grad():
        torch.testing.assert_close(ev.backbone.eval()(x), ours)
        torch.testing.assert_close(ev2.backbone.eval()(x), ours)
    # a stock ResNet has no place for it: left out with a note, the features before it
    rep = export_checkpoint(ck, tmp_path / "t.pth", "torchvision")  # strict load verified
    assert any("model.feature_bn" in n for n in rep["notes"])
    sd = torch.load(tmp_path / "t.pth", weights_only=True)
    assert not any(k.startswith("feat_norm") for k in sd)
    tv = torchvision.models.resnet18()
    tv.load_state_dict(sd, strict=True)
    tv.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(tv.eval()(x), raw, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(api_load_backbone(str(ck), "torchvision")(x), raw,
                                   rtol=1e-4, atol=1e-4)
    rep = export_checkpoint(ck, tmp_path / "d2.pkl", "detectron2")
    d2 = pickle.loads((tmp_path / "d2.pkl").read_bytes())["model"]
    assert not any("feat_norm" in k for k in d2) and "res5.1.conv2.weight" in d2
