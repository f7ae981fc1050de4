"""Visualisation of RGB-D panoptic samples: depth colour maps, 2D overlays drawn with
detectron2's :class:`~detectron2.utils.visualizer.Visualizer`, class-coloured point clouds,
PLY export and headless point-cloud rendering with Open3D.

Conventions:

* images are ``(H, W, 3)`` uint8 **RGB** arrays (convert detectron2's BGR inputs first);
* depth is ``(H, W)`` float metres (the ``z`` coordinate), 0 marks an invalid pixel;
* intrinsics ``K`` are ``(3, 3)`` pixels, in the convention of :mod:`panoptic_curriculum.geometry`
  (OpenCV camera frame: ``x`` right, ``y`` down, ``z`` forward);
* class colours are ``(C, 3)`` in 0..255 (as ``metadata.stuff_colors``); point colours are
  float in 0..1 (as Open3D's).

Open3D is imported lazily inside the functions that need it, so that this module (and the
package) imports on machines without Open3D.
"""

import gc
import math
import os
import threading
from typing import Optional, Sequence, Tuple, Union

import cv2
import matplotlib
import numpy as np
import torch

from detectron2.data import detection_utils as d2_utils
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.visualizer import Visualizer

from ..geometry import backproject

__all__ = [
    "add_picture_arguments",
    "colorize_depth",
    "draw_semantic",
    "draw_instances",
    "draw_panoptic",
    "class_colored_points",
    "save_point_cloud_ply",
    "PointCloudRenderer",
    "render_point_cloud",
    "IGNORED_POINT_COLOR",
    "DISAGREEMENT_COLOR",
    "AGREEMENT_COLOR",
    "label_point_colors",
    "disagreement_point_colors",
    "add_title",
    "tile_panels",
    "render_point_cloud_panels",
    "display_available",
    "show_point_clouds",
    "draw_prediction",
    "prediction_point_cloud",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

#: colour (RGB, 0..1) of points whose label is the ignore label
IGNORED_POINT_COLOR = (0.5, 0.5, 0.5)

_SCALE_BAR_HEIGHT = 34  # pixels: 12 gradient + ticks + labels
_SCALE_BAR_BACKGROUND = (32, 32, 32)  # RGB


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------------------------
# Depth colour map
# --------------------------------------------------------------------------------------------
def _nice_step(max_value: float, max_ticks: int) -> float:
    """Smallest step of the form ``{1, 2, 2.5, 5} * 10^k`` giving at most ``max_ticks``
    intervals on ``[0, max_value]``."""
    raw = max_value / max(max_ticks, 1)
    base = 10.0 ** math.floor(math.log10(raw))
    for mult in (1.0, 2.0, 2.5, 5.0, 10.0):
        if mult * base >= raw:
            return mult * base
    return 10.0 * base


def _depth_scale_bar(width: int, max_depth: float, cmap) -> np.ndarray:
    """A ``(_SCALE_BAR_HEIGHT, width, 3)`` uint8 RGB strip: a horizontal gradient of ``cmap``
    over ``[0, max_depth]`` metres, with ticks and labels in metres."""
    strip = np.empty((_SCALE_BAR_HEIGHT, width, 3), dtype=np.uint8)
    strip[:] = _SCALE_BAR_BACKGROUND
    margin = min(14, width // 8)
    x0, x1 = margin, width - 1 - margin  # gradient columns, inclusive
    if x1 <= x0:
        return strip
    bar_top, bar_bottom = 3, 15  # rows [bar_top, bar_bottom)
    ramp = np.linspace(0.0, 1.0, x1 - x0 + 1)
    colors = (cmap(ramp)[:, :3] * 255.0 + 0.5).astype(np.uint8)  # [x1 - x0 + 1, 3]
    strip[bar_top:bar_bottom, x0 : x1 + 1] = colors[None]

    font, font_scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1
    label_width = cv2.getTextSize(f"{max_depth:.1f} m", font, font_scale, thickness)[0][0]
    max_ticks = int(np.clip((x1 - x0) // max(label_width + 6, 1), 1, 8))
    step = _nice_step(max_depth, max_ticks)
    ticks = np.arange(0.0, max_depth + 1e-6 * step, step)
    white = (235, 235, 235)
    for i, value in enumerate(ticks):
        x = int(round(x0 + (x1 - x0) * value / max_depth))
        cv2.line(strip, (x, bar_bottom), (x, bar_bottom + 3), white, 1)
        text = f"{value:g}" + (" m" if i == len(ticks) - 1 else "")
        (tw, th), _ = cv2.getTextSize(text, font, font_scale, thickness)
        tx = int(np.clip(x - tw // 2, 0, max(width - tw, 0)))
        cv2.putText(
            strip, text, (tx, bar_bottom + 5 + th), font, font_scale, white, thickness, cv2.LINE_AA
        )
    return strip


def colorize_depth(
    depth: ArrayLike,
    max_depth: Optional[float] = None,
    with_scale_bar: bool = True,
    cmap: str = "turbo",
) -> np.ndarray:
    """Colour a metric depth map with a perceptual colour map.

    Depth ``0..max_depth`` metres maps linearly onto the colour map (deeper values are
    clipped to its last colour); invalid pixels (``depth <= 0`` or non-finite) are black.

    Args:
        depth: ``(H, W)`` depth in metres, 0 = invalid (numpy or torch).
        max_depth: metres at the top of the colour scale; default: the largest valid depth
            (1 m when no pixel is valid).
        with_scale_bar: append a strip below the map with the colour gradient and tick labels
            in metres.
        cmap: name of a matplotlib colour map.

    Returns:
        ``(H', W, 3)`` uint8 RGB image, ``H' = H + 34`` with the scale bar, else ``H``.
    """
    d = _to_numpy(depth).astype(np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must have shape (H, W), got {d.shape}")
    valid = np.isfinite(d) & (d > 0)
    if max_depth is None:
        max_depth = float(d[valid].max()) if valid.any() else 1.0
    if not max_depth > 0:
        raise ValueError(f"max_depth must be positive, got {max_depth}")
    colormap = matplotlib.colormaps[cmap]
    norm = np.clip(np.where(valid, d, 0.0) / max_depth, 0.0, 1.0)
    rgb = (colormap(norm)[..., :3] * 255.0 + 0.5).astype(np.uint8)
    rgb[~valid] = 0
    if with_scale_bar:
        rgb = np.concatenate([rgb, _depth_scale_bar(d.shape[1], max_depth, colormap)], axis=0)
    return rgb


# --------------------------------------------------------------------------------------------
# 2D overlays (detectron2 Visualizer)
# --------------------------------------------------------------------------------------------
def _check_image(image_rgb: np.ndarray) -> np.ndarray:
    image = _to_numpy(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image_rgb must have shape (H, W, 3), got {image.shape}")
    return image


def draw_semantic(
    image_rgb: ArrayLike, sem_seg: ArrayLike, metadata, alpha: float = 0.6, scale: float = 1.0
) -> np.ndarray:
    """Overlay a semantic segmentation (class colours ``metadata.stuff_colors``, class names
    ``metadata.stuff_classes``) on an image; pixels with ids outside the class list (the
    ignore label) are left undrawn.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB.
        sem_seg: ``(H, W)`` integer class ids.
        metadata: detectron2 ``Metadata`` (or any object with ``stuff_classes``).
        alpha: opacity of the masks.
        scale: output size relative to the input.

    Returns:
        ``(H * scale, W * scale, 3)`` uint8 RGB.
    """
    image = _check_image(image_rgb)
    seg = _to_numpy(sem_seg).astype(np.int64)
    if seg.shape != image.shape[:2]:
        raise ValueError(f"sem_seg {seg.shape} does not match the image {image.shape[:2]}")
    vis = Visualizer(image, metadata, scale=scale)
    return vis.draw_sem_seg(seg, alpha=alpha).get_image()


def _instance_colors(classes: Sequence[int], metadata) -> Optional[list]:
    """Per-instance colours (0..1): the class colour, lightness varied deterministically by
    the instance index so that touching instances of one class stay distinct."""
    thing_colors = metadata.get("thing_colors", None)
    if not thing_colors:
        return None
    colors = []
    for i, c in enumerate(classes):
        base = np.asarray(thing_colors[c], dtype=np.float64) / 255.0
        factor = (0.0, 0.25, -0.25, 0.4, -0.4)[i % 5]
        shifted = base + (1.0 - base) * factor if factor > 0 else base * (1.0 + factor)
        colors.append(tuple(np.clip(shifted, 0.0, 1.0)))
    return colors


def _masks_to_numpy(masks, height: int, width: int) -> np.ndarray:
    """``(N, H, W)`` bool array from BitMasks, PolygonMasks or a mask tensor/array."""
    if isinstance(masks, BitMasks):
        return _to_numpy(masks.tensor).astype(bool)
    if isinstance(masks, PolygonMasks):
        return _to_numpy(BitMasks.from_polygon_masks(masks, height, width).tensor).astype(bool)
    return _to_numpy(masks).astype(bool)


def draw_instances(
    image_rgb: ArrayLike,
    instances_or_annotations: Union[Instances, Sequence[dict]],
    metadata,
    alpha: float = 0.5,
    scale: float = 1.0,
    draw_boxes: bool = True,
) -> np.ndarray:
    """Overlay instances (masks, boxes, class labels and scores) on an image.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB.
        instances_or_annotations: one of

            * detectron2 ``Instances`` with ground-truth fields (``gt_classes``, optional
              ``gt_boxes``, ``gt_masks``), as made by the dataset mapper;
            * ``Instances`` with predicted fields (``pred_classes``, optional ``pred_boxes``,
              ``pred_masks``, ``scores``), as returned by a model;
            * a list of detectron2 annotation dicts (``bbox``, ``bbox_mode``, ``category_id``,
              optional ``segmentation`` as polygons or RLE) in the image's coordinates.
        metadata: detectron2 ``Metadata`` with ``thing_classes`` (and ``thing_colors``).
        alpha: opacity of the masks.
        scale: output size relative to the input.
        draw_boxes: draw the boxes as well as the masks.

    Returns:
        ``(H * scale, W * scale, 3)`` uint8 RGB.
    """
    image = _check_image(image_rgb)
    height, width = image.shape[:2]
    if isinstance(instances_or_annotations, Instances):
        inst = instances_or_annotations.to("cpu")
    else:
        annos = [a for a in instances_or_annotations if a.get("iscrowd", 0) == 0]
        inst = d2_utils.annotations_to_instances(annos, (height, width), mask_format="bitmask")

    prefix = "gt" if inst.has("gt_classes") else "pred"
    if not inst.has(f"{prefix}_classes"):
        raise ValueError(
            f"instances need gt_classes or pred_classes, got fields {list(inst.get_fields())}"
        )
    classes = [int(c) for c in inst.get(f"{prefix}_classes").tolist()]
    boxes = inst.get(f"{prefix}_boxes") if draw_boxes and inst.has(f"{prefix}_boxes") else None
    if isinstance(boxes, Boxes):
        boxes = boxes.tensor
    if boxes is not None:
        boxes = _to_numpy(boxes).astype(np.float64)
    masks = None
    if inst.has(f"{prefix}_masks"):
        masks = list(_masks_to_numpy(inst.get(f"{prefix}_masks"), height, width))
    scores = _to_numpy(inst.scores).tolist() if inst.has("scores") else None

    names = metadata.get("thing_classes", None)
    labels = []
    for i, c in enumerate(classes):
        text = names[c] if names is not None and 0 <= c < len(names) else str(c)
        if scores is not None:
            text = f"{text} {scores[i] * 100:.0f}%"
        labels.append(text)

    vis = Visualizer(image, metadata, scale=scale)
    if not classes:
        return vis.get_output().get_image()
    out = vis.overlay_instances(
        boxes=boxes,
        labels=labels,
        masks=masks,
        assigned_colors=_instance_colors(classes, metadata),
        alpha=alpha,
    )
    return out.get_image()


def draw_panoptic(
    image_rgb: ArrayLike,
    panoptic_seg: ArrayLike,
    segments_info: Optional[Sequence[dict]],
    metadata,
    alpha: float = 0.6,
    scale: float = 1.0,
) -> np.ndarray:
    """Overlay a panoptic segmentation on an image (detectron2's ``draw_panoptic_seg``).

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB.
        panoptic_seg: ``(H, W)`` integer segment ids.
        segments_info: one dict per segment with ``id``, ``category_id`` (contiguous; thing ids
            index ``thing_classes``, stuff ids ``stuff_classes``) and ``isthing``; or None when
            ``panoptic_seg`` holds ``category_id * label_divisor + instance_id`` (-1 = void).
        metadata: detectron2 ``Metadata``.
        alpha: opacity of the masks.
        scale: output size relative to the input.

    Returns:
        ``(H * scale, W * scale, 3)`` uint8 RGB.
    """
    image = _check_image(image_rgb)
    seg = torch.as_tensor(_to_numpy(panoptic_seg).astype(np.int64))
    if tuple(seg.shape) != image.shape[:2]:
        raise ValueError(
            f"panoptic_seg {tuple(seg.shape)} does not match the image " f"{image.shape[:2]}"
        )
    # detectron2 writes "area" into the dicts: give it copies.
    infos = None if segments_info is None else [dict(s) for s in segments_info]
    vis = Visualizer(image, metadata, scale=scale)
    return vis.draw_panoptic_seg(seg, infos, alpha=alpha).get_image()


# --------------------------------------------------------------------------------------------
# Point clouds
# --------------------------------------------------------------------------------------------
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
    d = torch.as_tensor(_to_numpy(depth), dtype=torch.float32)
    if d.dim() != 2:
        raise ValueError(f"depth must have shape (H, W), got {tuple(d.shape)}")
    k = torch.as_tensor(_to_numpy(K), dtype=torch.float32)
    if tuple(k.shape) != (3, 3):
        raise ValueError(f"K must have shape (3, 3), got {tuple(k.shape)}")
    palette = np.asarray(_to_numpy(colors), dtype=np.float32).reshape(-1, 3) / 255.0
    keep = torch.isfinite(d) & (d > 0)
    if labels is not None:
        lab = torch.as_tensor(_to_numpy(labels).astype(np.int64))
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


def _to_o3d_point_cloud(points: ArrayLike, colors: Optional[ArrayLike]):
    import open3d as o3d  # lazy: only visualisation needs Open3D

    pts = np.ascontiguousarray(_to_numpy(points), dtype=np.float64).reshape(-1, 3)
    pc = o3d.geometry.PointCloud()
    pc.points = o3d.utility.Vector3dVector(pts)
    if colors is not None:
        cols = np.ascontiguousarray(_to_numpy(colors), dtype=np.float64).reshape(-1, 3)
        if cols.shape[0] != pts.shape[0]:
            raise ValueError(f"{pts.shape[0]} points but {cols.shape[0]} colours")
        pc.colors = o3d.utility.Vector3dVector(np.clip(cols, 0.0, 1.0))
    return pc


def save_point_cloud_ply(
    path: str, points: ArrayLike, colors: Optional[ArrayLike] = None, binary: bool = True
) -> None:
    """Write a (coloured) point cloud to a PLY file with Open3D (parent folders created).

    Args:
        path: output ``.ply`` path.
        points: ``(N, 3)`` coordinates in metres.
        colors: ``(N, 3)`` RGB in 0..1 (stored as 8-bit), or None.
        binary: binary PLY (else ASCII).

    Raises:
        OSError: naming ``path``, when Open3D cannot write the file.
    """
    import open3d as o3d  # lazy: only visualisation needs Open3D

    pc = _to_o3d_point_cloud(points, colors)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        ok = o3d.io.write_point_cloud(path, pc, write_ascii=not binary)
    except Exception as e:  # noqa: BLE001  (re-raised with the path)
        raise OSError(f"could not write point cloud to {path}: {e}") from e
    if not ok:
        raise OSError(f"could not write point cloud to {path} (Open3D write_point_cloud failed)")


class PointCloudRenderer:
    """Headless renderer of coloured point clouds (Open3D ``OffscreenRenderer``, unlit).

    Creating the Open3D renderer takes about a second, so one instance is meant to render
    many clouds; it is created on the first :meth:`render`. Open3D cannot keep two offscreen
    renderers alive in one process (it aborts at exit), so only one ``PointCloudRenderer`` of
    the process holds an Open3D renderer at a time: another one rendering takes it over
    (closing this one's, which is recreated on its next :meth:`render`). :meth:`close`
    releases it explicitly.

    The virtual camera looks at the cloud's centroid from behind and above the real camera's
    origin (OpenCV frame: ``y`` down, ``z`` forward), at ``(0, -elevation * s, -setback * s)``
    with ``s`` the median point depth, and with ``-y`` as its up direction: the rendering is
    upright like the image, shows the whole view frustum (the real camera sits in front of
    the virtual one) and, through the regions occluded in the real view, the depth structure.
    Colours are rendered as given (no tone mapping).
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        point_size: float = 2.0,
        background: Sequence[float] = (0.1, 0.1, 0.1),
        fov_deg: float = 60.0,
        elevation: float = 0.5,
        setback: float = 0.5,
    ):
        """
        Args:
            width, height: output size in pixels.
            point_size: rendered point diameter in pixels.
            background: RGB in 0..1.
            fov_deg: vertical field of view of the virtual camera, degrees.
            elevation, setback: height above and distance behind the real camera of the
                virtual one, as fractions of the median point depth.
        """
        self.width, self.height = int(width), int(height)
        self.point_size = float(point_size)
        self.background = tuple(float(c) for c in background)
        self.fov_deg = float(fov_deg)
        self.elevation = float(elevation)
        self.setback = float(setback)
        self._renderer = None

    def _get_renderer(self):
        global _ACTIVE_RENDERER
        if self._renderer is None:
            import open3d as o3d  # lazy: only visualisation needs Open3D

            with _ACTIVE_LOCK:
                if _ACTIVE_RENDERER is not None and _ACTIVE_RENDERER is not self:
                    _ACTIVE_RENDERER.close()
                self._renderer = o3d.visualization.rendering.OffscreenRenderer(
                    self.width, self.height
                )
                self._renderer.scene.view.set_post_processing(False)  # exact colours
                _ACTIVE_RENDERER = self
        return self._renderer

    def close(self) -> None:
        """Release the Open3D renderer (a later :meth:`render` creates a new one)."""
        global _ACTIVE_RENDERER
        if self._renderer is not None:
            self._renderer.scene.clear_geometry()
            self._renderer = None
            gc.collect()  # destroy the Open3D renderer now, before another one is created
        if _ACTIVE_RENDERER is self:
            _ACTIVE_RENDERER = None

    def camera_pose(self, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Virtual camera for ``points`` ``(N, 3)`` metres (camera frame of the real camera).

        Returns:
            (center, eye, up): ``(3,)`` float64 each; look-at point (the centroid), camera
            position (metres) and up direction.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        up = np.array([0.0, -1.0, 0.0])  # image "up" is -y in the OpenCV camera frame
        if pts.shape[0] == 0:
            return np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, -1.0]), up
        center = pts.mean(axis=0)
        # typical distance of the scene, robust to a few far points
        scale = max(float(np.median(np.abs(pts[:, 2]))), 1e-3)
        eye = np.array([0.0, -self.elevation * scale, -self.setback * scale])
        return center, eye, up

    def render(self, points: ArrayLike, colors: Optional[ArrayLike] = None) -> np.ndarray:
        """Render a point cloud.

        Args:
            points: ``(N, 3)`` camera-frame coordinates in metres.
            colors: ``(N, 3)`` RGB in 0..1, or None (grey).

        Returns:
            ``(height, width, 3)`` uint8 RGB image.
        """
        import open3d as o3d  # lazy: only visualisation needs Open3D

        pts = np.asarray(_to_numpy(points), dtype=np.float64).reshape(-1, 3)
        if colors is None:
            colors = np.tile(np.asarray(IGNORED_POINT_COLOR), (pts.shape[0], 1))
        renderer = self._get_renderer()
        scene = renderer.scene
        scene.clear_geometry()
        scene.set_background([*self.background, 1.0])
        if pts.shape[0] > 0:
            material = o3d.visualization.rendering.MaterialRecord()
            material.shader = "defaultUnlit"
            material.point_size = self.point_size
            scene.add_geometry("points", _to_o3d_point_cloud(pts, colors), material)
        center, eye, up = self.camera_pose(pts)
        renderer.setup_camera(self.fov_deg, center, eye, up)
        image = np.asarray(renderer.render_to_image())
        scene.clear_geometry()
        return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


#: the PointCloudRenderer holding the process's Open3D renderer, if any
_ACTIVE_RENDERER: Optional[PointCloudRenderer] = None
_ACTIVE_LOCK = threading.RLock()
#: the renderer used by render_point_cloud
_SHARED_RENDERER: Optional[PointCloudRenderer] = None


def render_point_cloud(
    points: ArrayLike,
    colors: Optional[ArrayLike] = None,
    width: int = 640,
    height: int = 480,
    point_size: float = 2.0,
    background: Sequence[float] = (0.1, 0.1, 0.1),
) -> np.ndarray:
    """Render a point cloud headlessly with a process-wide :class:`PointCloudRenderer`, reused
    across calls of the same output size (a new size replaces it).

    Args:
        points: ``(N, 3)`` camera-frame coordinates in metres.
        colors: ``(N, 3)`` RGB in 0..1, or None (grey).
        width, height: output size in pixels.
        point_size: rendered point diameter in pixels.
        background: RGB in 0..1.

    Returns:
        ``(height, width, 3)`` uint8 RGB image.
    """
    global _SHARED_RENDERER
    with _ACTIVE_LOCK:
        shared = _SHARED_RENDERER
        if shared is None or (shared.width, shared.height) != (int(width), int(height)):
            if shared is not None:
                shared.close()
            shared = _SHARED_RENDERER = PointCloudRenderer(width, height)
        shared.point_size = float(point_size)
        shared.background = tuple(float(c) for c in background)
        return shared.render(points, colors)


# --------------------------------------------------------------------------------------------
# Predictions, point colours and titled panels (tools/demo.py, tools/visualize_pointcloud.py)
# --------------------------------------------------------------------------------------------
#: colour (RGB, 0..1) of the points where two labellings disagree
DISAGREEMENT_COLOR = (1.0, 0.0, 1.0)
#: colour (RGB, 0..1) of the points where they agree
AGREEMENT_COLOR = (0.45, 0.45, 0.45)

_TITLE_BAR_HEIGHT = 26  # pixels
_TITLE_BACKGROUND = (24, 24, 24)  # RGB


def label_point_colors(labels: ArrayLike, colors: ArrayLike, ignore_label: int = 255) -> np.ndarray:
    """Colour points by class.

    Args:
        labels: ``(N,)`` integer class ids.
        colors: ``(C, 3)`` class colours in 0..255 (``metadata.stuff_colors``).
        ignore_label: points with this label (or any label outside ``[0, C)``) are grey,
            :data:`IGNORED_POINT_COLOR`.

    Returns:
        ``(N, 3)`` float32 RGB in 0..1.
    """
    lab = _to_numpy(labels).astype(np.int64).reshape(-1)
    palette = np.asarray(_to_numpy(colors), dtype=np.float32).reshape(-1, 3) / 255.0
    out = np.empty((lab.shape[0], 3), dtype=np.float32)
    out[:] = IGNORED_POINT_COLOR
    known = (lab != ignore_label) & (lab >= 0) & (lab < len(palette))
    out[known] = palette[lab[known]]
    return out


def disagreement_point_colors(
    labels_a: ArrayLike,
    labels_b: ArrayLike,
    highlight: Sequence[float] = DISAGREEMENT_COLOR,
    other: Sequence[float] = AGREEMENT_COLOR,
) -> np.ndarray:
    """``(N, 3)`` float32 RGB (0..1): ``highlight`` where ``labels_a != labels_b`` (e.g. the
    2D and the 3D prediction of each point), ``other`` elsewhere."""
    a = _to_numpy(labels_a).astype(np.int64).reshape(-1)
    b = _to_numpy(labels_b).astype(np.int64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{a.shape[0]} labels against {b.shape[0]}")
    out = np.empty((a.shape[0], 3), dtype=np.float32)
    out[:] = other
    out[a != b] = highlight
    return out


def add_title(image_rgb: ArrayLike, title: str, bar_height: int = _TITLE_BAR_HEIGHT) -> np.ndarray:
    """Put ``title`` (drawn with ``cv2.putText``, shrunk to fit) in a dark strip above an
    image.

    Returns:
        ``(H + bar_height, W, 3)`` uint8 RGB.
    """
    image = _check_image(image_rgb)
    width = image.shape[1]
    bar = np.empty((bar_height, width, 3), dtype=np.uint8)
    bar[:] = _TITLE_BACKGROUND
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    scale = 0.55
    (tw, th), _ = cv2.getTextSize(title, font, scale, thickness)
    if tw > width - 8 and tw > 0:
        scale = max(scale * (width - 8) / tw, 0.25)
        (tw, th), _ = cv2.getTextSize(title, font, scale, thickness)
    x = max((width - tw) // 2, 2)
    y = (bar_height + th) // 2
    cv2.putText(bar, title, (x, y), font, scale, (240, 240, 240), thickness, cv2.LINE_AA)
    return np.concatenate([bar, np.ascontiguousarray(image, dtype=np.uint8)], axis=0)


def tile_panels(images: Sequence[ArrayLike], titles: Optional[Sequence[str]] = None) -> np.ndarray:
    """Place images side by side, left to right, each under its title (:func:`add_title`).

    Panels of different heights are padded at the bottom with the title background colour.

    Returns:
        ``(H', sum of the widths, 3)`` uint8 RGB.
    """
    if len(images) == 0:
        raise ValueError("tile_panels needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    panels = [
        add_title(im, titles[i]) if titles is not None else _check_image(im).astype(np.uint8)
        for i, im in enumerate(images)
    ]
    height = max(p.shape[0] for p in panels)
    padded = []
    for p in panels:
        if p.shape[0] < height:
            pad = np.empty((height - p.shape[0], p.shape[1], 3), dtype=np.uint8)
            pad[:] = _TITLE_BACKGROUND
            p = np.concatenate([p, pad], axis=0)
        padded.append(p)
    return np.concatenate(padded, axis=1)


def render_point_cloud_panels(
    clouds: Sequence[Tuple[ArrayLike, Optional[ArrayLike]]],
    titles: Sequence[str],
    renderer: Optional[PointCloudRenderer] = None,
    width: int = 480,
    height: int = 360,
) -> np.ndarray:
    """Render point clouds headlessly into titled panels, side by side.

    Args:
        clouds: one ``(points (N, 3) metres, colors (N, 3) in 0..1 or None)`` per panel.
            Panels of the same points are rendered from the same viewpoint.
        titles: one title per panel.
        renderer: the renderer to use (its size sets the panel size); default a
            :class:`PointCloudRenderer` of ``width x height``, closed afterwards.

    Returns:
        ``(height + title bar, len(clouds) * width, 3)`` uint8 RGB.
    """
    if len(clouds) != len(titles):
        raise ValueError(f"{len(clouds)} clouds but {len(titles)} titles")
    own = renderer is None
    renderer = renderer or PointCloudRenderer(width, height)
    try:
        images = [renderer.render(points, colors) for points, colors in clouds]
    finally:
        if own:
            renderer.close()
    return tile_panels(images, titles)


def display_available() -> bool:
    """Whether an on-screen window can be opened: ``DISPLAY`` is set and names an X server
    that accepts a connection (checked with Xlib's ``XOpenDisplay``).

    Merely testing ``DISPLAY`` is not enough: with an unreachable display, Open3D's
    ``Visualizer`` falls back to an invisible EGL context whose ``run()`` never returns.
    """
    if not os.environ.get("DISPLAY"):
        return False
    import ctypes
    import ctypes.util

    try:
        x11 = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    except OSError:
        return False
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    display = x11.XOpenDisplay(None)
    if not display:
        return False
    x11.XCloseDisplay(display)
    return True


def show_point_clouds(
    clouds: Sequence[Tuple[ArrayLike, Optional[ArrayLike]]],
    titles: Sequence[str],
    window_name: str = "point clouds",
    point_size: float = 2.0,
) -> bool:
    """Show point clouds in an interactive Open3D window, side by side along ``x`` (each
    cloud shifted right of the previous one by its width plus a gap); blocks until the window
    is closed.

    Returns:
        False, without showing anything, when there is no display or Open3D cannot create a
        window (then render headlessly instead); True once the window was shown and closed.
    """
    if not display_available():
        return False
    import open3d as o3d  # lazy: only visualisation needs Open3D

    vis = o3d.visualization.Visualizer()
    name = f"{window_name}: " + " | ".join(titles) if titles else window_name
    if not vis.create_window(window_name=name, width=1280, height=720):
        return False
    try:
        offset = 0.0
        for points, colors in clouds:
            pts = np.asarray(_to_numpy(points), dtype=np.float64).reshape(-1, 3)
            if pts.shape[0] == 0:
                continue
            span = float(np.ptp(pts[:, 0]))
            shifted = pts.copy()
            shifted[:, 0] += offset - pts[:, 0].min()
            vis.add_geometry(_to_o3d_point_cloud(shifted, colors))
            offset += span * 1.1 + 1e-3
        options = vis.get_render_option()
        if options is not None:
            options.point_size = float(point_size)
            options.background_color = np.asarray([0.1, 0.1, 0.1])
        control = vis.get_view_control()
        if control is not None:  # look along +z with image "up" (-y) up, as the camera does
            control.set_front([0.0, 0.0, -1.0])
            control.set_up([0.0, -1.0, 0.0])
        vis.run()
    finally:
        vis.destroy_window()
    return True


def _semantic_labels(outputs: dict) -> Optional[torch.Tensor]:
    sem = outputs.get("sem_seg")
    return None if sem is None else sem.argmax(dim=0).cpu()


def draw_prediction(
    image_rgb: ArrayLike,
    outputs: dict,
    metadata,
    confidence_threshold: float = 0.5,
    max_depth: Optional[float] = None,
) -> dict:
    """Pictures of one image's model outputs (see
    :class:`~panoptic_curriculum.modeling.meta_arch.PanopticCurriculumModel`), for the
    outputs present.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB, at the size of the outputs.
        outputs: the model's output dict for the image.
        metadata: the dataset's ``Metadata`` (class names and colours).
        confidence_threshold: instances scoring less are not drawn.
        max_depth: metres at the top of the depth colour scale (default: the image's largest).

    Returns:
        dict with, where the output exists, ``"semantic"``, ``"instances"``, ``"panoptic"``
        (``(H, W, 3)`` uint8 RGB) and ``"depth"`` (``(H + 34, W, 3)``, with the scale bar).
    """
    image = _check_image(image_rgb)
    pictures = {}
    labels = _semantic_labels(outputs)
    if labels is not None:
        pictures["semantic"] = draw_semantic(image, labels, metadata)
    if "instances" in outputs:
        inst = outputs["instances"].to("cpu")
        if inst.has("scores"):
            inst = inst[inst.scores >= confidence_threshold]
        pictures["instances"] = draw_instances(image, inst, metadata)
    if "panoptic_seg" in outputs:
        panoptic, segments = outputs["panoptic_seg"]
        pictures["panoptic"] = draw_panoptic(image, panoptic.cpu(), segments, metadata)
    if "depth" in outputs:
        pictures["depth"] = colorize_depth(outputs["depth"], max_depth)
    return pictures


def prediction_point_cloud(
    outputs: dict, K: ArrayLike, metadata, skip_classes: Sequence[int] = ()
) -> Tuple[np.ndarray, np.ndarray]:
    """Back-project an image's predicted depth with ``K`` (intrinsics of the outputs' size)
    and colour each point by its predicted semantic class (``metadata.stuff_colors``; grey
    without a semantic output).

    Args:
        skip_classes: predicted classes without a surface (sky): their pixels are dropped.

    Returns:
        (points, colors): ``(N, 3)`` float32 metres, ``(N, 3)`` float32 RGB in 0..1, one point
        per pixel with a valid (positive, finite) predicted depth and a class not in
        ``skip_classes``, in row-major pixel order.
    """
    if "depth" not in outputs:
        raise KeyError("the outputs have no 'depth' (MODEL.PANOPTIC_CURRICULUM.DEPTH_ON)")
    labels = _semantic_labels(outputs)
    colors = metadata.get("stuff_colors", None)
    if labels is not None and not colors:
        raise ValueError("metadata has no stuff_colors to colour the points by class")
    depth = outputs["depth"]
    if labels is not None and len(skip_classes):
        depth = torch.as_tensor(depth).clone()
        skip = torch.isin(torch.as_tensor(labels), torch.as_tensor(list(skip_classes)))
        depth[skip.to(depth.device)] = 0.0
    return class_colored_points(
        depth, K, labels, colors if labels is not None else np.zeros((0, 3))
    )


def add_picture_arguments(parser) -> None:
    """The drawing options shared by the tools: ``--max-depth`` (metres at the top of the
    depth colour scale) and ``--render-size WIDTH HEIGHT`` (point-cloud renderings)."""
    parser.add_argument(
        "--max-depth",
        type=float,
        default=None,
        help="metres at the top of the depth colour scale (default: each image's maximum)",
    )
    parser.add_argument(
        "--render-size",
        type=int,
        nargs=2,
        default=(640, 480),
        metavar=("WIDTH", "HEIGHT"),
        help="size of the point-cloud renderings in pixels",
    )
