"""Single-image inference with an exported network: :class:`ExportedPredictor`."""

from typing import Dict, List, Optional, Union

import numpy as np
import torch

from detectron2.data import transforms as T

from ..engine.predictor import image_inputs
from .api import ExportedModel
from .postprocess import postprocess_exported

__all__ = ["ExportedPredictor"]


class ExportedPredictor:
    """:class:`~panoptic_curriculum.engine.predictor.RGBDPredictor` for an exported network:
    the same test-time resize and intrinsics update (from ``export_info.json``), the exported
    network, then :func:`postprocess_exported` back to the original size. Needs only the
    export folder (and onnxruntime for ONNX).

    Example::

        predictor = ExportedPredictor("output/export")
        outputs = predictor(cv2.imread("image.png"), K)  # BGR image, K of that image
    """

    def __init__(self, path: Union[str, ExportedModel], providers: Optional[List[str]] = None):
        """
        Args:
            path: an export folder (``export_model``'s ``output_dir``) or its model file, or
                an already loaded :class:`ExportedModel`.
            providers: onnxruntime execution providers (default: CPU).
        """
        self.net = path if isinstance(path, ExportedModel) else ExportedModel(path, providers)
        self.info = self.net.info
        size = self.info["min_size_test"]
        self.aug = T.ResizeShortestEdge([size, size], self.info["max_size_test"])
        self.input_format = self.info["input_format"]

    def inputs(self, original_image: np.ndarray, K: Optional[np.ndarray] = None) -> Dict:
        """The network input for one image (as :meth:`RGBDPredictor.inputs`)."""
        return image_inputs(original_image, K, self.aug, self.input_format)

    @torch.no_grad()
    def __call__(
        self, original_image: np.ndarray, K: Optional[np.ndarray] = None, with_points=False
    ) -> Dict:
        """
        Args:
            original_image: ``(H, W, 3)`` uint8 image in **BGR** order (as ``cv2.imread``).
            K: ``(3, 3)`` intrinsics of ``original_image`` in pixels; required when the
                network is camera-aware, else optional (instance depths and points need it).
            with_points: also return the lifted ``"point_cloud"``.

        Returns:
            the model's result dict at the original size (see :func:`postprocess_exported`).
        """
        if self.net.camera_aware and K is None:
            raise ValueError(
                f"{self.net.path} has a camera-aware depth head: pass the image's intrinsics K"
            )
        x = self.inputs(original_image, K)
        outputs = self.net(x["image"], x.get("intrinsics"))
        return postprocess_exported(
            outputs, self.info, x["height"], x["width"], x.get("intrinsics"), with_points
        )
