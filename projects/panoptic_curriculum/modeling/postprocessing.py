"""Inference-time fusion and 3D summaries of the multi-task outputs."""

from typing import Dict, List, Sequence, Tuple

import torch

from detectron2.structures import Instances

from ..geometry import backproject

__all__ = ["fuse_panoptic", "instance_depth_and_centroid"]


def fuse_panoptic(
    instances: Instances,
    sem_labels: torch.Tensor,
    thing_to_sem: Sequence[int],
    overlap_threshold: float,
    stuff_area_limit: int,
    score_threshold: float,
) -> Tuple[torch.Tensor, List[Dict]]:
    """Panoptic segmentation from instance and semantic predictions, the Panoptic FPN way.

    Instances are pasted in decreasing score order (score >= ``score_threshold``); one that is
    covered by earlier ones for more than ``overlap_threshold`` of its area is dropped,
    otherwise it keeps its still-free pixels. The remaining free pixels take their semantic
    class when that class is stuff (not in ``thing_to_sem``) and its free area is at least
    ``stuff_area_limit`` pixels.

    Args:
        instances: ``detector_postprocess`` output with ``pred_masks`` ``[N, H, W]``,
            ``scores``, ``pred_classes`` (thing ids).
        sem_labels: ``[H, W]`` int semantic class ids.
        thing_to_sem: semantic class id of each thing class.

    Returns:
        (panoptic_seg ``[H, W]`` int32 segment ids, 0 = void; segments_info: dicts with
        ``id``, ``isthing``, ``category_id`` (thing id for things, semantic id for stuff),
        ``score``/``instance_id`` for things and ``area`` for stuff.)
    """
    device = sem_labels.device
    panoptic = torch.zeros(sem_labels.shape, dtype=torch.int32, device=device)
    segments: List[Dict] = []
    if len(instances) > 0:
        scores = instances.scores.detach().cpu()
        classes = instances.pred_classes.cpu()
        masks = instances.pred_masks.to(device=device, dtype=torch.bool)
        areas = masks.flatten(1).sum(1).cpu()
        for i in torch.argsort(-scores).tolist():
            if scores[i] < score_threshold:
                break
            if areas[i] == 0:
                continue
            mask = masks[i]
            taken = mask & (panoptic > 0)
            overlap = int(taken.sum())
            if overlap > overlap_threshold * int(areas[i]):
                continue
            if overlap:
                mask = mask & ~taken
            seg_id = len(segments) + 1
            panoptic[mask] = seg_id
            segments.append(
                {
                    "id": seg_id,
                    "isthing": True,
                    "score": float(scores[i]),
                    "category_id": int(classes[i]),
                    "instance_id": i,
                }
            )
    thing_sem = set(int(c) for c in thing_to_sem)
    free = panoptic == 0
    labels, counts = torch.unique(sem_labels[free], return_counts=True)
    for label, count in zip(labels.tolist(), counts.tolist()):
        if label in thing_sem or count < stuff_area_limit:
            continue
        seg_id = len(segments) + 1
        panoptic[free & (sem_labels == label)] = seg_id
        segments.append({"id": seg_id, "isthing": False, "category_id": label, "area": count})
    return panoptic, segments


def instance_depth_and_centroid(masks: torch.Tensor, depth: torch.Tensor, K: torch.Tensor):
    """Per-instance depth and 3D centroid from a depth map.

    Args:
        masks: ``[N, H, W]`` bool instance masks.
        depth: ``[H, W]`` depth, metres (0 = invalid).
        K: ``[3, 3]`` intrinsics of this ``H x W`` image, pixels.

    Returns:
        (``[N]`` median depth over each mask's valid pixels, metres; ``[N, 3]`` mean 3D
        point of those pixels in camera coordinates, metres.) NaN for a mask without valid
        depth.
    """
    n = masks.shape[0]
    if n == 0:
        return depth.new_zeros(0), depth.new_zeros(0, 3)
    inside = masks.flatten(1) & (depth.flatten() > 0)[None]  # [N, HW]
    vals = torch.where(
        inside,
        depth.flatten()[None].expand(n, -1),
        torch.full_like(inside, float("nan"), dtype=depth.dtype),
    )
    median = torch.nanmedian(vals, dim=1).values
    points = backproject(depth[None], K[None].to(depth.dtype))[0].reshape(-1, 3)  # [HW, 3]
    weights = inside.to(depth.dtype)
    count = weights.sum(1, keepdim=True)
    centroid = (weights @ points) / count
    return median, centroid
