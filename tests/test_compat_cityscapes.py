"""The compatibility layer's cityscapesscripts fixes (NumPy 2.4 without ``np.in1d``, Pillow 13
without 32-bit PNG writing, NumPy scalars in JSON, ``matches.json`` in the current
directory): each on the library code that needs it, and each inert where the library works.

The end-to-end runs of the Cityscapes evaluators are in ``test_cityscapes_eval.py``."""

import importlib
import json
import os
import sys
import types

import cv2
import numpy as np
import pytest

import panoptic_curriculum  # noqa: F401  (applies the compatibility layer)
from panoptic_curriculum import compat

import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cs_instance  # noqa: E402
import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_pixel  # noqa: E402
import cityscapesscripts.preparation.createTrainIdInstanceImgs as cs_trainid_instance  # noqa: E402
import cityscapesscripts.preparation.json2instanceImg as cs_json2instance  # noqa: E402

from cityscapes_tree import label_maps, write_tree  # noqa: E402


def test_import_fixes_the_cityscapes_modules():
    """``import panoptic_curriculum`` alone (this file calls no fix itself) fixes the modules
    imported after it."""
    assert getattr(cs_instance.writeDict2JSON, "_panoptic_curriculum_fix", False)
    for module in (cs_pixel, cs_instance):
        assert isinstance(module.np, compat._NumPyWithIn1d) != hasattr(np, "in1d")


# ---------------------------------------------------------------- np.in1d


@pytest.mark.parametrize("module", [cs_pixel, cs_instance], ids=["pixel", "instance"])
def test_evaluations_get_in1d(module):
    a = np.array([[7, 8, 0], [26, 255, 7]], np.uint8)
    got = module.np.in1d(a, [7, 26])
    np.testing.assert_array_equal(got, [True, False, False, True, False, True])
    np.testing.assert_array_equal(module.np.in1d(a, [7], invert=True), ~(a.ravel() == 7))
    assert module.np.uint8 is np.uint8 and module.np.isin is np.isin  # the rest is numpy


def test_numpy_itself_is_unchanged():
    """Only the cityscapesscripts modules' ``np`` global gets ``in1d``, and only where NumPy
    lacks it."""
    if hasattr(np, "in1d"):  # NumPy < 2.4: nothing to fix
        assert cs_pixel.np is np and cs_instance.np is np
    else:
        assert cs_pixel.np is not np and cs_instance.np is not np
        assert "in1d" not in vars(np)


def test_pixel_evaluation_instance_scores(tmp_path):
    """evaluatePair's instance-level part is where np.in1d is called."""
    lab, inst, _ = label_maps([("car", 10, 30, 40, 50)])
    gt = str(tmp_path / "c_000000_000000_gtFine_labelIds.png")
    cv2.imwrite(gt, lab)
    cv2.imwrite(gt.replace("labelIds", "instanceIds"), inst)
    pred = str(tmp_path / "c_000000_000000_pred.png")
    cv2.imwrite(pred, lab)
    args = cs_pixel.args
    saved = dict(vars(args))
    try:
        args.JSONOutput, args.quiet, args.evalPixelAccuracy = False, True, True
        args.evalLabels = []
        results = cs_pixel.evaluateImgLists([pred], [gt], args)
    finally:
        vars(args).clear()
        vars(args).update(saved)
    assert results["averageScoreClasses"] == pytest.approx(1.0)
    assert results["averageScoreInstClasses"] == pytest.approx(1.0)


def test_in1d_patch_inert_where_numpy_has_it():
    module = types.SimpleNamespace(np=types.SimpleNamespace(in1d=lambda *a: None))
    before = module.np
    assert not compat.patch_module_in1d(module)
    assert module.np is before


def test_in1d_patch_where_numpy_lacks_it():
    fake_np = types.ModuleType("numpy")
    fake_np.isin, fake_np.ravel = np.isin, np.ravel
    module = types.SimpleNamespace(np=fake_np)
    assert compat.patch_module_in1d(module)
    np.testing.assert_array_equal(module.np.in1d([[1, 2], [3, 4]], [4, 1]), [1, 0, 0, 1])
    assert module.np.isin is np.isin


# ---------------------------------------------------------------- JSON writer


def test_instance_eval_writes_numpy_scalars_beside_gt_instances(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cs_instance.args, "gtInstancesFile", str(tmp_path / "w" / "gt.json"))
    os.makedirs(tmp_path / "w")
    cs_instance.writeDict2JSON(
        {"n": np.int64(3), "a": np.arange(2), "f": np.float32(0.5)}, "m.json"
    )
    assert not (tmp_path / "m.json").exists()
    with open(tmp_path / "w" / "m.json") as f:
        assert json.load(f) == {"n": 3, "a": [0, 1], "f": 0.5}
    absolute = tmp_path / "elsewhere.json"
    cs_instance.writeDict2JSON({"x": 1}, str(absolute))
    assert json.loads(absolute.read_text()) == {"x": 1}


def _fake_eval_module(writer, writes_matches):
    module = types.SimpleNamespace(writeDict2JSON=writer, args=types.SimpleNamespace())
    if writes_matches:

        def evaluateImgLists(p, g, args):
            writer({}, "matches.json")

    else:

        def evaluateImgLists(p, g, args):
            pass

    module.evaluateImgLists = evaluateImgLists
    return module


def test_json_patch_inert_where_library_works(tmp_path):
    def good_writer(d, name):
        with open(name, "w") as f:
            json.dump(d, f, default=lambda o: o.item())

    module = _fake_eval_module(good_writer, writes_matches=False)
    assert not compat.patch_instance_eval_json(module)
    assert module.writeDict2JSON is good_writer


def test_json_patch_where_library_fails(tmp_path):
    def bad_writer(d, name):
        with open(name, "w") as f:
            json.dump(d, f, default=lambda o: o.__dict__)

    for writes_matches in (False, True):
        module = _fake_eval_module(bad_writer, writes_matches)
        assert compat.patch_instance_eval_json(module)
        assert module.writeDict2JSON is not bad_writer
    module = _fake_eval_module(good := (lambda d, n: None), writes_matches=True)
    assert compat.patch_instance_eval_json(module)  # relative matches.json alone
    assert module.writeDict2JSON is not good


# ---------------------------------------------------------------- json2instanceImg


def test_json2instance_img_writes_16bit_instance_ids(tmp_path):
    dirs = write_tree(tmp_path, splits=("val",))["val"]
    base = os.path.join(dirs["gtFine"], "valcity", "valcity_000001_000019_gtFine_")
    _, want, _ = label_maps([("bicycle", 30, 30, 60, 52), ("car", 70, 26, 110, 50)])
    for module in (cs_json2instance, cs_trainid_instance):
        out = str(tmp_path / f"{module.__name__}.png")
        module.json2instanceImg(base + "polygons.json", out)
        got = cv2.imread(out, cv2.IMREAD_UNCHANGED)
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, want)
    # train-id encoding: car (train id 13) instances become 13000, 13001, ...
    out = str(tmp_path / "train.png")
    cs_json2instance.json2instanceImg(base + "polygons.json", out, "trainIds")
    got = cv2.imread(out, cv2.IMREAD_UNCHANGED)
    assert got[40, 80] == 13000 and got[40, 40] == 18000 and got[60, 5] == 255


def test_json2instance_patch_needed_here_exactly_when_pillow_cannot():
    patched = getattr(cs_json2instance.json2instanceImg, "_panoptic_curriculum_fix", False)
    assert patched == (not compat.pillow_writes_int32_png())


def test_json2instance_patch_inert_where_pillow_writes_int32_png(monkeypatch):
    def original(inJson, outImg, encoding="ids"):
        pass

    module = types.SimpleNamespace(json2instanceImg=original)
    monkeypatch.setattr(compat, "pillow_writes_int32_png", lambda: True)
    assert not compat.patch_json2instance_img(module)
    assert module.json2instanceImg is original


def test_when_imported_runs_after_first_import(tmp_path):
    name = "pc_compat_probe_module"
    (tmp_path / f"{name}.py").write_text("VALUE = 1\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    seen = []
    compat.when_imported(name, lambda m: seen.append(m.VALUE))
    assert seen == []
    try:
        module = __import__(name)
        assert seen == [1] and module.VALUE == 1
        compat.when_imported(name, lambda m: seen.append("now"))  # already imported: at once
        assert seen == [1, "now"]
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(tmp_path))
