#!/usr/bin/env python
"""Write pictures of RGB-D panoptic samples, as the model sees them, to a folder.

For each of the first ``--num-images`` samples of the dataset (default: the first of
``cfg.DATASETS.TRAIN``) it writes, with ``<stem>`` the image file's name without extension:

* ``<stem>_image.png``: the (augmented) RGB image;
* ``<stem>_semantic.png``, ``<stem>_instances.png``: semantic and instance overlays;
* ``<stem>_depth.png``: the metric depth colour map with a scale bar in metres;
* ``<stem>_pointcloud.ply``: the depth back-projected with the sample's (updated)
  intrinsics, one point per valid depth pixel, coloured by semantic class;
* ``<stem>_pointcloud.png``: a headless Open3D rendering of that cloud;

and ``summary.json`` listing, per sample, these files, the image size, the number of valid
depth pixels and of points, the number of instances and the intrinsics used.

``--source dataloader`` applies the training mapper (``RGBDDatasetMapper(cfg, is_train=True)``,
with its random resizing, cropping and flipping, seeded by ``--seed``); ``--source annotation``
shows the samples as stored (the same mapper without augmentation).

Example::

    python tools/visualize_data.py --config-file configs/synthetic/curriculum_R18_FPN.yaml \\
        --source dataloader --output-dir output/data_preview --num-images 4 \\
        INPUT.CROP.ENABLED False
"""

import argparse
import json
import os
from typing import Dict, List

import tqdm

import panoptic_curriculum  # noqa: F401  (before detectron2: compatibility fixes, datasets)
from panoptic_curriculum import load_config
from panoptic_curriculum.data.preview import PREVIEW_SOURCES, preview_mapper, sample_views
from panoptic_curriculum.utils.visualization import (
    PointCloudRenderer,
    add_picture_arguments,
    unique_stem,
    write_views,
)

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

DEFAULT_CONFIG = "configs/synthetic/curriculum_R18_FPN.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Visualise RGB-D panoptic samples: overlays, depth, point clouds."
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument(
        "--source",
        choices=PREVIEW_SOURCES,
        default="dataloader",
        help="dataloader: augmented training samples; annotation: samples as stored",
    )
    parser.add_argument("--output-dir", default="output/data_preview")
    parser.add_argument("--num-images", type=int, default=4, help="number of samples")
    parser.add_argument(
        "--dataset", default=None, help="registered dataset name (default: DATASETS.TRAIN[0])"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentations")
    add_picture_arguments(parser)
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config options as KEY VALUE pairs, e.g. INPUT.CROP.ENABLED False",
    )
    return parser.parse_args(argv)


def setup_cfg(args: argparse.Namespace):
    return load_config(args.config_file, args.opts)


def main(argv=None) -> None:
    args = parse_args(argv)
    logger = setup_logger(name="visualize_data")
    setup_logger(name="panoptic_curriculum")
    setup_logger()  # detectron2
    logger.info("Arguments: %s", args)
    cfg = setup_cfg(args)
    dataset = args.dataset or cfg.DATASETS.TRAIN[0]
    metadata = MetadataCatalog.get(dataset)
    dicts: List[Dict] = DatasetCatalog.get(dataset)
    num = min(args.num_images, len(dicts))
    logger.info(
        "Visualising %d of %d samples of %s (source: %s)", num, len(dicts), dataset, args.source
    )

    mapper = preview_mapper(cfg, args.source)
    seed_all_rng(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    renderer = PointCloudRenderer(*args.render_size)

    samples, used = [], set()
    for d in tqdm.tqdm(dicts[:num], desc="samples", unit="img"):
        stem = unique_stem(d["file_name"], used)
        pictures, cloud, entry = sample_views(mapper(d), metadata, cfg.INPUT.FORMAT, args.max_depth)
        entry["files"] = write_views(args.output_dir, stem, pictures, cloud, renderer)
        samples.append(entry)
    renderer.close()

    summary = {
        "config_file": args.config_file,
        "dataset": dataset,
        "source": args.source,
        "seed": args.seed,
        "num_images": len(samples),
        "samples": samples,
    }
    with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    logger.info("Wrote %d samples to %s", len(samples), os.path.abspath(args.output_dir))


if __name__ == "__main__":
    main()
