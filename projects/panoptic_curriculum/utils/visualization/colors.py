"""Colours of points: class palettes, per-point class colours and agreement colours.

Class colours are ``(C, 3)`` in 0..255 (as ``metadata.stuff_colors``); point colours are
float32 RGB in 0..1 (as Open3D's).
"""

import logging
from typing import Sequence

import numpy as np

from ._common import ArrayLike, to_numpy

__all__ = [
    "IGNORED_POINT_COLOR",
    "DISAGREEMENT_COLOR",
    "AGREEMENT_COLOR",
    "class_palette",
    "label_point_colors",
    "disagreement_point_colors",
]

logger = logging.getLogger(__name__)

#: colour (RGB, 0..1) of points whose label is the ignore label
IGNORED_POINT_COLOR = (0.5, 0.5, 0.5)
#: colour (RGB, 0..1) of the points where two labellings disagree
DISAGREEMENT_COLOR = (1.0, 0.0, 1.0)
#: colour (RGB, 0..1) of the points where they agree
AGREEMENT_COLOR = (0.45, 0.45, 0.45)


def class_palette(metadata, num_classes: int) -> np.ndarray:
    """``(max(C, num_classes), 3)`` float32 class colours in 0..255: ``metadata.stuff_colors``
    padded, with a warning, by fixed pseudo-random colours for the classes it does not cover.

    Args:
        metadata: detectron2 ``Metadata`` (or any object with ``get`` and ``name``).
        num_classes: number of semantic classes to colour.
    """
    colors = list(metadata.get("stuff_colors", None) or [])
    if len(colors) < num_classes:
        logger.warning(
            "%s has %d stuff_colors for %d semantic classes; using fixed random colours for "
            "the rest",
            metadata.name,
            len(colors),
            num_classes,
        )
        extra = np.random.RandomState(0).randint(0, 256, size=(num_classes - len(colors), 3))
        colors += extra.tolist()
    return np.asarray(colors, dtype=np.float32).reshape(-1, 3)


def label_point_colors(labels: ArrayLike, colors: ArrayLike, ignore_label: int = 255) -> np.ndarray:
    """Colour points by class.

    Args:
        labels: ``(N,)`` integer class ids.
        colors: ``(C, 3)`` class colours in 0..255 (``metadata.stuff_colors``).
        ignore_label: points with this label (or any label outside ``[0, C)``) are grey,
            :data:`IGNORED_POINT_COLOR`.

    Returns:
        ``(N, 3)`` float32 RGB in 0..1.
    """
    lab = to_numpy(labels).astype(np.int64).reshape(-1)
    palette = np.asarray(to_numpy(colors), dtype=np.float32).reshape(-1, 3) / 255.0
    out = np.empty((lab.shape[0], 3), dtype=np.float32)
    out[:] = IGNORED_POINT_COLOR
    known = (lab != ignore_label) & (lab >= 0) & (lab < len(palette))
    out[known] = palette[lab[known]]
    return out


def disagreement_point_colors(
    labels_a: ArrayLike,
    labels_b: ArrayLike,
    highlight: Sequence[float] = DISAGREEMENT_COLOR,
    other: Sequence[float] = AGREEMENT_COLOR,
) -> np.ndarray:
    """``(N, 3)`` float32 RGB (0..1): ``highlight`` where ``labels_a != labels_b`` (e.g. the
    2D and the 3D prediction of each point), ``other`` elsewhere."""
    a = to_numpy(labels_a).astype(np.int64).reshape(-1)
    b = to_numpy(labels_b).astype(np.int64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{a.shape[0]} labels against {b.shape[0]}")
    out = np.empty((a.shape[0], 3), dtype=np.float32)
    out[:] = other
    out[a != b] = highlight
    return out

