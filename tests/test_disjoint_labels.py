"""Labels from different datasets: label-partial subsets, per-stage training datasets
(CURRICULUM.SEMANTIC_DATASETS / INSTANCE_DATASETS), and the check that fails a stage at start
when its dataset lacks a label it needs."""

import os

import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from panoptic_curriculum import add_panoptic_curriculum_config, load_config
from panoptic_curriculum.data.datasets.label_subsets import register_label_subset
from panoptic_curriculum.data.datasets.synthetic_scenes import SYNTHETIC_LABEL_SUBSETS
from panoptic_curriculum.data.labels import (
    MissingLabelsError,
    check_training_labels,
    keep_labels,
    labels_needed_for_training,
    labels_of,
)
from panoptic_curriculum.engine import PanopticCurriculumTrainer, run_curriculum, stage_config

from model_utils import tiny_cfg

SEM, INST = "small_semantic_part", "small_instance_part"


@pytest.fixture(scope="module")
def parts(small_split):
    register_label_subset(SEM, small_split, ("sem_seg", "depth", "intrinsics"), stop=3)
    register_label_subset(INST, small_split, ("instances",), start=3)
    return SEM, INST


def _cfg(split, out_dir, *overrides):
    return tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        *[
            "DATASETS.TRAIN", (split,),
            "DATASETS.TEST", (split,),
            "OUTPUT_DIR", str(out_dir),
            "SOLVER.IMS_PER_BATCH", 2,
            "DATALOADER.NUM_WORKERS", 0,
            "INPUT.MIN_SIZE_TRAIN", (96,),
            "INPUT.MIN_SIZE_TEST", 96,
            "INPUT.CROP.SIZE", (64, 96),
            "SOLVER.WARMUP_ITERS", 0,
            "CURRICULUM.SEMANTIC_ITER", 2,
            "CURRICULUM.INSTANCE_ITER", 2,
            # as the disjoint-labels config: a joint stage would need every label at once
            "CURRICULUM.STAGES", ["semantic", "instance", "merge"],
            *overrides,
        ],
    )  # fmt: skip


def test_label_subsets_keep_only_their_labels(parts, small_dicts):
    sem, inst = (DatasetCatalog.get(n) for n in parts)
    assert [d["file_name"] for d in sem + inst] == [d["file_name"] for d in small_dicts]
    assert labels_of(sem) == ["depth", "intrinsics", "sem_seg"]
    assert labels_of(inst) == ["instances"]
    assert all("pan_seg_file_name" not in d and "depth_format" not in d for d in inst)
    assert all(d["height"] == 96 and d["width"] == 128 for d in sem + inst)
    assert labels_of(small_dicts) == ["depth", "instances", "intrinsics", "panoptic", "sem_seg"]
    sem_meta, inst_meta = (MetadataCatalog.get(n) for n in parts)
    assert sem_meta.evaluator_type == "sem_seg" and sem_meta.has_depth
    assert inst_meta.evaluator_type == "coco" and not inst_meta.has_depth
    assert not inst_meta.get("stuff_classes") and inst_meta.thing_classes
    # the source's dicts are untouched
    assert "annotations" in small_dicts[0] and "sem_seg_file_name" in small_dicts[3]
    with pytest.raises(ValueError, match="unknown label kinds"):
        keep_labels(small_dicts, ["semantic"])
    register_label_subset(
        SEM, "synthetic_scenes_test_small", ["sem_seg", "depth", "intrinsics"], stop=3
    )
    with pytest.raises(ValueError, match="already registered"):
        register_label_subset(SEM, "synthetic_scenes_test_small", ["sem_seg"], stop=3)


def test_shipped_halves_are_disjoint_and_label_partial():
    sem = SYNTHETIC_LABEL_SUBSETS["synthetic_scenes_train_semantic_part"]
    inst = SYNTHETIC_LABEL_SUBSETS["synthetic_scenes_train_instance_part"]
    assert sem["source"] == inst["source"] == "synthetic_scenes_train"
    assert sem.get("start", 0) == 0 and sem["stop"] == inst["start"] == 200
    assert "instances" not in sem["labels"] and set(inst["labels"]) == {"instances"}
    cfg = load_config("configs/synthetic/curriculum_R18_FPN_disjoint_labels.yaml")
    assert stage_config(cfg, "semantic", "/o").DATASETS.TRAIN == (
        "synthetic_scenes_train_semantic_part",
    )
    assert stage_config(cfg, "instance", "/o").DATASETS.TRAIN == (
        "synthetic_scenes_train_instance_part",
    )
    assert list(cfg.CURRICULUM.STAGES) == ["semantic", "instance", "merge"]
    assert cfg.DATASETS.TEST == ("synthetic_scenes_val",)


def test_stage_datasets_default_to_datasets_train(tmp_path):
    cfg = tiny_cfg()
    for stage in ("semantic", "instance", "joint"):
        assert stage_config(cfg, stage, str(tmp_path)).DATASETS.TRAIN == cfg.DATASETS.TRAIN
    cfg.CURRICULUM.SEMANTIC_DATASETS = ("a",)
    cfg.CURRICULUM.INSTANCE_DATASETS = ("b", "c")
    assert stage_config(cfg, "semantic", str(tmp_path)).DATASETS.TRAIN == ("a",)
    inst = stage_config(cfg, "instance", str(tmp_path))
    assert inst.DATASETS.TRAIN == ("b", "c") and not inst.INPUT.DEPTH.ENABLED
    assert stage_config(cfg, "joint", str(tmp_path)).DATASETS.TRAIN == cfg.DATASETS.TRAIN


def test_labels_needed_follow_the_branches():
    cfg = tiny_cfg()
    assert set(labels_needed_for_training(cfg)) == {"sem_seg", "instances", "depth", "intrinsics"}
    cfg.MODEL.POINT_HEAD.ENABLED = False
    cfg.MODEL.DEPTH_HEAD.CANONICAL_FOCAL = 0.0
    cfg.MODEL.DEPTH_HEAD.CAMERA_COORDS = False
    needs = labels_needed_for_training(cfg)
    assert set(needs) == {"sem_seg", "instances", "depth", "intrinsics"}
    assert needs["intrinsics"].startswith("INPUT.DEPTH.ENABLED")  # the mapper loads K
    cfg.INPUT.DEPTH.MISSING = "skip"
    assert set(labels_needed_for_training(cfg)) == {"sem_seg", "instances", "depth"}
    cfg.MODEL.PANOPTIC_CURRICULUM.DEPTH_ON = False
    assert set(labels_needed_for_training(cfg)) == {"sem_seg", "instances"}
    cfg.INPUT.DEPTH.MISSING = "error"
    assert labels_needed_for_training(cfg)["depth"].startswith("INPUT.DEPTH.ENABLED")
    inst = stage_config(tiny_cfg(), "instance", "/o")
    assert labels_needed_for_training(inst) == {
        "instances": "MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON"
    }


def test_trainer_names_the_dataset_without_the_labels(parts, tmp_path):
    cfg = _cfg(
        SEM, tmp_path, "DATASETS.TRAIN", parts, "MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON", False
    )
    with pytest.raises(MissingLabelsError) as e:
        PanopticCurriculumTrainer.build_train_loader(cfg)
    msg = str(e.value)
    assert "'small_instance_part'" in msg and "'sem_seg'" in msg and "sem_seg_file_name" in msg
    assert "3 of 3 samples" in msg and "SEM_SEG_ON" in msg


@pytest.mark.parametrize(
    "semantic, instance, dataset, label, stage",
    [
        (INST, INST, INST, "sem_seg", "semantic"),
        (SEM, SEM, SEM, "instances", "instance"),
    ],
)
def test_stage_without_its_labels_fails_before_any_training(
    parts, tmp_path, semantic, instance, dataset, label, stage
):
    cfg = _cfg(
        SEM,
        tmp_path,
        "CURRICULUM.SEMANTIC_DATASETS",
        (semantic,),
        "CURRICULUM.INSTANCE_DATASETS",
        (instance,),
    )
    with pytest.raises(MissingLabelsError, match=f"'{dataset}' has no '{label}' labels") as e:
        run_curriculum(cfg)
    assert f"the '{stage}' stage" in str(e.value)
    assert not os.path.exists(tmp_path / "semantic" / "model_final.pth")  # nothing trained


def test_curriculum_with_labels_from_different_datasets(parts, small_split, tmp_path):
    cfg = _cfg(
        SEM,
        tmp_path,
        "CURRICULUM.SEMANTIC_DATASETS",
        (SEM,),
        "CURRICULUM.INSTANCE_DATASETS",
        (INST,),
        "DATASETS.TEST",
        (small_split,),
    )
    results = run_curriculum(cfg)
    # the config evaluates the merged model, which reproduces both stages
    assert list(cfg.CURRICULUM.EVAL_STAGES) == ["merge", "joint"]
    assert results["semantic"] == {} and results["instance"] == {}
    assert {"sem_seg", "segm", "panoptic_seg", "depth"} <= set(results["merge"])
    # with full labels in DATASETS.TRAIN the trainer check passes (and a semantic-only
    # dataset passes for a config without the instance branch)
    check_training_labels(stage_config(cfg, "semantic", str(tmp_path)))
    check_training_labels(_cfg(small_split, tmp_path))
