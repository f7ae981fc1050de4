"""Utilities: visualisation of RGB-D panoptic samples (see :mod:`.visualization`), safe
loading of untrusted files (:mod:`.safe_load`) and atomic writes (:mod:`.atomic_io`).

The drawing functions are re-exported here but imported on first use, so that the light
modules (:mod:`.safe_load`, :mod:`.atomic_io`, used by the config and dataset code) do not
pull in matplotlib and detectron2's visualizer.
"""

import importlib

_VISUALIZATION = (
    "IGNORED_POINT_COLOR",
    "PointCloudRenderer",
    "class_colored_points",
    "colorize_depth",
    "draw_instances",
    "draw_panoptic",
    "draw_semantic",
    "render_point_cloud",
    "save_point_cloud_ply",
)

__all__ = list(_VISUALIZATION)


def __getattr__(name):
    if name in _VISUALIZATION:
        return getattr(importlib.import_module(".visualization", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
