#!/usr/bin/env python
"""Generate synthetic validation scenes under distribution shift: another seed and other
camera (field of view / focal length, camera height, pitch) and lighting (exposure, white
balance, ambient light) ranges than training.

The split is written to ``$DETECTRON2_DATASETS/synthetic_scenes/<split>`` and registered as
``synthetic_scenes_<split>`` in every later process (``import panoptic_curriculum`` finds
it), so the other tools take it by name:

    python tools/make_shifted_scenes.py --split wide_lens --preset camera --seed 21
    python tools/make_shifted_scenes.py --split dusk --hfov 55 80 --exposure 0.4 0.7
    python tools/robustness.py --weights M.pth --dataset synthetic_scenes_wide_lens \\
        --corruptions none
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS M.pth \\
        DATASETS.TEST "('synthetic_scenes_dusk',)"

Two such splits are built in (generated on first use): ``synthetic_scenes_shifted_camera``
and ``synthetic_scenes_shifted_lighting`` (the presets ``camera`` and ``lighting``).
"""

import argparse
import logging
import os
import sys

import panoptic_curriculum  # noqa: F401  isort:skip  first: detectron2 v0.6 compatibility layer
from detectron2.data import DatasetCatalog

from panoptic_curriculum.data.datasets.synthetic_scenes import (
    SHIFTED_CAMERA_RANGES,
    SHIFTED_LIGHTING_RANGES,
    make_synthetic_split,
)
from panoptic_curriculum.data.synthetic.generator import SceneRanges

logger = logging.getLogger("make_shifted_scenes")

PRESETS = {
    "none": {},
    "camera": SHIFTED_CAMERA_RANGES,
    "lighting": SHIFTED_LIGHTING_RANGES,
    "both": {**SHIFTED_CAMERA_RANGES, **SHIFTED_LIGHTING_RANGES},
}
# command-line flag -> SceneRanges field
RANGE_FLAGS = {
    "hfov": "hfov_deg",
    "camera_height": "camera_height_m",
    "pitch": "pitch_deg",
    "exposure": "exposure",
    "white_balance": "white_balance",
    "ambient": "ambient",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--split", required=True, help="folder name; the dataset is synthetic_scenes_<split>"
    )
    parser.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"))
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=21, help="training uses 0, validation 1")
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="none")
    defaults = SceneRanges()
    for flag, field in RANGE_FLAGS.items():
        parser.add_argument(
            "--" + flag.replace("_", "-"),
            nargs=2,
            type=float,
            metavar=("LOW", "HIGH"),
            default=None,
            help=f"range of {field} (training: {list(getattr(defaults, field))})",
        )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    ranges = dict(PRESETS[args.preset])
    ranges.update({f: getattr(args, k) for k, f in RANGE_FLAGS.items() if getattr(args, k)})
    try:
        name = make_synthetic_split(
            os.path.expanduser(args.root),
            args.split,
            num_images=args.num_images,
            seed=args.seed,
            height=args.height,
            width=args.width,
            ranges=ranges,
        )
    except ValueError as e:
        logger.error("%s", e)
        return 2
    logger.info(
        "%s: %d images with ranges %s (others as training)",
        name,
        len(DatasetCatalog.get(name)),
        SceneRanges.from_dict(ranges).changed(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
