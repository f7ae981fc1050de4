"""Training hooks of the plugin."""

import logging
import random

import numpy as np
import torch
from torch import nn

from detectron2.engine import HookBase

__all__ = ["RNGStateHook", "unwrap_model"]

logger = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside (possibly nested) DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


class RNGStateHook(HookBase):
    """Makes the random number generators part of every checkpoint (through the trainer's
    ``state_dict``), so that a resumed run draws the same random numbers (proposal sampling,
    point sampling, dropout) as an uninterrupted one: the global generators and the point
    branch's own (:meth:`PanopticCurriculumModel.point_generator`). Stored as tensors and
    plain numbers, loadable with ``torch.load(weights_only=True)``."""

    def state_dict(self):
        name, keys, pos, has_gauss, cached = np.random.get_state()
        version, py_state, gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "name": name,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached": float(cached),
            },
            "python": {
                "version": version,
                "state": torch.tensor(py_state, dtype=torch.int64),
                "gauss": gauss,
            },
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        made = getattr(unwrap_model(self.trainer.model), "point_generator_made", None)
        point_rng = None if made is None else made()
        if point_rng is not None:
            state["point_branch"] = {
                "device": str(point_rng.device),
                "state": point_rng.get_state(),
            }
        return state

    def load_state_dict(self, state):
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(
            (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
        )
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        model = unwrap_model(self.trainer.model)
        if "point_branch" in state and hasattr(model, "point_generator"):
            saved = state["point_branch"]
            here = model.device
            if torch.device(saved["device"]).type != here.type:  # CPU and CUDA states differ
                logger.warning(
                    "the checkpoint's point-branch generator was on %s, the model is on %s: "
                    "the branch's pixel sampling starts a fresh stream",
                    saved["device"],
                    here,
                )
            else:
                model.point_generator(here).set_state(saved["state"])
