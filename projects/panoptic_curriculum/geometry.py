"""Pinhole geometry in pure torch: back-projection, projection and intrinsics updates.

Pixel convention (used everywhere in this package, and the one Open3D uses):
    a pixel is addressed by integer coordinates ``(u, v)`` where ``u`` is the column index
    (0 at the left edge, growing to the right) and ``v`` the row index (0 at the top, growing
    downwards). The centre of pixel ``(u, v)`` sits at the continuous image coordinate
    ``(u, v)``; pixel ``(u, v)`` covers ``[u - 0.5, u + 0.5] x [v - 0.5, v + 0.5]`` and the
    image of width ``W`` spans ``[-0.5, W - 0.5]``.

Camera coordinates follow OpenCV: ``x`` right, ``y`` down, ``z`` forward along the optical
axis, all in metres. ``K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` maps camera points to
pixels: ``[u, v, 1]^T ~ K [x, y, z]^T``. Depth ``d`` is the ``z`` coordinate (not the length
of the ray) in metres; ``d = 0`` marks an invalid pixel.

Every function is batched, differentiable with respect to depth, points and ``K``, and runs
on any device and floating dtype.
"""

from typing import Tuple

import torch

__all__ = [
    "pixel_grid",
    "backproject",
    "backproject_pixels",
    "project",
    "check_intrinsics",
    "MIN_FOCAL_PX",
    "resize_intrinsics",
    "crop_intrinsics",
    "hflip_intrinsics",
]


def pixel_grid(
    height: int, width: int, device=None, dtype=torch.float32
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Integer pixel coordinates of an ``height x width`` image.

    Returns:
        (u, v): two ``[H, W]`` tensors; ``u[v, u] = u`` (column), ``v[v, u] = v`` (row).
    """
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return u, v


#: smallest focal length (pixels) accepted for a pixel-unit K. With ``fx < 1`` the pixel
#: next to the principal point would already lie more than 45 degrees off the optical axis;
#: such values are normalised intrinsics (fractions of the image size) or focal lengths in
#: metres or millimetres, not pixels.
MIN_FOCAL_PX = 1.0

#: appended to errors about too small focal lengths
FOCAL_UNIT_HINT = (
    " (K is in pixels: multiply normalised intrinsics by the image width and height, and "
    "convert focal lengths in metres or millimetres with the pixel pitch)"
)


def check_intrinsics(K: torch.Tensor, name: str = "K", min_focal: float = MIN_FOCAL_PX) -> None:
    """Raise ``ValueError`` unless ``K`` is a (batch of) finite 3x3 pinhole matrices with
    focal lengths ``fx, fy >= min_focal`` pixels and last row ``[0, 0, 1]``.

    Meant for data loading and API boundaries, not for hot loops (it synchronises with the
    device).
    """
    if K.shape[-2:] != (3, 3):
        raise ValueError(f"{name} must have shape [..., 3, 3], got {tuple(K.shape)}")
    if not bool(torch.isfinite(K).all()):
        raise ValueError(f"{name} has non-finite entries: {K.tolist()}")
    if not bool(((K[..., 0, 0] >= min_focal) & (K[..., 1, 1] >= min_focal)).all()):
        raise ValueError(
            f"{name} must have focal lengths fx, fy >= {min_focal} pixels; got {K.tolist()}"
            + FOCAL_UNIT_HINT
        )
    last = K.new_tensor([0.0, 0.0, 1.0])
    if not bool(torch.allclose(K[..., 2, :], last.expand_as(K[..., 2, :]))):
        raise ValueError(f"{name} must have last row [0, 0, 1]; got {K.tolist()}")


def _inverse_intrinsics(K: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of upper-triangular pinhole matrices ``[..., 3, 3]``."""
    fx, s, cx = K[..., 0, 0], K[..., 0, 1], K[..., 0, 2]
    fy, cy = K[..., 1, 1], K[..., 1, 2]
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    row0 = torch.stack([1.0 / fx, -s / (fx * fy), (s * cy - cx * fy) / (fx * fy)], dim=-1)
    row1 = torch.stack([zero, 1.0 / fy, -cy / fy], dim=-1)
    row2 = torch.stack([zero, zero, one], dim=-1)
    return torch.stack([row0, row1, row2], dim=-2)


def backproject(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Lift depth maps into camera-frame point maps, ``P = d * K^-1 [u, v, 1]^T``.

    Args:
        depth: ``[B, H, W]`` depth in metres (``z`` coordinate); 0 marks invalid pixels,
            which map to the origin ``(0, 0, 0)``.
        K: ``[B, 3, 3]`` intrinsics in pixels (see the module docstring for the convention).

    Returns:
        ``[B, H, W, 3]`` points ``(x, y, z)`` in metres, same dtype and device as ``depth``.
    """
    if depth.dim() != 3:
        raise ValueError(f"depth must have shape [B, H, W], got {tuple(depth.shape)}")
    if K.dim() != 3 or K.shape[1:] != (3, 3) or K.shape[0] != depth.shape[0]:
        raise ValueError(
            f"K must have shape [B, 3, 3] with B={depth.shape[0]}, got {tuple(K.shape)}"
        )
    _, height, width = depth.shape
    u, v = pixel_grid(height, width, device=depth.device, dtype=depth.dtype)
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # [H, W, 3]
    rays = torch.einsum("bij,hwj->bhwi", _inverse_intrinsics(K.to(depth.dtype)), pix)
    return rays * depth.unsqueeze(-1)


def backproject_pixels(depth: torch.Tensor, uv: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Lift selected pixels, ``P = d * K^-1 [u, v, 1]^T``.

    Args:
        depth: ``[B, N]`` depth of each pixel, metres.
        uv: ``[B, N, 2]`` pixel coordinates ``(u, v)`` (column, row).
        K: ``[B, 3, 3]`` intrinsics, pixels.

    Returns:
        ``[B, N, 3]`` camera-frame points, metres.
    """
    uv = uv.to(depth.dtype)
    pix = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1)
    rays = torch.einsum("bij,bnj->bni", _inverse_intrinsics(K.to(depth.dtype)), pix)
    return rays * depth.unsqueeze(-1)


def project(
    points: torch.Tensor, K: torch.Tensor, eps: float = 1e-6
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Project camera-frame points to pixel coordinates.

    Args:
        points: ``[B, ..., 3]`` points in metres.
        K: ``[B, 3, 3]`` intrinsics in pixels.
        eps: points with ``z <= eps`` are behind or on the camera plane.

    Returns:
        (uv, z): ``uv`` is ``[B, ..., 2]`` continuous pixel coordinates ``(u, v)`` (column,
        row; integer values are pixel centres), ``z`` is ``[B, ...]`` depth in metres.
        Points with ``z <= eps`` get ``uv = nan``.
    """
    batch = points.shape[0]
    flat = points.reshape(batch, -1, 3)
    hom = torch.einsum("bij,bnj->bni", K.to(points.dtype), flat)
    z = flat[..., 2]
    valid = z > eps
    uv = hom[..., :2] / torch.where(valid, z, torch.ones_like(z)).unsqueeze(-1)
    uv = torch.where(valid.unsqueeze(-1), uv, torch.full_like(uv, float("nan")))
    return uv.reshape(*points.shape[:-1], 2), z.reshape(points.shape[:-1])


def resize_intrinsics(K: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    """Intrinsics after resizing the image by ``(scale_x, scale_y)`` = new size / old size.

    The image edges map onto each other (pixel-area / half-pixel alignment, as OpenCV, PIL
    and ``align_corners=False`` resizing do), so a continuous coordinate moves as
    ``u' = (u + 0.5) * scale_x - 0.5``. Hence ``fx' = fx * sx``, ``s' = s * sx``,
    ``cx' = (cx + 0.5) * sx - 0.5`` and likewise for ``y``.

    Args:
        K: ``[..., 3, 3]``.
    """
    out = K.clone()
    out[..., 0, :] = K[..., 0, :] * scale_x
    out[..., 1, :] = K[..., 1, :] * scale_y
    out[..., 0, 2] = (K[..., 0, 2] + 0.5) * scale_x - 0.5
    out[..., 1, 2] = (K[..., 1, 2] + 0.5) * scale_y - 0.5
    return out


def crop_intrinsics(K: torch.Tensor, x0: float, y0: float) -> torch.Tensor:
    """Intrinsics after cropping the image so that pixel ``(x0, y0)`` becomes ``(0, 0)``.

    Args:
        K: ``[..., 3, 3]``.
    """
    out = K.clone()
    out[..., 0, 2] = K[..., 0, 2] - x0
    out[..., 1, 2] = K[..., 1, 2] - y0
    return out


def hflip_intrinsics(K: torch.Tensor, width: int) -> torch.Tensor:
    """Intrinsics after flipping an image of ``width`` pixels left-right (``u' = W - 1 - u``).

    The focal length stays positive and ``cx' = W - 1 - cx``; the skew changes sign. A point
    back-projected with the new ``K`` is the original point mirrored in ``x``.

    Args:
        K: ``[..., 3, 3]``.
    """
    out = K.clone()
    out[..., 0, 1] = -K[..., 0, 1]
    out[..., 0, 2] = (width - 1) - K[..., 0, 2]
    return out
