#!/usr/bin/env python
"""Combine the semantic-stage and instance-stage checkpoints into one multi-task checkpoint.

The encoder, semantic decoder, depth head and point head come from the semantic stage, the
Mask R-CNN decoder (proposal generator + ROI heads) from the instance stage; the instance
stage's encoder must be identical (it trained on the frozen encoder).

    python tools/merge_checkpoints.py --semantic output/curriculum/semantic/model_final.pth \
        --instance output/curriculum/instance/model_final.pth --output merged.pth
"""

import argparse

import panoptic_curriculum  # noqa: F401  isort:skip  first: detectron2 v0.6 compatibility layer
from detectron2.utils.logger import setup_logger

from panoptic_curriculum.engine import merge_stage_checkpoints


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--semantic", required=True, help="checkpoint of the semantic stage")
    parser.add_argument("--instance", required=True, help="checkpoint of the instance stage")
    parser.add_argument("--output", required=True, help="where to write the merged checkpoint")
    args = parser.parse_args(argv)
    setup_logger(name="panoptic_curriculum")
    merge_stage_checkpoints(args.semantic, args.instance, args.output)


if __name__ == "__main__":
    main()
