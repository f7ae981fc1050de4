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
* ``cityscapesscripts`` 2.3 (fixed in each of its modules right after that module is first
  imported, see :func:`install_cityscapesscripts_fixes`): its evaluations call ``np.in1d``,
  removed in NumPy 2.4; its instance evaluation writes NumPy scalars with a JSON encoder that
  cannot, and writes ``matches.json`` into the current directory; ``json2instanceImg`` saves a
  32-bit image as PNG, which Pillow 13 refuses.

:func:`import_imagecorruptions` (called by :mod:`panoptic_curriculum.data.corruptions`, not
at package import: scikit-image is slow to import) makes ``imagecorruptions`` 1.1.2 run on
today's stack, at its call boundaries only: scikit-image >= 0.21 removed ``multichannel``
from ``skimage.filters.gaussian`` (used by its gaussian and glass blur), NumPy 2 removed
``np.float_`` (fog), SciPy deprecates ``scipy.ndimage.interpolation`` (and 2.0 removes it),
and its frost images are located with ``pkg_resources.resource_filename`` on a module name.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import types
import warnings

import torch

__all__ = [
    "apply",
    "MissingOperatorError",
    "Caffe2UnavailableError",
    "has_compiled_ops",
    "import_imagecorruptions",
]

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

    The build-information functions that ``detectron2.utils.collect_env`` (run by
    ``default_setup``) calls answer that the extension is not built and holds no CUDA code
    (on a GPU machine ``collect_env`` then skips the architecture flags it would read from
    the extension's file).
    """

    @staticmethod
    def get_compiler_version():
        return _NOT_BUILT

    @staticmethod
    def has_cuda():
        return False

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
    """``resource`` inside ``package``'s folder; for a plain module, its file's folder (as
    ``pkg_resources`` does: ``imagecorruptions`` passes its module's ``__name__``)."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        return os.path.join(list(spec.submodule_search_locations)[0], resource)
    if spec is not None and spec.origin and os.path.isfile(spec.origin):
        return os.path.join(os.path.dirname(spec.origin), resource)
    raise ImportError(f"cannot locate package {package!r}")


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


class _NumpyWithFloatAlias(types.ModuleType):
    """NumPy seen through one module's eyes, with ``float_`` (removed in NumPy 2) restored as
    ``float64``; every other attribute is NumPy's own."""

    def __init__(self, np_module):
        super().__init__("numpy")
        self._np = np_module
        self.float_ = np_module.float64

    def __getattr__(self, name):
        return getattr(self._np, name)


def _gaussian_with_multichannel(gaussian):
    """``skimage.filters.gaussian`` that accepts the removed ``multichannel`` argument
    (``True`` means ``channel_axis=-1``, ``False`` ``channel_axis=None``)."""

    def wrapper(image, *args, multichannel=None, **kwargs):
        if multichannel is not None and "channel_axis" not in kwargs:
            kwargs["channel_axis"] = -1 if multichannel else None
        return gaussian(image, *args, **kwargs)

    wrapper.__wrapped_gaussian__ = gaussian
    return wrapper


def patch_imagecorruptions(corruptions_module) -> list:
    """Fix ``imagecorruptions.corruptions`` in place where the library it calls changed;
    returns the names of the fixes applied (none on the stack it was written for)."""
    import inspect

    changed = []
    gaussian = corruptions_module.gaussian
    if not hasattr(gaussian, "__wrapped_gaussian__"):
        try:
            params = inspect.signature(gaussian).parameters
        except (TypeError, ValueError):
            params = {}
        if "multichannel" not in params and "channel_axis" in params:
            corruptions_module.gaussian = _gaussian_with_multichannel(gaussian)
            changed.append("gaussian(multichannel)")
    np_module = corruptions_module.np
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            getattr(np_module, "float_")
            has_float_ = True
        except AttributeError:
            has_float_ = False
    if not has_float_:
        corruptions_module.np = _NumpyWithFloatAlias(np_module)
        changed.append("np.float_")
    return changed


def import_imagecorruptions():
    """Import ``imagecorruptions`` and apply :func:`patch_imagecorruptions` once.

    Raises:
        ImportError: naming the package and the requirements file when it is not installed.
    """
    if importlib.util.find_spec("imagecorruptions") is None:
        raise ImportError(
            "the image corruptions need the 'imagecorruptions' package (and scikit-image); "
            "install requirements/base.txt"
        )
    install_pkg_resources_shim()  # imagecorruptions imports pkg_resources at import time
    import scipy.ndimage

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            has_interpolation = importlib.util.find_spec("scipy.ndimage.interpolation") is not None
    except ModuleNotFoundError:
        has_interpolation = False
    if not has_interpolation:  # SciPy >= 2.0: the old namespace is gone
        sys.modules["scipy.ndimage.interpolation"] = scipy.ndimage
    with warnings.catch_warnings():
        # "Please import `map_coordinates` from the `scipy.ndimage` namespace"
        warnings.simplefilter("ignore", DeprecationWarning)
        import imagecorruptions
        import imagecorruptions.corruptions as corruptions

    if not getattr(corruptions, "_panoptic_curriculum_checked", False):
        fixes = patch_imagecorruptions(corruptions)
        corruptions._panoptic_curriculum_checked = True
        if fixes:
            logger.debug("imagecorruptions compatibility fixes applied: %s", fixes)
    return imagecorruptions


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
    report["cityscapesscripts"] = install_cityscapesscripts_fixes()
    report["map_dataset"] = patch_map_dataset()
    report["lr_scheduler_hook"] = patch_lr_scheduler_hook()
    _APPLIED = True
    changed = {k: v for k, v in report.items() if v}
    if changed:
        logger.debug("detectron2 compatibility fixes applied: %s", changed)
    return report


# ---------------------------------------------------------------- cityscapesscripts
#
# cityscapesscripts' modules read environment variables into globals when imported, so they
# are not imported here: each fix runs right after its module is first imported (by
# detectron2's Cityscapes evaluators, tools/prepare_cityscapes.py or the user), or at once
# when it already is.

_CS_PIXEL_EVAL = "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling"
_CS_INSTANCE_EVAL = "cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling"
_CS_JSON2INSTANCE = "cityscapesscripts.preparation.json2instanceImg"
_CS_TRAINID_INSTANCE = "cityscapesscripts.preparation.createTrainIdInstanceImgs"


class _AfterImport(importlib.abc.MetaPathFinder):
    """A meta-path finder that runs callbacks on a module right after its code has run for the
    first time (before the importer gets it). It only wraps the loader another finder
    returns; modules whose loader has no ``exec_module`` are left alone."""

    def __init__(self):
        self.callbacks = {}  # module name -> [fn(module)]

    def find_spec(self, fullname, path=None, target=None):
        callbacks = self.callbacks.get(fullname)
        if not callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module
        todo = self.callbacks.pop(fullname)

        def exec_then_fix(module):
            exec_module(module)
            for fn in todo:
                fn(module)

        loader.exec_module = exec_then_fix
        return spec


_after_import = _AfterImport()


def when_imported(name: str, fn) -> None:
    """Call ``fn(module)`` once module ``name`` is imported: now if it already is, else right
    after its first import."""
    if name in sys.modules:
        fn(sys.modules[name])
        return
    _after_import.callbacks.setdefault(name, []).append(fn)
    if _after_import not in sys.meta_path:
        sys.meta_path.insert(0, _after_import)


class _NumPyWithIn1d(types.ModuleType):
    """NumPy plus ``in1d`` (removed in NumPy 2.4), for one module's ``np`` global only."""

    def __init__(self, numpy_module):
        super().__init__(numpy_module.__name__, numpy_module.__doc__)
        self._numpy = numpy_module

    def __getattr__(self, name):
        return getattr(self._numpy, name)

    def in1d(self, ar1, ar2, assume_unique=False, invert=False):
        """``np.in1d``: flat bool array, True where an element of ``ar1`` is in ``ar2``."""
        return self._numpy.isin(
            self._numpy.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert
        )


def patch_module_in1d(module) -> bool:
    """Give ``module`` (a cityscapesscripts evaluation) a ``np`` global that has ``in1d``, where
    its NumPy lacks it. NumPy itself is left unchanged. Returns whether it was patched."""
    numpy_module = getattr(module, "np", None)
    if numpy_module is None or hasattr(numpy_module, "in1d"):
        return False
    module.np = _NumPyWithIn1d(numpy_module)
    return True


def _json_default(obj):
    """JSON fallback of cityscapesscripts' writer (objects as their attributes), plus NumPy
    scalars and arrays."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "__dict__"):
        return obj.__dict__
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _writer_handles_numpy(writer) -> bool:
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="pc_compat_") as tmp:
        try:
            writer({"probe": np.int64(1)}, os.path.join(tmp, "probe.json"))
        except (TypeError, AttributeError, ValueError):
            return False
    return True


def patch_instance_eval_json(module) -> bool:
    """cityscapesscripts' instance evaluation writes its matches with ``writeDict2JSON``,
    whose encoder cannot write the NumPy scalars NumPy 2 counts return, to ``matches.json``
    in the current directory. Replace the module's writer with one that writes NumPy scalars
    and puts relative file names beside ``args.gtInstancesFile`` (the evaluation's working
    folder; detectron2 sets it to its temporary directory). Only where the library's writer
    fails on NumPy scalars or ``evaluateImgLists`` writes to a relative path. Returns whether
    it was patched."""
    writer = getattr(module, "writeDict2JSON", None)
    evaluate = getattr(module, "evaluateImgLists", None)
    if writer is None or getattr(writer, "_panoptic_curriculum_fix", False):
        return False
    relative = evaluate is not None and "matches.json" in evaluate.__code__.co_consts
    if not relative and _writer_handles_numpy(writer):
        return False

    def writeDict2JSON(dictName, fileName):
        if not os.path.isabs(fileName):
            folder = os.path.dirname(os.path.abspath(module.args.gtInstancesFile))
            fileName = os.path.join(folder, fileName)
        with open(fileName, "w") as f:
            json.dump(dictName, f, default=_json_default, sort_keys=True, indent=4)

    writeDict2JSON._panoptic_curriculum_fix = True
    module.writeDict2JSON = writeDict2JSON
    return True


def pillow_writes_int32_png() -> bool:
    """Whether Pillow can save a 32-bit integer ("I") image as PNG (Pillow 13 cannot)."""
    import io

    from PIL import Image

    try:
        Image.new("I", (1, 1)).save(io.BytesIO(), format="PNG")
    except OSError:
        return False
    return True


def patch_json2instance_img(module) -> bool:
    """cityscapesscripts' ``json2instanceImg`` draws the instance ids into a 32-bit "I" image
    and saves it as PNG, which Pillow 13 refuses. Where Pillow cannot, replace it (in
    ``module``: ``json2instanceImg`` itself or a module that imported the function) by one
    that draws the same image and saves the ids as a 16-bit PNG, the format of the official
    ``*_gtFine_instanceIds.png``. Returns whether it was patched."""
    original = getattr(module, "json2instanceImg", None)
    if original is None or getattr(original, "_panoptic_curriculum_fix", False):
        return False
    if pillow_writes_int32_png():
        return False
    source = sys.modules[original.__module__]  # createInstanceImage and Annotation live there

    def json2instanceImg(inJson, outImg, encoding="ids"):
        import numpy as np
        from PIL import Image

        annotation = source.Annotation()
        annotation.fromJsonFile(inJson)
        image = source.createInstanceImage(annotation, encoding)
        if image is None:
            raise ValueError(f"unknown encoding {encoding!r}; use 'ids' or 'trainIds'")
        ids = np.asarray(image, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.uint16).max):
            raise ValueError(
                f"instance ids of {inJson} span {ids.min()}..{ids.max()}, outside a 16-bit PNG"
            )
        Image.fromarray(ids.astype(np.uint16)).save(outImg)

    json2instanceImg._panoptic_curriculum_fix = True
    json2instanceImg.__doc__ = original.__doc__
    module.json2instanceImg = json2instanceImg
    return True


def install_cityscapesscripts_fixes() -> list:
    """Register the cityscapesscripts fixes (each applied when its module is imported, and
    inert where the library already works). Returns the modules they watch; empty when
    cityscapesscripts is not installed."""
    if importlib.util.find_spec("cityscapesscripts") is None:
        return []
    fixes = [
        (_CS_PIXEL_EVAL, patch_module_in1d),
        (_CS_INSTANCE_EVAL, patch_module_in1d),
        (_CS_INSTANCE_EVAL, patch_instance_eval_json),
        (_CS_JSON2INSTANCE, patch_json2instance_img),
        (_CS_TRAINID_INSTANCE, patch_json2instance_img),
    ]
    for name, fn in fixes:
        when_imported(name, fn)
    return sorted({name for name, _ in fixes})
