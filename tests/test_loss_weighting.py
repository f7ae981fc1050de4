"""Fixed or learned (homoscedastic-uncertainty) loss weights: the first step equals the fixed
weights, gradients reach the log-variances, the weights reach the EventStorage and the plots,
the curriculum stages own and merge them, and the non-finite-loss guard still works with a
negative total."""

import json
import math

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from panoptic_curriculum.engine import freeze_modules, merge_stage_checkpoints, stage_config
from panoptic_curriculum.modeling.loss_weighting import UncertaintyLossWeighting
from panoptic_curriculum.modeling.meta_arch import _raise_if_not_finite
from panoptic_curriculum.utils.metrics_plot import plot_runs

from model_utils import fake_sample, tiny_cfg

WEIGHTS = [
    "MODEL.PANOPTIC_CURRICULUM.SEM_SEG_LOSS_WEIGHT",
    2.0,
    "MODEL.PANOPTIC_CURRICULUM.INSTANCE_LOSS_WEIGHT",
    3.0,
    "MODEL.DEPTH_HEAD.LOSS_WEIGHT",
    0.5,
    "MODEL.POINT_HEAD.LOSS_WEIGHT",
    1.5,
    "MODEL.POINT_HEAD.CONSISTENCY_WEIGHT",
    0.25,
]
FIXED = {"sem_seg": 2.0, "instance": 3.0, "depth": 0.5, "sem_seg_3d": 1.5, "consistency": 0.25}
INSTANCE = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask")
TASK_KEYS = {
    "sem_seg": ("loss_sem_seg",),
    "instance": INSTANCE,
    "depth": ("loss_depth",),
    "sem_seg_3d": ("loss_sem_seg_3d",),
    "consistency": ("loss_consistency",),
}


def _model(mode):
    torch.manual_seed(0)
    cfg = tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        *WEIGHTS,
        "MODEL.PANOPTIC_CURRICULUM.LOSS_WEIGHTING",
        mode,
    )
    return build_model(cfg).train()


def _losses(model, storage_iter=0):
    torch.manual_seed(1)
    with EventStorage(storage_iter) as storage:
        losses = model([fake_sample(seed=0), fake_sample(seed=1, num_instances=3)])
        return losses, storage


@pytest.fixture(scope="module")
def learned_step():
    model = _model("uncertainty")
    losses, storage = _losses(model)
    return model, losses, storage


def test_first_step_equals_fixed_weights(learned_step):
    _, learned, _ = learned_step
    fixed, _ = _losses(_model("fixed"))
    assert set(learned) == set(fixed) | {"loss_uncertainty_reg"}
    for k, v in fixed.items():
        assert torch.equal(learned[k], v), k
    # the regulariser is sum_t s_t with s_t = -log w_t
    expected = sum(-math.log(w) for w in FIXED.values())
    assert learned["loss_uncertainty_reg"].item() == pytest.approx(expected, rel=1e-6)


def test_gradients_reach_the_log_variances(learned_step):
    model, losses, _ = learned_step
    log_vars = model.loss_weighting.log_vars
    assert set(log_vars) == set(FIXED)
    model.zero_grad()
    sum(losses.values()).backward()
    for task, keys in TASK_KEYS.items():
        # d/ds (exp(-s) L + s) = 1 - exp(-s) L = 1 - (this task's weighted losses)
        expected = 1.0 - sum(losses[k].item() for k in keys)
        assert log_vars[task].grad is not None, task
        assert float(log_vars[task].grad) == pytest.approx(expected, rel=1e-4, abs=1e-6), task
    # the heads still get their gradients
    assert model.sem_seg_head.predictor.weight.grad is not None


def test_weights_go_to_the_event_storage(learned_step):
    model, _, storage = learned_step
    for task, w in FIXED.items():
        assert storage.latest()[f"task_weight/{task}"][0] == pytest.approx(w, rel=1e-6)
    with torch.no_grad():
        model.loss_weighting.log_vars["depth"].fill_(1.0)
    assert float(model.loss_weighting.weights()["depth"]) == pytest.approx(math.exp(-1.0))


def test_negative_total_passes_the_guard_and_nan_still_stops():
    weighting = UncertaintyLossWeighting({"sem_seg": 1.0, "depth": 1.0})
    with torch.no_grad():
        for s in weighting.log_vars.values():
            s.fill_(-3.0)
    out = weighting({"loss_sem_seg": torch.tensor(0.01), "loss_depth": torch.tensor(0.02)})
    total = sum(out.values())
    assert float(total) < 0  # e^3 * 0.03 - 6
    _raise_if_not_finite(out)  # a negative total is a valid loss
    bad = weighting({"loss_sem_seg": torch.tensor(0.01), "loss_depth": torch.tensor(math.nan)})
    with pytest.raises(FloatingPointError, match="loss_depth"):
        _raise_if_not_finite(bad)


def test_nan_loss_stops_the_learned_model():
    model = _model("uncertainty")
    with torch.no_grad():
        model.depth_head.predictor.bias.fill_(float("nan"))
    with EventStorage(start_iter=5):
        with pytest.raises(FloatingPointError, match=r"iteration 5: .*loss_depth"):
            model([fake_sample(seed=0)])


def test_zero_weight_is_not_learned_and_bad_mode_is_an_error():
    weighting = UncertaintyLossWeighting({"sem_seg": 1.0, "consistency": 0.0})
    assert set(weighting.log_vars) == {"sem_seg"}
    out = weighting({"loss_sem_seg": torch.tensor(1.0), "loss_consistency": torch.tensor(0.0)})
    assert float(out["loss_consistency"]) == 0.0
    assert float(out["loss_uncertainty_reg"]) == 0.0  # -log 1
    with pytest.raises(KeyError, match="loss_other.*known losses"):
        weighting({"loss_other": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="LOSS_WEIGHTING must be one of.*'fixed', 'uncertainty'"):
        build_model(tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", *_mode("learned")))


def _mode(mode):
    return ["MODEL.PANOPTIC_CURRICULUM.LOSS_WEIGHTING", mode]


def test_stages_own_their_log_variances_and_the_merge_keeps_them(tmp_path):
    cfg = tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", *_mode("uncertainty"))
    cfg.OUTPUT_DIR = str(tmp_path)
    semantic = build_model(stage_config(cfg, "semantic"))
    instance_cfg = stage_config(cfg, "instance")
    instance = build_model(instance_cfg)
    freeze_modules(instance, instance_cfg.MODEL.FREEZE.PREFIXES)
    assert set(semantic.loss_weighting.log_vars) == {
        "sem_seg",
        "depth",
        "sem_seg_3d",
        "consistency",
    }
    assert set(instance.loss_weighting.log_vars) == {"instance"}
    assert instance.loss_weighting.log_vars["instance"].requires_grad  # not frozen
    with torch.no_grad():
        semantic.loss_weighting.log_vars["depth"].fill_(0.7)
        instance.loss_weighting.log_vars["instance"].fill_(-0.3)
    # the instance stage trains on the semantic stage's (frozen) encoder
    instance.backbone.load_state_dict(semantic.backbone.state_dict())
    torch.save({"model": semantic.state_dict()}, tmp_path / "s.pth")
    torch.save({"model": instance.state_dict()}, tmp_path / "i.pth")
    merged = merge_stage_checkpoints(
        str(tmp_path / "s.pth"), str(tmp_path / "i.pth"), str(tmp_path / "m.pth")
    )
    assert float(merged["loss_weighting.log_vars.depth"]) == pytest.approx(0.7)
    assert float(merged["loss_weighting.log_vars.instance"]) == pytest.approx(-0.3)
    full = build_model(cfg)  # the merged (joint-stage) model loads every weight
    incompatible = full.load_state_dict(merged, strict=False)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys


def test_plot_metrics_draws_the_weights(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [
        {
            "iteration": i,
            "total_loss": -0.5 + 0.01 * i,
            "loss_sem_seg": 1.0,
            "task_weight/sem_seg": 1.0 + 0.1 * i,
            "task_weight/depth": 2.0 - 0.05 * i,
            "depth_diagnostics/AbsRel_near": 0.1,
        }
        for i in range(40)
    ]
    (run / "metrics.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    written = plot_runs([str(run)], str(tmp_path / "plots"))
    assert "task_weight/sem_seg" in written and "task_weight/depth" in written
    assert written["task_weight/*"].endswith("task_weights.png")
    assert (tmp_path / "plots" / "task_weights.png").stat().st_size > 1000
    assert "total_loss" in written  # negative totals are plotted like any other
    assert "depth_diagnostics/AbsRel_near" not in written  # only when asked for
    asked = plot_runs([str(run)], str(tmp_path / "p2"), ["depth_diagnostics/*"])
    assert list(asked) == ["depth_diagnostics/AbsRel_near"]


def test_trainer_optimises_and_logs_the_weights(small_split, tmp_path):
    from panoptic_curriculum.engine import PanopticCurriculumTrainer

    cfg = tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        *_mode("uncertainty"),
        *["DATASETS.TRAIN", (small_split,), "DATASETS.TEST", ()],  # no evaluation
        *["OUTPUT_DIR", str(tmp_path), "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0],
        *["INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.CROP.SIZE", (64, 96), "SOLVER.WARMUP_ITERS", 0],
        *["MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON", False, "SOLVER.MAX_ITER", 2],
        *["TEST.EVAL_PERIOD", 0, "SOLVER.CHECKPOINT_PERIOD", 100],
    )
    trainer = PanopticCurriculumTrainer(cfg)
    before = {k: v.item() for k, v in trainer.model.loss_weighting.log_vars.items()}
    trainer.train()
    after = {k: v.item() for k, v in trainer.model.loss_weighting.log_vars.items()}
    assert all(after[k] != before[k] for k in before)  # the optimizer updates them
    records = [json.loads(x) for x in (tmp_path / "metrics.json").read_text().splitlines()]
    train_records = [r for r in records if "total_loss" in r]
    assert train_records
    assert {f"task_weight/{t}" for t in before} <= set(train_records[-1])
    assert "loss_uncertainty_reg" in train_records[-1]
