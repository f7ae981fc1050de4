"""2D pictures: depth colour maps with a scale bar in metres, segmentation overlays drawn
with detectron2's :class:`~detectron2.utils.visualizer.Visualizer`, titled panels.

Images are ``(H, W, 3)`` uint8 **RGB** arrays (convert detectron2's BGR inputs first); depth
is ``(H, W)`` float metres (the ``z`` coordinate), 0 marks an invalid pixel.
"""

import math
from typing import Optional, Sequence, Union

import cv2
import matplotlib
import numpy as np
import torch

from detectron2.data import detection_utils as d2_utils
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.visualizer import Visualizer

from ._common import ArrayLike, check_image, to_numpy

__all__ = [
    "colorize_depth",
    "draw_semantic",
    "draw_instances",
    "draw_panoptic",
    "add_title",
    "tile_panels",
]

_SCALE_BAR_HEIGHT = 34  # pixels: 12 gradient + ticks + labels
_SCALE_BAR_BACKGROUND = (32, 32, 32)  # RGB
_TITLE_BAR_HEIGHT = 26  # pixels
_TITLE_BACKGROUND = (24, 24, 24)  # RGB


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
    d = to_numpy(depth).astype(np.float64)
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
    image = check_image(image_rgb)
    seg = to_numpy(sem_seg).astype(np.int64)
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


def _masksto_numpy(masks, height: int, width: int) -> np.ndarray:
    """``(N, H, W)`` bool array from BitMasks, PolygonMasks or a mask tensor/array."""
    if isinstance(masks, BitMasks):
        return to_numpy(masks.tensor).astype(bool)
    if isinstance(masks, PolygonMasks):
        return to_numpy(BitMasks.from_polygon_masks(masks, height, width).tensor).astype(bool)
    return to_numpy(masks).astype(bool)


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
    image = check_image(image_rgb)
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
        boxes = to_numpy(boxes).astype(np.float64)
    masks = None
    if inst.has(f"{prefix}_masks"):
        masks = list(_masksto_numpy(inst.get(f"{prefix}_masks"), height, width))
    scores = to_numpy(inst.scores).tolist() if inst.has("scores") else None

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
    image = check_image(image_rgb)
    seg = torch.as_tensor(to_numpy(panoptic_seg).astype(np.int64))
    if tuple(seg.shape) != image.shape[:2]:
        raise ValueError(
            f"panoptic_seg {tuple(seg.shape)} does not match the image " f"{image.shape[:2]}"
        )
    # detectron2 writes "area" into the dicts: give it copies.
    infos = None if segments_info is None else [dict(s) for s in segments_info]
    vis = Visualizer(image, metadata, scale=scale)
    return vis.draw_panoptic_seg(seg, infos, alpha=alpha).get_image()


# --------------------------------------------------------------------------------------------
# Titled panels
# --------------------------------------------------------------------------------------------
def add_title(image_rgb: ArrayLike, title: str, bar_height: int = _TITLE_BAR_HEIGHT) -> np.ndarray:
    """Put ``title`` (drawn with ``cv2.putText``, shrunk to fit) in a dark strip above an
    image.

    Returns:
        ``(H + bar_height, W, 3)`` uint8 RGB.
    """
    image = check_image(image_rgb)
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
        add_title(im, titles[i]) if titles is not None else check_image(im).astype(np.uint8)
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


