"""Ablations under one wall-clock budget: the curriculum against joint training from scratch
and against single-task models, over several seeds.

The budget is the main job's: the config's curriculum (``CURRICULUM.STAGES`` with their
``*_ITER``), trained first (the ``curriculum`` variant, first seed). Then every step is
timed side by side in one process (``measure_step_time``: a few real optimizer steps on
the variant's own data loader, after warm-up) with trained weights loaded: each curriculum
stage with that stage's final weights, every other variant with the curriculum's final
weights. The budget is the stages' iterations times their step times; every other variant
gets as many iterations as fit in the same seconds, so a variant whose step is cheaper (a
single-task model) trains for longer. Trained weights, because a Mask R-CNN step gets dearer
as the model learns (more foreground proposals reach the mask head: 0.4 s at random weights
against 0.9 s trained on the synthetic main job), so timing randomly initialised models gave
joint training about 30 % more time than the curriculum; side by side, so that the steps
are compared under one state of the machine, not the curriculum's on the day it trained
against another variant's today. Step times are measured once and reused for every seed,
so that all seeds of a variant train for the same number of iterations.

Variants (``VARIANTS``):

* ``curriculum``: the config's stages (semantic -> instance on the frozen encoder -> merge
  [-> joint]);
* ``curriculum_no_point``: the same without the point branch (no L_3D-seg, no L_consist);
* ``curriculum_no_consist``: the point branch on, L_consist weighted 0;
* ``curriculum_learned_weights``: learned loss weights (homoscedastic uncertainty,
  ``MODEL.PANOPTIC_CURRICULUM.LOSS_WEIGHTING uncertainty``) instead of the fixed ones;
* ``curriculum_point_uniform``: the point branch as the plugin's defaults train it: uniform
  point sampling, L_3D-seg and L_consist also train the depth head, L_consist both ways (the
  synthetic main job's config until it was measured against the next two);
* ``curriculum_point_balanced``: the point branch with class-balanced point sampling (every
  class in an image gets the same expected share of the points) and lifted from a detached
  copy of the predicted depth (L_3D-seg and L_consist do not train the depth head),
  L_consist both ways;
* ``curriculum_point_balanced_to_3d``: the same, with L_consist one way, the 2D head
  teaching the point network (``CONSISTENCY_DIRECTION to_3d``: no gradient to the 2D side),
  xyz only;
* ``curriculum_better_teaches``: the same, with L_consist routed per point: the side that
  gives the point's label the higher probability teaches the other
  (``CONSISTENCY_DIRECTION better_teaches``), so the point network trains the 2D head only
  where it is the more correct of the two;
* ``curriculum_image_features``: the same, the point network also fed the encoder's
  features at its points (``USE_IMAGE_FEATURES``; not detached, so L_3D-seg and L_consist
  also train the shared encoder), L_consist teaching the point network (the synthetic main
  job's config until the next variant was measured against it);
* ``curriculum_image_features_plane``: the same, every pixel lifted to a plane at 10 m
  (``LIFT plane``): the points keep their image layout, not the scene's 3D shape, so the
  difference to ``curriculum_image_features`` is what the geometry adds;
* ``curriculum_image_features_to_2d``, ``_both``, ``_better_teaches``: image features, with
  L_consist teaching the 2D head (the point network's logits detached), both sides, or per
  point the side that is right (``CONSISTENCY_DIRECTION``): with image features the point
  network is the more accurate side on every thing class, so it may now teach
  (``_to_2d`` is the synthetic main job's config);
* ``curriculum_image_features_depth_gate``: image features, ``to_3d``, L_consist only at
  points whose predicted depth is within 25 % of the truth
  (``CONSISTENCY_DEPTH_GATE 1.25``);
* ``joint_scratch``: the whole multi-task model trained jointly from random initialisation;
* ``semantic_only``, ``instance_only``, ``depth_only``: one task, one model.

Every run is evaluated on the config's test set. Results are resumable: a finished run is
read back from its ``ablation_result.json``, which records the config it trained with; a
re-run whose config would train something else (another learning rate, another loss, ...)
is refused with the differing keys (``run_record.ConfigMismatchError``) instead of reporting
the earlier numbers as its own.

Evaluation settings can be changed after training: ``run_ablation(..., evaluate_from=DIR)``
evaluates the final models of an earlier ablation folder under the config's
evaluation-only keys (e.g. ``INPUT.MIN_SIZE_TEST``; see ``run_record``), trains nothing,
and writes the results to a new folder; ``DIR`` is only read.
"""

import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import yaml

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from .checkpoint import AtomicCheckpointer, atomic_write_text
from .curriculum import STAGES, evaluate_run, run_curriculum, stage_config
from .run_record import ConfigMismatchError, flat_items, format_diff, record_diff
from .trainer import PanopticCurriculumTrainer

__all__ = [
    "VARIANTS",
    "METRICS",
    "Variant",
    "measure_step_time",
    "plan_budget",
    "run_variant",
    "evaluate_variant",
    "planned_variants",
    "results_table",
    "paired_table",
    "resolve_per_class",
]

logger = logging.getLogger(__name__)

_POINT_OFF = ["MODEL.POINT_HEAD.ENABLED", False]


@dataclass(frozen=True)
class Variant:
    """One arm of the ablation.

    Attributes:
        curriculum: trained by ``run_curriculum`` (else one joint training run).
        opts: config overrides ``[KEY, VALUE, ...]``.
        tasks: the tasks the final model is evaluated on.
    """

    curriculum: bool
    opts: List = field(default_factory=list)
    tasks: Sequence[str] = ("sem_seg", "segm", "panoptic_seg", "depth")


def _only(sem: bool, inst: bool, depth: bool) -> List:
    return [
        "MODEL.PANOPTIC_CURRICULUM.SEM_SEG_ON",
        sem,
        "MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON",
        inst,
        "MODEL.PANOPTIC_CURRICULUM.DEPTH_ON",
        depth,
        *_POINT_OFF,
    ]


def _point_training(
    sampling: str,
    detach_depth: bool,
    direction: str,
    image_features: bool = False,
    lift: str = "depth",
    depth_gate: float = 0.0,
) -> List:
    """How the point branch trains, every key set (a variant means the same whatever the
    config sets)."""
    return [
        "MODEL.POINT_HEAD.SAMPLING",
        sampling,
        "MODEL.POINT_HEAD.DETACH_DEPTH",
        detach_depth,
        "MODEL.POINT_HEAD.CONSISTENCY_DIRECTION",
        direction,
        "MODEL.POINT_HEAD.USE_IMAGE_FEATURES",
        image_features,
        "MODEL.POINT_HEAD.LIFT",
        lift,
        "MODEL.POINT_HEAD.CONSISTENCY_DEPTH_GATE",
        depth_gate,
    ]


VARIANTS: Dict[str, Variant] = {
    "curriculum": Variant(True),
    "curriculum_no_point": Variant(True, _POINT_OFF),
    "curriculum_no_consist": Variant(True, ["MODEL.POINT_HEAD.CONSISTENCY_WEIGHT", 0.0]),
    "curriculum_learned_weights": Variant(
        True, ["MODEL.PANOPTIC_CURRICULUM.LOSS_WEIGHTING", "uncertainty"]
    ),
    "curriculum_point_uniform": Variant(True, _point_training("uniform", False, "both")),
    "curriculum_point_balanced": Variant(True, _point_training("class_balanced", True, "both")),
    "curriculum_point_balanced_to_3d": Variant(
        True, _point_training("class_balanced", True, "to_3d")
    ),
    "curriculum_better_teaches": Variant(
        True, _point_training("class_balanced", True, "better_teaches")
    ),
    "curriculum_image_features": Variant(
        True, _point_training("class_balanced", True, "to_3d", image_features=True)
    ),
    "curriculum_image_features_plane": Variant(
        True,
        _point_training("class_balanced", True, "to_3d", image_features=True, lift="plane"),
    ),
    "curriculum_image_features_to_2d": Variant(
        True, _point_training("class_balanced", True, "to_2d", image_features=True)
    ),
    "curriculum_image_features_both": Variant(
        True, _point_training("class_balanced", True, "both", image_features=True)
    ),
    "curriculum_image_features_better_teaches": Variant(
        True, _point_training("class_balanced", True, "better_teaches", image_features=True)
    ),
    "curriculum_image_features_depth_gate": Variant(
        True,
        _point_training("class_balanced", True, "to_3d", image_features=True, depth_gate=1.25),
    ),
    "joint_scratch": Variant(False),
    "semantic_only": Variant(False, _only(True, False, False), ("sem_seg",)),
    "instance_only": Variant(False, _only(False, True, False), ("segm",)),
    "depth_only": Variant(False, _only(False, False, True), ("depth",)),
}

#: (column, task, key) of the results table; per-class IoU columns are added for the
#: classes named in ``results_table(per_class=...)``
METRICS = [
    ("mIoU", "sem_seg", "mIoU"),
    ("mask AP", "segm", "AP"),
    ("PQ", "panoptic_seg", "PQ"),
    ("depth AbsRel", "depth", "AbsRel"),
    ("depth d<1.25", "depth", "d1"),
]

_STAGE_ITER_KEYS = {
    "semantic": "SEMANTIC_ITER",
    "instance": "INSTANCE_ITER",
    "joint": "JOINT_ITER",
}


def _training_stages(cfg: CfgNode) -> List[str]:
    return [s for s in cfg.CURRICULUM.STAGES if s in _STAGE_ITER_KEYS]


def _stage_iterations(cfg: CfgNode) -> Dict[str, int]:
    """Iterations of each training stage of the config's curriculum."""
    return {s: int(getattr(cfg.CURRICULUM, _STAGE_ITER_KEYS[s])) for s in _training_stages(cfg)}


def measure_step_time(
    cfg: CfgNode, steps: int = 4, warmup: int = 2, weights: Optional[str] = None
) -> float:
    """Median seconds of one optimizer step of a model built from ``cfg``, fed by its own
    training loader (data loading included, as in training).

    Args:
        weights: a checkpoint loaded before timing (read without running code; tensors the
            model lacks are skipped), so that the step is timed at the cost of a trained
            model; ``None``: random weights.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps = {steps}, warmup = {warmup}: need steps >= 1, warmup >= 0")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    model = PanopticCurriculumTrainer.build_model(cfg)
    if weights:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{weights}: no such checkpoint to time the step with")
        # not strict: a single-task variant lacks the other heads' tensors; read safely
        AtomicCheckpointer(model, strict=False).load(weights, checkpointables=[])
    model.train()
    optimizer = PanopticCurriculumTrainer.build_optimizer(cfg, model)
    loader = iter(PanopticCurriculumTrainer.build_train_loader(cfg))
    times = []
    with EventStorage(0) as storage:
        for i in range(warmup + steps):
            start = time.perf_counter()
            losses = model(next(loader))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            storage.step()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def plan_budget(cfg: CfgNode, names: Sequence[str], step_times: Dict[str, float]) -> Dict:
    """Iterations per variant for one wall-clock budget.

    Args:
        cfg: the curriculum config; its training stages and ``CURRICULUM.*_ITER`` define
            the budget.
        names: variants to plan.
        step_times: seconds per step of ``"stage:<stage>"`` (the curriculum's stages) and of
            each non-curriculum variant's name.

    Returns:
        ``{"seconds": budget, "iterations": {variant: int or {stage: int}}}``; curriculum
        variants keep the config's stage iterations.
    """
    iters = _stage_iterations(cfg)
    if not iters:
        raise ValueError(f"CURRICULUM.STAGES = {list(cfg.CURRICULUM.STAGES)} trains nothing")
    seconds = sum(n * step_times[f"stage:{s}"] for s, n in iters.items())
    plan = {}
    for name in names:
        if VARIANTS[name].curriculum:
            plan[name] = dict(iters)
        else:
            plan[name] = max(1, int(round(seconds / step_times[name])))
    return {"seconds": seconds, "iterations": plan}


def variant_config(
    cfg: CfgNode, name: str, seed: int, out_dir: str, iterations, extra_opts: Sequence = ()
) -> CfgNode:
    """The config one run trains with (curriculum: the root config of its stages)."""
    variant = VARIANTS[name]
    c = cfg.clone()
    c.defrost()
    c.merge_from_list(list(variant.opts) + list(extra_opts))
    c.SEED = seed
    c.OUTPUT_DIR = out_dir
    if variant.curriculum:
        for stage, n in iterations.items():
            setattr(c.CURRICULUM, _STAGE_ITER_KEYS[stage], int(n))
        # the variant's result is its final stage's evaluation, whatever EVAL_STAGES says
        final_stage = [s for s in STAGES if s in c.CURRICULUM.STAGES][-1]
        if final_stage not in c.CURRICULUM.EVAL_STAGES:
            c.CURRICULUM.EVAL_STAGES = list(c.CURRICULUM.EVAL_STAGES) + [final_stage]
    else:
        c.SOLVER.MAX_ITER = int(iterations)
        c.SOLVER.WARMUP_ITERS = min(c.SOLVER.WARMUP_ITERS, c.SOLVER.MAX_ITER // 4)
        c.SOLVER.CHECKPOINT_PERIOD = min(c.SOLVER.CHECKPOINT_PERIOD, c.SOLVER.MAX_ITER)
        c.TEST.EVAL_PERIOD = c.SOLVER.MAX_ITER
    c.freeze()
    return c


def step_time_configs(cfg: CfgNode, names: Sequence[str], extra_opts: Sequence = ()) -> Dict:
    """The configs of the non-curriculum variants among ``names``, whose step times
    ``plan_budget`` needs, by name (the curriculum's stages: ``budget_step_times``)."""
    probe = os.path.join(cfg.OUTPUT_DIR or ".", "_step_time_probe")
    return {
        name: variant_config(cfg, name, cfg.SEED, probe, 1, extra_opts)
        for name in names
        if not VARIANTS[name].curriculum
    }


#: the variant whose runs define the budget: the config's own curriculum
BUDGET_VARIANT = "curriculum"
#: timed steps and warm-up steps per probe when planning (two probes of 10 steps of the
#: synthetic main job's stages differed by up to 12 %)
PLAN_STEPS, PLAN_WARMUP = 10, 3


def budget_step_times(cfg: CfgNode, run_dir: str) -> Dict[str, float]:
    """Seconds per step of each training stage of the finished curriculum run ``run_dir``,
    each timed with that stage's trained final weights (``measure_step_time``)."""
    out = {}
    probe = os.path.join(run_dir, "_step_time_probe")
    for stage in _training_stages(cfg):
        weights = os.path.join(run_dir, stage, "model_final.pth")
        out[f"stage:{stage}"] = measure_step_time(
            stage_config(cfg, stage, probe), PLAN_STEPS, PLAN_WARMUP, weights=weights
        )
        logger.info("[ablation] stage %s: %.3f s per step", stage, out[f"stage:{stage}"])
    return out


def _final_weights(cfg: CfgNode, run_dir: str) -> str:
    """The final model of a finished curriculum run (its last training stage's)."""
    return os.path.join(run_dir, _training_stages(cfg)[-1], "model_final.pth")


def _measure_variants(cfg: CfgNode, names: Sequence[str], weights: Optional[str]) -> Dict:
    step_times = {}
    for key, c in step_time_configs(cfg, names).items():
        step_times[key] = measure_step_time(c, PLAN_STEPS, PLAN_WARMUP, weights=weights)
        logger.info("[ablation] %s: %.3f s per step", key, step_times[key])
    return step_times


#: a finished run's record, in its folder
RESULT = "ablation_result.json"


def _read_json(path: str) -> Dict:
    with open(path) as f:
        return json.load(f)


def planned_variants(output: str) -> List[str]:
    """The variants the budget plan saved in the ablation folder ``output`` covers (empty
    without a plan), in ``VARIANTS`` order."""
    path = os.path.join(output, "budget_plan.json")
    if not os.path.isfile(path):
        return []
    return [v for v in VARIANTS if v in _read_json(path)["iterations"]]


def _unplanned(plan: Dict, names: Sequence[str]) -> List[str]:
    return [n for n in names if n not in plan["iterations"]]


def _write_result(out_dir: str, name: str, seed: int, iterations, final: Dict, **info) -> None:
    os.makedirs(out_dir, exist_ok=True)
    record = {"variant": name, "seed": seed, "iterations": iterations, **info, "final": final}
    atomic_write_text(os.path.join(out_dir, RESULT), json.dumps(record, indent=2))


#: ``CURRICULUM`` keys that change no run's weights (the others, e.g. the stages' learning
#: rate factors and datasets, do; ``run_record`` leaves all of them to the stage configs)
_CURRICULUM_EVALUATION_ONLY = ("EVAL_STAGES", "POINT_CLOUD_DUMP_PERIOD")


def _config_record(c: CfgNode) -> Dict:
    """A run's config as its result record keeps it (YAML's plain values)."""
    return yaml.safe_load(c.dump())


def _check_finished_run(path: str, record: Dict, c: CfgNode, iterations) -> None:
    """Refuse to read back the finished run ``path`` when ``c`` (the config a run of this
    variant and seed would train with now) trains something else than its record says.

    Raises:
        ConfigMismatchError: naming ``path`` and every differing training-relevant key.
    """
    diff = []
    if record.get("iterations") != iterations:
        diff.append(("iterations (the budget plan)", record.get("iterations"), iterations))
    recorded = record.get("config")
    if recorded is None:  # written before results kept their config: nothing to compare
        logger.warning("[ablation] %s keeps no config: read back unchecked", path)
    else:
        diff += record_diff(recorded, c)
        old_cur, new_cur = recorded.get("CURRICULUM", {}), _config_record(c)["CURRICULUM"]
        for k in sorted(set(old_cur) | set(new_cur)):
            if k not in _CURRICULUM_EVALUATION_ONLY and old_cur.get(k) != new_cur.get(k):
                diff.append((f"CURRICULUM.{k}", old_cur.get(k), new_cur.get(k)))
    if diff:
        raise ConfigMismatchError(
            f"{path} is a finished run of {record.get('variant')} seed {record.get('seed')} "
            "trained with another config than this ablation's:\n"
            + format_diff(diff)
            + "\nuse a new --output for the new config (or the config that trained it)"
        )


def run_variant(cfg: CfgNode, name: str, seed: int, out_dir: str, iterations) -> Dict:
    """Final evaluation results of one variant and seed (the curriculum's last stage, or
    the jointly trained model); resumable."""
    c = variant_config(cfg, name, seed, out_dir, iterations)
    path = os.path.join(out_dir, RESULT)
    if os.path.isfile(path):
        record = _read_json(path)
        _check_finished_run(path, record, c, iterations)
        return record["final"]
    start = time.perf_counter()
    if VARIANTS[name].curriculum:
        results = run_curriculum(c)
        final = results[next(reversed(results))]
    else:
        seed_all_rng(seed)
        trainer = PanopticCurriculumTrainer(c)
        trainer.resume_or_load(resume=True)
        trainer.train()
        final = getattr(trainer, "_last_eval_results", None) or {}
    _write_result(
        out_dir,
        name,
        seed,
        iterations,
        final,
        seconds=time.perf_counter() - start,
        config=_config_record(c),
    )
    return final


def evaluate_variant(
    cfg: CfgNode, name: str, seed: int, source_dir: str, out_dir: str, iterations
) -> Dict:
    """Evaluate the final model of the finished run ``source_dir`` (one variant and seed of an
    earlier ablation) with ``cfg``'s evaluation settings; nothing is trained and
    ``source_dir`` is only read. Results go to ``out_dir/ablation_result.json`` (resumable).

    A curriculum run's final stage is checked against its record: ``cfg`` may differ from the
    config that trained it in evaluation-only keys only.

    Raises:
        FileNotFoundError: ``source_dir`` holds no finished run.
        ValueError: the run was trained for other iterations than ``iterations``.
        ConfigMismatchError: training-relevant keys differ from the run's record.
    """
    c = variant_config(cfg, name, seed, source_dir, iterations)
    evaluation_record = _config_record(c)
    path = os.path.join(out_dir, RESULT)
    if os.path.isfile(path):
        record = _read_json(path)
        _check_evaluated_run(path, record, evaluation_record)
        return record["final"]
    source_record = os.path.join(source_dir, RESULT)
    if not os.path.isfile(source_record):
        raise FileNotFoundError(
            f"{source_record} not found: the run {name} seed {seed} is not finished there; "
            "train it first (tools/ablation.py with that folder as --output)"
        )
    trained = _read_json(source_record)
    if trained.get("iterations") != iterations:
        raise ValueError(
            f"{source_record}: {name} seed {seed} was trained for {trained.get('iterations')} "
            f"iterations, the plan says {iterations}"
        )
    if not VARIANTS[name].curriculum:
        c.defrost()
        c.MODEL.WEIGHTS = os.path.join(source_dir, "model_final.pth")
        c.freeze()
        if not os.path.isfile(c.MODEL.WEIGHTS):
            raise FileNotFoundError(f"{c.MODEL.WEIGHTS} not found ({name} seed {seed})")
    start = time.perf_counter()
    final = evaluate_run(c, resume=VARIANTS[name].curriculum, output_dir=out_dir)
    _write_result(
        out_dir,
        name,
        seed,
        iterations,
        dict(final),
        seconds=trained.get("seconds"),
        evaluated_from=os.path.abspath(source_dir),
        evaluation_seconds=time.perf_counter() - start,
        evaluation_config=evaluation_record,
    )
    return final


#: keys that say where an evaluation ran, not what it computed
_WHERE_ONLY = ("OUTPUT_DIR", "DATALOADER.NUM_WORKERS")


def _check_evaluated_run(path: str, record: Dict, current: Dict) -> None:
    """Refuse to read back the evaluation ``path`` (of ``--evaluate-from``) when the config
    ``current`` (as :func:`_config_record` gives it) evaluates with other settings than the
    ones it records (any key: evaluation keys are what such a folder is about).

    Raises:
        ConfigMismatchError: naming ``path`` and the differing keys.
    """
    recorded = record.get("evaluation_config")
    if recorded is None:
        logger.warning("[ablation] %s keeps no evaluation config: read back unchecked", path)
        return
    old, new = flat_items(recorded), flat_items(current)
    keys = sorted((set(old) | set(new)) - set(_WHERE_ONLY))
    diff = [(k, old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)]
    if diff:
        raise ConfigMismatchError(
            f"{path} holds an evaluation with other settings than this one's:\n"
            + format_diff(diff)
            + "\nuse a new --output for the new settings"
        )


#: with no ``per_class`` given, the test set's thing classes get IoU columns when there are
#: at most this many (the synthetic scenes' four; Cityscapes' eight; not COCO's 80)
MAX_DEFAULT_PER_CLASS = 8


def resolve_per_class(cfg: CfgNode, per_class: Optional[Sequence[str]]) -> List[str]:
    """The semantic classes whose IoU gets its own column of the results table.

    Args:
        cfg: the config; its first ``DATASETS.TEST`` dataset's metadata names the classes.
        per_class: class names, or ``None`` for the default: the test set's
            ``thing_classes`` if there are at most :data:`MAX_DEFAULT_PER_CLASS`, else none.

    Raises:
        ValueError: a name that is not one of the test set's semantic classes
        (``stuff_classes``), listing them and reminding that config overrides go last (an
        override typed after ``--per-class`` would otherwise become a class name).
    """
    if not cfg.DATASETS.TEST:
        return list(per_class or [])
    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    classes = list(meta.get("stuff_classes", None) or [])
    if per_class is None:
        things = list(meta.get("thing_classes", None) or [])
        return things if len(things) <= MAX_DEFAULT_PER_CLASS else []
    if not classes:
        return list(per_class)
    unknown = [c for c in per_class if c not in classes]
    if unknown:
        raise ValueError(
            f"--per-class: {unknown} are not semantic classes of {name}; its classes are "
            f"{classes} (--per-class takes every word up to the next option: config overrides "
            "KEY VALUE go after every option)"
        )
    return list(per_class)


def _fmt(values: List[float], depth: bool, signed: bool = False) -> str:
    if not values:
        return "-"
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    sign = "+" if signed else ""
    return f"{mean:{sign}.3f} ± {std:.3f}" if depth else f"{mean:{sign}.1f} ± {std:.1f}"


def _value(result: Dict, task: str, key: str) -> Optional[float]:
    r = result.get(task)
    return float(r[key]) if isinstance(r, dict) and key in r else None


def results_table(
    results: Dict[str, Dict[int, Dict]], per_class: Sequence[str] = ()
) -> str:
    """Markdown table: one row per variant, mean ± std over seeds of each metric (and the
    semantic IoU of each class in ``per_class``)."""
    metrics = list(METRICS) + [(f"IoU {c}", "sem_seg", f"IoU-{c}") for c in per_class]
    lines = [
        "| variant | " + " | ".join(m for m, _, _ in metrics) + " |",
        "|" + "---|" * (len(metrics) + 1),
    ]
    for name, per_seed in results.items():
        cells = []
        for _, task, key in metrics:
            vals = [v for v in (_value(r, task, key) for r in per_seed.values()) if v is not None]
            cells.append(_fmt(vals, task == "depth"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(
    results: Dict[str, Dict[int, Dict]], reference: str, per_class: Sequence[str] = ()
) -> str:
    """Markdown table of paired differences: for each variant other than ``reference``, the
    variant's result minus ``reference``'s for the same seed, mean ± std over the seeds both
    have (the seed-to-seed spread of a difference is smaller than the arms' own spreads
    suggest when the arms move together from seed to seed). Empty when no variant shares a
    seed with ``reference``."""
    metrics = list(METRICS) + [(f"IoU {c}", "sem_seg", f"IoU-{c}") for c in per_class]
    ref = results.get(reference, {})
    lines = []
    for name, per_seed in results.items():
        if name == reference:
            continue
        seeds = sorted(set(per_seed) & set(ref))
        if not seeds:
            continue
        cells = []
        for _, task, key in metrics:
            pairs = [(_value(per_seed[s], task, key), _value(ref[s], task, key)) for s in seeds]
            diffs = [a - b for a, b in pairs if a is not None and b is not None]
            cells.append(_fmt(diffs, task == "depth", signed=True))
        lines.append(f"| {name} − {reference} | {len(seeds)} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    header = [
        f"Paired by seed, each variant minus {reference} (mean ± std over the seeds both have):",
        "",
        "| difference | seeds | " + " | ".join(m for m, _, _ in metrics) + " |",
        "|" + "---|" * (len(metrics) + 2),
    ]
    return "\n".join(header + lines)


def _extend_plan(cfg: CfgNode, plan: Dict, names: Sequence[str], plan_path: str) -> Dict:
    """Add ``names`` to a saved plan under the same budget: ``plan_budget`` with the saved
    step times of the curriculum's stages and the new variants' step times, measured now.
    When the plan was made from a budget run, the run's stages are timed again beside the
    new variants and the variants' times scaled by the budget's seconds then / now, so that
    the ratios, not the machine's speed on another day, decide the iterations."""
    step_times = dict(plan.get("step_times", {}))
    missing_stages = [
        f"stage:{s}" for s in _training_stages(cfg) if f"stage:{s}" not in step_times
    ]
    if missing_stages:
        raise ValueError(
            f"{plan_path} has no step times of {missing_stages}: the config's stages "
            f"{_training_stages(cfg)} are not the ones it was planned for; use a new --output"
        )
    new = [n for n in names if not VARIANTS[n].curriculum and n not in step_times]
    run_dir = plan.get("budget_run")
    if new and run_dir:
        now = budget_step_times(cfg, run_dir)
        scale = plan["seconds"] / plan_budget(cfg, [], now)["seconds"]
        measured = _measure_variants(cfg, new, _final_weights(cfg, run_dir))
        step_times.update({k: t * scale for k, t in measured.items()})
        logger.info("[ablation] step times scaled by %.3f (the budget's stages then / now)", scale)
    else:  # a plan of randomly initialised probes (made before budget runs existed)
        step_times.update(_measure_variants(cfg, new, None))
    added = plan_budget(cfg, names, step_times)
    if not math.isclose(added["seconds"], plan["seconds"], rel_tol=1e-9):
        raise ValueError(
            f"{plan_path} was planned for a budget of {plan['seconds']:.0f} s, the config's "
            f"stages now make {added['seconds']:.0f} s: a different budget; use a new --output "
            "or delete it"
        )
    plan = dict(plan, iterations={**plan["iterations"], **added["iterations"]})
    plan["step_times"] = step_times
    atomic_write_text(plan_path, json.dumps(plan, indent=2))
    return plan


def _plan_from_budget_run(
    cfg: CfgNode, names: Sequence[str], seed: int, output: str, plan_path: str
) -> Dict:
    """Train the config's curriculum for ``seed`` (resumable), time its stages' steps and
    the other variants' side by side with trained weights, and save the plan."""
    iterations = _stage_iterations(cfg)
    run_dir = os.path.join(output, f"{BUDGET_VARIANT}_seed{seed}")
    logger.info("[ablation] the budget's run: %s seed %d", BUDGET_VARIANT, seed)
    run_variant(cfg, BUDGET_VARIANT, seed, run_dir, iterations)
    step_times = budget_step_times(cfg, run_dir)
    weights = _final_weights(cfg, run_dir)
    step_times.update(_measure_variants(cfg, names, weights))
    plan = plan_budget(cfg, list(dict.fromkeys([BUDGET_VARIANT, *names])), step_times)
    plan["step_times"] = step_times
    plan["budget_run"] = run_dir
    atomic_write_text(plan_path, json.dumps(plan, indent=2))
    return plan


def run_ablation(
    cfg: CfgNode,
    names: Sequence[str],
    seeds: Sequence[int],
    output: str,
    per_class: Optional[Sequence[str]] = (),
    plan: Optional[Dict] = None,
    evaluate_from: Optional[str] = None,
) -> Dict:
    """Plan one wall-clock budget (unless ``plan`` is given or a plan was saved in
    ``output``): the config's curriculum is trained first (first seed), and every step is
    timed side by side with trained weights (module docstring). Then run every variant and
    seed and write ``output/ablation.{md,json}``. Returns the json content. ``per_class``:
    the semantic classes with their own IoU column (``None``: the test set's thing classes,
    :func:`resolve_per_class`; an unknown name is an error before anything trains).

    With ``evaluate_from`` (an earlier ablation's ``output``), nothing is trained: its
    finished runs are evaluated with ``cfg``'s evaluation settings (``evaluate_variant``)
    under its budget plan, and the results written to ``output``."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variants {unknown}; variants are {list(VARIANTS)}")
    if not seeds:
        raise ValueError("--seeds: give at least one seed")
    per_class = resolve_per_class(cfg, per_class)
    if not _training_stages(cfg):
        raise ValueError(f"CURRICULUM.STAGES = {list(cfg.CURRICULUM.STAGES)} trains nothing")
    os.makedirs(output, exist_ok=True)
    plan_path = os.path.join(output, "budget_plan.json")
    if evaluate_from is not None:
        if os.path.abspath(evaluate_from) == os.path.abspath(output):
            raise ValueError(
                f"--evaluate-from {evaluate_from} is also --output: evaluate into another folder"
            )
        source_plan = os.path.join(evaluate_from, "budget_plan.json")
        if not os.path.isfile(source_plan):
            raise FileNotFoundError(
                f"{source_plan} not found: --evaluate-from needs the --output folder of an "
                "earlier ablation"
            )
        plan = _read_json(source_plan)
        missing = _unplanned(plan, names)
        if missing:
            raise ValueError(
                f"{source_plan} has no runs of {missing}; it planned "
                f"{list(plan['iterations'])}"
            )
        atomic_write_text(plan_path, json.dumps(plan, indent=2))
    if plan is None and os.path.isfile(plan_path):
        plan = _read_json(plan_path)
        missing = _unplanned(plan, names)
        if missing:  # variants added to an earlier ablation: same budget, planned now
            plan = _extend_plan(cfg, plan, missing, plan_path)
    if plan is None:
        plan = _plan_from_budget_run(cfg, names, seeds[0], output, plan_path)
        # the budget's runs are part of the comparison
        names = list(dict.fromkeys([BUDGET_VARIANT, *names]))
    logger.info(
        "[ablation] budget %.0f s per run; iterations %s", plan["seconds"], plan["iterations"]
    )
    results: Dict[str, Dict[int, Dict]] = {name: {} for name in names}
    # seed by seed (every variant of one seed, then the next seed): a run that is stopped
    # early leaves every variant with the same number of seeds, and the table on disk is
    # rewritten after each run
    for seed in seeds:
        for name in names:
            out_dir = os.path.join(output, f"{name}_seed{seed}")
            if evaluate_from is not None:
                results[name][seed] = evaluate_variant(
                    cfg,
                    name,
                    seed,
                    os.path.join(evaluate_from, f"{name}_seed{seed}"),
                    out_dir,
                    plan["iterations"][name],
                )
            else:
                results[name][seed] = run_variant(
                    cfg, name, seed, out_dir, plan["iterations"][name]
                )
            content = _write_results(
                output, plan, names, seeds, results, per_class, evaluate_from
            )
    return content


def _measured_seconds(output, names, seeds, results) -> Dict[str, float]:
    """Mean wall-clock seconds of the finished training runs of each variant in ``output``
    (from their records; runs evaluated with ``--evaluate-from`` have none)."""
    out = {}
    for name in names:
        values = []
        for seed in seeds:
            path = os.path.join(output, f"{name}_seed{seed}", RESULT)
            if seed in results.get(name, {}) and os.path.isfile(path):
                seconds = _read_json(path).get("seconds")
                if seconds is not None:
                    values.append(float(seconds))
        if values:
            out[name] = statistics.mean(values)
    return out


def _write_results(output, plan, names, seeds, results, per_class, evaluate_from=None) -> Dict:
    done = sorted({s for per_seed in results.values() for s in per_seed})
    budget = (
        f"budget: {plan['seconds']:.0f} s of training per run on this machine (the "
        f"curriculum's stages {plan['iterations'].get('curriculum', '')}; the other variants' "
        + (
            "iterations from step times measured side by side with trained weights: "
            if plan.get("budget_run")
            else "iterations from their measured step times: "
        )
        + ", ".join(f"{n} {plan['iterations'][n]}" for n in names)
        + f"), seeds {done}"
        + ("" if done == sorted(seeds) else f" of {list(seeds)} (unfinished)")
        + "; mean ± std over seeds"
        + (
            ""
            if evaluate_from is None
            else f"; the models trained in {os.path.basename(os.path.normpath(evaluate_from))}/,"
            " evaluated again with this config's evaluation settings"
        )
    )
    measured = _measured_seconds(output, names, seeds, results)
    if measured:
        # the plan's step times come from a few steps of randomly initialised models; a
        # model's step can get dearer as it learns (more foreground proposals for the mask
        # head), so the seconds the runs actually took are reported next to the plan
        budget += "; measured seconds per run (training and evaluation), mean over seeds: " + (
            ", ".join(f"{n} {v:.0f}" for n, v in measured.items())
        )
    table = results_table(results, per_class) + "\n\n" + budget + "\n"
    reference = BUDGET_VARIANT if BUDGET_VARIANT in results else next(iter(results))
    paired = paired_table(results, reference, per_class)
    if paired:
        table += "\n" + paired + "\n"
    atomic_write_text(os.path.join(output, "ablation.md"), table)
    content = {"budget": budget, "plan": plan, "results": results}
    atomic_write_text(os.path.join(output, "ablation.json"), json.dumps(content, indent=2))
    return content
