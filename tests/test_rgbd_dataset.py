"""Your own RGB-D data through register_rgbd_dataset: the synthetic split's files registered
as a user's dataset (COCO instances + depth PNGs + per-image K + semantic PNGs + COCO
panoptic), label-partial variants, the intrinsics forms, errors that name the file, the
semantic PNGs made from panoptic annotations, DATASETS.REGISTRATION_FILES, and a 2-iteration
training run followed by every evaluator."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from panoptic_curriculum import load_config
from panoptic_curriculum.data import register_rgbd_dataset
from panoptic_curriculum.data.datasets.coco_panoptic import panoptic_to_semantic, semantic_id_map
from panoptic_curriculum.data.labels import MissingLabelsError, check_training_labels, labels_of
from panoptic_curriculum.engine import PanopticCurriculumTrainer, stage_config

from model_utils import tiny_cfg

FULL, INSTANCES, SEMANTIC = "own_rgbd_full", "own_rgbd_instances", "own_rgbd_semantic"
NAMES = ["ball", "crate", "container", "pillar", "ground", "wall", "sky"]


def _paths(split_dir):
    j = lambda *p: os.path.join(split_dir, *p)  # noqa: E731
    return dict(
        image_root=j("image"),
        instances_json=j("instances.json"),
        depth_root=j("depth"),
        intrinsics=j("camera"),
        sem_seg_root=j("sem_seg"),
        panoptic_json=j("panoptic.json"),
        panoptic_root=j("panoptic"),
    )


@pytest.fixture(scope="module")
def own(small_split_dir):
    p = _paths(small_split_dir)
    register_rgbd_dataset(FULL, **p)  # stuff_classes from the panoptic JSON, things first
    register_rgbd_dataset(INSTANCES, p["image_root"], instances_json=p["instances_json"])
    register_rgbd_dataset(
        SEMANTIC,
        p["image_root"],
        sem_seg_root=p["sem_seg_root"],
        stuff_classes=NAMES,
        depth_root=p["depth_root"],
        intrinsics={"fx": 100.0, "fy": 101.0, "cx": 63.5, "cy": 47.5},
    )
    return p


def test_full_dataset_equals_the_synthetic_loader(own, small_split, small_dicts):
    mine = DatasetCatalog.get(FULL)
    assert len(mine) == len(small_dicts)
    for a, b in zip(mine, small_dicts):
        for key in ("file_name", "image_id", "height", "width", "sem_seg_file_name"):
            assert a[key] == b[key], key
        for key in ("depth_file_name", "depth_format", "pan_seg_file_name"):
            assert a[key] == b[key], key
        np.testing.assert_allclose(a["intrinsics"], b["intrinsics"])
        assert [x["category_id"] for x in a["annotations"]] == [
            x["category_id"] for x in b["annotations"]
        ]
        assert [(s["id"], s["category_id"], s["isthing"]) for s in a["segments_info"]] == [
            (s["id"], s["category_id"], s["isthing"]) for s in b["segments_info"]
        ]
    meta, ref = MetadataCatalog.get(FULL), MetadataCatalog.get(small_split)
    for key in (
        "thing_classes",
        "stuff_classes",
        "thing_dataset_id_to_contiguous_id",
        "stuff_dataset_id_to_contiguous_id",
        "evaluator_type",
        "ignore_label",
    ):
        assert meta.get(key) == ref.get(key), key
    assert meta.has_depth and meta.labels == [
        "depth",
        "instances",
        "intrinsics",
        "panoptic",
        "sem_seg",
    ]


def test_label_partial_datasets(own, tmp_path):
    inst, sem = DatasetCatalog.get(INSTANCES), DatasetCatalog.get(SEMANTIC)
    assert labels_of(inst) == ["instances"] and labels_of(sem) == ["depth", "intrinsics", "sem_seg"]
    assert [d["file_name"] for d in sem] == [d["file_name"] for d in inst]  # listed from disk
    assert all((d["height"], d["width"]) == (96, 128) for d in sem)  # read from the headers
    assert sem[0]["intrinsics"] == [[100.0, 0.0, 63.5], [0.0, 101.0, 47.5], [0.0, 0.0, 1.0]]
    m_inst, m_sem = MetadataCatalog.get(INSTANCES), MetadataCatalog.get(SEMANTIC)
    assert m_inst.evaluator_type == "coco" and not m_inst.has_depth
    assert not m_inst.get("stuff_classes")
    assert m_sem.evaluator_type == "sem_seg" and m_sem.has_depth and m_sem.stuff_classes == NAMES
    # a config that needs the missing labels fails naming dataset and field ...
    cfg = tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", "DATASETS.TRAIN", (INSTANCES,))
    with pytest.raises(MissingLabelsError, match=f"'{INSTANCES}' has no 'sem_seg' labels"):
        check_training_labels(cfg)
    with pytest.raises(MissingLabelsError, match=f"'{SEMANTIC}' has no 'instances' labels"):
        check_training_labels(
            tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", "DATASETS.TRAIN", (SEMANTIC,))
        )
    # ... and one that does not need them trains on them: the instance stage reads neither
    # depth nor K, so instance-only data loads
    c = stage_config(
        tiny_cfg(
            "configs/synthetic/curriculum_R18_FPN.yaml",
            "DATASETS.TRAIN",
            (INSTANCES,),
            "DATALOADER.NUM_WORKERS",
            0,
            "SOLVER.IMS_PER_BATCH",
            2,
        ),
        "instance",
        str(tmp_path),
    )
    batch = next(iter(PanopticCurriculumTrainer.build_train_loader(c)))
    assert all("instances" in x and "depth" not in x and "sem_seg" not in x for x in batch)


def test_intrinsics_forms_and_errors(own, tmp_path):
    root = own["image_root"]
    names = sorted(os.listdir(root))
    K = [[90.0, 0.0, 60.0], [0.0, 90.0, 45.0], [0.0, 0.0, 1.0]]
    table = tmp_path / "K.json"
    table.write_text(json.dumps({n: K for n in names}))
    register_rgbd_dataset("own_k_table", root, intrinsics=str(table))
    assert all(d["intrinsics"] == K for d in DatasetCatalog.get("own_k_table"))
    register_rgbd_dataset("own_k_one", root, intrinsics=np.array(K))
    assert DatasetCatalog.get("own_k_one")[0]["intrinsics"] == K
    table.write_text(json.dumps({names[0]: K}))
    register_rgbd_dataset("own_k_partial", root, intrinsics=str(table))
    with pytest.raises(KeyError, match=f"has no camera for image '{names[1]}'"):
        DatasetCatalog.get("own_k_partial")
    with pytest.raises(ValueError, match="own_k_bad.*focal lengths fx, fy >= 1.0 pixel"):
        register_rgbd_dataset("own_k_bad", root, intrinsics=[[0, 0, 1], [0, 1, 1], [0, 0, 1]])
    os.makedirs(tmp_path / "cams")
    register_rgbd_dataset("own_k_folder", root, intrinsics=str(tmp_path / "cams"))
    with pytest.raises(FileNotFoundError, match=r"cams/000000\.json"):
        DatasetCatalog.get("own_k_folder")


def test_registration_errors(own, tmp_path):
    root = own["image_root"]
    with pytest.raises(ValueError, match="unknown depth_format 'png_cm'.*npy_m"):
        register_rgbd_dataset("own_bad_fmt", root, depth_root=root, depth_format="png_cm")
    with pytest.raises(ValueError, match="needs stuff_classes"):
        register_rgbd_dataset("own_no_names", root, sem_seg_root=own["sem_seg_root"])
    with pytest.raises(ValueError, match="both panoptic_json and panoptic_root"):
        register_rgbd_dataset("own_half_pan", root, panoptic_json=own["panoptic_json"])
    register_rgbd_dataset("own_no_depth", root, depth_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"depth files \(\*\.png in .*\) not found for 6"):
        DatasetCatalog.get("own_no_depth")
    register_rgbd_dataset(INSTANCES, root, instances_json=own["instances_json"])  # same: kept
    with pytest.raises(ValueError, match="already registered"):
        register_rgbd_dataset(INSTANCES, root)


def test_semantic_pngs_from_panoptic(own, small_dicts, tmp_path):
    out = tmp_path / "all"
    assert panoptic_to_semantic(own["panoptic_json"], own["panoptic_root"], str(out), "all") == 6
    assert panoptic_to_semantic(own["panoptic_json"], own["panoptic_root"], str(out), "all") == 0
    sep = tmp_path / "separated"
    panoptic_to_semantic(own["panoptic_json"], own["panoptic_root"], str(sep), "separated", 2)
    for d in small_dicts:
        name = os.path.basename(d["pan_seg_file_name"])
        truth = np.asarray(Image.open(d["sem_seg_file_name"]))
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), truth)
        expected = np.where(truth < 4, 0, truth - 3).astype(np.uint8)  # things -> 0
        expected[truth == 255] = 255
        np.testing.assert_array_equal(np.asarray(Image.open(sep / name)), expected)
    assert not any(p.name.startswith("all.partial") for p in tmp_path.iterdir())
    cats = [{"id": 9, "isthing": 0}, {"id": 2, "isthing": 1}, {"id": 5, "isthing": 0}]
    assert semantic_id_map(cats, "separated") == {2: 0, 5: 1, 9: 2}
    assert semantic_id_map(cats, "all") == {2: 0, 5: 1, 9: 2}
    assert semantic_id_map(cats + [{"id": 3, "isthing": 1}], "all") == {2: 0, 3: 1, 5: 2, 9: 3}
    with pytest.raises(ValueError, match="unknown semantic mode"):
        semantic_id_map(cats, "stuff")


def test_registration_files_named_in_the_environment(own, tmp_path, monkeypatch):
    script = tmp_path / "my_datasets.py"
    script.write_text(
        "from panoptic_curriculum.data import register_rgbd_dataset\n"
        f"register_rgbd_dataset('own_from_file', {own['image_root']!r},\n"
        f"                      instances_json={own['instances_json']!r})\n"
    )
    yaml = tmp_path / "my.yaml"
    base = os.path.abspath("configs/synthetic/curriculum_R18_FPN.yaml")
    yaml.write_text(f'_BASE_: "{base}"\nDATASETS:\n  TRAIN: ("own_from_file",)\n')
    monkeypatch.setenv("PANOPTIC_CURRICULUM_DATASETS", str(script))
    for _ in range(2):  # every tool loads the config; the file runs once per process
        cfg = load_config(str(yaml))
    assert "own_from_file" in DatasetCatalog.list()
    assert cfg.DATASETS.TRAIN == ("own_from_file",)
    monkeypatch.setenv("PANOPTIC_CURRICULUM_DATASETS", "nothere.py")
    with pytest.raises(FileNotFoundError, match="PANOPTIC_CURRICULUM_DATASETS names nothere.py"):
        load_config(str(yaml))
    # a config cannot name code to run: the key does not exist
    monkeypatch.delenv("PANOPTIC_CURRICULUM_DATASETS")
    yaml.write_text(f'_BASE_: "{base}"\nDATASETS:\n  REGISTRATION_FILES: ["{script}"]\n')
    with pytest.raises(KeyError, match="REGISTRATION_FILES"):
        load_config(str(yaml))


def test_train_and_every_evaluator(own, tmp_path):
    cfg = tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        *["DATASETS.TRAIN", (FULL,), "DATASETS.TEST", (FULL,), "OUTPUT_DIR", str(tmp_path)],
        *["SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 0],
        *["DATALOADER.NUM_WORKERS", 0, "INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MIN_SIZE_TEST", 96],
        *["INPUT.CROP.SIZE", (64, 96)],
    )
    trainer = PanopticCurriculumTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results  # the final evaluation (detectron2's EvalHook)
    assert {"sem_seg", "bbox", "segm", "panoptic_seg", "depth"} <= set(results)
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0 and results["depth"]["RMSE"] > 0
