"""DistributedDataParallel for the curriculum's stages, whose models may hold trainable
parameters that a training step never uses.

DDP all-reduces the gradients of the parameters that require one (frozen parameters, such
as the encoder of the instance stage, are not part of its reduction at all), and by default
expects every one of them to get a gradient in every step; a parameter that gets none (e.g.
an FPN output that no head of the stage reads: ``backbone.fpn_output3/4`` in the COCO
config's semantic stage) makes it fail at the next step. ``find_unused_parameters=True``
handles that at the price of a graph traversal per step, so :func:`create_ddp_model` turns it
on only where a probe step finds such parameters.
"""

import contextlib
import logging
import random
from typing import List

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.utils import comm
from detectron2.utils.events import EventStorage

__all__ = ["create_ddp_model", "unused_parameters"]

logger = logging.getLogger(__name__)


def unused_parameters(model: torch.nn.Module, inputs) -> List[str]:
    """Names of the trainable parameters that one training step on ``inputs`` leaves without
    a gradient.

    Runs the step (forward in training mode, backward of the summed losses) and then restores
    everything it touched: gradients, buffers (normalisation statistics), the training flag,
    and the torch (CPU and CUDA), NumPy and Python random states.

    Args:
        model: returns a dict of loss tensors in training mode.
        inputs: its training input (e.g. ``model.probe_inputs()``).
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return []
    saved_grads = {n: p.grad for n, p in trainable}
    saved_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    was_training = model.training
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = (
        [torch.cuda.current_device()]
        if torch.cuda.is_available() and any(p.is_cuda for _, p in trainable)
        else []
    )
    try:
        # the point branch's own generator too (the probe must not change what training draws)
        keep_points = getattr(model, "preserved_point_generator", contextlib.nullcontext)
        with torch.random.fork_rng(devices=devices), EventStorage(0), keep_points():
            for _, p in trainable:
                p.grad = None
            model.train()
            losses = model(inputs)
            sum(losses.values()).backward()
            unused = [n for n, p in trainable if p.grad is None]
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        model.train(was_training)
        for n, p in trainable:
            p.grad = saved_grads[n]
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(saved_buffers[n])
    return unused


def _find_unused(model) -> bool:
    """Whether some trainable parameter of ``model`` gets no gradient, agreed by all ranks."""
    probe = getattr(model, "probe_inputs", None)
    if probe is None:
        logger.info(
            "%s has no probe_inputs(): DDP searches for unused parameters in every step",
            type(model).__name__,
        )
        return True
    try:
        unused = unused_parameters(model, probe())
    except Exception as e:  # a probe that cannot run must not stop training: search always
        logger.warning(
            "DDP: the probe step of %s failed (%s: %s); searching for unused parameters in "
            "every step instead",
            type(model).__name__,
            type(e).__name__,
            e,
        )
        unused = None
    gathered = comm.all_gather(unused)
    if any(u is None for u in gathered):
        return True
    everywhere = sorted(set().union(*gathered))
    if everywhere:
        logger.info(
            "DDP: %d trainable parameters get no gradient in this stage (%s%s); using "
            "find_unused_parameters=True",
            len(everywhere),
            ", ".join(everywhere[:6]),
            ", ..." if len(everywhere) > 6 else "",
        )
    return bool(everywhere)


def create_ddp_model(model, *, fp16_compression=False, **kwargs):
    """detectron2's ``create_ddp_model``, plus: CPU models (gloo) are wrapped without
    ``device_ids``, and ``find_unused_parameters``, unless given, is chosen by a probe step
    (:func:`unused_parameters` on ``model.probe_inputs()``; True for models without it).
    Returns ``model`` itself in a single process."""
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs and next(model.parameters()).is_cuda:
        kwargs["device_ids"] = [comm.get_local_rank()]
    if "find_unused_parameters" not in kwargs:
        kwargs["find_unused_parameters"] = _find_unused(model)
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp
