"""COCO panoptic as a user gets it: a tiny tree in the official layout (train2017/, val2017/,
annotations/instances_*.json, annotations/panoptic_*.json and the panoptic PNGs zipped in
annotations/panoptic_*.zip), tools/prepare_coco_panoptic.py making panoptic_stuff_*,
detectron2's "separated" registration, and the COCO config's curriculum trained for 2
iterations per stage and evaluated by SemSeg, COCO and COCO panoptic evaluators."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES, _get_builtin_metadata
from detectron2.data.datasets.coco_panoptic import register_coco_panoptic_separated

from panoptic_curriculum.engine import run_curriculum

from model_utils import tiny_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 64, 96
CAT = {c["name"]: c["id"] for c in COCO_CATEGORIES}
IMAGES = {"train2017": [1, 2], "val2017": [3, 4]}


def _rect(x0, y0, x1, y1):
    return dict(bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0))


def _write_split(coco, split, ids):
    os.makedirs(os.path.join(coco, split))
    rng = np.random.default_rng(ids[0])
    images, instances, panoptic = [], [], []
    zip_path = os.path.join(coco, "annotations", f"panoptic_{split}.zip")
    with zipfile.ZipFile(zip_path, "w") as z:
        for image_id in ids:
            stem = f"{image_id:012d}"
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
                os.path.join(coco, split, stem + ".jpg")
            )
            images.append(dict(id=image_id, file_name=stem + ".jpg", height=H, width=W))
            pan = np.zeros((H, W), np.uint32)  # 0 = void
            pan[8:, :] = 10  # wall (segment id 10)
            pan[40:, :] = 11  # floor
            things = [("person", 21, (10, 12, 30, 50)), ("car", 22, (50, 30, 90, 60))]
            segments = [
                dict(id=10, category_id=CAT["wall-other-merged"], iscrowd=0, **_rect(0, 8, W, 40)),
                dict(id=11, category_id=CAT["floor-other-merged"], iscrowd=0, **_rect(0, 40, W, H)),
            ]
            for name, seg_id, (x0, y0, x1, y1) in things:
                pan[y0:y1, x0:x1] = seg_id
                box = _rect(x0, y0, x1, y1)
                segments.append(dict(id=seg_id, category_id=CAT[name], iscrowd=0, **box))
                polygon = [[x0, y0, x1, y0, x1, y1, x0, y1]]
                instances.append(
                    dict(
                        id=len(instances) + 1,
                        image_id=image_id,
                        category_id=CAT[name],
                        segmentation=polygon,
                        iscrowd=0,
                        **box,
                    )
                )
            rgb = np.stack([pan % 256, pan // 256 % 256, pan // 65536], -1).astype(np.uint8)
            png = os.path.join(coco, stem + ".png")
            Image.fromarray(rgb).save(png)
            z.write(png, f"panoptic_{split}/{stem}.png")
            os.remove(png)
            panoptic.append(
                dict(image_id=image_id, file_name=stem + ".png", segments_info=segments)
            )
    thing_cats = [
        dict(id=c["id"], name=c["name"], supercategory="x") for c in COCO_CATEGORIES if c["isthing"]
    ]
    with open(os.path.join(coco, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump(dict(images=images, annotations=instances, categories=thing_cats), f)
    with open(os.path.join(coco, "annotations", f"panoptic_{split}.json"), "w") as f:
        json.dump(dict(images=images, annotations=panoptic, categories=COCO_CATEGORIES), f)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    coco = str(tmp_path_factory.mktemp("datasets") / "coco")
    os.makedirs(os.path.join(coco, "annotations"))
    for split, ids in IMAGES.items():
        _write_split(coco, split, ids)
    subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "prepare_coco_panoptic.py")]
        + ["--coco-root", coco, "--workers", "1"],
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    for split in IMAGES:  # as detectron2's builtin registration does under datasets/coco
        register_coco_panoptic_separated(
            f"coco_test_{split}_panoptic",
            _get_builtin_metadata("coco_panoptic_separated"),
            os.path.join(coco, split),
            os.path.join(coco, f"panoptic_{split}"),
            os.path.join(coco, "annotations", f"panoptic_{split}.json"),
            os.path.join(coco, f"panoptic_stuff_{split}"),
            os.path.join(coco, "annotations", f"instances_{split}.json"),
        )
    return coco


def test_prepare_makes_detectron2s_panoptic_stuff(coco_root):
    meta = MetadataCatalog.get("coco_test_val2017_panoptic_separated")
    stuff = meta.stuff_dataset_id_to_contiguous_id
    for split, ids in IMAGES.items():
        assert sorted(os.listdir(os.path.join(coco_root, f"panoptic_{split}"))) == [
            f"{i:012d}.png" for i in ids
        ]  # unpacked from annotations/panoptic_<split>.zip
        sem = np.asarray(
            Image.open(os.path.join(coco_root, f"panoptic_stuff_{split}", f"{ids[0]:012d}.png"))
        )
        assert sem.dtype == np.uint8 and sem.shape == (H, W)
        assert (sem[:8] == 255).all()  # void
        assert (
            sem[9, 0] == stuff[CAT["wall-other-merged"]]
            and sem[63, 0] == stuff[CAT["floor-other-merged"]]
        )
        assert sem[20, 20] == 0 and sem[45, 70] == 0  # things -> 0 ("things")
    assert meta.stuff_classes[0] == "things" and stuff[CAT["wall-other-merged"]] > 0


def test_coco_config_trains_and_runs_every_evaluator(coco_root, tmp_path):
    cfg = tiny_cfg(
        "configs/coco/curriculum_R50_FPN.yaml",
        *["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64],
        *["DATASETS.TRAIN", ("coco_test_train2017_panoptic_separated",)],
        *["DATASETS.TEST", ("coco_test_val2017_panoptic_separated",)],
        *[
            "OUTPUT_DIR",
            str(tmp_path),
            "CURRICULUM.SEMANTIC_ITER",
            2,
            "CURRICULUM.INSTANCE_ITER",
            2,
        ],
        *["SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 0, "DATALOADER.NUM_WORKERS", 0],
        *["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 128, "INPUT.MIN_SIZE_TEST", 64],
        *["INPUT.MAX_SIZE_TEST", 128, "CURRICULUM.STAGES", ["semantic", "instance", "merge"]],
    )
    results = run_curriculum(cfg)
    assert "sem_seg" in results["semantic"] and "segm" in results["instance"]
    merged = results["merge"]
    assert {"sem_seg", "bbox", "segm", "panoptic_seg"} <= set(merged) and "depth" not in merged
    assert len([k for k in merged["sem_seg"] if k.startswith("IoU-")]) == 54
    assert 0.0 <= merged["panoptic_seg"]["PQ"] <= 100.0
