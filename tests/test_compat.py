"""Tests of the Detectron2 v0.6 compatibility layer (panoptic_curriculum.compat).

Every piece gets a test that exercises the detectron2 code that needs it (and would fail
without it on this installation: NumPy 2, Pillow >= 10, setuptools without pkg_resources,
detectron2 built without ``detectron2._C``), plus a test that the piece changes nothing where
the thing it supplies already exists.
"""

import copy
import inspect
import json
import os
import sys
import types
import uuid

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import panoptic_curriculum  # noqa: F401  (applies the compatibility layer)
from panoptic_curriculum import compat

import detectron2  # noqa: E402
import detectron2.layers  # noqa: E402
import pycocotools.mask as mask_util  # noqa: E402
from detectron2 import model_zoo  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.layers import deform_conv as d2_deform_conv  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture
def dataset_name():
    """A throwaway dataset name, removed from both catalogs afterwards."""
    name = f"_test_compat_{uuid.uuid4().hex[:10]}"
    yield name
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


# ---------------------------------------------------------------- apply() itself


def test_apply_runs_once():
    assert compat._APPLIED
    assert compat.apply() == {}  # second call: nothing more to do


# ---------------------------------------------------------------- NumPy aliases


def test_numpy_aliases_present():
    assert np.int is int and np.float is float and np.str is str
    assert np.dtype(np.bool) == np.dtype(bool)


def _write_png(path, array):
    Image.fromarray(array).save(path)


def test_sem_seg_evaluator(tmp_path, dataset_name):
    """detectron2's SemSegEvaluator uses np.int / np.float in process() and evaluate()."""
    from detectron2.evaluation import SemSegEvaluator

    # 3 classes on an 8x8 image: class 0 rows 0-3, class 1 rows 4-7 cols 0-3, class 2 the
    # rest; two ignored pixels in row 0
    gt = np.zeros((8, 8), np.uint8)
    gt[4:, :4] = 1
    gt[4:, 4:] = 2
    gt[0, :2] = 255
    gt_file = str(tmp_path / "a_gt.png")
    _write_png(gt_file, gt)
    image_file = str(tmp_path / "a.jpg")
    DatasetCatalog.register(
        dataset_name, lambda: [{"file_name": image_file, "sem_seg_file_name": gt_file}]
    )
    MetadataCatalog.get(dataset_name).set(
        stuff_classes=["c0", "c1", "c2"], ignore_label=255, evaluator_type="sem_seg"
    )

    def run(pred):
        scores = F.one_hot(torch.as_tensor(pred, dtype=torch.long), 3).permute(2, 0, 1)
        evaluator = SemSegEvaluator(dataset_name, distributed=False)
        evaluator.reset()
        evaluator.process([{"file_name": image_file}], [{"sem_seg": scores.float()}])
        return evaluator.evaluate()["sem_seg"]

    perfect = gt.astype(np.int64)
    perfect[gt == 255] = 2  # anything on ignored pixels
    res = run(perfect)
    assert res["mIoU"] == pytest.approx(100.0)
    assert res["pACC"] == pytest.approx(100.0)

    wrong = perfect.copy()
    wrong[4, :4] = 0  # 4 pixels of class 1 predicted as class 0
    res = run(wrong)
    iou = [30 / 34, 12 / 16, 1.0]
    assert res["IoU-c0"] == pytest.approx(100 * iou[0])
    assert res["IoU-c1"] == pytest.approx(100 * iou[1])
    assert res["IoU-c2"] == pytest.approx(100.0)
    assert res["mIoU"] == pytest.approx(100 * sum(iou) / 3)
    assert res["pACC"] == pytest.approx(100 * 58 / 62)


def test_patch_numpy_noop_when_aliases_exist():
    fake = types.SimpleNamespace(bool=bool, int=int, float=float, str=str)
    before = dict(vars(fake))
    assert compat.patch_numpy(fake) == []
    assert vars(fake) == before


def test_patch_numpy_adds_missing_aliases():
    fake = types.SimpleNamespace(bool=object())
    assert compat.patch_numpy(fake) == ["int", "float", "str"]
    assert (fake.int, fake.float, fake.str) == (int, float, str)


# ---------------------------------------------------------------- Pillow


def test_pillow_linear_and_extent_transform():
    import detectron2.data.transforms as T

    assert Image.LINEAR == Image.BILINEAR
    default = inspect.signature(T.ExtentTransform.__init__).parameters["interp"].default
    assert default == Image.BILINEAR
    assert T.ExtentTransform(src_rect=(0, 0, 8, 8), output_size=(4, 4)).interp == Image.BILINEAR


def test_patch_pillow_noop_when_linear_exists():
    sentinel = object()
    fake = types.SimpleNamespace(LINEAR=sentinel, Resampling=Image.Resampling)
    assert compat.patch_pillow(fake) == []
    assert fake.LINEAR is sentinel


def test_patch_pillow_adds_linear():
    fake = types.SimpleNamespace(Resampling=Image.Resampling)
    assert compat.patch_pillow(fake) == ["LINEAR"]
    assert fake.LINEAR == Image.BILINEAR


# ---------------------------------------------------------------- pkg_resources


def test_model_zoo_config_files():
    path = model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
    assert os.path.isfile(path)
    cfg = model_zoo.get_config("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "PanopticFPN"
    with pytest.raises(RuntimeError):
        model_zoo.get_config_file("COCO-PanopticSegmentation/no_such_config.yaml")


def test_pkg_resources_shim_noop_when_present():
    assert "pkg_resources" in sys.modules
    present = sys.modules["pkg_resources"]
    assert compat.install_pkg_resources_shim() is False
    assert sys.modules["pkg_resources"] is present


def test_pkg_resources_shim_installs_when_absent(monkeypatch):
    import importlib.util

    monkeypatch.delitem(sys.modules, "pkg_resources")
    real_find_spec = importlib.util.find_spec  # hide a real pkg_resources, if any
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pkg_resources" else real_find_spec(name, *a),
    )
    assert compat.install_pkg_resources_shim() is True
    shim = sys.modules["pkg_resources"]
    path = shim.resource_filename("detectron2.model_zoo", "configs/Base-RCNN-FPN.yaml")
    assert os.path.isfile(path)
    with pytest.raises(ImportError):
        shim.resource_filename("no_such_package_xyz", "a.txt")


# ---------------------------------------------------------------- missing detectron2._C


def test_missing_extension_placeholder():
    assert not compat.has_compiled_ops()
    placeholder = sys.modules["detectron2._C"]
    assert isinstance(placeholder, compat._MissingExtension)
    assert detectron2._C is placeholder
    assert issubclass(compat.MissingOperatorError, AttributeError)
    with pytest.raises(compat.MissingOperatorError, match="'some_op'"):
        placeholder.some_op
    assert not hasattr(placeholder, "__file__")  # dunder lookups stay plain AttributeErrors


def test_environment_report_on_a_gpu_machine_without_the_extension(monkeypatch):
    """default_setup's collect_env_info on a CUDA machine: with the stand-in extension it
    reports the extension as not built instead of reading ``detectron2._C.__file__``."""
    from detectron2.utils import collect_env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # no device to describe
    info = collect_env.collect_env_info()
    assert "not built" in info and "detectron2 arch flags" not in info


def _reference_deform_conv(x, offset, weight, mask=None, bias=None, stride=1, pad=0, dil=1):
    """Deformable convolution written after detectron2's CUDA kernel: tap ``k = i * kw + j``
    of offset group ``g`` samples input row ``ho * stride - pad + i * dil + offset[2k]`` and
    column ``wo * stride - pad + j * dil + offset[2k + 1]`` bilinearly (zero outside)."""
    n, c, h, w = x.shape
    o, c_per_group, kh, kw = weight.shape
    groups = c // c_per_group
    ho, wo = offset.shape[-2:]
    taps = kh * kw
    offset_groups = offset.shape[1] // (2 * taps)
    off = offset.reshape(n, offset_groups, taps, 2, ho, wo)
    m = None if mask is None else mask.reshape(n, offset_groups, taps, ho, wo)
    base_h = (torch.arange(ho, dtype=x.dtype) * stride - pad).view(ho, 1)
    base_w = (torch.arange(wo, dtype=x.dtype) * stride - pad).view(1, wo)
    cols = x.new_zeros(n, c, taps, ho, wo)
    for ch in range(c):
        g = ch // (c // offset_groups)
        img = x[:, ch]  # [n, h, w]
        for k in range(taps):
            i, j = divmod(k, kw)
            ph = base_h + i * dil + off[:, g, k, 0]  # [n, ho, wo]
            pw = base_w + j * dil + off[:, g, k, 1]
            inside = (ph > -1) & (pw > -1) & (ph < h) & (pw < w)
            h0, w0 = torch.floor(ph), torch.floor(pw)
            val = torch.zeros_like(ph)
            for dh in (0, 1):
                for dw in (0, 1):
                    hh, ww = h0 + dh, w0 + dw
                    wgt = (1 - (ph - hh).abs()) * (1 - (pw - ww).abs())
                    ok = inside & (hh >= 0) & (hh <= h - 1) & (ww >= 0) & (ww <= w - 1)
                    hi = hh.clamp(0, h - 1).long()
                    wi = ww.clamp(0, w - 1).long()
                    v = img[torch.arange(n).view(n, 1, 1), hi, wi]
                    val = val + torch.where(ok, wgt * v, torch.zeros_like(v))
            if m is not None:
                val = val * m[:, g, k]
            cols[:, ch, k] = val
    cols = cols.reshape(n, groups, c_per_group, taps, ho, wo)
    wg = weight.reshape(groups, o // groups, c_per_group, taps)
    out = torch.einsum("ngckhw,gock->ngohw", cols, wg).reshape(n, o, ho, wo)
    if bias is not None:
        out = out + bias.view(1, o, 1, 1)
    return out


def _deform(in_ch=4, out_ch=6, k=3, stride=1, padding=1, dilation=1, groups=1, dg=1):
    torch.manual_seed(0)
    layer = detectron2.layers.DeformConv(
        in_ch,
        out_ch,
        k,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        deformable_groups=dg,
    ).double()
    return layer


def _modulated(in_ch=4, out_ch=6, k=3, stride=1, padding=1, dilation=1, groups=1, dg=1):
    torch.manual_seed(0)
    layer = detectron2.layers.ModulatedDeformConv(
        in_ch,
        out_ch,
        k,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        deformable_groups=dg,
        bias=True,
    ).double()
    torch.nn.init.normal_(layer.bias)
    return layer


CONV_SETTINGS = [
    dict(stride=1, padding=1, dilation=1),
    dict(stride=2, padding=0, dilation=1),
    dict(stride=1, padding=2, dilation=2),
]


def _out_size(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


@pytest.mark.parametrize("setting", CONV_SETTINGS)
def test_deform_conv_zero_offset_is_conv2d(setting):
    layer = _deform(**setting)
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    ho, wo = (_out_size(s, 3, **setting) for s in (7, 9))
    offset = torch.zeros(2, 18, ho, wo, dtype=torch.float64)
    expected = F.conv2d(x, layer.weight, **setting)
    torch.testing.assert_close(layer(x, offset), expected)


@pytest.mark.parametrize("setting", CONV_SETTINGS)
def test_modulated_deform_conv_zero_offset_unit_mask_is_conv2d(setting):
    layer = _modulated(**setting)
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    ho, wo = (_out_size(s, 3, **setting) for s in (7, 9))
    offset = torch.zeros(2, 18, ho, wo, dtype=torch.float64)
    mask = torch.ones(2, 9, ho, wo, dtype=torch.float64)
    expected = F.conv2d(x, layer.weight, layer.bias, **setting)
    torch.testing.assert_close(layer(x, offset, mask), expected)


def _shifted_conv(x, weight, bias, dy, dx):
    """A 3x3, padding 1 convolution read at ``(v + dy, u + dx)``: its output ``[..., v, u]``
    is ``sum_ij weight[..., i, j] * x[..., v - 1 + i + dy, u - 1 + j + dx]``, zero outside."""
    p = max(abs(dy), abs(dx))
    h, w = x.shape[-2:]
    full = F.conv2d(F.pad(x, (p, p, p, p)), weight, bias, padding=1)  # output index o = v + p
    return full[..., p + dy : p + dy + h, p + dx : p + dx + w]


@pytest.mark.parametrize("dy,dx", [(1, 0), (0, 2), (-2, 1), (3, -1)])
def test_deform_conv_integer_offset_is_shifted_conv(dy, dx):
    """Offsets are (dy, dx) pairs per kernel tap, as in detectron2's kernel."""
    layer = _deform()
    mod = _modulated()
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    offset = torch.zeros(2, 18, 7, 9, dtype=torch.float64)
    offset[:, 0::2] = dy
    offset[:, 1::2] = dx
    mask = torch.ones(2, 9, 7, 9, dtype=torch.float64)
    torch.testing.assert_close(layer(x, offset), _shifted_conv(x, layer.weight, None, dy, dx))
    torch.testing.assert_close(mod(x, offset, mask), _shifted_conv(x, mod.weight, mod.bias, dy, dx))


@pytest.mark.parametrize(
    "setting,groups,dg",
    [(CONV_SETTINGS[0], 1, 1), (CONV_SETTINGS[1], 2, 1), (CONV_SETTINGS[2], 1, 2)],
)
def test_deform_conv_fractional_offsets_match_detectron2_kernel(setting, groups, dg):
    """Random fractional per-tap offsets (and a random mask) against a direct transcription
    of detectron2's CUDA kernel: checks the per-tap (dy, dx) layout and mask layout."""
    layer = _deform(groups=groups, dg=dg, **setting)
    mod = _modulated(groups=groups, dg=dg, **setting)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64, generator=gen)
    ho, wo = (_out_size(s, 3, **setting) for s in (7, 9))
    offset = 3 * torch.rand(2, dg * 18, ho, wo, dtype=torch.float64, generator=gen) - 1.5
    mask = torch.rand(2, dg * 9, ho, wo, dtype=torch.float64, generator=gen)
    s, p, d = setting["stride"], setting["padding"], setting["dilation"]
    torch.testing.assert_close(
        layer(x, offset), _reference_deform_conv(x, offset, layer.weight, None, None, s, p, d)
    )
    torch.testing.assert_close(
        mod(x, offset, mask),
        _reference_deform_conv(x, offset, mod.weight, mask, mod.bias, s, p, d),
    )


def test_deform_conv_gradients():
    layer = _deform()
    mod = _modulated()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    offset = torch.rand(1, 18, 5, 6, dtype=torch.float64, generator=gen) - 0.5
    offset.requires_grad_(True)
    mask = torch.rand(1, 9, 5, 6, dtype=torch.float64, generator=gen, requires_grad=True)

    layer(x, offset).square().sum().backward()
    for t in (x, offset, layer.weight):
        assert t.grad is not None and t.grad.abs().sum() > 0
    x.grad = offset.grad = None
    mod(x, offset, mask).square().sum().backward()
    for t in (x, offset, mask, mod.weight, mod.bias):
        assert t.grad is not None and t.grad.abs().sum() > 0

    # analytic gradients are right (offsets kept away from integer sampling positions)
    w = layer.weight.detach().clone().requires_grad_(True)
    off = 0.25 + 0.5 * torch.rand(1, 18, 3, 3, dtype=torch.float64, generator=gen)
    off.requires_grad_(True)
    xs = torch.randn(1, 4, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: d2_deform_conv.deform_conv(a, b, c, 1, 1, 1, 1, 1), (xs, off, w)
    )


def test_rotated_ops_raise_missing_operator():
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 6.0, 30.0], [12.0, 10.0, 4.0, 6.0, 0.0]])
    scores = torch.tensor([0.9, 0.8])
    with pytest.raises(compat.MissingOperatorError, match="'box_iou_rotated'"):
        pairwise_iou_rotated(boxes, boxes)
    with pytest.raises(compat.MissingOperatorError, match="'nms_rotated'"):
        detectron2.layers.nms_rotated(boxes, scores, 0.5)
    pooler = detectron2.layers.ROIAlignRotated((2, 2), spatial_scale=1.0, sampling_ratio=0)
    rois = torch.tensor([[0.0, 4.0, 4.0, 3.0, 3.0, 30.0]])
    with pytest.raises(compat.MissingOperatorError, match="'roi_align_rotated_forward'"):
        pooler(torch.rand(1, 1, 8, 8), rois)
    with pytest.raises(compat.MissingOperatorError, match="compiled C\\+\\+/CUDA extension"):
        pairwise_iou_rotated(boxes, boxes)


def test_batched_nms_rotated_raises_missing_operator():
    """batched_nms_rotated (used by RRPN and the rotated ROI heads) calls the module-level
    ``nms_rotated`` of ``detectron2.layers.nms``."""
    boxes = torch.tensor([[10.0, 10.0, 4.0, 6.0, 30.0], [12.0, 10.0, 4.0, 6.0, 0.0]])
    with pytest.raises(compat.MissingOperatorError, match="'nms_rotated'"):
        detectron2.layers.batched_nms_rotated(
            boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), 0.5
        )


def test_has_compiled_ops_sees_a_real_extension(monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2._C", types.ModuleType("detectron2._C"))
    assert compat.has_compiled_ops()


def test_extension_patches_noop_with_compiled_ops(monkeypatch):
    from detectron2.evaluation import coco_evaluation

    nms = sys.modules["detectron2.layers.nms"]  # detectron2.layers.nms is also a function
    monkeypatch.setattr(compat, "has_compiled_ops", lambda: True)
    before = (
        sys.modules["detectron2._C"],
        d2_deform_conv.deform_conv,
        d2_deform_conv.modulated_deform_conv,
        nms.nms_rotated,
        coco_evaluation.COCOeval_opt,
    )
    assert compat.install_missing_extension() is False
    assert compat.patch_layers_without_extension() is False
    assert compat.patch_coco_eval_without_extension() is False
    after = (
        sys.modules["detectron2._C"],
        d2_deform_conv.deform_conv,
        d2_deform_conv.modulated_deform_conv,
        nms.nms_rotated,
        coco_evaluation.COCOeval_opt,
    )
    assert all(a is b for a, b in zip(before, after))


def test_nms_rotated_replacement_is_scriptable():
    """Scripted code that references nms_rotated compiles, and running it gives the
    missing-operator message (not a TorchScript compile error)."""
    nms = sys.modules["detectron2.layers.nms"]
    with pytest.raises(compat.MissingOperatorError) as info:
        nms.nms_rotated(torch.zeros(1, 5), torch.ones(1), 0.5)
    assert str(info.value) == compat._missing_message("nms_rotated")

    def keep_rotated(boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return detectron2.layers.nms_rotated(boxes, scores, 0.5)

    scripted = torch.jit.script(keep_rotated)
    torch.jit.script(nms.batched_nms_rotated)  # compiles too
    boxes = torch.tensor([[10.0, 10.0, 4.0, 6.0, 30.0], [12.0, 10.0, 4.0, 6.0, 0.0]])
    with pytest.raises(Exception, match="MissingOperatorError: detectron2 operator 'nms_rotated'"):
        scripted(boxes, torch.tensor([0.9, 0.8]))


# ---------------------------------------------------------------- MapDataset drops (Python 3.11)


def test_train_loader_skips_samples_the_mapper_drops():
    """A mapper returning None drops the sample: the loader draws another one instead (v0.6
    calls random.sample on a set there, a TypeError on Python >= 3.11)."""
    from detectron2.data import build_detection_train_loader

    dicts = [{"image_id": i} for i in range(6)]
    kept = {1, 4}

    def mapper(d):
        return dict(d) if d["image_id"] in kept else None

    loader = build_detection_train_loader(
        dicts, mapper=mapper, total_batch_size=2, num_workers=0, aspect_ratio_grouping=False
    )
    it = iter(loader)
    seen = [d["image_id"] for _ in range(4) for d in next(it)]
    assert len(seen) == 8 and set(seen) == kept


def test_map_dataset_all_dropped_raises():
    from detectron2.data.common import MapDataset

    with pytest.raises(RuntimeError, match="returned None for every sample"):
        MapDataset([0, 1, 2], lambda x: None)[1]


def test_patch_map_dataset_noop_where_drops_work():
    class Fine:
        def __init__(self, dataset, map_func):
            self.dataset, self.map_func = dataset, map_func

        def __getitem__(self, idx):
            out = self.map_func(self.dataset[idx])
            return self.map_func(self.dataset[1]) if out is None else out

    getitem = Fine.__getitem__
    assert compat.patch_map_dataset(Fine) is False
    assert Fine.__getitem__ is getitem


# ---------------------------------------------------------------- LRScheduler hook (torch >= 2)


class _Quadratic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def forward(self, data):
        return {"loss": (self.w * data).square().sum()}


def _trainer_with_step_lr():
    from detectron2.engine import SimpleTrainer, hooks

    model = _Quadratic()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    trainer = SimpleTrainer(model, iter(lambda: torch.ones(2), None), optimizer)
    trainer.register_hooks([hooks.LRScheduler(optimizer, scheduler)])
    return trainer, optimizer, scheduler


def test_lr_scheduler_hook_checkpoints_builtin_scheduler():
    """A torch built-in scheduler's state is in the trainer's checkpoint state, and a resumed
    trainer continues its schedule instead of restarting it."""
    from detectron2.utils.events import EventStorage

    trainer, optimizer, scheduler = _trainer_with_step_lr()
    with EventStorage():
        trainer.train(0, 5)
    assert scheduler.last_epoch == 5 and optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    state = trainer.state_dict()
    assert state["hooks"]["LRScheduler"]["last_epoch"] == 5

    resumed, optimizer2, scheduler2 = _trainer_with_step_lr()
    resumed.load_state_dict(copy.deepcopy(state))
    assert scheduler2.last_epoch == 5
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(0.025)


def test_patch_lr_scheduler_hook_noop_where_it_saves_builtin_schedulers():
    class Fine:
        def __init__(self, optimizer, scheduler):
            self.scheduler = scheduler

        def state_dict(self):
            return self.scheduler.state_dict()

    state_dict = Fine.state_dict
    assert compat.patch_lr_scheduler_hook(Fine) is False
    assert Fine.state_dict is state_dict and not hasattr(Fine, "load_state_dict")


# ---------------------------------------------------------------- Caffe2 stand-in


class _BoxModel(torch.nn.Module):
    """A detectron2-style model: ``list[dict]`` with an ``image`` in, ``Instances`` out; one
    3x3 convolution (2 -> 3 channels) whose channel means become box coordinates."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            feat = self.conv(x["image"][None])[0]  # [3, H, W]
            inst = Instances(x["image"].shape[-2:])
            m = feat.mean(dim=(1, 2))
            inst.pred_boxes = Boxes(torch.stack([m[0], m[1], m[0] + 4, m[1] + m[2].abs()])[None])
            inst.scores = m[2:3].sigmoid()
            outputs.append({"instances": inst})
        return outputs


def test_detectron2_export_and_analysis_import():
    """v0.6's detectron2.export imports caffe2.proto unconditionally; detectron2.utils.analysis
    imports detectron2.export."""
    import detectron2.export as export
    import detectron2.utils.analysis as analysis

    assert callable(export.TracingAdapter)
    assert callable(export.scripting_with_instances) and callable(export.dump_torchscript_IR)
    assert callable(analysis.flop_count_operators) and callable(analysis.parameter_count)


def test_tracing_adapter_and_flop_count():
    from detectron2.export import TracingAdapter
    from detectron2.utils.analysis import flop_count_operators, parameter_count

    model = _BoxModel().eval()
    inputs = [{"image": torch.rand(2, 8, 10)}]
    adapter = TracingAdapter(model, inputs)
    traced = torch.jit.trace(adapter, adapter.flattened_inputs)
    expected = model(inputs)[0]["instances"]
    got = adapter.outputs_schema(traced(inputs[0]["image"]))[0]["instances"]
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, expected.scores)

    # a 3x3 conv, 2 -> 3 channels on 8x10 pixels: 2 * 9 * 3 * 80 multiply-adds
    flops = flop_count_operators(model, inputs)
    assert flops["conv"] == pytest.approx(2 * 9 * 3 * 80 / 1e9)
    assert parameter_count(model)[""] == 2 * 9 * 3 + 3


def test_scripting_with_instances_and_dump_ir(tmp_path):
    from detectron2.export import dump_torchscript_IR, scripting_with_instances

    class Scores(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            inst = Instances((int(x.shape[0]), int(x.shape[1])))
            inst.scores = x.flatten().sigmoid()
            return inst

    scripted = scripting_with_instances(Scores().eval(), {"scores": torch.Tensor})
    x = torch.randn(2, 3)
    torch.testing.assert_close(scripted(x).scores, x.flatten().sigmoid())
    dump_torchscript_IR(scripted, str(tmp_path))
    assert (tmp_path / "model_ts_code.txt").stat().st_size > 0


def test_caffe2_stand_in_raises_when_used():
    from detectron2.export import Caffe2Model

    from caffe2.proto import caffe2_pb2
    from caffe2.python import core

    assert not isinstance(object(), caffe2_pb2.NetDef)
    with pytest.raises(compat.Caffe2UnavailableError, match="caffe2_pb2.NetDef.*TracingAdapter"):
        caffe2_pb2.NetDef()
    with pytest.raises(compat.Caffe2UnavailableError, match="'caffe2.python.core.get_ssa'"):
        core.get_ssa(None)
    with pytest.raises(ImportError, match="no longer ships"):  # as if the import had failed
        Caffe2Model.load_protobuf("unused")
    assert compat.install_caffe2_stand_in() is False  # already installed: nothing to do


def test_caffe2_stand_in_never_shadows_real_caffe2(tmp_path, monkeypatch):
    """A real caffe2 on sys.path is found before the stand-in, and with one importable the
    stand-in is not installed at all."""
    (tmp_path / "caffe2" / "proto").mkdir(parents=True)
    (tmp_path / "caffe2" / "__init__.py").write_text("REAL = True\n")
    (tmp_path / "caffe2" / "proto" / "__init__.py").write_text("")
    (tmp_path / "caffe2" / "proto" / "caffe2_pb2.py").write_text("class NetDef:\n    pass\n")
    import importlib

    def caffe2_modules():
        return {m: mod for m, mod in sys.modules.items() if m.split(".")[0] == "caffe2"}

    saved = caffe2_modules()
    for name in saved:
        del sys.modules[name]
    try:
        monkeypatch.setattr(sys, "path", [str(tmp_path)] + sys.path)
        importlib.invalidate_caches()
        caffe2 = importlib.import_module("caffe2")
        pb2 = importlib.import_module("caffe2.proto.caffe2_pb2")
        assert caffe2.REAL is True and isinstance(pb2.NetDef(), pb2.NetDef)

        without_stand_in = [
            f for f in sys.meta_path if not isinstance(f, compat._Caffe2StandInFinder)
        ]
        monkeypatch.setattr(sys, "meta_path", without_stand_in)
        assert compat.install_caffe2_stand_in() is False
        assert not any(isinstance(f, compat._Caffe2StandInFinder) for f in sys.meta_path)
    finally:
        for name in caffe2_modules():
            del sys.modules[name]
        sys.modules.update(saved)


# ---------------------------------------------------------------- COCO evaluation

COCO_H, COCO_W = 48, 64
# per image: (x0, y0, w, h, dataset category id); all 20 px wide, so a 3 px shift in x gives
# IoU 17 / 23 = 0.739 for boxes and masks alike
COCO_OBJECTS = {
    1: [(5, 5, 20, 20, 3), (35, 10, 20, 30, 7)],
    2: [(10, 10, 20, 20, 7), (30, 20, 20, 20, 3)],
}
COCO_CATS = {3: "cat", 7: "dog"}


def _rect_mask(x0, y0, w, h):
    m = np.zeros((COCO_H, COCO_W), np.uint8)
    m[y0 : y0 + h, x0 : x0 + w] = 1
    return m


def _write_coco(tmp_path):
    images, annotations = [], []
    for image_id, objects in COCO_OBJECTS.items():
        images.append(
            {"id": image_id, "file_name": f"{image_id}.jpg", "height": COCO_H, "width": COCO_W}
        )
        for x0, y0, w, h, cat in objects:
            rle = mask_util.encode(np.asfortranarray(_rect_mask(x0, y0, w, h)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x0, y0, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": rle,
                }
            )
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k, "name": v} for k, v in COCO_CATS.items()],
    }
    path = str(tmp_path / "instances.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _coco_prediction(image_id, dx):
    objects = COCO_OBJECTS[image_id]
    contiguous = {cat: i for i, cat in enumerate(sorted(COCO_CATS))}
    inst = Instances((COCO_H, COCO_W))
    inst.pred_boxes = Boxes(
        torch.tensor([[x0 + dx, y0, x0 + dx + w, y0 + h] for x0, y0, w, h, _ in objects]).float()
    )
    inst.scores = torch.tensor([0.9 - 0.1 * i for i in range(len(objects))])
    inst.pred_classes = torch.tensor([contiguous[c] for *_, c in objects])
    inst.pred_masks = torch.from_numpy(
        np.stack([_rect_mask(x0 + dx, y0, w, h) for x0, y0, w, h, _ in objects]).astype(bool)
    )
    return {"instances": inst}


def test_coco_evaluator_uses_pycocotools():
    from pycocotools.cocoeval import COCOeval

    from detectron2.evaluation import coco_evaluation

    assert coco_evaluation.COCOeval_opt is COCOeval


def test_coco_evaluator(tmp_path, dataset_name):
    from detectron2.data.datasets import load_coco_json
    from detectron2.evaluation import COCOEvaluator

    json_file = _write_coco(tmp_path)
    image_root = str(tmp_path)
    DatasetCatalog.register(
        dataset_name, lambda: load_coco_json(json_file, image_root, dataset_name)
    )
    MetadataCatalog.get(dataset_name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco"
    )
    dicts = DatasetCatalog.get(dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}

    def run(dx):
        evaluator = COCOEvaluator(dataset_name, tasks=("bbox", "segm"), distributed=False)
        evaluator.reset()
        for d in dicts:
            evaluator.process([d], [_coco_prediction(d["image_id"], dx)])
        return evaluator.evaluate()

    res = run(0)
    for task in ("bbox", "segm"):
        assert res[task]["AP"] == pytest.approx(100.0)
        assert res[task]["AP75"] == pytest.approx(100.0)
        assert res[task]["AP-cat"] == pytest.approx(100.0)

    # every object at IoU 0.739: a match at the IoU thresholds 0.50 ... 0.70 (5 of 10)
    res = run(3)
    for task in ("bbox", "segm"):
        assert res[task]["AP"] == pytest.approx(50.0)
        assert res[task]["AP50"] == pytest.approx(100.0)
        assert res[task]["AP75"] == pytest.approx(0.0)


# ---------------------------------------------------------------- panoptic evaluation

PAN_H, PAN_W = 32, 48
# dataset categories; contiguous ids run over all categories, as in detectron2's COCO metadata
PAN_CATS = [
    {"id": 1, "name": "car", "isthing": 1, "color": [0, 0, 142]},
    {"id": 2, "name": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 10, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
    {"id": 20, "name": "road", "isthing": 0, "color": [128, 64, 128]},
]


def _panoptic_gt():
    """Segment id map and segments: sky, road, two cars, one person; VOID (0) strip."""
    ids = np.zeros((PAN_H, PAN_W), np.int64)
    ids[:12] = 7  # sky
    ids[12:30] = 3  # road
    ids[14:22, 4:14] = 11  # car
    ids[16:26, 20:32] = 12  # car
    ids[8:28, 38:44] = 25  # person
    # rows 30, 31 stay VOID
    cats = {7: 10, 3: 20, 11: 1, 12: 1, 25: 2}
    segments = []
    for seg_id, cat in cats.items():
        ys, xs = np.nonzero(ids == seg_id)
        bbox = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
        segments.append(
            {
                "id": seg_id,
                "category_id": cat,
                "iscrowd": 0,
                "area": int(len(xs)),
                "bbox": bbox,
            }
        )
    return ids, segments


def test_coco_panoptic_evaluator(tmp_path, dataset_name):
    from panopticapi.utils import id2rgb, rgb2id

    from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json
    from detectron2.evaluation import COCOPanopticEvaluator

    image_dir, gt_dir = tmp_path / "images", tmp_path / "panoptic"
    image_dir.mkdir()
    gt_dir.mkdir()
    ids, segments = _panoptic_gt()
    Image.fromarray(np.zeros((PAN_H, PAN_W, 3), np.uint8)).save(image_dir / "img_000042.jpg")
    Image.fromarray(id2rgb(ids)).save(gt_dir / "img_000042.png")
    json_file = str(tmp_path / "panoptic.json")
    with open(json_file, "w") as f:
        json.dump(
            {
                "images": [
                    {"id": 42, "file_name": "img_000042.jpg", "height": PAN_H, "width": PAN_W}
                ],
                "annotations": [
                    {"image_id": 42, "file_name": "img_000042.png", "segments_info": segments}
                ],
                "categories": PAN_CATS,
            },
            f,
        )
    meta = {
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(PAN_CATS) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(PAN_CATS) if not c["isthing"]
        },
    }
    DatasetCatalog.register(
        dataset_name,
        lambda: load_coco_panoptic_json(json_file, str(image_dir), str(gt_dir), meta),
    )
    MetadataCatalog.get(dataset_name).set(
        panoptic_root=str(gt_dir),
        image_root=str(image_dir),
        panoptic_json=json_file,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **meta,
    )
    (record,) = DatasetCatalog.get(dataset_name)
    assert record["image_id"] == 42
    assert {s["isthing"] for s in record["segments_info"]} == {True, False}

    # a prediction built from the loaded record: the PNG decoded and the segments with
    # contiguous category ids and isthing, as a panoptic model outputs them
    gt_png = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]), dtype=np.uint32))
    np.testing.assert_array_equal(gt_png, ids)

    def run(pan, segments_info):
        evaluator = COCOPanopticEvaluator(dataset_name, output_dir=str(tmp_path / "out"))
        evaluator.reset()
        output = {"panoptic_seg": (torch.from_numpy(pan.astype(np.int32)), segments_info)}
        evaluator.process([record], [output])
        return evaluator.evaluate()["panoptic_seg"]

    pred_segments = [
        {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
        for s in record["segments_info"]
    ]
    res = run(gt_png, copy.deepcopy(pred_segments))
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert res[key] == pytest.approx(100.0), key

    # one of the two cars missed (its pixels VOID): car RQ = PQ = 1 / 1.5
    missed = gt_png.copy()
    missed[missed == 12] = 0
    res = run(missed, [copy.deepcopy(s) for s in pred_segments if s["id"] != 12])
    assert res["PQ_st"] == pytest.approx(100.0)
    assert res["PQ_th"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert res["PQ"] == pytest.approx(100 * (2 / 3 + 3) / 4)
