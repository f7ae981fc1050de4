"""Utilities: visualisation of RGB-D panoptic samples (the :mod:`.visualization` package), safe
loading of untrusted files (:mod:`.safe_load`) and atomic writes (:mod:`.atomic_io`).

The drawing functions are re-exported here but imported on first use, so that the light
modules (:mod:`.safe_load`, :mod:`.atomic_io`, used by the config and dataset code) do not
pull in matplotlib and detectron2's visualizer.
"""

import importlib

# the public names of .visualization (its __all__; a test keeps the two equal)
_VISUALIZATION = (
    "AGREEMENT_COLOR",
    "DISAGREEMENT_COLOR",
    "EMPTY_CLOUD_REASON",
    "IGNORED_POINT_COLOR",
    "IMAGE_EXTENSIONS",
    "PointCloudRenderer",
    "add_picture_arguments",
    "add_title",
    "class_colored_points",
    "class_palette",
    "colorize_depth",
    "disagreement_point_colors",
    "display_available",
    "draw_instances",
    "draw_panoptic",
    "draw_prediction",
    "draw_semantic",
    "label_point_colors",
    "labels_at_pixels",
    "list_images",
    "point_branch_views",
    "prediction_point_cloud",
    "prediction_views",
    "read_point_cloud_ply",
    "read_point_cloud_plys",
    "render_point_cloud",
    "render_point_cloud_panels",
    "save_point_cloud_ply",
    "show_point_clouds",
    "tile_panels",
    "unique_stem",
    "write_png_rgb",
    "write_views",
)

__all__ = list(_VISUALIZATION)


def __getattr__(name):
    if name in _VISUALIZATION:
        return getattr(importlib.import_module(".visualization", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
