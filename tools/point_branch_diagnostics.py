#!/usr/bin/env python
"""Why the 3D branch does (not) help: what the point network sees and what its losses teach.

For one or more trained models (several seeds: one table each, then the mean), on labelled
images of a dataset (default: the config's DATASETS.TEST[0]) seen as the training forward
sees them but without random augmentation: per class, the 2D and 3D heads' accuracy at the
sampled points, the share the 3D head gets right and the 2D head wrong, the 3D head's accuracy
when the same pixels are lifted with the true depth, the depth error there; per loss, its
gradient norm on each part of the network and the cosine between L_consist's and the 2D
cross-entropy's gradients. No weights are changed.

    python tools/point_branch_diagnostics.py --config-file configs/synthetic/curriculum_R18_FPN.yaml \\
        --weights output/curriculum/joint/model_final.pth --output output/point_branch
Writes OUTPUT/point_branch_diagnostics.{md,json}.
"""

import argparse
import itertools
import json
import logging
import os
import sys

import torch

import panoptic_curriculum  # noqa: F401  isort:skip  first: detectron2 v0.6 compatibility layer
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.utils.logger import setup_logger

from panoptic_curriculum import load_config
from panoptic_curriculum.data.dataset_mapper import RGBDDatasetMapper
from panoptic_curriculum.engine import PanopticCurriculumTrainer
from panoptic_curriculum.engine.checkpoint import AtomicCheckpointer, atomic_write_text
from panoptic_curriculum.evaluation.point_branch import (
    average_diagnostics,
    diagnostics_markdown,
    point_branch_diagnostics,
)

logger = logging.getLogger("panoptic_curriculum.point_branch")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/synthetic/curriculum_R18_FPN.yaml")
    parser.add_argument("--weights", nargs="+", required=True, help="model checkpoints")
    parser.add_argument("--dataset", default=None, help="default: the config's DATASETS.TEST[0]")
    parser.add_argument("--num-batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=None, help="default: SOLVER.IMS_PER_BATCH")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the pixel sampling (the same for each model)"
    )
    parser.add_argument("--output", default="output/point_branch")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def diagnostic_config(cfg):
    """``cfg`` with the training mapper reduced to the test-time resize (no crop, flip,
    photometric or camera augmentation), so that the images are seen as at evaluation."""
    c = cfg.clone()
    c.defrost()
    c.INPUT.MIN_SIZE_TRAIN = (cfg.INPUT.MIN_SIZE_TEST,)
    c.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    c.INPUT.MAX_SIZE_TRAIN = cfg.INPUT.MAX_SIZE_TEST
    c.INPUT.RANDOM_FLIP = "none"
    c.INPUT.CROP.ENABLED = False
    c.INPUT.PHOTOMETRIC.ENABLED = False
    c.INPUT.CAMERA_AUG.ENABLED = False
    c.freeze()
    return c


def batches(cfg, dataset: str, batch_size: int, num_batches: int):
    """The first ``num_batches * batch_size`` images of ``dataset`` in order, mapped for
    training (labels, depth, intrinsics), in lists of ``batch_size``."""
    dicts = DatasetCatalog.get(dataset)[: num_batches * batch_size]
    loader = iter(build_detection_test_loader(dicts, mapper=RGBDDatasetMapper(cfg, True)))
    while True:
        chunk = [x for (x,) in itertools.islice(loader, batch_size)]
        if not chunk:
            return
        yield chunk


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="panoptic_curriculum")
    setup_logger()
    missing = [w for w in args.weights if not os.path.isfile(w)]
    if missing:
        logger.error("checkpoint(s) not found: %s", missing)
        return 2
    if args.num_batches < 1:
        logger.error("--num-batches must be >= 1, got %d", args.num_batches)
        return 2
    cfg = diagnostic_config(load_config(args.config_file, args.opts))
    if not cfg.MODEL.POINT_HEAD.ENABLED:
        logger.error("%s has no point branch (MODEL.POINT_HEAD.ENABLED False)", args.config_file)
        return 2
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    class_names = MetadataCatalog.get(dataset).get("stuff_classes") or [
        str(c) for c in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    ]
    batch_size = args.batch_size or cfg.SOLVER.IMS_PER_BATCH
    results, sections = [], []
    for weights in args.weights:
        model = PanopticCurriculumTrainer.build_model(cfg)
        AtomicCheckpointer(model).load(weights, checkpointables=[])
        logger.info("[point branch] %s on %s", weights, dataset)
        torch.manual_seed(args.seed)  # every model samples the same pixels
        result = point_branch_diagnostics(
            model, batches(cfg, dataset, batch_size, args.num_batches), class_names
        )
        result["weights"] = weights
        results.append(result)
        sections.append(diagnostics_markdown(result, title=weights))
    mean = None
    if len(results) > 1:
        mean = average_diagnostics(results)
        sections.insert(0, diagnostics_markdown(mean, title=f"mean of {len(results)} models"))
    os.makedirs(args.output, exist_ok=True)
    text = f"# Point-branch diagnostics on {dataset}\n\n" + "\n".join(sections)
    atomic_write_text(os.path.join(args.output, "point_branch_diagnostics.md"), text)
    atomic_write_text(
        os.path.join(args.output, "point_branch_diagnostics.json"),
        json.dumps({"dataset": dataset, "mean": mean, "runs": results}, indent=2),
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
