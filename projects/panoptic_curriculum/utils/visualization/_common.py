"""Array helpers shared by the visualisation modules."""

from typing import Union

import numpy as np
import torch

__all__ = ["ArrayLike", "to_numpy", "check_image"]

ArrayLike = Union[np.ndarray, torch.Tensor]


def to_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view (or CPU copy) of an array or tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_image(image_rgb: ArrayLike) -> np.ndarray:
    """``image_rgb`` as a numpy array, checked to be ``(H, W, 3)``."""
    image = to_numpy(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image_rgb must have shape (H, W, 3), got {image.shape}")
    return image
