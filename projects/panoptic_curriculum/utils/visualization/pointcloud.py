"""Point clouds from depth maps: back-projection coloured by class, labels at points'
pixels. NumPy and torch only (no Open3D).

Intrinsics ``K`` are ``(3, 3)`` pixels, in the convention of :mod:`panoptic_curriculum.geometry`
(OpenCV camera frame: ``x`` right, ``y`` down, ``z`` forward).
"""

from typing import Optional, Tuple

import numpy as np
import torch

from ...geometry import backproject
from ._common import ArrayLike, to_numpy
from .colors import IGNORED_POINT_COLOR

__all__ = ["class_colored_points", "labels_at_pixels"]


def class_colored_points(
    depth: ArrayLike,
    K: ArrayLike,
    labels: Optional[ArrayLike],
    colors: ArrayLike,
    ignore_label: int = 255,
    keep_ignored: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
    """Back-project the valid pixels of a depth map and colour each point by its class.

    Points come from :func:`panoptic_curriculum.geometry.backproject`, in row-major pixel
    order (row ``v`` first, then column ``u``) over the kept pixels.

    Args:
        depth: ``(H, W)`` depth in metres; pixels with ``depth > 0`` (and finite) are kept.
        K: ``(3, 3)`` intrinsics in pixels.
        labels: ``(H, W)`` integer class ids, ``ignore_label`` where unlabelled; None colours
            every point grey.
        colors: ``(C, 3)`` class colours in 0..255 (``metadata.stuff_colors``); every label
            other than ``ignore_label`` must be in ``[0, C)``.
        ignore_label: label of unlabelled pixels.
        keep_ignored: keep the points of ignored pixels (coloured grey,
            :data:`IGNORED_POINT_COLOR`) or drop them.

    Returns:
        (points, point_colors): ``(N, 3)`` float32 camera-frame coordinates in metres and
        ``(N, 3)`` float32 RGB colours in 0..1.
    """
    d = torch.as_tensor(to_numpy(depth), dtype=torch.float32)
    if d.dim() != 2:
        raise ValueError(f"depth must have shape (H, W), got {tuple(d.shape)}")
    k = torch.as_tensor(to_numpy(K), dtype=torch.float32)
    if tuple(k.shape) != (3, 3):
        raise ValueError(f"K must have shape (3, 3), got {tuple(k.shape)}")
    palette = np.asarray(to_numpy(colors), dtype=np.float32).reshape(-1, 3) / 255.0
    keep = torch.isfinite(d) & (d > 0)
    if labels is not None:
        lab = torch.as_tensor(to_numpy(labels).astype(np.int64))
        if lab.shape != d.shape:
            raise ValueError(f"labels {tuple(lab.shape)} do not match depth {tuple(d.shape)}")
        ignored = lab == ignore_label
        if not keep_ignored:
            keep &= ~ignored
        bad = keep & ~ignored & ((lab < 0) | (lab >= len(palette)))
        if bool(bad.any()):
            raise ValueError(
                f"labels {sorted(set(lab[bad].tolist()))} have no colour among {len(palette)} "
                f"classes (ignore_label={ignore_label})"
            )
    points = backproject(torch.where(keep, d, torch.zeros_like(d))[None], k[None])[0]
    points = points[keep].numpy().astype(np.float32)  # [N, 3]
    point_colors = np.empty((points.shape[0], 3), dtype=np.float32)
    point_colors[:] = IGNORED_POINT_COLOR
    if labels is not None:
        kept_labels = lab[keep].numpy()
        known = kept_labels != ignore_label
        point_colors[known] = palette[kept_labels[known]]
    return points, point_colors



def labels_at_pixels(label_map: ArrayLike, pixels: ArrayLike) -> np.ndarray:
    """``label_map[round(v), round(u)]`` for each ``(u, v)`` row of ``pixels``.

    Args:
        label_map: ``(H, W)`` integer labels.
        pixels: ``(N, 2)`` continuous pixel coordinates ``(u, v)`` (integers at pixel
            centres); rounded and clamped to the map.

    Returns:
        ``(N,)`` labels, of ``label_map``'s dtype.
    """
    label_map = to_numpy(label_map)
    h, w = label_map.shape
    uv = np.rint(np.asarray(to_numpy(pixels), dtype=np.float64).reshape(-1, 2)).astype(np.int64)
    u = np.clip(uv[:, 0], 0, w - 1)
    v = np.clip(uv[:, 1], 0, h - 1)
    return label_map[v, u]
