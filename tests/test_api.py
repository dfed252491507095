"""``byol.load_backbone``: a ready torchvision / timm / byol module from a checkpoint."""

from __future__ import annotations

import pytest
import torch

import byol
from byol.checkpoint import FORMAT, atomic_save
from byol.config import Config
from byol.errors import CheckpointError
from byol.models import build_byol


def _ckpt(path, small_stem: bool, width: int = 64, in_chans: int = 3, stem_stride: int = 1):
    cfg = Config()
    cfg.model.arch, cfg.model.small_stem, cfg.model.width = "resnet18", small_stem, width
    cfg.model.stem_stride = stem_stride
    cfg.model.in_chans = in_chans
    cfg.augment.mean, cfg.augment.std = (0.5,) * in_chans, (0.25,) * in_chans
    cfg.model.proj_hidden_dim = cfg.model.pred_hidden_dim = cfg.model.proj_dim = 16
    torch.manual_seed(0)
    model = build_byol(cfg.model)
    atomic_save({"format": FORMAT, "config": cfg.to_dict(), "model": model.state_dict()}, path)
    return model.backbone.eval()


@pytest.mark.parametrize("small_stem,in_chans,stride", [(False, 3, 1), (True, 1, 1), (True, 3, 2)])
def test_torchvision_module_gives_byol_s_features(tmp_path, small_stem, in_chans, stride):
    own = _ckpt(tmp_path / "c.pt", small_stem, in_chans=in_chans, stem_stride=stride)
    net = byol.load_backbone(str(tmp_path / "c.pt"), format="torchvision")
    import torchvision

    assert isinstance(net, torchvision.models.ResNet) and not net.training
    assert net.conv1.stride == own.conv1.stride == ((stride, stride) if small_stem else (2, 2))
    x = torch.rand(2, in_chans, 32, 32)
    rgb = x.expand(-1, 3, -1, -1) if in_chans == 1 else x  # gray -> three copies
    with torch.no_grad():
        assert torch.allclose(net(rgb), own(x).flatten(1), atol=1e-4)


def test_narrow_width_points_to_format_byol(tmp_path):
    _ckpt(tmp_path / "c.pt", True, width=16)
    with pytest.raises(CheckpointError, match="format='byol'"):
        byol.load_backbone(str(tmp_path / "c.pt"), format="torchvision")
    net = byol.load_backbone(str(tmp_path / "c.pt"), format="byol")
    assert net(torch.rand(1, 3, 16, 16)).shape == (1, 128)
    with pytest.raises(CheckpointError, match="choose one of"):
        byol.load_backbone(str(tmp_path / "c.pt"), format="keras")
