"""Metric-depth evaluation (Eigen et al. 2014 / KITTI protocol) as a detectron2 evaluator.

For every image with ground-truth depth, the evaluator reads the depth map at the image's
original resolution from its dataset dict (``"depth_file_name"``, ``"depth_format"``) and
compares it with the model's ``output["depth"]`` (``[H, W]`` metres at the same resolution).

Protocol (all depths in metres):

* valid pixels: ground truth ``g`` with ``g > 0`` and ``min_depth <= g <= max_depth``;
* predictions ``p`` are clamped to ``[min_depth, max_depth]`` before the metrics (the usual
  KITTI/Eigen protocol; it also keeps ``log p`` and ``g / p`` finite);
* over the ``N`` valid pixels of an image:

  - ``AbsRel   = mean(|p - g| / g)``                 (unitless)
  - ``SqRel    = mean((p - g)^2 / g)``               (metres)
  - ``RMSE     = sqrt(mean((p - g)^2))``             (metres)
  - ``RMSE_log = sqrt(mean((log p - log g)^2))``     (natural log, unitless)
  - ``d1, d2, d3`` = fraction of pixels with ``max(p / g, g / p) < 1.25, 1.25^2, 1.25^3``
    (fractions in [0, 1]).

Two aggregation conventions are reported:

* ``"depth"`` (headline, the standard Eigen protocol): each metric is computed per image and
  then averaged over images (every image weighs the same, whatever its valid-pixel count);
* ``"depth_pooled"`` (optional): the metrics over the union of all valid pixels of all images
  (every pixel weighs the same).

With ``diagnostics`` (default), the task ``"depth_diagnostics"`` adds where the error lies and
what kind it is: metrics per ground-truth distance bin, near against far, the scale part
against the shape part of the error (per-image median ratio, the two terms of the
scale-invariant log error, metrics after median scaling) and metrics per camera focal-length
bin; see :mod:`.depth_diagnostics` for every key. They are also logged as tables.

Images whose dataset dict has no ``"depth_file_name"`` (e.g. COCO) are skipped and counted as
``num_images_no_depth``; images with depth but without any valid pixel are skipped and counted
as ``num_images_skipped``.
"""

import json
import logging
import math
import os
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from detectron2.evaluation.evaluator import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

from ..data.depth_io import read_depth, read_image
from .depth_diagnostics import (
    DEFAULT_DISTANCE_BINS,
    aggregate_diagnostics,
    check_bin_edges,
    diagnostics_tables,
    image_diagnostics,
)

__all__ = ["DepthEvaluator", "METRIC_NAMES", "DELTA_THRESHOLDS"]

#: names of the reported metrics, in table order
METRIC_NAMES = ("AbsRel", "SqRel", "RMSE", "RMSE_log", "d1", "d2", "d3")
#: δ accuracy thresholds on ``max(p / g, g / p)``: 1.25, 1.25², 1.25³
DELTA_THRESHOLDS = (1.25, 1.25**2, 1.25**3)

# per-image sums accumulated over the valid pixels (float64), from which every metric follows
_SUM_KEYS = ("abs_rel", "sq_rel", "sq_err", "sq_log_err", "d1", "d2", "d3")


def _metrics_from_sums(sums: Dict[str, float], num_pixels: int) -> Dict[str, float]:
    """The seven metrics from the per-pixel sums over ``num_pixels`` (> 0) valid pixels."""
    n = float(num_pixels)
    return {
        "AbsRel": sums["abs_rel"] / n,
        "SqRel": sums["sq_rel"] / n,
        "RMSE": math.sqrt(sums["sq_err"] / n),
        "RMSE_log": math.sqrt(sums["sq_log_err"] / n),
        "d1": sums["d1"] / n,
        "d2": sums["d2"] / n,
        "d3": sums["d3"] / n,
    }


class DepthEvaluator(DatasetEvaluator):
    """Evaluate predicted metric depth against ground-truth depth files.

    See the module docstring for the protocol and the metric definitions. The trainer builds
    it as ``DepthEvaluator(name, min_depth=cfg.INPUT.DEPTH.MIN_DEPTH,
    max_depth=cfg.INPUT.DEPTH.MAX_DEPTH, output_dir=...)``.
    """

    def __init__(
        self,
        dataset_name: Optional[str] = None,
        *,
        min_depth: float = 1e-3,
        max_depth: float = 80.0,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        pooled: bool = True,
        diagnostics: bool = True,
        distance_bins: Sequence[float] = DEFAULT_DISTANCE_BINS,
        near_far_threshold: float = 10.0,
        focal_bins: Optional[Sequence[float]] = None,
        class_names: Optional[Sequence[str]] = None,
    ):
        """
        Args:
            dataset_name: name of the evaluated dataset, used in log messages only.
            min_depth, max_depth: evaluation range in metres: ground truth outside it is
                invalid, predictions are clamped into it. Needs ``0 < min_depth < max_depth``.
            distributed: gather the per-image records of all processes onto the main process
                in :meth:`evaluate` (other processes then return ``None``); when False, each
                process evaluates only what it processed.
            output_dir: if given, :meth:`evaluate` writes ``depth_evaluation.json`` there
                (per-image metrics and the summaries).
            pooled: also report the pixel-pooled metrics as the ``"depth_pooled"`` task.
            diagnostics: also report the ``"depth_diagnostics"`` task.
            distance_bins: edges (metres, increasing, >= 0) of the ground-truth distance
                bins ``[e_k, e_{k+1})``; the last bin is open-ended (default 0-5, 5-10,
                10-20, 20-40, >40 m).
            near_far_threshold: ground truth below it (metres) is "near", the rest "far".
            focal_bins: edges (pixels, increasing) of the focal-length bins, ``fx`` of the
                original image; None: the tertiles of the evaluated images' ``fx``.
            class_names: names of the semantic classes (contiguous ids, as in the dataset's
                ``stuff_classes``): the diagnostics then also group the error by the
                ground-truth class of each pixel, read from the input's
                ``"sem_seg_file_name"`` (ids outside the list, the ignore label, count in no
                class). Images without a label map, or with one of another size than their
                depth (reported), are left out of that grouping only.
        """
        min_depth, max_depth = float(min_depth), float(max_depth)
        if not (0.0 < min_depth < max_depth) or not math.isfinite(max_depth):
            raise ValueError(
                f"DepthEvaluator needs 0 < min_depth < max_depth < inf (metres), got "
                f"min_depth={min_depth}, max_depth={max_depth}"
            )
        self._dataset_name = dataset_name
        self._min_depth = min_depth
        self._max_depth = max_depth
        self._distributed = distributed
        self._output_dir = output_dir
        self._pooled = pooled
        self._diagnostics = diagnostics
        self._distance_bins = check_bin_edges(distance_bins, "DepthEvaluator distance_bins")
        if not (math.isfinite(near_far_threshold) and near_far_threshold > 0):
            raise ValueError(
                f"DepthEvaluator near_far_threshold must be a positive number of metres, got "
                f"{near_far_threshold}"
            )
        self._near_far = float(near_far_threshold)
        self._class_names = list(class_names) if class_names else None
        self._focal_bins = (
            None if focal_bins is None else check_bin_edges(focal_bins, "DepthEvaluator focal_bins")
        )
        self._logger = logging.getLogger(__name__)
        self.reset()

    def reset(self):
        """Forget everything processed so far."""
        self._records: List[dict] = []  # one per image with depth, see _image_record
        self._num_no_depth = 0  # inputs without "depth_file_name"

    @staticmethod
    def _original_fx(input: dict) -> Optional[float]:
        """``fx`` (pixels) of the original image: the mapped input's K was resized with the
        image, so it is scaled back by ``width / network input width``; None without K."""
        K = input.get("intrinsics")
        if K is None:
            return None
        K = torch.as_tensor(K, dtype=torch.float64)
        scale = 1.0
        if "image" in input and "width" in input:
            scale = float(input["width"]) / float(input["image"].shape[-1])
        return float(K[0, 0]) * scale

    def _image_record(self, input: dict, pred: torch.Tensor) -> dict:
        """Per-image record: identifiers, valid-pixel count and float64 sums over valid pixels.

        Args:
            input: dataset dict with ``"depth_file_name"`` (and ``"depth_format"``, ...).
            pred: ``[H, W]`` predicted depth in metres at the original image resolution.
        """
        path = input["depth_file_name"]
        gt = torch.from_numpy(read_depth(input, self._min_depth, self._max_depth))
        if pred.dim() != 2 or tuple(pred.shape) != tuple(gt.shape):
            raise ValueError(
                f"predicted depth for {path} has shape {tuple(pred.shape)} (H, W) but the "
                f"ground truth is {tuple(gt.shape)}; predictions must be at the original image "
                "resolution"
            )
        gt = gt.to(torch.float64)
        valid = (gt > 0) & (gt >= self._min_depth) & (gt <= self._max_depth)
        record = {
            "file_name": input.get("file_name"),
            "depth_file_name": path,
            "num_pixels": int(valid.sum()),
        }
        if record["num_pixels"] == 0:
            return record
        g = gt[valid]
        p = pred.detach().to(device="cpu", dtype=torch.float64)[valid]
        if not torch.isfinite(p).all():
            raise ValueError(f"predicted depth for {path} has non-finite values at valid pixels")
        p = p.clamp(self._min_depth, self._max_depth)
        diff = p - g
        ratio = torch.maximum(p / g, g / p)
        sums = {
            "abs_rel": (diff.abs() / g).sum(),
            "sq_rel": (diff * diff / g).sum(),
            "sq_err": (diff * diff).sum(),
            "sq_log_err": ((torch.log(p) - torch.log(g)) ** 2).sum(),
        }
        for key, thr in zip(("d1", "d2", "d3"), DELTA_THRESHOLDS):
            sums[key] = (ratio < thr).sum()
        record["sums"] = {k: float(v) for k, v in sums.items()}
        if self._diagnostics:
            labels, mismatch = self._labels(input, tuple(gt.shape))
            if mismatch:  # in the record, so that every process's mismatches reach the log
                record["label_size_mismatch"] = mismatch
            record["diagnostics"] = image_diagnostics(
                p,
                g,
                distance_bins=self._distance_bins,
                near_far_threshold=self._near_far,
                fx=self._original_fx(input),
                labels=None if labels is None else labels[valid],
                num_classes=len(self._class_names or ()),
            )
        return record

    def _labels(self, input: dict, shape) -> Tuple[Optional[torch.Tensor], Optional[str]]:
        """``([H, W]`` ground-truth class ids of the input, or None; a note for the log when
        its label map is of another size than the depth, else None)``. None labels: no class
        names, no label map, or that size mismatch."""
        path = input.get("sem_seg_file_name")
        if not self._class_names or not path:
            return None, None
        labels = read_image(path, "L").squeeze(2)  # as the dataset mapper reads it
        if labels.shape != shape:
            return None, f"{path} ({labels.shape} against depth {shape})"
        return torch.from_numpy(labels.astype("int64")), None

    def process(self, inputs: List[dict], outputs: List[dict]):
        """
        Args:
            inputs: the model's inputs (dataset dicts after the test-time mapper). Those with
                ``"depth_file_name"`` are evaluated; their ``"depth"`` tensor (resized to the
                network input) is not used: the ground truth is re-read at full resolution.
            outputs: the model's outputs; ``output["depth"]`` is ``[H, W]`` metres at the
                input's original ``height`` x ``width``.
        """
        for input, output in zip(inputs, outputs):
            if "depth_file_name" not in input:
                self._num_no_depth += 1
                continue
            if "depth" not in output:
                raise KeyError(
                    f"model output for {input['depth_file_name']} has no 'depth'; is the "
                    "depth head enabled?"
                )
            self._records.append(self._image_record(input, output["depth"]))

    def evaluate(self):
        """Aggregate the per-image records (across processes when distributed).

        Returns:
            On the main process, ``OrderedDict`` with task ``"depth"`` (per-image averaged
            metrics, ``num_images`` evaluated, ``num_images_skipped`` without valid pixel,
            ``num_images_no_depth``) and, with ``pooled``, task ``"depth_pooled"``; ``{}``
            (and a warning) if no input had depth. ``None`` on the other processes.
        """
        records, num_no_depth = self._records, self._num_no_depth
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather((records, num_no_depth), dst=0)
            if not comm.is_main_process():
                return None
            records = [r for part, _ in gathered for r in part]
            num_no_depth = sum(n for _, n in gathered)

        name = self._dataset_name or "<unnamed dataset>"
        if not records:
            self._logger.warning(
                f"DepthEvaluator on {name}: no image has ground-truth depth "
                f"({num_no_depth} inputs without 'depth_file_name'); nothing to evaluate."
            )
            return {}

        evaluated = [r for r in records if r["num_pixels"] > 0]
        num_skipped = len(records) - len(evaluated)
        if num_skipped:
            self._logger.warning(
                f"DepthEvaluator on {name}: {num_skipped} image(s) without any valid "
                f"ground-truth depth in [{self._min_depth}, {self._max_depth}] m were skipped."
            )
        counts = {
            "num_images": len(evaluated),
            "num_images_skipped": num_skipped,
            "num_images_no_depth": num_no_depth,
        }
        # math.fsum: correctly rounded, so the result does not depend on the record order
        per_image = [_metrics_from_sums(r["sums"], r["num_pixels"]) for r in evaluated]
        per_image_avg = (
            {m: math.fsum(x[m] for x in per_image) / len(per_image) for m in METRIC_NAMES}
            if per_image
            else {m: float("nan") for m in METRIC_NAMES}
        )
        results = OrderedDict(depth={**per_image_avg, **counts})
        if self._pooled:
            total = sum(r["num_pixels"] for r in evaluated)
            pooled = (
                _metrics_from_sums(
                    {k: math.fsum(r["sums"][k] for r in evaluated) for k in _SUM_KEYS}, total
                )
                if total
                else {m: float("nan") for m in METRIC_NAMES}
            )
            results["depth_pooled"] = {**pooled, "num_pixels": total}
        if self._diagnostics:
            results["depth_diagnostics"] = aggregate_diagnostics(
                [r["diagnostics"] for r in evaluated],
                distance_bins=self._distance_bins,
                focal_bins=self._focal_bins,
                class_names=self._class_names,
            )
        mismatched = [r["label_size_mismatch"] for r in records if "label_size_mismatch" in r]
        if mismatched:
            self._logger.warning(
                f"DepthEvaluator on {name}: {len(mismatched)} label map(s) differ in size from "
                "their depth and are left out of the per-class depth diagnostics, e.g. "
                f"{mismatched[0]}"
            )

        self._logger.info(
            f"Depth evaluation on {name} (per-image averaged, range "
            f"[{self._min_depth}, {self._max_depth}] m):\n" + create_small_table(results["depth"])
        )
        if self._pooled:
            self._logger.info(
                f"Depth evaluation on {name} (pixel-pooled):\n"
                + create_small_table(results["depth_pooled"])
            )
        if self._diagnostics:
            self._logger.info(
                f"Depth error diagnostics on {name}:\n"
                + diagnostics_tables(results["depth_diagnostics"], self._distance_bins)
            )
        if self._output_dir:
            per_image_out = [
                {
                    "file_name": r["file_name"],
                    "depth_file_name": r["depth_file_name"],
                    "num_pixels": r["num_pixels"],
                    **(_metrics_from_sums(r["sums"], r["num_pixels"]) if r["num_pixels"] else {}),
                    **{
                        k: v
                        for k, v in r.get("diagnostics", {}).items()
                        if k not in ("bins", "near_far", "classes", "abs_rel", "d1")
                    },
                }
                for r in records
            ]
            self._save_json(
                {
                    "dataset_name": self._dataset_name,
                    "min_depth": self._min_depth,
                    "max_depth": self._max_depth,
                    "results": results,
                    "per_image": per_image_out,
                }
            )
        return results

    def _save_json(self, payload: dict):
        """Write ``payload`` to ``output_dir/depth_evaluation.json`` atomically."""
        os.makedirs(self._output_dir, exist_ok=True)
        path = os.path.join(self._output_dir, "depth_evaluation.json")
        fd, tmp = tempfile.mkstemp(dir=self._output_dir, prefix=".depth_evaluation.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        self._logger.info(f"Saved per-image depth metrics to {path}")
