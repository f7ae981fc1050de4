"""Periodic dumps of the point-cloud branch's output on one fixed training sample.

Every ``CURRICULUM.POINT_CLOUD_DUMP_PERIOD`` iterations (and after the last one) the main
process runs the model in eval mode, with ``point_inference`` on, on the first sample of
``cfg.DATASETS.TRAIN[0]`` (mapped as at test time) and writes three PLY files of the same
predicted-depth points, coloured by the ground-truth class at each point's pixel, by the 2D
(semantic head) prediction and by the 3D (point head) prediction, plus a small JSON summary.

Files, in ``<OUTPUT_DIR>/pointclouds/``::

    iter_{iter:07d}_gt.ply      ground-truth class of the point's pixel (ignored: grey)
    iter_{iter:07d}_pred2d.ply  2D prediction at the point's pixel
    iter_{iter:07d}_pred3d.ply  3D (point head) prediction of the point
    iter_{iter:07d}.json        {"num_points", "agreement_2d_3d", ...}

``iter`` is the trainer's 0-based iteration of the step after which the dump ran (as in
detectron2's ``model_{iter:07d}.pth`` checkpoints): with a period of 2, the dumps after the
2nd and 4th steps are ``iter_0000001_*`` and ``iter_0000003_*``.

The dump leaves training untouched: the Python, NumPy and torch (CPU and the model's CUDA
device) random states are saved before and restored after it (the model's point sampling is
re-seeded with a fixed seed inside, so every dump uses the same sampling stream), every
module's training flag and ``point_inference`` are restored even on error, and nothing is
computed with gradients. A resumed run is therefore still bit-exact.
"""

import contextlib
import json
import logging
import os
import random
from typing import Dict, Iterator, Optional

import numpy as np
import torch
from torch import nn

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.dataset_mapper import RGBDDatasetMapper
from ..data.depth_io import read_image
from ..utils.visualization import (
    class_palette,
    label_point_colors,
    labels_at_pixels,
    save_point_cloud_ply,
)
from .hooks import unwrap_model as _unwrap

__all__ = ["PointCloudDumpHook", "build_pointcloud_hook", "preserved_rng_state", "AGREEMENT_KEY"]

logger = logging.getLogger(__name__)

#: EventStorage scalar: fraction of dumped points whose 2D and 3D predictions agree
AGREEMENT_KEY = "point_branch/dump_agreement_2d_3d"

#: the three colourings, in file-suffix order
KINDS = ("gt", "pred2d", "pred3d")


@contextlib.contextmanager
def preserved_rng_state(
    device: Optional[torch.device] = None, seed: Optional[int] = None
) -> Iterator[None]:
    """Save the Python, NumPy and torch CPU random states (and the CUDA state of ``device``
    when it is a CUDA device), optionally re-seed them with ``seed``, and restore them on
    exit, error or not. Other CUDA devices are neither touched nor initialised."""
    cuda_index = None
    if device is not None and torch.device(device).type == "cuda":
        device = torch.device(device)
        cuda_index = device.index if device.index is not None else torch.cuda.current_device()
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[] if cuda_index is None else [cuda_index]):
        try:
            if seed is not None:
                random.seed(seed)
                np.random.seed(seed)
                # not torch.manual_seed: it would also (lazily) seed every CUDA device
                torch.default_generator.manual_seed(seed)
                if cuda_index is not None:
                    with torch.cuda.device(cuda_index):
                        torch.cuda.manual_seed(seed)
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _model_device(model: nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    return torch.device(device)


class PointCloudDumpHook(HookBase):
    """Write the labelled point cloud of one fixed training sample every ``period``
    iterations and after the last one (main process only); see the module docstring for
    the files. Skips with a warning, instead of failing, when the model has no point head
    or the sample has no intrinsics.

    Args:
        cfg: the training config (``DATASETS.TRAIN[0]`` gives the sample and its metadata,
            ``OUTPUT_DIR`` the default output folder, ``INPUT.*`` the test-time mapping).
        period: dump every ``period`` iterations (> 0).
        output_dir: folder under which ``pointclouds/`` is written (default
            ``cfg.OUTPUT_DIR``).
        seed: seed of the random streams during a dump (the model's point sampling), so that
            every dump samples the same way.
    """

    def __init__(self, cfg, period: int, output_dir: Optional[str] = None, seed: int = 0):
        if int(period) <= 0:
            raise ValueError(f"PointCloudDumpHook needs a positive period, got {period}")
        self.cfg = cfg.clone()
        self.period = int(period)
        self.output_dir = os.path.join(output_dir or cfg.OUTPUT_DIR, "pointclouds")
        self.seed = int(seed)
        self.disabled_reason: Optional[str] = None
        self._sample: Optional[Dict] = None
        self._gt: Optional[np.ndarray] = None
        self._palette: Optional[np.ndarray] = None
        self._ignore_label = int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)

    # ------------------------------------------------------------------ set-up
    def _disable(self, reason: str) -> None:
        self.disabled_reason = reason
        self._sample = None
        logger.warning("PointCloudDumpHook: %s; no point clouds will be written", reason)

    def _prepare(self, model: nn.Module) -> None:
        """Build the fixed sample, its original-resolution labels and the class palette."""
        if getattr(model, "point_head", None) is None:
            return self._disable("the model has no point head (MODEL.POINT_HEAD.ENABLED off)")
        if not self.cfg.DATASETS.TRAIN:
            return self._disable("cfg.DATASETS.TRAIN is empty")
        name = self.cfg.DATASETS.TRAIN[0]
        dicts = DatasetCatalog.get(name)
        if not dicts:
            return self._disable(f"dataset {name} is empty")
        d = dicts[0]
        # depth / intrinsics missing is a warning here, whatever INPUT.DEPTH.MISSING says
        mapper = RGBDDatasetMapper(self.cfg, is_train=False, missing_depth="skip")
        sample = mapper(d)
        if "intrinsics" not in sample:
            return self._disable(f"the sample {d.get('file_name')} of {name} has no intrinsics")
        sample.pop("sem_seg", None)  # at the network's resolution; the GT is read below
        gt = None
        if "sem_seg_file_name" in d:
            gt = read_image(d["sem_seg_file_name"], "L").squeeze(2).astype(np.int64)
        else:
            logger.warning(
                "PointCloudDumpHook: %s has no sem_seg_file_name; the ground-truth point "
                "cloud is grey",
                d.get("file_name"),
            )
        # predictions at the original resolution, where the ground truth is indexed
        height, width = sample["image"].shape[-2:]
        if gt is not None:
            height, width = gt.shape
        sample.setdefault("height", int(height))
        sample.setdefault("width", int(width))
        if gt is not None and gt.shape != (sample["height"], sample["width"]):
            raise ValueError(
                f"{d['sem_seg_file_name']} is {gt.shape[1]}x{gt.shape[0]} but the sample is "
                f"{sample['width']}x{sample['height']}"
            )
        meta = MetadataCatalog.get(name)
        self._ignore_label = int(meta.get("ignore_label", self._ignore_label))
        # colours (0..255) of every class the model predicts, padded where metadata lacks some
        self._palette = class_palette(meta, self.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        self._sample, self._gt = sample, gt
        logger.info(
            "PointCloudDumpHook: dumping the point cloud of %s every %d iterations to %s",
            d.get("file_name"),
            self.period,
            self.output_dir,
        )

    def before_train(self):
        if not comm.is_main_process():
            return
        model = _unwrap(self.trainer.model)
        # the test-time mapping may draw random numbers (ResizeShortestEdge does)
        with preserved_rng_state(seed=self.seed):
            self._prepare(model)

    # ------------------------------------------------------------------ dumping
    def after_step(self):
        if self._sample is None or not comm.is_main_process():
            return
        next_iter = self.trainer.iter + 1
        if next_iter % self.period == 0 or next_iter >= self.trainer.max_iter:
            self.dump(self.trainer.iter)

    def _predict(self, model: nn.Module) -> Dict:
        """The model's output on the fixed sample, in eval mode with ``point_inference``,
        leaving every module's training flag, the flag and all RNG states as they were."""
        modes = [(m, m.training) for m in model.modules()]
        flag = model.point_inference
        try:
            model.eval()
            model.point_inference = True
            # the point branch's own generator too, seeded for the dump and then restored
            keep = getattr(model, "preserved_point_generator", None)
            keep_points = contextlib.nullcontext() if keep is None else keep(self.seed)
            with preserved_rng_state(_model_device(model), self.seed), torch.no_grad():
                with keep_points:
                    return model([dict(self._sample)])[0]
        finally:
            for m, training in modes:
                m.training = training
            model.point_inference = flag

    def dump(self, iteration: int) -> Optional[Dict]:
        """Run the model on the fixed sample and write the files for ``iteration``.

        Returns:
            the JSON summary, or None when skipped.
        """
        if self._sample is None:
            return None
        model = _unwrap(self.trainer.model)
        out = self._predict(model)
        pc = out.get("point_cloud")
        if pc is None:
            self._disable("the model returned no 'point_cloud' with point_inference on")
            return None
        points = pc["points"].detach().cpu().to(torch.float64).numpy()
        pixels = pc["pixels"].detach().cpu().to(torch.float64).numpy()
        labels_2d = pc["labels_2d"].detach().cpu().numpy().astype(np.int64)
        labels_3d = pc["labels_3d"].detach().cpu().numpy().astype(np.int64)
        if self._gt is not None:
            labels_gt = labels_at_pixels(self._gt, pixels)
        else:
            labels_gt = np.full(len(points), self._ignore_label, dtype=np.int64)
        labels = {"gt": labels_gt, "pred2d": labels_2d, "pred3d": labels_3d}

        stem = os.path.join(self.output_dir, f"iter_{iteration:07d}")
        files = {}
        for kind in KINDS:
            files[kind] = f"{stem}_{kind}.ply"
            colors = label_point_colors(labels[kind], self._palette, self._ignore_label)
            save_point_cloud_ply(files[kind], points, colors)
        n = int(len(points))
        agreement = float((labels_2d == labels_3d).mean()) if n else None
        summary = {
            "iteration": int(iteration),
            "file_name": self._sample.get("file_name"),
            "num_points": n,
            "agreement_2d_3d": agreement,
            "files": {k: os.path.basename(v) for k, v in files.items()},
        }
        with open(f"{stem}.json", "w") as f:
            json.dump(summary, f, indent=2)
        if agreement is not None:
            self.trainer.storage.put_scalar(AGREEMENT_KEY, agreement, smoothing_hint=False)
        logger.info(
            "PointCloudDumpHook: wrote %d points to %s_{%s}.ply (2D/3D agreement %s)",
            n,
            stem,
            ",".join(KINDS),
            "n/a" if agreement is None else f"{agreement:.3f}",
        )
        return summary


def build_pointcloud_hook(cfg) -> Optional[PointCloudDumpHook]:
    """The dump hook for ``cfg.CURRICULUM.POINT_CLOUD_DUMP_PERIOD``, or None when it is 0."""
    period = int(cfg.CURRICULUM.POINT_CLOUD_DUMP_PERIOD)
    if period <= 0:
        return None
    return PointCloudDumpHook(cfg, period)
