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

import cv2
import numpy as np
import tqdm

import panoptic_curriculum  # noqa: F401  (before detectron2: compatibility fixes, datasets)
from panoptic_curriculum import load_config
from panoptic_curriculum.data.dataset_mapper import RGBDDatasetMapper
from panoptic_curriculum.utils.visualization import add_picture_arguments
from panoptic_curriculum.utils import (
    PointCloudRenderer,
    class_colored_points,
    colorize_depth,
    draw_instances,
    draw_semantic,
    save_point_cloud_ply,
)

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import convert_image_to_rgb
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
        choices=["dataloader", "annotation"],
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


def _write_png(path: str, image_rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, np.ascontiguousarray(image_rgb[:, :, ::-1])):
        raise OSError(f"could not write {path}")


def _unique_stem(file_name: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(file_name))[0]
    candidate, k = stem, 1
    while candidate in used:
        candidate, k = f"{stem}_{k}", k + 1
    used.add(candidate)
    return candidate


def visualize_sample(
    sample: Dict, stem: str, args, metadata, image_format: str, renderer: PointCloudRenderer
) -> Dict:
    """Write the pictures of one mapped sample; returns its summary entry."""
    out = args.output_dir
    image = convert_image_to_rgb(sample["image"].permute(1, 2, 0), image_format)
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    files = {"image": f"{stem}_image.png"}
    _write_png(os.path.join(out, files["image"]), image)

    sem_seg = sample.get("sem_seg")
    if sem_seg is not None:
        files["semantic"] = f"{stem}_semantic.png"
        _write_png(os.path.join(out, files["semantic"]), draw_semantic(image, sem_seg, metadata))
    instances = sample.get("instances")
    num_instances = len(instances) if instances is not None else 0
    files["instances"] = f"{stem}_instances.png"
    drawn = draw_instances(image, instances if instances is not None else [], metadata)
    _write_png(os.path.join(out, files["instances"]), drawn)

    entry = {
        "file_name": sample["file_name"],
        "image_size": [height, width],
        "num_instances": num_instances,
    }
    if "depth" in sample:
        depth, K = sample["depth"], sample["intrinsics"]
        files["depth"] = f"{stem}_depth.png"
        _write_png(os.path.join(out, files["depth"]), colorize_depth(depth, args.max_depth))
        points, colors = class_colored_points(depth, K, sem_seg, metadata.stuff_colors)
        files["pointcloud_ply"] = f"{stem}_pointcloud.ply"
        save_point_cloud_ply(os.path.join(out, files["pointcloud_ply"]), points, colors)
        files["pointcloud_render"] = f"{stem}_pointcloud.png"
        _write_png(os.path.join(out, files["pointcloud_render"]), renderer.render(points, colors))
        valid = depth > 0
        entry.update(
            num_valid_depth_pixels=int(valid.sum()),
            num_points=int(points.shape[0]),
            depth_range_m=[float(depth[valid].min()), float(depth.max())] if valid.any() else None,
            intrinsics=[[float(x) for x in row] for row in K.tolist()],
        )
    else:
        entry.update(num_valid_depth_pixels=0, num_points=0, depth_range_m=None, intrinsics=None)
    entry["files"] = files
    return entry


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

    if args.source == "dataloader":
        mapper = RGBDDatasetMapper(cfg, is_train=True)
    else:
        mapper = RGBDDatasetMapper(cfg, is_train=True, augmentations=[])
    seed_all_rng(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    renderer = PointCloudRenderer(*args.render_size)

    samples, used = [], set()
    for d in tqdm.tqdm(dicts[:num], desc="samples", unit="img"):
        stem = _unique_stem(d["file_name"], used)
        samples.append(
            visualize_sample(mapper(d), stem, args, metadata, cfg.INPUT.FORMAT, renderer)
        )
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
