#!/usr/bin/env python
"""Ablations on synthetic scenes under one iteration budget, over several seeds.

Variants (same total number of training iterations B = SEMANTIC_ITER + INSTANCE_ITER):

* ``curriculum``: semantic stage -> instance stage on the frozen encoder -> merge
  (point branch and L_consist on);
* ``joint_scratch``: the full multi-task model trained jointly from random initialisation
  for B iterations (no curriculum);
* ``curriculum_no_point``: the curriculum without the point branch (no L_3D-seg, no
  L_consist);
* ``curriculum_no_consist``: the curriculum with the point branch but L_consist weighted 0;
* ``curriculum_learned_weights``: the curriculum with learned loss weights (homoscedastic
  uncertainty, ``MODEL.PANOPTIC_CURRICULUM.LOSS_WEIGHTING uncertainty``) instead of the
  fixed ones; ``tools/plot_metrics.py`` on its run folder draws the weights.

Every run evaluates on the config's test set; the script prints a markdown table (mean and
standard deviation over seeds) and writes it with all numbers to ``OUTPUT/ablation.{md,json}``.
Runs are resumable: finished ones are read back from their ``ablation_result.json``.

    python tools/ablation.py --config-file configs/synthetic/curriculum_R18_FPN.yaml \
        --seeds 0 1 --semantic-iter 150 --instance-iter 150 --output output/ablation
"""

import argparse
import json
import logging
import os
import statistics

import panoptic_curriculum  # noqa: F401  isort:skip  first: detectron2 v0.6 compatibility layer
from detectron2.utils.logger import setup_logger

from panoptic_curriculum import load_config
from panoptic_curriculum.engine import PanopticCurriculumTrainer, run_curriculum
from panoptic_curriculum.engine.checkpoint import atomic_write_text

VARIANTS = {
    "curriculum": [],
    "joint_scratch": None,  # special: no curriculum
    "curriculum_no_point": ["MODEL.POINT_HEAD.ENABLED", False],
    "curriculum_no_consist": ["MODEL.POINT_HEAD.CONSISTENCY_WEIGHT", 0.0],
    "curriculum_learned_weights": ["MODEL.PANOPTIC_CURRICULUM.LOSS_WEIGHTING", "uncertainty"],
}
METRICS = [
    ("mIoU", "sem_seg", "mIoU"),
    ("mask AP", "segm", "AP"),
    ("PQ", "panoptic_seg", "PQ"),
    ("depth AbsRel", "depth", "AbsRel"),
    ("depth d<1.25", "depth", "d1"),
]

logger = logging.getLogger("panoptic_curriculum.ablation")


def _cfg(args, seed, out_dir, overrides):
    return load_config(
        args.config_file,
        [
            "SEED",
            seed,
            "OUTPUT_DIR",
            out_dir,
            "CURRICULUM.SEMANTIC_ITER",
            args.semantic_iter,
            "CURRICULUM.INSTANCE_ITER",
            args.instance_iter,
            "CURRICULUM.STAGES",
            ["semantic", "instance", "merge"],
        ]
        + overrides
        + args.opts,
        freeze=False,
    )


def run_variant(args, name, seed):
    """Final results of one variant and seed (merged model, or the jointly trained one)."""
    out_dir = os.path.join(args.output, f"{name}_seed{seed}")
    summary = os.path.join(out_dir, "ablation_result.json")  # run_curriculum owns summary.json
    if os.path.isfile(summary):
        with open(summary) as f:
            return json.load(f)["final"]
    if VARIANTS[name] is None:
        cfg = _cfg(args, seed, out_dir, [])
        cfg.SOLVER.MAX_ITER = args.semantic_iter + args.instance_iter
        cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER // 4)
        cfg.TEST.EVAL_PERIOD = cfg.SOLVER.MAX_ITER
        cfg.freeze()
        from detectron2.utils.env import seed_all_rng

        seed_all_rng(seed)
        trainer = PanopticCurriculumTrainer(cfg)
        trainer.resume_or_load(resume=True)
        trainer.train()
        final = trainer._last_eval_results
    else:
        final = run_curriculum(_cfg(args, seed, out_dir, VARIANTS[name]))["merge"]
    atomic_write_text(
        summary, json.dumps({"variant": name, "seed": seed, "final": final}, indent=2)
    )
    return final


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/synthetic/curriculum_R18_FPN.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--semantic-iter", type=int, default=150)
    parser.add_argument("--instance-iter", type=int, default=150)
    parser.add_argument("--output", default="output/ablation")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    setup_logger(name="panoptic_curriculum")
    setup_logger()
    os.makedirs(args.output, exist_ok=True)

    results = {
        name: {seed: run_variant(args, name, seed) for seed in args.seeds} for name in args.variants
    }
    header = "| variant | " + " | ".join(m for m, _, _ in METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 1)]
    for name, per_seed in results.items():
        cells = []
        for _, task, key in METRICS:
            vals = [r[task][key] for r in per_seed.values() if task in r and key in r[task]]
            if not vals:
                cells.append("-")
                continue
            mean = statistics.mean(vals)
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(
                f"{mean:.3f} ± {std:.3f}" if task == "depth" else f"{mean:.1f} ± {std:.1f}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    budget = (
        f"budget: {args.semantic_iter + args.instance_iter} iterations per run "
        f"({args.semantic_iter} semantic + {args.instance_iter} instance for the curricula), "
        f"seeds {args.seeds}, config {args.config_file}; mean ± std over seeds"
    )
    table = "\n".join(lines) + "\n\n" + budget + "\n"
    print(table)
    atomic_write_text(os.path.join(args.output, "ablation.md"), table)
    atomic_write_text(
        os.path.join(args.output, "ablation.json"),
        json.dumps({"budget": budget, "results": results}, indent=2),
    )


if __name__ == "__main__":
    main()
