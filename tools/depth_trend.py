#!/usr/bin/env python
"""Does a depth model resolve how far one class's surface is, image by image?

For each image of a dataset with depth and semantic label maps (default: the config's
DATASETS.TEST[0]), the model's depth over the pixels of ``--class`` (with valid ground truth)
gives two numbers: the surface's true depth (median over its pixels, metres) and the model's
error there (median of log(pred / gt)). Their trend over the images, binned by true depth,
and the slope of log predicted against log true depth (1: resolved; 0: the same guess for
every image) show whether an error is a bias or an unresolved quantity regressed to its mean.
The class's pixels are also pooled over all images and binned by their own true depth
(AbsRel, δ<1.25, mean log ratio per bin): is the error the class's, or its distance's?

    python tools/depth_trend.py --config-file configs/synthetic/curriculum_R18_FPN.yaml \\
        --class wall --bins 15 19 23 27 31 --output output/depth_trend \\
        MODEL.WEIGHTS output/curriculum/joint/model_final.pth
Writes OUTPUT/depth_trend.{md,json}.
"""

import argparse
import json
import logging
import os
import sys

import numpy as np
import torch

import panoptic_curriculum  # noqa: F401  isort:skip  first: detectron2 v0.6 compatibility layer
from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger

from panoptic_curriculum import load_config
from panoptic_curriculum.data.depth_io import read_depth, read_image
from panoptic_curriculum.engine import PanopticCurriculumTrainer
from panoptic_curriculum.engine.checkpoint import AtomicCheckpointer, atomic_write_text
from panoptic_curriculum.evaluation.depth_diagnostics import (
    aggregate_diagnostics,
    distance_bin_names,
    distance_trend,
    image_diagnostics,
)

logger = logging.getLogger("panoptic_curriculum.depth_trend")
# the pooled pixel table's columns (aggregate_diagnostics' per-bin keys)
_PIXEL_KEYS = ("AbsRel", "d1", "log_ratio")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", help="default: the config's DATASETS.TEST[0]")
    parser.add_argument("--class", dest="class_name", required=True, help="a stuff_classes name")
    parser.add_argument(
        "--bins", type=float, nargs="+", default=[0, 5, 10, 20, 40], help="metres, increasing"
    )
    parser.add_argument(
        "--min-pixels", type=int, default=50, help="images with fewer pixels of the class skip"
    )
    parser.add_argument("--output", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="panoptic_curriculum")
    cfg = load_config(args.config_file, args.opts)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    classes = list(MetadataCatalog.get(dataset).get("stuff_classes") or [])
    if args.class_name not in classes:
        raise SystemExit(f"--class {args.class_name!r} is not a class of {dataset}: {classes}")
    class_id = classes.index(args.class_name)
    if not cfg.MODEL.WEIGHTS:
        raise SystemExit("give the model's weights: MODEL.WEIGHTS path/to/model.pth")
    model = PanopticCurriculumTrainer.build_model(cfg).eval()
    AtomicCheckpointer(model).load(cfg.MODEL.WEIGHTS, checkpointables=[])
    loader = PanopticCurriculumTrainer.build_test_loader(cfg, dataset)
    depths, ratios, skipped = [], [], 0
    records = []  # per image, image_diagnostics of the class's pixels (pooled below)
    with torch.no_grad():
        for inputs in loader:
            outputs = model(inputs)
            for d, out in zip(inputs, outputs):
                if "depth_file_name" not in d or "sem_seg_file_name" not in d:
                    raise SystemExit(
                        f"{d.get('file_name')} of {dataset} has no depth or label map: this "
                        "tool needs both"
                    )
                gt = read_depth(d, cfg.INPUT.DEPTH.MIN_DEPTH, cfg.INPUT.DEPTH.MAX_DEPTH)
                labels = read_image(d["sem_seg_file_name"], "L").squeeze(2)
                if labels.shape != gt.shape:
                    raise SystemExit(
                        f"{d['sem_seg_file_name']} is {labels.shape}, its depth "
                        f"{d['depth_file_name']} {gt.shape}: they must match"
                    )
                mask = (labels == class_id) & (gt > 0)
                pred = out["depth"].cpu().numpy().astype(np.float64)[mask]
                g = gt[mask].astype(np.float64)
                pred = np.clip(pred, cfg.INPUT.DEPTH.MIN_DEPTH, cfg.INPUT.DEPTH.MAX_DEPTH)
                if mask.any():
                    records.append(
                        image_diagnostics(
                            torch.from_numpy(pred),
                            torch.from_numpy(g),
                            distance_bins=args.bins,
                            near_far_threshold=args.bins[-1],
                        )
                    )
                if mask.sum() < args.min_pixels:
                    skipped += 1
                    continue
                depths.append(float(np.median(g)))
                ratios.append(float(np.median(np.log(pred) - np.log(g))))
    trend = distance_trend(depths, ratios, args.bins)
    # the evaluator's pooling of per-bin sums, over the class's pixels of every image
    pooled = aggregate_diagnostics(records, distance_bins=args.bins)
    pixel_bins = [
        {
            "bin": name,
            "pixels": int(sum(r["bins"]["count"][k] for r in records)),
            **{key: pooled.get(f"{key}_{name}", float("nan")) for key in _PIXEL_KEYS},
        }
        for k, name in enumerate(distance_bin_names(args.bins))
    ]
    result = {
        "dataset": dataset,
        "class": args.class_name,
        "weights": cfg.MODEL.WEIGHTS,
        "images_skipped": skipped,
        **trend,
        "pixel_bins": pixel_bins,
        "per_image": [{"depth": g, "log_ratio": r} for g, r in zip(depths, ratios)],
    }
    lines = [
        f"{args.class_name} on {dataset}: {trend['num_images']} images ({skipped} with fewer "
        f"than {args.min_pixels} pixels of it skipped); slope of log predicted against log "
        f"true depth {trend['slope']:.2f} (1: resolved, 0: one guess for every image)",
        "",
        "| true depth | images | mean of median log(pred/gt) |",
        "|---|---|---|",
    ] + [f"| {b['bin']} | {b['images']} | {b['log_ratio']:+.3f} |" for b in trend["bins"]]
    lines += [
        "",
        f"{args.class_name}'s pixels of all images, by their own true depth:",
        "",
        "| true depth | pixels | AbsRel | δ<1.25 | mean log(pred/gt) |",
        "|---|---|---|---|---|",
    ] + [
        f"| {b['bin']} | {b['pixels']} | {b['AbsRel']:.3f} | {b['d1']:.3f} "
        f"| {b['log_ratio']:+.3f} |"
        if b["pixels"]
        else f"| {b['bin']} | 0 | - | - | - |"
        for b in pixel_bins
    ]
    os.makedirs(args.output, exist_ok=True)
    atomic_write_text(os.path.join(args.output, "depth_trend.json"), json.dumps(result, indent=2))
    atomic_write_text(os.path.join(args.output, "depth_trend.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
