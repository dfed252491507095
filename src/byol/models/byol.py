"""BYOL (Grill et al. 2020), the algorithm box in code. Nothing here knows about data or I/O.

    online  = backbone -> projector -> predictor      (trained by the optimiser)
    target  = backbone -> projector                   (EMA of online, never gets gradients)
    loss    = reg(q(v1), z'(v2)) + reg(q(v2), z'(v1))  with reg(a, b) = 2 - 2 cos(a, b)
    after every optimiser step: xi <- tau * xi + (1 - tau) * theta,
        tau_k = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .heads import MLP
from .viewnorm import make_view_split, split_views


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z); in [0, 4]."""
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.float(), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


def tau_schedule(step: int, total_steps: int, tau_base: float, tau_final: float = 1.0) -> float:
    """Cosine increase of the EMA decay from tau_base (step 0) to tau_final (step K)."""
    if total_steps <= 0:
        return tau_final
    progress = min(max(step / total_steps, 0.0), 1.0)
    return tau_final - (tau_final - tau_base) * (math.cos(math.pi * progress) + 1) / 2


class Encoder(nn.Module):
    """Backbone followed by the projector: the part shared by online and target networks."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


class BYOL(nn.Module):
    """Online and target networks with the symmetric loss and the EMA update.

    ``forward(v1, v2)`` returns the summed two-direction loss (in [0, 8]) and the online
    projections (detached, for collapse monitoring). With ``fuse_views`` both views travel
    through each network in one batch while every BatchNorm keeps per-view statistics, which
    computes exactly what two separate forwards compute.
    """

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        pred_hidden_dim: int = 4096,
        fuse_views: bool = True,
        init_target_from_online: bool = True,
    ) -> None:
        super().__init__()
        dim = backbone.num_features
        self.online = Encoder(backbone, MLP(dim, proj_hidden_dim, proj_dim))
        self.predictor = MLP(proj_dim, pred_hidden_dim, proj_dim)
        self.target = copy.deepcopy(self.online)
        if not init_target_from_online:  # DeepMind initialises the target independently
            for m in self.target.modules():
                if hasattr(m, "reset_parameters") and m is not self.target:
                    m.reset_parameters()
        self.target.requires_grad_(False)
        self.fuse_views = fuse_views
        self._norms = make_view_split(self)

    def convert_sync_batchnorm(self) -> None:
        """SyncBatchNorm across processes (multi-GPU pretraining), still split per view."""
        for name, child in list(self.named_children()):
            setattr(self, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        self._norms = make_view_split(self)

    @property
    def backbone(self) -> nn.Module:
        """The encoder kept after pretraining (the online backbone)."""
        return self.online.backbone

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, local: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fuse_views:
            both = torch.cat([v1, v2])
            with split_views(self._norms, 2):
                z = self.online(both)
                p1, p2 = self.predictor(z).chunk(2)
                with torch.no_grad():
                    t1, t2 = self.target(both).chunk(2)
            z1 = z[: len(v1)]
        else:
            z1, z2 = self.online(v1), self.online(v2)
            p1, p2 = self.predictor(z1), self.predictor(z2)
            with torch.no_grad():
                t1, t2 = self.target(v1), self.target(v2)
        loss = regression_loss(p1, t2.detach()) + regression_loss(p2, t1.detach())
        if local is not None and len(local):
            # multi-crop: each small view (online only) regresses onto both global targets.
            # Mean over the 2 + 2L (prediction, target) pairs, times 2: the two-view range.
            n_local = len(local) // len(v1)
            pl = self.predictor(self.online(local)).view(n_local, len(v1), -1)
            t1d, t2d = t1.detach(), t2.detach()
            extra = sum(regression_loss(p, t1d) + regression_loss(p, t2d) for p in pl.unbind(0))
            loss = (loss + extra) * 2 / (2 + 2 * n_local)
        return loss, z1.detach()

    def online_parameters(self) -> list[nn.Parameter]:
        """What the optimiser trains: online backbone + projector + predictor."""
        return list(self.online.parameters()) + list(self.predictor.parameters())

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """xi <- tau * xi + (1 - tau) * theta, as one fused multi-tensor op (no host sync)."""
        online = [p.detach() for p in self.online.parameters()]
        target = [p for p in self.target.parameters()]
        torch._foreach_lerp_(target, online, 1.0 - tau)


def build_byol(model_cfg, fuse_views: bool = True, init_target_from_online: bool = True) -> BYOL:
    """BYOL from a :class:`byol.config.ModelConfig`."""
    backbone = build_backbone(
        model_cfg.arch, model_cfg.in_chans, model_cfg.small_stem, model_cfg.width,
        getattr(model_cfg, "stem_stride", 1), getattr(model_cfg, "last_stage_width", 0),
        getattr(model_cfg, "feature_bn", False), getattr(model_cfg, "feature_whiten", 0.0),
    )
    return BYOL(
        backbone,
        model_cfg.proj_hidden_dim,
        model_cfg.proj_dim,
        model_cfg.pred_hidden_dim,
        fuse_views=fuse_views,
        init_target_from_online=init_target_from_online,
    )
