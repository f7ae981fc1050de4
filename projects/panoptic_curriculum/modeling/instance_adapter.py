"""Feature adapters owned by the instance decoder.

In the curriculum the encoder (bottom-up network *and* FPN neck) is trained by the semantic
stage alone and then frozen; the FPN levels that the DeepLab decoder does not read (p3, p4,
p6 with ``IN_FEATURES: [p2, p5]``) are then shaped by no detection signal at all. An adapter
is a small residual block between the frozen encoder and the RPN / ROI heads, trained by the
instance stage together with the rest of the instance decoder: the encoder stays frozen (the
document's constraint), the merged model still runs one encoder pass, and the semantic
decoder keeps reading the unchanged encoder features.

The last convolution of each block starts at zero, so an untrained adapter is the identity
and a merged model without instance-stage training behaves exactly as one without adapter.
"""

from typing import Dict, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry

__all__ = ["INSTANCE_ADAPTER_REGISTRY", "ResidualConvAdapter", "build_instance_adapter"]

INSTANCE_ADAPTER_REGISTRY = Registry("INSTANCE_ADAPTER")
INSTANCE_ADAPTER_REGISTRY.__doc__ = """
Registry for instance-decoder feature adapters: modules mapping the encoder's feature dict
``{name: [B, C, H/s, W/s]}`` to a dict with the same keys and shapes, read by the RPN and
the ROI heads.
"""


def build_instance_adapter(cfg, input_shape: Dict[str, ShapeSpec]):
    """The adapter named by ``MODEL.INSTANCE_ADAPTER.NAME``, or None for ``""``/``"none"``."""
    name = cfg.MODEL.INSTANCE_ADAPTER.NAME
    if name in ("", "none", "None"):
        return None
    return INSTANCE_ADAPTER_REGISTRY.get(name)(cfg, input_shape)


@INSTANCE_ADAPTER_REGISTRY.register()
class ResidualConvAdapter(nn.Module):
    """``f + block(f)`` on each feature level the instance decoder reads, the block (convs
    with normalisation and ReLU, last one zero-initialised) shared by all levels like the
    RPN head, so that it also applies to levels of any stride.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        channels: int,
        num_convs: int = 2,
        kernel_size: int = 3,
        norm: str = "GN",
    ):
        """
        Args:
            in_features: feature names adapted (the others pass through untouched).
            channels: channels of every adapted feature (FPN levels share one width).
            num_convs: convolutions in the residual block (>= 1).
            kernel_size: their kernel size (odd).
            norm: normalisation after each convolution but the last ("" for none).
        """
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"MODEL.INSTANCE_ADAPTER.NUM_CONVS = {num_convs}: must be >= 1")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"MODEL.INSTANCE_ADAPTER.KERNEL_SIZE = {kernel_size}: must be odd")
        self.in_features = list(in_features)
        convs = []
        for i in range(num_convs):
            last = i == num_convs - 1
            conv = Conv2d(
                channels,
                channels,
                kernel_size,
                padding=kernel_size // 2,
                bias=last or not norm,
                norm=None if last else get_norm(norm, channels),
            )
            if last:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
            else:
                weight_init.c2_msra_fill(conv)
            convs.append(conv)
        self.convs = nn.ModuleList(convs)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        names = sorted(set(cfg.MODEL.RPN.IN_FEATURES) | set(cfg.MODEL.ROI_HEADS.IN_FEATURES))
        missing = [n for n in names if n not in input_shape]
        if missing:
            raise KeyError(
                f"MODEL.RPN/ROI_HEADS.IN_FEATURES name {missing}, not outputs of the backbone "
                f"({sorted(input_shape)})"
            )
        widths = {input_shape[n].channels for n in names}
        if len(widths) != 1:
            raise ValueError(
                f"MODEL.INSTANCE_ADAPTER.NAME ResidualConvAdapter needs one channel count on "
                f"{names}, got {sorted(widths)}"
            )
        ac = cfg.MODEL.INSTANCE_ADAPTER
        return {
            "in_features": names,
            "channels": widths.pop(),
            "num_convs": ac.NUM_CONVS,
            "kernel_size": ac.KERNEL_SIZE,
            "norm": ac.NORM,
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = dict(features)
        for name in self.in_features:
            x = features[name]
            y = x
            for i, conv in enumerate(self.convs):
                y = conv(y)
                if i < len(self.convs) - 1:
                    y = F.relu(y)
            out[name] = x + y
        return out
