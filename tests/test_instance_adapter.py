"""The instance decoder's feature adapter: identity at start, trained in the instance stage
while the encoder stays frozen, carried through the merge."""

import os

import pytest
import torch

from detectron2.utils.events import EventStorage

from panoptic_curriculum.engine import PanopticCurriculumTrainer, stage_config
from panoptic_curriculum.engine.merge import merge_stage_checkpoints
from panoptic_curriculum.modeling import ResidualConvAdapter
from model_utils import fake_sample, tiny_cfg


def _cfg(*overrides):
    return tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        "MODEL.INSTANCE_ADAPTER.NAME",
        "ResidualConvAdapter",
        *overrides,
    )


def test_adapter_starts_as_identity_and_covers_every_instance_level():
    model = PanopticCurriculumTrainer.build_model(_cfg())
    adapter = model.instance_adapter
    assert isinstance(adapter, ResidualConvAdapter)
    assert adapter.in_features == ["p2", "p3", "p4", "p5", "p6"]
    feats = {f"p{i}": torch.randn(2, 32, 64 // 2**i, 64 // 2**i) for i in range(2, 7)}
    out = adapter(feats)
    assert all(torch.equal(out[k], feats[k]) for k in feats)
    # not an identity once trained: the zero-initialised conv is what makes it one
    torch.nn.init.normal_(adapter.convs[-1].weight, std=0.1)
    out = adapter(feats)
    assert not torch.allclose(out["p3"], feats["p3"])


def test_adapter_off_by_name_and_absent_without_instance_decoder():
    off = tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", "MODEL.INSTANCE_ADAPTER.NAME", "none")
    assert PanopticCurriculumTrainer.build_model(off).instance_adapter is None
    assert PanopticCurriculumTrainer.build_model(tiny_cfg()).instance_adapter is None
    model = PanopticCurriculumTrainer.build_model(
        _cfg("MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON", False)
    )
    assert model.instance_adapter is None


def test_bad_adapter_values_name_the_key():
    with pytest.raises(ValueError, match="MODEL.INSTANCE_ADAPTER.NUM_CONVS"):
        PanopticCurriculumTrainer.build_model(_cfg("MODEL.INSTANCE_ADAPTER.NUM_CONVS", 0))
    with pytest.raises(ValueError, match="MODEL.INSTANCE_ADAPTER.KERNEL_SIZE"):
        PanopticCurriculumTrainer.build_model(_cfg("MODEL.INSTANCE_ADAPTER.KERNEL_SIZE", 2))


def test_instance_stage_trains_the_adapter_not_the_encoder(tmp_path):
    cfg = _cfg("OUTPUT_DIR", str(tmp_path))
    c = stage_config(cfg, "instance", str(tmp_path))
    model = PanopticCurriculumTrainer.build_model(c)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.instance_adapter.parameters())
    model.train()
    with EventStorage():
        losses = model([fake_sample(seed=0), fake_sample(seed=1)])
    sum(losses.values()).backward()
    # the zero-initialised last conv receives gradient at once (the others after its first
    # update), the encoder none at all
    assert model.instance_adapter.convs[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())


def test_merge_carries_the_adapter(tmp_path):
    cfg = _cfg()
    sem_model = PanopticCurriculumTrainer.build_model(stage_config(cfg, "semantic", str(tmp_path)))
    inst_cfg = stage_config(cfg, "instance", str(tmp_path))
    inst_model = PanopticCurriculumTrainer.build_model(inst_cfg)
    inst_model.backbone.load_state_dict(sem_model.backbone.state_dict())
    torch.nn.init.normal_(inst_model.instance_adapter.convs[-1].weight, std=0.1)
    sem_path, inst_path = str(tmp_path / "sem.pth"), str(tmp_path / "inst.pth")
    torch.save({"model": sem_model.state_dict()}, sem_path)
    torch.save({"model": inst_model.state_dict()}, inst_path)
    merged = merge_stage_checkpoints(sem_path, inst_path, str(tmp_path / "merged.pth"))
    keys = [k for k in merged if k.startswith("instance_adapter.")]
    assert keys and all(torch.equal(merged[k], inst_model.state_dict()[k]) for k in keys)
    assert os.path.isfile(tmp_path / "merged.pth")
