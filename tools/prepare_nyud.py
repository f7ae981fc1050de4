#!/usr/bin/env python
"""Make the detectron2-convention semantic labels of NYUD-v2 (multi-task "NYUD_MT" layout).

Reads NYUD_MT/segmentation/*.png (0 = void, 1..40 = classes) and writes
NYUD_MT/segmentation_detectron2/*.png (classes 0..39, void 255), which the nyud_v2_train /
nyud_v2_val datasets read; checks that every image of gt_sets/{train,val}.txt has its image,
label and depth file.

    python tools/prepare_nyud.py                       # $DETECTRON2_DATASETS/NYUD_MT
    python tools/prepare_nyud.py --root /data/NYUD_MT
"""

import argparse
import os

import panoptic_curriculum  # noqa: F401  isort:skip  first: detectron2 v0.6 compatibility layer
from detectron2.utils.logger import setup_logger

from panoptic_curriculum.data.datasets.nyud import load_nyud, prepare_nyud_labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    datasets = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    default = os.path.join(datasets, "NYUD_MT")
    parser.add_argument("--root", default=default, help=f"NYUD_MT folder (default: {default})")
    parser.add_argument("--overwrite", action="store_true", help="redo existing labels")
    args = parser.parse_args(argv)
    logger = setup_logger(name="panoptic_curriculum")
    prepare_nyud_labels(args.root, overwrite=args.overwrite)
    for split in ("train", "val"):
        logger.info("NYUD-v2 %s: %d images ready", split, len(load_nyud(args.root, split)))


if __name__ == "__main__":
    main()
