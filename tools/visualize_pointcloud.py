#!/usr/bin/env python
"""Look at point clouds: PLY files, or the point branch's view of a dataset sample.

Two sources:

* ``--ply FILE [FILE ...]``: one panel per file (its own colours, grey without);
* ``--config-file X --dataset NAME --index I [KEY VALUE ...]`` (e.g. ``MODEL.WEIGHTS W``):
  the model runs on sample ``I`` with its point branch on at inference
  (``MODEL.POINT_HEAD.INFERENCE_ON True``); the points it lifts with its *predicted* depth are
  shown in four panels, coloured by the ground-truth class of their pixel, by the 2D
  (semantic head) prediction, by the 3D (point head) prediction, and with the points whose
  2D and 3D labels disagree in bright magenta, the others grey.

With a display (``DISPLAY`` set and Open3D able to open a window) the clouds are shown in an
interactive window, side by side; otherwise, or with ``--headless``, the panels are rendered
off-screen into one PNG (``--output``, default ``pointcloud_panels.png``), each under its
title. ``--output`` also writes the PNG when a window was shown.

Examples::

    python tools/visualize_pointcloud.py --ply output/demo/*_pointcloud.ply --headless \\
        --output clouds.png
    python tools/visualize_pointcloud.py --config-file configs/synthetic/curriculum_R18_FPN.yaml \\
        --dataset synthetic_scenes_val --index 3 --output sample3.png \\
        MODEL.WEIGHTS output/curriculum/merge/model_merged.pth
"""

import panoptic_curriculum  # noqa: F401  (first: detectron2 compatibility fixes, datasets)

import argparse
import logging
import os
import sys
from typing import List, Tuple

import torch

from panoptic_curriculum import load_config
from panoptic_curriculum.data.depth_io import read_image, read_intrinsics
from panoptic_curriculum.engine.predictor import RGBDPredictor
from panoptic_curriculum.utils.visualization import (
    PointCloudRenderer,
    point_branch_views,
    read_point_cloud_plys,
    render_point_cloud_panels,
    show_point_clouds,
    write_png_rgb,
)
from panoptic_curriculum.utils.visualization.render3d import Cloud

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger

DEFAULT_OUTPUT = "pointcloud_panels.png"

logger = logging.getLogger("visualize_pointcloud")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Show point clouds (PLY files, or a dataset sample through the model's "
        "point branch) in a window, or render them headlessly to a PNG."
    )
    parser.add_argument("--ply", nargs="+", metavar="FILE", help="PLY files, one panel each")
    parser.add_argument("--config-file", metavar="FILE", help="model config (dataset mode)")
    parser.add_argument("--dataset", help="registered dataset name (dataset mode)")
    parser.add_argument("--index", type=int, default=0, help="sample index (dataset mode)")
    parser.add_argument(
        "--headless", action="store_true", help="never open a window: render to --output"
    )
    parser.add_argument(
        "--output",
        metavar="PNG",
        default=None,
        help=f"PNG of the rendered panels (default without a display: {DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--render-size",
        type=int,
        nargs=2,
        default=(480, 360),
        metavar=("WIDTH", "HEIGHT"),
        help="size of each rendered panel in pixels (without its title)",
    )
    parser.add_argument("--point-size", type=float, default=3.0, help="point size in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the point sampling")
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config options as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth",
    )
    args = parser.parse_args(argv)
    if (args.ply is None) == (args.config_file is None):
        parser.error("give either --ply FILE [FILE ...] or --config-file with --dataset")
    if args.config_file is not None and args.dataset is None:
        parser.error("--config-file needs --dataset NAME (and --index I)")
    if args.ply is not None and (args.dataset is not None or args.opts):
        parser.error("--ply takes no --dataset nor config options")
    return args


def setup_cfg(args: argparse.Namespace):
    cfg = load_config(args.config_file, args.opts, freeze=False)
    if not cfg.MODEL.POINT_HEAD.ENABLED:
        raise ValueError(
            f"{args.config_file} has no point branch (MODEL.POINT_HEAD.ENABLED False): "
            "there are no 3D predictions to show"
        )
    cfg.MODEL.POINT_HEAD.INFERENCE_ON = True
    cfg.freeze()
    return cfg


def dataset_clouds(args: argparse.Namespace) -> Tuple[List[Cloud], List[str]]:
    """The point branch's points of one dataset sample, in four colourings."""
    cfg = setup_cfg(args)
    dicts = DatasetCatalog.get(args.dataset)
    if not -len(dicts) <= args.index < len(dicts):
        raise IndexError(f"--index {args.index} is out of range: {args.dataset} has {len(dicts)}")
    d = dicts[args.index]
    metadata = MetadataCatalog.get(args.dataset)
    ignore = metadata.get("ignore_label", cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
    logger.info("Sample %d of %s: %s", args.index, args.dataset, d["file_name"])

    predictor = RGBDPredictor(cfg)
    torch.manual_seed(args.seed)
    outputs = predictor(read_image(d["file_name"], format="BGR"), read_intrinsics(d))
    gt = None
    if "sem_seg_file_name" in d:
        gt = read_image(d["sem_seg_file_name"], "L")[:, :, 0]
    else:
        logger.warning("%s has no semantic labels: the ground-truth panel is grey", d["file_name"])
    clouds, titles, summary = point_branch_views(
        outputs["point_cloud"], metadata.stuff_colors, ignore, gt
    )
    logger.info(summary)
    return clouds, titles


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="visualize_pointcloud", abbrev_name="vis_pc")
    setup_logger(name="panoptic_curriculum")
    setup_logger()  # detectron2
    logger.info("Arguments: %s", args)

    clouds, titles = read_point_cloud_plys(args.ply) if args.ply else dataset_clouds(args)

    shown = False
    if not args.headless:
        shown = show_point_clouds(clouds, titles, point_size=args.point_size)
        if not shown:
            logger.info("No display (or no window could be opened): rendering headlessly")
    if shown and args.output is None:
        return 0

    width, height = args.render_size
    renderer = PointCloudRenderer(width, height, point_size=args.point_size)
    try:
        panels = render_point_cloud_panels(clouds, titles, renderer)
    finally:
        renderer.close()
    output = args.output or DEFAULT_OUTPUT
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    write_png_rgb(output, panels)
    logger.info(
        "Wrote %d panel(s) (%dx%d) to %s", len(clouds), panels.shape[1], panels.shape[0], output
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
