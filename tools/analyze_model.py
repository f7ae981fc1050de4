#!/usr/bin/env python
"""Multiply-adds, activations, parameters and structure of a panoptic_curriculum model:
detectron2's ``tools/analyze_model.py`` for this plugin (the logic is in
``panoptic_curriculum.utils.analysis``).

Inputs are the first ``--num-inputs`` images of the config's test set through the plugin's
test-time mapper, or, with ``--input-size H W``, random images of that size (for datasets
not on this machine). Multiply-adds depend on the input size and, in the instance branch,
on the number of detections, so they are averaged over the inputs. fvcore's "flops" are
multiply-adds and are reported as GMACs here. Counts do not depend on the device: a config
asking for CUDA on a machine without it is analysed on the CPU.

Examples::

    python tools/analyze_model.py --config-file configs/synthetic/curriculum_R18_FPN.yaml \\
        --tasks flop parameter activation structure --num-inputs 10
    python tools/analyze_model.py --config-file configs/cityscapes/curriculum_R50_FPN.yaml \\
        --tasks flop --input-size 1024 2048 --output output/analysis_cityscapes.json
"""

import panoptic_curriculum  # noqa: F401  (first: detectron2 compatibility fixes, datasets)

import argparse
import json
import os

import torch

from panoptic_curriculum import load_config
from panoptic_curriculum.engine.checkpoint import AtomicCheckpointer
from panoptic_curriculum.utils.analysis import (
    TASKS,
    analysis_inputs,
    analyze_model,
    format_report,
)

from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--tasks", nargs="+", required=True, choices=TASKS)
    parser.add_argument(
        "-n", "--num-inputs", type=int, default=10, help="images to average the counts over"
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="analyse on random images of this size instead of the test set",
    )
    parser.add_argument("--output", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logger = setup_logger(name="panoptic_curriculum")
    setup_logger(name="fvcore", abbrev_name="fvcore")
    cfg = load_config(args.config_file, args.opts, freeze=False)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE %s: no CUDA here, analysing on the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        AtomicCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.info("MODEL.WEIGHTS is empty: analysing randomly initialised weights")
    needs_inputs = any(t in ("flop", "activation") for t in args.tasks)
    inputs = analysis_inputs(cfg, args.num_inputs, args.input_size) if needs_inputs else []
    report = analyze_model(model, inputs, args.tasks)
    logger.info("Analysis of %s:\n%s", args.config_file, format_report(report))
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as f:
            json.dump({"config_file": args.config_file, **report}, f, indent=2)
        logger.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
