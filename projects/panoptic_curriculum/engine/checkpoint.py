"""The plugin's checkpointer: atomic writes that clean up after themselves, weights files read
without running code from them, and weights that do not fit the model reported as such.

* Writes: see :mod:`panoptic_curriculum.utils.atomic_io` (an interrupted or failed save never
  leaves a truncated file, a ``last_checkpoint`` pointing at one, or a temporary file; temporary
  files of killed processes are removed when a checkpointer for their folder is created).
* Reads: ``.pkl`` through a restricted unpickler, everything else through
  ``torch.load(weights_only=True)`` (:mod:`panoptic_curriculum.utils.safe_load`).
* Fit: ``strict=True`` (evaluation, inference, resuming a run) raises
  :class:`IncompatibleWeightsError` on any missing, unexpected or differently shaped tensor, with
  a summary; ``strict=False`` (start weights of a training run: a partial initialisation such
  as an ImageNet backbone) logs the same summary and goes on, unless nothing fits at all.
"""

import logging
import os
from typing import List, Optional

import numpy as np
import torch
from fvcore.common.checkpoint import _filter_reused_missing_keys

from detectron2.checkpoint import DetectionCheckpointer

from ..utils.atomic_io import atomic_torch_save, atomic_write_text, remove_stale_temp_files
from ..utils.safe_load import load_pickle_weights, load_torch_weights

__all__ = [
    "AtomicCheckpointer",
    "IncompatibleWeightsError",
    "atomic_torch_save",
    "atomic_write_text",
    "incompatible_keys_summary",
]

logger = logging.getLogger(__name__)

#: names listed per kind of mismatch in the summary
NUM_NAMES_SHOWN = 5


class IncompatibleWeightsError(ValueError):
    """A weights file does not fit the model (missing, unexpected or differently shaped
    tensors) where the model must be exactly the trained one."""


def _first(names: List[str]) -> str:
    shown = ", ".join(names[:NUM_NAMES_SHOWN])
    return shown + (", ..." if len(names) > NUM_NAMES_SHOWN else "")


def incompatible_keys_summary(missing, unexpected, shapes) -> Optional[str]:
    """One line: how many model tensors the file lacks, how many file tensors the model does
    not know, how many have another shape, each with the first few names; None if all fit.

    Args:
        missing, unexpected: tensor names; shapes: ``(name, shape in file, shape in model)``.
    """
    parts = []
    if missing:
        parts.append(f"{len(missing)} model tensors missing from the file ({_first(missing)})")
    if unexpected:
        parts.append(
            f"{len(unexpected)} tensors in the file unknown to the model ({_first(unexpected)})"
        )
    if shapes:
        shown = [f"{k}: {tuple(a)} in the file, {tuple(b)} in the model" for k, a, b in shapes]
        parts.append(f"{len(shapes)} tensors of another shape ({_first(shown)})")
    return "; ".join(parts) or None


class AtomicCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer with atomic, self-cleaning writes of the checkpoint and of
    the ``last_checkpoint`` tag, safe reading of weights files, a check that the weights fit
    the model, and an error naming the URL when remote weights cannot be downloaded.

    Args:
        model, save_dir, save_to_disk, checkpointables: as ``DetectionCheckpointer``.
        strict: True (evaluation, inference): weights that do not fit the model raise
            :class:`IncompatibleWeightsError`, and an empty path raises ``ValueError``.
            False (start weights of a training run): the mismatch is logged and loading goes
            on. Resuming from the last checkpoint of ``save_dir`` is always strict.
    """

    def __init__(self, model, save_dir="", *, strict: bool = True, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self._path = None
        if save_dir and self.save_to_disk:
            remove_stale_temp_files(save_dir)

    # ------------------------------------------------------------------ reading
    def load(self, path: str, checkpointables=None):
        if not path and self.strict:
            raise ValueError(
                "no weights given (MODEL.WEIGHTS is empty): refusing to use a randomly "
                "initialised model; set MODEL.WEIGHTS to the checkpoint to use"
            )
        self._path = path
        try:
            return super().load(path, checkpointables=checkpointables)
        except OSError as e:  # urllib's URLError is an OSError
            if "://" not in (path or "") or os.path.isfile(path):
                raise
            raise OSError(
                f"cannot download the weights {path} ({e}); download the file where there is "
                "a network and set MODEL.WEIGHTS to its local path"
            ) from e

    def resume_or_load(self, path: str, *, resume: bool = True):
        if resume and self.has_checkpoint():
            strict, self.strict = self.strict, True  # the run's own checkpoint must fit
            try:
                return self.load(self.get_checkpoint_file())
            finally:
                self.strict = strict
        return self.load(path, checkpointables=[])

    def _load_file(self, filename: str):
        """Read a weights file without running code from it: ``.pkl`` (detectron2 and Caffe2
        model zoos) with the restricted unpickler, the rest with ``weights_only=True``."""
        if filename.endswith(".pkl"):
            data = load_pickle_weights(filename)
            if not isinstance(data, dict):
                raise ValueError(f"{filename} holds a {type(data).__name__}, not a weights dict")
            if "model" in data and "__author__" in data:  # detectron2 model zoo
                self.logger.info("Reading a file from '%s'", data["__author__"])
            else:  # Caffe2 / Detectron1 model zoo
                if "blobs" in data:
                    data = data["blobs"]
                data = {
                    "model": {k: v for k, v in data.items() if not k.endswith("_momentum")},
                    "__author__": "Caffe2",
                    "matching_heuristics": True,
                }
        else:
            data = load_torch_weights(filename)
            if not isinstance(data, dict):
                raise ValueError(f"{filename} holds a {type(data).__name__}, not a checkpoint")
            if filename.endswith(".pyth"):  # pycls
                if "model_state" not in data:
                    raise ValueError(f"{filename}: pycls checkpoints must contain 'model_state'")
                state = {
                    k: v
                    for k, v in data["model_state"].items()
                    if not k.endswith("num_batches_tracked")
                }
                data = {"model": state, "__author__": "pycls", "matching_heuristics": True}
            elif "model" not in data:
                data = {"model": data}
        model = data["model"]
        if not isinstance(model, dict):
            raise ValueError(f"{filename}: 'model' holds a {type(model).__name__}, not weights")
        bad = [k for k, v in model.items() if not isinstance(v, (torch.Tensor, np.ndarray))]
        if bad:
            raise ValueError(
                f"{filename}: {len(bad)} entries of the weights are not tensors or arrays "
                f"({_first([f'{k}: {type(model[k]).__name__}' for k in bad])})"
            )
        return data

    def _log_incompatible_keys(self, incompatible) -> None:
        """Raise (strict) or log (partial) a summary of the tensors that did not load."""
        shapes = incompatible.incorrect_shapes
        reshaped = {k for k, _, _ in shapes}
        missing = _filter_reused_missing_keys(self.model, incompatible.missing_keys)
        missing = [k for k in missing if k not in reshaped]  # fvcore lists them as missing too
        summary = incompatible_keys_summary(missing, incompatible.unexpected_keys, shapes)
        if summary is None:
            return
        model_keys = self.model.state_dict().keys()
        not_loaded = set(incompatible.missing_keys) | reshaped
        loaded = sum(1 for k in model_keys if k not in not_loaded)
        message = f"the weights in {self._path} do not fit the model: {summary}"
        if self.strict:
            raise IncompatibleWeightsError(
                message + ". Evaluation and inference need weights trained for this config: "
                "check MODEL.WEIGHTS and the config file"
            )
        if loaded == 0 and len(model_keys) > 0:
            raise IncompatibleWeightsError(
                message + ". Not a single tensor fits: these are not weights of this model"
            )
        logger.warning(
            "%s. Training starts from a partial initialisation: %d of %d model tensors loaded, "
            "the others keep their initial values",
            message,
            loaded,
            len(model_keys),
        )

    # ------------------------------------------------------------------ writing
    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)
