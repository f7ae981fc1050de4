"""Datasets, depth I/O and the RGB-D dataset mapper."""

from .depth_io import (
    DEPTH_DECODERS,
    DEPTH_FILE_EXTENSIONS,
    read_depth,
    read_image,
    read_intrinsics,
    register_depth_format,
)
from . import datasets  # registers synthetic_scenes_*, cityscapes_fine_depth_*, nyud_v2_*
from .datasets import register_label_subset, register_rgbd_dataset

__all__ = [
    "DEPTH_DECODERS",
    "DEPTH_FILE_EXTENSIONS",
    "register_label_subset",
    "register_rgbd_dataset",
    "read_depth",
    "read_image",
    "read_intrinsics",
    "register_depth_format",
]
