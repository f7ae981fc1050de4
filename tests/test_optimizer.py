"""SOLVER.LR_MULTIPLIERS (per-module learning rates), the joint stage's
CURRICULUM.JOINT_INSTANCE_LR_MULTIPLIER and SOLVER.OPTIMIZER (SGD or AdamW)."""

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg

from panoptic_curriculum import add_panoptic_curriculum_config, load_config
from panoptic_curriculum.engine import PanopticCurriculumTrainer, stage_config
from panoptic_curriculum.engine.optimizer import (
    build_optimizer,
    check_optimizer_state_fits,
    optimizer_kind,
    parameter_lr_multipliers,
)


def _model():
    m = nn.Module()
    m.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
    m.head = nn.Conv2d(4, 2, 1)
    return m


def _cfg(*entries):
    cfg = get_cfg()
    add_panoptic_curriculum_config(cfg)
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.MAX_ITER = 10
    cfg.SOLVER.WARMUP_ITERS = 3
    cfg.SOLVER.LR_MULTIPLIERS = [list(e) for e in entries]
    return cfg


def _lr_by_name(model, optimizer):
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    return (
        {n: lr[id(p)] for n, p in model.named_parameters()},
        {n: wd[id(p)] for n, p in model.named_parameters()},
    )


def test_multipliers_per_module_longest_prefix_wins_and_keep_weight_decay():
    model = _model()
    opt = build_optimizer(_cfg(("head", 5.0), ("encoder", 2.0), ("encoder.1", 0.5)), model)
    lr, wd = _lr_by_name(model, opt)
    assert lr["head.weight"] == lr["head.bias"] == pytest.approx(0.5)
    assert lr["encoder.0.weight"] == lr["encoder.2.bias"] == pytest.approx(0.2)
    assert lr["encoder.1.weight"] == lr["encoder.1.bias"] == pytest.approx(0.05)  # nested
    assert wd["encoder.1.weight"] == 0.0 and wd["encoder.0.weight"] == 1e-4  # norm override
    # an empty list is detectron2's optimizer: one learning rate for all
    plain = build_optimizer(_cfg(), model)
    assert set(_lr_by_name(model, plain)[0].values()) == {0.1}
    # frozen parameters are not in the optimizer at all
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    frozen = build_optimizer(_cfg(("encoder", 2.0)), model)
    assert sum(len(g["params"]) for g in frozen.param_groups) == 2


def test_schedule_scales_every_group_alike():
    model = _model()
    cfg = _cfg(("head", 5.0))
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    opt = build_optimizer(cfg, model)
    sched = PanopticCurriculumTrainer.build_lr_scheduler(cfg, opt)
    seen = []
    for _ in range(6):  # through the warm-up into the decay
        lr, _ = _lr_by_name(model, opt)
        assert lr["head.weight"] == pytest.approx(5 * lr["encoder.0.weight"])
        seen.append(lr["encoder.0.weight"])
        opt.step()
        sched.step()
    assert seen[0] < seen[3] and seen[5] < seen[3]  # it did warm up and decay


def test_unknown_module_names_the_key_and_the_model_modules():
    with pytest.raises(ValueError, match=r"SOLVER.LR_MULTIPLIERS: 'roi_head' .*\['encoder', 'head'\]"):
        parameter_lr_multipliers(_model(), [("roi_head", 2.0)])


@pytest.mark.parametrize(
    "value",
    ["[['roi_heads', -1.0]]", "[['roi_heads']]", "[['', 2.0]]", "[['a', 2.0], ['a', 3.0]]"],
)
def test_bad_entries_are_config_errors(value):
    with pytest.raises(ValueError, match="SOLVER.LR_MULTIPLIERS"):
        load_config("configs/synthetic/curriculum_R18_FPN.yaml", ["SOLVER.LR_MULTIPLIERS", value])


def test_joint_stage_instance_decoder_multiplier(tmp_path):
    cfg = load_config(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        ["CURRICULUM.JOINT_INSTANCE_LR_MULTIPLIER", 5.0, "OUTPUT_DIR", str(tmp_path)],
    )
    joint = stage_config(cfg, "joint")
    assert joint.SOLVER.LR_MULTIPLIERS == [["proposal_generator", 5.0], ["roi_heads", 5.0]]
    assert joint.SOLVER.BASE_LR == pytest.approx(
        cfg.SOLVER.BASE_LR * cfg.CURRICULUM.JOINT_LR_FACTOR
    )
    for stage in ("semantic", "instance"):  # only the joint stage
        assert stage_config(cfg, stage).SOLVER.LR_MULTIPLIERS == []
    # the config's own entries stay; one inside the instance decoder is scaled with it
    cfg.defrost()
    cfg.SOLVER.LR_MULTIPLIERS = [["backbone", 0.5], ["roi_heads.mask_head", 2.0]]
    cfg.MODEL.INSTANCE_ADAPTER.NAME = "ResidualConvAdapter"
    assert stage_config(cfg, "joint").SOLVER.LR_MULTIPLIERS == [
        ["backbone", 0.5],
        ["roi_heads.mask_head", 10.0],
        ["proposal_generator", 5.0],
        ["roi_heads", 5.0],
        ["instance_adapter", 5.0],
    ]
    # each stage keeps the entries for the branches it builds; an unknown name stays
    cfg.SOLVER.LR_MULTIPLIERS = [["depth_head", 3.0], ["roi_heads", 2.0], ["not_a_module", 2.0]]
    assert stage_config(cfg, "semantic").SOLVER.LR_MULTIPLIERS == [
        ["depth_head", 3.0],
        ["not_a_module", 2.0],
    ]
    assert stage_config(cfg, "instance").SOLVER.LR_MULTIPLIERS == [
        ["roi_heads", 2.0],
        ["not_a_module", 2.0],
    ]
    # joint training from scratch (no merge) is not a fine-tuning stage: one rate
    cfg.CURRICULUM.STAGES = ["joint"]
    cfg.SOLVER.LR_MULTIPLIERS = []
    assert stage_config(cfg, "joint").SOLVER.LR_MULTIPLIERS == []
    with pytest.raises(ValueError, match="CURRICULUM.JOINT_INSTANCE_LR_MULTIPLIER"):
        load_config(
            "configs/synthetic/curriculum_R18_FPN.yaml",
            ["CURRICULUM.JOINT_INSTANCE_LR_MULTIPLIER", 0.0],
        )


def test_joint_stage_optimizer_on_the_model():
    """On the main config's merged model: the RPN and RoI heads at 5x, everything else at
    the joint stage's rate."""
    cfg = load_config(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        ["CURRICULUM.JOINT_INSTANCE_LR_MULTIPLIER", 5.0, "MODEL.DEVICE", "cpu"],
    )
    joint = stage_config(cfg, "joint", "unused")
    model = PanopticCurriculumTrainer.build_model(joint)
    lr, _ = _lr_by_name(model, PanopticCurriculumTrainer.build_optimizer(joint, model))
    base = joint.SOLVER.BASE_LR
    for name, value in lr.items():
        fast = name.startswith(("roi_heads.", "proposal_generator."))
        assert value == pytest.approx(base * (5.0 if fast else 1.0)), name
    assert any(n.startswith("roi_heads.") for n in lr) and any(n.startswith("backbone.") for n in lr)


def test_a_checkpoint_from_other_multipliers_is_refused_by_name():
    """Resuming with other SOLVER.LR_MULTIPLIERS (other parameter groups) would load the
    momentum buffers into other parameters: refused with both group layouts; the same
    layout loads."""
    model = _model()
    before = build_optimizer(_cfg(), model)
    after = build_optimizer(_cfg(("head", 5.0)), model)
    with pytest.raises(ValueError, match=r"sizes \[6, 2\], this config.s \[4, 2, 2\]: SOLVER.LR_MULTIPLIERS"):
        check_optimizer_state_fits(after, before.state_dict())
    same = build_optimizer(_cfg(("head", 2.0)), model)
    check_optimizer_state_fits(same, after.state_dict())
    same.load_state_dict(after.state_dict())


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -2.0, True])
def test_non_finite_or_non_positive_multipliers_are_refused(value):
    from panoptic_curriculum.config_validation import parse_lr_multipliers

    with pytest.raises(ValueError, match="SOLVER.LR_MULTIPLIERS entry"):
        parse_lr_multipliers([["roi_heads", value]])


def test_adamw_keeps_groups_multipliers_clipping_and_schedule():
    model = _model()
    cfg = _cfg(("head", 5.0))
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.ADAMW_BETAS = (0.8, 0.99)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1e-3
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and optimizer_kind(opt.param_groups) == "ADAMW"
    assert all(g["betas"] == (0.8, 0.99) for g in opt.param_groups)
    lr, wd = _lr_by_name(model, opt)
    assert lr["head.weight"] == pytest.approx(0.5) and lr["encoder.0.weight"] == pytest.approx(0.1)
    assert wd["encoder.1.weight"] == 0.0 and wd["encoder.0.weight"] == 1e-4  # norm override
    # detectron2's clipping runs inside step() (the gradients it leaves are the clipped ones);
    # AdamW's first step then moves each weight by about lr (m / sqrt(v) = sign of the
    # gradient) whatever the gradient's size, where SGD would move it by lr * grad
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.head(model.encoder(torch.randn(2, 3, 8, 8))).pow(2).sum().backward()
    raw = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    opt.step()
    # (detectron2's "norm" clipping: each parameter's gradient norm)
    clipped = [p.grad.norm() for p in model.parameters()]
    assert raw > 1e-2 and all(c <= 1e-3 * (1 + 1e-4) for c in clipped)
    w = "encoder.0.weight"
    grad = model.get_parameter(w).grad
    moved = (model.get_parameter(w) - before[w]).abs()[grad.abs() > 1e-6]
    assert moved.numel() > 0
    assert torch.allclose(moved, torch.full_like(moved, 0.1), rtol=0.02)
    # the schedule scales AdamW's groups as SGD's
    sched = PanopticCurriculumTrainer.build_lr_scheduler(cfg, opt)
    for _ in range(4):
        sched.step()
        lr, _ = _lr_by_name(model, opt)
        assert lr["head.weight"] == pytest.approx(5 * lr["encoder.0.weight"])
    # without multipliers too (SGD then is detectron2's own optimizer)
    cfg.SOLVER.LR_MULTIPLIERS = []
    assert isinstance(build_optimizer(cfg, model), torch.optim.AdamW)
    cfg.SOLVER.OPTIMIZER = "SGD"
    assert optimizer_kind(build_optimizer(cfg, model).param_groups) == "SGD"


def test_a_checkpoint_from_the_other_optimizer_is_refused_by_name():
    model = _model()
    sgd = build_optimizer(_cfg(), model)
    cfg = _cfg()
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    adamw = build_optimizer(cfg, model)
    with pytest.raises(ValueError, match="optimizer state is SGD's, this config's SOLVER.OPTIMIZER is 'ADAMW'"):
        check_optimizer_state_fits(adamw, sgd.state_dict())
    with pytest.raises(ValueError, match="ADAMW's, this config's SOLVER.OPTIMIZER is 'SGD'"):
        check_optimizer_state_fits(sgd, adamw.state_dict())


@pytest.mark.parametrize(
    "key,value",
    [
        ("SOLVER.OPTIMIZER", "adam"),
        ("SOLVER.ADAMW_BETAS", "(0.9,)"),
        ("SOLVER.ADAMW_BETAS", "(0.9, 1.0)"),
    ],
)
def test_bad_optimizer_settings_are_config_errors(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config("configs/synthetic/curriculum_R18_FPN.yaml", [key, value])
