"""Encoders, heads and the BYOL module."""

from .backbones import FEATURE_NAMES, RESNET_NAMES, ResNet, build_backbone
from .byol import BYOL, build_byol, regression_loss, tau_schedule
from .heads import MLP

__all__ = [
    "BYOL",
    "FEATURE_NAMES",
    "MLP",
    "RESNET_NAMES",
    "ResNet",
    "build_backbone",
    "build_byol",
    "regression_loss",
    "tau_schedule",
]
