"""A tiny Cityscapes tree in the official layout, holding exactly the files of the official
downloads (leftImg8bit, gtFine, disparity, camera): images, polygons, label and instance id
PNGs, 16-bit disparity PNGs and camera JSONs. Derived files (labelTrainIds, panoptic) are
made by ``tools/prepare_cityscapes.py``, as a user would."""

import json
import os

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import id2label, name2label

H, W = 64, 128
FX, FY, U0, V0 = 141.4, 141.6, 63.7, 31.9  # pixels
BASELINE = 0.209313  # metres
THING_CLASSES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]

# stuff as polygons, in Cityscapes drawing order (later objects overwrite earlier ones);
# (label, x0, y0, x1, y1) with inclusive integer pixel bounds
STUFF = [
    ("sky", 0, 0, W - 1, 24),
    ("road", 0, 25, W - 1, 55),
    ("ego vehicle", 0, 56, W - 1, H - 1),
]
# split -> city, [(name, things)]
SPLITS = {
    "train": (
        "testcity",
        [
            ("testcity_000000_000019", [("car", 10, 30, 40, 50), ("person", 60, 20, 70, 50)]),
            ("testcity_000001_000019", [("car", 5, 28, 30, 45), ("car", 80, 30, 120, 52)]),
        ],
    ),
    "val": (
        "valcity",
        [
            ("valcity_000000_000019", [("car", 20, 30, 50, 50), ("person", 90, 18, 100, 48)]),
            ("valcity_000001_000019", [("bicycle", 30, 30, 60, 52), ("car", 70, 26, 110, 50)]),
        ],
    ),
}
INVALID_PIXELS = [(0, 0), (10, 100), (63, 127)]  # (v, u) with p = 0
ZERO_DISPARITY_PIXEL = (5, 5)  # p = 1: zero disparity, also invalid
DOWNLOADS = ("leftImg8bit", "gtFine", "disparity", "camera")


def known_depth() -> np.ndarray:
    """The depth every sample's disparity encodes, ``(H, W)`` metres, 4 .. 35.6."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    return 4.0 + 0.4 * v + 0.05 * u


def split_dirs(root, split):
    """download name -> ``<root>/cityscapes/<download>/<split>``."""
    cs = os.path.join(str(root), "cityscapes")
    return {k: os.path.join(cs, k, split) for k in DOWNLOADS}


def label_maps(things):
    """(labelIds uint8, instanceIds uint16, trainIds uint8) ``(H, W)`` of one sample."""
    label_ids = np.zeros((H, W), np.uint8)
    instance_ids = np.zeros((H, W), np.uint16)
    counts = {}
    for label, x0, y0, x1, y1 in STUFF + things:
        lid = name2label[label].id
        label_ids[y0 : y1 + 1, x0 : x1 + 1] = lid
        if name2label[label].hasInstances:
            k = counts.get(label, 0)
            counts[label] = k + 1
            instance_ids[y0 : y1 + 1, x0 : x1 + 1] = lid * 1000 + k
        else:
            instance_ids[y0 : y1 + 1, x0 : x1 + 1] = lid
    train_ids = np.full((H, W), 255, np.uint8)
    for lid in np.unique(label_ids):
        t = id2label[int(lid)].trainId
        train_ids[label_ids == lid] = 255 if t < 0 else t
    return label_ids, instance_ids, train_ids


def write_sample(dirs, city, name, things, seed=0):
    """Write one sample's official files."""
    for d in dirs.values():
        os.makedirs(os.path.join(d, city), exist_ok=True)
    path = {k: os.path.join(dirs[k], city, name) for k in dirs}

    rng = np.random.default_rng(seed)
    cv2.imwrite(path["leftImg8bit"] + "_leftImg8bit.png", rng.integers(0, 255, (H, W, 3), np.uint8))

    label_ids, instance_ids, _ = label_maps(things)
    objects = [
        {"label": label, "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}
        for label, x0, y0, x1, y1 in STUFF + things
    ]
    color = np.zeros((H, W, 3), np.uint8)
    for lid in np.unique(label_ids):
        color[label_ids == lid] = id2label[int(lid)].color[::-1]  # BGR for cv2
    gt = path["gtFine"] + "_gtFine_"
    cv2.imwrite(gt + "color.png", color)
    cv2.imwrite(gt + "labelIds.png", label_ids)
    cv2.imwrite(gt + "instanceIds.png", instance_ids)
    with open(gt + "polygons.json", "w") as f:
        json.dump({"imgHeight": H, "imgWidth": W, "objects": objects}, f)

    p = np.round(BASELINE * FX / known_depth() * 256.0) + 1
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


def write_tree(root, splits=("train", "val")):
    """Write the official files of ``splits`` under ``<root>/cityscapes``; returns
    ``{split: split_dirs(root, split)}``."""
    out = {}
    for split in splits:
        city, images = SPLITS[split]
        dirs = split_dirs(root, split)
        for i, (name, things) in enumerate(images):
            write_sample(dirs, city, name, things, seed=i)
        out[split] = dirs
    return out
