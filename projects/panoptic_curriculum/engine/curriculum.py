"""The transfer-then-merge curriculum: stage configs and a resumable runner.

Stages (``CURRICULUM.STAGES``, in this order):

* ``semantic``: encoder + DeepLab semantic decoder + depth head + point branch trained end to
  end with L_2D-seg + L_depth + L_3D-seg + L_consist; the instance decoder is not built.
* ``instance``: the encoder is frozen (no gradients, no stored activations, fixed
  normalisation) and feeds a randomly initialised Mask R-CNN decoder, the only part that
  trains; the semantic, depth and point heads are not built (not run).
* ``merge``: encoder, semantic decoder (+ depth, point heads) and instance decoder combined
  into one multi-task checkpoint, then evaluated.
* ``joint`` (optional, claim 19): everything fine-tuned from the merged checkpoint.

Each stage works in ``OUTPUT_DIR/<stage>`` and, when done, writes ``stage_complete.json``
(results + checkpoint); a re-run skips finished stages and resumes an unfinished one from its
last checkpoint.
"""

import json
import logging
import os
from collections import OrderedDict
from typing import Dict, Optional, Sequence

from tabulate import tabulate

from detectron2.config import CfgNode
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage, JSONWriter, TensorboardXWriter

from .checkpoint import AtomicCheckpointer, atomic_write_text
from .merge import merge_stage_checkpoints
from .trainer import PanopticCurriculumTrainer

__all__ = ["STAGES", "stage_config", "run_curriculum", "summary_table"]

logger = logging.getLogger(__name__)

STAGES = ("semantic", "instance", "merge", "joint")
MARKER = "stage_complete.json"


def _final_checkpoint(root: str, stage: str) -> str:
    if stage == "merge":
        return os.path.join(root, "merge", "model_merged.pth")
    return os.path.join(root, stage, "model_final.pth")


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
        c.SOLVER.MAX_ITER = cfg.CURRICULUM.SEMANTIC_ITER
    elif stage == "instance":
        pc.SEM_SEG_ON = pc.DEPTH_ON = False
        pc.INSTANCE_ON = True
        c.MODEL.POINT_HEAD.ENABLED = False
        c.MODEL.FREEZE.PREFIXES = sorted(set(cfg.MODEL.FREEZE.PREFIXES) | {"backbone"})
        c.MODEL.WEIGHTS = _final_checkpoint(root, "semantic")
        c.SOLVER.MAX_ITER = cfg.CURRICULUM.INSTANCE_ITER
    elif stage == "merge":
        c.MODEL.WEIGHTS = _final_checkpoint(root, "merge")
        c.SOLVER.MAX_ITER = 0
    else:  # joint
        c.MODEL.WEIGHTS = _final_checkpoint(root, "merge")
        c.SOLVER.MAX_ITER = cfg.CURRICULUM.JOINT_ITER
        c.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR * cfg.CURRICULUM.JOINT_LR_FACTOR
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


def _run_stage(cfg: CfgNode, stage: str, root: str, trainer_cls) -> Dict:
    c = stage_config(cfg, stage, root)
    os.makedirs(c.OUTPUT_DIR, exist_ok=True)
    if stage == "merge":
        for prev in ("semantic", "instance"):
            if not os.path.isfile(_final_checkpoint(root, prev)):
                raise FileNotFoundError(
                    f"the merge stage needs {_final_checkpoint(root, prev)}; run the "
                    f"'{prev}' stage first"
                )
        if comm.is_main_process():
            merge_stage_checkpoints(
                _final_checkpoint(root, "semantic"),
                _final_checkpoint(root, "instance"),
                c.MODEL.WEIGHTS,
            )
        comm.synchronize()
        model = trainer_cls.build_model(c)
        AtomicCheckpointer(model, c.OUTPUT_DIR).load(c.MODEL.WEIGHTS, checkpointables=[])
        results = trainer_cls.test(c, model)
        if comm.is_main_process():
            _write_results_events(c, results)
        return results
    if c.MODEL.WEIGHTS and not os.path.isfile(c.MODEL.WEIGHTS) and stage != "semantic":
        raise FileNotFoundError(
            f"the '{stage}' stage starts from {c.MODEL.WEIGHTS}, which does not exist; run the "
            "earlier stages first"
        )
    # each stage starts from the same RNG state whatever ran before it in this process
    # (a resumed run then restores the checkpointed state)
    seed_all_rng(None if c.SEED < 0 else c.SEED + comm.get_rank())
    trainer = trainer_cls(c)
    trainer.resume_or_load(resume=True)
    trainer.train()
    return getattr(trainer, "_last_eval_results", None) or OrderedDict()


def run_curriculum(
    cfg: CfgNode, stages: Optional[Sequence[str]] = None, trainer_cls=PanopticCurriculumTrainer
) -> "OrderedDict[str, Dict]":
    """Run ``stages`` (default ``cfg.CURRICULUM.STAGES``) in order under ``cfg.OUTPUT_DIR``,
    skipping finished ones and resuming an interrupted one. Returns results per stage and
    writes ``summary.json`` and the summary table."""
    stages = list(stages or cfg.CURRICULUM.STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown curriculum stages {unknown}; stages are {STAGES}")
    stages = [s for s in STAGES if s in stages]  # canonical order
    root = cfg.OUTPUT_DIR
    all_results: "OrderedDict[str, Dict]" = OrderedDict()
    for i, stage in enumerate(stages, start=1):
        stage_dir = os.path.join(root, stage)
        done = _read_marker(stage_dir)
        if done is not None:
            logger.info(
                "[curriculum] stage %d/%d '%s' already complete, skipping", i, len(stages), stage
            )
            all_results[stage] = done["results"]
            continue
        iters = stage_config(cfg, stage, root).SOLVER.MAX_ITER
        logger.info(
            "[curriculum] stage %d/%d '%s' (%d iterations) in %s",
            i,
            len(stages),
            stage,
            iters,
            stage_dir,
        )
        results = _run_stage(cfg, stage, root, trainer_cls)
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
        table = summary_table(all_results)
        logger.info("[curriculum] results on %s:\n%s", ", ".join(cfg.DATASETS.TEST), table)
        atomic_write_text(os.path.join(root, "summary.json"), json.dumps(all_results, indent=2))
        atomic_write_text(os.path.join(root, "summary.txt"), table + "\n")
    return all_results


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
        row = ["merged" if stage == "merge" else stage]
        for _, task, keys in _COLUMNS:
            found = res.get(task) if isinstance(res.get(task), dict) else {}
            value = next((found[k] for k in keys if k in found), None)
            row.append(
                "-" if value is None else f"{value:.3f}" if task == "depth" else f"{value:.1f}"
            )
        rows.append(row)
    return tabulate(rows, headers=["stage"] + [c for c, _, _ in _COLUMNS], tablefmt="pipe")
