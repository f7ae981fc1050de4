"""NYUD-v2 (NYU Depth V2, labelled part) in the layout the multi-task papers use (MTI-Net,
ATRC, InvPT: the "NYUD_MT" archive), as detectron2 datasets.

Registers ``nyud_v2_train`` (795 images) and ``nyud_v2_val`` (654 images, the standard test
split) under ``<root>/NYUD_MT/`` (root: ``$DETECTRON2_DATASETS``, default ``./datasets``)::

    images/<stem>.jpg                  RGB image (.png also accepted)
    segmentation/<stem>.png            40-class labels: 0 = void, 1..40 = classes
    depth/<stem>.npy                   float depth in metres, (H, W) or (H, W, 1), 0 = invalid
    gt_sets/train.txt, gt_sets/val.txt one <stem> per line
    segmentation_detectron2/<stem>.png made by tools/prepare_nyud.py: class k -> k - 1,
                                       void -> 255 (detectron2's semantic convention)

(The archive's ``edge/`` and ``normals/`` folders are not used.) There are no instance
annotations: the NYUD-v2 config trains the semantic stage only (semantic head, depth head,
point branch); an instance stage needs an instance dataset named in
``CURRICULUM.INSTANCE_DATASETS``.

Intrinsics are the Kinect RGB camera's from the NYU Depth V2 toolbox (``camera_params.m``:
fx = 518.857901, fy = 519.469611, cx = 325.582449, cy = 253.736166, for the 640x480 frame),
adapted to the image size found on disk: a uniform rescaling of 640x480 scales K; the common
561x427 crop (rows 44-470, columns 40-600 of the frame) shifts the principal point; any
other size is an error that asks for explicit intrinsics (:func:`nyud_intrinsics`).
"""

import logging
import os
import shutil
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.colormap import colormap

from .rgbd import load_rgbd_dataset

__all__ = [
    "NYUD_CLASSES",
    "NYUD_SPLITS",
    "NYUD_KINECT_INTRINSICS",
    "NYUD_CROPS",
    "nyud_intrinsics",
    "convert_nyud_label",
    "prepare_nyud_labels",
    "load_nyud",
    "register_nyud",
    "register_all_nyud",
]

logger = logging.getLogger(__name__)

#: the 40 classes of Gupta et al. (CVPR 2013), in label order 1..40 (contiguous ids 0..39)
NYUD_CLASSES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser",
    "pillow", "mirror", "floor mat", "clothes", "ceiling", "books", "refridgerator",
    "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person",
    "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
]  # fmt: skip

#: dataset name -> split file stem (gt_sets/<split>.txt)
NYUD_SPLITS = {"nyud_v2_train": "train", "nyud_v2_val": "val"}

#: Kinect RGB intrinsics for the full 640x480 frame, pixels (NYU Depth V2 toolbox)
NYUD_KINECT_INTRINSICS = dict(fx=518.857901, fy=519.469611, cx=325.582449, cy=253.736166)
_FRAME = (640, 480)  # width, height
#: (width, height) of known crops of the 640x480 frame -> (x0, y0) of their top-left pixel
NYUD_CROPS: Dict[Tuple[int, int], Tuple[int, int]] = {(561, 427): (40, 44)}

_PREPARED = "segmentation_detectron2"
_IMAGE_EXTS = (".jpg", ".png")


def nyud_intrinsics(width: int, height: int) -> List[List[float]]:
    """The Kinect K (pixels) for a NYUD-v2 image of ``width x height``.

    640x480 gives the toolbox's K; a uniform rescaling of 640x480 (e.g. 320x240) scales it
    with pixel centres kept at integer coordinates (``c' = (c + 0.5) s - 0.5``); a crop in
    :data:`NYUD_CROPS` shifts the principal point by the crop's offset.

    Raises:
        ValueError: any other size (pass explicit intrinsics for such data, e.g. with
            ``register_rgbd_dataset``).
    """
    k = NYUD_KINECT_INTRINSICS
    fx, fy, cx, cy = k["fx"], k["fy"], k["cx"], k["cy"]
    if (width, height) in NYUD_CROPS:
        x0, y0 = NYUD_CROPS[(width, height)]
        cx, cy = cx - x0, cy - y0
    elif width * _FRAME[1] == height * _FRAME[0]:
        s = width / _FRAME[0]
        fx, fy = fx * s, fy * s
        cx, cy = (cx + 0.5) * s - 0.5, (cy + 0.5) * s - 0.5
    else:
        raise ValueError(
            f"NYUD-v2 image of {width}x{height} pixels is neither a rescaled 640x480 frame nor "
            f"a known crop ({', '.join(f'{w}x{h}' for w, h in NYUD_CROPS)}): its intrinsics are "
            "unknown; register the data with register_rgbd_dataset(..., intrinsics=K)"
        )
    return [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]


def _read_split(root: str, split: str) -> List[str]:
    path = os.path.join(root, "gt_sets", split + ".txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"NYUD-v2 split file not found: {path}")
    with open(path) as f:
        stems = [line.strip() for line in f if line.strip()]
    if not stems:
        raise ValueError(f"NYUD-v2 split file {path} lists no images")
    return stems


def _image_name(root: str, stem: str) -> str:
    for ext in _IMAGE_EXTS:
        if os.path.isfile(os.path.join(root, "images", stem + ext)):
            return stem + ext
    raise FileNotFoundError(
        f"NYUD-v2 image not found: {os.path.join(root, 'images', stem)}"
        f"{{{','.join(_IMAGE_EXTS)}}}"
    )


def convert_nyud_label(label: np.ndarray, num_classes: int = 40) -> np.ndarray:
    """NYUD-v2 labels (0 void, 1..40) -> detectron2's convention (0..39, 255 ignore).

    Raises:
        ValueError: a value above ``num_classes``.
    """
    label = np.asarray(label)
    if label.size and int(label.max()) > num_classes:
        raise ValueError(f"label {int(label.max())} is above the {num_classes} NYUD-v2 classes")
    return np.where(label == 0, 255, label.astype(np.int64) - 1).astype(np.uint8)


def prepare_nyud_labels(root: str, overwrite: bool = False) -> str:
    """Write ``<root>/segmentation_detectron2/`` from ``<root>/segmentation/`` (see the module
    docstring); the folder appears complete or not at all. Returns its path.

    Raises:
        FileNotFoundError: ``segmentation/`` is missing or holds no PNG.
        ValueError: naming the file, for a label PNG that is not single-channel or holds a
            value above 40.
    """
    src, dst = os.path.join(root, "segmentation"), os.path.join(root, _PREPARED)
    if os.path.isdir(dst) and not overwrite:
        logger.info("%s exists; leaving it (overwrite=True to redo it)", dst)
        return dst
    if not os.path.isdir(src):
        raise FileNotFoundError(f"NYUD-v2 label folder not found: {src}")
    names = sorted(n for n in os.listdir(src) if n.endswith(".png"))
    if not names:
        raise FileNotFoundError(f"no label PNGs in {src}")
    tmp = f"{dst}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for n in names:
        path = os.path.join(src, n)
        with Image.open(path) as im:
            label = np.asarray(im)
        if label.ndim != 2:
            raise ValueError(f"NYUD-v2 label {path} must be single-channel, got {label.shape}")
        try:
            out = convert_nyud_label(label)
        except ValueError as e:
            raise ValueError(f"NYUD-v2 label {path}: {e}") from None
        Image.fromarray(out).save(os.path.join(tmp, n))
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    logger.info("Wrote %d label PNGs to %s", len(names), dst)
    return dst


def load_nyud(root: str, split: str, name: Optional[str] = None) -> List[dict]:
    """Dataset dicts of one NYUD-v2 split: ``file_name``, ``image_id``, ``height``,
    ``width``, ``sem_seg_file_name`` (prepared labels), ``depth_file_name`` +
    ``depth_format`` ("npy_m") and ``intrinsics`` (Kinect K for the image's size).

    Raises:
        FileNotFoundError: naming the path, for a missing split file, image, depth file or
            prepared label (with the command that makes the labels).
        ValueError: an image size whose intrinsics are unknown.
    """
    seg = os.path.join(root, _PREPARED)
    if not os.path.isdir(seg):
        raise FileNotFoundError(
            f"{seg} not found: make the detectron2-convention labels once with "
            f"`python tools/prepare_nyud.py --root {root}`"
        )
    names = [_image_name(root, s) for s in _read_split(root, split)]
    dicts = load_rgbd_dataset(
        name or f"nyud_v2_{split}",
        os.path.join(root, "images"),
        image_names=names,
        depth_root=os.path.join(root, "depth"),
        depth_format="npy_m",
        sem_seg_root=seg,
    )
    for d in dicts:
        d["intrinsics"] = nyud_intrinsics(d["width"], d["height"])
    return dicts


def _nyud_metadata(root: str) -> Dict:
    colors = colormap(rgb=True, maximum=255).astype(int).tolist()
    return dict(
        image_root=os.path.join(root, "images"),
        sem_seg_root=os.path.join(root, _PREPARED),
        stuff_classes=list(NYUD_CLASSES),
        stuff_colors=[colors[i % len(colors)] for i in range(len(NYUD_CLASSES))],
        ignore_label=255,
        evaluator_type="sem_seg",
        has_depth=True,
        depth_format="npy_m",
        labels=["depth", "intrinsics", "sem_seg"],
    )


def register_nyud(name: str, root: str, split: str) -> None:
    """Register NYUD-v2 split ``split`` ("train" or "val", a ``gt_sets/<split>.txt``) of the
    NYUD_MT folder ``root`` as ``name`` (lazily: no disk access). Metadata: the 40 classes as
    ``stuff_classes``, ``ignore_label=255``, ``evaluator_type="sem_seg"`` (semantic
    evaluation) and ``has_depth=True`` (depth evaluation). A registered name is kept."""
    if name in DatasetCatalog.list():
        return
    DatasetCatalog.register(
        name, lambda root=root, split=split, name=name: load_nyud(root, split, name)
    )
    MetadataCatalog.get(name).set(**_nyud_metadata(root))


def register_all_nyud(root: str) -> None:
    """Register ``nyud_v2_train`` and ``nyud_v2_val`` under ``<root>/NYUD_MT``."""
    for name, split in NYUD_SPLITS.items():
        register_nyud(name, os.path.join(root, "NYUD_MT"), split)
