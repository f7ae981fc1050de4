"""Pictures and point clouds of a model's predictions (see
:class:`~panoptic_curriculum.modeling.meta_arch.PanopticCurriculumModel`): the pictures of
``tools/demo.py`` and the point-branch views of ``tools/visualize_pointcloud.py``.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ._common import ArrayLike, check_image, to_numpy
from .colors import disagreement_point_colors, label_point_colors
from .draw2d import colorize_depth, draw_instances, draw_panoptic, draw_semantic
from .pointcloud import class_colored_points, labels_at_pixels
from .render3d import Cloud

__all__ = [
    "draw_prediction",
    "prediction_point_cloud",
    "prediction_views",
    "point_branch_views",
    "EMPTY_CLOUD_REASON",
]

#: why an image's predicted point cloud can be empty
EMPTY_CLOUD_REASON = (
    "no pixel has a valid predicted depth and a class outside "
    "MODEL.POINT_HEAD.NO_SURFACE_CLASSES"
)


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
    image = check_image(image_rgb)
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



def prediction_views(
    image_rgb: ArrayLike,
    outputs: dict,
    K: ArrayLike,
    metadata,
    confidence_threshold: float = 0.5,
    max_depth: Optional[float] = None,
    skip_classes: Sequence[int] = (),
) -> Tuple[Dict[str, np.ndarray], Optional[Cloud], dict]:
    """Everything ``tools/demo.py`` shows of one image's outputs.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB, at the size of the outputs.
        outputs: the model's output dict for the image.
        K: ``(3, 3)`` intrinsics (pixels) of the image at the outputs' size.
        metadata: the dataset's ``Metadata`` (class names and colours).
        confidence_threshold: instances scoring less are neither drawn nor counted.
        max_depth: metres at the top of the depth colour scale (default: the image's largest).
        skip_classes: predicted classes without a surface: their pixels make no points.

    Returns:
        (pictures, cloud, stats): the pictures of :func:`draw_prediction`; the
        :func:`prediction_point_cloud` ``(points, colors)``, or None without a depth output
        or when no pixel lifts to a point; and a JSON-ready dict with, for the outputs
        present, ``num_instances`` (scoring at least ``confidence_threshold``),
        ``num_segments``, ``num_points``, ``depth_range_m`` (``[min, max]`` of the valid
        predicted depth, or None) and, when the cloud is empty, ``pointcloud`` saying why.
    """
    pictures = draw_prediction(image_rgb, outputs, metadata, confidence_threshold, max_depth)
    stats, cloud = {}, None
    if "instances" in outputs:
        scores = outputs["instances"].scores
        stats["num_instances"] = int((scores >= confidence_threshold).sum())
    if "panoptic_seg" in outputs:
        stats["num_segments"] = len(outputs["panoptic_seg"][1])
    if "depth" in outputs:
        depth = to_numpy(outputs["depth"])
        points, colors = prediction_point_cloud(outputs, K, metadata, skip_classes)
        if points.shape[0] == 0:
            stats["pointcloud"] = f"empty: {EMPTY_CLOUD_REASON}"
        else:
            cloud = (points, colors)
        valid = np.isfinite(depth) & (depth > 0)
        stats["num_points"] = int(points.shape[0])
        stats["depth_range_m"] = (
            [float(depth[valid].min()), float(depth[valid].max())] if valid.any() else None
        )
    return pictures, cloud, stats


def point_branch_views(
    point_cloud: dict,
    stuff_colors: ArrayLike,
    ignore_label: int,
    gt_sem_seg: Optional[ArrayLike] = None,
) -> Tuple[List[Cloud], List[str], str]:
    """The point branch's points in four colourings, as ``tools/visualize_pointcloud.py``
    shows them: by the ground-truth class of each point's pixel, by the 2D (semantic head)
    prediction, by the 3D (point head) prediction, and :data:`~.colors.DISAGREEMENT_COLOR`
    where the 2D and 3D labels differ.

    Args:
        point_cloud: the model's ``"point_cloud"`` output: ``points`` ``(N, 3)`` metres,
            ``pixels`` ``(N, 2)`` ``(u, v)`` pixel coordinates in the original image,
            ``labels_2d`` and ``labels_3d`` ``(N,)``.
        stuff_colors: ``(C, 3)`` class colours in 0..255.
        ignore_label: label of unlabelled pixels (grey points).
        gt_sem_seg: ``(H, W)`` ground-truth labels of the original image, or None (the
            ground-truth panel is grey).

    Returns:
        (clouds, titles, summary): four ``(points float32, colors)`` with their titles, and a
        one-line summary (agreement of the 2D and 3D labels, and with the ground truth their
        accuracies on the labelled points).
    """
    points = to_numpy(point_cloud["points"]).astype(np.float32)
    labels_2d = to_numpy(point_cloud["labels_2d"])
    labels_3d = to_numpy(point_cloud["labels_3d"])
    num = points.shape[0]
    gt = None
    if gt_sem_seg is not None:
        gt = labels_at_pixels(to_numpy(gt_sem_seg).astype(np.int64), point_cloud["pixels"])

    disagree = int((labels_2d != labels_3d).sum())
    titles = [
        "ground truth" if gt is not None else "ground truth (none)",
        "2D prediction",
        "3D prediction",
        f"2D != 3D: {disagree}/{num} points",
    ]
    gt_labels = gt if gt is not None else np.full(num, ignore_label)
    clouds = [
        (points, label_point_colors(gt_labels, stuff_colors, ignore_label)),
        (points, label_point_colors(labels_2d, stuff_colors, ignore_label)),
        (points, label_point_colors(labels_3d, stuff_colors, ignore_label)),
        (points, disagreement_point_colors(labels_2d, labels_3d)),
    ]
    summary = "%d points; 2D and 3D labels agree on %.1f%%" % (
        num,
        100.0 * (num - disagree) / max(num, 1),
    )
    if gt is not None:
        labelled = gt != ignore_label
        n = max(int(labelled.sum()), 1)
        summary += "; accuracy on labelled points: 2D %.1f%%, 3D %.1f%%" % (
            100.0 * float((labels_2d == gt)[labelled].sum()) / n,
            100.0 * float((labels_3d == gt)[labelled].sum()) / n,
        )
    return clouds, titles, summary
