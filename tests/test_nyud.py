"""NYUD-v2 in the multi-task "NYUD_MT" layout: a tiny tree (rescaled 640x480 frames), the
label preparation tool, registration, Kinect intrinsics for the sizes found on disk, and the
NYUD-v2 config's curriculum (semantic stage: semantic + depth + point branch) trained for 2
iterations and evaluated by the semantic and depth evaluators."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from panoptic_curriculum.data import read_depth
from panoptic_curriculum.data.datasets.nyud import (
    NYUD_CLASSES,
    convert_nyud_label,
    load_nyud,
    nyud_intrinsics,
    prepare_nyud_labels,
    register_nyud,
)
from panoptic_curriculum.engine import run_curriculum

from model_utils import tiny_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 96, 128  # a 640x480 frame rescaled by 0.2
SPLITS = {"train": ["0003", "0005", "0007"], "val": ["0001", "0002"]}


def _write_tree(root, size=(H, W)):
    h, w = size
    for sub in ("images", "segmentation", "depth", "gt_sets"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    rng = np.random.default_rng(0)
    for split, stems in SPLITS.items():
        with open(os.path.join(root, "gt_sets", split + ".txt"), "w") as f:
            f.write("\n".join(stems) + "\n")
        for i, stem in enumerate(stems):
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(image).save(os.path.join(root, "images", stem + ".jpg"))
            label = np.full((h, w), 1, np.uint8)  # wall
            label[h // 2 :] = 2  # floor
            label[h // 4 : h // 2, w // 4 : w // 2] = 5  # chair
            label[:4] = 0  # void
            label[-10:, -10:] = 40  # otherprop
            Image.fromarray(label).save(os.path.join(root, "segmentation", stem + ".png"))
            depth = np.linspace(1.0, 6.0, h, dtype=np.float32)[:, None].repeat(w, 1)
            depth[:2, :2] = 0.0  # missing
            # the archive's depth maps are (H, W); accept (H, W, 1) too
            np.save(os.path.join(root, "depth", stem + ".npy"), depth[..., None] if i else depth)


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets") / "NYUD_MT")
    _write_tree(root)
    # the tool, as a user runs it
    subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "prepare_nyud.py"), "--root", root],
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    for split in SPLITS:
        register_nyud(f"nyud_test_{split}", root, split)
    return root


def test_intrinsics_for_the_sizes_found():
    full = np.array(nyud_intrinsics(640, 480))
    np.testing.assert_allclose(
        full, [[518.857901, 0, 325.582449], [0, 519.469611, 253.736166], [0, 0, 1]]
    )
    half = np.array(nyud_intrinsics(320, 240))
    np.testing.assert_allclose(half[[0, 1], [0, 1]], full[[0, 1], [0, 1]] / 2)
    # pixel centres stay put: pixel u of the half image covers pixels 2u, 2u+1 of the frame
    np.testing.assert_allclose(half[:2, 2], (full[:2, 2] - 0.5) / 2)
    crop = np.array(nyud_intrinsics(561, 427))  # rows 44.., columns 40.. of the frame
    np.testing.assert_allclose(crop[:2, 2], full[:2, 2] - [40, 44])
    np.testing.assert_allclose(crop[[0, 1], [0, 1]], full[[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="500x500 .* register_rgbd_dataset"):
        nyud_intrinsics(500, 500)


def test_label_conversion():
    raw = np.array([[0, 1, 2], [39, 40, 0]], np.uint8)
    np.testing.assert_array_equal(convert_nyud_label(raw), [[255, 0, 1], [38, 39, 255]])
    with pytest.raises(ValueError, match="label 41"):
        convert_nyud_label(np.array([[41]], np.uint8))


def test_registered_splits(nyud_root):
    assert {"nyud_v2_train", "nyud_v2_val"} <= set(DatasetCatalog.list())
    train = DatasetCatalog.get("nyud_test_train")
    assert [os.path.basename(d["file_name"]) for d in train] == ["0003.jpg", "0005.jpg", "0007.jpg"]
    K = nyud_intrinsics(W, H)
    for d in train:
        assert (d["height"], d["width"]) == (H, W) and d["intrinsics"] == K
        assert d["depth_format"] == "npy_m" and "annotations" not in d
        label = np.asarray(Image.open(d["sem_seg_file_name"]))
        assert label[0, 0] == 255 and label[-1, 0] == 1 and label[-1, -1] == 39
        depth = read_depth(d)
        assert depth.shape == (H, W) and depth[0, 0] == 0 and depth[-1, 5] == pytest.approx(6.0)
    meta = MetadataCatalog.get("nyud_test_val")
    assert meta.stuff_classes == NYUD_CLASSES and len(NYUD_CLASSES) == 40
    assert meta.evaluator_type == "sem_seg" and meta.has_depth and meta.ignore_label == 255


def test_errors_name_the_file(tmp_path):
    root = str(tmp_path / "NYUD_MT")
    _write_tree(root)
    with pytest.raises(FileNotFoundError, match="tools/prepare_nyud.py"):
        load_nyud(root, "train")
    Image.fromarray(np.full((H, W), 41, np.uint8)).save(
        os.path.join(root, "segmentation", "0003.png")
    )
    with pytest.raises(ValueError, match="0003.png: label 41"):
        prepare_nyud_labels(root)
    assert not os.path.exists(os.path.join(root, "segmentation_detectron2"))
    os.remove(os.path.join(root, "segmentation", "0003.png"))
    prepare_nyud_labels(root)
    with pytest.raises(FileNotFoundError, match="semantic label PNGs .* not found for 1 of 3"):
        load_nyud(root, "train")
    os.remove(os.path.join(root, "images", "0001.jpg"))
    with pytest.raises(FileNotFoundError, match="images/0001"):
        load_nyud(root, "val")


def test_train_and_evaluate_with_the_nyud_config(nyud_root, tmp_path):
    cfg = tiny_cfg(
        "configs/nyud/curriculum_R50_FPN.yaml",
        *["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64],
        *["DATASETS.TRAIN", ("nyud_test_train",), "DATASETS.TEST", ("nyud_test_val",)],
        *["OUTPUT_DIR", str(tmp_path), "CURRICULUM.SEMANTIC_ITER", 2, "TEST.EVAL_PERIOD", 0],
        *["SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 0, "DATALOADER.NUM_WORKERS", 0],
        *["INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 200, "INPUT.CROP.SIZE", (64, 96)],
        *["INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 200],
    )
    assert list(cfg.CURRICULUM.STAGES) == ["semantic"]
    results = run_curriculum(cfg)
    assert list(results) == ["semantic"]
    res = results["semantic"]
    assert {"sem_seg", "depth", "depth_pooled"} <= set(res) and "segm" not in res
    assert f"IoU-{NYUD_CLASSES[0]}" in res["sem_seg"] and res["depth"]["num_images"] == 2
    assert (tmp_path / "summary.txt").is_file()
