"""The traceable form of the one-pass network: one image (and its intrinsics) in, a flat
tuple of tensors out, through detectron2's :class:`~detectron2.export.TracingAdapter`."""

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from detectron2.export import TracingAdapter
from detectron2.export.flatten import DictSchema, InstancesSchema, ListSchema, Schema
from detectron2.structures import ImageList

__all__ = ["ExportableModel", "tracing_adapter", "flat_names"]


class ExportableModel(nn.Module):
    """The network part of :class:`PanopticCurriculumModel` for one image, with tensor inputs.

    It normalises and pads the image as the model does, runs the backbone once and every
    branch that is built (:meth:`PanopticCurriculumModel.predict_padded`), and crops the dense
    outputs back to the image. What stays outside (see :mod:`panoptic_curriculum.export`):
    the test-time resize, resizing the outputs to the original image, mask pasting, panoptic
    fusion, per-instance depth and centroid, and point lifting.

    Inputs:
        image: ``[3, H, W]`` float32, pixel values 0..255 in ``cfg.INPUT.FORMAT`` channel
            order, any ``H x W`` (padded inside to the backbone's size divisibility).
        intrinsics: ``[3, 3]`` float32 K of that image in pixels; an input only when the
            depth head is camera-aware (:attr:`camera_aware`).

    Output (a dict, flattened by the tracing adapter), each entry present when its branch is:
        ``"sem_seg"``: ``[C, H, W]`` float32 semantic logits;
        ``"depth"``: ``[H, W]`` float32 metric depth, metres;
        ``"instances"``: ``Instances`` of size ``(H, W)`` with ``pred_boxes`` (``Boxes``,
        ``[N, 4]`` XYXY in input pixels), ``scores`` ``[N]``, ``pred_classes`` ``[N]`` int64
        thing ids and ``pred_masks`` ``[N, 1, M, M]`` mask probabilities inside each box.
    """

    def __init__(self, model: nn.Module):
        """
        Args:
            model: a :class:`PanopticCurriculumModel` (any branches), in eval mode.
        """
        super().__init__()
        if not hasattr(model, "predict_padded"):
            raise TypeError(
                f"ExportableModel needs a PanopticCurriculumModel, got {type(model).__name__}"
            )
        self.model = model
        head = model.depth_head
        self.camera_aware = bool(head is not None and getattr(head, "camera_aware", False))

    def forward(self, image: torch.Tensor, intrinsics: Optional[torch.Tensor] = None) -> Dict:
        m = self.model
        if self.camera_aware and intrinsics is None:
            raise ValueError("the depth head is camera-aware: the intrinsics are an input")
        x = (image.to(device=m.device, dtype=m.pixel_mean.dtype) - m.pixel_mean) / m.pixel_std
        images = ImageList.from_tensors([x], m.backbone.size_divisibility)
        features = m.backbone(images.tensor)
        K = intrinsics.to(device=m.device, dtype=x.dtype)[None] if self.camera_aware else None
        raw = m.predict_padded(images, features, K)
        h, w = image.shape[-2:]
        out: Dict = {}
        if raw["sem_logits"] is not None:
            out["sem_seg"] = raw["sem_logits"][0, :, :h, :w]
        if raw["depth"] is not None:
            out["depth"] = raw["depth"][0, :h, :w]
        if raw["instances"] is not None:
            out["instances"] = raw["instances"][0]
        return out


def tracing_adapter(
    model: nn.Module, image: torch.Tensor, intrinsics: Optional[torch.Tensor] = None
) -> Tuple[TracingAdapter, List[str], List[str], Tuple[torch.Tensor, ...]]:
    """Wrap ``model`` for tracing on a sample.

    Args:
        model: a :class:`PanopticCurriculumModel` in eval mode.
        image: ``[3, H, W]`` float32 sample image (see :class:`ExportableModel`).
        intrinsics: ``[3, 3]`` its K; required when the depth head is camera-aware, ignored
            otherwise.

    Returns:
        (adapter in eval mode, input names, output names, eager outputs on the sample): the
        adapter's ``forward`` takes the flat inputs (``adapter.flattened_inputs`` for the
        sample) and returns the flat outputs in the order of the names.
    """
    wrapper = ExportableModel(model).eval()
    image = image.to(torch.float32)
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"the sample image must be [3, H, W], got {tuple(image.shape)}")
    inputs: Tuple[torch.Tensor, ...] = (image,)
    input_names = ["image"]
    if wrapper.camera_aware:
        if intrinsics is None:
            raise ValueError(
                "the depth head is camera-aware (MODEL.DEPTH_HEAD.CANONICAL_FOCAL / "
                "CAMERA_COORDS): the sample needs intrinsics"
            )
        inputs += (intrinsics.to(torch.float32),)
        input_names.append("intrinsics")
    # eval mode matters: torch.onnx.export restores the adapter's mode on its sub-modules
    adapter = TracingAdapter(wrapper, inputs).eval()
    with torch.no_grad():
        outputs = adapter(*adapter.flattened_inputs)  # also records the output schema
    return adapter, input_names, flat_names(adapter.outputs_schema), outputs


def flat_names(schema: Schema, prefix: str = "") -> List[str]:
    """Names of the flat outputs of a detectron2 tracing schema, in order: dict keys joined by
    ``.`` (``"instances.pred_boxes"``), an ``Instances``' size as ``<name>.image_size``."""
    if isinstance(schema, InstancesSchema):
        names = []
        for key, sub in zip(schema.keys, schema.schemas):
            names += flat_names(sub, f"{prefix}{key}.")
        return names + [f"{prefix}image_size"]
    if isinstance(schema, DictSchema):
        names = []
        for key, sub in zip(schema.keys, schema.schemas):
            names += flat_names(sub, f"{prefix}{key}.")
        return names
    if isinstance(schema, ListSchema):
        names = []
        for i, sub in enumerate(schema.schemas):
            names += flat_names(sub, f"{prefix}{i}.")
        return names
    return [prefix.rstrip(".")]
