"""PointNet++ (single-scale grouping) segmentation head for back-projected depth.

The head labels the ``N`` points sampled from one image's back-projected depth map (camera
frame, metres). Set-abstraction (SA) levels downsample the cloud (farthest-point sampling),
group neighbours around each centroid (ball query, or kNN when the radius is 0) and pool a
shared MLP over ``[relative xyz, features]``; feature-propagation (FP) levels bring the
features back to the ``N`` input points (3-NN inverse-distance interpolation, skip
connection, shared MLP); a 1x1 classifier gives per-point logits.

Padding: every cloud comes with a ``valid`` mask. Invalid points are zeroed on input, never
sampled, grouped or interpolated from, and left out of the normalisation statistics, so
they cannot change valid points' outputs (in training and in eval mode). FPS repeats a
valid index when a level asks for more centroids than there are valid points; the repeats
are marked invalid for the following levels so they count once.

Gradients reach the point coordinates through the relative neighbour offsets, the absolute
xyz input features and the interpolation weights; sampling and grouping indices are not
differentiable.
"""

import math
from typing import List, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.utils.registry import Registry

from .ops import (
    ball_query,
    farthest_point_sample,
    first_occurrence,
    gather_points,
    three_nn_interpolate,
)

__all__ = [
    "POINT_HEAD_REGISTRY",
    "build_point_head",
    "add_point_head_config",
    "PointNet2SegHead",
    "MaskedBatchNorm",
    "MaskedGroupNorm",
    "SharedMLP",
]

POINT_HEAD_REGISTRY = Registry("POINT_HEAD")
POINT_HEAD_REGISTRY.__doc__ = """
Registry for point-cloud segmentation heads.

A registered class is called as ``cls(cfg, in_channels)`` (``in_channels``: extra per-point
input feature channels, e.g. sampled image features; 0 for xyz only) and returns an
``nn.Module`` whose ``forward(xyz [B, N, 3] metres, valid [B, N] bool, features
[B, N, in_channels] or None)`` returns per-point logits ``[B, N, num_classes]``.
"""

_NORMS = ("", "BN", "GN")


def add_point_head_config(cfg: CN) -> None:
    """Add the point head's extra keys to ``cfg.MODEL.POINT_HEAD`` (idempotent).

    ``cfg.MODEL.POINT_HEAD`` must already exist (the plugin's config defines it).
    """
    ph = cfg.MODEL.POINT_HEAD
    if not hasattr(ph, "FP_CHANNELS"):
        # Output channels of each feature-propagation level, coarsest first (one per SA level).
        ph.FP_CHANNELS = [256, 128, 128]
    if not hasattr(ph, "MLP_LAYERS"):
        # 1x1-conv layers in every shared MLP (SA and FP levels), each with that level's width.
        ph.MLP_LAYERS = 2
    if not hasattr(ph, "NORM"):
        # Normalisation in the shared MLPs, over valid points only: "GN", "BN" or "" (none).
        # GN keeps no running statistics, so replicas stay identical under DDP and training
        # and inference normalise alike.
        ph.NORM = "GN"


def build_point_head(cfg: CN, in_channels: int = 0) -> nn.Module:
    """Build the point head named by ``cfg.MODEL.POINT_HEAD.NAME``.

    Args:
        in_channels: per-point input feature channels besides xyz (0: xyz only).
    """
    return POINT_HEAD_REGISTRY.get(cfg.MODEL.POINT_HEAD.NAME)(cfg, in_channels)


# ------------------------------------------------------------------------- masked norms
# Norms and MLPs work on channels-last tensors ``[B, *spatial, C]`` with a bool mask
# broadcastable to ``[B, *spatial]`` that selects the entries feeding the statistics.
def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or float64 if it is: the masked norms compute their statistics and
    output in at least float32, also on bf16 / fp16 inputs under autocast (with autocast
    off inside them)."""
    return x if x.dtype == torch.float64 else x.float()


def _flat_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` broadcast to ``x.shape[:-1]`` and flattened to ``[B, P]`` in ``x``'s dtype."""
    return mask.to(x.dtype).expand(x.shape[:-1]).reshape(x.shape[0], -1)


class _MaskedBatchNormFn(torch.autograd.Function):
    """Training-mode batch norm over the masked entries of ``x [B, P, C]``, with a
    hand-written backward (the autograd graph of the masked statistics would cost several
    extra passes over the largest tensors of the head).

    Entries outside the mask are normalised with the same statistics but do not feed them,
    so their inputs only receive the gradient of the affine map.
    """

    @staticmethod
    def forward(ctx, x, m, weight, bias, eps):
        n = m.sum().clamp(min=1)
        mean = torch.einsum("bpc,bp->c", x, m) / n
        xc = x - mean
        var = torch.einsum("bpc,bp->c", xc.square(), m) / n  # two-pass: no cancellation
        invstd = torch.rsqrt(var + eps)
        scale = weight * invstd
        y = torch.addcmul(bias, xc, scale)
        ctx.save_for_backward(xc, m, invstd, weight, n)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        xc, m, invstd, weight, n = ctx.saved_tensors
        scale = weight * invstd
        g_xc = grad_y * xc
        sum_g = grad_y.sum((0, 1))  # over all entries: every output depends on the stats
        sum_g_xc = g_xc.sum((0, 1))
        grad_weight = sum_g_xc * invstd
        grad_bias = sum_g
        # Through the mean and variance, which only masked entries feed:
        # d/dx_i = m_i * (-scale / n) * (sum g + xhat_i * sum g * xhat), xhat = xc * invstd.
        coef_const = -scale * sum_g / n
        coef_lin = -scale * invstd.square() * sum_g_xc / n
        grad_x = torch.addcmul(coef_const, xc, coef_lin).mul_(m.unsqueeze(-1))
        grad_x.addcmul_(grad_y, scale)
        return grad_x, None, grad_weight, grad_bias, None


class MaskedBatchNorm(nn.Module):
    """Batch normalisation whose statistics use valid entries only (channels last).

    ``forward(x [B, *spatial, C], mask)`` with ``mask`` bool, broadcastable to
    ``[B, *spatial]``. In training the batch mean/variance come from the entries where
    ``mask`` is True and update the running statistics (left unchanged when no entry is
    valid); in eval mode the running statistics are used. Parameter and buffer names match
    ``nn.BatchNorm2d``; it is deliberately not a subclass, so that detectron2's
    ``FrozenBatchNorm2d.convert_frozen_batchnorm`` (whose modules take no mask) leaves it
    alone: freeze it with ``.eval()`` and ``requires_grad_(False)``. Computed in float32
    at least, also under autocast.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = _at_least_float32(x)
        if not self.training:
            scale = self.weight * torch.rsqrt(self.running_var + self.eps)
            return torch.addcmul(self.bias - self.running_mean * scale, x, scale)
        m = _flat_mask(x, mask)
        x3 = x.reshape(x.shape[0], -1, self.num_channels)
        with torch.autocast(device_type=x.device.type, enabled=False):
            y, mean, var = _MaskedBatchNormFn.apply(
                x3, m, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps
            )
        with torch.no_grad():
            count = m.sum()
            seen = count > 0
            unbiased = var * count / (count - 1).clamp(min=1)
            new_mean = torch.lerp(self.running_mean, mean, self.momentum)
            new_var = torch.lerp(self.running_var, unbiased, self.momentum)
            self.running_mean.copy_(torch.where(seen, new_mean, self.running_mean))
            self.running_var.copy_(torch.where(seen, new_var, self.running_var))
            self.num_batches_tracked.add_(1)
        return y.view_as(x)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, momentum={self.momentum}"


class _MaskedGroupNormFn(torch.autograd.Function):
    """Group norm over the masked entries of ``x [B, P, C]`` (``m [B, P]``, 0/1 in ``x``'s
    dtype), per sample and group, with a hand-written backward (autograd through the masked
    statistics took several passes over the head's largest tensors).

    With ``xhat = (x - mean) * r``, ``r = 1 / sqrt(var + eps)`` and ``g = dL/dxhat``, the
    gradient is ``r * (g - m / n * (sum g + xhat * sum g * xhat))``, the sums running over
    every entry of the sample's group (every output depends on the statistics) and ``n`` the
    number of masked values in it: only masked entries receive the statistics' part.
    """

    @staticmethod
    def forward(ctx, x, m, weight, bias, num_groups: int, eps: float):
        B, P, C = x.shape
        G = num_groups
        n = (m.sum(1) * (C // G)).clamp(min=1).view(B, 1, 1, 1)  # masked values per group
        mrow = m.unsqueeze(1)  # [B, 1, P]: masked sums over P as one batched matrix product

        def group_sum(t):  # [B, P, C] -> [B, 1, G, 1], over the masked entries
            return torch.bmm(mrow, t).view(B, 1, G, -1).sum(-1, keepdim=True)

        xc = x.view(B, P, G, -1) - group_sum(x) / n
        var = group_sum(xc.square().view(B, P, C)) / n  # two-pass: no cancellation
        invstd = torch.rsqrt(var + eps)
        xhat = (xc * invstd).view(B, P, C)
        ctx.save_for_backward(xhat, m, invstd, weight, n)
        ctx.num_groups = num_groups
        return torch.addcmul(bias, xhat, weight)

    @staticmethod
    def backward(ctx, grad_y):
        xhat, m, invstd, weight, n = ctx.saved_tensors
        B, P, C = xhat.shape
        G = ctx.num_groups
        grad_bias = grad_y.sum((0, 1))
        gy_xhat = (grad_y * xhat).sum(1)  # [B, C] (an einsum was 10-30x slower on the CPU)
        grad_weight = gy_xhat.sum(0)
        g = grad_y * weight  # dL/dxhat
        s1 = g.sum(1).view(B, 1, G, -1).sum(-1, keepdim=True)  # [B, 1, G, 1]
        s2 = (gy_xhat * weight).view(B, 1, G, -1).sum(-1, keepdim=True)
        corr = torch.addcmul(s1, xhat.view(B, P, G, -1), s2).div_(n).mul_(m.view(B, P, 1, 1))
        grad_x = (g.view(B, P, G, -1) - corr).mul_(invstd).view(B, P, C)
        return grad_x, None, grad_weight, grad_bias, None, None


class MaskedGroupNorm(nn.Module):
    """Group normalisation whose per-sample statistics use valid entries only (channels
    last).

    ``forward(x [B, *spatial, C], mask)`` with ``mask`` bool, broadcastable to
    ``[B, *spatial]``. A sample without valid entries is normalised with mean 0 and
    variance 0 (finite output). Computed in float32 at least, also under autocast.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"{num_channels} channels are not divisible by {num_groups} groups")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = _at_least_float32(x)
        m = _flat_mask(x, mask)  # [B, P]
        x3 = x.reshape(shape[0], m.shape[1], self.num_channels)
        w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = _MaskedGroupNormFn.apply(x3, m, w, b, self.num_groups, self.eps)
        return y.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


def _masked_norm(norm: str, channels: int) -> Optional[nn.Module]:
    if norm == "":
        return None
    if norm == "BN":
        return MaskedBatchNorm(channels)
    if norm == "GN":
        return MaskedGroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"MODEL.POINT_HEAD.NORM must be one of {_NORMS}, got {norm!r}")


class SharedMLP(nn.Module):
    """Per-point MLP: ``[1x1 Conv2d -> masked norm -> ReLU] x len(channels)``.

    ``forward(x [B, H, W, Cin], mask)`` works channels last: each 1x1 convolution is applied
    as a matrix product over the last axis (``F.linear`` with the convolution's weight
    ``[Cout, Cin, 1, 1]`` viewed as ``[Cout, Cin]``: the same map, and the same parameters
    and checkpoint keys as a convolution, without the layout changes and im2col copies of
    the CPU's 1x1-convolution path), and ``mask`` (bool, broadcastable to ``[B, H, W]``)
    selects the entries feeding the normalisation statistics. Returns
    ``[B, H, W, channels[-1]]``.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], norm: str):
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for c in channels:
            conv = nn.Conv2d(in_channels, c, kernel_size=1, bias=(norm == ""))
            weight_init.c2_msra_fill(conv)
            self.convs.append(conv)
            self.norms.append(_masked_norm(norm, c) or nn.Identity())
            in_channels = c
        self.has_norm = norm != ""

    def forward(self, x: torch.Tensor, mask: torch.Tensor, projected: bool = False) -> torch.Tensor:
        """``projected=True``: ``x`` is already the first layer's linear map ``[B, H, W,
        channels[0]]`` (bias included), computed by the caller (see
        :class:`_SetAbstraction`); the MLP goes on from its first norm."""
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if i > 0 or not projected:
                x = F.linear(x, conv.weight.flatten(1), conv.bias)
            if self.has_norm:
                x = norm(x, mask)
            x = F.relu_(x)  # in place: x is a fresh result no backward reads
        return x


# ------------------------------------------------------------------------- levels
class _SetAbstraction(nn.Module):
    """FPS -> group (ball query / kNN) -> shared MLP on [relative xyz, features] -> max."""

    def __init__(self, num_centroids, num_neighbors, radius, in_channels, channels, norm):
        super().__init__()
        self.num_centroids = num_centroids
        self.num_neighbors = num_neighbors
        self.radius = radius
        self.mlp = SharedMLP(3 + in_channels, channels, norm)

    def forward(
        self, xyz: torch.Tensor, feat: torch.Tensor, valid: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            xyz: ``[B, N, 3]`` metres; feat: ``[B, N, C]``; valid: ``[B, N]`` bool.

        Returns:
            new_xyz ``[B, S, 3]`` metres, new_feat ``[B, S, C']``, new_valid ``[B, S]``
            (False for repeated padding centroids and in clouds without valid points).
        """
        N = xyz.shape[1]
        idx = farthest_point_sample(xyz, self.num_centroids, valid)  # [B, S]
        new_valid = valid.gather(1, idx) & first_occurrence(idx, N)
        new_xyz = gather_points(xyz, idx)
        nbr = ball_query(xyz, new_xyz, self.num_neighbors, self.radius, valid)  # [B, S, k]
        rel = gather_points(xyz, nbr) - new_xyz.unsqueeze(2)  # [B, S, k, 3] offsets, metres
        # The MLP's first layer on [rel, feat] is W_rel rel + W_feat feat + b. W_feat feat is
        # computed once per point and then grouped: the same map as on the grouped
        # concatenation, on N rows instead of S * k (k / (N / S) = 4x fewer at the default
        # sizes), and the grouping gathers C' channels instead of 3 + C.
        first = self.mlp.convs[0]
        w = first.weight.flatten(1)  # [C', 3 + C]
        x = gather_points(F.linear(feat, w[:, 3:]), nbr) + F.linear(rel, w[:, :3], first.bias)
        x = self.mlp(x, new_valid.unsqueeze(-1), projected=True)  # [B, S, k, C']
        new_feat = x.amax(dim=2)  # [B, S, C']
        return new_xyz, new_feat, new_valid


class _FeaturePropagation(nn.Module):
    """3-NN interpolation from a coarse level, concat with the fine level's skip features,
    shared MLP."""

    def __init__(self, in_channels, skip_channels, channels, norm):
        super().__init__()
        self.mlp = SharedMLP(in_channels + skip_channels, channels, norm)

    def forward(self, xyz, skip, valid, xyz_src, feat_src, valid_src) -> torch.Tensor:
        """
        Args:
            xyz: ``[B, N, 3]`` fine points (metres); skip: ``[B, N, Cs]``; valid: ``[B, N]``.
            xyz_src: ``[B, S, 3]`` coarse points (metres); feat_src: ``[B, S, C]``;
            valid_src: ``[B, S]``.

        Returns:
            ``[B, N, C']`` features of the fine points.
        """
        x = three_nn_interpolate(xyz, xyz_src, feat_src, valid_src)
        x = torch.cat([x, skip], dim=-1).unsqueeze(2)  # [B, N, 1, C + Cs]
        return self.mlp(x, valid.unsqueeze(-1)).squeeze(2)


# ------------------------------------------------------------------------- head
@POINT_HEAD_REGISTRY.register()
class PointNet2SegHead(nn.Module):
    """PointNet++ SSG segmentation network on a (padded) batch of point clouds.

    Input point features are the absolute coordinates (metres) optionally concatenated with
    ``in_channels`` extra features (e.g. image features sampled at each point's pixel).
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 0,
        sa_num_centroids: Sequence[int],
        sa_num_neighbors: Sequence[int],
        sa_radii: Sequence[float],
        sa_channels: Sequence[int],
        fp_channels: Sequence[int],
        mlp_layers: int = 2,
        norm: str = "BN",
    ):
        """
        Args:
            num_classes: ``C`` output classes.
            in_channels: extra per-point input features besides xyz (0: none).
            sa_num_centroids: centroids kept by each SA level (farthest-point sampling).
            sa_num_neighbors: neighbours grouped per centroid, per SA level.
            sa_radii: ball-query radius per SA level (metres); 0 means plain kNN.
            sa_channels: shared-MLP width per SA level.
            fp_channels: shared-MLP width per FP level, coarsest first (one per SA level);
                the last is the width of the per-point features fed to the classifier.
            mlp_layers: 1x1-conv layers in every shared MLP.
            norm: "BN", "GN" or "" (masked normalisation, see :class:`MaskedBatchNorm`).
        """
        super().__init__()
        L = len(sa_num_centroids)
        lengths = {
            "sa_num_centroids": L,
            "sa_num_neighbors": len(sa_num_neighbors),
            "sa_radii": len(sa_radii),
            "sa_channels": len(sa_channels),
            "fp_channels": len(fp_channels),
        }
        if L == 0 or len(set(lengths.values())) != 1:
            raise ValueError(
                f"Point head level lists must be non-empty, of equal length: {lengths}"
            )
        if mlp_layers < 1:
            raise ValueError(f"mlp_layers must be >= 1, got {mlp_layers}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels

        point_channels = 3 + in_channels  # level-0 features: absolute xyz (+ extra)
        level_channels = [point_channels]
        self.sa_levels = nn.ModuleList()
        for s, k, r, c in zip(sa_num_centroids, sa_num_neighbors, sa_radii, sa_channels):
            sa = _SetAbstraction(s, k, float(r), level_channels[-1], [c] * mlp_layers, norm)
            self.sa_levels.append(sa)
            level_channels.append(c)

        self.fp_levels = nn.ModuleList()
        src_channels = level_channels[-1]
        for j, c in enumerate(fp_channels):
            skip_channels = level_channels[L - 1 - j]
            fp = _FeaturePropagation(src_channels, skip_channels, [c] * mlp_layers, norm)
            self.fp_levels.append(fp)
            src_channels = c

        self.predictor = nn.Conv2d(src_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.constant_(self.predictor.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, in_channels: int = 0):
        ph = cfg.MODEL.POINT_HEAD
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "in_channels": in_channels,
            "sa_num_centroids": list(ph.SA_NUM_CENTROIDS),
            "sa_num_neighbors": list(ph.SA_NUM_NEIGHBORS),
            "sa_radii": [float(r) for r in ph.SA_RADII],
            "sa_channels": list(ph.SA_CHANNELS),
            "fp_channels": list(ph.FP_CHANNELS),
            "mlp_layers": ph.MLP_LAYERS,
            "norm": ph.NORM,
        }

    def forward(
        self,
        xyz: torch.Tensor,
        valid: Optional[torch.Tensor] = None,
        features: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            xyz: ``[B, N, 3]`` camera-frame points, metres.
            valid: ``[B, N]`` bool (``None``: all valid). Invalid points do not influence
                the valid points' logits; their own logits are finite but meaningless.
            features: ``[B, N, in_channels]`` extra per-point features, or ``None`` when
                ``in_channels == 0``.

        Returns:
            logits ``[B, N, num_classes]``.
        """
        B, N, _ = xyz.shape
        if valid is None:
            valid = torch.ones(B, N, dtype=torch.bool, device=xyz.device)
        valid = valid.bool()
        keep = valid.unsqueeze(-1)
        zero = xyz.new_zeros(())
        xyz = torch.where(keep, xyz, zero)  # padding cannot leak, even if it is NaN
        feats = xyz
        if self.in_channels > 0:
            if features is None or features.shape != (B, N, self.in_channels):
                got = None if features is None else tuple(features.shape)
                raise ValueError(
                    f"Expected features of shape {(B, N, self.in_channels)}, got {got}"
                )
            feats = torch.cat([xyz, torch.where(keep, features, zero)], dim=-1)
        elif features is not None and features.shape[-1] != 0:
            raise ValueError("This point head was built with in_channels=0 but got features")

        levels: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = [(xyz, feats, valid)]
        for sa in self.sa_levels:
            levels.append(sa(*levels[-1]))

        _, x, _ = levels[-1]
        L = len(self.sa_levels)
        for j, fp in enumerate(self.fp_levels):
            fine_xyz, fine_feat, fine_valid = levels[L - 1 - j]
            src_xyz, _, src_valid = levels[L - j]
            x = fp(fine_xyz, fine_feat, fine_valid, src_xyz, x, src_valid)

        # the 1x1 classifier as a matrix product over channels (see SharedMLP)
        return F.linear(x, self.predictor.weight.flatten(1), self.predictor.bias)
