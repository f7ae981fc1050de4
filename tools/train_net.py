#!/usr/bin/env python
"""Train and evaluate panoptic_curriculum models, detectron2-style.

    # the whole curriculum (semantic -> instance -> merge [-> joint]), resumable:
    python tools/train_net.py --config-file configs/synthetic/curriculum_R18_FPN.yaml
    # one stage (earlier stages' outputs must be in OUTPUT_DIR; its row joins the summary):
    python tools/train_net.py --config-file ... --stage instance
    # evaluate weights (they must fit the config's model exactly; none given is an error):
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model.pth
    # evaluate the final model of a curriculum folder:
    python tools/train_net.py --config-file ... --eval-only --resume OUTPUT_DIR output/my_run
    # 2 processes (GPUs, or CPU processes with gloo when there is no GPU):
    python tools/train_net.py --config-file ... --num-gpus 2

Re-running the same command skips finished stages and resumes an unfinished one from its
last checkpoint (``--resume`` is accepted for detectron2 compatibility and implied). Each
stage records the config it trains with in ``OUTPUT_DIR/<stage>/config.yaml``; a re-run whose
training-relevant keys differ from a finished or half-finished stage stops with the
differences (pick a new ``OUTPUT_DIR``, or pass ``--allow-config-change``). Stage lengths are
``CURRICULUM.*_ITER``; ``SOLVER.MAX_ITER`` is rejected.
"""

import logging
import sys

import panoptic_curriculum  # noqa: F401  isort:skip  first: detectron2 v0.6 compatibility layer
from detectron2.engine import default_argument_parser

from panoptic_curriculum import load_config
from panoptic_curriculum.engine import (
    STAGES,
    ConfigMismatchError,
    default_setup,
    evaluate_run,
    run_curriculum,
)
from panoptic_curriculum.engine.launch import launch

logger = logging.getLogger("panoptic_curriculum.train_net")


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    try:
        if args.eval_only:
            return evaluate_run(
                cfg, resume=args.resume, allow_config_change=args.allow_config_change
            )
        stages = None if args.stage == "all" else [args.stage]
        return run_curriculum(cfg, stages, allow_config_change=args.allow_config_change)
    except ConfigMismatchError as e:
        logger.error("%s", e)
        sys.exit(2)


def build_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--stage",
        default="all",
        choices=("all",) + STAGES,
        help="curriculum stage to run (default: CURRICULUM.STAGES in order)",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="continue in an OUTPUT_DIR whose stages were trained with other training-relevant "
        "config values: finished stages are kept as they are, unfinished ones continue with "
        "this config (default: stop and list the differences)",
    )
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
