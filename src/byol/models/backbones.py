"""Encoders: torchvision ResNets (optionally narrowed, small-image stem, any channel count) and
timm models, with taps on the stage outputs that mmselfsup calls feature1..feature5.

The ResNet keeps torchvision's module names (conv1, bn1, layer1..layer4), so its state dict is
torchvision's minus ``fc``: export to torchvision / mmdet / detectron2 is a key rename, never a
re-implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from ..config import RESNET_NAMES
from .whitening import FeatureWhitening

FEATURE_NAMES = ("feature1", "feature2", "feature3", "feature4", "feature5")

# name -> (block, layers, width_per_group multiplier)
_RESNETS = {
    # one BasicBlock per stage (timm's resnet10t depth with torchvision's stem): half the
    # compute of resnet18, for small images on a CPU budget
    "resnet10": (tv_resnet.BasicBlock, [1, 1, 1, 1], 1),
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2], 1),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3], 1),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3], 1),
    "resnet101": (tv_resnet.Bottleneck, [3, 4, 23, 3], 1),
    "resnet152": (tv_resnet.Bottleneck, [3, 8, 36, 3], 1),
    "wide_resnet50_2": (tv_resnet.Bottleneck, [3, 4, 6, 3], 2),
    "wide_resnet101_2": (tv_resnet.Bottleneck, [3, 4, 23, 3], 2),
}
if tuple(_RESNETS) != RESNET_NAMES:  # one list of names: byol.config validates model.arch by it
    raise ImportError(f"byol.config.RESNET_NAMES {RESNET_NAMES} and the ResNets built here "
                      f"{tuple(_RESNETS)} differ")


class ResNet(nn.Module):
    """torchvision ResNet trunk without ``fc``.

    Args:
        arch: one of ``RESNET_NAMES``.
        in_chans: input channels (1 for grayscale data: no fake RGB copies are made).
        small_stem: 3x3 stride-1 first conv and no max-pool, for 28-64 px images (CIFAR-style).
        stem_stride: stride of the small stem's conv (2: every stage at half the resolution,
            a quarter of the compute); ignored without ``small_stem``.
        width: channels of the first stage (64 in torchvision); the stages double it. Narrow
            networks make CPU pretraining practical.
        zero_init_residual: torchvision's option; BYOL's paper results were obtained without it.
        last_stage_width: channels of the last stage (layer4's ``planes``; 0 = ``8 * width``,
            torchvision's doubling). A wider last stage gives more features to the probes for
            little compute when the last stage runs on a small map (a 4x4 map at 28 px).
        feature_bn: a BatchNorm without scale or shift (``feat_norm``) on the pooled output:
            features standardised per dimension by the running statistics of training, so
            that a cosine similarity is not dominated by the common direction of non-negative
            ReLU features. The stage outputs (``forward_stages``) do not pass it.
        feature_whiten: the shrinkage of a ZCA whitening of the pooled output (``feat_whiten``,
            :class:`byol.models.whitening.FeatureWhitening`; 0 = none); the identity until
            fitted on training images' features (the engine does at the end of pretraining).
    """

    def __init__(
        self,
        arch: str = "resnet50",
        in_chans: int = 3,
        small_stem: bool = False,
        width: int = 64,
        zero_init_residual: bool = False,
        stem_stride: int = 1,
        last_stage_width: int = 0,
        feature_bn: bool = False,
        feature_whiten: float = 0.0,
    ) -> None:
        super().__init__()
        if arch not in _RESNETS:
            raise ValueError(f"unknown ResNet '{arch}'; choose one of {', '.join(RESNET_NAMES)}")
        block, layers, wide = _RESNETS[arch]
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride={stem_stride}: 1 or 2")
        stem_stride = stem_stride if small_stem else 1  # the standard stem has its own
        if last_stage_width < 0:
            raise ValueError(f"last_stage_width={last_stage_width}: 0 (= 8 x width) or more")
        last = last_stage_width or width * 8
        self.arch, self.in_chans, self.small_stem, self.width = arch, in_chans, small_stem, width
        self.stem_stride, self.last_stage_width = stem_stride, last
        # Build through torchvision so the block code (and init) is exactly theirs.
        if width == 64 and last == 512:
            ref = tv_resnet.ResNet(
                block, layers, width_per_group=64 * wide, zero_init_residual=zero_init_residual
            )
        else:
            ref = _narrow(block, layers, width, wide, zero_init_residual, last)
        if small_stem:
            ref.conv1 = nn.Conv2d(in_chans, width, 3, stem_stride, 1, bias=False)
            ref.maxpool = nn.Identity()
        elif in_chans != 3:
            ref.conv1 = nn.Conv2d(in_chans, width, 7, 2, 3, bias=False)
        if small_stem or in_chans != 3:
            nn.init.kaiming_normal_(ref.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.conv1, self.bn1, self.relu, self.maxpool = ref.conv1, ref.bn1, ref.relu, ref.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            ref.layer1,
            ref.layer2,
            ref.layer3,
            ref.layer4,
        )
        planes = (width, width * 2, width * 4, last)
        self.num_features = last * block.expansion
        self.feat_norm = nn.BatchNorm1d(self.num_features, affine=False) if feature_bn else None
        self.feat_whiten = (FeatureWhitening(self.num_features, feature_whiten)
                            if feature_whiten else None)
        self.stage_channels = (width,) + tuple(p * block.expansion for p in planes)

    def forward_stages(
        self, x: torch.Tensor, names: Sequence[str] = FEATURE_NAMES
    ) -> dict[str, torch.Tensor]:
        """Stage outputs by mmselfsup name: feature1 = stem before the max-pool, feature2..5 =
        layer1..layer4. Stops after the deepest stage asked for."""
        wanted = set(names)
        unknown = wanted - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"unknown feature names {sorted(unknown)}; use {FEATURE_NAMES}")
        last = max(FEATURE_NAMES.index(n) for n in wanted)
        out: dict[str, torch.Tensor] = {}
        x = self.relu(self.bn1(self.conv1(x)))
        if "feature1" in wanted:
            out["feature1"] = x
        x = self.maxpool(x)
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            if i > last:
                break
            x = layer(x)
            if f"feature{i + 1}" in wanted:
                out[f"feature{i + 1}"] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled output of the last stage, [B, num_features]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        if self.feat_norm is not None:
            x = self.feat_norm(x)
        return self.feat_whiten(x) if self.feat_whiten is not None else x


def _narrow(block, layers, width, wide, zero_init_residual, last) -> tv_resnet.ResNet:
    """torchvision's ResNet with every stage's width scaled by ``width / 64``, the last stage
    at ``last`` planes."""

    class _Narrow(tv_resnet.ResNet):
        def __init__(self) -> None:
            nn.Module.__init__(self)
            self._norm_layer = nn.BatchNorm2d
            self.inplanes, self.dilation, self.groups = width, 1, 1
            self.base_width = 64 * wide  # bottleneck inner width = planes * base_width / 64
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(block, width, layers[0])
            self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
            self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
            self.layer4 = self._make_layer(block, last, layers[3], stride=2)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
            if zero_init_residual:
                for m in self.modules():
                    if isinstance(m, tv_resnet.Bottleneck):
                        nn.init.zeros_(m.bn3.weight)
                    elif isinstance(m, tv_resnet.BasicBlock):
                        nn.init.zeros_(m.bn2.weight)

    return _Narrow()


class TimmBackbone(nn.Module):
    """Any timm model as a pooled encoder (``num_classes=0``); stage taps through
    ``features_only`` semantics are offered for models that support ``forward_intermediates``."""

    def __init__(self, name: str, in_chans: int = 3) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as e:  # pragma: no cover - depends on the optional extra
            raise ImportError(
                f"backbone 'timm:{name}' needs timm: pip install 'byol[timm]'"
            ) from e
        self.arch = f"timm:{name}"
        self.in_chans = in_chans
        self.model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
        self.num_features = self.model.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_stages(
        self, x: torch.Tensor, names: Sequence[str] = FEATURE_NAMES
    ) -> dict[str, torch.Tensor]:
        if not hasattr(self.model, "forward_intermediates"):
            raise NotImplementedError(f"{self.arch} has no forward_intermediates; use pooled features")
        feats = self.model.forward_intermediates(x, intermediates_only=True)
        # timm returns the stage outputs after the stem; map the last five onto feature1..5.
        feats = list(feats)[-5:]
        named = dict(zip(FEATURE_NAMES[5 - len(feats) :], feats))
        return {n: named[n] for n in names if n in named}


def build_backbone(
    arch: str, in_chans: int = 3, small_stem: bool = False, width: int = 64, stem_stride: int = 1,
    last_stage_width: int = 0, feature_bn: bool = False, feature_whiten: float = 0.0,
) -> nn.Module:
    """``resnet18`` .. ``wide_resnet101_2`` or ``timm:<model name>``."""
    if arch.startswith("timm:"):
        if last_stage_width or feature_bn or feature_whiten:
            what = (f"last_stage_width={last_stage_width}" if last_stage_width
                    else "feature_bn" if feature_bn else "feature_whiten")
            raise ValueError(f"{what} applies to byol's ResNets, not to {arch}")
        return TimmBackbone(arch[5:], in_chans=in_chans)
    return ResNet(arch, in_chans=in_chans, small_stem=small_stem, width=width,
                  stem_stride=stem_stride, last_stage_width=last_stage_width,
                  feature_bn=feature_bn, feature_whiten=feature_whiten)
