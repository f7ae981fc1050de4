"""Make Detectron2 v0.6 run on today's NumPy, Pillow and setuptools, with or without its
compiled extension ``detectron2._C``.

``import panoptic_curriculum`` calls :func:`apply` once, before it imports any detectron2
module that needs these fixes. Every piece checks for the thing it supplies first and does
nothing where it is already there (a detectron2 built from source, an old NumPy, ...), so
the layer is a no-op on a complete installation.

What each piece supplies:

* NumPy >= 1.24 removed the aliases ``np.bool``, ``np.int``, ``np.float``, ``np.str``;
  v0.6 uses them (masks, semantic evaluator, data loader, visualizer).
* Pillow >= 10 removed ``Image.LINEAR``, a default argument evaluated when
  ``detectron2.data.transforms`` is imported.
* setuptools >= 81 no longer ships ``pkg_resources``, which ``detectron2.model_zoo`` imports to
  locate its bundled configs; a minimal stand-in answers ``resource_filename``.
* Without ``detectron2._C``: a placeholder module lets detectron2 import, and raises
  :class:`MissingOperatorError` naming the operator when one is used; deformable convolution
  runs through ``torchvision.ops.deform_conv2d`` (CPU and CUDA); rotated-box operators fail
  with that clear error; the COCO evaluator uses pycocotools' ``COCOeval`` instead of the
  compiled fast evaluator (same numbers, slower).
* PyTorch >= 2.x no longer ships Caffe2, which ``detectron2.export`` imports unconditionally
  (and with it ``detectron2.utils.analysis``). Where no real ``caffe2`` is importable, an
  inert stand-in package answers those imports, so TorchScript export (``TracingAdapter``,
  ``scripting_with_instances``, ``dump_torchscript_IR``) and model analysis work; anything
  that would run Caffe2 itself raises :class:`Caffe2UnavailableError`. The stand-in's finder
  sits last on ``sys.meta_path``, so a real ``caffe2`` is always found first.
* Python >= 3.11: ``MapDataset`` (every detectron2 data loader) calls ``random.sample`` on a
  set when the mapper returns ``None`` to drop a sample; it draws from a tuple instead.
* torch >= 2.0: the ``LRScheduler`` hook checks for ``_LRScheduler``, so a built-in
  scheduler's state was left out of checkpoints; it checks for ``LRScheduler`` too.
* ``nms_rotated``'s replacement without the extension is TorchScript-scriptable, so scripted
  code that references it compiles and fails with the missing-operator message when run.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import types
import warnings

import torch

__all__ = ["apply", "MissingOperatorError", "Caffe2UnavailableError", "has_compiled_ops"]

logger = logging.getLogger(__name__)

_APPLIED = False

# operator name -> what needs it, for the error message
_ROTATED_OPS = {
    "box_iou_rotated": "pairwise_iou_rotated / RotatedBoxes.pairwise_iou",
    "roi_align_rotated_forward": "ROIAlignRotated",
    "roi_align_rotated_backward": "ROIAlignRotated",
    "nms_rotated": "nms_rotated / batched_nms_rotated",
}


class MissingOperatorError(AttributeError):
    """A detectron2 operator that only exists in its compiled extension was used."""


def _missing_message(op: str) -> str:
    used_by = _ROTATED_OPS.get(op)
    what = f" (used by {used_by})" if used_by else ""
    return (
        f"detectron2 operator '{op}'{what} needs detectron2's compiled C++/CUDA extension "
        "(detectron2._C), which this installation was built without. Build detectron2 from "
        "source to use it."
    )


_NOT_BUILT = "not built (no compiled extension; see panoptic_curriculum.compat)"


class _MissingExtension(types.ModuleType):
    """Stands in for ``detectron2._C``; any operator lookup raises MissingOperatorError.

    The two build-information functions that ``detectron2.utils.collect_env`` (run by
    ``default_setup``) calls answer that the extension is not built.
    """

    @staticmethod
    def get_compiler_version():
        return _NOT_BUILT

    @staticmethod
    def get_cuda_version():
        return _NOT_BUILT

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingOperatorError(_missing_message(name))


def has_compiled_ops() -> bool:
    """Whether the real ``detectron2._C`` extension is installed."""
    existing = sys.modules.get("detectron2._C")
    if existing is not None:
        return not isinstance(existing, _MissingExtension)
    return importlib.util.find_spec("detectron2._C") is not None


def patch_numpy(np_module) -> list:
    """Restore the builtin-type aliases NumPy 1.24 removed. Returns the names added."""
    added = []
    for name, value in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            present = hasattr(np_module, name)
        if not present:
            setattr(np_module, name, value)
            added.append(name)
    return added


def patch_pillow(image_module) -> list:
    """Restore ``Image.LINEAR`` (an alias of BILINEAR) removed in Pillow 10."""
    if hasattr(image_module, "LINEAR"):
        return []
    image_module.LINEAR = image_module.Resampling.BILINEAR
    return ["LINEAR"]


def _resource_filename(package: str, resource: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"cannot locate package {package!r}")
    return os.path.join(list(spec.submodule_search_locations)[0], resource)


def install_pkg_resources_shim() -> bool:
    """Provide a minimal ``pkg_resources`` (``resource_filename`` only) where setuptools no
    longer ships one. Returns whether the shim was installed."""
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return False
    shim = types.ModuleType("pkg_resources")
    shim.__doc__ = "Minimal stand-in installed by panoptic_curriculum.compat."
    shim.resource_filename = _resource_filename
    sys.modules["pkg_resources"] = shim
    return True


def install_missing_extension() -> bool:
    """Register the ``detectron2._C`` placeholder when the real extension is absent."""
    if has_compiled_ops():
        return False
    import detectron2

    placeholder = _MissingExtension("detectron2._C")
    placeholder.__doc__ = "Placeholder for detectron2's missing compiled extension."
    sys.modules["detectron2._C"] = placeholder
    detectron2._C = placeholder
    return True


def _deform_conv_tv(
    input,
    offset,
    weight,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    deformable_groups=1,
    im2col_step=64,
):
    """``detectron2.layers.deform_conv.deform_conv`` through torchvision (CPU and CUDA)."""
    from torchvision.ops import deform_conv2d

    del groups, deformable_groups, im2col_step  # implied by weight and offset shapes
    return deform_conv2d(input, offset, weight, stride=stride, padding=padding, dilation=dilation)


def _modulated_deform_conv_tv(
    input,
    offset,
    mask,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    deformable_groups=1,
):
    """``detectron2.layers.deform_conv.modulated_deform_conv`` through torchvision."""
    from torchvision.ops import deform_conv2d

    del groups, deformable_groups  # implied by weight and offset shapes
    return deform_conv2d(
        input,
        offset,
        weight,
        bias=bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        mask=mask,
    )


def _nms_rotated_missing(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """``nms_rotated`` without the compiled extension: raises MissingOperatorError. Scriptable,
    so code that references it compiles with ``torch.jit.script`` and fails with this message
    only when run (TorchScript takes no global strings: the message is ``_missing_message``'s
    text written out, which a test checks)."""
    raise MissingOperatorError(
        "detectron2 operator 'nms_rotated' (used by nms_rotated / batched_nms_rotated) needs "
        "detectron2's compiled C++/CUDA extension (detectron2._C), which this installation "
        "was built without. Build detectron2 from source to use it."
    )


def patch_layers_without_extension() -> bool:
    """Route deformable convolution through torchvision and make rotated NMS fail clearly.
    Only where the compiled extension is absent."""
    if has_compiled_ops():
        return False
    import detectron2.layers as layers

    # the modules themselves: ``detectron2.layers.nms`` is shadowed by the function ``nms``
    deform_conv = importlib.import_module("detectron2.layers.deform_conv")
    nms_module = importlib.import_module("detectron2.layers.nms")
    deform_conv.deform_conv = _deform_conv_tv
    deform_conv.modulated_deform_conv = _modulated_deform_conv_tv
    nms_module.nms_rotated = _nms_rotated_missing  # batched_nms_rotated calls it by name
    layers.nms_rotated = _nms_rotated_missing
    return True


def patch_coco_eval_without_extension() -> bool:
    """Use pycocotools' COCOeval where the compiled fast evaluator is missing."""
    if has_compiled_ops():
        return False
    from pycocotools.cocoeval import COCOeval

    from detectron2.evaluation import coco_evaluation

    coco_evaluation.COCOeval_opt = COCOeval
    return True


def _map_dataset_getitem(self, idx):
    """``MapDataset.__getitem__`` drawing the fallback index from a tuple: a mapper that
    returns ``None`` (detectron2's way to drop a sample) makes it try a random other index
    of those not yet failed, as v0.6 does on Python < 3.11 (which turned the set into a
    tuple inside ``random.sample``; Python 3.11 refuses sets)."""
    cur_idx = int(idx)
    retries = 0
    while True:
        data = self._map_func(self._dataset[cur_idx])
        if data is not None:
            self._fallback_candidates.add(cur_idx)
            return data
        retries += 1
        self._fallback_candidates.discard(cur_idx)
        if not self._fallback_candidates:
            raise RuntimeError(
                f"the dataset mapper returned None for every sample it was given (last index "
                f"{cur_idx}, {len(self._dataset)} samples): nothing left to train on"
            )
        cur_idx = self._rng.sample(tuple(self._fallback_candidates), k=1)[0]
        if retries >= 3:
            logging.getLogger("detectron2.data.common").warning(
                "Failed to apply `_map_func` for idx: %s, retry count: %d", idx, retries
            )


def _map_dataset_drops_fail(map_dataset_cls) -> bool:
    """Whether ``map_dataset_cls`` crashes when its mapper drops a sample (returns None)."""
    dataset = map_dataset_cls([0, 1], lambda x: None if x == 0 else x)
    try:
        return dataset[0] != 1
    except TypeError:  # "Population must be a sequence" (Python >= 3.11)
        return True


def patch_map_dataset(map_dataset_cls=None) -> bool:
    """Let ``detectron2.data.common.MapDataset`` drop samples on Python >= 3.11. Only where
    its own ``__getitem__`` fails at it. Returns whether it was patched."""
    if map_dataset_cls is None:
        from detectron2.data.common import MapDataset as map_dataset_cls
    if not _map_dataset_drops_fail(map_dataset_cls):
        return False
    map_dataset_cls.__getitem__ = _map_dataset_getitem
    return True


def _torch_scheduler_types() -> tuple:
    """The base classes of torch's LR schedulers: ``LRScheduler`` (torch >= 2.0) and the
    older ``_LRScheduler``."""
    sched = torch.optim.lr_scheduler
    return tuple(getattr(sched, n) for n in ("LRScheduler", "_LRScheduler") if hasattr(sched, n))


def _lr_hook_state_dict(self):
    """``hooks.LRScheduler.state_dict`` that also saves torch >= 2.0 built-in schedulers."""
    if isinstance(self.scheduler, _torch_scheduler_types()):
        return self.scheduler.state_dict()
    return {}


def _lr_hook_load_state_dict(self, state_dict):
    """``hooks.LRScheduler.load_state_dict`` that also restores torch >= 2.0 schedulers."""
    if isinstance(self.scheduler, _torch_scheduler_types()):
        logging.getLogger("detectron2.engine.hooks").info("Loading scheduler from state_dict ...")
        self.scheduler.load_state_dict(state_dict)


def _lr_hook_drops_builtin_scheduler(hook_cls) -> bool:
    """Whether ``hook_cls.state_dict`` leaves out a torch built-in scheduler's state."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    return "last_epoch" not in hook_cls(optimizer, scheduler).state_dict()


def patch_lr_scheduler_hook(hook_cls=None) -> bool:
    """Checkpoint torch's built-in LR schedulers through detectron2's ``LRScheduler`` hook:
    v0.6 checks for ``_LRScheduler``, which torch >= 2.0's schedulers no longer derive from,
    so their state was silently left out of checkpoints and a resumed run restarted its
    schedule. Only where the hook drops it. Returns whether the hook was patched."""
    if hook_cls is None:
        from detectron2.engine.hooks import LRScheduler as hook_cls
    if not _lr_hook_drops_builtin_scheduler(hook_cls):
        return False
    hook_cls.state_dict = _lr_hook_state_dict
    hook_cls.load_state_dict = _lr_hook_load_state_dict
    return True


class Caffe2UnavailableError(ImportError):
    """Something from Caffe2 (detectron2's Caffe2 export and protobuf models) was used on a
    PyTorch that no longer ships Caffe2."""


def _caffe2_message(name: str) -> str:
    return (
        f"'{name}' belongs to Caffe2, which this PyTorch no longer ships: detectron2's Caffe2 "
        "export (Caffe2Tracer, Caffe2Model, export_caffe2_model) cannot run here. TorchScript "
        "export works: detectron2.export.TracingAdapter, scripting_with_instances."
    )


class _Caffe2PlaceholderMeta(type):
    """Metaclass of the stand-in's names: any attribute is another placeholder class (so type
    annotations such as ``caffe2_pb2.NetDef`` and ``Dict[str, caffe2_pb2.DeviceOption]``
    evaluate at import time), ``isinstance`` against one is False, calling one raises."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _caffe2_placeholder(f"{cls.__qualname__}.{name}", cls.__module__)

    def __call__(cls, *args, **kwargs):
        raise Caffe2UnavailableError(_caffe2_message(f"{cls.__module__}.{cls.__qualname__}"))


_CAFFE2_PLACEHOLDERS = {}


def _caffe2_placeholder(qualname: str, module: str) -> type:
    key = (module, qualname)
    if key not in _CAFFE2_PLACEHOLDERS:
        cls = _Caffe2PlaceholderMeta(qualname.rsplit(".", 1)[-1], (), {"__module__": module})
        cls.__qualname__ = qualname
        _CAFFE2_PLACEHOLDERS[key] = cls
    return _CAFFE2_PLACEHOLDERS[key]


class _Caffe2StandInModule(types.ModuleType):
    """A module of the stand-in ``caffe2`` package: a package itself (``__path__`` is empty,
    submodules come from the stand-in finder) whose every public name is a placeholder."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _caffe2_placeholder(name, self.__name__)


class _Caffe2StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``caffe2`` and its submodules as stand-ins. Appended to the end of
    ``sys.meta_path``: consulted only after every real finder has found nothing."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "caffe2" and not fullname.startswith("caffe2."):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        module = _Caffe2StandInModule(spec.name)
        module.__doc__ = "Inert stand-in installed by panoptic_curriculum.compat: no Caffe2 here."
        return module

    def exec_module(self, module):
        module.__path__ = []


def install_caffe2_stand_in() -> bool:
    """Make ``import caffe2...`` answer with the inert stand-in where no real Caffe2 exists
    (so ``detectron2.export`` and ``detectron2.utils.analysis`` import). Returns whether the
    stand-in finder was installed."""
    if any(isinstance(f, _Caffe2StandInFinder) for f in sys.meta_path):
        return False
    if "caffe2" in sys.modules or importlib.util.find_spec("caffe2") is not None:
        return False  # a real caffe2
    sys.meta_path.append(_Caffe2StandInFinder())
    return True


def apply() -> dict:
    """Apply every piece once; returns what each piece changed (for logging and tests)."""
    global _APPLIED
    if _APPLIED:
        return {}
    import numpy as np
    from PIL import Image

    # v0.6 scripts a few helpers with torch.jit.script, which today's torch deprecates
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
    )
    report = {
        "numpy": patch_numpy(np),
        "pillow": patch_pillow(Image),
        "pkg_resources": install_pkg_resources_shim(),
        "missing_extension": install_missing_extension(),
        "caffe2": install_caffe2_stand_in(),
    }
    report["layers"] = patch_layers_without_extension()
    report["coco_eval"] = patch_coco_eval_without_extension()
    report["map_dataset"] = patch_map_dataset()
    report["lr_scheduler_hook"] = patch_lr_scheduler_hook()
    _APPLIED = True
    changed = {k: v for k, v in report.items() if v}
    if changed:
        logger.debug("detectron2 compatibility fixes applied: %s", changed)
    return report
