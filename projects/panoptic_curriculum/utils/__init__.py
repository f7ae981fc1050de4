"""Utilities: visualisation of RGB-D panoptic samples (see :mod:`.visualization`)."""

from .visualization import (
    IGNORED_POINT_COLOR,
    PointCloudRenderer,
    class_colored_points,
    colorize_depth,
    draw_instances,
    draw_panoptic,
    draw_semantic,
    render_point_cloud,
    save_point_cloud_ply,
)

__all__ = [
    "IGNORED_POINT_COLOR",
    "PointCloudRenderer",
    "class_colored_points",
    "colorize_depth",
    "draw_instances",
    "draw_panoptic",
    "draw_semantic",
    "render_point_cloud",
    "save_point_cloud_ply",
]
