"""Pictures and point clouds of a model's predictions (see
:class:`~panoptic_curriculum.modeling.meta_arch.PanopticCurriculumModel`): the pictures of
``tools/demo.py`` and the point-branch views of ``tools/visualize_pointcloud.py``.
"""

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ._common import ArrayLike, check_image
from .draw2d import colorize_depth, draw_instances, draw_panoptic, draw_semantic
from .pointcloud import class_colored_points

__all__ = ["draw_prediction", "prediction_point_cloud"]


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

