"""Checkpoints written atomically (an interrupted save never leaves a truncated file or a
``last_checkpoint`` that points at one), and weights that cannot be fetched reported by URL."""

import os

import torch

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer", "atomic_torch_save", "atomic_write_text"]


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AtomicCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer with atomic writes of the checkpoint and of the
    ``last_checkpoint`` tag (local folders), and an error naming the URL when remote weights
    cannot be downloaded (no network)."""

    def load(self, path: str, checkpointables=None):
        try:
            return super().load(path, checkpointables=checkpointables)
        except OSError as e:  # urllib's URLError is an OSError
            if "://" not in (path or "") or os.path.isfile(path):
                raise
            raise OSError(
                f"cannot download the weights {path} ({e}); download the file where there is "
                "a network and set MODEL.WEIGHTS to its local path"
            ) from e

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
