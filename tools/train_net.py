#!/usr/bin/env python
"""Train and evaluate panoptic_curriculum models, detectron2-style.

    # the whole curriculum (semantic -> instance -> merge [-> joint]), resumable:
    python tools/train_net.py --config-file configs/synthetic/curriculum_R18_FPN.yaml
    # one stage (earlier stages' outputs must be in OUTPUT_DIR):
    python tools/train_net.py --config-file ... --stage instance
    # evaluate weights (they must fit the config's model exactly; none given is an error):
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model.pth
    # 2 processes (GPUs, or CPU processes with gloo when there is no GPU):
    python tools/train_net.py --config-file ... --num-gpus 2

Re-running the same command skips finished stages and resumes an unfinished one from its
last checkpoint (``--resume`` is accepted for detectron2 compatibility and implied).
"""

import logging
import os

import panoptic_curriculum  # noqa: F401  isort:skip  first: detectron2 v0.6 compatibility layer
from detectron2.engine import default_argument_parser, default_setup

from panoptic_curriculum import load_config
from panoptic_curriculum.engine import STAGES, PanopticCurriculumTrainer, run_curriculum
from panoptic_curriculum.engine.checkpoint import AtomicCheckpointer
from panoptic_curriculum.engine.launch import launch

logger = logging.getLogger("panoptic_curriculum")


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    resumable = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if args.eval_only and not cfg.MODEL.WEIGHTS and not (args.resume and resumable):
        raise ValueError(
            "--eval-only needs weights: pass MODEL.WEIGHTS path/to/model.pth (or --resume with "
            f"a checkpoint in OUTPUT_DIR {cfg.OUTPUT_DIR}); refusing to evaluate a randomly "
            "initialised model"
        )
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = PanopticCurriculumTrainer.build_model(cfg)
        AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return PanopticCurriculumTrainer.test(cfg, model)
    stages = None if args.stage == "all" else [args.stage]
    return run_curriculum(cfg, stages)


def build_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--stage",
        default="all",
        choices=("all",) + STAGES,
        help="curriculum stage to run (default: CURRICULUM.STAGES in order)",
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
