"""Reading depth maps, intrinsics and images from dataset dicts, with clear errors.

A dataset dict of this plugin carries, besides detectron2's standard fields:

* ``"depth_file_name"``: path of the depth file;
* ``"depth_format"``: how that file encodes depth, a key of :data:`DEPTH_DECODERS`;
* ``"intrinsics"``: 3x3 nested list, the pinhole matrix K in pixels (see
  :mod:`panoptic_curriculum.geometry` for the pixel convention);
* format-specific fields (``"stereo_baseline"`` in metres for Cityscapes disparity).

:func:`read_depth` returns float32 metres with 0 for invalid pixels, whatever the format.
"""

import json
import os
from typing import Callable, Dict, Optional

import cv2
import numpy as np
from PIL import UnidentifiedImageError

from detectron2.data import detection_utils as utils

from ..geometry import FOCAL_UNIT_HINT, MIN_FOCAL_PX

__all__ = [
    "DEPTH_DECODERS",
    "DEPTH_FILE_EXTENSIONS",
    "register_depth_format",
    "read_depth",
    "read_intrinsics",
    "as_intrinsics",
    "read_json",
    "read_image",
    "encode_depth_png_mm",
    "decode_cityscapes_disparity",
]

#: depth format name -> ``decoder(path, dataset_dict) -> float32 [H, W] metres, 0 invalid``.
DEPTH_DECODERS: Dict[str, Callable[[str, dict], np.ndarray]] = {}
#: depth format name -> usual file extension (".png", ".npy"), where the format has one
DEPTH_FILE_EXTENSIONS: Dict[str, str] = {}


def register_depth_format(name: str, extension: Optional[str] = None):
    """Decorator registering a depth decoder under ``name``; ``extension`` (e.g. ".png") is
    the extension of its files, which ``register_rgbd_dataset`` uses by default."""

    def deco(fn):
        if name in DEPTH_DECODERS:
            raise KeyError(f"depth format {name!r} is already registered")
        DEPTH_DECODERS[name] = fn
        if extension is not None:
            DEPTH_FILE_EXTENSIONS[name] = extension
        return fn

    return deco


def _read_uint16_png(path: str) -> np.ndarray:
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"cannot decode depth file {path}")
    if raw.ndim != 2 or raw.dtype != np.uint16:
        raise ValueError(
            f"depth file {path} must be a single-channel 16-bit PNG, got dtype {raw.dtype} "
            f"and shape {raw.shape}"
        )
    return raw


#: metres per unit of the "png_mm" format
PNG_MM_SCALE = 1e-3


def encode_depth_png_mm(depth: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres (0 invalid); depths past 65.535 m become invalid."""
    mm = np.round(np.asarray(depth, dtype=np.float64) / PNG_MM_SCALE)
    mm[~np.isfinite(mm) | (mm < 0) | (mm > np.iinfo(np.uint16).max)] = 0
    return mm.astype(np.uint16)


@register_depth_format("png_mm", ".png")
def _decode_png_mm(path: str, dataset_dict: dict) -> np.ndarray:
    """16-bit PNG of depth in millimetres, 0 invalid (the synthetic scenes' format)."""
    return _read_uint16_png(path).astype(np.float32) * np.float32(PNG_MM_SCALE)


@register_depth_format("npy_m", ".npy")
def _decode_npy_m(path: str, dataset_dict: dict) -> np.ndarray:
    """``.npy`` float array of depth in metres, 0 invalid; ``(H, W)`` or ``(H, W, 1)``."""
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"cannot decode depth file {path}: {e}") from e
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"depth file {path} must hold a 2D float array, got {arr.dtype} {arr.shape}"
        )
    return arr.astype(np.float32)


def decode_cityscapes_disparity(raw: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Cityscapes' 16-bit disparity -> depth in metres.

    Cityscapes stores ``p = disparity * 256 + 1`` for valid pixels and ``p = 0`` for invalid
    ones; depth is ``baseline * fx / disparity``. Pixels with ``p <= 1`` (zero disparity,
    infinitely far) are invalid.
    """
    raw = raw.astype(np.float32)
    disparity = (raw - 1.0) / 256.0
    valid = raw > 1.0
    depth = np.zeros_like(raw)
    depth[valid] = np.float32(baseline * fx) / disparity[valid]
    return depth


@register_depth_format("cityscapes_disparity", ".png")
def _decode_cityscapes(path: str, dataset_dict: dict) -> np.ndarray:
    if "stereo_baseline" not in dataset_dict:
        raise KeyError(f"dataset dict of {path} lacks 'stereo_baseline' (metres)")
    K = read_intrinsics(dataset_dict)
    return decode_cityscapes_disparity(
        _read_uint16_png(path), float(dataset_dict["stereo_baseline"]), float(K[0, 0])
    )


def read_depth(
    dataset_dict: dict, min_depth: float = 0.0, max_depth: float = float("inf")
) -> np.ndarray:
    """Depth of a dataset dict as ``(H, W)`` float32 metres, 0 = invalid.

    Args:
        dataset_dict: with ``depth_file_name`` and ``depth_format`` (and ``height``/``width``,
            which the depth map must match when present).
        min_depth, max_depth: depths outside ``[min_depth, max_depth]`` (metres) become 0.

    Raises:
        FileNotFoundError, ValueError, KeyError: naming the file, for a missing or
        undecodable file, a wrong size, non-finite or negative values, or an unknown format.
    """
    path = dataset_dict.get("depth_file_name")
    if path is None:
        raise KeyError(
            f"dataset dict of {dataset_dict.get('file_name', '<unknown image>')} has no "
            "'depth_file_name'"
        )
    fmt = dataset_dict.get("depth_format", "png_mm")
    if fmt not in DEPTH_DECODERS:
        raise KeyError(f"unknown depth_format {fmt!r} for {path}; known: {sorted(DEPTH_DECODERS)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"depth file not found: {path}")
    depth = DEPTH_DECODERS[fmt](path, dataset_dict)
    expected = (dataset_dict.get("height"), dataset_dict.get("width"))
    if None not in expected and depth.shape != expected:
        raise ValueError(
            f"depth file {path} has size {depth.shape[1]}x{depth.shape[0]} (WxH) but the image "
            f"is {expected[1]}x{expected[0]}"
        )
    if not np.isfinite(depth).all():
        raise ValueError(f"depth file {path} contains non-finite values (NaN or inf)")
    if (depth < 0).any():
        raise ValueError(f"depth file {path} contains negative depths")
    depth[(depth < min_depth) | (depth > max_depth)] = 0.0
    return depth.astype(np.float32, copy=False)


def read_intrinsics(dataset_dict: dict) -> np.ndarray:
    """``dataset_dict["intrinsics"]`` as a validated ``(3, 3)`` float64 array (pixels)."""
    name = dataset_dict.get("file_name", "<unknown image>")
    if "intrinsics" not in dataset_dict:
        raise KeyError(f"dataset dict of {name} has no 'intrinsics' (3x3 camera matrix)")
    return as_intrinsics(dataset_dict["intrinsics"], f"intrinsics of {name}")


def as_intrinsics(value, what: str) -> np.ndarray:
    """``value`` as a validated ``(3, 3)`` float64 pixel-unit K.

    Args:
        value: nested lists or an array.
        what: how errors name it, e.g. ``"intrinsics of <image>"`` or ``"'K' of <file>"``.

    Raises:
        ValueError: starting with ``what``, for a non-numeric value, a shape other than 3x3,
            non-finite entries, a focal length below ``MIN_FOCAL_PX`` pixels, or a last row
            other than ``[0, 0, 1]``.
    """
    try:
        K = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a 3x3 matrix of numbers, got {value!r}") from None
    if K.shape != (3, 3):
        raise ValueError(f"{what} must be 3x3, got shape {K.shape}")
    if not np.isfinite(K).all():
        raise ValueError(f"{what} must be finite, got {K.tolist()}")
    if K[0, 0] < MIN_FOCAL_PX or K[1, 1] < MIN_FOCAL_PX:
        raise ValueError(
            f"{what} must have focal lengths fx, fy >= {MIN_FOCAL_PX} pixel; got fx={K[0, 0]}, "
            f"fy={K[1, 1]} in {K.tolist()}" + FOCAL_UNIT_HINT
        )
    if not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise ValueError(f"{what} must have last row [0, 0, 1], got {K.tolist()}")
    return K


def read_json(path: str, what: str):
    """The parsed content of the JSON file ``path``.

    Args:
        what: what the file is, for error messages (e.g. ``"camera file"``).

    Raises:
        FileNotFoundError, ValueError: naming ``what`` and ``path``, for a missing file, or
            one that is not valid UTF-8 JSON.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot parse {what} {path} as JSON: {e}") from e


def read_image(file_name: str, format: str = "BGR") -> np.ndarray:
    """detectron2's ``read_image`` with errors that name the file."""
    if not os.path.isfile(file_name):
        raise FileNotFoundError(f"image file not found: {file_name}")
    try:
        return utils.read_image(file_name, format=format)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot decode image {file_name}: {e}") from e
