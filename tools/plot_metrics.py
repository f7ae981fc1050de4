#!/usr/bin/env python
"""Plot training curves from detectron2's ``metrics.json``: one PNG per loss (``total_loss``
and every ``loss_*``) and per evaluation metric (keys with a ``/``: ``sem_seg/mIoU``,
``segm/AP``, ``panoptic_seg/PQ``, ``depth/AbsRel``, ``depth/d1``, ...) against iteration;
learned loss weights (``task_weight/<task>``) also together in ``task_weights.png``; the
depth error diagnostics (``depth_diagnostics/*``) only when asked for with ``--keys``.

Each OUTPUT_DIR is a plain training folder (``OUTPUT_DIR/metrics.json``) or a curriculum root
(``OUTPUT_DIR/{semantic,instance,merge,joint}/metrics.json``), whose stages are laid end to
end on one iteration axis with their boundaries drawn as labelled vertical lines; ``merge``,
which does not train, shows its evaluation at its boundary. Several OUTPUT_DIRs are overlaid
in each figure, with a legend. A file is named after its key, ``/`` turned into ``-``
(``sem_seg-mIoU.png``).

Example::

    python tools/plot_metrics.py output/curriculum output/baseline --output-dir output/plots
    python tools/plot_metrics.py output/curriculum --keys "loss_*" "total_loss" "*/PQ"
"""

import panoptic_curriculum  # noqa: F401  (first: detectron2 compatibility fixes)

import argparse
import logging
import os
import sys

from panoptic_curriculum.utils.metrics_plot import plot_runs

logger = logging.getLogger("plot_metrics")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Plot losses and evaluation metrics of detectron2 / curriculum runs."
    )
    parser.add_argument(
        "output_dirs", nargs="+", metavar="OUTPUT_DIR", help="run folders (plain or curriculum)"
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help="where to write the PNGs (default: <first OUTPUT_DIR>/plots)",
    )
    parser.add_argument(
        "--keys",
        nargs="+",
        default=None,
        metavar="PATTERN",
        help="plot only the keys matching these fnmatch patterns (e.g. 'loss_*' 'sem_seg/*')",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s: %(message)s")
    output_dir = args.output_dir or os.path.join(args.output_dirs[0], "plots")
    try:
        written = plot_runs(args.output_dirs, output_dir, args.keys)
    except (FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 1
    for key, path in written.items():
        logger.info("%-32s -> %s", key, path)
    logger.info("Wrote %d plots to %s", len(written), os.path.abspath(output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
