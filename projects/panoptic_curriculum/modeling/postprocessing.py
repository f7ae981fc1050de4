"""Inference-time post-processing of the multi-task outputs: resizing to the original image,
panoptic fusion and 3D summaries. Shared by the model's ``inference`` and by the exported
network's post-processing (:mod:`panoptic_curriculum.export`)."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances

from ..geometry import backproject_pixels, check_intrinsics, resize_intrinsics

__all__ = [
    "channel_argmax",
    "crop_and_resize",
    "fuse_panoptic",
    "instance_depth_and_centroid",
    "postprocess_image",
]


def channel_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=-3)`` for finite scores, by a running maximum over the channel
    planes: contiguous passes, several times faster on the CPU than torch's reduction over
    a strided dimension. Ties go to the first channel, as with ``argmax``.

    Args:
        scores: ``[..., C, H, W]`` finite scores.

    Returns:
        ``[..., H, W]`` int64 channel index.
    """
    best = scores.select(-3, 0)
    labels = torch.zeros(best.shape, dtype=torch.long, device=scores.device)
    for c in range(1, scores.shape[-3]):
        plane = scores.select(-3, c)
        labels.masked_fill_(plane > best, c)
        best = torch.maximum(best, plane)
    return labels


def crop_and_resize(x: torch.Tensor, image_size, height: int, width: int) -> torch.Tensor:
    """Cut the ``image_size`` ``(h, w)`` image out of a padded ``[..., H_pad, W_pad]`` map and
    resize it bilinearly to ``height x width``, as detectron2's ``sem_seg_postprocess``;
    without the resize (an identity) when the sizes already agree.

    Returns:
        ``[..., height, width]``, same dtype.
    """
    h, w = int(image_size[0]), int(image_size[1])
    x = x[..., :h, :w]
    if (h, w) == (int(height), int(width)):
        return x.contiguous()
    lead = x.shape[:-2]
    x = F.interpolate(
        x.reshape(1, -1, h, w), size=(int(height), int(width)), mode="bilinear", align_corners=False
    )
    return x.reshape(*lead, int(height), int(width))


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
        masks = instances.pred_masks
        for i in torch.argsort(-scores).tolist():
            if scores[i] < score_threshold:
                break
            mask = masks[i].to(device=device, dtype=torch.bool)
            area = int(mask.sum())
            if area == 0:
                continue
            taken = mask & (panoptic > 0)
            overlap = int(taken.sum())
            if overlap > overlap_threshold * area:
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
    # free-pixel count of each semantic class; the class past the last counts taken pixels
    num_labels = int(sem_labels.max()) + 1 if sem_labels.numel() else 0
    counts = torch.bincount(
        torch.where(free, sem_labels, num_labels).flatten(), minlength=num_labels + 1
    )[:num_labels]
    for label in torch.nonzero(counts).flatten().tolist():
        count = int(counts[label])
        if label in thing_sem or count < stuff_area_limit:
            continue
        seg_id = len(segments) + 1
        panoptic[free & (sem_labels == label)] = seg_id
        segments.append({"id": seg_id, "isthing": False, "category_id": label, "area": count})
    return panoptic, segments


def instance_depth_and_centroid(masks: torch.Tensor, depth: torch.Tensor, K: torch.Tensor):
    """Per-instance depth and 3D centroid from a depth map.

    Works on the masks' pixels only (one sort of their ``P`` pixels), not on ``N`` full
    images.

    Args:
        masks: ``[N, H, W]`` bool instance masks.
        depth: ``[H, W]`` depth, metres (0 = invalid).
        K: ``[3, 3]`` intrinsics of this ``H x W`` image, pixels.

    Returns:
        (``[N]`` median depth over each mask's valid pixels, metres (the lower of the two
        middle values for an even count, as ``torch.median``; ordered in float32, so exact
        for float32, float16 and bfloat16 depth); ``[N, 3]`` mean 3D point of those pixels
        in camera coordinates, metres.) NaN for a mask without valid depth.
    """
    n = masks.shape[0]
    if n == 0:
        return depth.new_zeros(0), depth.new_zeros(0, 3)
    # instance-major order: the pixels of instance 0, then of instance 1, ...
    inst, ys, xs = torch.nonzero(masks & (depth > 0), as_tuple=True)
    count = torch.bincount(inst, minlength=n)
    median = depth.new_full((n,), float("nan"))
    centroid = depth.new_full((n, 3), float("nan"))
    if inst.numel() == 0:
        return median, centroid
    d = depth[ys, xs]
    # one integer sort orders the pixels by instance, then by depth: a positive float32
    # d = m * 2^e (m in [0.5, 1)) orders like the integer (e, m * 2^24), which is exact
    mantissa, exponent = torch.frexp(d.float())
    key = (inst << 40) | ((exponent.to(torch.int64) + 256) << 24)
    key = key | (mantissa * 2.0**24).to(torch.int64)
    by_depth = torch.sort(key).indices
    has = count > 0
    start = torch.cumsum(count, 0) - count
    median[has] = d[by_depth[(start + (count - 1) // 2)[has]]]
    uv = torch.stack([xs, ys], dim=-1)
    points = backproject_pixels(d[None], uv[None], K[None].to(depth.dtype))[0]  # [P, 3]
    sums = depth.new_zeros(n, 3).index_add_(0, inst, points)
    centroid[has] = sums[has] / count[has, None].to(depth.dtype)
    return median, centroid


def postprocess_image(
    *,
    image_size: Tuple[int, int],
    height: int,
    width: int,
    sem_logits: Optional[torch.Tensor] = None,
    depth: Optional[torch.Tensor] = None,
    instances: Optional[Instances] = None,
    intrinsics: Optional[torch.Tensor] = None,
    thing_to_sem: Sequence[int] = (),
    overlap_threshold: float = 0.5,
    stuff_area_limit: int = 64,
    score_threshold: float = 0.5,
    name: str = "image",
) -> Dict:
    """One image's network outputs -> the model's result dict at the original size.

    The maps may be padded (only their top-left ``image_size`` part is read) or already cropped
    to ``image_size``.

    Args:
        image_size: ``(h, w)`` of the network input (after the test-time resize, before
            padding), pixels.
        height, width: size of the results (the original image), pixels.
        sem_logits: ``[C, >=h, >=w]`` semantic logits, or None.
        depth: ``[>=h, >=w]`` depth, metres, or None.
        instances: Mask R-CNN output in network-input coordinates (``pred_boxes``,
            ``scores``, ``pred_classes``, ``pred_masks`` ``[N, 1, M, M]`` probabilities), or
            None.
        intrinsics: ``[3, 3]`` K of the network input, pixels, or None (then the instances
            get no ``pred_depth``/``pred_centroid``).
        thing_to_sem, overlap_threshold, stuff_area_limit, score_threshold: panoptic fusion
            (see :func:`fuse_panoptic`).
        name: names the image in errors.

    Returns:
        dict with, as available: ``"sem_seg"`` ``[C, height, width]`` logits; ``"depth"``
        ``[height, width]`` metres (bilinear); ``"instances"`` (``detector_postprocess``:
        boxes scaled, masks pasted as ``[N, height, width]`` bool; with depth and K also
        ``pred_depth`` ``[N]`` and ``pred_centroid`` ``[N, 3]`` metres); ``"panoptic_seg"``
        (needs semantic logits and instances).
    """
    h, w = int(image_size[0]), int(image_size[1])
    r: Dict = {}
    if sem_logits is not None:
        r["sem_seg"] = crop_and_resize(sem_logits, (h, w), height, width)
    depth_out = K_out = None
    if depth is not None:
        depth_out = crop_and_resize(depth, (h, w), height, width)
        r["depth"] = depth_out
        if intrinsics is not None:
            K_net = intrinsics.to(depth.device, torch.float32)
            check_intrinsics(K_net, f"intrinsics of {name}")
            K_out = resize_intrinsics(K_net, width / w, height / h)
    if instances is not None:
        inst = detector_postprocess(instances, height, width)
        if depth_out is not None and K_out is not None:
            inst.pred_depth, inst.pred_centroid = instance_depth_and_centroid(
                inst.pred_masks.bool(), depth_out, K_out
            )
        r["instances"] = inst
        if sem_logits is not None:
            r["panoptic_seg"] = fuse_panoptic(
                inst,
                channel_argmax(r["sem_seg"]),
                thing_to_sem,
                overlap_threshold,
                stuff_area_limit,
                score_threshold,
            )
    return r
