#!/usr/bin/env python
"""Run a trained model on images and write pictures of its predictions.

For each input image, with ``<stem>`` its file name without extension, it writes into
``--output``:

* ``<stem>_semantic.png``, ``<stem>_instances.png``, ``<stem>_panoptic.png``: the predicted
  segmentations drawn over the image (detectron2's Visualizer);
* ``<stem>_depth.png``: the predicted depth as a colour map with a scale bar in metres;
* ``<stem>_pointcloud.ply``: the predicted depth back-projected with the camera intrinsics,
  one point per pixel, coloured by the predicted semantic class;
* ``<stem>_pointcloud.png``: a headless rendering of that point cloud;

and ``demo_summary.json`` (files, sizes, intrinsics used, skipped images and why). Outputs
whose branch the model lacks are left out; when no pixel of an image lifts to a 3D point
(no valid predicted depth outside ``MODEL.POINT_HEAD.NO_SURFACE_CLASSES``) its 2D pictures
are written, the point-cloud files are not, and the log and the summary say the cloud was
empty.

Intrinsics: ``--intrinsics K.json`` holds the camera matrix of the *original* images, as
``{"K": 3x3}``, ``{"fx", "fy", "cx", "cy"}`` or a Cityscapes camera file (``"intrinsic":
{"fx", "fy", "u0", "v0"}``). Without it, a pinhole camera with a horizontal field of view of
``--fov`` degrees (default 60) and the principal point at the image centre is assumed, and
a warning says so: metric 3D points are then only as good as that guess.

Images that cannot be read are named in the log and skipped; the exit code is 0 unless
every image failed.

Example::

    python tools/demo.py --config-file configs/synthetic/curriculum_R18_FPN.yaml \\
        --input-dir datasets/synthetic_scenes/val/image --output output/demo \\
        MODEL.WEIGHTS output/curriculum/merge/model_merged.pth
"""

import panoptic_curriculum  # noqa: F401  (first: detectron2 compatibility fixes, datasets)

import argparse
import json
import logging
import os
import sys
from typing import Dict, Optional

import numpy as np
import tqdm

from panoptic_curriculum import load_config
from panoptic_curriculum.data.depth_io import read_image
from panoptic_curriculum.engine.predictor import (
    add_camera_arguments,
    RGBDPredictor,
    intrinsics_from_fov,
    load_intrinsics_json,
)
from panoptic_curriculum.utils.visualization import (
    PointCloudRenderer,
    add_picture_arguments,
    list_images,
    prediction_views,
    unique_stem,
    write_views,
)

from detectron2.utils.logger import setup_logger


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Predict semantic, instance and panoptic segmentation, depth and a "
        "point cloud for images, and write pictures of them."
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", nargs="+", metavar="IMAGE", help="image files (or glob patterns)"
    )
    source.add_argument("--input-dir", metavar="DIR", help="every image file in DIR")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    add_camera_arguments(parser)
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of the instances drawn (default %(default)s)",
    )
    add_picture_arguments(parser)
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config options as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth",
    )
    return parser.parse_args(argv)


def setup_cfg(args: argparse.Namespace):
    return load_config(args.config_file, args.opts)


def process_image(
    path: str,
    stem: str,
    predictor: RGBDPredictor,
    K_fixed: Optional[np.ndarray],
    args: argparse.Namespace,
    renderer: PointCloudRenderer,
) -> Dict:
    """Predict one image and write its pictures; returns its summary entry."""
    image_bgr = read_image(path, format="BGR")
    height, width = image_bgr.shape[:2]
    K = K_fixed if K_fixed is not None else intrinsics_from_fov(height, width, args.fov)
    if not (0 <= K[0, 2] <= width - 1 and 0 <= K[1, 2] <= height - 1):
        logging.getLogger("demo").warning(
            "%s is %dx%d (WxH) but the principal point of --intrinsics (%.1f, %.1f) lies "
            "outside it: K must describe the original images",
            path,
            width,
            height,
            K[0, 2],
            K[1, 2],
        )
    outputs = predictor(image_bgr, K)
    skip = predictor.cfg.MODEL.POINT_HEAD.NO_SURFACE_CLASSES
    pictures, cloud, stats = prediction_views(
        np.ascontiguousarray(image_bgr[:, :, ::-1]),
        outputs,
        K,
        predictor.metadata,
        args.confidence_threshold,
        args.max_depth,
        skip,
    )
    if "pointcloud" in stats:  # empty
        logging.getLogger("demo").warning(
            "%s: the predicted point cloud is %s %s; no %s_pointcloud.ply/.png written",
            path,
            stats["pointcloud"],
            list(skip),
            stem,
        )
    entry = {"input": path, "image_size": [height, width], "intrinsics": K.tolist(), **stats}
    entry["files"] = write_views(args.output, stem, pictures, cloud, renderer)
    return entry


def main(argv=None) -> int:
    args = parse_args(argv)
    logger = setup_logger(name="demo", abbrev_name="demo")
    setup_logger(name="panoptic_curriculum")
    setup_logger()  # detectron2
    logger.info("Arguments: %s", args)
    cfg = setup_cfg(args)

    paths = list_images(args.input, args.input_dir)
    if not paths:
        where = args.input_dir if args.input_dir is not None else " ".join(args.input)
        logger.error("No input images found in %s", where)
        return 1

    if args.intrinsics is not None:
        K_fixed = load_intrinsics_json(args.intrinsics)
        intrinsics_source = os.path.abspath(args.intrinsics)
        logger.info(
            "Intrinsics of the original images from %s: %s", args.intrinsics, K_fixed.tolist()
        )
    else:
        K_fixed = None
        intrinsics_source = f"default: horizontal field of view {args.fov:g} degrees"
        logger.warning(
            "No camera intrinsics given (--intrinsics): assuming a pinhole camera with a "
            "horizontal field of view of %g degrees (--fov), square pixels and the principal "
            "point at the image centre. Metric depth and 3D points are only as good as this "
            "guess; pass --intrinsics K.json for the real camera.",
            args.fov,
        )

    predictor = RGBDPredictor(cfg)
    os.makedirs(args.output, exist_ok=True)
    renderer = PointCloudRenderer(*args.render_size)
    processed, skipped, used = [], [], set()
    try:
        for path in tqdm.tqdm(paths, desc="images", unit="img", disable=len(paths) < 2):
            try:
                entry = process_image(
                    path, unique_stem(path, used), predictor, K_fixed, args, renderer
                )
            except (FileNotFoundError, ValueError) as e:  # unreadable / undecodable input
                logger.error("Skipping %s: %s", path, e)
                skipped.append({"input": path, "reason": str(e)})
                continue
            processed.append(entry)
    finally:
        renderer.close()

    summary = {
        "config_file": args.config_file,
        "weights": cfg.MODEL.WEIGHTS,
        "intrinsics": intrinsics_source,
        "num_inputs": len(paths),
        "num_processed": len(processed),
        "num_skipped": len(skipped),
        "images": processed,
        "skipped": skipped,
    }
    with open(os.path.join(args.output, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    logger.info(
        "Done: %d processed, %d skipped%s; results in %s",
        len(processed),
        len(skipped),
        (" (" + ", ".join(os.path.basename(s["input"]) for s in skipped) + ")") if skipped else "",
        os.path.abspath(args.output),
    )
    if not processed:
        logger.error("Every image failed")
        return 1
    return 0


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
