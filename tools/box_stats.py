#!/usr/bin/env python
"""Box sizes and aspect ratios of a registered dataset, and the anchors they suggest.

    python tools/box_stats.py --dataset synthetic_scenes_train --image-scale 1.0
"""

import argparse
import json

import panoptic_curriculum  # noqa: F401  isort:skip  first: detectron2 v0.6 compatibility layer
from panoptic_curriculum.data.box_stats import (
    box_statistics,
    format_box_statistics,
    suggest_anchors,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a name in DatasetCatalog")
    parser.add_argument(
        "--image-scale",
        type=float,
        default=1.0,
        help="resize factor from the dataset's images to the training resolution",
    )
    parser.add_argument("--num-levels", type=int, default=5, help="FPN levels with anchors")
    parser.add_argument("--json", help="also write the statistics to this file")
    args = parser.parse_args()
    stats = box_statistics(args.dataset, args.image_scale)
    print(format_box_statistics(stats))
    anchors = suggest_anchors(stats, args.num_levels)
    print("\nsuggested MODEL.ANCHOR_GENERATOR:")
    print(f"  SIZES: {anchors['SIZES']}")
    print(f"  ASPECT_RATIOS: {anchors['ASPECT_RATIOS']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"statistics": stats, "anchors": anchors}, f, indent=2)


if __name__ == "__main__":
    main()
