"""Freezing parameter groups: no gradients, no stored activations, fixed normalisation."""

import logging
from typing import Iterable, List

from torch import nn

from detectron2.layers import FrozenBatchNorm2d

__all__ = ["freeze_modules"]

logger = logging.getLogger(__name__)


def _keep_eval(module: nn.Module, inputs):
    module.training = False  # statistics-carrying norms use their running statistics


def freeze_modules(model: nn.Module, prefixes: Iterable[str]) -> List[str]:
    """Freeze every parameter whose name starts with one of ``prefixes`` (e.g. "backbone",
    "sem_seg_head").

    For each frozen submodule: parameters get ``requires_grad=False`` (the optimizer then
    skips them and autograd stores no activations for them, as long as their inputs need no
    gradient either), ``BatchNorm`` layers become detectron2's ``FrozenBatchNorm2d``, and any
    other module with running statistics is kept in eval mode whatever ``model.train()``
    says. Works outside the curriculum too (``MODEL.FREEZE.PREFIXES``).

    Returns:
        names of the frozen parameters.

    Raises:
        KeyError: a prefix that matches no parameter (a typo would silently train).
    """
    prefixes = [p.rstrip(".") for p in prefixes]
    frozen: List[str] = []
    for prefix in prefixes:
        matches = [
            n for n, _ in model.named_parameters() if n == prefix or n.startswith(prefix + ".")
        ]
        if not matches:
            raise KeyError(
                f"MODEL.FREEZE.PREFIXES entry {prefix!r} matches no parameter; top-level "
                f"modules are {sorted({n.split('.')[0] for n, _ in model.named_parameters()})}"
            )
        frozen += matches
        parent_name, _, child_name = prefix.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        child = getattr(parent, child_name)
        child.requires_grad_(False)
        converted = FrozenBatchNorm2d.convert_frozen_batchnorm(child)
        if converted is not child:
            setattr(parent, child_name, converted)
            child = converted
        for m in child.modules():
            if hasattr(m, "running_mean") and not isinstance(m, FrozenBatchNorm2d):
                m.register_forward_pre_hook(_keep_eval)
    logger.info("Frozen %d parameter tensors under %s", len(frozen), prefixes)
    return frozen
