"""Backbones of the plugin; importing registers them in detectron2's BACKBONE_REGISTRY."""

from .xception import (
    AlignedXception,
    SeparableConv2d,
    XceptionBlock,
    XceptionStem,
    add_xception_config,
    build_xception_backbone,
    build_xception_fpn_backbone,
)

__all__ = [
    "AlignedXception",
    "SeparableConv2d",
    "XceptionBlock",
    "XceptionStem",
    "add_xception_config",
    "build_xception_backbone",
    "build_xception_fpn_backbone",
]
