"""The transfer-then-merge curriculum: stage configs, run records, the summary, evaluating a
curriculum folder, freezing, merge equality, exact resume, atomic checkpoints, non-finite
losses. Re-runs with changed configs and other bad inputs: tests/hostile_inputs/."""

import glob
import json
import os
import shutil

import pytest
import torch
import yaml
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase
from detectron2.layers import FrozenBatchNorm2d
from detectron2.utils.events import EventStorage

from panoptic_curriculum import load_config
from panoptic_curriculum.engine import (
    PanopticCurriculumTrainer,
    evaluate_run,
    freeze_modules,
    merge_stage_checkpoints,
    run_curriculum,
    stage_config,
)
from panoptic_curriculum.engine.checkpoint import AtomicCheckpointer
from panoptic_curriculum.engine.merge import load_model_state
from panoptic_curriculum.engine.run_record import training_items
from panoptic_curriculum.data.dataset_mapper import RGBDDatasetMapper

from model_utils import fake_sample, tiny_cfg, tiny_curriculum_cfg


def _cfg(split, out_dir, *overrides):
    return tiny_curriculum_cfg(split, out_dir, *overrides)


def test_stage_configs(tmp_path):
    cfg = tiny_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    sem = stage_config(cfg, "semantic")
    assert not sem.MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON and sem.MODEL.POINT_HEAD.ENABLED
    assert sem.SOLVER.MAX_ITER == cfg.CURRICULUM.SEMANTIC_ITER
    inst = stage_config(cfg, "instance")
    pc = inst.MODEL.PANOPTIC_CURRICULUM
    assert (
        pc.INSTANCE_ON
        and not pc.SEM_SEG_ON
        and not pc.DEPTH_ON
        and not inst.MODEL.POINT_HEAD.ENABLED
    )
    assert inst.MODEL.FREEZE.PREFIXES == ["backbone"]
    assert inst.MODEL.WEIGHTS == os.path.join(str(tmp_path), "semantic", "model_final.pth")
    assert inst.SOLVER.BASE_LR == pytest.approx(
        cfg.SOLVER.BASE_LR * cfg.CURRICULUM.INSTANCE_LR_FACTOR
    )
    cfg.CURRICULUM.INSTANCE_LR_FACTOR = 3.0
    assert stage_config(cfg, "instance").SOLVER.BASE_LR == pytest.approx(3 * cfg.SOLVER.BASE_LR)
    assert stage_config(cfg, "semantic").SOLVER.BASE_LR == pytest.approx(cfg.SOLVER.BASE_LR)
    joint = stage_config(cfg, "joint")
    assert joint.SOLVER.BASE_LR == pytest.approx(
        cfg.SOLVER.BASE_LR * cfg.CURRICULUM.JOINT_LR_FACTOR
    )
    assert joint.MODEL.WEIGHTS.endswith(os.path.join("merge", "model_merged.pth"))
    with pytest.raises(ValueError, match="unknown curriculum stage"):
        stage_config(cfg, "pretrain")


def test_joint_alone_trains_jointly_from_the_config_weights(small_split, tmp_path):
    """CURRICULUM.STAGES ["joint"]: no curriculum, the whole model from MODEL.WEIGHTS (here
    random) at the full learning rate, evaluated on every task; 'joint' after 'semantic'
    without 'merge' is refused by the config check, naming the key."""
    cfg = _cfg(small_split, tmp_path / "joint_only", "CURRICULUM.STAGES", ["joint"])
    joint = stage_config(cfg, "joint")
    assert joint.MODEL.WEIGHTS == cfg.MODEL.WEIGHTS == ""
    assert joint.SOLVER.BASE_LR == cfg.SOLVER.BASE_LR
    assert joint.SOLVER.MAX_ITER == cfg.CURRICULUM.JOINT_ITER
    results = run_curriculum(cfg)
    assert list(results) == ["joint"]
    assert {"sem_seg", "segm", "panoptic_seg", "depth"} <= set(results["joint"])
    state = load_model_state(str(tmp_path / "joint_only" / "joint" / "model_final.pth"))
    assert any(k.startswith("roi_heads.") for k in state)
    assert any(k.startswith("point_head.") for k in state)
    assert not (tmp_path / "joint_only" / "merge").exists()
    with pytest.raises(ValueError, match="CURRICULUM.STAGES"):
        load_config(
            "configs/synthetic/curriculum_R18_FPN.yaml",
            ["CURRICULUM.STAGES", "['semantic', 'joint']"],
        )
    shipped = load_config("configs/synthetic/joint_R18_FPN.yaml")
    assert list(shipped.CURRICULUM.STAGES) == ["joint"]


def test_freeze_modules_outside_the_curriculum():
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    model.add_module("head", nn.Conv2d(4, 2, 1))
    frozen = freeze_modules(model, ["encoder"])
    assert set(frozen) == {
        "encoder.0.weight",
        "encoder.0.bias",
        "encoder.1.weight",
        "encoder.1.bias",
    }
    assert isinstance(model.encoder[1], FrozenBatchNorm2d)
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    out = model(torch.randn(2, 3, 8, 8))
    assert out.requires_grad  # the head still trains
    with pytest.raises(KeyError, match="matches no parameter"):
        freeze_modules(model, ["encodr"])


@pytest.fixture(scope="module")
def curriculum_run(small_split, module_tmp_path):
    out = module_tmp_path
    cfg = _cfg(
        small_split,
        out,
        *["CURRICULUM.STAGES", ["semantic", "instance", "merge", "joint"]],
        *["MODEL.INSTANCE_ADAPTER.NAME", "ResidualConvAdapter"],  # merged exactly too
    )
    results = run_curriculum(cfg)
    return cfg, out, results


def test_curriculum_runs_all_stages(curriculum_run):
    cfg, out, results = curriculum_run
    assert list(results) == ["semantic", "instance", "merge", "joint"]
    assert "sem_seg" in results["semantic"] and "depth" in results["semantic"]
    assert {"sem_seg", "segm", "panoptic_seg", "depth"} <= set(results["joint"])
    assert "segm" not in results["semantic"]
    assert "segm" in results["instance"] and "sem_seg" not in results["instance"]
    assert {"sem_seg", "segm", "panoptic_seg", "depth"} <= set(results["merge"])
    for stage in results:
        assert os.path.isfile(out / stage / "stage_complete.json")
        lines = (out / stage / "metrics.json").read_text().strip().splitlines()
        assert any("sem_seg/mIoU" in l or "segm/AP" in l for l in lines)  # eval results logged
    assert (out / "summary.txt").read_text().count("|") > 10


def test_instance_stage_leaves_the_encoder_bit_identical(curriculum_run):
    _, out, _ = curriculum_run
    sem = load_model_state(str(out / "semantic" / "model_final.pth"))
    inst = load_model_state(str(out / "instance" / "model_final.pth"))
    enc = [k for k in inst if k.startswith("backbone.")]
    assert enc and all(torch.equal(inst[k], sem[k]) for k in enc)
    # ... while the instance decoder did train (and started from random init)
    assert any(k.startswith("roi_heads.") for k in inst) and not any(
        k.startswith("roi_heads.") for k in sem
    )


def test_joint_stage_fine_tunes_the_merged_model_encoder_included(curriculum_run):
    """Claim 19: after the merge, the multi-task model trains further, encoder included."""
    _, out, _ = curriculum_run
    merged = load_model_state(str(out / "merge" / "model_merged.pth"))
    joint = load_model_state(str(out / "joint" / "model_final.pth"))
    assert set(joint) == set(merged)
    for part in ("backbone.", "sem_seg_head.", "roi_heads.", "depth_head.", "instance_adapter."):
        keys = [k for k in merged if k.startswith(part)]
        assert keys and any(not torch.equal(merged[k], joint[k]) for k in keys), part


def test_instance_stage_stores_no_encoder_activations(curriculum_run):
    cfg, out, _ = curriculum_run
    c = stage_config(cfg, "instance", str(out))
    model = PanopticCurriculumTrainer.build_model(c)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert any(p.requires_grad for p in model.roi_heads.parameters())
    grads = []
    model.backbone.register_forward_hook(
        lambda m, i, o: grads.append(any(v.requires_grad for v in o.values()))
    )
    model.train()
    with EventStorage():
        losses = model([fake_sample(seed=0)])
    assert grads == [False]  # no autograd graph through the encoder
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}


def test_merged_model_reproduces_each_stage(curriculum_run, small_dicts):
    cfg, out, _ = curriculum_run

    def load(stage):
        c = stage_config(cfg, stage, str(out))
        model = PanopticCurriculumTrainer.build_model(c)
        weights = str(out / stage / "model_final.pth") if stage != "merge" else c.MODEL.WEIGHTS
        DetectionCheckpointer(model).load(weights)
        return model.eval(), c

    merged, c = load("merge")
    semantic, _ = load("semantic")
    instance, _ = load("instance")
    x = RGBDDatasetMapper(c, is_train=False)(small_dicts[0])
    with torch.no_grad():
        m, s, i = merged([x])[0], semantic([x])[0], instance([x])[0]
    assert torch.equal(m["sem_seg"], s["sem_seg"])
    assert torch.equal(m["depth"], s["depth"])
    for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        a, b = m["instances"].get(field), i["instances"].get(field)
        assert torch.equal(getattr(a, "tensor", a), getattr(b, "tensor", b)), field


def test_rerun_skips_finished_stages(curriculum_run):
    cfg, out, results = curriculum_run
    stamp = os.path.getmtime(out / "semantic" / "model_final.pth")
    again = run_curriculum(cfg)
    assert json.loads(json.dumps(again)) == json.loads(json.dumps(results))
    assert os.path.getmtime(out / "semantic" / "model_final.pth") == stamp


def test_stages_record_the_config_they_trained_with(curriculum_run):
    cfg, out, _ = curriculum_run
    for stage in ("semantic", "instance", "merge", "joint"):
        text = (out / stage / "config.yaml").read_text()
        assert text.startswith(f"# panoptic_curriculum run record: the config stage '{stage}'")
        assert training_items(yaml.safe_load(text)) == training_items(
            stage_config(cfg, stage, str(out))
        )
    root = (out / "config.yaml").read_text()
    assert "<stage>/config.yaml" in root and "trained with other values" not in root
    assert yaml.safe_load(root)["CURRICULUM"] == yaml.safe_load(cfg.dump())["CURRICULUM"]


def test_one_stage_adds_its_row_to_the_summary(curriculum_run, tmp_path):
    """--stage merge in a folder whose other stages are finished: the summary keeps their rows
    (the folder is a moved, hard-linked copy: its records still match)."""
    cfg, out, results = curriculum_run
    shutil.copytree(out, tmp_path / "run", copy_function=os.link)
    # what the merge stage writes into (not through the links, into the fixture's files)
    for name in ("stage_complete.json", "metrics.json"):
        os.remove(tmp_path / "run" / "merge" / name)
    shutil.rmtree(tmp_path / "run" / "merge" / "inference")
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR = str(tmp_path / "run")
    again = run_curriculum(c, stages=["merge"])
    assert list(again) == ["merge"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary) == ["semantic", "instance", "merge", "joint"]
    assert summary == json.loads(json.dumps(results))
    rows = (tmp_path / "run" / "summary.txt").read_text().splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["semantic", "instance", "merged", "joint"]


def test_stages_outside_eval_stages_train_without_an_evaluation(curriculum_run, tmp_path):
    """CURRICULUM.EVAL_STAGES ["merge"]: the semantic and instance stages train as before and
    are not evaluated (no results, no inference folder, no evaluation in metrics.json, no row
    in the summary); the merged model, the same as with every stage evaluated, is."""
    cfg, out, results = curriculum_run
    c = _cfg(
        cfg.DATASETS.TRAIN[0],
        tmp_path,
        *["CURRICULUM.STAGES", ["semantic", "instance", "merge"]],
        *["MODEL.INSTANCE_ADAPTER.NAME", "ResidualConvAdapter"],
        *["CURRICULUM.EVAL_STAGES", ["merge"]],
    )
    again = run_curriculum(c)
    assert again["semantic"] == {} and again["instance"] == {}
    for stage in ("semantic", "instance"):
        assert not (tmp_path / stage / "inference").exists()
        metrics = (tmp_path / stage / "metrics.json").read_text()
        assert "total_loss" in metrics and "/mIoU" not in metrics and "/AP" not in metrics
        assert json.loads((tmp_path / stage / "stage_complete.json").read_text())["results"] == {}
    assert json.loads(json.dumps(again["merge"])) == json.loads(json.dumps(results["merge"]))
    rows = (tmp_path / "summary.txt").read_text().splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["merged"]
    bad = _cfg(cfg.DATASETS.TRAIN[0], tmp_path / "bad", "CURRICULUM.EVAL_STAGES", ["merged"])
    with pytest.raises(ValueError, match=r"CURRICULUM.EVAL_STAGES = \['merged'\]"):
        run_curriculum(bad)


def test_eval_only_resume_evaluates_the_final_model(curriculum_run):
    """--eval-only --resume on a curriculum folder: its final (joint-stage) model
    (MODEL.WEIGHTS unused), with that stage's config: the joint stage's own results again."""
    cfg, out, results = curriculum_run
    c = cfg.clone()
    c.defrost()
    c.MODEL.WEIGHTS = "elsewhere/unused.pth"
    evaluated = evaluate_run(c, resume=True)
    assert json.loads(json.dumps(evaluated)) == json.loads(json.dumps(results["joint"]))
    assert (out / "joint" / "inference" / "config.yaml").is_file()


def test_shipped_configs_leave_solver_max_iter_to_the_curriculum():
    """No shipped YAML sets SOLVER.MAX_ITER (dead in the curriculum, which rejects it)."""
    for path in glob.glob(os.path.join("configs", "**", "*.yaml"), recursive=True):
        solver = (yaml.safe_load(open(path)) or {}).get("SOLVER") or {}
        assert "MAX_ITER" not in solver, path
        assert load_config(path).SOLVER.MAX_ITER == 0, path


def test_merge_refuses_different_encoders(curriculum_run, tmp_path):
    _, out, _ = curriculum_run
    inst = torch.load(out / "instance" / "model_final.pth", weights_only=True)
    key = next(k for k in inst["model"] if k.startswith("backbone."))
    inst["model"][key] = inst["model"][key] + 1
    torch.save(inst, tmp_path / "bad_instance.pth")
    with pytest.raises(ValueError, match="encoder .* differs"):
        merge_stage_checkpoints(
            str(out / "semantic" / "model_final.pth"),
            str(tmp_path / "bad_instance.pth"),
            str(tmp_path / "m.pth"),
        )


class _Interrupt(Exception):
    pass


class _KillAt(HookBase):
    def __init__(self, it):
        self.it = it

    def before_step(self):
        if self.trainer.iter == self.it:
            raise _Interrupt(f"killed at iteration {self.it}")


def _killing_trainer(it):
    class Killing(PanopticCurriculumTrainer):
        def build_hooks(self):
            return super().build_hooks() + [_KillAt(it)]

    return Killing


@pytest.mark.parametrize("grouping", [False, True])  # eager and lazy DataLoader iterators
def test_interrupted_stage_resumes_to_the_same_result(small_split, tmp_path, grouping):
    overrides = [
        "CURRICULUM.SEMANTIC_ITER",
        6,
        "SOLVER.CHECKPOINT_PERIOD",
        2,
        "CURRICULUM.STAGES",
        ["semantic"],
        "DATALOADER.ASPECT_RATIO_GROUPING",
        grouping,
    ]
    straight = _cfg(small_split, tmp_path / "a", *overrides)
    run_curriculum(straight)
    interrupted = _cfg(small_split, tmp_path / "b", *overrides)
    with pytest.raises(_Interrupt):
        run_curriculum(interrupted, trainer_cls=_killing_trainer(4))
    assert (tmp_path / "b" / "semantic" / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not (tmp_path / "b" / "semantic" / "stage_complete.json").exists()
    results = run_curriculum(interrupted)  # the same command again
    a = load_model_state(str(tmp_path / "a" / "semantic" / "model_final.pth"))
    b = load_model_state(str(tmp_path / "b" / "semantic" / "model_final.pth"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    expected = json.loads((tmp_path / "a" / "semantic" / "stage_complete.json").read_text())
    assert json.loads(json.dumps(results))["semantic"] == expected["results"]


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_0001")
    before = (tmp_path / "model_0001.pth").read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_0001")
    assert (tmp_path / "model_0001.pth").read_bytes() == before  # old file intact
    assert (tmp_path / "last_checkpoint").read_text() == "model_0001.pth"


def test_non_finite_loss_names_the_loss_and_iteration():
    from detectron2.modeling import build_model

    model = build_model(tiny_cfg())
    with torch.no_grad():
        model.depth_head.predictor.bias.fill_(float("nan"))
    model.train()
    with EventStorage(start_iter=17):
        with pytest.raises(FloatingPointError, match=r"iteration 17: .*loss_depth"):
            model([fake_sample(seed=0)])


def test_unreachable_weights_url_is_named():
    """No network: an http MODEL.WEIGHTS fails with a message naming the URL (loopback port 9,
    where nothing listens, refuses at once)."""
    url = "http://127.0.0.1:9/weights/model_final.pth"
    with pytest.raises(OSError, match="cannot download the weights http://127.0.0.1:9/weights"):
        AtomicCheckpointer(nn.Linear(2, 2)).load(url)
