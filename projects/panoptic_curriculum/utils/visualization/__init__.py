"""Visualisation of RGB-D panoptic samples and predictions, one job per module:

* :mod:`.colors`: class palettes and per-point colours (class, agreement);
* :mod:`.draw2d`: depth colour maps, segmentation overlays (detectron2's ``Visualizer``),
  titled panels;
* :mod:`.pointcloud`: depth maps back-projected into class-coloured points (no Open3D);
* :mod:`.render3d`: Open3D: PLY files, headless rendering, interactive windows (Open3D is
  imported lazily there, so the package imports on machines without it);
* :mod:`.predictions`: pictures and point clouds of a model's outputs;
* :mod:`.files`: input image lists, output names, PNG files, one image's pictures on disk;
* :mod:`.arguments`: command-line options shared by the drawing tools.

Conventions: images are ``(H, W, 3)`` uint8 **RGB**; depth is ``(H, W)`` float metres, 0 =
invalid; intrinsics ``K`` are ``(3, 3)`` pixels (:mod:`panoptic_curriculum.geometry`, OpenCV
camera frame); class colours are ``(C, 3)`` in 0..255 (``metadata.stuff_colors``), point
colours float in 0..1 (Open3D's).

Every public name is re-exported here.
"""

from .arguments import add_picture_arguments
from .colors import (
    AGREEMENT_COLOR,
    DISAGREEMENT_COLOR,
    IGNORED_POINT_COLOR,
    class_palette,
    disagreement_point_colors,
    label_point_colors,
)
from .draw2d import (
    add_title,
    colorize_depth,
    draw_instances,
    draw_panoptic,
    draw_semantic,
    tile_panels,
)
from .files import IMAGE_EXTENSIONS, list_images, unique_stem, write_png_rgb, write_views
from .pointcloud import class_colored_points, labels_at_pixels
from .predictions import (
    EMPTY_CLOUD_REASON,
    draw_prediction,
    point_branch_views,
    prediction_point_cloud,
    prediction_views,
)
from .render3d import (
    PointCloudRenderer,
    display_available,
    read_point_cloud_ply,
    read_point_cloud_plys,
    render_point_cloud,
    render_point_cloud_panels,
    save_point_cloud_ply,
    show_point_clouds,
)

__all__ = [
    "add_picture_arguments",
    "colorize_depth",
    "draw_semantic",
    "draw_instances",
    "draw_panoptic",
    "class_colored_points",
    "labels_at_pixels",
    "save_point_cloud_ply",
    "read_point_cloud_ply",
    "read_point_cloud_plys",
    "PointCloudRenderer",
    "render_point_cloud",
    "IGNORED_POINT_COLOR",
    "DISAGREEMENT_COLOR",
    "AGREEMENT_COLOR",
    "class_palette",
    "label_point_colors",
    "disagreement_point_colors",
    "add_title",
    "tile_panels",
    "render_point_cloud_panels",
    "display_available",
    "show_point_clouds",
    "draw_prediction",
    "prediction_point_cloud",
    "prediction_views",
    "point_branch_views",
    "EMPTY_CLOUD_REASON",
    "IMAGE_EXTENSIONS",
    "list_images",
    "unique_stem",
    "write_png_rgb",
    "write_views",
]
