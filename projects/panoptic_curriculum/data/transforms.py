"""How detectron2's geometric transforms act on depth maps and camera intrinsics.

Each supported transform class gets two methods, registered through fvcore's
``Transform.register_type``:

* ``apply_intrinsics(K)``: ``K`` is a ``(3, 3)`` array in pixels; returns the intrinsics
  of the transformed image, so that back-projecting the transformed depth with the new K
  gives the same 3D points (mirrored in ``x`` after a horizontal flip).
* ``apply_depth(depth)``: ``depth`` is ``(H, W)`` float32 metres, 0 invalid; resampling is
  nearest-neighbour with pixel centres aligned exactly as PIL's ``NEAREST`` does for the
  label maps, so depth is never interpolated across object edges and stays aligned with
  ``sem_seg`` and instance masks. Padding fills 0 (invalid).

Use :func:`transform_intrinsics` and :func:`transform_depth` on a ``TransformList``: they
name the transform when one is not supported (e.g. rotation) instead of silently returning
wrong geometry. Pixel convention: :mod:`panoptic_curriculum.geometry`.
"""

import numpy as np
import torch
from PIL import Image
from fvcore.transforms.transform import (
    BlendTransform,
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    PadTransform,
    Transform,
    TransformList,
    VFlipTransform,
)

from detectron2.data.transforms import ColorTransform, PILColorTransform, ResizeTransform

from ..geometry import crop_intrinsics, hflip_intrinsics, resize_intrinsics

__all__ = [
    "PixelValueTransform",
    "transform_intrinsics",
    "transform_depth",
    "resize_depth_nearest",
]


def _k(fn):
    """Wrap a torch intrinsics update as a numpy ``(3, 3)`` -> ``(3, 3)`` method."""

    def method(self, K):
        return fn(self, torch.as_tensor(np.asarray(K, dtype=np.float64))).numpy()

    return method


def resize_depth_nearest(depth: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Nearest-neighbour resize of a float32 ``(H, W)`` map through PIL's ``NEAREST``, the
    very code path detectron2 uses for label maps, so depth, ``sem_seg`` and instance masks
    sample the same source pixel everywhere (output pixel ``u'`` reads source pixel
    ``floor((u' + 0.5) * W / W')``, up to PIL's rounding at exact ties)."""
    img = Image.fromarray(np.ascontiguousarray(depth, dtype=np.float32), mode="F")
    return np.array(img.resize((new_w, new_h), Image.NEAREST), dtype=np.float32)


def _identity(self, x):
    return x


# --- resize
ResizeTransform.register_type(
    "intrinsics", _k(lambda t, K: resize_intrinsics(K, t.new_w / t.w, t.new_h / t.h))
)
ResizeTransform.register_type(
    "depth", lambda t, depth: resize_depth_nearest(depth, t.new_h, t.new_w)
)
# --- crop
CropTransform.register_type("intrinsics", _k(lambda t, K: crop_intrinsics(K, t.x0, t.y0)))
CropTransform.register_type("depth", lambda t, depth: depth[t.y0 : t.y0 + t.h, t.x0 : t.x0 + t.w])
# --- flips
HFlipTransform.register_type("intrinsics", _k(lambda t, K: hflip_intrinsics(K, t.width)))
HFlipTransform.register_type("depth", lambda t, depth: np.ascontiguousarray(depth[:, ::-1]))


def _vflip_k(t, K):
    out = K.clone()
    out[1, 2] = (t.height - 1) - K[1, 2]
    return out


VFlipTransform.register_type("intrinsics", _k(_vflip_k))
VFlipTransform.register_type("depth", lambda t, depth: np.ascontiguousarray(depth[::-1]))
# --- padding (the new border is invalid depth)
PadTransform.register_type("intrinsics", _k(lambda t, K: crop_intrinsics(K, -t.x0, -t.y0)))
PadTransform.register_type(
    "depth", lambda t, depth: np.pad(depth, ((t.y0, t.y1), (t.x0, t.x1)), constant_values=0.0)
)
# --- photometric transforms leave geometry alone
for _cls in (NoOpTransform, BlendTransform, ColorTransform, PILColorTransform):
    _cls.register_type("intrinsics", _identity)
    _cls.register_type("depth", _identity)


class PixelValueTransform(Transform):
    """Base of the plugin's transforms that change pixel values only (colour jitter, image
    corruptions): coordinates, segmentation, depth and intrinsics pass through unchanged.
    Subclasses implement ``apply_image``; such a change has no inverse."""

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def apply_intrinsics(self, K):
        return K

    def apply_depth(self, depth: np.ndarray) -> np.ndarray:
        return depth

    def inverse(self) -> Transform:
        raise NotImplementedError(f"{type(self).__name__} changes pixel values: no inverse")


def _apply(transforms, data, kind: str):
    tfms = transforms.transforms if isinstance(transforms, TransformList) else [transforms]
    for t in tfms:
        fn = getattr(t, "apply_" + kind, None)
        if fn is None:
            raise NotImplementedError(
                f"{type(t).__name__} does not say how it changes {kind}; register it with "
                f"{type(t).__name__}.register_type({kind!r}, fn) or remove it from the "
                "augmentations of RGB-D data"
            )
        data = fn(data)
    return data


def transform_intrinsics(transforms: Transform, K: np.ndarray) -> np.ndarray:
    """Intrinsics ``(3, 3)`` (pixels) after ``transforms`` (a Transform or TransformList)."""
    return _apply(transforms, np.asarray(K, dtype=np.float64), "intrinsics")


def transform_depth(transforms: Transform, depth: np.ndarray) -> np.ndarray:
    """Depth ``(H, W)`` (metres, 0 invalid) after ``transforms``; nearest resampling."""
    return np.ascontiguousarray(_apply(transforms, depth, "depth"), dtype=np.float32)
