"""Datasets, depth I/O and the RGB-D dataset mapper."""

from .depth_io import DEPTH_DECODERS, read_depth, read_image, read_intrinsics, register_depth_format
from . import datasets  # registers synthetic_scenes_* and cityscapes_fine_depth_*

__all__ = [
    "DEPTH_DECODERS",
    "read_depth",
    "read_image",
    "read_intrinsics",
    "register_depth_format",
]
