#!/usr/bin/env python
"""Ablations under the main job's wall-clock budget, over several seeds.

The budget is the config's curriculum (``CURRICULUM.STAGES`` and ``*_ITER``), trained first
(first seed); its stages and every other variant are then timed side by side with trained
weights, and every other variant trains for as many iterations as fit in the same seconds
(see ``panoptic_curriculum.engine.ablation``). Writes ``OUTPUT/ablation.{md,json}`` and
``OUTPUT/budget_plan.json``; re-running resumes (finished runs are read back).

    python tools/ablation.py --config-file configs/synthetic/curriculum_R18_FPN.yaml \
        --seeds 0 1 2 --output output/ablation
    python tools/ablation.py --variants curriculum joint_scratch --seeds 0 1 2 \
        CURRICULUM.SEMANTIC_ITER 100   # config overrides apply to every variant
    # evaluate the finished runs of output/ablation again, at another test size (no training)
    python tools/ablation.py --evaluate-from output/ablation --output output/ablation_test160 \
        INPUT.MIN_SIZE_TEST 160 INPUT.MAX_SIZE_TEST 400
"""

import argparse
import logging

import panoptic_curriculum  # noqa: F401  isort:skip  first: detectron2 v0.6 compatibility layer
from detectron2.utils.logger import setup_logger

from panoptic_curriculum import load_config
from panoptic_curriculum.engine.ablation import VARIANTS, planned_variants, run_ablation
from panoptic_curriculum.engine.run_record import is_evaluation_only


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/synthetic/curriculum_R18_FPN.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        help="default: every variant (with --evaluate-from: every variant that DIR planned)",
    )
    parser.add_argument(
        "--per-class",
        nargs="*",
        default=None,
        help="semantic classes whose IoU gets its own column (default: the test set's thing "
        "classes, if at most 8: ball, crate, container, pillar on the synthetic scenes); "
        "config overrides go after every option",
    )
    parser.add_argument("--output", default="output/ablation")
    parser.add_argument(
        "--evaluate-from",
        metavar="DIR",
        help="train nothing: evaluate the finished runs of DIR (an earlier --output) with this "
        "command's evaluation-only overrides (INPUT.MIN_SIZE_TEST, TEST.*, ...); results go "
        "to --output, DIR is only read",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    if args.evaluate_from:
        training_keys = [k for k in args.opts[::2] if not is_evaluation_only(k)]
        if training_keys:
            parser.error(
                f"--evaluate-from: {training_keys} would change training, not evaluation; only "
                "evaluation-only keys may be overridden (panoptic_curriculum/engine/run_record.py)"
            )
    if args.variants is None:
        planned = planned_variants(args.evaluate_from) if args.evaluate_from else []
        args.variants = planned or list(VARIANTS)
    setup_logger(name="panoptic_curriculum")
    setup_logger()
    cfg = load_config(args.config_file, args.opts)
    content = run_ablation(
        cfg, args.variants, args.seeds, args.output, args.per_class,
        evaluate_from=args.evaluate_from,
    )
    logging.getLogger("panoptic_curriculum").info("\n%s", content["budget"])
    with open(f"{args.output}/ablation.md") as f:
        print(f.read())


if __name__ == "__main__":
    main()
