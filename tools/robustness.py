#!/usr/bin/env python
"""Robustness of models to image corruptions (ImageNet-C / Cityscapes-C protocol): mIoU, PQ
and depth δ<1.25 on the clean validation split and on corrupted copies of it (noise, blur,
weather and digital corruptions at severities 1-5, corrupted in memory: the dataset's files
are never written), summarised per corruption (mean over severities), as mPC (mean over
corruptions) and rPC = mPC / clean; several models under one label (seeds) as mean ± std.

    python tools/robustness.py --config-file configs/synthetic/curriculum_R18_FPN.yaml \\
        --weights a/merge/model_merged.pth b/merge/model_merged.pth --labels point no_point \\
        --output output/robustness
    # models built differently (with / without the point branch), one config each:
    python tools/robustness.py --weights a/joint/model_final.pth b/joint/model_final.pth \
        --model-configs configs/synthetic/curriculum_R18_FPN.yaml \
        configs/synthetic/curriculum_R18_FPN_no_point.yaml --labels point no_point
    # with and without the branch over seeds 0-2 (same seed order), and their paired
    # differences (with - without, seed by seed):
    python tools/robustness.py --weights p0.pth p1.pth p2.pth n0.pth n1.pth n2.pth \
        --model-configs A A A B B B --labels point point point no_point no_point no_point \
        --paired-against no_point
    # a subset, or clean-only evaluation of a shifted dataset:
    python tools/robustness.py ... --corruptions noise fog --severities 1 3 5 --max-images 20
    python tools/robustness.py ... --dataset synthetic_scenes_shifted_camera --corruptions none

Writes OUTPUT/robustness.{md,json,png}; per-condition results are cached under
OUTPUT/runs/ so that an interrupted evaluation resumes. A cache belongs to one checkpoint's
contents, its model config and the evaluation config (overrides included): other weights
under the same label, or another test size, are evaluated afresh, never read from it. A
dataset without depth is evaluated on the segmentation metrics only (said in the log and the
table). With --paired-against LABEL the report adds every other label minus LABEL, checkpoint
by checkpoint (mean ± std over the pairs).
"""

import argparse
import hashlib
import logging
import os
import sys
from collections import OrderedDict

import panoptic_curriculum  # noqa: F401  isort:skip  first: detectron2 v0.6 compatibility layer
from detectron2.utils.logger import setup_logger

from panoptic_curriculum import load_config
from panoptic_curriculum.data.corruptions import SEVERITIES, check_corruptions
from panoptic_curriculum.engine import PanopticCurriculumTrainer
from panoptic_curriculum.engine.checkpoint import AtomicCheckpointer
from panoptic_curriculum.evaluation.robustness import (
    check_pairing,
    evaluate_robustness,
    resolve_corruptions,
    write_report,
)

logger = logging.getLogger("panoptic_curriculum.robustness")


def cache_key(weights: str, model_cfg, eval_cfg) -> str:
    """A short digest of what a cached condition's numbers depend on besides the condition:
    the checkpoint's bytes, the model's config and the evaluation config (test size,
    overrides). It names the checkpoint's cache folder, so that re-using an output folder
    with other weights or settings cannot return the earlier numbers."""
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        h.update(hashlib.file_digest(f, "sha256").digest())
    h.update(model_cfg.dump().encode())
    h.update(eval_cfg.dump().encode())
    return h.hexdigest()[:12]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/synthetic/curriculum_R18_FPN.yaml")
    parser.add_argument("--weights", nargs="+", required=True, help="model checkpoints")
    parser.add_argument(
        "--model-configs",
        nargs="+",
        default=None,
        help="one config file per checkpoint, for models built differently (e.g. with and "
        "without the point branch); default: --config-file for every checkpoint. The "
        "dataset and evaluation settings come from --config-file",
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        default=None,
        help="one label per checkpoint; checkpoints sharing a label are summarised as "
        "mean ± std (default: each checkpoint's path)",
    )
    parser.add_argument(
        "--paired-against",
        default=None,
        metavar="LABEL",
        help="also report every other label minus this one, paired by position (the k-th "
        "checkpoint of each label: give them in the same seed order), as mean ± std over the "
        "pairs; every label needs as many checkpoints as this one",
    )
    parser.add_argument("--dataset", default=None, help="default: the config's DATASETS.TEST[0]")
    parser.add_argument(
        "--corruptions",
        nargs="+",
        default=["common"],
        help="corruption names, groups (noise blur weather digital), 'common' (the 15 of the "
        "benchmark, default), 'extra', 'all', or 'none' (clean only)",
    )
    parser.add_argument("--severities", nargs="+", type=int, default=list(SEVERITIES))
    parser.add_argument("--max-images", type=int, default=None, help="first N images only")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the corruptions")
    parser.add_argument("--output", default="output/robustness")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="panoptic_curriculum")
    setup_logger()
    try:
        corruptions = resolve_corruptions(args.corruptions)
        check_corruptions(corruptions, args.severities)
    except ValueError as e:
        logger.error("%s", e)
        return 2
    labels = args.labels or list(args.weights)
    if len(labels) != len(args.weights):
        logger.error("--labels needs one label per checkpoint (%d given)", len(args.weights))
        return 2
    if args.paired_against is not None:
        try:  # before anything is evaluated
            check_pairing(OrderedDict((l, labels.count(l)) for l in labels), args.paired_against)
        except ValueError as e:
            logger.error("%s", e)
            return 2
    missing = [w for w in args.weights if not os.path.isfile(w)]
    if missing:
        logger.error("checkpoint(s) not found: %s", missing)
        return 2
    model_configs = args.model_configs or [args.config_file] * len(args.weights)
    if len(model_configs) != len(args.weights):
        logger.error(
            "--model-configs needs one config per checkpoint (%d given for %d checkpoints)",
            len(model_configs),
            len(args.weights),
        )
        return 2
    missing = [c for c in model_configs if not os.path.isfile(c)]
    if missing:
        logger.error("config file(s) not found: %s", missing)
        return 2
    cfg = load_config(args.config_file, args.opts)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    runs = OrderedDict()
    condition_set = f"{dataset}_first{args.max_images or 'all'}_seed{args.seed}"
    for k, (label, weights, model_config) in enumerate(zip(labels, args.weights, model_configs)):
        same = model_config == args.config_file
        model_cfg = cfg if same else load_config(model_config, args.opts)
        model = PanopticCurriculumTrainer.build_model(model_cfg)
        AtomicCheckpointer(model).load(weights, checkpointables=[])
        model.eval()
        tag = f"{k:02d}-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        tag += "-" + cache_key(weights, model_cfg, cfg)
        logger.info("[robustness] %s (%s) on %s", label, weights, dataset)
        result = evaluate_robustness(
            cfg,
            model,
            dataset,
            corruptions,
            args.severities,
            cache_dir=os.path.join(args.output, "runs", tag, condition_set),
            max_images=args.max_images,
            seed=args.seed,
        )
        result["weights"] = weights
        runs.setdefault(label, []).append(result)
    paths = write_report(runs, args.output, paired_against=args.paired_against)
    print(paths["markdown"])
    logger.info("wrote %s, %s and %s", paths["markdown_file"], paths["json"], paths["plot"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
