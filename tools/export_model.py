#!/usr/bin/env python
"""Export a trained model's one-pass network to TorchScript or ONNX (by tracing).

Writes into ``--output``: ``model.ts`` (``--format torchscript``) or ``model.onnx``
(``--format onnx``, needs the export extra: ``PANOPTIC_EXTRAS=export bash
scripts/setup_env.sh``), and ``export_info.json`` (input/output names, input format,
test-time resize, post-processing settings). With ``--verify`` it also runs the exported
network on the sample, compares every output with eager PyTorch, writes ``verify.json`` and
exits with 1 when a difference exceeds ``panoptic_curriculum.export.TOLERANCES``.

The network is traced on one sample image: ``--sample-image`` (with ``--intrinsics K.json``,
or a ``--fov`` guess), else a rendered synthetic scene of ``INPUT.MIN_SIZE_TEST`` rows; the
exported network accepts any image size. Export runs on the CPU. What is exported and how its
outputs are post-processed: README, "Deployment".

Example::

    python tools/export_model.py --config-file configs/synthetic/curriculum_R18_FPN.yaml \\
        --format onnx --output output/export --verify \\
        MODEL.WEIGHTS output/curriculum/merge/model_merged.pth
"""

import panoptic_curriculum  # noqa: F401  (first: detectron2 compatibility fixes, datasets)

import argparse
import json
import os
import sys

from panoptic_curriculum import load_config
from panoptic_curriculum.data.depth_io import read_image
from panoptic_curriculum.engine.predictor import (
    add_camera_arguments,
    RGBDPredictor,
    intrinsics_from_fov,
    load_intrinsics_json,
)
from panoptic_curriculum.export import (
    EXPORT_FORMATS,
    EXPORT_METHODS,
    ONNX_OPSET,
    TOLERANCES,
    ExportedModel,
    compare_with_eager,
    export_model,
    synthetic_sample,
)

from detectron2.utils.logger import setup_logger


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Export the one-pass network (semantic logits, depth, Mask R-CNN "
        "detections) to TorchScript or ONNX."
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    parser.add_argument("--export-method", choices=EXPORT_METHODS, default="tracing")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--sample-image",
        metavar="IMAGE",
        default=None,
        help="image to trace on (default: a rendered synthetic scene)",
    )
    add_camera_arguments(parser, "--sample-image")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset (>= 16)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="compare the exported network with eager PyTorch on the sample",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config options as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logger = setup_logger(name="export", abbrev_name="export")
    setup_logger(name="panoptic_curriculum")
    setup_logger()  # detectron2
    if args.intrinsics is not None and args.sample_image is None:
        logger.error("--intrinsics describes --sample-image; give both or neither")
        return 2
    cfg = load_config(args.config_file, list(args.opts or []) + ["MODEL.DEVICE", "cpu"])
    predictor = RGBDPredictor(cfg)  # builds the model and loads MODEL.WEIGHTS

    if args.sample_image is not None:
        image = read_image(args.sample_image, format="BGR")
        if args.intrinsics is not None:
            K = load_intrinsics_json(args.intrinsics)
        else:
            K = intrinsics_from_fov(image.shape[0], image.shape[1], args.fov)
            logger.warning(
                "no --intrinsics: tracing with K from a %g-degree field of view", args.fov
            )
        source = args.sample_image
    else:
        h = int(cfg.INPUT.MIN_SIZE_TEST)
        image, K = synthetic_sample(h, round(h * 4 / 3))
        source = f"synthetic scene {image.shape[0]}x{image.shape[1]}"
    inputs = predictor.inputs(image, K)
    logger.info("tracing on %s (network input %s)", source, tuple(inputs["image"].shape))
    path = export_model(
        predictor.model,
        cfg,
        inputs["image"],
        inputs.get("intrinsics"),
        args.output,
        args.format,
        method=args.export_method,
        opset=args.opset,
    )
    logger.info("wrote %s and %s", path, os.path.join(args.output, "export_info.json"))
    if not args.verify:
        return 0

    diffs, _ = compare_with_eager(
        predictor.model, ExportedModel(path), inputs["image"], inputs.get("intrinsics")
    )
    failed = {k: v for k, v in diffs.items() if v > TOLERANCES.get(k, 0.0)}
    report = {
        "sample": source,
        "max_abs_diff": diffs,
        "tolerances": {k: TOLERANCES.get(k, 0.0) for k in diffs},
        "passed": not failed,
    }
    with open(os.path.join(args.output, "verify.json"), "w") as f:
        json.dump(report, f, indent=2)
    for name, diff in diffs.items():
        flag = "FAIL" if name in failed else "ok"
        logger.info(
            "%-24s max |exported - eager| = %.3g (tolerance %g) %s",
            name,
            diff,
            report["tolerances"][name],
            flag,
        )
    if failed:
        logger.error("the exported network differs from eager PyTorch: %s", failed)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
