"""Aligned Xception, the DeepLabV3+ encoder, as a detectron2 backbone.

Architecture (channel counts at ``WIDTH_MULTIPLIER`` 1, strides at ``OUTPUT_STRIDE`` 32)::

    stem    3x3 conv 32 /2 + norm + ReLU, 3x3 conv 64 + norm + ReLU          stride 2,  64 ch
    res2    entry block  [128, 128, 128] /2, 1x1-projection shortcut         stride 4,  128 ch
    res3    entry block  [256, 256, 256] /2, 1x1-projection shortcut         stride 8,  256 ch
    res4    entry block  [728, 728, 728] /2, 1x1-projection shortcut,
            then the middle flow: N blocks [728, 728, 728], identity shortcut stride 16, 728 ch
    res5    exit block   [728, 1024, 1024] /2, 1x1-projection shortcut,
            then separable convs 1536, 1536, 2048 (no shortcut)              stride 32, 2048 ch

Every block entry ``[a, b, c]`` is three 3x3 separable convolutions (depthwise 3x3, possibly
dilated, + norm, then pointwise 1x1 + norm); the stride of a block sits on its third one and
on its 1x1 shortcut. ``N`` is 16 for Xception-65 and 8 for Xception-41. Xception-71 is
Xception-65 with two more entry blocks, as in DeepLab: a stride-1 256 block before the
stride-2 256 block, and a stride-1 728 block before the stride-2 728 block.

ReLU placement follows the DeepLab reference implementation (the one its released Xception
checkpoints were trained with), not the loose "ReLU after every BN" reading of the paper:

* in every residual block (entry flow, middle flow, first exit block) each separable conv is
  *pre-activated*: ``ReLU -> depthwise 3x3 -> norm -> pointwise 1x1 -> norm``. Chained, this
  reads "depthwise + norm + pointwise + norm + ReLU" for the first two convs of a block,
  while the ReLU of the third conv comes after the residual sum (as the next block's
  pre-activation). The shortcut sees the block input before that ReLU. Hence ``res2``,
  ``res3`` and ``res4`` are the un-activated residual sums (DeepLab's low-level feature is
  such an un-activated tensor too; its decoder applies 1x1 conv + BN + ReLU to it);
* in the last exit-flow block (1536, 1536, 2048) each separable conv is
  ``depthwise 3x3 -> norm -> ReLU -> pointwise 1x1 -> norm -> ReLU``, so ``res5`` is
  activated.

``OUTPUT_STRIDE`` 16 or 8 removes the strides that would go beyond it and dilates what follows,
as ``resnet_utils.stack_blocks_dense`` of DeepLab does: the block whose stride is removed keeps
the incoming dilation, every later block multiplies it by the removed stride. Output stride
16: the exit block 728->1024 runs at dilation 1 with stride 1, the last three separable convs
at dilation 2 (``res5`` has stride 16). Output stride 8: the third entry block runs at stride 1,
the middle flow and the exit block 728->1024 at dilation 2, the last three convs at dilation 4
(``res4`` and ``res5`` have stride 8).

Padding is "same": a 3x3 conv of dilation ``d`` pads ``d`` on each side, so a stride-2 layer
maps a size ``n`` to ``ceil(n / 2)``. An input whose height and width are divisible by 32 gives
exactly ``H / stride`` x ``W / stride`` outputs; any other size gives ``ceil(H / stride)``.

Parameters: the full Xception-65 (``WIDTH_MULTIPLIER`` 1, ``OUTPUT_STRIDE`` 16, BN; output
stride does not change the count) has 37,867,312 parameters (37.87 M; learnable weights,
BN running statistics not counted), in line with DeepLab's Xception-65 encoder without
classifier. ``tests/test_xception.py`` checks this number.
"""

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

__all__ = [
    "AlignedXception",
    "SeparableConv2d",
    "XceptionBlock",
    "XceptionStem",
    "add_xception_config",
    "build_xception_backbone",
    "build_xception_fpn_backbone",
]

_STAGE_NAMES = ("res2", "res3", "res4", "res5")
_MIDDLE_BLOCKS_OF_DEPTH = {41: 8, 65: 16, 71: 16}


def add_xception_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.XCEPTION`` to ``cfg`` in place (does nothing if it is already there)."""
    if hasattr(cfg.MODEL, "XCEPTION"):
        return
    cfg.MODEL.XCEPTION = CN()
    # Network depth (layers): 65 (16 middle-flow blocks), 41 (8) or 71 (65 plus two
    # stride-1 entry-flow blocks, as in DeepLab).
    cfg.MODEL.XCEPTION.DEPTH = 65
    # Number of middle-flow blocks (count); 0 takes it from DEPTH.
    cfg.MODEL.XCEPTION.MIDDLE_BLOCKS = 0
    # Factor on every channel count (ratio); counts are rounded to multiples of 8 when != 1.
    cfg.MODEL.XCEPTION.WIDTH_MULTIPLIER = 1.0
    # Stride of "res5" w.r.t. the input (pixels): 32, or 16 / 8 with dilated convs instead.
    cfg.MODEL.XCEPTION.OUTPUT_STRIDE = 32
    # Normalisation after every conv: any get_norm name ("BN", "FrozenBN", "GN", "SyncBN", "").
    cfg.MODEL.XCEPTION.NORM = "BN"
    # Features returned (names among "stem", "res2", "res3", "res4", "res5").
    cfg.MODEL.XCEPTION.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Frozen stages (count), as detectron2's RESNETS.FREEZE_AT: 0 none, 1 the stem,
    # k the stem and res2..res(k); frozen norms become FrozenBatchNorm2d.
    cfg.MODEL.XCEPTION.FREEZE_AT = 0


def _norm_layer(norm, channels: int) -> Optional[nn.Module]:
    """``get_norm(norm, channels)``, except that "GN" uses ``gcd(32, channels)`` groups.

    Plain detectron2 "GN" means 32 groups, which 728 (and scaled counts) cannot be split into.
    """
    if norm == "GN":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return get_norm(norm, channels)


def _conv_norm(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    norm,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    relu: bool = False,
) -> Conv2d:
    """Conv2d with "same" padding, followed by ``norm`` (bias only without norm) and ReLU."""
    norm_layer = _norm_layer(norm, out_channels)
    return Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=dilation * (kernel_size - 1) // 2,
        dilation=dilation,
        groups=groups,
        bias=norm_layer is None,
        norm=norm_layer,
        activation=F.relu if relu else None,
    )


class SeparableConv2d(nn.Module):
    """3x3 depthwise conv (dilated) + norm, then 1x1 pointwise conv + norm.

    With ``activation="pre"`` a ReLU precedes the depthwise conv; with ``activation="post"``
    a ReLU follows each of the two norms (see the module docstring for where each is used).

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        norm="BN",
        activation: str = "pre",
    ):
        super().__init__()
        if activation not in ("pre", "post"):
            raise ValueError(f"activation must be 'pre' or 'post', got {activation!r}")
        self.pre_activation = activation == "pre"
        post = not self.pre_activation
        self.depthwise = _conv_norm(
            in_channels, in_channels, 3, norm, stride, dilation, groups=in_channels, relu=post
        )
        self.pointwise = _conv_norm(in_channels, out_channels, 1, norm, relu=post)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_activation:
            x = F.relu(x)  # not in place: a residual block's shortcut reads the same tensor
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """Three separable convs with an optional shortcut; the stride sits on the third conv.

    Args:
        in_channels: channels of the input.
        channels: output channels of the three separable convs.
        stride: 1 or 2, applied by the third conv and the projection shortcut.
        dilation: dilation of the three depthwise convs.
        shortcut: "conv" (1x1 conv + norm, strided), "identity" (needs equal channels and
            stride 1) or "none".
        norm: normalisation name or callable (see :func:`_norm_layer`).
        activation: "pre" or "post", passed to :class:`SeparableConv2d`.

    Shapes: ``(N, in_channels, H, W) -> (N, channels[-1], ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        stride: int = 1,
        dilation: int = 1,
        shortcut: str = "conv",
        norm="BN",
        activation: str = "pre",
    ):
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"an Xception block has 3 separable convs, got channels={channels}")
        out_channels = channels[-1]
        self.stride = stride
        self.dilation = dilation
        self.shortcut_type = shortcut
        convs = []
        prev = in_channels
        for i, c in enumerate(channels):
            s = stride if i == len(channels) - 1 else 1
            convs.append(SeparableConv2d(prev, c, s, dilation, norm, activation))
            prev = c
        self.convs = nn.Sequential(*convs)
        if shortcut == "conv":
            self.shortcut = _conv_norm(in_channels, out_channels, 1, norm, stride=stride)
        elif shortcut == "identity":
            if in_channels != out_channels or stride != 1:
                raise ValueError(
                    "an identity shortcut needs in_channels == out_channels and stride 1, got "
                    f"{in_channels} -> {out_channels}, stride {stride}"
                )
            self.shortcut = None
        elif shortcut == "none":
            self.shortcut = None
        else:
            raise ValueError(f"shortcut must be 'conv', 'identity' or 'none', got {shortcut!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs(x)
        if self.shortcut_type == "conv":
            out = out + self.shortcut(x)
        elif self.shortcut_type == "identity":
            out = out + x
        return out


class XceptionStem(nn.Module):
    """3x3 conv /2 + norm + ReLU, then 3x3 conv + norm + ReLU.

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, ceil(H / 2), ceil(W / 2))``.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, norm="BN"):
        super().__init__()
        self.conv1 = _conv_norm(in_channels, mid_channels, 3, norm, stride=2, relu=True)
        self.conv2 = _conv_norm(mid_channels, out_channels, 3, norm, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


def _scale_channels(channels: int, multiplier: float) -> int:
    """``channels * multiplier`` rounded to a multiple of 8 (at least 8, at least 90%)."""
    if multiplier == 1.0:
        return channels
    target = channels * multiplier
    scaled = max(8, int(target + 4) // 8 * 8)
    if scaled < 0.9 * target:
        scaled += 8
    return scaled


def _freeze(module: nn.Module) -> None:
    """No gradient for ``module``'s parameters; its BN/SyncBN become FrozenBatchNorm2d."""
    for p in module.parameters():
        p.requires_grad_(False)
    FrozenBatchNorm2d.convert_frozen_batchnorm(module)


class AlignedXception(Backbone):
    """Aligned Xception-41/65/71 of DeepLabV3+ (see the module docstring).

    Args:
        in_channels: channels of the input image.
        depth: 41, 65 or 71.
        num_middle_blocks: middle-flow blocks; None takes 8 (depth 41) or 16 (65, 71).
        width_multiplier: factor on every channel count (rounded to multiples of 8 unless 1).
        output_stride: 32, 16 or 8: the stride of the last stage.
        norm: normalisation after every conv: a :func:`detectron2.layers.get_norm` name or
            callable; "GN" uses ``gcd(32, channels)`` groups.
        out_features: names among "stem", "res2", "res3", "res4", "res5" to return. Stages after
            the last one requested are not built. Default: res2..res5.
        freeze_at: 0 freezes nothing, 1 the stem, k >= 2 the stem and res2..res(k).

    Forward: ``(N, in_channels, H, W)`` -> dict name -> ``(N, C, ceil(H / s), ceil(W / s))`` with
    ``C`` and ``s`` as reported by :meth:`output_shape` (at width 1: stem 64/2, res2 128/4,
    res3 256/8, res4 728/16, res5 2048/32 for output stride 32).
    """

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 65,
        num_middle_blocks: Optional[int] = None,
        width_multiplier: float = 1.0,
        output_stride: int = 32,
        norm="BN",
        out_features: Optional[Sequence[str]] = None,
        freeze_at: int = 0,
    ):
        super().__init__()
        if depth not in _MIDDLE_BLOCKS_OF_DEPTH:
            raise ValueError(f"Xception depth must be 41, 65 or 71, got {depth}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"Xception output stride must be 8, 16 or 32, got {output_stride}")
        if not width_multiplier > 0:
            raise ValueError(f"width multiplier must be > 0, got {width_multiplier}")
        if num_middle_blocks is None:
            num_middle_blocks = _MIDDLE_BLOCKS_OF_DEPTH[depth]
        if num_middle_blocks < 0:
            raise ValueError(f"number of middle-flow blocks must be >= 0, got {num_middle_blocks}")
        if out_features is None:
            out_features = list(_STAGE_NAMES)
        known = ("stem",) + _STAGE_NAMES
        unknown = [f for f in out_features if f not in known]
        if unknown or not out_features:
            raise ValueError(
                f"out_features must be a non-empty subset of {known}, got {out_features}"
            )
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")

        self.depth = depth
        self.num_middle_blocks = num_middle_blocks
        self.output_stride = output_stride

        def ch(c):
            return _scale_channels(c, width_multiplier)

        # (stage, channels of the 3 convs, stride, shortcut, activation), in order.
        units = [("res2", (128,) * 3, 2, "conv", "pre")]
        if depth == 71:
            units += [
                ("res3", (256,) * 3, 1, "conv", "pre"),
                ("res3", (256,) * 3, 2, "conv", "pre"),
            ]
            units += [
                ("res4", (728,) * 3, 1, "conv", "pre"),
                ("res4", (728,) * 3, 2, "conv", "pre"),
            ]
        else:
            units += [
                ("res3", (256,) * 3, 2, "conv", "pre"),
                ("res4", (728,) * 3, 2, "conv", "pre"),
            ]
        units += [("res4", (728,) * 3, 1, "identity", "pre")] * num_middle_blocks
        units += [
            ("res5", (728, 1024, 1024), 2, "conv", "pre"),
            ("res5", (1536, 1536, 2048), 1, "none", "post"),
        ]

        self.stem = XceptionStem(in_channels, ch(32), ch(64), norm)
        self._out_feature_strides = {"stem": 2}
        self._out_feature_channels = {"stem": ch(64)}

        last_stage = max(known.index(f) for f in out_features)  # 0: stem, 1: res2, ...
        self.stage_names: List[str] = list(_STAGE_NAMES[:last_stage])
        blocks: Dict[str, List[nn.Module]] = {name: [] for name in self.stage_names}
        current_stride, dilation, prev = 2, 1, ch(64)
        for stage, channels, stride, shortcut, activation in units:
            if stage not in blocks:
                break
            if current_stride == output_stride:
                # Keep the resolution: this unit runs at stride 1 and the current dilation,
                # every later unit at a dilation multiplied by the stride removed here.
                unit_stride, unit_dilation = 1, dilation
                dilation *= stride
            else:
                unit_stride, unit_dilation = stride, dilation  # dilation is still 1 here
                current_stride *= stride
            channels = tuple(ch(c) for c in channels)
            blocks[stage].append(
                XceptionBlock(
                    prev, channels, unit_stride, unit_dilation, shortcut, norm, activation
                )
            )
            prev = channels[-1]
            self._out_feature_strides[stage] = current_stride
            self._out_feature_channels[stage] = prev
        for name in self.stage_names:
            self.add_module(name, nn.Sequential(*blocks[name]))

        self._out_features = list(out_features)
        self._init_weights()
        self.freeze(freeze_at)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m.groups > 1 and m.groups == m.in_channels:
                    # Depthwise: c2_msra_fill's fan_out (C * 9) would make the std shrink with
                    # the channel count; each output only sees 9 inputs, so use fan_in.
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                else:
                    weight_init.c2_msra_fill(m)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                if m.weight is not None:
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    def freeze(self, freeze_at: int = 0) -> "AlignedXception":
        """Freeze the stem (``freeze_at >= 1``) and stages res2..res(freeze_at).

        Frozen parameters get ``requires_grad=False`` and frozen BN/SyncBN layers are replaced
        by :class:`FrozenBatchNorm2d` (fixed statistics in train mode too). Returns self.
        """
        if freeze_at >= 1:
            _freeze(self.stem)
        for idx, name in enumerate(self.stage_names, start=2):
            if freeze_at >= idx:
                _freeze(getattr(self, name))
        return self

    @property
    def size_divisibility(self) -> int:
        return 32

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images ``(N, C_in, H, W)``; any H, W (divisible by 32 for exact strides).

        Returns:
            dict name -> ``(N, C, ceil(H / stride), ceil(W / stride))`` for each out feature.
        """
        if x.dim() != 4:
            raise ValueError(
                f"AlignedXception takes (N, C, H, W) inputs, got shape {tuple(x.shape)}"
            )
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_xception_backbone(cfg: CN, input_shape: ShapeSpec) -> AlignedXception:
    """Build an :class:`AlignedXception` from ``cfg.MODEL.XCEPTION`` (see add_xception_config)."""
    if not hasattr(cfg.MODEL, "XCEPTION"):
        raise KeyError(
            "cfg.MODEL.XCEPTION is missing: call add_xception_config(cfg) before setting "
            "MODEL.BACKBONE.NAME to an Xception backbone"
        )
    xc = cfg.MODEL.XCEPTION
    return AlignedXception(
        in_channels=input_shape.channels,
        depth=xc.DEPTH,
        num_middle_blocks=xc.MIDDLE_BLOCKS if xc.MIDDLE_BLOCKS > 0 else None,
        width_multiplier=xc.WIDTH_MULTIPLIER,
        output_stride=xc.OUTPUT_STRIDE,
        norm=xc.NORM,
        out_features=xc.OUT_FEATURES,
        freeze_at=xc.FREEZE_AT,
    )


@BACKBONE_REGISTRY.register()
def build_xception_fpn_backbone(cfg: CN, input_shape: ShapeSpec) -> FPN:
    """detectron2's FPN (``cfg.MODEL.FPN.*``, LastLevelMaxPool) over an Xception backbone.

    ``MODEL.FPN.IN_FEATURES`` empty means all of ``MODEL.XCEPTION.OUT_FEATURES``. FPN needs the
    strides of its inputs to double from one to the next, which only ``OUTPUT_STRIDE`` 32
    gives for res2..res5: otherwise a ValueError is raised.
    """
    bottom_up = build_xception_backbone(cfg, input_shape)
    shapes = bottom_up.output_shape()
    in_features = list(cfg.MODEL.FPN.IN_FEATURES) or list(shapes)
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {in_features} asks for {missing}, which "
            f"MODEL.XCEPTION.OUT_FEATURES {list(shapes)} does not produce"
        )
    strides = [shapes[f].stride for f in in_features]
    if any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise ValueError(
            f"FPN needs input strides that double level to level, but {in_features} have strides "
            f"{strides} at MODEL.XCEPTION.OUTPUT_STRIDE = {cfg.MODEL.XCEPTION.OUTPUT_STRIDE}; "
            "set MODEL.XCEPTION.OUTPUT_STRIDE to 32 to use an FPN"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
