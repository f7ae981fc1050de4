"""Dataset mapper for RGB-D panoptic data: image, semantic labels, instances, metric depth
and camera intrinsics, augmented together."""

import copy
import logging
import numbers
from typing import List, Optional, Union

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .augmentations import build_extra_train_augmentation
from .depth_io import read_depth, read_image, read_intrinsics
from .transforms import transform_depth, transform_intrinsics

__all__ = ["RGBDDatasetMapper", "build_rgbd_augmentation", "check_label_range"]

logger = logging.getLogger(__name__)


def build_rgbd_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """detectron2's resize (``INPUT.MIN_SIZE_*``/``MAX_SIZE_*``) and flip augmentations, with
    at training time a random crop of ``INPUT.CROP.SIZE`` *after* the resize when
    ``INPUT.CROP.ENABLED`` (category-area constrained when
    ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA < 1``): resize, crop, flip, as DeepLab trains, so
    that the crop size is the size of the training tensors. (detectron2's own
    ``build_augmentation`` crops first, which makes the crop a region of the original image
    and leaves the tensor size to the resize.) At training time the camera (zoom)
    and photometric augmentations of ``INPUT.CAMERA_AUG`` / ``INPUT.PHOTOMETRIC`` follow
    when enabled (see :mod:`.augmentations`)."""
    augs = utils.build_augmentation(cfg, is_train)
    if is_train and cfg.INPUT.CROP.ENABLED:
        max_area = cfg.INPUT.CROP.get("SINGLE_CATEGORY_MAX_AREA", 1.0)
        if max_area < 1.0:
            crop = T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                max_area,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        else:
            crop = T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE)
        resizes = [i for i, a in enumerate(augs) if isinstance(a, T.ResizeShortestEdge)]
        augs.insert(resizes[-1] + 1 if resizes else 0, crop)
    if is_train:
        augs += build_extra_train_augmentation(cfg)
    return augs


def check_label_range(labels: np.ndarray, num_classes: int, ignore_value: int, source: str) -> None:
    """Raise ``ValueError`` naming ``source`` unless every value of ``labels`` is a class id
    in ``[0, num_classes)`` or ``ignore_value``.

    Args:
        labels: ``[H, W]`` integer label map (any integer dtype).
        num_classes: ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``.
        ignore_value: ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``.
        source: the label file, for the message.

    Costs a few vectorised passes over the map (no per-pixel Python work); the offending
    values are only collected when there are some.
    """
    bad = (labels >= num_classes) & (labels != ignore_value)
    if np.issubdtype(labels.dtype, np.signedinteger):
        bad |= (labels < 0) & (labels != ignore_value)
    if not bad.any():
        return
    values = np.unique(labels[bad])
    shown = ", ".join(str(int(v)) for v in values[:10]) + (", ..." if len(values) > 10 else "")
    raise ValueError(
        f"label file {source} holds values [{shown}] ({int(bad.sum())} pixels); allowed: class "
        f"ids in [0, {num_classes}) (MODEL.SEM_SEG_HEAD.NUM_CLASSES = {num_classes}) or the "
        f"ignore value MODEL.SEM_SEG_HEAD.IGNORE_VALUE = {ignore_value}"
    )


class RGBDDatasetMapper:
    """Map a dataset dict to the model's input dict.

    Output keys (those whose source is present in the dataset dict):

    * ``"image"``: ``[3, H, W]`` uint8 tensor in ``image_format`` channel order;
    * ``"sem_seg"``: ``[H, W]`` int64 class ids, ``ignore_label`` where unlabelled;
    * ``"instances"``: detectron2 ``Instances`` with ``gt_boxes``, ``gt_classes``,
      ``gt_masks`` (training only, as detectron2's DatasetMapper);
    * ``"depth"``: ``[H, W]`` float32 metres, 0 invalid;
    * ``"intrinsics"``: ``[3, 3]`` float32 pixel-unit K of the *augmented* image.

    Every augmentation is applied to image, labels, masks and depth alike, and updates K
    (see :mod:`panoptic_curriculum.data.transforms`). The input dict is deep-copied, and
    annotations are dropped at inference.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str = "BGR",
        use_depth: bool = True,
        min_depth: float = 1e-3,
        max_depth: float = float("inf"),
        missing_depth: str = "error",
        instance_mask_format: str = "bitmask",
        recompute_boxes: bool = False,
        num_classes: Optional[int] = None,
        ignore_label: int = 255,
        num_thing_classes: Optional[int] = None,
    ):
        """
        Args:
            is_train: training mode (keep annotations and build ``Instances``).
            augmentations: detectron2 augmentations, applied in order.
            image_format: channel order passed to ``read_image`` ("BGR", "RGB", ...).
            use_depth: load ``"depth"`` and ``"intrinsics"``.
            min_depth, max_depth: depths outside this range (metres) are set to 0.
            missing_depth: "error" raises for a sample without depth or intrinsics;
                "skip" returns it without them.
            instance_mask_format: "bitmask" or "polygon".
            recompute_boxes: recompute ``gt_boxes`` from the masks (after cropping).
            num_classes: when given, every semantic label must be a class id in
                ``[0, num_classes)`` or ``ignore_label``; other values raise naming the
                label file (None: not checked).
            ignore_label: the label value of unlabelled pixels.
            num_thing_classes: when given, every instance's ``category_id`` must lie in
                ``[0, num_thing_classes)`` (None: not checked).
        """
        if missing_depth not in ("error", "skip"):
            raise ValueError(
                f"INPUT.DEPTH.MISSING must be 'error' or 'skip', got {missing_depth!r}"
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.use_depth = use_depth
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.missing_depth = missing_depth
        self.instance_mask_format = instance_mask_format
        self.recompute_boxes = recompute_boxes
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.num_thing_classes = num_thing_classes
        mode = "training" if is_train else "inference"
        logger.info(f"[RGBDDatasetMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "augmentations": build_rgbd_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "use_depth": cfg.INPUT.DEPTH.ENABLED,
            "min_depth": cfg.INPUT.DEPTH.MIN_DEPTH,
            "max_depth": cfg.INPUT.DEPTH.MAX_DEPTH,
            "missing_depth": cfg.INPUT.DEPTH.MISSING,
            "instance_mask_format": cfg.INPUT.MASK_FORMAT,
            "recompute_boxes": is_train
            and (cfg.INPUT.CROP.ENABLED or cfg.INPUT.CAMERA_AUG.ENABLED),
            "num_classes": (
                cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
                if cfg.MODEL.PANOPTIC_CURRICULUM.SEM_SEG_ON
                else None
            ),
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "num_thing_classes": (
                cfg.MODEL.ROI_HEADS.NUM_CLASSES
                if cfg.MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON
                else None
            ),
        }

    def _read_depth_and_k(self, d: dict):
        """Depth (metres) and K (pixels) of ``d``, each None when absent and allowed."""
        missing = [k for k in ("depth_file_name", "intrinsics") if k not in d]
        if missing and self.missing_depth == "error":
            raise KeyError(
                f"sample {d.get('file_name')} has no {' or '.join(missing)}; set "
                "INPUT.DEPTH.MISSING 'skip' (or INPUT.DEPTH.ENABLED False) for datasets "
                "without depth"
            )
        depth = read_depth(d, self.min_depth, self.max_depth) if "depth_file_name" in d else None
        K = read_intrinsics(d) if "intrinsics" in d else None
        return depth, K

    def _check_categories(self, d: dict) -> None:
        """Raise naming the image unless every (non-crowd) annotation's ``category_id`` is a
        thing class id of the model."""
        if self.num_thing_classes is None:
            return
        n = self.num_thing_classes
        ids = {a.get("category_id") for a in d["annotations"] if a.get("iscrowd", 0) == 0}
        bad = sorted(
            (c for c in ids if not (isinstance(c, numbers.Integral) and 0 <= c < n)), key=repr
        )
        if bad:
            raise ValueError(
                f"annotations of {d.get('file_name')} have category_id {bad}; allowed: "
                f"contiguous thing class ids in [0, {n}) (MODEL.ROI_HEADS.NUM_CLASSES = {n})"
            )

    def __call__(self, dataset_dict: dict) -> dict:
        d = copy.deepcopy(dataset_dict)
        image = read_image(d["file_name"], format=self.image_format)
        utils.check_image_size(d, image)
        sem_seg: Optional[np.ndarray] = None
        if "sem_seg_file_name" in d:
            sem_seg = read_image(d["sem_seg_file_name"], "L").squeeze(2)
            if sem_seg.shape != image.shape[:2]:
                raise ValueError(
                    f"{d['sem_seg_file_name']} is {sem_seg.shape[1]}x{sem_seg.shape[0]} but "
                    f"{d['file_name']} is {image.shape[1]}x{image.shape[0]}"
                )
            if self.num_classes is not None:
                check_label_range(
                    sem_seg, self.num_classes, self.ignore_label, d["sem_seg_file_name"]
                )
        depth, K = self._read_depth_and_k(d) if self.use_depth else (None, None)

        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            d["sem_seg"] = torch.as_tensor(sem_seg.astype("long"))
        if depth is not None:
            d["depth"] = torch.from_numpy(transform_depth(transforms, depth))
        # the dataset's K describes the un-augmented image: replace it, never pass it on
        d.pop("intrinsics", None)
        if K is not None:
            d["intrinsics"] = torch.as_tensor(
                transform_intrinsics(transforms, K), dtype=torch.float32
            )

        if not self.is_train:
            d.pop("annotations", None)
            return d
        if "annotations" in d:
            self._check_categories(d)
            annos = [
                utils.transform_instance_annotations(obj, transforms, image_shape)
                for obj in d.pop("annotations")
                if obj.get("iscrowd", 0) == 0
            ]
            instances = utils.annotations_to_instances(
                annos, image_shape, mask_format=self.instance_mask_format
            )
            if self.recompute_boxes and instances.has("gt_masks"):
                instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
            d["instances"] = utils.filter_empty_instances(instances)
        return d
