#!/usr/bin/env python
"""Make the semantic label PNGs that COCO panoptic training needs, from the panoptic PNGs.

COCO (detectron2's coco_2017_*_panoptic_separated datasets, configs/coco): from the official
panoptic_annotations_trainval2017.zip unpacked into datasets/coco/, this unpacks
annotations/panoptic_{train,val}2017.zip when needed and writes
datasets/coco/panoptic_stuff_{train,val}2017/ (things -> 0, stuff -> 1..53, void -> 255):

    python tools/prepare_coco_panoptic.py                      # $DETECTRON2_DATASETS/coco
    python tools/prepare_coco_panoptic.py --coco-root /data/coco --workers 8

A COCO panoptic dataset of your own (register_rgbd_dataset's sem_seg_root): one semantic
class per category, things first ("all"), or detectron2's "separated" layout:

    python tools/prepare_coco_panoptic.py --panoptic-json my/panoptic.json \
        --panoptic-root my/panoptic --output my/semantic --semantic all
"""

import argparse
import os

import panoptic_curriculum  # noqa: F401  isort:skip  first: detectron2 v0.6 compatibility layer
from detectron2.utils.logger import setup_logger

from panoptic_curriculum.data.datasets.coco_panoptic import (
    SEMANTIC_MODES,
    panoptic_to_semantic,
    prepare_coco_panoptic,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "coco")
    parser.add_argument("--coco-root", default=root, help=f"COCO folder (default: {root})")
    parser.add_argument("--splits", nargs="+", default=["train2017", "val2017"])
    parser.add_argument("--panoptic-json", help="your own dataset: its COCO panoptic JSON")
    parser.add_argument("--panoptic-root", help="your own dataset: its panoptic PNG folder")
    parser.add_argument("--output", help="your own dataset: the semantic PNG folder to write")
    parser.add_argument("--semantic", choices=SEMANTIC_MODES, default="all",
                        help="your own dataset: label layout (default: all)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--overwrite", action="store_true", help="redo existing outputs")
    args = parser.parse_args(argv)
    setup_logger(name="panoptic_curriculum")
    own = [args.panoptic_json, args.panoptic_root, args.output]
    if any(own):
        if not all(own):
            parser.error("--panoptic-json, --panoptic-root and --output go together")
        panoptic_to_semantic(
            args.panoptic_json,
            args.panoptic_root,
            args.output,
            args.semantic,
            args.workers,
            args.overwrite,
        )
    else:
        prepare_coco_panoptic(args.coco_root, args.splits, args.workers, args.overwrite)


if __name__ == "__main__":
    main()
