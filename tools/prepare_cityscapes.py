#!/usr/bin/env python
"""Make the derived Cityscapes files (labelTrainIds, panoptic PNGs + JSON, and label /
instance id PNGs where missing) from the official downloads.

    csDownload -d $DETECTRON2_DATASETS/cityscapes gtFine_trainvaltest.zip \\
        leftImg8bit_trainvaltest.zip disparity_trainvaltest.zip camera_trainvaltest.zip
    (unzip each there)
    python tools/prepare_cityscapes.py            # $DETECTRON2_DATASETS/cityscapes, train + val

See ``panoptic_curriculum.data.datasets.cityscapes_prepare`` for what is written where.
"""

import argparse
import os

import panoptic_curriculum  # noqa: F401  isort:skip  first: compatibility layer
from detectron2.utils.logger import setup_logger

from panoptic_curriculum.data.datasets.cityscapes_prepare import prepare_cityscapes


def build_parser():
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cityscapes-dir",
        default=os.path.join(root, "cityscapes"),
        help="folder holding leftImg8bit/, gtFine/, disparity/, camera/ "
        "(default: $DETECTRON2_DATASETS/cityscapes)",
    )
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument(
        "--overwrite", action="store_true", help="rewrite labelTrainIds and panoptic files"
    )
    parser.add_argument("--workers", type=int, default=0, help="processes (0: one per CPU)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logger(name="panoptic_curriculum")
    return prepare_cityscapes(args.cityscapes_dir, args.splits, args.overwrite, args.workers)


if __name__ == "__main__":
    main()
