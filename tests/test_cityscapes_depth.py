"""Tests of the Cityscapes-with-depth dataset and its preparation on a tiny Cityscapes tree
made in tmp_path, in the real folder layout and file formats."""

import importlib.util
import json
import os
import shutil
import uuid

import numpy as np
import pytest

import panoptic_curriculum  # noqa: F401  (detectron2 compatibility fixes, dataset registration)

import cv2  # noqa: E402
from cityscapesscripts.helpers.labels import name2label  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

from panoptic_curriculum.data import read_depth  # noqa: E402
from panoptic_curriculum.data.datasets.cityscapes_depth import (  # noqa: E402
    load_cityscapes_depth,
    register_all_cityscapes_depth,
    register_cityscapes_depth,
)
from panoptic_curriculum.data.datasets.cityscapes_prepare import prepare_cityscapes  # noqa: E402

from cityscapes_tree import (  # noqa: E402
    BASELINE,
    FX,
    FY,
    H,
    INVALID_PIXELS,
    SPLITS,
    THING_CLASSES,
    U0,
    V0,
    W,
    ZERO_DISPARITY_PIXEL,
    known_depth,
    label_maps,
    split_dirs,
    write_tree,
)

CITY, IMAGES = SPLITS["train"]
SPLIT = "train"


def _dirs(root):
    return split_dirs(root, SPLIT)


@pytest.fixture
def tree(tmp_path):
    """The train split in the official layout, prepared (labelTrainIds, panoptic) by the
    plugin's preparation step as a user would."""
    dirs = write_tree(tmp_path, splits=(SPLIT,))[SPLIT]
    prepare_cityscapes(os.path.join(str(tmp_path), "cityscapes"), splits=(SPLIT,), workers=1)
    return dirs


def _load(dirs):
    return load_cityscapes_depth(
        dirs["leftImg8bit"], dirs["gtFine"], dirs["disparity"], dirs["camera"]
    )


def _check_dicts(dicts, dirs):
    assert len(dicts) == len(IMAGES)
    for d, (name, things) in zip(dicts, IMAGES):
        assert d["file_name"] == os.path.join(dirs["leftImg8bit"], CITY, name + "_leftImg8bit.png")
        assert d["sem_seg_file_name"] == os.path.join(
            dirs["gtFine"], CITY, name + "_gtFine_labelTrainIds.png"
        )
        assert d["depth_file_name"] == os.path.join(
            dirs["disparity"], CITY, name + "_disparity.png"
        )
        assert (d["height"], d["width"]) == (H, W)
        assert d["depth_format"] == "cityscapes_disparity"
        assert d["stereo_baseline"] == pytest.approx(BASELINE)
        assert isinstance(d["stereo_baseline"], float)
        assert d["intrinsics"] == [[FX, 0.0, U0], [0.0, FY, V0], [0.0, 0.0, 1.0]]

        annos = d["annotations"]
        assert len(annos) == len(things)
        got = sorted((a["category_id"], tuple(np.round(a["bbox"], 3))) for a in annos)
        # detectron2 dilates the integer polygon by half a pixel: the box covers whole pixels
        want = sorted(
            (THING_CLASSES.index(label), (x0, y0, x1 + 1.0, y1 + 1.0))
            for label, x0, y0, x1, y1 in things
        )
        assert got == want
        for a in annos:
            assert a["bbox_mode"] == BoxMode.XYXY_ABS
            assert not a["iscrowd"]
            assert len(a["segmentation"]) == 1 and len(a["segmentation"][0]) >= 8

        # panoptic fields (detectron2's Cityscapes panoptic loader), in the model's ids
        assert d["image_id"] == name
        assert d["pan_seg_file_name"] == os.path.join(
            os.path.dirname(dirs["gtFine"]),
            f"cityscapes_panoptic_{SPLIT}",
            name + "_gtFine_panoptic.png",
        )
        want_segments = {(7, 0, False), (23, 10, False)}  # road, sky: train ids; ego: void
        seen = {}
        for label, *_ in things:
            k = seen[label] = seen.get(label, -1) + 1
            want_segments.add((name2label[label].id * 1000 + k, THING_CLASSES.index(label), True))
        got_segments = {(g["id"], g["category_id"], g["isthing"]) for g in d["segments_info"]}
        assert got_segments == want_segments


def test_load_cityscapes_depth(tree):
    dicts = _load(tree)
    _check_dicts(dicts, tree)

    # the semantic file is the labelTrainIds PNG: car pixels -> train id 13, ego vehicle -> 255
    sem = cv2.imread(dicts[0]["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
    assert sem.shape == (H, W) and sem[40, 20] == 13 and sem[60, 5] == 255 and sem[5, 5] == 10

    truth = known_depth()
    disparity = BASELINE * FX / truth
    half_step = 0.5 / 256.0  # rounding of disparity * 256
    # |b f / d' - b f / d| <= b f delta / (d (d - delta)) for |d' - d| <= delta, + float32
    bound = BASELINE * FX * half_step / (disparity * (disparity - half_step)) + 1e-5 * truth
    assert bound.max() < 0.1  # the test is not vacuous
    invalid = np.zeros((H, W), bool)
    for v, u in INVALID_PIXELS + [ZERO_DISPARITY_PIXEL]:
        invalid[v, u] = True
    for d in dicts:
        depth = read_depth(d)
        assert depth.dtype == np.float32 and depth.shape == (H, W)
        assert np.all(depth[invalid] == 0.0)
        assert np.all(np.abs(depth[~invalid] - truth[~invalid]) <= bound[~invalid])


def test_large_splits_load_through_detectron2s_pool(tree, monkeypatch):
    """Small splits convert the polygons in this process, large ones through detectron2's
    load_cityscapes_instances (a pool): the same dicts either way."""
    from panoptic_curriculum.data.datasets import cityscapes_depth

    calls = []
    original = cityscapes_depth.load_cityscapes_instances
    monkeypatch.setattr(
        cityscapes_depth,
        "load_cityscapes_instances",
        lambda *a, **k: calls.append(a) or original(*a, **k),
    )
    small = _load(tree)
    assert calls == []
    monkeypatch.setattr(cityscapes_depth, "POOL_MIN_IMAGES", 1)
    large = _load(tree)
    assert len(calls) == 1
    assert large == small


def test_register_under_new_name(tree):
    name = f"test_cityscapes_depth_{uuid.uuid4().hex}"
    register_cityscapes_depth(
        name, tree["leftImg8bit"], tree["gtFine"], tree["disparity"], tree["camera"]
    )
    try:
        register_cityscapes_depth(name, "elsewhere", "elsewhere", "elsewhere", "elsewhere")
        _check_dicts(DatasetCatalog.get(name), tree)
        assert MetadataCatalog.get(name).disparity_dir == tree["disparity"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_official_names_registered_lazily():
    register_all_cityscapes_depth("/nonexistent/cityscapes-root")  # again: no crash, no disk
    for split in ("train", "val"):
        name = f"cityscapes_fine_depth_{split}"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "cityscapes_depth"
        assert meta.ignore_label == 255
        assert meta.has_depth is True
        assert meta.thing_classes == THING_CLASSES
        assert len(meta.stuff_classes) == 19 and meta.stuff_classes[13] == "car"
        assert len(meta.thing_colors) == 8 and len(meta.stuff_colors) == 19
        assert meta.image_dir.endswith(os.path.join("cityscapes", "leftImg8bit", split))
        assert meta.gt_dir.endswith(os.path.join("cityscapes", "gtFine", split))
        # where detectron2's cityscapes_fine_panoptic_<split> reads the panoptic ground truth
        d2_meta = MetadataCatalog.get(f"cityscapes_fine_panoptic_{split}")
        assert meta.panoptic_json.endswith(d2_meta.panoptic_json.split("datasets/", 1)[-1])
        assert meta.panoptic_root.endswith(os.path.join("gtFine", f"cityscapes_panoptic_{split}"))
        assert meta.label_divisor == 1000
        # Cityscapes label id -> the model's ids: thing index, stuff train id
        assert meta.thing_dataset_id_to_contiguous_id == {
            name2label[n].id: i for i, n in enumerate(THING_CLASSES)
        }
        assert meta.stuff_dataset_id_to_contiguous_id == {
            7: 0,
            8: 1,
            11: 2,
            12: 3,
            13: 4,
            17: 5,
            19: 6,
            20: 7,
            21: 8,
            22: 9,
            23: 10,
        }


def _camera_file(dirs, i=1):
    return os.path.join(dirs["camera"], CITY, IMAGES[i][0] + "_camera.json")


def _edit_camera(dirs, edit):
    path = _camera_file(dirs)
    with open(path) as f:
        cam = json.load(f)
    edit(cam)
    with open(path, "w") as f:
        json.dump(cam, f)
    return path


def test_missing_disparity_file(tree):
    path = os.path.join(tree["disparity"], CITY, IMAGES[1][0] + "_disparity.png")
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="disparity") as e:
        _load(tree)
    assert path in str(e.value)


def test_missing_camera_file(tree):
    path = _camera_file(tree)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="camera") as e:
        _load(tree)
    assert path in str(e.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["intrinsic"].update(fx=0.0), "focal"),
        (lambda c: c["intrinsic"].update(fy=-3.0), "focal"),
        (lambda c: c["extrinsic"].update(baseline=0.0), "baseline"),
        (lambda c: c["intrinsic"].pop("v0"), "intrinsic.v0"),
        (lambda c: c.pop("extrinsic"), "extrinsic.baseline"),
    ],
    ids=["fx_zero", "fy_negative", "baseline_zero", "missing_v0", "missing_extrinsic"],
)
def test_bad_camera_file(tree, edit, message):
    path = _edit_camera(tree, edit)
    with pytest.raises(ValueError, match=message) as e:
        _load(tree)
    assert path in str(e.value)


def test_image_folder_without_images(tmp_path):
    dirs = _dirs(tmp_path)
    os.makedirs(os.path.join(dirs["leftImg8bit"], CITY))
    with pytest.raises(FileNotFoundError, match="no Cityscapes images") as e:
        _load(dirs)
    assert dirs["leftImg8bit"] in str(e.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        _load(_dirs(tmp_path / "absent"))


# ---------------------------------------------------------------- preparation


def _prepared_split(root, split):
    """labelTrainIds of every image of ``split`` equal the expected ones; the panoptic JSON
    and PNGs hold every image's segments (void where the label is ignored in evaluation)."""
    from panopticapi.utils import rgb2id

    city, images = SPLITS[split]
    dirs = split_dirs(root, split)
    gt_root = os.path.dirname(dirs["gtFine"])
    with open(os.path.join(gt_root, f"cityscapes_panoptic_{split}.json")) as f:
        pan = json.load(f)
    assert len(pan["categories"]) == 19
    assert [im["id"] for im in pan["images"]] == [name for name, _ in images]
    for (name, things), ann in zip(images, pan["annotations"]):
        label_ids, instance_ids, train_ids = label_maps(things)
        base = os.path.join(dirs["gtFine"], city, name + "_gtFine_")
        got = cv2.imread(base + "labelTrainIds.png", cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(got, train_ids)
        png = cv2.imread(
            os.path.join(gt_root, f"cityscapes_panoptic_{split}", ann["file_name"]),
            cv2.IMREAD_COLOR,
        )
        ids = rgb2id(png[:, :, ::-1])
        want = np.where(label_ids == name2label["ego vehicle"].id, 0, instance_ids)
        np.testing.assert_array_equal(ids, want)
        assert {s["id"] for s in ann["segments_info"]} == set(np.unique(want)) - {0}


def test_prepare_makes_the_derived_files(tmp_path):
    write_tree(tmp_path)
    cs = os.path.join(str(tmp_path), "cityscapes")
    report = prepare_cityscapes(cs, workers=1)
    assert report == {
        split: {"labelTrainIds": 2, "labelIds": 0, "instanceIds": 0, "panoptic": 2}
        for split in ("train", "val")
    }
    for split in ("train", "val"):
        _prepared_split(tmp_path, split)
    # again: nothing to do
    assert prepare_cityscapes(cs, splits=("val",), workers=1) == {
        "val": {"labelTrainIds": 0, "labelIds": 0, "instanceIds": 0, "panoptic": 0}
    }
    # label and instance id PNGs are made from the polygons where missing (json2instanceImg
    # through the Pillow 13 fix), equal to the official ones; --overwrite remakes the rest
    city, images = SPLITS["val"]
    base = os.path.join(split_dirs(tmp_path, "val")["gtFine"], city, images[1][0] + "_gtFine_")
    os.remove(base + "labelIds.png")
    os.remove(base + "instanceIds.png")
    assert prepare_cityscapes(cs, splits=("val",), overwrite=True, workers=2) == {
        "val": {"labelTrainIds": 2, "labelIds": 1, "instanceIds": 1, "panoptic": 2}
    }
    label_ids, instance_ids, _ = label_maps(images[1][1])
    got = cv2.imread(base + "instanceIds.png", cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, instance_ids)
    np.testing.assert_array_equal(
        cv2.imread(base + "labelIds.png", cv2.IMREAD_UNCHANGED), label_ids
    )
    _prepared_split(tmp_path, "val")


@pytest.mark.parametrize(
    "remove, download",
    [
        ("camera/val", "camera_trainvaltest.zip"),
        ("disparity/val/valcity/valcity_000001_000019_disparity.png", "disparity_trainvaltest.zip"),
        (
            "gtFine/val/valcity/valcity_000000_000019_gtFine_polygons.json",
            "gtFine_trainvaltest.zip",
        ),
        ("leftImg8bit/val/valcity", "leftImg8bit_trainvaltest.zip"),
    ],
    ids=["camera", "disparity", "polygons", "images"],
)
def test_prepare_names_the_missing_download(tmp_path, remove, download):
    write_tree(tmp_path, splits=("val",))
    cs = os.path.join(str(tmp_path), "cityscapes")
    path = os.path.join(cs, remove)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    with pytest.raises(FileNotFoundError, match=download):
        prepare_cityscapes(cs, splits=("val",), workers=1)


def test_prepare_tool(tmp_path):
    write_tree(tmp_path, splits=("val",))
    spec = importlib.util.spec_from_file_location(
        "prepare_cityscapes_tool",
        os.path.join(os.path.dirname(__file__), "..", "tools", "prepare_cityscapes.py"),
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cs = os.path.join(str(tmp_path), "cityscapes")
    report = tool.main(["--cityscapes-dir", cs, "--splits", "val", "--workers", "1"])
    assert report["val"]["labelTrainIds"] == 2 and report["val"]["panoptic"] == 2
    _prepared_split(tmp_path, "val")
