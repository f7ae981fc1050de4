"""Depth heads: metric depth from backbone features, and their losses."""

import math
from typing import Dict

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, DepthwiseSeparableConv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry

__all__ = ["DEPTH_HEAD_REGISTRY", "build_depth_head", "DeepLabDepthHead", "depth_loss"]

DEPTH_HEAD_REGISTRY = Registry("DEPTH_HEAD")
DEPTH_HEAD_REGISTRY.__doc__ = """
Registry for depth heads: modules ``(features, output_size, K=None)`` that take the
backbone's feature dict and return metric depth ``[B, H, W]`` (metres) at the resolution of
the padded input batch. A head whose output depends on ``K`` says so with a ``camera_aware``
attribute (the exporter then makes ``K`` an input of the exported network).
"""

_LOSS_TYPES = ("silog", "l1_log", "l1")
# How the predictor's logit x becomes log depth (see DeepLabDepthHead)
_OUTPUTS = ("sigmoid", "log_linear")


def build_depth_head(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build the depth head named by ``cfg.MODEL.DEPTH_HEAD.NAME``."""
    return DEPTH_HEAD_REGISTRY.get(cfg.MODEL.DEPTH_HEAD.NAME)(cfg, input_shape)


def depth_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    loss_type: str,
    silog_lambda: float = 0.85,
    distance_power: float = 0.0,
) -> torch.Tensor:
    """Depth loss over pixels with valid ground truth.

    Args:
        pred: ``[B, H, W]`` predicted depth, metres, > 0.
        gt: ``[B, H, W]`` ground-truth depth, metres, 0 = invalid.
        loss_type: "silog": scale-invariant log error
            ``sqrt(mean(g^2) - lambda * mean(g)^2)`` with ``g = log pred - log gt`` (Eigen et
            al.; lambda = 1 is fully scale invariant, 0 is RMSE of log depth);
            "l1_log": ``mean |g|``; "l1": ``mean |pred - gt|`` in metres.
        distance_power: the means are weighted means, each valid pixel weighing
            ``gt ** distance_power`` (normalised to a mean weight of 1 over the batch's valid
            pixels). 0: every pixel alike; 1: a pixel twice as far weighs twice as much, so
            that the few far pixels are not traded for the many near ones.

    Returns:
        scalar; 0 (still attached to the graph, never NaN) when no pixel is valid.
    """
    if loss_type not in _LOSS_TYPES:
        raise ValueError(
            f"MODEL.DEPTH_HEAD.LOSS_TYPE must be one of {_LOSS_TYPES}, got {loss_type!r}"
        )
    valid = gt > 0
    count = valid.sum()
    zero = pred.sum() * 0.0
    if distance_power == 0.0:
        weight = valid.to(pred.dtype)
    else:  # gt ** power on valid pixels (0 elsewhere), then a mean of 1 over valid pixels
        weight = torch.where(valid, gt.clamp(min=1e-6) ** distance_power, torch.zeros_like(gt))
        weight = weight.to(pred.dtype) * (count / weight.sum().clamp(min=1e-12))
    denom = count.clamp(min=1).to(pred.dtype)
    if loss_type == "l1":
        loss = (weight * torch.where(valid, (pred - gt).abs(), torch.zeros_like(pred))).sum()
        loss = loss / denom
    else:
        g = torch.where(
            valid, torch.log(pred) - torch.log(gt.clamp(min=1e-6)), torch.zeros_like(pred)
        )
        if loss_type == "l1_log":
            loss = (weight * g.abs()).sum() / denom
        else:
            mean_sq = (weight * g * g).sum() / denom
            mean = (weight * g).sum() / denom
            loss = torch.sqrt((mean_sq - silog_lambda * mean * mean).clamp(min=1e-8))
    return torch.where(count > 0, loss, zero)


class ColumnAttention(nn.Module):
    """Multi-head self-attention along each column of a feature map.

    Each of the ``B * w`` columns is a sequence of ``h`` pixels; queries, keys and values are
    linear maps of the layer-normalised features concatenated with the pixel's two ray
    channels (so that attention can depend on where a pixel looks, e.g. prefer the rows below
    it). The output projection starts at zero: the residual ``x + attention(x)`` is the
    identity before training. Plain matmul and softmax (no fused attention kernel).
    """

    NUM_HEADS = 4

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels + 2, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``[B, C, h, w]`` features.
            rays: ``[B, 2, h, w]`` normalised ray directions of the same pixels.

        Returns:
            ``[B, C, h, w]``, the attention's output (to be added to ``x``).
        """
        b, c, h, w = x.shape
        heads = self.NUM_HEADS
        seq = x.permute(0, 3, 2, 1).reshape(b * w, h, c)  # one sequence per column
        pos = rays.permute(0, 3, 2, 1).reshape(b * w, h, 2)
        qkv = self.qkv(torch.cat([self.norm(seq), pos], dim=-1))
        q, k, v = qkv.reshape(b * w, h, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) * (c // heads) ** -0.5, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b * w, h, c)  # [B*w, h, C]
        return self.proj(out).reshape(b, w, h, c).permute(0, 3, 2, 1)


@DEPTH_HEAD_REGISTRY.register()
class DeepLabDepthHead(nn.Module):
    """A light decoder for metric depth.

    Each input feature map is projected to ``conv_dims`` channels (1x1 conv), upsampled to
    the finest one and summed; two 3x3 convs and a 1x1 predictor give a logit ``x`` at the
    finest stride, mapped to log depth and upsampled bilinearly to the input resolution;
    depth is positive and within ``[min_depth, max_depth]`` metres. Two mappings
    (``output``):

    * ``"sigmoid"``: ``log(min) + (log(max) - log(min)) * sigmoid(x)``. Its slope in log
      depth per unit of ``x`` is ``(log(max) - log(min)) * s * (1 - s)``, ``s = sigmoid(x)``:
      near ``max_depth`` the gradient fades (a third of the mid-range's at 2/3 of a 0.1-60 m
      range, in log terms);
    * ``"log_linear"``: ``clamp(c + x, log(min), log(max))`` with ``c`` the mid-point of
      ``[log(min), log(max)]`` (the geometric mean of the range, where ``x = 0`` starts):
      slope 1 everywhere inside the range.

    On the synthetic scenes the two give the same far-range error (docs/depth.md: it is the
    back wall's unresolved distance, not the mapping); ``global_context`` did not change it
    either.

    Camera awareness (``canonical_focal > 0``): an object of a given size in pixels lies at a
    depth proportional to the focal length, so the head predicts depth for a canonical
    camera of focal ``canonical_focal`` pixels and scales it by ``fx / canonical_focal`` of
    each image (``fx`` from its intrinsics, after resizing). Images with other cameras then
    share one target scale.

    Global context (``global_context``): the coarsest level's projected features, averaged over
    the image and passed through a 1x1 convolution with ReLU, are added to every pixel's fused
    features (the image-pooling branch of DeepLabV3's ASPP), so that scene-level cues — where
    the horizon is, how high the camera sits — reach pixels whose own neighbourhood does not
    say how far they are (a distant wall).

    Column context (``column_context``): after the fusing convolutions, every pixel attends to
    the pixels of its own image column (:class:`ColumnAttention`, residual, starting at
    identity), with the ray directions in its queries and keys. A vertical surface standing on
    the ground (a wall, a pillar) is as far away as the ground at its foot, which may lie tens
    of pixels below most of its pixels; the attention lets the head carry that depth up the
    column.

    Camera coordinates (``camera_coords``): two channels holding each feature pixel's
    normalised ray direction ``((u - cx) / fx, (v - cy) / fy)`` are appended to the fused
    features (as in CAM-Convs, Facil et al. 2019), so the head sees where each pixel looks —
    the cue that ties image position to depth on a ground plane.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        conv_dims: int,
        norm: str,
        min_depth: float,
        max_depth: float,
        loss_type: str,
        silog_lambda: float,
        loss_weight: float,
        canonical_focal: float = 0.0,
        camera_coords: bool = False,
        use_depthwise_separable_conv: bool = False,
        output: str = "sigmoid",
        global_context: bool = False,
        column_context: bool = False,
        distance_power: float = 0.0,
    ):
        """
        Args:
            input_shape: the features to read (name -> ShapeSpec), any strides.
            conv_dims: channels of the decoder convolutions.
            norm: normalisation of the decoder convolutions ("", "BN", "GN", ...).
            min_depth, max_depth: range of the predicted depth, metres.
            loss_type, silog_lambda: see :func:`depth_loss`.
            loss_weight: weight of ``loss_depth``.
            canonical_focal: focal length (pixels) of the canonical camera; 0 disables the
                focal scaling.
            camera_coords: append the per-pixel ray direction channels.
            use_depthwise_separable_conv: fuse with one 5x5 depthwise-separable convolution
                (depthwise with bias, then 1x1 with ``norm`` and ReLU, as in Xception)
                instead of two 3x3 convolutions.
            output: "sigmoid" or "log_linear", the logit-to-log-depth mapping (above).
            global_context: add an image-level feature (above) to every pixel's features.
            column_context: attention along each image column after the fusing convolutions
                (above); ``conv_dims`` must be divisible by 4 (its heads).
            distance_power: pixel weights ``gt ** distance_power`` in the loss (see
                :func:`depth_loss`).
        """
        super().__init__()
        if not 0 < min_depth < max_depth:
            raise ValueError(
                f"MODEL.DEPTH_HEAD needs 0 < MIN_DEPTH < MAX_DEPTH, got {min_depth}, {max_depth}"
            )
        if loss_type not in _LOSS_TYPES:
            raise ValueError(
                f"MODEL.DEPTH_HEAD.LOSS_TYPE must be one of {_LOSS_TYPES}, got {loss_type!r}"
            )
        if output not in _OUTPUTS:
            raise ValueError(f"MODEL.DEPTH_HEAD.OUTPUT must be one of {_OUTPUTS}, got {output!r}")
        self.output = output
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in shapes]
        self.common_stride = shapes[0][1].stride
        use_bias = norm == ""
        self.lateral = nn.ModuleDict()
        for name, shape in shapes:
            conv = Conv2d(
                shape.channels,
                conv_dims,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dims),
                activation=F.relu,
            )
            weight_init.c2_msra_fill(conv)
            self.lateral[name] = conv
        self.context = None
        if global_context:
            self.context = Conv2d(conv_dims, conv_dims, kernel_size=1, activation=F.relu)
            weight_init.c2_msra_fill(self.context)
        self.camera_coords = camera_coords
        fuse_in = conv_dims + (2 if camera_coords else 0)
        if use_depthwise_separable_conv:
            self.fuse = DepthwiseSeparableConv2d(
                fuse_in,
                conv_dims,
                kernel_size=5,
                padding=2,
                norm2=norm,
                activation2=F.relu,
            )
            weight_init.c2_msra_fill(self.fuse.depthwise)
            weight_init.c2_msra_fill(self.fuse.pointwise)
        else:
            self.fuse = nn.Sequential(
                *[
                    Conv2d(
                        fuse_in if i == 0 else conv_dims,
                        conv_dims,
                        kernel_size=3,
                        padding=1,
                        bias=use_bias,
                        norm=get_norm(norm, conv_dims),
                        activation=F.relu,
                    )
                    for i in range(2)
                ]
            )
            for layer in self.fuse:
                weight_init.c2_msra_fill(layer)
        self.column = None
        if column_context:
            if conv_dims % ColumnAttention.NUM_HEADS:
                raise ValueError(
                    "MODEL.DEPTH_HEAD.COLUMN_CONTEXT needs CONVS_DIM divisible by "
                    f"{ColumnAttention.NUM_HEADS}, got {conv_dims}"
                )
            self.column = ColumnAttention(conv_dims)
        self.predictor = Conv2d(conv_dims, 1, kernel_size=1)
        nn.init.normal_(self.predictor.weight, 0, 0.001)
        nn.init.constant_(self.predictor.bias, 0.0)
        self.log_min, self.log_max = math.log(min_depth), math.log(max_depth)
        self.min_depth, self.max_depth = min_depth, max_depth
        self.loss_type, self.silog_lambda, self.loss_weight = loss_type, silog_lambda, loss_weight
        if not 0.0 <= distance_power <= 4.0:
            raise ValueError(
                f"MODEL.DEPTH_HEAD.DISTANCE_POWER must be within [0, 4], got {distance_power}"
            )
        self.distance_power = distance_power
        if canonical_focal < 0:
            raise ValueError(
                f"MODEL.DEPTH_HEAD.CANONICAL_FOCAL must be >= 0, got {canonical_focal}"
            )
        self.canonical_focal = canonical_focal

    @classmethod
    def from_config(cls, cfg, input_shape):
        c = cfg.MODEL.DEPTH_HEAD
        missing = [f for f in c.IN_FEATURES if f not in input_shape]
        if missing:
            raise KeyError(
                f"MODEL.DEPTH_HEAD.IN_FEATURES {missing} are not backbone outputs "
                f"{sorted(input_shape)}"
            )
        return {
            "input_shape": {k: input_shape[k] for k in c.IN_FEATURES},
            "conv_dims": c.CONVS_DIM,
            "norm": c.NORM,
            "min_depth": c.MIN_DEPTH,
            "max_depth": c.MAX_DEPTH,
            "loss_type": c.LOSS_TYPE,
            "silog_lambda": c.SILOG_LAMBDA,
            "loss_weight": c.LOSS_WEIGHT,
            "canonical_focal": c.CANONICAL_FOCAL,
            "camera_coords": c.CAMERA_COORDS,
            "use_depthwise_separable_conv": c.USE_DEPTHWISE_SEPARABLE_CONV,
            "output": c.OUTPUT,
            "global_context": c.GLOBAL_CONTEXT,
            "column_context": c.COLUMN_CONTEXT,
            "distance_power": c.DISTANCE_POWER,
        }

    @property
    def camera_aware(self) -> bool:
        """True when the output depends on the intrinsics passed to :meth:`forward` (focal
        scaling, ray-direction channels or the column attention's ray positions)."""
        return self.canonical_focal > 0 or self.camera_coords or self.column is not None

    def _ray_channels(self, K, shape, device, dtype):
        """``[B, 2, h, w]`` normalised ray directions at the centres of an ``h x w`` feature
        grid of stride ``common_stride`` (pixel convention of ``panoptic_curriculum.geometry``)."""
        b, (h, w), s = shape[0], shape[-2:], self.common_stride
        if K is None:  # unknown camera: centred principal point, canonical or 1-px/px focal
            f = self.canonical_focal or float(max(h, w) * s)
            K = torch.tensor(
                [[f, 0, (w * s - 1) / 2], [0, f, (h * s - 1) / 2], [0, 0, 1]],
                device=device,
                dtype=dtype,
            ).expand(b, 3, 3)
        K = K.to(device=device, dtype=dtype)
        u = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s - 0.5
        v = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s - 0.5
        x = (u[None, :] - K[:, 0, 2, None]) / K[:, 0, 0, None]  # [B, w]
        y = (v[None, :] - K[:, 1, 2, None]) / K[:, 1, 1, None]  # [B, h]
        return torch.stack([x[:, None, :].expand(b, h, w), y[:, :, None].expand(b, h, w)], dim=1)

    def forward(self, features: Dict[str, torch.Tensor], output_size, K=None) -> torch.Tensor:
        """
        Args:
            features: backbone outputs, ``[B, C, H/s, W/s]`` each.
            output_size: ``(H, W)`` of the padded input batch.
            K: ``[B, 3, 3]`` intrinsics (pixels) of each input image, or None (unknown
                camera: canonical focal, centred principal point).

        Returns:
            ``[B, H, W]`` depth in metres.
        """
        y = None
        for name in self.in_features:
            x = self.lateral[name](features[name])
            if y is None:
                y = x
            else:
                y = y + F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)
        if self.context is not None:  # x: the coarsest level; [B, C, 1, 1] broadcast to all
            y = y + self.context(F.adaptive_avg_pool2d(x, 1))
        rays = None
        if self.camera_coords or self.column is not None:
            rays = self._ray_channels(K, y.shape, y.device, y.dtype)
        if self.camera_coords:
            y = torch.cat([y, rays], dim=1)
        y = self.fuse(y)
        if self.column is not None:
            y = y + self.column(y, rays)
        logit = self.predictor(y)
        log_depth = self._log_depth(logit)
        log_depth = F.interpolate(
            log_depth, size=tuple(output_size), mode="bilinear", align_corners=False
        )
        depth = torch.exp(log_depth[:, 0])
        if self.canonical_focal > 0 and K is not None:
            depth = depth * (K[:, 0, 0].to(depth.dtype) / self.canonical_focal)[:, None, None]
        return depth

    def _log_depth(self, logit: torch.Tensor) -> torch.Tensor:
        """Log depth (metres) of the predictor's logit, within ``[log_min, log_max]``."""
        if self.output == "log_linear":
            centre = 0.5 * (self.log_min + self.log_max)
            return torch.clamp(logit + centre, self.log_min, self.log_max)
        return self.log_min + (self.log_max - self.log_min) * torch.sigmoid(logit)

    def losses(self, pred: torch.Tensor, gt: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{"loss_depth": weighted loss}``; ``gt`` is ``[B, H, W]`` metres, 0 invalid."""
        return {
            "loss_depth": self.loss_weight
            * depth_loss(pred, gt, self.loss_type, self.silog_lambda, self.distance_power)
        }
