"""Export the one-pass network to TorchScript or ONNX by tracing, and run what was exported.

An export folder holds the network (``model.ts`` or ``model.onnx``) and ``export_info.json``:
the input and output names in order, the input format and test-time resize, and everything
the post-processing needs (:func:`~panoptic_curriculum.export.postprocess_exported`), so that
deployment needs neither the config nor the training code's model.
"""

import json
import logging
import os
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from ..utils.atomic_io import atomic_open, atomic_write_text
from .wrapper import tracing_adapter

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_METHODS",
    "INFO_FILE",
    "ONNX_OPSET",
    "TOLERANCES",
    "ExportedModel",
    "compare_with_eager",
    "export_model",
    "exported_instances",
    "read_export_info",
    "synthetic_sample",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("torchscript", "onnx")
EXPORT_METHODS = ("tracing",)
INFO_FILE = "export_info.json"
#: ONNX opset: detectron2's ROIAlignV2 (``aligned=True``) maps to ONNX RoiAlign with
#: ``coordinate_transformation_mode="half_pixel"``, which needs opset >= 16
ONNX_OPSET = 17
_MODEL_FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
#: largest absolute difference allowed between an exported network's outputs and eager
#: PyTorch's on the same input (float32; TorchScript on the CPU is bit-identical, onnxruntime
#: differs by float32 rounding); counts, classes and sizes must match exactly
TOLERANCES = {
    "sem_seg": 1e-4,  # logits
    "depth": 1e-4,  # metres
    "instances.pred_boxes": 1e-3,  # pixels
    "instances.scores": 1e-5,
    "instances.pred_masks": 1e-5,  # probabilities
    "instances.pred_classes": 0.0,
    "instances.image_size": 0.0,
}
# the deprecation notices of torch.jit and of the TorchScript-based ONNX exporter, which this
# module uses on purpose (tracing, as detectron2's TracingAdapter is made for)
_DEPRECATIONS = (r"`torch\.jit\.\w+` is deprecated", "You are using the legacy TorchScript-based")
_EXTRAS_HINT = (
    "install the export extra: `PANOPTIC_EXTRAS=export bash scripts/setup_env.sh` "
    "(or `pip install -r requirements/export.txt`)"
)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"running ONNX models needs onnxruntime: {_EXTRAS_HINT}") from e
    return onnxruntime


def _check_onnx_installed() -> None:
    try:
        import onnx  # noqa: F401  torch's ONNX exporter serialises through it
    except ImportError as e:
        raise ImportError(f"exporting to ONNX needs the onnx package: {_EXTRAS_HINT}") from e


def _dynamic_axes(input_names: List[str], output_names: List[str]) -> Dict[str, Dict[int, str]]:
    axes: Dict[str, Dict[int, str]] = {"image": {1: "height", 2: "width"}}
    for name in output_names:
        if name == "sem_seg":
            axes[name] = {1: "height", 2: "width"}
        elif name == "depth":
            axes[name] = {0: "height", 1: "width"}
        elif name.startswith("instances.") and name != "instances.image_size":
            axes[name] = {0: "num_instances"}
    return axes


def _postprocess_info(cfg, model: nn.Module) -> Dict:
    datasets = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    meta = MetadataCatalog.get(datasets[0]) if datasets else None
    return {
        "thing_to_sem": [int(c) for c in getattr(model, "thing_to_sem", [])],
        "overlap_threshold": float(model.panoptic_overlap_threshold),
        "stuff_area_limit": int(model.panoptic_stuff_area_limit),
        "score_threshold": float(model.panoptic_score_threshold),
        "no_surface_classes": [int(c) for c in model.no_surface_classes],
        "thing_classes": list(meta.get("thing_classes", [])) if meta else [],
        "stuff_classes": list(meta.get("stuff_classes", [])) if meta else [],
    }


def export_model(
    model: nn.Module,
    cfg,
    image: torch.Tensor,
    intrinsics: Optional[torch.Tensor],
    output_dir: str,
    fmt: str,
    *,
    method: str = "tracing",
    opset: int = ONNX_OPSET,
) -> str:
    """Trace ``model`` on a sample and write it with ``export_info.json`` into ``output_dir``.

    Args:
        model: a :class:`PanopticCurriculumModel`; it is put in eval mode.
        cfg: its config (input format, test-time resize, dataset metadata).
        image: ``[3, H, W]`` float32 sample (0..255, ``cfg.INPUT.FORMAT`` order), as the
            model's input after the test-time resize; the exported network accepts any size.
        intrinsics: ``[3, 3]`` K of the sample in pixels (needed when the depth head is
            camera-aware), or None.
        output_dir: created if missing.
        fmt: "torchscript" (``model.ts``) or "onnx" (``model.onnx``, opset ``opset``).
        method: only "tracing" (detectron2's ``TracingAdapter``).

    Returns:
        the path of the written model file.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    if method not in EXPORT_METHODS:
        raise ValueError(
            f"export method must be one of {EXPORT_METHODS}, got {method!r} (caffe2 tracing "
            "and scripting are not supported for this model)"
        )
    if fmt == "onnx":
        if opset < 16:
            raise ValueError(f"ONNX export needs opset >= 16 (RoiAlign half_pixel), got {opset}")
        _check_onnx_installed()
    model.eval()
    adapter, input_names, output_names, sample_out = tracing_adapter(model, image, intrinsics)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, _MODEL_FILES[fmt])
    with torch.no_grad(), warnings.catch_warnings():
        # detectron2's code converts sizes to Python numbers in a few places; each is a
        # constant of the model (number of classes, ...), not of the input
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        for message in _DEPRECATIONS:
            warnings.filterwarnings("ignore", message)
        # the indices of the exported gathers come from topk/nonzero/nms: never negative
        warnings.filterwarnings("ignore", "Exporting aten::index operator of advanced indexing")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        # written through an open file (atomic_open): torch.jit.save given a path aborts
        # the whole process when the disk fills; a file object gets Python's OSError
        if fmt == "torchscript":
            traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
            with atomic_open(path, "wb") as f:
                torch.jit.save(traced, f)
        else:
            with atomic_open(path, "wb") as f:
                torch.onnx.export(
                    adapter,
                    adapter.flattened_inputs,
                    f,
                    dynamo=False,  # trace, as detectron2's TracingAdapter is made for
                    opset_version=opset,
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_axes=_dynamic_axes(input_names, output_names),
                )
    info = {
        "format": fmt,
        "export_method": method,
        "model_file": os.path.basename(path),
        "onnx_opset": opset if fmt == "onnx" else None,
        "torch_version": torch.__version__,
        "inputs": [
            {"name": "image", "shape": [3, "height", "width"], "dtype": "float32"},
            *(
                [{"name": "intrinsics", "shape": [3, 3], "dtype": "float32"}]
                if "intrinsics" in input_names
                else []
            ),
        ],
        "outputs": [
            {"name": n, "sample_shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
            for n, t in zip(output_names, sample_out)
        ],
        "camera_aware": "intrinsics" in input_names,
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "size_divisibility": int(model.backbone.size_divisibility),
        "postprocess": _postprocess_info(cfg, model),
    }
    atomic_write_text(os.path.join(output_dir, INFO_FILE), json.dumps(info, indent=2))
    logger.info("exported %s (%s) to %s", fmt, ", ".join(output_names), path)
    return path


def read_export_info(path: str) -> Dict:
    """``export_info.json`` of an export folder (or of the folder holding a model file)."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    info_path = os.path.join(folder, INFO_FILE)
    if not os.path.isfile(info_path):
        raise FileNotFoundError(
            f"{info_path} not found: {path} is not a folder written by export_model"
        )
    with open(info_path) as f:
        return json.load(f)


def exported_instances(outputs: Dict[str, torch.Tensor]) -> Optional[Instances]:
    """Rebuild the ``Instances`` from named flat outputs (``instances.<field>``), or None."""
    if "instances.image_size" not in outputs:
        return None
    size = tuple(int(s) for s in outputs["instances.image_size"])
    fields = {
        k[len("instances.") :]: v
        for k, v in outputs.items()
        if k.startswith("instances.") and k != "instances.image_size"
    }
    if "pred_boxes" in fields:
        fields["pred_boxes"] = Boxes(fields["pred_boxes"])
    return Instances(size, **fields)


class ExportedModel:
    """Runs an exported network: ``model.ts`` through ``torch.jit.load``, ``model.onnx``
    through onnxruntime (CPU unless ``providers`` says otherwise).

    Example::

        net = ExportedModel("output/export")
        outputs = net(image, K)  # {"sem_seg": [C,H,W], "depth": [H,W], "instances.scores": ...}
    """

    def __init__(self, path: str, providers: Optional[List[str]] = None):
        """
        Args:
            path: an export folder, or the model file in one.
            providers: onnxruntime execution providers (default: CPU).
        """
        self.info = read_export_info(path)
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        self.path = os.path.join(folder, self.info["model_file"])
        self.format = self.info["format"]
        self.input_names = [i["name"] for i in self.info["inputs"]]
        self.output_names = [o["name"] for o in self.info["outputs"]]
        if self.format == "torchscript":
            with warnings.catch_warnings():
                for message in _DEPRECATIONS:
                    warnings.filterwarnings("ignore", message)
                self._ts = torch.jit.load(self.path, map_location="cpu")
        elif self.format == "onnx":
            ort = _import_onnxruntime()
            self._session = ort.InferenceSession(
                self.path, providers=providers or ["CPUExecutionProvider"]
            )
        else:
            raise ValueError(f"{self.path}: unknown export format {self.format!r}")

    @property
    def camera_aware(self) -> bool:
        return bool(self.info["camera_aware"])

    def __call__(
        self, image: torch.Tensor, intrinsics: Optional[torch.Tensor] = None
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            image: ``[3, H, W]`` float32 0..255 in the export's ``input_format``.
            intrinsics: ``[3, 3]`` K of ``image`` in pixels; required when the network is
                camera-aware, unused otherwise.

        Returns:
            output name -> CPU tensor (names and meaning: :class:`ExportableModel`).
        """
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
        inputs = [image.detach().to("cpu", torch.float32)]
        if self.camera_aware:
            if intrinsics is None:
                raise ValueError(f"{self.path} is camera-aware: pass the image's intrinsics")
            if tuple(intrinsics.shape) != (3, 3):
                raise ValueError(f"intrinsics must be [3, 3], got {tuple(intrinsics.shape)}")
            inputs.append(torch.as_tensor(intrinsics).detach().to("cpu", torch.float32))
        if self.format == "torchscript":
            with torch.no_grad():
                values = [v.cpu() for v in self._ts(*inputs)]
        else:
            feed = {n: t.contiguous().numpy() for n, t in zip(self.input_names, inputs)}
            values = [torch.from_numpy(v) for v in self._session.run(self.output_names, feed)]
        return dict(zip(self.output_names, values))


def compare_with_eager(
    model: nn.Module,
    exported: "ExportedModel",
    image: torch.Tensor,
    intrinsics: Optional[torch.Tensor] = None,
) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
    """Run the eager model and the export on one input and compare every output.

    Args:
        model: the eager :class:`PanopticCurriculumModel` that was exported.
        exported: the loaded export.
        image, intrinsics: one input (see :class:`ExportableModel`); ``intrinsics`` is
            ignored when the export is not camera-aware.

    Returns:
        (differences, exported outputs): output name -> max ``|exported - eager|`` (0 for
        empty outputs; ``inf`` when the shapes differ, e.g. another number of instances),
        and the exported outputs by name.
    """
    if not exported.camera_aware:
        intrinsics = None
    _, _, names, eager = tracing_adapter(model.eval(), image, intrinsics)
    if names != exported.output_names:
        raise ValueError(
            f"{exported.path} has outputs {exported.output_names}, the model {names}: "
            "not an export of this model's configuration"
        )
    outputs = exported(image, intrinsics)
    diffs = {}
    for name, a in zip(names, eager):
        a, b = a.detach().cpu(), outputs[name]
        if a.shape != b.shape:
            diffs[name] = float("inf")
        elif a.numel() == 0:
            diffs[name] = 0.0
        else:
            diffs[name] = float((a.double() - b.double()).abs().max())
    return diffs, outputs


def synthetic_sample(height: int, width: int, seed: int = 0):
    """A rendered synthetic scene to trace on when no sample image is given.

    Returns:
        (image, K): ``(height, width, 3)`` uint8 **BGR** image and its exact ``(3, 3)``
        float64 intrinsics, pixels.
    """
    from ..data.synthetic import render_scene, sample_scene

    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, height, width)
    sample = render_scene(scene, height, width, rng)
    return np.ascontiguousarray(sample.image[:, :, ::-1]), sample.K
