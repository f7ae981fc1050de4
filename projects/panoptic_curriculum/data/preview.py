"""Previews of RGB-D panoptic samples as the model sees them (``tools/visualize_data.py``):
the mapper of a preview source and the pictures, point cloud and summary of a mapped sample.
"""

from typing import Dict, Optional, Tuple

import numpy as np

from detectron2.data.detection_utils import convert_image_to_rgb

from ..utils.visualization import (
    class_colored_points,
    colorize_depth,
    draw_instances,
    draw_semantic,
)
from .dataset_mapper import RGBDDatasetMapper

__all__ = ["PREVIEW_SOURCES", "preview_mapper", "sample_views"]

#: ``dataloader``: augmented training samples; ``annotation``: samples as stored
PREVIEW_SOURCES = ("dataloader", "annotation")


def preview_mapper(cfg, source: str) -> RGBDDatasetMapper:
    """The training mapper (``source="dataloader"``, with its random resizing, cropping and
    flipping) or the same mapper without augmentation (``source="annotation"``)."""
    if source == "dataloader":
        return RGBDDatasetMapper(cfg, is_train=True)
    if source == "annotation":
        return RGBDDatasetMapper(cfg, is_train=True, augmentations=[])
    raise ValueError(f"preview source must be one of {PREVIEW_SOURCES}, got {source!r}")


def sample_views(
    sample: Dict, metadata, image_format: str, max_depth: Optional[float] = None
) -> Tuple[Dict[str, np.ndarray], Optional[Tuple[np.ndarray, np.ndarray]], Dict]:
    """Pictures of one mapped sample (as made by :class:`RGBDDatasetMapper`).

    Args:
        sample: mapped dict: ``image`` ``(3, H, W)`` tensor in ``image_format``, optional
            ``sem_seg`` ``(H, W)``, ``instances``, ``depth`` ``(H, W)`` metres and
            ``intrinsics`` ``(3, 3)`` pixels.
        metadata: the dataset's ``Metadata`` (class names and colours).
        image_format: ``cfg.INPUT.FORMAT``.
        max_depth: metres at the top of the depth colour scale (default: the sample's largest).

    Returns:
        (pictures, cloud, stats): ``image``, ``semantic`` (with ``sem_seg``), ``instances``
        and ``depth`` (with depth) as uint8 RGB; the depth back-projected with the intrinsics,
        one point per valid depth pixel coloured by class (``(N, 3)`` float32 metres and RGB
        in 0..1), or None without depth; and a JSON-ready summary: ``file_name``,
        ``image_size`` ``[H, W]``, ``num_instances``, ``num_valid_depth_pixels``,
        ``num_points``, ``depth_range_m`` and ``intrinsics``.
    """
    image = convert_image_to_rgb(sample["image"].permute(1, 2, 0), image_format)
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    pictures = {"image": image}
    sem_seg = sample.get("sem_seg")
    if sem_seg is not None:
        pictures["semantic"] = draw_semantic(image, sem_seg, metadata)
    instances = sample.get("instances")
    pictures["instances"] = draw_instances(
        image, instances if instances is not None else [], metadata
    )
    stats = {
        "file_name": sample["file_name"],
        "image_size": [height, width],
        "num_instances": len(instances) if instances is not None else 0,
    }
    cloud = None
    if "depth" in sample:
        depth, K = sample["depth"], sample["intrinsics"]
        pictures["depth"] = colorize_depth(depth, max_depth)
        cloud = class_colored_points(depth, K, sem_seg, metadata.stuff_colors)
        valid = depth > 0
        stats.update(
            num_valid_depth_pixels=int(valid.sum()),
            num_points=int(cloud[0].shape[0]),
            depth_range_m=[float(depth[valid].min()), float(depth.max())] if valid.any() else None,
            intrinsics=[[float(x) for x in row] for row in K.tolist()],
        )
    else:
        stats.update(num_valid_depth_pixels=0, num_points=0, depth_range_m=None, intrinsics=None)
    return pictures, cloud, stats
