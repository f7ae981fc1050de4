"""Tests of the Cityscapes-with-depth dataset on a tiny Cityscapes tree made in tmp_path,
in the real folder layout and file formats."""

import json
import os
import uuid

import numpy as np
import pytest

import panoptic_curriculum  # noqa: F401  (detectron2 compatibility fixes, dataset registration)

import cv2  # noqa: E402
from cityscapesscripts.helpers.labels import id2label, name2label  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

from panoptic_curriculum.data import read_depth  # noqa: E402
from panoptic_curriculum.data.datasets.cityscapes_depth import (  # noqa: E402
    load_cityscapes_depth,
    register_all_cityscapes_depth,
    register_cityscapes_depth,
)

H, W = 64, 128
CITY = "testcity"
SPLIT = "train"
FX, FY, U0, V0 = 141.4, 141.6, 63.7, 31.9  # pixels
BASELINE = 0.209313  # metres
THING_CLASSES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]

# per image: (name, things as (label, x0, y0, x1, y1) with inclusive integer pixel bounds)
IMAGES = [
    ("testcity_000000_000019", [("car", 10, 30, 40, 50), ("person", 60, 20, 70, 50)]),
    ("testcity_000001_000019", [("car", 5, 28, 30, 45), ("car", 80, 30, 120, 52)]),
]
INVALID_PIXELS = [(0, 0), (10, 100), (63, 127)]  # (v, u) with p = 0
ZERO_DISPARITY_PIXEL = (5, 5)  # p = 1: zero disparity, also invalid


def _known_depth() -> np.ndarray:
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    return 4.0 + 0.4 * v + 0.05 * u  # metres, 4 .. 35.6


def _dirs(root):
    cs = os.path.join(str(root), "cityscapes")
    return {k: os.path.join(cs, k, SPLIT) for k in ("leftImg8bit", "gtFine", "disparity", "camera")}


def _write_sample(dirs, name, things):
    for d in dirs.values():
        os.makedirs(os.path.join(d, CITY), exist_ok=True)
    path = {k: os.path.join(dirs[k], CITY, name) for k in dirs}

    rng = np.random.default_rng(0)
    cv2.imwrite(path["leftImg8bit"] + "_leftImg8bit.png", rng.integers(0, 255, (H, W, 3), np.uint8))

    # stuff as polygons, in Cityscapes drawing order (later objects overwrite earlier ones)
    stuff = [
        ("sky", 0, 0, W - 1, 24),
        ("road", 0, 25, W - 1, 55),
        ("ego vehicle", 0, 56, W - 1, H - 1),
    ]
    label_ids = np.zeros((H, W), np.uint8)
    instance_ids = np.zeros((H, W), np.uint16)
    objects = []
    counts = {}
    for label, x0, y0, x1, y1 in stuff + things:
        lid = name2label[label].id
        label_ids[y0 : y1 + 1, x0 : x1 + 1] = lid
        if name2label[label].hasInstances:
            k = counts.get(label, 0)
            counts[label] = k + 1
            instance_ids[y0 : y1 + 1, x0 : x1 + 1] = lid * 1000 + k
        else:
            instance_ids[y0 : y1 + 1, x0 : x1 + 1] = lid
        objects.append({"label": label, "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]})
    train_ids = np.full((H, W), 255, np.uint8)
    for lid in np.unique(label_ids):
        t = id2label[int(lid)].trainId
        train_ids[label_ids == lid] = 255 if t < 0 else t
    gt = path["gtFine"] + "_gtFine_"
    cv2.imwrite(gt + "labelIds.png", label_ids)
    cv2.imwrite(gt + "instanceIds.png", instance_ids)
    cv2.imwrite(gt + "labelTrainIds.png", train_ids)
    with open(gt + "polygons.json", "w") as f:
        json.dump({"imgHeight": H, "imgWidth": W, "objects": objects}, f)

    p = np.round(BASELINE * FX / _known_depth() * 256.0) + 1
    for v, u in INVALID_PIXELS:
        p[v, u] = 0
    p[ZERO_DISPARITY_PIXEL] = 1
    cv2.imwrite(path["disparity"] + "_disparity.png", p.astype(np.uint16))

    camera = {
        "extrinsic": {
            "baseline": BASELINE,
            "pitch": 0.038,
            "roll": 0.0,
            "yaw": -0.0195,
            "x": 1.7,
            "y": 0.1,
            "z": 1.22,
        },
        "intrinsic": {"fx": FX, "fy": FY, "u0": U0, "v0": V0},
    }
    with open(path["camera"] + "_camera.json", "w") as f:
        json.dump(camera, f)


@pytest.fixture
def tree(tmp_path):
    dirs = _dirs(tmp_path)
    for name, things in IMAGES:
        _write_sample(dirs, name, things)
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


def test_load_cityscapes_depth(tree):
    dicts = _load(tree)
    _check_dicts(dicts, tree)

    # the semantic file is the labelTrainIds PNG: car pixels -> train id 13, ego vehicle -> 255
    sem = cv2.imread(dicts[0]["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
    assert sem.shape == (H, W) and sem[40, 20] == 13 and sem[60, 5] == 255 and sem[5, 5] == 10

    truth = _known_depth()
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
