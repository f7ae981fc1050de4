"""Weights of the loss terms: fixed (from the config) or learned by homoscedastic-uncertainty
weighting (Kendall, Gal and Cipolla, CVPR 2018).

Each task ``t`` of the model owns one learned log-variance ``s_t`` and contributes

    exp(-s_t) * L_t + s_t

to the total, where ``L_t`` is the task's unweighted loss. ``s_t`` starts at ``-log w_t``
(``w_t`` the task's fixed weight from the config), so the first step weighs every loss
exactly as the fixed weights do; the regulariser ``s_t`` keeps a weight from vanishing (the
optimum for a given ``L_t`` is ``s_t = log L_t``, i.e. a weight of ``1 / L_t``). Both
factor-of-two conventions of the paper (regression against classification) are absorbed
into ``s_t``. The total may be negative once some ``s_t < 0``.

The tasks are those of the model's loss keys:

* ``sem_seg``: ``loss_sem_seg`` (L_2D-seg);
* ``instance``: the five Mask R-CNN losses together (one weight);
* ``depth``: ``loss_depth``;
* ``sem_seg_3d``: ``loss_sem_seg_3d`` (L_3D-seg);
* ``consistency``: ``loss_consistency`` (L_consist).

A task whose fixed weight is 0 is switched off, not learned (its loss stays 0).
"""

import math
from typing import Dict, Mapping

import torch
from torch import nn

__all__ = ["LOSS_WEIGHTING_MODES", "TASK_OF_LOSS", "UncertaintyLossWeighting", "task_of_loss"]

#: values of ``MODEL.PANOPTIC_CURRICULUM.LOSS_WEIGHTING``
LOSS_WEIGHTING_MODES = ("fixed", "uncertainty")

#: loss key -> task whose weight it takes
TASK_OF_LOSS = {
    "loss_sem_seg": "sem_seg",
    "loss_rpn_cls": "instance",
    "loss_rpn_loc": "instance",
    "loss_cls": "instance",
    "loss_box_reg": "instance",
    "loss_mask": "instance",
    "loss_depth": "depth",
    "loss_sem_seg_3d": "sem_seg_3d",
    "loss_consistency": "consistency",
}

#: the loss key holding the sum of the regularisers ``s_t``
REGULARIZER_KEY = "loss_uncertainty_reg"


def task_of_loss(key: str) -> str:
    """Task of a loss key; a key no task owns raises ``KeyError`` naming the known ones."""
    if key not in TASK_OF_LOSS:
        raise KeyError(
            f"loss {key!r} belongs to no task of the learned loss weighting; known losses: "
            f"{sorted(TASK_OF_LOSS)}"
        )
    return TASK_OF_LOSS[key]


class UncertaintyLossWeighting(nn.Module):
    """One learned log-variance per task (see the module docstring).

    Attributes:
        log_vars: ``ParameterDict`` task -> scalar ``s_t`` (a log-variance, unitless).
        fixed_weights: task -> the fixed weight ``w_t`` the task started from.
    """

    def __init__(self, fixed_weights: Mapping[str, float]):
        """
        Args:
            fixed_weights: task -> fixed weight ``w_t >= 0`` of the tasks the model has;
                tasks with ``w_t == 0`` get no parameter and their losses are passed on as
                they are (0).
        """
        super().__init__()
        bad = {t: w for t, w in fixed_weights.items() if not (w >= 0 and math.isfinite(w))}
        if bad:
            raise ValueError(f"loss weights must be finite and >= 0, got {bad}")
        self.fixed_weights = dict(fixed_weights)
        self.log_vars = nn.ParameterDict(
            {
                t: nn.Parameter(torch.tensor(-math.log(w), dtype=torch.float32))
                for t, w in fixed_weights.items()
                if w > 0
            }
        )

    def weights(self) -> Dict[str, torch.Tensor]:
        """task -> current weight ``exp(-s_t)`` (detached scalars)."""
        return {t: torch.exp(-s.detach()) for t, s in self.log_vars.items()}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Re-weight ``losses``.

        Args:
            losses: loss key -> scalar already multiplied by its task's fixed weight ``w_t``
                (what the model computes with fixed weights).

        Returns:
            loss key -> ``exp(-s_t) * L_t`` (``L_t = loss / w_t``; bit-identical to the input
            while ``s_t`` has its initial value), plus
            ``"loss_uncertainty_reg"``: the sum of ``s_t`` over the tasks present in
            ``losses``. Keys of tasks without a parameter (weight 0) are passed on unchanged.
        """
        out: Dict[str, torch.Tensor] = {}
        present = []
        for key, value in losses.items():
            task = task_of_loss(key)
            if task not in self.log_vars:
                out[key] = value
                continue
            # exp(-s) * value / w, written so that it is exactly ``value`` at initialisation
            s0 = -math.log(self.fixed_weights[task])
            out[key] = value * torch.exp(s0 - self.log_vars[task])
            if task not in present:
                present.append(task)
        if present:
            out[REGULARIZER_KEY] = torch.stack([self.log_vars[t] for t in present]).sum()
        return out
