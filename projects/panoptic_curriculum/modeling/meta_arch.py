"""The multi-task meta-architecture: one encoder, one forward pass, four outputs."""

import contextlib
import logging
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import (
    META_ARCH_REGISTRY,
    build_backbone,
    build_proposal_generator,
    build_roi_heads,
    build_sem_seg_head,
)
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage

from ..config_validation import validate_config
from ..device import check_device
from ..geometry import backproject_pixels
from .depth_head import build_depth_head
from .instance_adapter import build_instance_adapter
from .loss_weighting import LOSS_WEIGHTING_MODES, UncertaintyLossWeighting
from .point_head import (
    build_point_head,
    class_balanced_weights,
    consistency_loss,
    point_cross_entropy,
    route_to_better_teacher,
    sample_pixels,
)
from .postprocessing import channel_argmax, postprocess_image

__all__ = ["PanopticCurriculumModel", "CONSISTENCY_DIRECTIONS", "POINT_SAMPLING"]

#: MODEL.POINT_HEAD.CONSISTENCY_DIRECTION: which side of L_consist receives its gradient
CONSISTENCY_DIRECTIONS = ("both", "to_3d", "to_2d", "better_teaches")
#: MODEL.POINT_HEAD.SAMPLING: training-time pixel sampling of the point branch
POINT_SAMPLING = ("uniform", "class_balanced")
#: MODEL.POINT_HEAD.LIFT: what the point branch lifts (see ``PanopticCurriculumModel``)
POINT_LIFT = ("depth", "plane")
#: metres: the depth of every pixel when MODEL.POINT_HEAD.LIFT is "plane"
PLANE_DEPTH_M = 10.0

logger = logging.getLogger(__name__)

_INSTANCE_LOSSES = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask")


def thing_to_semantic_ids(dataset_name: Optional[str], num_things: int) -> List[int]:
    """Semantic class id of each thing class, for panoptic fusion.

    Read from the dataset's metadata: a thing's name in ``stuff_classes`` (datasets whose
    semantic labels list every class: synthetic scenes, Cityscapes, COCO panoptic
    standard), else the merged ``"things"`` class (COCO panoptic separated). Identity
    without metadata.
    """
    if dataset_name:
        meta = MetadataCatalog.get(dataset_name)
        things, stuff = meta.get("thing_classes"), meta.get("stuff_classes")
        if things and stuff:
            ids = []
            for t in things:
                if t in stuff:
                    ids.append(stuff.index(t))
                elif "things" in stuff:
                    ids.append(stuff.index("things"))
                else:
                    raise ValueError(
                        f"thing class {t!r} of {dataset_name} is not in its stuff_classes, so "
                        "panoptic fusion cannot tell which semantic class it is"
                    )
            return ids
    return list(range(num_things))


def _raise_if_not_finite(losses: Dict[str, torch.Tensor]) -> None:
    """Stop training with a message naming the non-finite loss(es) and the iteration (one
    device sync per step; detectron2's metric writer syncs on every loss anyway)."""
    values = torch.stack([v.detach().float() for v in losses.values()])
    if bool(torch.isfinite(values).all()):
        return
    bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v.detach()).all()}
    try:
        where = f"iteration {get_event_storage().iter}"
    except AssertionError:  # called outside an EventStorage
        where = "this step"
    raise FloatingPointError(
        f"non-finite loss at {where}: {bad} (all losses: "
        f"{ {k: float(v) for k, v in losses.items()} })"
    )


def _build_point_head_rng_neutral(cfg, in_channels: int) -> nn.Module:
    """The point network, initialised from the global generator's current state, which is
    then restored: the rest of the run (training's dropout masks, Mask R-CNN's sampling)
    draws what it would draw without the branch (see ``point_generator``)."""
    with torch.random.fork_rng(devices=[]):
        return build_point_head(cfg, in_channels)


# mixed into the point branch's generator seed so that its stream is not the global one's
_POINT_SEED_SALT = 0x3D5EED


def _point_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` for the point branch's draws, seeded from ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(seed ^ _POINT_SEED_SALT)
    return g


@META_ARCH_REGISTRY.register()
class PanopticCurriculumModel(nn.Module):
    """Shared encoder with a DeepLabV3+ semantic decoder, a Mask R-CNN instance decoder, a
    depth head and a PointNet++ point-cloud branch; one backbone call per batch feeds all.

    Training returns weighted losses: ``loss_sem_seg`` (L_2D-seg), ``loss_depth``,
    ``loss_sem_seg_3d`` (L_3D-seg), ``loss_consistency`` (L_consist) and Mask R-CNN's
    ``loss_rpn_cls``, ``loss_rpn_loc``, ``loss_cls``, ``loss_box_reg``, ``loss_mask``; with
    learned weights (``loss_weighting="uncertainty"``) also ``loss_uncertainty_reg``.

    The point branch back-projects the *predicted* depth at ``num_points`` pixels per image
    (pixels inside the image with valid ground-truth depth and a label) with the image's K,
    segments the points, and compares their class distributions with the 2D head's at the
    same pixels. Every branch is optional; a branch switched off is not built.

    Inference returns, per image at its original ``height x width``: ``"sem_seg"`` ``[C,H,W]``
    logits, ``"instances"`` (with ``pred_depth`` ``[N]`` metres, the median depth over each
    mask, and ``pred_centroid`` ``[N, 3]`` metres in camera coordinates), ``"panoptic_seg"``
    (as Panoptic FPN), ``"depth"`` ``[H, W]`` metres, and with ``point_inference`` a
    ``"point_cloud"`` dict (``points`` ``[N,3]`` metres, ``pixels`` ``[N,2]`` (u, v) in the
    original image, ``labels_3d`` and ``labels_2d`` ``[N]``).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: Optional[nn.Module],
        proposal_generator: Optional[nn.Module],
        roi_heads: Optional[nn.Module],
        depth_head: Optional[nn.Module],
        instance_adapter: Optional[nn.Module] = None,
        point_head: Optional[nn.Module],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        sem_seg_loss_weight: float = 1.0,
        instance_loss_weight: float = 1.0,
        point_loss_weight: float = 1.0,
        consistency_weight: float = 1.0,
        consistency_loss: str = "js",
        consistency_direction: str = "both",
        point_sampling: str = "uniform",
        point_lift: str = "depth",
        detach_depth: bool = False,
        consistency_depth_gate: float = 0.0,
        num_points: int = 4096,
        use_image_features: bool = False,
        image_feature_name: Optional[str] = None,
        point_inference: bool = False,
        no_surface_classes: Sequence[int] = (),
        thing_to_sem: Sequence[int] = (),
        panoptic_overlap_threshold: float = 0.5,
        panoptic_stuff_area_limit: int = 64,
        panoptic_score_threshold: float = 0.5,
        loss_weighting: str = "fixed",
        point_head_compile: str = "",
        channels_last: bool = False,
    ):
        """
        Args:
            backbone: a detectron2 ``Backbone``.
            sem_seg_head: a DeepLabV3+ head exposing ``layers`` and ``losses``, or None.
            proposal_generator, roi_heads: Mask R-CNN parts, both or neither.
            instance_adapter: optional module ``features -> features`` (same keys and
                shapes) between the encoder and the Mask R-CNN parts, owned by the instance
                decoder (see ``instance_adapter.py``).
            depth_head: module ``(features, output_size) -> [B,H,W]`` metres with ``losses``.
            point_head: module ``(xyz [B,N,3], valid [B,N], features) -> [B,N,C]`` logits;
                needs the semantic and depth heads.
            pixel_mean, pixel_std: per-channel input normalisation (image format's order).
            sem_seg_loss_weight: weight of ``loss_sem_seg`` (on top of the head's own).
            instance_loss_weight: weight of every Mask R-CNN loss.
            point_loss_weight, consistency_weight: weights of L_3D-seg and L_consist.
            consistency_loss: "js", "sym_kl" or "l2" (see ``point_head.consistency_loss``).
            consistency_direction: "both", "to_3d" (2D logits detached in L_consist),
                "to_2d" (3D logits detached) or "better_teaches" (per point, the side that
                gives the label the higher probability is detached and teaches the other;
                :func:`point_head.route_to_better_teacher`).
            consistency_depth_gate: 0 (off) or a factor ``g > 1``: L_consist is taken only
                at points whose predicted depth is within a factor ``g`` of the ground truth
                (``max(d / d*, d* / d) < g``, the δ<g criterion), so that a point lifted to
                the wrong place neither teaches nor is taught; the share kept is logged as
                ``point_branch/consistency_kept_fraction``. Training only (it needs d*).
            point_sampling: training-time pixel sampling, "uniform" or "class_balanced"
                (:func:`point_head.class_balanced_weights`).
            point_lift: "depth" (the predicted depth is lifted with K) or "plane" (every
                pixel at ``PLANE_DEPTH_M`` metres: the points keep their image layout and
                lose the scene's 3D shape; the control that separates what the geometry
                gives the branch from what its losses give).
            detach_depth: lift a detached depth, so that the point-branch losses do not
                reach the depth head.
            num_points: points sampled per image for the point branch.
            use_image_features: feed the point network the encoder feature
                ``image_feature_name`` sampled at each point's pixel.
            point_inference: also run the point branch at inference.
            no_surface_classes: semantic classes without a surface (sky): at inference the
                point branch skips pixels predicted as one of them (in training, pixels
                without valid ground-truth depth are skipped).
            thing_to_sem: semantic class id of each thing class (panoptic fusion).
            panoptic_*: Panoptic FPN fusion thresholds (overlap fraction, stuff area in
                pixels, instance score).
            loss_weighting: "fixed" (the weights above) or "uncertainty": one learned
                log-variance per task, starting at the fixed weights (see
                :mod:`.loss_weighting`); the module ``loss_weighting`` then holds them, the
                regulariser is returned as ``loss_uncertainty_reg`` and the current weights
                go to the EventStorage as ``task_weight/<task>``.
            point_head_compile: "" (off) or a ``torch.compile`` backend ("inductor", ...)
                that the point network's forward runs through (a speed option for CUDA,
                where the point network's many small kernels are launch-bound). The module
                and its parameters stay as they are (checkpoints are unchanged); under
                ``torch.jit`` tracing (export) the plain forward runs.
            channels_last: store every 4-D weight and the input batch in the channels-last
                (NHWC) memory format. The numbers, shapes and state-dict keys are those of
                the default layout (a checkpoint loads into either), only the strides differ.
        """
        super().__init__()
        if (proposal_generator is None) != (roi_heads is None):
            raise ValueError("the instance decoder needs both a proposal generator and ROI heads")
        if point_head is not None and (sem_seg_head is None or depth_head is None):
            raise ValueError("MODEL.POINT_HEAD needs the semantic head and the depth head")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        if instance_adapter is not None and roi_heads is None:
            raise ValueError("MODEL.INSTANCE_ADAPTER needs the instance decoder")
        self.instance_adapter = instance_adapter
        self.depth_head = depth_head
        self.point_head = point_head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.sem_seg_loss_weight = sem_seg_loss_weight
        self.instance_loss_weight = instance_loss_weight
        self.point_loss_weight = point_loss_weight
        self.consistency_weight = consistency_weight
        self.consistency_kind = consistency_loss
        if consistency_direction not in CONSISTENCY_DIRECTIONS:
            raise ValueError(
                f"MODEL.POINT_HEAD.CONSISTENCY_DIRECTION must be one of "
                f"{CONSISTENCY_DIRECTIONS}, got {consistency_direction!r}"
            )
        if point_sampling not in POINT_SAMPLING:
            raise ValueError(
                f"MODEL.POINT_HEAD.SAMPLING must be one of {POINT_SAMPLING}, got "
                f"{point_sampling!r}"
            )
        if point_lift not in POINT_LIFT:
            raise ValueError(
                f"MODEL.POINT_HEAD.LIFT must be one of {POINT_LIFT}, got {point_lift!r}"
            )
        self.consistency_direction = consistency_direction
        self.point_sampling = point_sampling
        self.point_lift = point_lift
        self.detach_depth = detach_depth
        if consistency_depth_gate != 0 and not consistency_depth_gate > 1:
            raise ValueError(
                "MODEL.POINT_HEAD.CONSISTENCY_DEPTH_GATE must be 0 (off) or a factor > 1, got "
                f"{consistency_depth_gate!r}"
            )
        self.consistency_depth_gate = float(consistency_depth_gate)
        self.num_points = num_points
        self.use_image_features = use_image_features
        self.image_feature_name = image_feature_name
        self.point_inference = point_inference
        # a compiled copy of the point network's forward (not a registered module: the
        # parameters and checkpoint keys stay those of ``self.point_head``)
        self._point_head_compiled = None
        if point_head_compile and point_head is not None:
            self._point_head_compiled = torch.compile(
                point_head.forward, backend=point_head_compile
            )
        # the point branch's own random generator (pixel sampling), made at its first use:
        # see :meth:`point_generator`
        self._point_rng: Optional[torch.Generator] = None
        # set to a list by ``evaluation.point_branch.record_point_branch``: each training
        # forward then appends its point-branch tensors (detached) for diagnostics
        self.point_branch_record: Optional[List[Dict[str, torch.Tensor]]] = None
        self.no_surface_classes = list(no_surface_classes)
        self.thing_to_sem = list(thing_to_sem)
        self.panoptic_overlap_threshold = panoptic_overlap_threshold
        self.panoptic_stuff_area_limit = panoptic_stuff_area_limit
        self.panoptic_score_threshold = panoptic_score_threshold
        if loss_weighting not in LOSS_WEIGHTING_MODES:
            raise ValueError(
                f"MODEL.PANOPTIC_CURRICULUM.LOSS_WEIGHTING must be one of "
                f"{LOSS_WEIGHTING_MODES}, got {loss_weighting!r}"
            )
        self.loss_weighting = None
        if loss_weighting == "uncertainty":
            fixed = {}
            if sem_seg_head is not None:
                fixed["sem_seg"] = sem_seg_loss_weight
            if roi_heads is not None:
                fixed["instance"] = instance_loss_weight
            if depth_head is not None:
                fixed["depth"] = float(getattr(depth_head, "loss_weight", 1.0))
            if point_head is not None:
                fixed["sem_seg_3d"] = point_loss_weight
                fixed["consistency"] = consistency_weight
            self.loss_weighting = UncertaintyLossWeighting(fixed)
        self.channels_last = channels_last
        if channels_last:
            # every 4-D weight in NHWC; moving to a device and loading a checkpoint keep the
            # layout (``Tensor.to`` preserves strides, ``copy_`` writes into the parameter)
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg):
        validate_config(cfg)  # configs built by hand skip load_config's check
        check_device(cfg)  # a clear error before detectron2 moves the model there
        pc = cfg.MODEL.PANOPTIC_CURRICULUM
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        instance_on = pc.INSTANCE_ON
        depth_on = pc.DEPTH_ON
        point_on = cfg.MODEL.POINT_HEAD.ENABLED
        feat_name = (
            cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES[0] if cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES else None
        )
        use_img = point_on and cfg.MODEL.POINT_HEAD.USE_IMAGE_FEATURES
        if use_img and feat_name not in shapes:
            raise KeyError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES[0] {feat_name!r} is not a backbone output"
            )
        train_sets = cfg.DATASETS.TRAIN or cfg.DATASETS.TEST
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, shapes) if pc.SEM_SEG_ON else None,
            "proposal_generator": build_proposal_generator(cfg, shapes) if instance_on else None,
            "roi_heads": build_roi_heads(cfg, shapes) if instance_on else None,
            "instance_adapter": build_instance_adapter(cfg, shapes) if instance_on else None,
            "depth_head": build_depth_head(cfg, shapes) if depth_on else None,
            "point_head": (
                _build_point_head_rng_neutral(cfg, shapes[feat_name].channels if use_img else 0)
                if point_on
                else None
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "sem_seg_loss_weight": pc.SEM_SEG_LOSS_WEIGHT,
            "instance_loss_weight": pc.INSTANCE_LOSS_WEIGHT,
            "point_loss_weight": cfg.MODEL.POINT_HEAD.LOSS_WEIGHT,
            "consistency_weight": cfg.MODEL.POINT_HEAD.CONSISTENCY_WEIGHT,
            "consistency_loss": cfg.MODEL.POINT_HEAD.CONSISTENCY_LOSS,
            "consistency_direction": cfg.MODEL.POINT_HEAD.CONSISTENCY_DIRECTION,
            "point_sampling": cfg.MODEL.POINT_HEAD.SAMPLING,
            "point_lift": cfg.MODEL.POINT_HEAD.LIFT,
            "detach_depth": cfg.MODEL.POINT_HEAD.DETACH_DEPTH,
            "consistency_depth_gate": cfg.MODEL.POINT_HEAD.CONSISTENCY_DEPTH_GATE,
            "num_points": cfg.MODEL.POINT_HEAD.NUM_POINTS,
            "use_image_features": use_img,
            "image_feature_name": feat_name,
            "point_inference": cfg.MODEL.POINT_HEAD.INFERENCE_ON,
            "no_surface_classes": cfg.MODEL.POINT_HEAD.NO_SURFACE_CLASSES,
            "point_head_compile": cfg.MODEL.POINT_HEAD.COMPILE_BACKEND,
            "thing_to_sem": thing_to_semantic_ids(
                train_sets[0] if train_sets else None, cfg.MODEL.ROI_HEADS.NUM_CLASSES
            ),
            "panoptic_overlap_threshold": pc.PANOPTIC_OVERLAP_THRESH,
            "panoptic_stuff_area_limit": pc.PANOPTIC_STUFF_AREA_LIMIT,
            "panoptic_score_threshold": pc.PANOPTIC_INSTANCES_CONFIDENCE_THRESH,
            "loss_weighting": pc.LOSS_WEIGHTING,
            "channels_last": pc.CHANNELS_LAST,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    # ------------------------------------------------------------------ helpers
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        out = ImageList.from_tensors(images, self.backbone.size_divisibility)
        if self.channels_last:  # [B, 3, H, W] stored NHWC, as the convolutions' weights
            out.tensor = out.tensor.contiguous(memory_format=torch.channels_last)
        return out

    def _padded(self, batched_inputs, key, pad_value, images: ImageList, dtype=None):
        """Stack ``x[key]`` ``[H, W]`` maps, padded like the images; None if any is absent."""
        if any(key not in x for x in batched_inputs):
            return None
        maps = [x[key].to(self.device) for x in batched_inputs]
        out = ImageList.from_tensors(maps, self.backbone.size_divisibility, pad_value).tensor
        return out if dtype is None else out.to(dtype)

    def _intrinsics(self, batched_inputs) -> torch.Tensor:
        missing = [
            x.get("file_name", i) for i, x in enumerate(batched_inputs) if "intrinsics" not in x
        ]
        if missing:
            raise KeyError(
                f"the point branch (MODEL.POINT_HEAD.ENABLED) needs 'intrinsics' for every "
                f"sample; missing for {missing}"
            )
        return torch.stack([x["intrinsics"].to(self.device, torch.float32) for x in batched_inputs])

    def _optional_intrinsics(self, batched_inputs) -> Optional[torch.Tensor]:
        """``[B, 3, 3]`` intrinsics of the inputs, or None unless every input has them."""
        if all("intrinsics" in x for x in batched_inputs):
            return torch.stack(
                [x["intrinsics"].to(self.device, torch.float32) for x in batched_inputs]
            )
        return None

    def _instance_features(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The encoder features as the instance decoder sees them (through its adapter)."""
        return features if self.instance_adapter is None else self.instance_adapter(features)

    def _image_mask(self, images: ImageList) -> torch.Tensor:
        """``[B, H, W]`` True inside each image (not padding)."""
        b, _, h, w = images.tensor.shape
        # int(): under tracing (flop counting, export) the sizes are 0-d tensors
        sizes = torch.tensor([[int(h), int(w)] for h, w in images.image_sizes], device=self.device)
        rows = torch.arange(h, device=self.device)[None, :, None] < sizes[:, 0, None, None]
        cols = torch.arange(w, device=self.device)[None, None, :] < sizes[:, 1, None, None]
        return rows & cols

    def _lifted_depth(self, depth: torch.Tensor) -> torch.Tensor:
        """The ``[B, H, W]`` depth (metres) the point branch lifts: ``depth`` itself, or a
        plane at ``PLANE_DEPTH_M`` when MODEL.POINT_HEAD.LIFT is "plane"."""
        if self.point_lift == "plane":
            return torch.full_like(depth, PLANE_DEPTH_M)
        return depth

    def _depth_within_gate(self, depth, gt_depth, pixel_idx) -> torch.Tensor:
        """``[B, N]`` bool: at the points' pixels ``pixel_idx`` ([B, N] flat), is the predicted
        ``depth`` ([B, H, W] metres) within a factor ``consistency_depth_gate`` of the ground
        truth ``gt_depth`` ([B, H, W], 0 = invalid)? Invalid ground truth gives False."""
        d = torch.gather(depth.detach().flatten(1), 1, pixel_idx)
        d_gt = torch.gather(gt_depth.flatten(1), 1, pixel_idx)
        ok = (d > 0) & (d_gt > 0)
        ratio = torch.maximum(d / d_gt.clamp(min=1e-6), d_gt / d.clamp(min=1e-6))
        return ok & (ratio < self.consistency_depth_gate)

    def _point_branch(self, features, sem_logits, depth, K, valid, weights=None):
        """Sample pixels where ``valid`` ([B,H,W]; with ``weights`` [B,H,W], weighted
        sampling), lift them with the predicted ``depth`` ([B,H,W] metres) and ``K``
        ([B,3,3]), and segment them.

        Returns:
            dict with ``pixel_idx`` [B,N] (flat), ``point_valid`` [B,N], ``xyz`` [B,N,3]
            metres, ``logits_3d`` and ``logits_2d`` [B,N,C].
        """
        b, h, w = depth.shape
        pixel_idx, point_valid = sample_pixels(
            valid, self.num_points, generator=self.point_generator(valid.device), weights=weights
        )
        uv = torch.stack([pixel_idx % w, pixel_idx // w], dim=-1)
        d = torch.gather(depth.flatten(1), 1, pixel_idx)
        xyz = backproject_pixels(d, uv, K)
        logits_2d = torch.gather(
            sem_logits.flatten(2), 2, pixel_idx[:, None, :].expand(-1, sem_logits.shape[1], -1)
        ).transpose(1, 2)
        point_feats = None
        if self.use_image_features:
            fmap = features[self.image_feature_name]
            grid = torch.stack([(uv[..., 0] + 0.5) / w * 2 - 1, (uv[..., 1] + 0.5) / h * 2 - 1], -1)
            point_feats = F.grid_sample(
                fmap, grid[:, :, None, :].to(fmap.dtype), align_corners=False
            )
            point_feats = point_feats[..., 0].transpose(1, 2)
        if self._point_head_compiled is not None and not torch.jit.is_tracing():
            logits_3d = self._point_head_compiled(xyz, point_valid, point_feats)
        else:
            logits_3d = self.point_head(xyz, point_valid, point_feats)
        out = {
            "pixel_idx": pixel_idx,
            "point_valid": point_valid,
            "xyz": xyz,
            "uv": uv,
            "logits_3d": logits_3d,
            "logits_2d": logits_2d,
        }
        if point_feats is not None:
            out["point_feats"] = point_feats
        return out

    def point_generator(self, device) -> torch.Generator:
        """The point branch's own ``torch.Generator`` on ``device``, for its pixel sampling.

        The branch does not draw from the global generator, which also draws the ASPP's
        dropout masks and Mask R-CNN's proposal and ROI sampling: switching the branch on or
        off (or changing its number of points) then leaves every other random draw of a run
        as it was, so that a with/without comparison at one seed differs by what the branch
        teaches, not by a shifted random stream. Made at its first use and seeded from
        ``torch.initial_seed()`` (detectron2 seeds the global generator with ``SEED + rank``),
        so it is a function of the run's seed and rank; its state travels in the checkpoints
        (:class:`panoptic_curriculum.engine.hooks.RNGStateHook`).
        """
        device = torch.device(device)
        if self._point_rng is None or self._point_rng.device != device:
            self._point_rng = _point_generator(device, torch.initial_seed())
        return self._point_rng

    def point_generator_made(self) -> Optional[torch.Generator]:
        """The point branch's generator if its first use has made it, else None (nothing to
        save in a checkpoint yet)."""
        return self._point_rng

    @contextlib.contextmanager
    def preserved_point_generator(self, seed: Optional[int] = None) -> Iterator[None]:
        """Within the block the point branch draws as usual (from a generator seeded with
        ``seed`` when given); on exit its generator is as before the block, so that a side
        computation (a diagnostic forward, a point-cloud dump, the unused-parameter probe)
        does not change what training draws next."""
        saved = self._point_rng
        state = None if saved is None else saved.get_state()
        try:
            if seed is not None:
                self._point_rng = _point_generator(self.device, seed)
            yield
        finally:
            self._point_rng = saved
            if saved is not None:
                saved.set_state(state)

    def probe_inputs(self, height: int = 64, width: int = 96, batch_size: int = 2):
        """A small synthetic training batch that runs every branch that is built: each image
        uniform grey, semantic class 0 everywhere, one thing of class 0 (a centred box and
        its mask), depth 5 m everywhere, and a pinhole K (fx = fy = ``width`` pixels, centred
        principal point). Used to find the parameters a training step leaves without a
        gradient (:func:`panoptic_curriculum.engine.ddp.unused_parameters`); the numbers mean
        nothing.

        Returns:
            ``batch_size`` dicts with ``"image"`` ``[3, height, width]`` uint8 and, for the
            branches built, ``"sem_seg"`` ``[H, W]`` int64, ``"instances"``, ``"depth"``
            ``[H, W]`` metres and ``"intrinsics"`` ``[3, 3]`` pixels.
        """
        h, w = height, width
        y0, y1, x0, x1 = h // 4, 3 * h // 4, w // 4, 3 * w // 4
        K = torch.tensor([[w, 0.0, (w - 1) / 2], [0.0, w, (h - 1) / 2], [0.0, 0.0, 1.0]])
        batch = []
        for _ in range(batch_size):
            x = {"image": torch.full((3, h, w), 128, dtype=torch.uint8), "height": h, "width": w}
            if self.sem_seg_head is not None:
                x["sem_seg"] = torch.zeros((h, w), dtype=torch.long)
            if self.proposal_generator is not None:
                mask = torch.zeros((1, h, w), dtype=torch.bool)
                mask[0, y0:y1, x0:x1] = True
                inst = Instances((h, w))
                inst.gt_boxes = Boxes(torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32))
                inst.gt_classes = torch.zeros(1, dtype=torch.int64)
                inst.gt_masks = BitMasks(mask)
                x["instances"] = inst
            if self.depth_head is not None:
                x["depth"] = torch.full((h, w), 5.0)
                x["intrinsics"] = K.clone()
            batch.append(x)
        return batch

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: list of mapper outputs: ``"image"`` ``[3,H,W]``; for training
                ``"sem_seg"`` ``[H,W]``, ``"instances"``, ``"depth"`` ``[H,W]`` metres; for
                the point branch ``"intrinsics"`` ``[3,3]``; optional ``"height"``,
                ``"width"`` (output size at inference).
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if not self.training:
            return self.inference(batched_inputs, images, features)

        losses: Dict[str, torch.Tensor] = {}
        sem_logits = None
        if self.sem_seg_head is not None:
            targets = self._padded(
                batched_inputs, "sem_seg", self.sem_seg_head.ignore_value, images
            )
            if targets is None:
                raise KeyError("the semantic head needs 'sem_seg' in every training sample")
            coarse = self.sem_seg_head.layers(features)
            losses.update(
                {
                    k: v * self.sem_seg_loss_weight
                    for k, v in self.sem_seg_head.losses(coarse, targets).items()
                }
            )
            sem_logits = F.interpolate(
                coarse, size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
            )
        if self.proposal_generator is not None:
            gt = [x["instances"].to(self.device) for x in batched_inputs]
            inst_features = self._instance_features(features)
            proposals, proposal_losses = self.proposal_generator(images, inst_features, gt)
            _, detector_losses = self.roi_heads(images, inst_features, proposals, gt)
            for k, v in {**proposal_losses, **detector_losses}.items():
                losses[k] = v * self.instance_loss_weight
        depth = None
        if self.depth_head is not None:
            gt_depth = self._padded(batched_inputs, "depth", 0.0, images)
            if gt_depth is None:
                raise KeyError("the depth head needs 'depth' in every training sample")
            depth = self.depth_head(
                features, images.tensor.shape[-2:], self._optional_intrinsics(batched_inputs)
            )
            losses.update(self.depth_head.losses(depth, gt_depth))
        if self.point_head is not None:
            K = self._intrinsics(batched_inputs)
            valid = (
                self._image_mask(images)
                & (gt_depth > 0)
                & (targets != self.sem_seg_head.ignore_value)
            )
            weights = None
            if self.point_sampling == "class_balanced":
                weights = class_balanced_weights(targets, valid, sem_logits.shape[1])
            lifted = self._lifted_depth(depth.detach() if self.detach_depth else depth)
            out = self._point_branch(features, sem_logits, lifted, K, valid, weights)
            labels = torch.gather(targets.flatten(1), 1, out["pixel_idx"])
            losses["loss_sem_seg_3d"] = self.point_loss_weight * point_cross_entropy(
                out["logits_3d"], labels, out["point_valid"], self.sem_seg_head.ignore_value
            )
            logits_2d, logits_3d = out["logits_2d"], out["logits_3d"]
            if self.consistency_direction == "to_3d":
                logits_2d = logits_2d.detach()
            elif self.consistency_direction == "to_2d":
                logits_3d = logits_3d.detach()
            elif self.consistency_direction == "better_teaches":
                logits_2d, logits_3d, teaches_2d = route_to_better_teacher(
                    logits_2d, logits_3d, labels, out["point_valid"]
                )
                share = teaches_2d.sum() / out["point_valid"].sum().clamp(min=1)
                get_event_storage().put_scalar(
                    "point_branch/3d_teaches_2d_fraction", share, smoothing_hint=True
                )
            consist_valid = out["point_valid"]
            if self.consistency_depth_gate > 0:
                consist_valid = consist_valid & self._depth_within_gate(
                    depth, gt_depth, out["pixel_idx"]
                )
                get_event_storage().put_scalar(
                    "point_branch/consistency_kept_fraction",
                    consist_valid.sum() / out["point_valid"].sum().clamp(min=1),
                    smoothing_hint=True,
                )
            losses["loss_consistency"] = self.consistency_weight * consistency_loss(
                logits_2d, logits_3d, consist_valid, self.consistency_kind
            )
            if self.point_branch_record is not None:
                self.point_branch_record.append(
                    {
                        "labels": labels,
                        "gt_depth": torch.gather(gt_depth.flatten(1), 1, out["pixel_idx"]),
                        "K": K.detach(),
                        **{k: v.detach() for k, v in out.items()},
                    }
                )
            get_event_storage().put_scalar(
                "point_branch/valid_fraction",
                out["point_valid"].float().mean(),
                smoothing_hint=True,
            )
        if self.loss_weighting is not None:
            losses = self.loss_weighting(losses)
            storage = get_event_storage()
            for task, weight in self.loss_weighting.weights().items():
                storage.put_scalar(f"task_weight/{task}", weight, smoothing_hint=False)
        _raise_if_not_finite(losses)
        return losses

    def predict_padded(
        self, images: ImageList, features: Dict[str, torch.Tensor], K: Optional[torch.Tensor]
    ) -> Dict:
        """The network's inference outputs for a padded batch, before any post-processing.

        Args:
            images: the normalised, padded batch ``[B, 3, Hp, Wp]``.
            features: the backbone's outputs on it.
            K: ``[B, 3, 3]`` intrinsics of the (unpadded) inputs, pixels, or None (a
                camera-aware depth head then assumes its default camera).

        Returns:
            dict: ``"sem_logits"`` ``[B, C, Hp, Wp]``; ``"depth"`` ``[B, Hp, Wp]`` metres;
            ``"instances"`` list of ``Instances`` in input-image pixels (``pred_boxes``,
            ``scores``, ``pred_classes``, ``pred_masks`` ``[N, 1, M, M]`` probabilities);
            each None when its branch is off. This is what :mod:`panoptic_curriculum.export`
            exports.
        """
        out = {"sem_logits": None, "depth": None, "instances": None}
        if self.sem_seg_head is not None:
            out["sem_logits"] = F.interpolate(
                self.sem_seg_head.layers(features),
                size=images.tensor.shape[-2:],
                mode="bilinear",
                align_corners=False,
            )
        if self.depth_head is not None:
            out["depth"] = self.depth_head(features, images.tensor.shape[-2:], K)
        if self.proposal_generator is not None:
            inst_features = self._instance_features(features)
            proposals, _ = self.proposal_generator(images, inst_features, None)
            out["instances"], _ = self.roi_heads(images, inst_features, proposals, None)
        return out

    @torch.no_grad()
    def inference(self, batched_inputs, images: ImageList, features):
        raw = self.predict_padded(images, features, self._optional_intrinsics(batched_inputs))
        sem_logits, depth, instances = raw["sem_logits"], raw["depth"], raw["instances"]
        point_out = None
        needs_k = self.point_head is not None and self.point_inference
        K = self._intrinsics(batched_inputs) if needs_k else None
        if needs_k:
            valid = self._image_mask(images)
            if self.no_surface_classes:  # e.g. sky: no surface to lift, never trained on
                no_surface = torch.as_tensor(self.no_surface_classes, device=self.device)
                valid &= ~torch.isin(channel_argmax(sem_logits), no_surface)
            point_out = self._point_branch(
                features, sem_logits, self._lifted_depth(depth), K, valid
            )

        results = []
        for i, (x, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            height, width = x.get("height", image_size[0]), x.get("width", image_size[1])
            r = postprocess_image(
                image_size=image_size,
                height=height,
                width=width,
                sem_logits=None if sem_logits is None else sem_logits[i],
                depth=None if depth is None else depth[i],
                instances=None if instances is None else instances[i],
                intrinsics=x.get("intrinsics"),
                thing_to_sem=self.thing_to_sem,
                overlap_threshold=self.panoptic_overlap_threshold,
                stuff_area_limit=self.panoptic_stuff_area_limit,
                score_threshold=self.panoptic_score_threshold,
                name=x.get("file_name", str(i)),
            )
            if point_out is not None:
                keep = point_out["point_valid"][i]
                uv = point_out["uv"][i][keep].to(torch.float32)
                sx, sy = width / image_size[1], height / image_size[0]
                r["point_cloud"] = {
                    "points": point_out["xyz"][i][keep],
                    "pixels": torch.stack(
                        [(uv[:, 0] + 0.5) * sx - 0.5, (uv[:, 1] + 0.5) * sy - 0.5], -1
                    ),
                    "labels_3d": point_out["logits_3d"][i][keep].argmax(-1),
                    "labels_2d": point_out["logits_2d"][i][keep].argmax(-1),
                }
            results.append(r)
        return results
