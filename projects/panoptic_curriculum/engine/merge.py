"""Combining the stage checkpoints into one multi-task checkpoint (claim 6: "combining
parameters from the encoder network, the semantic segmentation decoder network, and the
instance segmentation decoder network")."""

import logging
import os
from typing import Dict

import torch

from ..utils.atomic_io import atomic_torch_save
from ..utils.safe_load import load_torch_weights

__all__ = [
    "SEMANTIC_STAGE_PARTS",
    "INSTANCE_STAGE_PARTS",
    "load_model_state",
    "merge_stage_checkpoints",
]

logger = logging.getLogger(__name__)

#: top-level modules taken from the semantic stage (encoder, semantic decoder, depth head,
#: point branch) and from the instance stage (Mask R-CNN decoder and its feature adapter)
SEMANTIC_STAGE_PARTS = ("backbone", "sem_seg_head", "depth_head", "point_head")
INSTANCE_STAGE_PARTS = ("instance_adapter", "proposal_generator", "roi_heads")
#: learned loss weights (``MODEL.PANOPTIC_CURRICULUM.LOSS_WEIGHTING "uncertainty"``): each
#: stage owns the log-variances of the tasks it trains (``loss_weighting.log_vars.<task>``),
#: so the merged model takes each from the stage that has it, the semantic stage first
LOSS_WEIGHTING_PART = "loss_weighting"


def load_model_state(path: str) -> Dict[str, torch.Tensor]:
    """The ``"model"`` state dict of a detectron2 checkpoint (or a bare state dict), read with
    ``torch.load(weights_only=True)``: a file holding anything else raises
    :class:`~panoptic_curriculum.utils.safe_load.UntrustedContentError` naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = load_torch_weights(path)
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a model state dict")
    return state


def _part(key: str) -> str:
    return key.split(".", 1)[0]


def merge_stage_checkpoints(semantic_path: str, instance_path: str, output_path: str) -> Dict:
    """Write ``{"model": merged}`` to ``output_path`` (atomically) and return the merged
    state dict.

    The encoder comes from the semantic stage; the instance stage trained on the frozen
    encoder, so its copy must be identical — a difference (a run that did not freeze it)
    raises ``ValueError`` rather than silently mixing two encoders.
    """
    semantic, instance = load_model_state(semantic_path), load_model_state(instance_path)
    merged = {k: v for k, v in semantic.items() if _part(k) in SEMANTIC_STAGE_PARTS}
    if not any(_part(k) == "backbone" for k in merged):
        raise ValueError(f"{semantic_path} has no encoder ('backbone.*') parameters")
    decoder = {k: v for k, v in instance.items() if _part(k) in INSTANCE_STAGE_PARTS}
    if not decoder:
        raise ValueError(f"{instance_path} has no instance decoder (proposal_generator/roi_heads)")
    merged.update(decoder)
    for state in (semantic, instance):
        for k, v in state.items():
            if _part(k) == LOSS_WEIGHTING_PART and k not in merged:
                merged[k] = v
    differing = [
        k
        for k, v in instance.items()
        if _part(k) == "backbone" and (k not in semantic or not torch.equal(v, semantic[k]))
    ]
    if differing:
        raise ValueError(
            f"the encoder in {instance_path} differs from the one in {semantic_path} "
            f"({len(differing)} tensors, e.g. {differing[:3]}): the instance stage must train "
            "on the frozen encoder"
        )
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    atomic_torch_save(
        {"model": merged, "merged_from": {"semantic": semantic_path, "instance": instance_path}},
        output_path,
    )
    counts = {
        p: sum(1 for k in merged if _part(k) == p)
        for p in SEMANTIC_STAGE_PARTS + INSTANCE_STAGE_PARTS + (LOSS_WEIGHTING_PART,)
    }
    logger.info("Merged checkpoint written to %s (tensors per part: %s)", output_path, counts)
    return merged
