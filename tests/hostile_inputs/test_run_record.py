"""Hostile and damaged inputs around a run's record: re-runs of a trained OUTPUT_DIR with
another config, damaged records, detectron2 keys that the curriculum does not use, devices
the machine lacks, evaluation without a model, and a prediction without a 3D point."""

import json
import os
import shutil
import sys

import pytest
import torch
import yaml

from detectron2.engine import HookBase
from detectron2.modeling import build_model

from panoptic_curriculum.device import check_device
from panoptic_curriculum.engine import (
    ConfigMismatchError,
    PanopticCurriculumTrainer,
    evaluate_run,
    run_curriculum,
)
from panoptic_curriculum.engine.run_record import is_evaluation_only

from log_utils import isolated_loggers
from model_utils import tiny_cfg, tiny_curriculum_cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEMANTIC_ONLY = ["CURRICULUM.STAGES", ["semantic"], "CURRICULUM.SEMANTIC_ITER", 2]


def _linked_copy(src, dst):
    """A copy of a run folder made of hard links (no disk space); the code under test only
    replaces files (atomic writes), except metrics.json, which is appended to: dropped."""
    shutil.copytree(src, dst, copy_function=os.link)
    for folder, _, files in os.walk(dst):
        if "metrics.json" in files:
            os.remove(os.path.join(folder, "metrics.json"))
    return dst


@pytest.fixture(scope="module")
def finished_run(small_split, module_tmp_path):
    """A finished semantic-only curriculum (2 iterations): (its config, its folder)."""
    out = module_tmp_path / "run"
    cfg = tiny_curriculum_cfg(small_split, out, *SEMANTIC_ONLY)
    run_curriculum(cfg)
    return cfg, out


def _with(cfg, *overrides):
    c = cfg.clone()
    c.defrost()
    c.merge_from_list(list(overrides))
    c.freeze()
    return c


def test_rerun_with_changed_training_keys_stops_with_the_diff(finished_run):
    """Bad input: a re-run of a finished OUTPUT_DIR with another SOLVER.BASE_LR and length."""
    cfg, out = finished_run
    root_config = (out / "config.yaml").read_bytes()
    stamp = os.path.getmtime(out / "semantic" / "model_final.pth")
    changed = _with(cfg, "SOLVER.BASE_LR", 0.01, "CURRICULUM.SEMANTIC_ITER", 5)
    with pytest.raises(ConfigMismatchError) as info:
        run_curriculum(changed)
    message = str(info.value)
    assert f"stage 'semantic' (finished), recorded in {out / 'semantic' / 'config.yaml'}" in message
    assert f"SOLVER.BASE_LR: {cfg.SOLVER.BASE_LR!r} (recorded) -> 0.01 (now)" in message
    assert "SOLVER.MAX_ITER: 2 (recorded) -> 5 (now)" in message
    assert "Pick a new OUTPUT_DIR" in message and "--allow-config-change" in message
    assert message.count(" (recorded) -> ") == 2  # only the keys that change the training
    # nothing was retrained or rewritten: the folder still says what it was trained with
    assert (out / "config.yaml").read_bytes() == root_config
    assert os.path.getmtime(out / "semantic" / "model_final.pth") == stamp


def test_allowed_config_change_keeps_a_finished_stage(finished_run, tmp_path):
    """Bad input: the changed config again, with allow_config_change: the finished stage is kept
    as recorded and the root config.yaml names the keys it was trained with otherwise."""
    cfg, out = finished_run
    moved = _linked_copy(out, tmp_path / "moved")
    recorded = json.loads((out / "semantic" / "stage_complete.json").read_text())["results"]
    changed = _with(cfg, "OUTPUT_DIR", str(moved), "SOLVER.BASE_LR", 0.01)
    results = run_curriculum(changed, allow_config_change=True)
    assert json.loads(json.dumps(results["semantic"])) == recorded
    assert not (moved / "semantic" / "metrics.json").exists()  # nothing trained
    root = (moved / "config.yaml").read_text()
    assert "Stage 'semantic' was trained with other values of: SOLVER.BASE_LR" in root
    record = yaml.safe_load((moved / "semantic" / "config.yaml").read_text())
    assert record["SOLVER"]["BASE_LR"] == cfg.SOLVER.BASE_LR  # still what was trained


def test_evaluation_only_differences_are_accepted(finished_run, tmp_path):
    """Not refused: the run moved to another folder, re-run with other evaluation-only keys
    (test sizes and thresholds, workers, checkpoint period, inference outputs, a later stage's
    length); TEST.PRECISE_BN stays training-relevant."""
    cfg, out = finished_run
    moved = _linked_copy(out, tmp_path / "moved")
    recorded = json.loads((out / "semantic" / "stage_complete.json").read_text())["results"]
    changed = _with(
        cfg,
        *["OUTPUT_DIR", str(moved), "INPUT.MIN_SIZE_TEST", 128, "TEST.DETECTIONS_PER_IMAGE", 7],
        *["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.3, "DATALOADER.NUM_WORKERS", 1],
        *["SOLVER.CHECKPOINT_PERIOD", 1, "MODEL.POINT_HEAD.INFERENCE_ON", True],
        *["MODEL.PANOPTIC_CURRICULUM.PANOPTIC_OVERLAP_THRESH", 0.3, "MODEL.DEVICE", "cpu"],
        *["CURRICULUM.INSTANCE_ITER", 50, "TEST.EVAL_PERIOD", 1],
    )
    results = run_curriculum(changed)
    assert json.loads(json.dumps(results["semantic"])) == recorded
    assert not (moved / "semantic" / "metrics.json").exists()  # skipped, not retrained
    assert is_evaluation_only("MODEL.RPN.POST_NMS_TOPK_TEST")
    assert not is_evaluation_only("TEST.PRECISE_BN.ENABLED")
    assert not is_evaluation_only("SOLVER.BASE_LR") and not is_evaluation_only("MODEL.WEIGHTS")


@pytest.mark.parametrize(
    "content",
    [b"\x00\xff\xfe garbage \x89", b"!!python/object/apply:os.system ['touch {marker}']\n"],
    ids=["garbage", "python_tag"],
)
def test_damaged_run_record_is_named(finished_run, tmp_path, content):
    """Bad input: a stage's config.yaml record replaced by binary garbage, or by YAML whose
    Python tag would run a command (it must not run)."""
    cfg, out = finished_run
    moved = _linked_copy(out, tmp_path / "moved")
    record = moved / "semantic" / "config.yaml"
    marker = tmp_path / "PWNED"
    record.unlink()
    record.write_bytes(content.replace(b"{marker}", str(marker).encode()))
    with pytest.raises(ValueError, match=f"run record {record} cannot be read"):
        run_curriculum(_with(cfg, "OUTPUT_DIR", str(moved)))
    assert not marker.exists()


class _Interrupt(Exception):
    pass


def _killed_at(iteration):
    class Kill(HookBase):
        def before_step(self):
            if self.trainer.iter == iteration:
                raise _Interrupt(iteration)

    class Killing(PanopticCurriculumTrainer):
        def build_hooks(self):
            return super().build_hooks() + [Kill()]

    return Killing


def test_resume_with_a_new_schedule(small_split, tmp_path):
    """Bad input: resuming an interrupted stage with another SOLVER.BASE_LR and a longer
    CURRICULUM.SEMANTIC_ITER: refused with the diff; with allow_config_change the new schedule
    applies from the resumed iteration (the checkpoint's old one would overrun its end)."""
    overrides = [*SEMANTIC_ONLY, "CURRICULUM.SEMANTIC_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 1]
    cfg = tiny_curriculum_cfg(small_split, tmp_path / "run", *overrides)
    with pytest.raises(_Interrupt):
        run_curriculum(cfg, trainer_cls=_killed_at(2))
    stage = tmp_path / "run" / "semantic"
    assert (stage / "last_checkpoint").read_text() == "model_0000001.pth"
    longer = _with(cfg, "SOLVER.BASE_LR", 0.01, "CURRICULUM.SEMANTIC_ITER", 4)
    with pytest.raises(ConfigMismatchError, match=r"'semantic' \(half-finished\)") as info:
        run_curriculum(longer)
    assert "SOLVER.MAX_ITER: 3 (recorded) -> 4 (now)" in str(info.value)

    run_curriculum(longer, allow_config_change=True)
    assert (stage / "stage_complete.json").is_file()
    records = [json.loads(line) for line in (stage / "metrics.json").read_text().splitlines()]
    lr = [r["lr"] for r in records if r.get("iteration") == 3 and "lr" in r]
    assert lr and lr[-1] == pytest.approx(0.01 * (1 - 3 / 4) ** 0.9)  # poly, new base and end
    now = yaml.safe_load((stage / "config.yaml").read_text())
    before = yaml.safe_load((stage / "config.before_iter_2.yaml").read_text())
    assert (now["SOLVER"]["BASE_LR"], now["SOLVER"]["MAX_ITER"]) == (0.01, 4)
    assert (before["SOLVER"]["BASE_LR"], before["SOLVER"]["MAX_ITER"]) == (cfg.SOLVER.BASE_LR, 3)
    assert "from iteration 2 on" in (stage / "config.yaml").read_text()


def test_solver_max_iter_is_rejected(small_split, tmp_path):
    """Bad input: SOLVER.MAX_ITER 5000 in a curriculum config (the stages use
    CURRICULUM.*_ITER); nothing is written."""
    cfg = tiny_curriculum_cfg(small_split, tmp_path / "run", "SOLVER.MAX_ITER", 5000)
    with pytest.raises(ValueError, match=r"SOLVER.MAX_ITER = 5000 is not used .*"):
        run_curriculum(cfg)
    with pytest.raises(ValueError, match=r"CURRICULUM.SEMANTIC_ITER \(3\)"):
        run_curriculum(cfg)
    assert not (tmp_path / "run").exists()


def test_model_device_this_machine_lacks(monkeypatch):
    """Bad input: MODEL.DEVICE cuda on a machine without GPUs, cuda:5 on one with 2, and 'gpu',
    which names no device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cfg = tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", "MODEL.DEVICE", "cuda")
    with pytest.raises(ValueError, match="no CUDA device; set MODEL.DEVICE cpu"):
        build_model(cfg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg.MODEL.DEVICE = "cuda:5"
    with pytest.raises(ValueError, match=r"has 2 CUDA devices \(cuda:0 to cuda:1\)"):
        check_device(cfg)
    cfg.MODEL.DEVICE = "cuda:1"
    assert check_device(cfg) == torch.device("cuda:1")
    cfg.MODEL.DEVICE = "gpu"
    with pytest.raises(ValueError, match="MODEL.DEVICE 'gpu' is not a device name"):
        check_device(cfg)


def test_eval_only_without_a_model(small_split, tmp_path):
    """Bad input: --eval-only --resume on a curriculum folder whose only stage is unfinished,
    and --eval-only with neither MODEL.WEIGHTS nor a checkpoint (never a random model)."""
    (tmp_path / "run" / "semantic").mkdir(parents=True)
    (tmp_path / "run" / "semantic" / "last_checkpoint").write_text("model_0000001.pth")
    cfg = tiny_curriculum_cfg(small_split, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"no finished stage \(semantic: half-finished\)"):
        evaluate_run(cfg, resume=True)
    cfg = tiny_curriculum_cfg(small_split, tmp_path / "empty", "MODEL.WEIGHTS", "")
    with pytest.raises(ValueError, match="--eval-only needs weights"):
        evaluate_run(cfg, resume=True)


def test_demo_image_without_a_3d_point(tmp_path):
    """Bad input: an image whose prediction has no valid 3D point (every class listed in
    MODEL.POINT_HEAD.NO_SURFACE_CLASSES): the 2D pictures and the summary are written, and the
    cloud is reported empty."""
    import cv2
    import numpy as np
    from detectron2.checkpoint import DetectionCheckpointer

    cfg = tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", "DATALOADER.NUM_WORKERS", 0)
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("tiny_model")
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "img.png"), image)
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import demo
    finally:
        sys.path.pop(0)
    out = tmp_path / "out"
    argv = ["--config-file", str(tmp_path / "tiny.yaml"), "--input", str(tmp_path / "img.png")]
    argv += ["--output", str(out), "MODEL.WEIGHTS", str(tmp_path / "tiny_model.pth")]
    argv += ["MODEL.POINT_HEAD.NO_SURFACE_CLASSES", "[0, 1, 2, 3, 4, 5, 6]"]
    with isolated_loggers():
        assert demo.main(argv) == 0
    summary = json.loads((out / "demo_summary.json").read_text())
    entry = summary["images"][0]
    assert summary["num_processed"] == 1 and entry["num_points"] == 0
    assert entry["pointcloud"].startswith("empty")
    assert set(entry["files"]) == {"semantic", "instances", "panoptic", "depth"}
    assert all((out / f).is_file() for f in entry["files"].values())
    assert not list(out.glob("*_pointcloud.*"))
