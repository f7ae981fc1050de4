"""Aligned Xception backbone: shapes and strides at every output stride, FPN variant, gradient
flow, freezing, depth variants and the parameter count of the full Xception-65."""

import math

import pytest
import torch
from torch import nn

import panoptic_curriculum  # noqa: F401  applies the detectron2 compatibility layer
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone

from panoptic_curriculum.modeling.backbone import (
    XceptionBlock,
    add_xception_config,
    build_xception_backbone,
)

# Strides of res2..res5 per output stride, and channels at WIDTH_MULTIPLIER 0.125.
STRIDES = {
    32: {"res2": 4, "res3": 8, "res4": 16, "res5": 32},
    16: {"res2": 4, "res3": 8, "res4": 16, "res5": 16},
    8: {"res2": 4, "res3": 8, "res4": 8, "res5": 8},
}
TINY_CHANNELS = {"res2": 16, "res3": 32, "res4": 88, "res5": 256}


def _cfg(**xception):
    """A config with a tiny Xception (width 1/8, 2 middle blocks) plus the given overrides."""
    cfg = get_cfg()
    add_xception_config(cfg)
    cfg.MODEL.XCEPTION.WIDTH_MULTIPLIER = 0.125
    cfg.MODEL.XCEPTION.MIDDLE_BLOCKS = 2
    for key, value in xception.items():
        cfg.MODEL.XCEPTION[key] = value
    return cfg


def _tiny(**xception):
    return build_xception_backbone(_cfg(**xception), ShapeSpec(channels=3))


def test_config_is_idempotent():
    cfg = get_cfg()
    add_xception_config(cfg)
    cfg.MODEL.XCEPTION.DEPTH = 41
    add_xception_config(cfg)
    assert cfg.MODEL.XCEPTION.DEPTH == 41 and cfg.MODEL.XCEPTION.OUTPUT_STRIDE == 32


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_shapes_match_output_shape(output_stride):
    model = _tiny(OUTPUT_STRIDE=output_stride).eval()
    shapes = model.output_shape()
    assert list(shapes) == ["res2", "res3", "res4", "res5"]
    assert {k: s.stride for k, s in shapes.items()} == STRIDES[output_stride]
    assert {k: s.channels for k, s in shapes.items()} == TINY_CHANNELS
    assert model.size_divisibility == 32
    for h, w in [(64, 96), (65, 97)]:
        with torch.no_grad():
            out = model(torch.randn(2, 3, h, w))
        assert list(out) == list(shapes)
        for name, spec in shapes.items():
            expected = (2, spec.channels, math.ceil(h / spec.stride), math.ceil(w / spec.stride))
            assert tuple(out[name].shape) == expected, (name, h, w)


@pytest.mark.parametrize(
    "output_stride, res4_dilation, res5_dilations",
    [(32, 1, (1, 1)), (16, 1, (1, 2)), (8, 2, (2, 4))],
)
def test_dilations_replace_strides(output_stride, res4_dilation, res5_dilations):
    model = _tiny(OUTPUT_STRIDE=output_stride)
    middle = [b for b in model.res4 if b.shortcut_type == "identity"]
    assert len(middle) == 2 and all(b.dilation == res4_dilation for b in middle)
    assert tuple(b.dilation for b in model.res5) == res5_dilations
    assert model.res5[1].convs[0].depthwise.dilation == (res5_dilations[1],) * 2
    assert model.res5[0].stride == (2 if output_stride == 32 else 1)
    assert model.res4[0].stride == (1 if output_stride == 8 else 2)


def test_fpn_variant():
    cfg = _cfg()
    cfg.MODEL.BACKBONE.NAME = "build_xception_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    fpn = build_backbone(cfg).eval()
    shapes = fpn.output_shape()
    assert {k: s.stride for k, s in shapes.items()} == {f"p{i}": 2**i for i in range(2, 7)}
    assert all(s.channels == 16 for s in shapes.values())
    with torch.no_grad():
        out = fpn(torch.randn(1, 3, 64, 96))
    for name, spec in shapes.items():
        assert out[name].shape == (1, 16, math.ceil(64 / spec.stride), math.ceil(96 / spec.stride))


def test_fpn_rejects_dilated_output_stride():
    cfg = _cfg(OUTPUT_STRIDE=16)
    cfg.MODEL.BACKBONE.NAME = "build_xception_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    with pytest.raises(ValueError, match=r"MODEL\.XCEPTION\.OUTPUT_STRIDE"):
        build_backbone(cfg)


def test_gradients_reach_the_stem():
    model = _tiny(OUTPUT_STRIDE=16).train()
    out = model(torch.randn(2, 3, 32, 32))
    (out["res5"] ** 2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    assert model.stem.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("freeze_at", [0, 1, 3, 5])
def test_freeze_at(freeze_at):
    model = _tiny(FREEZE_AT=freeze_at).train()
    stages = [("stem", model.stem)] + [(n, getattr(model, n)) for n in model.stage_names]
    for idx, (name, stage) in enumerate(stages, start=1):
        frozen = idx <= freeze_at
        assert all(p.requires_grad != frozen for p in stage.parameters()), name
        bns = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
        frozen_bns = [m for m in stage.modules() if isinstance(m, FrozenBatchNorm2d)]
        assert (not bns and frozen_bns) if frozen else (bns and not frozen_bns), name
    if 0 < freeze_at < 5:  # frozen statistics do not move in train mode
        stats = model.stem.conv1.norm.running_mean.clone()
        model(torch.randn(2, 3, 32, 32))
        assert torch.equal(model.stem.conv1.norm.running_mean, stats)


def _middle_blocks(model):
    return sum(isinstance(b, XceptionBlock) and b.shortcut_type == "identity" for b in model.res4)


@pytest.mark.parametrize("depth, middle, res3_blocks", [(65, 16, 1), (41, 8, 1), (71, 16, 2)])
def test_depth_sets_middle_flow(depth, middle, res3_blocks):
    model = _tiny(DEPTH=depth, MIDDLE_BLOCKS=0)
    assert model.num_middle_blocks == middle == _middle_blocks(model)
    assert len(model.res3) == res3_blocks
    assert _middle_blocks(_tiny(DEPTH=depth, MIDDLE_BLOCKS=3)) == 3


def test_norm_options_and_truncated_stages():
    gn = _tiny(NORM="GN", OUT_FEATURES=["stem", "res3"]).eval()
    assert gn.stage_names == ["res2", "res3"] and not hasattr(gn, "res5")
    with torch.no_grad():
        out = gn(torch.randn(1, 3, 32, 32))
    assert list(out) == ["stem", "res3"] and out["res3"].shape == (1, 32, 4, 4)
    plain = _tiny(NORM="")
    assert plain.stem.conv1.norm is None and plain.stem.conv1.bias is not None


@pytest.mark.parametrize(
    "key, value", [("DEPTH", 50), ("OUTPUT_STRIDE", 4), ("OUT_FEATURES", ["res6"])]
)
def test_bad_config_raises(key, value):
    with pytest.raises(ValueError):
        _tiny(**{key: value})


def test_xception65_parameter_count():
    cfg = get_cfg()
    add_xception_config(cfg)
    cfg.MODEL.XCEPTION.OUTPUT_STRIDE = 16
    model = build_xception_backbone(cfg, ShapeSpec(channels=3))
    shapes = model.output_shape()
    assert [shapes[k].channels for k in shapes] == [128, 256, 728, 2048]
    assert model.num_middle_blocks == 16
    num_params = sum(p.numel() for p in model.parameters())
    assert num_params == 37_867_312  # stated in the module docstring
    assert 37e6 <= num_params <= 38.5e6
