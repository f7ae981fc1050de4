"""The probe step that decides DDP's ``find_unused_parameters`` (one process; the 2-process
training of every config and stage is in test_distributed.py)."""

import random

import numpy as np
import torch
from torch import nn

from panoptic_curriculum.engine import PanopticCurriculumTrainer, stage_config
from panoptic_curriculum.engine.ddp import _find_unused, create_ddp_model, unused_parameters

from model_utils import tiny_cfg

SMALL_RESNET = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]


def _stage_model(config_file, stage, tmp_path):
    cfg = tiny_cfg(config_file, *SMALL_RESNET, "DATASETS.TRAIN", ("synthetic_scenes_train",))
    return PanopticCurriculumTrainer.build_model(stage_config(cfg, stage, str(tmp_path)))


def test_coco_semantic_stage_leaves_p3_p4_outputs_unused(tmp_path):
    model = _stage_model("configs/coco/curriculum_R50_FPN.yaml", "semantic", tmp_path)
    unused = unused_parameters(model, model.probe_inputs())
    assert sorted(unused) == sorted(
        f"backbone.fpn_output{k}.{p}"
        for k in (3, 4)
        for p in ("weight", "norm.weight", "norm.bias")
    )
    assert _find_unused(model)


def test_stages_that_use_every_trainable_parameter(tmp_path):
    for config_file, stage in (
        ("configs/synthetic/curriculum_R18_FPN.yaml", "semantic"),
        ("configs/coco/curriculum_R50_FPN.yaml", "instance"),  # frozen encoder: not trainable
        ("configs/coco/curriculum_R50_FPN.yaml", "joint"),
    ):
        model = _stage_model(config_file, stage, tmp_path)
        assert unused_parameters(model, model.probe_inputs()) == [], (config_file, stage)
        assert not _find_unused(model)


def test_probe_restores_everything_it_touches(tmp_path):
    model = _stage_model("configs/synthetic/curriculum_R18_FPN.yaml", "semantic", tmp_path)
    model.eval()
    some = next(p for p in model.parameters() if p.requires_grad)
    some.grad = torch.full_like(some, 3.0)
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def seed_and_draw(before_drawing=lambda: None):
        torch.manual_seed(5)
        random.seed(5)
        np.random.seed(5)
        before_drawing()
        return torch.rand(3).tolist(), random.random(), np.random.rand()

    expected = seed_and_draw()
    assert seed_and_draw(lambda: unused_parameters(model, model.probe_inputs())) == expected
    assert not model.training
    assert torch.equal(some.grad, torch.full_like(some, 3.0))
    assert all(p.grad is None for p in model.parameters() if p.requires_grad and p is not some)
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n


class _NoProbe(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(2, 1), nn.Linear(2, 1)


class _FailingProbe(_NoProbe):
    def probe_inputs(self):
        raise RuntimeError("no probe for you")


def test_models_without_a_working_probe_search_every_step():
    assert _find_unused(_NoProbe())
    assert _find_unused(_FailingProbe())


def test_single_process_is_not_wrapped():
    model = _NoProbe()
    assert create_ddp_model(model) is model
