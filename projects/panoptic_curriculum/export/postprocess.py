"""Post-processing of the exported network's outputs into the model's result dict."""

from typing import Dict, Optional, Sequence

import torch

from ..geometry import backproject, pixel_grid, resize_intrinsics
from ..modeling.postprocessing import postprocess_image
from .api import exported_instances

__all__ = ["postprocess_exported", "lift_points"]


def postprocess_exported(
    outputs: Dict[str, torch.Tensor],
    info: Dict,
    height: Optional[int] = None,
    width: Optional[int] = None,
    intrinsics: Optional[torch.Tensor] = None,
    with_points: bool = False,
) -> Dict:
    """Turn one image's exported outputs into what :class:`PanopticCurriculumModel` returns.

    The same code as the model's inference (:func:`~panoptic_curriculum.modeling.
    postprocessing.postprocess_image`): semantic logits and depth resized to ``height x
    width``, boxes scaled and masks pasted (``detector_postprocess``), per-instance median
    depth and 3D centroid (with ``intrinsics``), panoptic fusion with the model's thresholds
    (from ``info["postprocess"]``).

    Args:
        outputs: name -> tensor, as :class:`~panoptic_curriculum.export.ExportedModel` returns.
        info: the export's ``export_info.json``.
        height, width: size of the results (the original image); default the input's.
        intrinsics: ``[3, 3]`` K of the *network input* (after the test-time resize), pixels;
            without it the instances get no ``pred_depth``/``pred_centroid`` and no points
            are lifted.
        with_points: also lift the depth to ``"point_cloud"`` (:func:`lift_points`).

    Returns:
        dict with, as the export has them: ``"sem_seg"`` ``[C, height, width]`` logits,
        ``"depth"`` ``[height, width]`` metres, ``"instances"`` (``pred_boxes``, ``scores``,
        ``pred_classes``, ``pred_masks`` ``[N, height, width]`` bool, ``pred_depth`` ``[N]``
        and ``pred_centroid`` ``[N, 3]`` metres), ``"panoptic_seg"`` (segment ids, segments
        info), and ``"point_cloud"``.
    """
    instances = exported_instances(outputs)
    if "sem_seg" in outputs:
        image_size = tuple(outputs["sem_seg"].shape[-2:])
    elif "depth" in outputs:
        image_size = tuple(outputs["depth"].shape[-2:])
    elif instances is not None:
        image_size = instances.image_size
    else:
        raise ValueError(f"the outputs hold no known entry: {sorted(outputs)}")
    height = image_size[0] if height is None else int(height)
    width = image_size[1] if width is None else int(width)
    post = info["postprocess"]
    r = postprocess_image(
        image_size=image_size,
        height=height,
        width=width,
        sem_logits=outputs.get("sem_seg"),
        depth=outputs.get("depth"),
        instances=instances,
        intrinsics=intrinsics,
        thing_to_sem=post["thing_to_sem"],
        overlap_threshold=post["overlap_threshold"],
        stuff_area_limit=post["stuff_area_limit"],
        score_threshold=post["score_threshold"],
    )
    if with_points:
        if "depth" not in r or intrinsics is None:
            raise ValueError("lifting points needs the depth output and the intrinsics")
        K = resize_intrinsics(
            torch.as_tensor(intrinsics, dtype=torch.float32),
            width / image_size[1],
            height / image_size[0],
        )
        labels = r["sem_seg"].argmax(dim=0) if "sem_seg" in r else None
        r["point_cloud"] = lift_points(r["depth"], K, labels, post["no_surface_classes"])
    return r


def lift_points(
    depth: torch.Tensor,
    K: torch.Tensor,
    sem_labels: Optional[torch.Tensor] = None,
    skip_classes: Sequence[int] = (),
) -> Dict[str, torch.Tensor]:
    """Back-project every pixel with a valid depth, ``P = d * K^-1 [u, v, 1]^T``.

    Args:
        depth: ``[H, W]`` metres (0 or non-finite = no point).
        K: ``[3, 3]`` intrinsics of this ``H x W`` image, pixels.
        sem_labels: ``[H, W]`` predicted classes, or None.
        skip_classes: classes without a surface (sky): their pixels give no point.

    Returns:
        dict: ``"points"`` ``[N, 3]`` camera coordinates, metres; ``"pixels"`` ``[N, 2]``
        ``(u, v)``; with ``sem_labels`` also ``"labels_2d"`` ``[N]``; row-major pixel order.
    """
    h, w = depth.shape
    valid = torch.isfinite(depth) & (depth > 0)
    if sem_labels is not None and len(skip_classes):
        skip = torch.as_tensor(list(skip_classes), device=sem_labels.device)
        valid &= ~torch.isin(sem_labels, skip)
    points = backproject(depth[None], K[None].to(depth.device, depth.dtype))[0]
    u, v = pixel_grid(h, w, device=depth.device, dtype=depth.dtype)
    out = {"points": points[valid], "pixels": torch.stack([u[valid], v[valid]], dim=-1)}
    if sem_labels is not None:
        out["labels_2d"] = sem_labels[valid]
    return out
