"""Deployment: the one-pass network exported to TorchScript or ONNX (by tracing, through
detectron2's ``TracingAdapter``), and the post-processing that turns the exported outputs into
the model's result dict.

The exported network takes one image (``[3, H, W]`` float32, any size) and, when the depth
head is camera-aware, its ``[3, 3]`` intrinsics; it returns semantic logits, metric depth and
Mask R-CNN's detections (boxes, scores, classes, ``M x M`` mask probabilities). The test-time
resize, resizing to the original image, mask pasting, panoptic fusion, per-instance depth and
centroid, and point lifting run afterwards in :func:`postprocess_exported` (the code the
model's own inference uses). ``onnxruntime`` is an optional dependency
(``requirements/export.txt``).

Example::

    from panoptic_curriculum.export import ExportedPredictor, export_model
    export_model(model, cfg, image, K, "output/export", "onnx")
    outputs = ExportedPredictor("output/export")(cv2.imread("image.png"), K)
"""

from .api import (
    EXPORT_FORMATS,
    EXPORT_METHODS,
    INFO_FILE,
    ONNX_OPSET,
    TOLERANCES,
    ExportedModel,
    compare_with_eager,
    export_model,
    exported_instances,
    read_export_info,
    synthetic_sample,
)
from .postprocess import lift_points, postprocess_exported
from .predictor import ExportedPredictor
from .wrapper import ExportableModel, flat_names, tracing_adapter

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_METHODS",
    "INFO_FILE",
    "ONNX_OPSET",
    "TOLERANCES",
    "ExportableModel",
    "ExportedModel",
    "ExportedPredictor",
    "compare_with_eager",
    "export_model",
    "exported_instances",
    "flat_names",
    "lift_points",
    "postprocess_exported",
    "read_export_info",
    "synthetic_sample",
    "tracing_adapter",
]
