"""Every YAML in configs/ loads with the plugin's keys; the synthetic ones build a model."""

import glob
import os

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from panoptic_curriculum import add_panoptic_curriculum_config

CONFIGS = sorted(glob.glob(os.path.join("configs", "**", "*.yaml"), recursive=True))


def _load(path):
    cfg = get_cfg()
    add_panoptic_curriculum_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def test_configs_exist():
    names = {os.path.relpath(p, "configs") for p in CONFIGS}
    assert {
        "Base-PanopticCurriculum.yaml",
        "synthetic/curriculum_R18_FPN.yaml",
        "synthetic/curriculum_Xception65.yaml",
        "cityscapes/curriculum_R50_FPN.yaml",
        "cityscapes/curriculum_Xception65.yaml",
        "coco/curriculum_R50_FPN.yaml",
        "nyud/curriculum_R50_FPN.yaml",
        "synthetic/curriculum_R18_FPN_disjoint_labels.yaml",
        "synthetic/curriculum_R18_FPN_no_point.yaml",
        "synthetic/curriculum_R18_FPN_no_photometric.yaml",
        "synthetic/joint_R18_FPN.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads(path):
    cfg = _load(path)
    assert cfg.MODEL.META_ARCHITECTURE == "PanopticCurriculumModel"


def test_unknown_key_fails_loudly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        '_BASE_: "%s"\nMODEL:\n  POINT_HEAD:\n    NUM_POINTZ: 3\n'
        % os.path.abspath("configs/synthetic/curriculum_R18_FPN.yaml")
    )
    with pytest.raises(KeyError, match="MODEL.POINT_HEAD.NUM_POINTZ"):
        _load(str(bad))


@pytest.mark.parametrize(
    "path",
    ["configs/synthetic/curriculum_R18_FPN.yaml", "configs/synthetic/curriculum_Xception65.yaml"],
)
def test_synthetic_configs_build(path):
    cfg = _load(path)
    if "Xception" in path:  # keep the test small: a thin, shallow Xception
        cfg.merge_from_list(
            ["MODEL.XCEPTION.WIDTH_MULTIPLIER", 0.25, "MODEL.XCEPTION.MIDDLE_BLOCKS", 1]
        )
    model = build_model(cfg)
    assert model.point_head is not None and model.roi_heads is not None
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 192, 256, dtype=torch.uint8)}])[0]
    assert out["sem_seg"].shape == (7, 192, 256) and out["depth"].shape == (192, 256)
