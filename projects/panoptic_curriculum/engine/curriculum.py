"""The transfer-then-merge curriculum: stage configs and a resumable runner.

Stages (``CURRICULUM.STAGES``, in this order):

* ``semantic``: encoder + DeepLab semantic decoder + depth head + point branch trained end to
  end with L_2D-seg + L_depth + L_3D-seg + L_consist; the instance decoder is not built.
* ``instance``: the encoder is frozen (no gradients, no stored activations, fixed
  normalisation) and feeds a randomly initialised Mask R-CNN decoder, the only part that
  trains, at ``CURRICULUM.INSTANCE_LR_FACTOR`` times the learning rate; the semantic, depth
  and point heads are not built (not run).
* ``merge``: encoder, semantic decoder (+ depth, point heads) and instance decoder combined
  into one multi-task checkpoint, then evaluated.
* ``joint`` (optional, claim 19): everything fine-tuned from the merged checkpoint, at
  ``CURRICULUM.JOINT_LR_FACTOR`` times the learning rate (the instance decoder at
  ``CURRICULUM.JOINT_INSTANCE_LR_MULTIPLIER`` times that). When ``CURRICULUM.STAGES`` has no
  ``merge`` stage (``["joint"]``), the joint stage is plain multi-task training of the whole
  model from ``MODEL.WEIGHTS`` (random initialisation when empty) at the full learning rate:
  the baseline the curriculum is measured against (``configs/synthetic/joint_R18_FPN.yaml``).

Each stage works in ``OUTPUT_DIR/<stage>``: it first writes ``config.yaml``, the config it
trains with (the run record, :mod:`.run_record`), and when done ``stage_complete.json``
(results + checkpoint). A re-run skips finished stages and resumes an unfinished one from its
last checkpoint, after checking that its config trains what the records say: a difference in
a training-relevant key stops it with the differences, unless ``allow_config_change``.
``OUTPUT_DIR/summary.{json,txt}`` hold one row per finished stage of the folder.
"""

import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from tabulate import tabulate

from detectron2.config import CfgNode
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage, JSONWriter, TensorboardXWriter

from ..utils.atomic_io import remove_stale_temp_files
from ..config_validation import validate_config
from ..data.labels import check_stage_labels
from .checkpoint import AtomicCheckpointer, atomic_write_text
from .merge import merge_stage_checkpoints
from .run_record import (
    RECORD,
    ConfigMismatchError,
    format_diff,
    read_record,
    record_diff,
    write_record,
)
from .trainer import PanopticCurriculumTrainer

__all__ = [
    "STAGES",
    "stage_config",
    "stage_state",
    "check_run_record",
    "run_curriculum",
    "final_stage",
    "evaluate_run",
    "summary_table",
]

logger = logging.getLogger(__name__)

STAGES = ("semantic", "instance", "merge", "joint")
MARKER = "stage_complete.json"


def _final_checkpoint(root: str, stage: str) -> str:
    if stage == "merge":
        return os.path.join(root, "merge", "model_merged.pth")
    return os.path.join(root, stage, "model_final.pth")


def _joint_fine_tunes_merge(cfg: CfgNode) -> bool:
    """The joint stage fine-tunes the merged model when the curriculum has a merge stage;
    without one it trains the whole model jointly from ``MODEL.WEIGHTS``."""
    return "merge" in cfg.CURRICULUM.STAGES


def _joint_lr_multipliers(cfg: CfgNode) -> List[List]:
    """``SOLVER.LR_MULTIPLIERS`` of the joint fine-tuning stage: the config's own entries, with
    the instance decoder's modules (and any entry inside them) at
    ``CURRICULUM.JOINT_INSTANCE_LR_MULTIPLIER`` times their rate."""
    m = float(cfg.CURRICULUM.JOINT_INSTANCE_LR_MULTIPLIER)
    entries = [[p, float(v)] for p, v in cfg.SOLVER.LR_MULTIPLIERS]
    if m == 1.0:
        return entries
    modules = ["proposal_generator", "roi_heads"]
    if cfg.MODEL.INSTANCE_ADAPTER.NAME != "none":
        modules.append("instance_adapter")

    def inside(prefix: str) -> bool:
        return any(prefix == n or prefix.startswith(n + ".") for n in modules)

    out = [[p, v * m] if inside(p) else [p, v] for p, v in entries]
    have = {p for p, _ in entries}
    return out + [[n, m] for n in modules if n not in have]


def _unbuilt_branches(c: CfgNode) -> set:
    """Top-level modules of the multi-task model that the stage config ``c`` does not build."""
    pc = c.MODEL.PANOPTIC_CURRICULUM
    out = set()
    if not pc.SEM_SEG_ON:
        out.add("sem_seg_head")
    if not pc.INSTANCE_ON:
        out |= {"proposal_generator", "roi_heads", "instance_adapter"}
    if c.MODEL.INSTANCE_ADAPTER.NAME == "none":
        out.add("instance_adapter")
    if not pc.DEPTH_ON:
        out.add("depth_head")
    if not c.MODEL.POINT_HEAD.ENABLED:
        out.add("point_head")
    return out


def stage_config(cfg: CfgNode, stage: str, root: Optional[str] = None) -> CfgNode:
    """The config one stage trains / evaluates with, derived from the curriculum config."""
    if stage not in STAGES:
        raise ValueError(f"unknown curriculum stage {stage!r}; stages are {STAGES}")
    root = root or cfg.OUTPUT_DIR
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR = os.path.join(root, stage)
    pc = c.MODEL.PANOPTIC_CURRICULUM
    if stage == "semantic":
        pc.INSTANCE_ON = False
        c.DATASETS.TRAIN = tuple(cfg.CURRICULUM.SEMANTIC_DATASETS) or cfg.DATASETS.TRAIN
        c.SOLVER.MAX_ITER = cfg.CURRICULUM.SEMANTIC_ITER
    elif stage == "instance":
        pc.SEM_SEG_ON = pc.DEPTH_ON = False
        pc.INSTANCE_ON = True
        c.MODEL.POINT_HEAD.ENABLED = False
        c.INPUT.DEPTH.ENABLED = False  # neither depth nor K is used: instance-only data works
        c.DATASETS.TRAIN = tuple(cfg.CURRICULUM.INSTANCE_DATASETS) or cfg.DATASETS.TRAIN
        c.MODEL.FREEZE.PREFIXES = sorted(set(cfg.MODEL.FREEZE.PREFIXES) | {"backbone"})
        c.MODEL.WEIGHTS = _final_checkpoint(root, "semantic")
        c.SOLVER.MAX_ITER = cfg.CURRICULUM.INSTANCE_ITER
        c.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR * cfg.CURRICULUM.INSTANCE_LR_FACTOR
    elif stage == "merge":
        c.MODEL.WEIGHTS = _final_checkpoint(root, "merge")
        c.SOLVER.MAX_ITER = 0
    else:  # joint
        if _joint_fine_tunes_merge(cfg):
            c.MODEL.WEIGHTS = _final_checkpoint(root, "merge")
            c.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR * cfg.CURRICULUM.JOINT_LR_FACTOR
            c.SOLVER.LR_MULTIPLIERS = _joint_lr_multipliers(cfg)
        # else: the whole model trained jointly from the config's MODEL.WEIGHTS, full LR
        c.SOLVER.MAX_ITER = cfg.CURRICULUM.JOINT_ITER
    # SOLVER.LR_MULTIPLIERS entries for a branch this stage does not build are the other
    # stages' (e.g. "depth_head" in the instance stage); a name no stage builds stays, and the
    # optimizer rejects it
    unbuilt = _unbuilt_branches(c)
    c.SOLVER.LR_MULTIPLIERS = [
        [p, v] for p, v in c.SOLVER.LR_MULTIPLIERS if p.split(".")[0] not in unbuilt
    ]
    if c.SOLVER.MAX_ITER > 0:
        c.SOLVER.WARMUP_ITERS = min(c.SOLVER.WARMUP_ITERS, c.SOLVER.MAX_ITER // 4)
        c.SOLVER.CHECKPOINT_PERIOD = min(c.SOLVER.CHECKPOINT_PERIOD, c.SOLVER.MAX_ITER)
        # evaluate at the end through the EvalHook, so results reach metrics.json/tensorboard
        if c.TEST.EVAL_PERIOD <= 0:
            c.TEST.EVAL_PERIOD = c.SOLVER.MAX_ITER
    c.freeze()
    return c


def _read_marker(stage_dir: str) -> Optional[Dict]:
    path = os.path.join(stage_dir, MARKER)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def stage_state(root: str, stage: str) -> Optional[str]:
    """``"finished"`` (``stage_complete.json``), ``"half-finished"`` (a training stage with a
    checkpoint but no marker) or None (nothing trained is kept) for ``root/stage``."""
    stage_dir = os.path.join(root, stage)
    if os.path.isfile(os.path.join(stage_dir, MARKER)):
        return "finished"
    if stage != "merge" and os.path.isfile(os.path.join(stage_dir, "last_checkpoint")):
        return "half-finished"
    return None


def _check_max_iter(cfg: CfgNode) -> None:
    if cfg.SOLVER.MAX_ITER != 0:
        c = cfg.CURRICULUM
        raise ValueError(
            f"SOLVER.MAX_ITER = {cfg.SOLVER.MAX_ITER} is not used by the curriculum: each stage "
            f"trains its own number of iterations, CURRICULUM.SEMANTIC_ITER ({c.SEMANTIC_ITER}), "
            f"CURRICULUM.INSTANCE_ITER ({c.INSTANCE_ITER}) and CURRICULUM.JOINT_ITER "
            f"({c.JOINT_ITER}). Set those instead (e.g. CURRICULUM.SEMANTIC_ITER "
            f"{cfg.SOLVER.MAX_ITER}) and leave SOLVER.MAX_ITER at 0"
        )


def check_run_record(
    cfg: CfgNode,
    root: Optional[str] = None,
    allow_config_change: bool = False,
    stages: Sequence[str] = STAGES,
) -> "OrderedDict[str, List]":
    """Compare the stage configs ``cfg`` derives with the records of the finished and
    half-finished ``stages`` under ``root`` (default ``cfg.OUTPUT_DIR``).

    Returns:
        ``{stage: [(key, recorded, now), ...]}`` for the stages whose training-relevant keys
        differ (empty when none do; only returned with ``allow_config_change``).

    Raises:
        ConfigMismatchError: listing each differing stage, its record and the differing keys,
            unless ``allow_config_change``.
        ValueError: naming a record that cannot be read.
    """
    root = root or cfg.OUTPUT_DIR
    mismatches: "OrderedDict[str, List]" = OrderedDict()
    lines = []
    for stage in stages:
        state = stage_state(root, stage)
        if state is None:
            continue
        path = os.path.join(root, stage, RECORD)
        if not os.path.isfile(path):
            logger.warning(
                "[curriculum] stage '%s' in %s is %s but has no run record %s (it was trained "
                "before records existed): its config cannot be checked",
                stage,
                root,
                state,
                RECORD,
            )
            continue
        diff = record_diff(read_record(path), stage_config(cfg, stage, root))
        if diff:
            mismatches[stage] = diff
            lines.append(f"  stage '{stage}' ({state}), recorded in {path}:\n{format_diff(diff)}")
    if not mismatches:
        return mismatches
    message = (
        f"OUTPUT_DIR {root} holds stages trained with another config than this one:\n"
        + "\n".join(lines)
        + "\nThese keys change what a stage trains (evaluation-only keys such as TEST.*, "
        "DATASETS.TEST, *_TEST, OUTPUT_DIR, MODEL.DEVICE or DATALOADER.NUM_WORKERS may differ)."
    )
    if not allow_config_change:
        raise ConfigMismatchError(
            message + f"\nPick a new OUTPUT_DIR for this config, or pass --allow-config-change "
            "(run_curriculum(..., allow_config_change=True)) to keep the finished stages as "
            "they are and continue the others with this config."
        )
    logger.warning(
        "[curriculum] %s\n--allow-config-change: finished stages are kept as recorded, "
        "unfinished ones continue with this config (their record keeps the earlier one).",
        message,
    )
    return mismatches


def _write_results_events(cfg: CfgNode, results: Dict) -> None:
    """Put evaluation results of a non-training stage into metrics.json and tensorboard."""
    flat = {k: v for k, v in flatten_results_dict(results).items() if isinstance(v, (int, float))}
    with EventStorage(0) as storage:
        storage.put_scalars(**flat, smoothing_hint=False)
        for writer in (
            JSONWriter(os.path.join(cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(cfg.OUTPUT_DIR),
        ):
            writer.write()
            writer.close()


_RECORD_HEADER = "panoptic_curriculum run record: the config stage '{}' trains with{}."
_RECORD_NOTE = (
    "A re-run of this OUTPUT_DIR whose training-relevant keys differ stops "
    "(panoptic_curriculum/engine/run_record.py lists the evaluation-only keys)."
)


def _record_stage(c: CfgNode, stage: str, start_iter: int, changed: bool) -> None:
    """Write the stage's record (main process) when it starts, when it resumes without one,
    or when it resumes with a changed config (the earlier record is kept beside it)."""
    if not comm.is_main_process():
        return
    path = os.path.join(c.OUTPUT_DIR, RECORD)
    if start_iter == 0:
        header = [_RECORD_HEADER.format(stage, ""), _RECORD_NOTE]
    elif changed:
        before = f"config.before_iter_{start_iter}.yaml"
        os.replace(path, os.path.join(c.OUTPUT_DIR, before))
        header = [
            _RECORD_HEADER.format(stage, f" from iteration {start_iter} on"),
            f"Continued with a changed config (--allow-config-change); until then: {before}",
            _RECORD_NOTE,
        ]
    elif not os.path.isfile(path):
        header = [
            _RECORD_HEADER.format(stage, f" from iteration {start_iter} on"),
            "Recorded when resuming a stage started before run records existed.",
            _RECORD_NOTE,
        ]
    else:
        return
    write_record(path, c, header)


def _evaluated(cfg: CfgNode, stage: str) -> bool:
    """Whether ``stage`` is evaluated when it finishes (``CURRICULUM.EVAL_STAGES``)."""
    return stage in cfg.CURRICULUM.EVAL_STAGES


def _run_stage(cfg: CfgNode, stage: str, root: str, trainer_cls, changed: bool = False) -> Dict:
    c = stage_config(cfg, stage, root)
    os.makedirs(c.OUTPUT_DIR, exist_ok=True)
    if stage == "merge":
        for prev in ("semantic", "instance"):
            if not os.path.isfile(_final_checkpoint(root, prev)):
                raise FileNotFoundError(
                    f"the merge stage needs {_final_checkpoint(root, prev)}; run the "
                    f"'{prev}' stage first"
                )
        _record_stage(c, stage, 0, False)
        if comm.is_main_process():
            merge_stage_checkpoints(
                _final_checkpoint(root, "semantic"),
                _final_checkpoint(root, "instance"),
                c.MODEL.WEIGHTS,
            )
        comm.synchronize()
        if not _evaluated(cfg, stage):
            return OrderedDict()
        model = trainer_cls.build_model(c)
        AtomicCheckpointer(model, c.OUTPUT_DIR, strict=True).load(
            c.MODEL.WEIGHTS, checkpointables=[]
        )
        results = trainer_cls.test(c, model)
        if comm.is_main_process():
            _write_results_events(c, results)
        return results
    from_config_weights = stage == "semantic" or (
        stage == "joint" and not _joint_fine_tunes_merge(cfg)
    )  # their MODEL.WEIGHTS may be a URL or pretrained encoder weights, as in detectron2
    if c.MODEL.WEIGHTS and not os.path.isfile(c.MODEL.WEIGHTS) and not from_config_weights:
        raise FileNotFoundError(
            f"the '{stage}' stage starts from {c.MODEL.WEIGHTS}, which does not exist; run the "
            "earlier stages first"
        )
    # each stage starts from the same RNG state whatever ran before it in this process
    # (a resumed run then restores the checkpointed state)
    seed_all_rng(None if c.SEED < 0 else c.SEED + comm.get_rank())
    if not _evaluated(cfg, stage):
        # no evaluation after training (DATASETS.TEST is evaluation-only: the record holds)
        c = c.clone()
        c.defrost()
        c.DATASETS.TEST = ()
        c.freeze()
    trainer = trainer_cls(c)
    trainer.resume_or_load(resume=True)
    if changed and trainer.start_iter > 0:
        if trainer.start_iter >= c.SOLVER.MAX_ITER:
            raise ConfigMismatchError(
                f"stage '{stage}' in {c.OUTPUT_DIR} has trained {trainer.start_iter} iterations "
                f"already, not fewer than its new length SOLVER.MAX_ITER = {c.SOLVER.MAX_ITER} "
                "(from CURRICULUM.*_ITER); pick a new OUTPUT_DIR"
            )
        trainer.apply_config_schedule()
    _record_stage(c, stage, trainer.start_iter, changed)
    comm.synchronize()
    trainer.train()
    return getattr(trainer, "_last_eval_results", None) or OrderedDict()


def _finished_results(root: str) -> "OrderedDict[str, Dict]":
    """``{stage: results}`` of every finished stage under ``root``, in curriculum order."""
    out: "OrderedDict[str, Dict]" = OrderedDict()
    for stage in STAGES:
        marker = _read_marker(os.path.join(root, stage))
        if marker is not None:
            out[stage] = marker["results"]
    return out


def run_curriculum(
    cfg: CfgNode,
    stages: Optional[Sequence[str]] = None,
    trainer_cls=PanopticCurriculumTrainer,
    allow_config_change: bool = False,
) -> "OrderedDict[str, Dict]":
    """Run ``stages`` (default ``cfg.CURRICULUM.STAGES``) in order under ``cfg.OUTPUT_DIR``,
    skipping finished ones and resuming an interrupted one.

    First the stage configs are checked against the folder's run records
    (:func:`check_run_record`): with ``allow_config_change`` a finished stage that differs is
    kept as it is and a half-finished one continues with the new config (its solver settings
    and schedule included, :meth:`PanopticCurriculumTrainer.apply_config_schedule`). Then
    ``OUTPUT_DIR/config.yaml`` is written (the curriculum config of this run).

    Returns:
        results per stage of ``stages``. ``summary.json`` and ``summary.txt`` get one row per
        finished stage of the folder, also those this call did not run.

    Raises:
        ConfigMismatchError: see :func:`check_run_record`.
        ValueError: ``SOLVER.MAX_ITER`` set (the stages use ``CURRICULUM.*_ITER``), unknown
            stages.
    """
    validate_config(cfg)  # configs built by hand skip load_config's check
    stages = list(stages or cfg.CURRICULUM.STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown curriculum stages {unknown}; stages are {STAGES}")
    stages = [s for s in STAGES if s in stages]  # canonical order
    _check_max_iter(cfg)
    root = cfg.OUTPUT_DIR
    changed = check_run_record(cfg, root, allow_config_change)
    if comm.is_main_process():
        os.makedirs(root, exist_ok=True)
        header = [
            "panoptic_curriculum: the curriculum config of the latest run in this folder.",
            f"What each stage trained with: <stage>/{RECORD}.",
        ] + [
            f"Stage '{s}' was trained with other values of: " + ", ".join(k for k, _, _ in d)
            for s, d in changed.items()
        ]
        write_record(os.path.join(root, "config.yaml"), cfg, header)
    if comm.is_main_process():  # temporary files of a run killed while writing
        for folder in [root] + [os.path.join(root, s) for s in STAGES]:
            remove_stale_temp_files(folder)
    # every stage still to train gets the labels it needs, checked before the first one runs
    check_stage_labels(
        {
            s: stage_config(cfg, s, root)
            for s in stages
            if s != "merge" and _read_marker(os.path.join(root, s)) is None
        }
    )
    all_results: "OrderedDict[str, Dict]" = OrderedDict()
    for i, stage in enumerate(stages, start=1):
        stage_dir = os.path.join(root, stage)
        done = _read_marker(stage_dir)
        if done is not None:
            logger.info(
                "[curriculum] stage %d/%d '%s' already complete, skipping%s",
                i,
                len(stages),
                stage,
                " (kept as recorded in its config.yaml)" if stage in changed else "",
            )
            all_results[stage] = done["results"]
            continue
        iters = stage_config(cfg, stage, root).SOLVER.MAX_ITER
        logger.info(
            "[curriculum] stage %d/%d '%s' (%d iterations) in %s%s",
            i,
            len(stages),
            stage,
            iters,
            stage_dir,
            "" if _evaluated(cfg, stage) else ", not evaluated (CURRICULUM.EVAL_STAGES)",
        )
        results = _run_stage(cfg, stage, root, trainer_cls, changed=stage in changed)
        all_results[stage] = results
        if comm.is_main_process():
            atomic_write_text(
                os.path.join(stage_dir, MARKER),
                json.dumps(
                    {
                        "stage": stage,
                        "checkpoint": _final_checkpoint(root, stage),
                        "results": results,
                    },
                    indent=2,
                ),
            )
        comm.synchronize()
    if comm.is_main_process():
        summary = _finished_results(root)
        summary.update((s, r) for s, r in all_results.items() if s not in summary)
        summary = OrderedDict((s, summary[s]) for s in STAGES if s in summary)
        table = summary_table(summary)
        logger.info("[curriculum] results on %s:\n%s", ", ".join(cfg.DATASETS.TEST), table)
        atomic_write_text(os.path.join(root, "summary.json"), json.dumps(summary, indent=2))
        atomic_write_text(os.path.join(root, "summary.txt"), table + "\n")
    return all_results


def final_stage(root: str) -> Optional[str]:
    """The last finished stage under ``root`` in curriculum order (its model is the run's
    final model), or None."""
    finished = [s for s in STAGES if stage_state(root, s) == "finished"]
    return finished[-1] if finished else None


def evaluate_run(
    cfg: CfgNode,
    resume: bool = False,
    allow_config_change: bool = False,
    trainer_cls=PanopticCurriculumTrainer,
    output_dir: Optional[str] = None,
) -> Dict:
    """Evaluate a model on ``cfg.DATASETS.TEST`` (``tools/train_net.py --eval-only``).

    * ``resume`` on a curriculum folder (``cfg.OUTPUT_DIR`` holds stage folders): its final
      model, that of the last finished stage (joint, else merge, ...), built with that stage's
      config after checking it against the stage's record; ``MODEL.WEIGHTS`` is not used.
    * otherwise, as detectron2: the last checkpoint of ``cfg.OUTPUT_DIR`` with ``resume``,
      else ``MODEL.WEIGHTS``.

    The config evaluated with is written to ``<its OUTPUT_DIR>/inference/config.yaml``, the
    evaluators' files beside it; ``output_dir`` puts both there instead (the evaluated run's
    folder is then only read).

    Raises:
        FileNotFoundError: ``resume`` on a curriculum folder without a finished stage.
        ValueError: no weights at all (a randomly initialised model is never evaluated).
        ConfigMismatchError: the final stage's record differs (see :func:`check_run_record`).
    """
    root = cfg.OUTPUT_DIR
    stage = final_stage(root) if resume else None
    if stage is not None:
        check_run_record(cfg, root, allow_config_change, stages=[stage])
        c = stage_config(cfg, stage, root)
        c.defrost()
        c.MODEL.WEIGHTS = _final_checkpoint(root, stage)
        c.freeze()
        logger.info(
            "[curriculum] --resume: evaluating the final model of %s, stage '%s': %s%s",
            root,
            stage,
            c.MODEL.WEIGHTS,
            f" (MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} not used)" if cfg.MODEL.WEIGHTS else "",
        )
    else:
        c = cfg
        started = {s: stage_state(root, s) for s in STAGES if stage_state(root, s)}
        if resume and started:
            raise FileNotFoundError(
                f"--eval-only --resume: the curriculum in {root} has no finished stage ("
                + ", ".join(f"{s}: {v}" for s, v in started.items())
                + "); finish its training (the same command without --eval-only), or evaluate "
                "given weights without --resume: MODEL.WEIGHTS path/to/model.pth"
            )
        resumable = resume and os.path.isfile(os.path.join(root, "last_checkpoint"))
        if not resumable and not cfg.MODEL.WEIGHTS:
            raise ValueError(
                "--eval-only needs weights: MODEL.WEIGHTS is empty"
                + (f" and {root} holds no checkpoint to resume" if resume else "")
                + "; pass MODEL.WEIGHTS path/to/model.pth (or --resume on a training "
                "OUTPUT_DIR); a randomly initialised model is not evaluated"
            )
    model = trainer_cls.build_model(c)
    # evaluation loads strictly: weights that do not fit the model are an error
    checkpointer = AtomicCheckpointer(model, save_dir=c.OUTPUT_DIR, strict=True)
    if stage is not None:
        checkpointer.load(c.MODEL.WEIGHTS, checkpointables=[])
    else:
        checkpointer.resume_or_load(c.MODEL.WEIGHTS, resume=resume)
    if output_dir is not None:  # an evaluation-only key: the record check above still holds
        c = c.clone()
        c.defrost()
        c.OUTPUT_DIR = output_dir
        c.freeze()
    if comm.is_main_process():
        os.makedirs(os.path.join(c.OUTPUT_DIR, "inference"), exist_ok=True)
        write_record(
            os.path.join(c.OUTPUT_DIR, "inference", "config.yaml"),
            c,
            ["panoptic_curriculum: the config of the latest evaluation (--eval-only) here."],
        )
    return trainer_cls.test(c, model)


# (column, task, keys): the first key the task's results hold ("IoU" is the Cityscapes
# semantic evaluator's mean IoU)
_COLUMNS = [
    ("mIoU", "sem_seg", ("mIoU", "IoU")),
    ("mask AP", "segm", ("AP",)),
    ("PQ", "panoptic_seg", ("PQ",)),
    ("depth AbsRel", "depth", ("AbsRel",)),
    ("depth d<1.25", "depth", ("d1",)),
]


def summary_table(results: Dict[str, Dict]) -> str:
    """One row per stage ("merge" shown as "merged"), the headline metric of each task."""
    rows = []
    for stage, res in results.items():
        if not res:  # trained, not evaluated (CURRICULUM.EVAL_STAGES)
            continue
        row = ["merged" if stage == "merge" else stage]
        for _, task, keys in _COLUMNS:
            found = res.get(task) if isinstance(res.get(task), dict) else {}
            value = next((found[k] for k in keys if k in found), None)
            row.append(
                "-" if value is None else f"{value:.3f}" if task == "depth" else f"{value:.1f}"
            )
        rows.append(row)
    return tabulate(rows, headers=["stage"] + [c for c, _, _ in _COLUMNS], tablefmt="pipe")
