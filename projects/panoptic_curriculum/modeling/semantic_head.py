"""The DeepLabV3+ semantic decoder, as detectron2's DeepLab project builds it, usable on any
input size, with a cheaper exact evaluation of its upsampling path at inference."""

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.projects.deeplab import DeepLabV3PlusHead

__all__ = ["DeepLabV3PlusAnySizeHead", "UpsampledConcatConv", "conv3x3_of_upsampled"]


def _bilinear_rows(n_out: int, n_in: int, shift: int, dtype, device) -> torch.Tensor:
    """``[n_out, n_in]``: row ``i`` holds the weights with which
    ``F.interpolate(mode="bilinear", align_corners=False)`` resizing one axis from ``n_in`` to
    ``n_out`` samples output position ``i + shift``; a zero row where that position lies
    outside ``[0, n_out)`` (a convolution's zero padding)."""
    dst = torch.arange(n_out, dtype=torch.float64) + shift
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)  # as PyTorch's kernel
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    lam = src - i0
    inside = ((dst >= 0) & (dst < n_out)).to(torch.float64)
    rows = torch.zeros(n_out, n_in, dtype=torch.float64)
    index = torch.arange(n_out)
    rows.index_put_((index, i0), (1 - lam) * inside, accumulate=True)
    rows.index_put_((index, i1), lam * inside, accumulate=True)
    return rows.to(dtype=dtype, device=device)


def conv3x3_of_upsampled(y: torch.Tensor, weight: torch.Tensor, size) -> torch.Tensor:
    """``conv2d(interpolate(y, size, bilinear), weight, padding=1)`` without the convolution
    at the fine resolution.

    Bilinear upsampling is separable and linear, and a 3x3 convolution is a sum over its
    nine taps of a channel mix and a shift. So each tap's channel mix is applied at the
    coarse resolution (one 1x1 convolution to ``9 * O`` channels); then one matrix product
    along the width upsamples and shifts the three taps of each kernel row and sums them,
    and one along the height does the same for the three rows (the shifted interpolation
    weights bring in the convolution's zero padding). Equal to the direct computation up to
    float rounding, at a small fraction of its multiply-adds when ``size`` is several times
    ``y``'s (DeepLabV3+'s ASPP output at stride 32 or 16 upsampled to stride 4).

    Args:
        y: ``[B, C, h, w]`` coarse features.
        weight: ``[O, C, 3, 3]`` convolution weight (stride 1, dilation 1, one group).
        size: ``(H, W)`` of the upsampled map.

    Returns:
        ``[B, O, H, W]``, contiguous.
    """
    b, _, h, w = y.shape
    out_ch = weight.shape[0]
    height, width = int(size[0]), int(size[1])
    # channel mix of every tap at the coarse resolution: channels ordered (ky, kx, o)
    taps = F.conv2d(y, weight.permute(2, 3, 0, 1).reshape(9 * out_ch, -1, 1, 1))
    along_w = torch.cat(
        [_bilinear_rows(width, w, kx - 1, y.dtype, y.device) for kx in range(3)], dim=1
    )  # [W, 3w], columns (kx, v)
    along_h = torch.cat(
        [_bilinear_rows(height, h, ky - 1, y.dtype, y.device) for ky in range(3)], dim=1
    )  # [H, 3h], columns (ky, u)
    taps = taps.reshape(b, 3, 3, out_ch, h, w).permute(0, 1, 3, 4, 2, 5)  # b, ky, o, u, kx, v
    rows = taps.reshape(-1, 3 * w) @ along_w.t()  # [(b, ky, o, u), W]
    rows = rows.reshape(b, 3, out_ch, h, width).transpose(1, 2)  # b, o, ky, u, W
    out = torch.matmul(along_h, rows.reshape(b * out_ch, 3 * h, width))  # [(b, o), H, W]
    return out.reshape(b, out_ch, height, width)


def _plain_3x3(conv: nn.Module) -> bool:
    return (
        isinstance(conv, Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


class UpsampledConcatConv(nn.Module):
    """``conv(cat([x, interpolate(y, x's size)]))`` for a detectron2 3x3 ``Conv2d`` (with its
    norm and activation), the ``y`` part by :func:`conv3x3_of_upsampled`. Holds no
    parameters (it uses the convolution it is given); a module so that analysis tools
    attribute its multiply-adds to the head."""

    def forward(self, conv: Conv2d, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n_x = x.shape[1]
        if y.shape[-2:] == x.shape[-2:]:  # nothing to upsample
            out = F.conv2d(y, conv.weight[:, n_x:], padding=1)
        else:
            out = conv3x3_of_upsampled(y, conv.weight[:, n_x:], x.shape[-2:])
        out = out + F.conv2d(x, conv.weight[:, :n_x], conv.bias, padding=1)
        if conv.norm is not None:
            out = conv.norm(out)
        if conv.activation is not None:
            out = conv.activation(out)
        return out


@SEM_SEG_HEADS_REGISTRY.register()
class DeepLabV3PlusAnySizeHead(DeepLabV3PlusHead):
    """detectron2's :class:`DeepLabV3PlusHead` (ASPP on the coarsest feature, low-level skip
    connections from the finer ones) with global image pooling in ASPP.

    detectron2's version sizes the ASPP pooling window from ``INPUT.CROP.SIZE``, which breaks
    when training images vary in size after cropping (crop, then resize) or at test time on
    other sizes; global pooling works on every size.

    Besides the parent's ``forward``, the multi-task model uses ``layers(features)`` (logits
    ``[B, C, H/common_stride, W/common_stride]``) and ``losses(logits, targets)`` directly,
    so that one set of logits serves the 2D loss and the 2D-3D consistency loss.

    A batch whose pixels are all ``ignore_value`` gives ``loss_sem_seg`` = 0, still
    connected to the graph (zero gradients), where the parent's mean cross-entropy would be
    0 / 0 = NaN.

    At inference (no autograd), each decoder stage's first 3x3 convolution over
    ``[projected skip, upsampled coarser output]`` is split into its two channel groups and
    the upsampled group is evaluated by :func:`conv3x3_of_upsampled`: the same logits up to
    float rounding, about 40% fewer multiply-adds in the synthetic config's head. Training
    runs the parent's code unchanged, and so do tracing (export, whose graph must hold for
    every input size) and the depthwise-separable decoder
    (``MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV``).
    """

    @configurable
    def __init__(self, input_shape, **kwargs):
        """Arguments as :class:`DeepLabV3PlusHead`'s."""
        super().__init__(input_shape, **kwargs)
        self.upsampled_concat_conv = UpsampledConcatConv()

    def losses(self, predictions, targets):
        """
        Args:
            predictions: ``[B, C, H/common_stride, W/common_stride]`` logits.
            targets: ``[B, H, W]`` long class ids or ``ignore_value``.

        Returns:
            ``{"loss_sem_seg": scalar}``, weighted by the head's ``loss_weight``.
        """
        if not bool((targets != self.ignore_value).any()):  # one device sync per step
            return {"loss_sem_seg": predictions.sum() * 0.0}
        return super().losses(predictions, targets)

    @classmethod
    def from_config(cls, cfg, input_shape):
        # the parent reads INPUT.CROP only to size the pooling window (and insists on
        # "absolute" crops); global pooling needs neither
        cfg = cfg.clone()
        cfg.defrost()
        cfg.INPUT.CROP.ENABLED = False
        return super().from_config(cfg, input_shape)

    def _factorised_stage(self, fuse_conv) -> bool:
        return (
            isinstance(fuse_conv, nn.Sequential)
            and len(fuse_conv) == 2
            and _plain_3x3(fuse_conv[0])
            and _plain_3x3(fuse_conv[1])
        )

    def layers(self, features):
        # the factorised convolution reads sizes as Python numbers: under tracing (export) the
        # parent's code keeps the traced graph valid for every input size
        if (
            torch.is_grad_enabled()
            or self.use_depthwise_separable_conv
            or torch.jit.is_tracing()
        ):
            return super().layers(features)
        y = None
        for f in self.in_features[::-1]:  # coarse to fine, as the parent
            stage = self.decoder[f]
            proj_x = stage["project_conv"](features[f])
            fuse_conv = stage["fuse_conv"]
            if fuse_conv is None:  # ASPP
                y = proj_x
            elif not self._factorised_stage(fuse_conv):
                y = F.interpolate(y, size=proj_x.shape[-2:], mode="bilinear", align_corners=False)
                y = fuse_conv(torch.cat([proj_x, y], dim=1))
            else:
                y = fuse_conv[1](self.upsampled_concat_conv(fuse_conv[0], proj_x, y))
        if not self.decoder_only:
            y = self.predictor(y)
        return y
