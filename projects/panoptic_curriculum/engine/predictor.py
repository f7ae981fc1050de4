"""Single-image inference: :class:`RGBDPredictor` (detectron2's ``DefaultPredictor`` that also
feeds the camera intrinsics to the model) and helpers to obtain those intrinsics.

Intrinsics ``K`` follow :mod:`panoptic_curriculum.geometry` (pixels, OpenCV camera frame,
pixel centres at integer coordinates). A ``K`` given to the predictor describes the image as
passed in; the predictor updates it for its test-time resize before calling the model, and
the model's outputs come back at the original size.
"""

import json
import logging
import math
import os
from typing import Dict, Optional

import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from ..data.transforms import transform_intrinsics
from ..geometry import check_intrinsics
from .checkpoint import AtomicCheckpointer

__all__ = [
    "add_camera_arguments",
    "RGBDPredictor",
    "image_inputs",
    "intrinsics_from_fov",
    "load_intrinsics_json",
    "DEFAULT_FOV_DEG",
]

logger = logging.getLogger(__name__)

#: horizontal field of view (degrees) assumed when an image comes without intrinsics
DEFAULT_FOV_DEG = 60.0


def intrinsics_from_fov(height: int, width: int, fov_deg: float = DEFAULT_FOV_DEG) -> np.ndarray:
    """Pinhole ``K`` (3, 3) of a ``height x width`` image with horizontal field of view
    ``fov_deg`` degrees, square pixels (``fy = fx``) and the principal point at the image
    centre ``((W - 1) / 2, (H - 1) / 2)``: ``fx = (W / 2) / tan(fov / 2)``."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"the field of view must be in (0, 180) degrees, got {fov_deg}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width} (HxW)")
    f = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array(
        [[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]],
        dtype=np.float64,
    )


def add_camera_arguments(parser, images: str = "the original images") -> None:
    """``--intrinsics K.json`` and ``--fov DEG``: the camera of ``images``, for the tools
    that read images without a dataset (demo, export); see :func:`load_intrinsics_json` and
    :func:`intrinsics_from_fov`."""
    parser.add_argument(
        "--intrinsics",
        metavar="K.json",
        default=None,
        help=f"camera intrinsics of {images} (JSON: 'K' 3x3, or fx/fy/cx/cy, or a "
        "Cityscapes camera file)",
    )
    parser.add_argument(
        "--fov",
        type=float,
        default=DEFAULT_FOV_DEG,
        metavar="DEG",
        help=f"horizontal field of view assumed for {images} without --intrinsics "
        "(default %(default)s)",
    )


def _number(d: Dict, key: str, path: str) -> float:
    try:
        return float(d[key])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {key!r} must be a number, got {d[key]!r}") from e


def load_intrinsics_json(path: str) -> np.ndarray:
    """Read camera intrinsics from a JSON file, as a validated ``(3, 3)`` float64 array.

    Accepted layouts (the first one found wins):

    * ``{"K": [[fx, s, cx], [0, fy, cy], [0, 0, 1]]}`` (also under ``"intrinsics"``);
    * ``{"fx": .., "fy": .., "cx": .., "cy": ..}`` (optional ``"skew"``);
    * a Cityscapes camera file, ``{"intrinsic": {"fx": .., "fy": .., "u0": .., "v0": ..}}``.

    Raises:
        FileNotFoundError, ValueError: naming ``path``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"intrinsics file not found: {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"intrinsics file {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(
            f"intrinsics file {path} must hold a JSON object, got {type(data).__name__}"
        )

    K = None
    for key in ("K", "intrinsics"):
        if isinstance(data.get(key), list):
            K = np.asarray(data[key], dtype=np.float64)
            if K.shape != (3, 3):
                raise ValueError(f"{path}: {key!r} must be a 3x3 matrix, got shape {K.shape}")
            break
    if K is None:
        flat = data.get("intrinsic") if isinstance(data.get("intrinsic"), dict) else data
        names = {"cx": "cx", "cy": "cy"}
        if "cx" not in flat and "u0" in flat:  # Cityscapes camera JSON
            names = {"cx": "u0", "cy": "v0"}
        missing = [k for k in ("fx", "fy", names["cx"], names["cy"]) if k not in flat]
        if missing:
            raise ValueError(
                f"intrinsics file {path} needs 'K' (3x3), or 'fx', 'fy', 'cx', 'cy', or a "
                f"Cityscapes 'intrinsic' object with 'fx', 'fy', 'u0', 'v0'; missing {missing}"
            )
        fx, fy = _number(flat, "fx", path), _number(flat, "fy", path)
        cx, cy = _number(flat, names["cx"], path), _number(flat, names["cy"], path)
        skew = _number(flat, "skew", path) if "skew" in flat else 0.0
        K = np.array([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)
    try:
        check_intrinsics(torch.as_tensor(K), f"K of {path}")
    except ValueError as e:
        raise ValueError(str(e)) from None
    return K


def image_inputs(
    original_image: np.ndarray, K: Optional[np.ndarray], aug: T.Augmentation, input_format: str
) -> Dict:
    """The model's input dict for one image, as :class:`RGBDPredictor` (and the exported
    model's predictor) build it.

    Args:
        original_image: ``(H, W, 3)`` uint8 image in **BGR** order (as ``cv2.imread``).
        K: ``(3, 3)`` intrinsics of ``original_image``, pixels, or None.
        aug: the test-time resize (``ResizeShortestEdge``).
        input_format: the model's channel order, "BGR" or "RGB".

    Returns:
        dict: ``"image"`` ``[3, h, w]`` float32 0..255 (resized, ``input_format`` order),
        ``"height"``/``"width"`` (original size) and, with ``K``, ``"intrinsics"`` ``[3, 3]``
        float32 (``K`` updated for the resize).
    """
    if input_format not in ("RGB", "BGR"):
        raise ValueError(f"the predictor supports INPUT.FORMAT RGB or BGR, got {input_format}")
    if original_image.ndim != 3 or original_image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {original_image.shape}")
    if input_format == "RGB":  # the input is BGR, as cv2.imread gives
        original_image = original_image[:, :, ::-1]
    height, width = original_image.shape[:2]
    transform = aug.get_transform(original_image)
    image = transform.apply_image(original_image)
    inputs = {
        "image": torch.as_tensor(np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1))),
        "height": height,
        "width": width,
    }
    if K is not None:
        K = np.asarray(K, dtype=np.float64)
        check_intrinsics(torch.as_tensor(K), "K")
        inputs["intrinsics"] = torch.as_tensor(
            transform_intrinsics(transform, K), dtype=torch.float32
        )
    return inputs


class RGBDPredictor:
    """Run the model on single images, as detectron2's ``DefaultPredictor`` does, with the
    camera intrinsics passed along.

    It builds the model from ``cfg``, puts it in eval mode, loads ``cfg.MODEL.WEIGHTS`` with
    the plugin's strict checkpointer (files read without running code from them; weights that
    do not fit the model raise
    :class:`~panoptic_curriculum.engine.checkpoint.IncompatibleWeightsError` with a summary;
    empty weights give a random model, with a warning), resizes each image with
    ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)`` and gives the model ``"image"``
    (resized, ``cfg.INPUT.FORMAT`` channel order), ``"height"``/``"width"`` (the original size,
    so that outputs come back at it) and, when ``K`` is given, ``"intrinsics"``: ``K`` updated
    for the resize.

    Example::

        predictor = RGBDPredictor(cfg)
        outputs = predictor(cv2.imread("image.png"), K)  # BGR image, K of that image
        depth = outputs["depth"]  # [H, W] metres, original size
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        elif len(cfg.DATASETS.TRAIN):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        else:
            self.metadata = MetadataCatalog.get("__unused")
        if cfg.MODEL.WEIGHTS:
            AtomicCheckpointer(self.model, strict=True).load(cfg.MODEL.WEIGHTS)
        else:
            logger.warning("MODEL.WEIGHTS is empty: the predictor uses random weights")
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"RGBDPredictor supports INPUT.FORMAT RGB or BGR, got {self.input_format}"
            )

    def inputs(self, original_image: np.ndarray, K: Optional[np.ndarray] = None) -> Dict:
        """The model's input dict for one image (see :meth:`__call__`)."""
        return image_inputs(original_image, K, self.aug, self.input_format)

    @torch.no_grad()
    def __call__(self, original_image: np.ndarray, K: Optional[np.ndarray] = None) -> Dict:
        """
        Args:
            original_image: ``(H, W, 3)`` uint8 image in **BGR** order (as ``cv2.imread``).
            K: ``(3, 3)`` intrinsics of ``original_image`` in pixels, or None (then the
                point branch and the instance depths are unavailable).

        Returns:
            the model's outputs for the image, at its original size (see
            :class:`~panoptic_curriculum.modeling.meta_arch.PanopticCurriculumModel`).
        """
        return self.model([self.inputs(original_image, K)])[0]
