"""The ablation engine: one wall-clock budget turned into iterations per variant, tables of
mean ± std over seeds, resumable runs."""

import json
import os

import pytest
import yaml

from detectron2.config import get_cfg

from panoptic_curriculum.engine import ablation as ablation_module
from panoptic_curriculum.engine.ablation import (
    VARIANTS,
    measure_step_time,
    paired_table,
    plan_budget,
    resolve_per_class,
    results_table,
    run_ablation,
    variant_config,
)
from panoptic_curriculum.config import add_panoptic_curriculum_config, load_config

from panoptic_curriculum.engine.run_record import ConfigMismatchError, record_diff

from model_utils import POINT_TRAINING_DEFAULTS, tiny_cfg
from test_curriculum import _cfg

MAIN_CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "configs", "synthetic", "curriculum_R18_FPN.yaml"
)


def test_plan_gives_every_variant_the_curriculums_seconds():
    cfg = tiny_cfg()
    cfg.CURRICULUM.STAGES = ["semantic", "instance", "merge", "joint"]
    cfg.CURRICULUM.SEMANTIC_ITER, cfg.CURRICULUM.INSTANCE_ITER = 100, 50
    cfg.CURRICULUM.JOINT_ITER = 20
    times = {
        "stage:semantic": 1.0,
        "stage:instance": 0.5,
        "stage:joint": 1.5,
        "joint_scratch": 1.5,
        "semantic_only": 0.4,
    }
    plan = plan_budget(cfg, ["curriculum", "joint_scratch", "semantic_only"], times)
    assert plan["seconds"] == pytest.approx(100 * 1.0 + 50 * 0.5 + 20 * 1.5)
    assert plan["iterations"]["curriculum"] == {"semantic": 100, "instance": 50, "joint": 20}
    assert plan["iterations"]["joint_scratch"] == 103  # 155 s / 1.5 s
    assert plan["iterations"]["semantic_only"] == 388  # 155 s / 0.4 s
    cfg.CURRICULUM.STAGES = ["merge"]
    with pytest.raises(ValueError, match="CURRICULUM.STAGES"):
        plan_budget(cfg, ["joint_scratch"], times)


def test_per_class_columns_are_checked_against_the_test_sets_classes():
    from detectron2.data import MetadataCatalog

    cfg = tiny_cfg()
    cfg.DATASETS.TEST = ("synthetic_scenes_val",)
    # default: the test set's thing classes
    assert resolve_per_class(cfg, None) == ["ball", "crate", "container", "pillar"]
    assert resolve_per_class(cfg, ["crate", "sky"]) == ["crate", "sky"]
    assert resolve_per_class(cfg, []) == []
    with pytest.raises(ValueError, match=r"'lamp'.*synthetic_scenes_val.*'ground'"):
        resolve_per_class(cfg, ["ball", "lamp"])
    # an override typed after --per-class (it takes every word up to the next option) is
    # named as such instead of silently becoming a column and leaving the config unchanged
    with pytest.raises(ValueError, match="config overrides KEY VALUE go after every option"):
        resolve_per_class(cfg, ["ball", "CURRICULUM.SEMANTIC_ITER", "250"])
    # many thing classes (COCO's 80): no default columns
    name = "_ablation_test_many_things"
    MetadataCatalog.get(name).set(
        thing_classes=[f"t{i}" for i in range(20)], stuff_classes=[f"t{i}" for i in range(20)]
    )
    cfg.DATASETS.TEST = (name,)
    assert resolve_per_class(cfg, None) == []
    assert resolve_per_class(cfg, ["t3"]) == ["t3"]


def test_table_reports_mean_and_std_over_seeds():
    results = {
        "a": {
            0: {"sem_seg": {"mIoU": 80.0, "IoU-ball": 50.0}, "depth": {"AbsRel": 0.1, "d1": 0.9}},
            1: {"sem_seg": {"mIoU": 82.0, "IoU-ball": 54.0}, "depth": {"AbsRel": 0.2, "d1": 0.8}},
        },
        "b": {0: {"segm": {"AP": 40.0}}},
    }
    table = results_table(results, per_class=["ball"])
    row_a = next(l for l in table.splitlines() if l.startswith("| a "))
    assert "81.0 ± 1.4" in row_a and "52.0 ± 2.8" in row_a and "0.150 ± 0.071" in row_a
    row_b = next(l for l in table.splitlines() if l.startswith("| b "))
    assert "40.0 ± 0.0" in row_b and row_b.count("| - ") == 5  # the tasks it has no model for


def test_paired_table_differences_by_seed():
    """Each variant minus the reference seed by seed, over the seeds both have: arms that
    move together from seed to seed give a difference with a small spread."""
    results = {
        "curriculum": {
            0: {"sem_seg": {"mIoU": 80.0, "IoU-ball": 50.0}, "depth": {"d1": 0.90}},
            1: {"sem_seg": {"mIoU": 90.0, "IoU-ball": 60.0}, "depth": {"d1": 0.80}},
            2: {"sem_seg": {"mIoU": 70.0, "IoU-ball": 70.0}},
        },
        "joint_scratch": {
            0: {"sem_seg": {"mIoU": 81.0, "IoU-ball": 48.0}, "depth": {"d1": 0.85}},
            1: {"sem_seg": {"mIoU": 92.0, "IoU-ball": 58.0}, "depth": {"d1": 0.78}},
        },
        "depth_only": {5: {"depth": {"d1": 0.99}}},  # no seed in common: no row
    }
    table = paired_table(results, "curriculum", per_class=["ball"])
    assert table.startswith("Paired by seed, each variant minus curriculum")
    (row,) = [l for l in table.splitlines() if l.startswith("| joint_scratch − curriculum")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # seeds 0 and 1: mIoU +1, +2; mask AP absent; d1 -0.05, -0.02; ball -2, -2
    assert cells[1] == "2" and cells[2] == "+1.5 ± 0.7" and cells[3] == "-"
    assert cells[6] == "-0.035 ± 0.021" and cells[7] == "-2.0 ± 0.0"
    assert "depth_only" not in table
    assert paired_table({"curriculum": results["curriculum"]}, "curriculum") == ""


def test_single_task_variants_build_only_their_task():
    on = lambda v: dict(zip(VARIANTS[v].opts[0::2], VARIANTS[v].opts[1::2]))  # noqa: E731
    assert on("semantic_only")["MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON"] is False
    assert on("instance_only")["MODEL.PANOPTIC_CURRICULUM.SEM_SEG_ON"] is False
    assert on("depth_only")["MODEL.PANOPTIC_CURRICULUM.DEPTH_ON"] is True
    assert on("depth_only")["MODEL.POINT_HEAD.ENABLED"] is False


def test_point_training_variants_mean_the_same_whatever_the_config_sets():
    """The point-branch variants set sampling, depth detaching and L_consist's direction
    explicitly, so that changing a config's defaults does not change what a variant is."""
    cfg = load_config(MAIN_CONFIG)
    keys = ("SAMPLING", "DETACH_DEPTH", "CONSISTENCY_DIRECTION", "CONSISTENCY_DEPTH_GATE")
    expected = {
        "curriculum_point_uniform": ("uniform", False, "both", 0.0),
        "curriculum_point_balanced": ("class_balanced", True, "both", 0.0),
        "curriculum_point_balanced_to_3d": ("class_balanced", True, "to_3d", 0.0),
        "curriculum_better_teaches": ("class_balanced", True, "better_teaches", 0.0),
        "curriculum_image_features": ("class_balanced", True, "to_3d", 0.0),
        "curriculum_image_features_plane": ("class_balanced", True, "to_3d", 0.0),
        "curriculum_image_features_to_2d": ("class_balanced", True, "to_2d", 0.0),
        "curriculum_image_features_both": ("class_balanced", True, "both", 0.0),
        "curriculum_image_features_better_teaches": (
            "class_balanced",
            True,
            "better_teaches",
            0.0,
        ),
        "curriculum_image_features_depth_gate": ("class_balanced", True, "to_3d", 1.25),
    }
    for name, values in expected.items():
        c = variant_config(cfg, name, 0, "out", {"semantic": 1})
        assert tuple(getattr(c.MODEL.POINT_HEAD, k) for k in keys) == values, name
        assert c.MODEL.POINT_HEAD.USE_IMAGE_FEATURES == name.startswith("curriculum_image")
        assert c.MODEL.POINT_HEAD.LIFT == ("plane" if name.endswith("_plane") else "depth")
    # curriculum_point_uniform is the plugin's defaults
    plugin = get_cfg()
    add_panoptic_curriculum_config(plugin)
    plugin_defaults = tuple(getattr(plugin.MODEL.POINT_HEAD, k) for k in keys)
    assert plugin_defaults == expected["curriculum_point_uniform"]
    # the main job's config is the measured best: balanced, detached, image features, the
    # point network teaching the 2D head
    main = tuple(getattr(cfg.MODEL.POINT_HEAD, k) for k in keys)
    assert main == expected["curriculum_image_features_to_2d"]
    assert cfg.MODEL.POINT_HEAD.USE_IMAGE_FEATURES and cfg.MODEL.POINT_HEAD.LIFT == "depth"


def test_curriculum_variants_evaluate_their_final_stage():
    """A variant's result is its final stage's evaluation, even where the config's
    CURRICULUM.EVAL_STAGES leaves that stage out."""
    cfg = load_config(MAIN_CONFIG)
    assert list(cfg.CURRICULUM.EVAL_STAGES) == ["merge", "joint"]
    assert list(variant_config(cfg, "curriculum", 0, "out", {}).CURRICULUM.EVAL_STAGES) == [
        "merge",
        "joint",
    ]
    cfg.defrost()
    cfg.CURRICULUM.EVAL_STAGES = []
    c = variant_config(cfg, "curriculum", 0, "out", {})
    assert list(c.CURRICULUM.EVAL_STAGES) == ["joint"]
    cfg.CURRICULUM.STAGES = ["semantic", "instance", "merge"]
    c = variant_config(cfg, "curriculum", 0, "out", {})
    assert list(c.CURRICULUM.EVAL_STAGES) == ["merge"]


def test_ablation_runs_measures_and_resumes(small_split, tmp_path, monkeypatch):
    cfg = _cfg(small_split, tmp_path / "root", "CURRICULUM.STAGES", ["semantic"])
    cfg.CURRICULUM.SEMANTIC_ITER = 2
    out = tmp_path / "abl"
    timed = []
    real_measure = ablation_module.measure_step_time

    def spy(c, *args, weights=None, **kwargs):
        timed.append(weights)
        return real_measure(c, *args, weights=weights, **kwargs)

    monkeypatch.setattr(ablation_module, "measure_step_time", spy)
    content = run_ablation(cfg, ["semantic_only"], [0], str(out), per_class=["ball"])
    # timed side by side with the curriculum's trained weights: the stage, then the variant
    final = str(out / "curriculum_seed0" / "semantic" / "model_final.pth")
    assert timed == [final, final]
    plan = json.loads((out / "budget_plan.json").read_text())
    assert plan["iterations"]["semantic_only"] >= 1 and plan["step_times"]["stage:semantic"] > 0
    # the budget is the config's curriculum, trained first and reported with the rest; its
    # stages and the other variants were timed side by side with trained weights
    assert plan["iterations"]["curriculum"] == {"semantic": 2}
    assert plan["budget_run"] == str(out / "curriculum_seed0")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        measure_step_time(cfg, weights=str(tmp_path / "missing.pth"))
    assert set(content["results"]) == {"curriculum", "semantic_only"}
    assert "mIoU" in content["results"]["curriculum"][0]["sem_seg"]
    assert set(content["results"]["semantic_only"]) == {0}
    assert "mIoU" in content["results"]["semantic_only"][0]["sem_seg"]
    assert "| semantic_only |" in (out / "ablation.md").read_text()
    assert "| semantic_only − curriculum | 1 |" in (out / "ablation.md").read_text()
    measured = "measured seconds per run (training and evaluation), mean over seeds: "
    assert measured + "curriculum " in (out / "ablation.md").read_text()
    assert ", semantic_only " in (out / "ablation.md").read_text().split(measured)[1]
    # resumed: finished runs are read back, not retrained
    record = out / "semantic_only_seed0" / "ablation_result.json"
    data = json.loads(record.read_text())
    data["final"]["sem_seg"]["mIoU"] = -1.0
    record.write_text(json.dumps(data))
    again = run_ablation(cfg, ["semantic_only"], [0], str(out))
    assert again["results"]["semantic_only"][0]["sem_seg"]["mIoU"] == -1.0
    # ... but only under the config they trained with: another training key (here a
    # learning rate, or a curriculum stage's rate factor) is refused with the key named,
    # instead of the earlier numbers being reported as the new config's
    assert json.loads(record.read_text())["config"]["SOLVER"]["BASE_LR"] == cfg.SOLVER.BASE_LR
    changed = cfg.clone()
    changed.defrost()
    changed.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR * 3
    with pytest.raises(ConfigMismatchError, match=r"(?s)semantic_only_seed0.*SOLVER.BASE_LR"):
        run_ablation(changed, ["semantic_only"], [0], str(out))
    changed = cfg.clone()
    changed.defrost()
    changed.CURRICULUM.JOINT_LR_FACTOR = 0.5
    with pytest.raises(ConfigMismatchError, match="CURRICULUM.JOINT_LR_FACTOR"):
        run_ablation(changed, ["semantic_only"], [0], str(out))
    evaluation_only = cfg.clone()
    evaluation_only.defrost()
    evaluation_only.CURRICULUM.EVAL_STAGES = []
    evaluation_only.DATALOADER.NUM_WORKERS = 0
    read_back = run_ablation(evaluation_only, ["semantic_only"], [0], str(out))
    assert read_back["results"]["semantic_only"][0]["sem_seg"]["mIoU"] == -1.0
    with pytest.raises(ValueError, match="unknown ablation variants"):
        run_ablation(cfg, ["nope"], [0], str(out))
    # a variant added later gets the saved plan's budget: a curriculum variant the same
    # stage iterations, any other as many iterations as its measured step fits
    seconds = plan["seconds"]
    names = ["semantic_only", "curriculum_no_point", "depth_only"]
    more = run_ablation(cfg, names, [0], str(out))
    # the budget run's stage timed again beside the new variant (the ratio decides)
    assert timed[2:] == [final, final]
    extended = json.loads((out / "budget_plan.json").read_text())
    assert extended["seconds"] == seconds
    depth_step = extended["step_times"]["depth_only"]
    assert extended["iterations"]["depth_only"] == max(1, round(seconds / depth_step))
    assert "AbsRel" in more["results"]["depth_only"][0]["depth"]
    assert extended["iterations"]["curriculum_no_point"] == {"semantic": 2}
    assert extended["iterations"]["semantic_only"] == plan["iterations"]["semantic_only"]
    assert more["results"]["semantic_only"][0]["sem_seg"]["mIoU"] == -1.0  # read back
    assert "mIoU" in more["results"]["curriculum_no_point"][0]["sem_seg"]
    # a config whose stages differ from the saved plan's is another budget: refused
    cfg3 = cfg.clone()
    cfg3.defrost()
    cfg3.CURRICULUM.SEMANTIC_ITER = 3
    with pytest.raises(ValueError, match="different budget"):
        run_ablation(cfg3, ["curriculum_no_consist"], [0], str(out))
    with pytest.raises(ValueError, match="steps"):
        measure_step_time(cfg, steps=0)

    # evaluated again at another test size: nothing trains, the source folder is only read
    src = out / "curriculum_no_point_seed0"
    before = {p: p.stat().st_mtime_ns for p in src.rglob("*") if p.is_file()}
    cfg4 = cfg.clone()
    cfg4.defrost()
    cfg4.INPUT.MIN_SIZE_TEST = 64
    out2 = tmp_path / "abl_test64"
    names = ["semantic_only", "curriculum_no_point", "depth_only"]
    evaluated_again = run_ablation(cfg4, names, [0], str(out2), evaluate_from=str(out))
    after = {p: p.stat().st_mtime_ns for p in src.rglob("*") if p.is_file()}
    assert after == before
    assert json.loads((out2 / "budget_plan.json").read_text()) == extended
    # a real evaluation (the source's doctored -1.0 is not copied), at the new test size
    assert evaluated_again["results"]["semantic_only"][0]["sem_seg"]["mIoU"] >= 0.0
    assert "AbsRel" in evaluated_again["results"]["depth_only"][0]["depth"]
    record = json.loads((out2 / "curriculum_no_point_seed0" / "ablation_result.json").read_text())
    assert record["evaluated_from"] == str(src) and "mIoU" in record["final"]["sem_seg"]
    evaluated = (out2 / "curriculum_no_point_seed0" / "inference" / "config.yaml").read_text()
    assert "MIN_SIZE_TEST: 64" in evaluated
    assert "evaluated again" in (out2 / "ablation.md").read_text()
    # read back from the same folder only with the same evaluation settings
    cfg4b = cfg4.clone()
    cfg4b.INPUT.MIN_SIZE_TEST = 80
    with pytest.raises(ConfigMismatchError, match="INPUT.MIN_SIZE_TEST: 64 .recorded. -> 80"):
        run_ablation(cfg4b, ["semantic_only"], [0], str(out2), evaluate_from=str(out))
    again = run_ablation(cfg4, ["semantic_only"], [0], str(out2), evaluate_from=str(out))
    assert again["results"]["semantic_only"] == evaluated_again["results"]["semantic_only"]
    # only evaluation settings may differ from what trained the runs
    cfg5 = cfg.clone()
    cfg5.defrost()
    cfg5.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR / 2
    with pytest.raises(ConfigMismatchError, match="SOLVER.BASE_LR"):
        run_ablation(
            cfg5, ["curriculum_no_point"], [0], str(tmp_path / "x"), evaluate_from=str(out)
        )
    with pytest.raises(FileNotFoundError, match="not finished"):
        run_ablation(
            cfg4, ["curriculum_no_point"], [1], str(tmp_path / "y"), evaluate_from=str(out)
        )
    with pytest.raises(ValueError, match="no runs of"):
        run_ablation(cfg4, ["instance_only"], [0], str(tmp_path / "z"), evaluate_from=str(out))
    with pytest.raises(ValueError, match="also --output"):
        run_ablation(cfg4, names, [0], str(out), evaluate_from=str(out))


def test_record_lacking_a_key_at_its_default_is_not_a_difference():
    """A key added to the plugin after a run was recorded matches when left at its default
    (old runs stay evaluable); set to anything else it is a difference."""
    cfg = tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", *POINT_TRAINING_DEFAULTS)
    recorded = yaml.safe_load(cfg.dump())
    del recorded["MODEL"]["POINT_HEAD"]["SAMPLING"]
    assert record_diff(recorded, cfg) == []
    cfg.MODEL.POINT_HEAD.SAMPLING = "class_balanced"
    assert record_diff(recorded, cfg) == [
        ("MODEL.POINT_HEAD.SAMPLING", "<absent>", "class_balanced")
    ]
