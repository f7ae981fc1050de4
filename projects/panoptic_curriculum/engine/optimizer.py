"""detectron2's SGD optimizer (or AdamW) with per-module learning-rate multipliers.

``SOLVER.OPTIMIZER`` chooses ``"SGD"`` (detectron2's: momentum, Nesterov) or ``"ADAMW"``
(``torch.optim.AdamW`` with ``SOLVER.ADAMW_BETAS``, decoupled weight decay
``SOLVER.WEIGHT_DECAY``); both use detectron2's parameter groups (norm / bias weight decay,
``BIAS_LR_FACTOR``) and its gradient clipping, and follow the same LR schedule.

``SOLVER.LR_MULTIPLIERS`` is a list of ``[module_prefix, multiplier]`` pairs: every trainable
parameter whose name starts with ``module_prefix`` (a submodule of the model, e.g.
``"roi_heads"`` or ``"backbone.bottom_up"``) trains at ``multiplier`` times the learning rate it
would otherwise have (``SOLVER.BASE_LR``, times ``SOLVER.BIAS_LR_FACTOR`` for biases); the LR
schedule scales every group alike. Where prefixes nest, the longest one decides. An empty list
with SGD is detectron2's ``build_optimizer`` itself.

The curriculum's joint stage fills the list from ``CURRICULUM.JOINT_INSTANCE_LR_MULTIPLIER``
(the instance decoder's rate relative to the rest of the merged model).
"""

from typing import Dict, Sequence, Tuple

import torch

from detectron2.solver import build_optimizer as d2_build_optimizer
from detectron2.solver.build import (
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)

from ..config_validation import OPTIMIZERS, parse_lr_multipliers

__all__ = [
    "build_optimizer",
    "check_optimizer_state_fits",
    "optimizer_kind",
    "parameter_lr_multipliers",
]


def parameter_lr_multipliers(
    model: torch.nn.Module, entries: Sequence[Tuple[str, float]]
) -> Dict[str, float]:
    """The multiplier of every parameter that one of ``entries`` covers, by parameter name.

    Raises:
        ValueError: a prefix that names no submodule of ``model`` (the message lists the
            model's top-level modules).
    """
    modules = dict(model.named_modules())
    for prefix, _ in entries:
        if prefix not in modules:
            top = sorted(n for n in modules if n and "." not in n)
            raise ValueError(
                f"SOLVER.LR_MULTIPLIERS: {prefix!r} is not a module of the model; its "
                f"top-level modules are {top}"
            )
    # longest prefix first: "backbone.bottom_up" wins over "backbone"
    ordered = sorted(entries, key=lambda e: -len(e[0]))
    out = {}
    for name, _ in model.named_parameters():
        for prefix, m in ordered:
            if name.startswith(prefix + "."):
                out[name] = m
                break
    return out


def optimizer_kind(param_groups: Sequence[Dict]) -> str:
    """``"ADAMW"`` or ``"SGD"``: which of the two wrote these parameter groups (an optimizer's
    or a checkpoint's ``state_dict()["param_groups"]``); AdamW's groups carry ``betas``."""
    return "ADAMW" if any("betas" in g for g in param_groups) else "SGD"


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """detectron2's SGD (momentum, weight decay, norm / bias overrides, gradient clipping), or
    AdamW with the same groups (``SOLVER.OPTIMIZER``), with the learning rates of
    ``SOLVER.LR_MULTIPLIERS`` applied per parameter."""
    entries = parse_lr_multipliers(cfg.SOLVER.LR_MULTIPLIERS)
    kind = cfg.SOLVER.get("OPTIMIZER", "SGD")
    if kind not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER = {kind!r}: allowed {list(OPTIMIZERS)}")
    if not entries and kind == "SGD":
        return d2_build_optimizer(cfg, model)
    by_name = parameter_lr_multipliers(model, entries)
    by_param = {p: by_name.get(n, 1.0) for n, p in model.named_parameters()}
    groups = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    split = []
    for g in groups:
        hyper = {k: v for k, v in g.items() if k != "params"}
        for p in g["params"]:
            split.append({**hyper, "params": [p], "lr": hyper["lr"] * by_param[p]})
    if kind == "ADAMW":
        cls = torch.optim.AdamW
        extra = {"betas": tuple(float(b) for b in cfg.SOLVER.ADAMW_BETAS)}
    else:
        cls = torch.optim.SGD
        extra = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    return maybe_add_gradient_clipping(cfg, cls)(
        reduce_param_groups(split),
        lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        **extra,
    )


def check_optimizer_state_fits(optimizer: torch.optim.Optimizer, state: Dict) -> None:
    """Refuse an optimizer state (a checkpoint's) whose parameter groups are not this
    optimizer's: torch would load the momentum buffers by position into other parameters or
    fail with a message that names neither cause. The groups follow ``SOLVER.LR_MULTIPLIERS``
    and which parameters train; the state's kind follows ``SOLVER.OPTIMIZER`` (SGD's momentum
    buffers are no AdamW moments).

    Raises:
        ValueError: the optimizers or the group sizes differ (the message gives both).
    """
    saved_kind = optimizer_kind(state.get("param_groups", []))
    now_kind = optimizer_kind(optimizer.param_groups)
    if saved_kind != now_kind:
        raise ValueError(
            f"the checkpoint's optimizer state is {saved_kind}'s, this config's "
            f"SOLVER.OPTIMIZER is {now_kind!r}: resume with the same optimizer or use a new "
            "OUTPUT_DIR"
        )
    saved = [len(g["params"]) for g in state.get("param_groups", [])]
    now = [len(g["params"]) for g in optimizer.param_groups]
    if saved != now:
        raise ValueError(
            f"the checkpoint's optimizer has parameter groups of sizes {saved}, this config's "
            f"{now}: SOLVER.LR_MULTIPLIERS (or the set of trained parameters) differs from the "
            "run that wrote the checkpoint; resume with the same settings or use a new OUTPUT_DIR"
        )
