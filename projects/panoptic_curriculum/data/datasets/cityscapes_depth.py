"""Cityscapes (fine annotations) with stereo depth, as detectron2 datasets.

Registers ``cityscapes_fine_depth_train`` and ``cityscapes_fine_depth_val``, read from the
official Cityscapes layout under ``<root>/cityscapes/``::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png       RGB image
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   train ids, 255 ignore
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png     instance ids
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_polygons.json       polygons, image size
    disparity/<split>/<city>/<city>_<seq>_<frame>_disparity.png           16-bit disparity
    camera/<split>/<city>/<city>_<seq>_<frame>_camera.json                calibration
    gtFine/cityscapes_panoptic_<split>.json                               panoptic ground truth
    gtFine/cityscapes_panoptic_<split>/<city>_<seq>_<frame>_gtFine_panoptic.png

``leftImg8bit``, ``gtFine`` (polygons, labelIds, instanceIds), ``disparity`` and ``camera`` are
the official downloads; ``tools/prepare_cityscapes.py`` makes the ``labelTrainIds`` PNGs and
the panoptic files with cityscapesscripts' converters (see
:mod:`~panoptic_curriculum.data.datasets.cityscapes_prepare`). Instance annotations come
from detectron2's own Cityscapes loader (polygons from the JSON files; it needs
``cityscapesscripts`` and ``shapely``), panoptic ones from detectron2's Cityscapes panoptic
loader, where the panoptic JSON exists (it is needed for the panoptic evaluation only).

Each dataset dict holds detectron2's Cityscapes instance fields (``file_name``, ``height``,
``width``, ``annotations``), ``image_id`` ``"<city>_<seq>_<frame>"`` (the panoptic ground
truth's image id), ``sem_seg_file_name``, ``pan_seg_file_name`` and ``segments_info``
(``id``, ``category_id`` contiguous as the model predicts it: thing index for things, train id
for stuff, ``isthing``, ``iscrowd``, ...; when the panoptic JSON exists), and the depth
fields of :mod:`panoptic_curriculum.data.depth_io`:

* ``depth_file_name``: the disparity PNG, which stores ``p = disparity * 256 + 1`` with
  disparity in pixels, and ``p = 0`` for invalid pixels;
* ``depth_format``: ``"cityscapes_disparity"``; :func:`~panoptic_curriculum.data.read_depth`
  turns it into depth in metres as ``stereo_baseline * fx / disparity``;
* ``stereo_baseline``: the stereo baseline in metres (camera JSON ``extrinsic.baseline``);
* ``intrinsics``: ``[[fx, 0, u0], [0, fy, v0], [0, 0, 1]]`` in pixels (camera JSON
  ``intrinsic``), with the pixel convention of :mod:`panoptic_curriculum.geometry` (pixel
  centres at integer coordinates).

Registration only records paths: nothing is read until ``DatasetCatalog.get`` is called.
"""

import functools
import importlib.util
import json
import logging
import math
import os
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES, _get_builtin_metadata
from detectron2.data.datasets.cityscapes import (
    _cityscapes_files_to_dict,
    _get_cityscapes_files,
    load_cityscapes_instances,
    load_cityscapes_semantic,
)
from detectron2.data.datasets.cityscapes_panoptic import load_cityscapes_panoptic

from ...geometry import FOCAL_UNIT_HINT, MIN_FOCAL_PX

__all__ = [
    "CITYSCAPES_DEPTH_SPLITS",
    "cityscapes_depth_metadata",
    "default_panoptic_paths",
    "load_cityscapes_depth",
    "read_cityscapes_camera",
    "register_cityscapes_depth",
    "register_all_cityscapes_depth",
]

logger = logging.getLogger(__name__)

_IMAGE_SUFFIX = "_leftImg8bit.png"
_DISPARITY_SUFFIX = "_disparity.png"
_CAMERA_SUFFIX = "_camera.json"

#: dataset name -> (image_dir, gt_dir, disparity_dir, camera_dir), relative to the root
CITYSCAPES_DEPTH_SPLITS: Dict[str, Tuple[str, str, str, str]] = {
    f"cityscapes_fine_depth_{split}": (
        f"cityscapes/leftImg8bit/{split}",
        f"cityscapes/gtFine/{split}",
        f"cityscapes/disparity/{split}",
        f"cityscapes/camera/{split}",
    )
    for split in ("train", "val")
}


def read_cityscapes_camera(camera_file: str) -> Tuple[List[List[float]], float]:
    """Read a Cityscapes camera JSON.

    Args:
        camera_file: path of a ``*_camera.json`` file, holding
            ``{"extrinsic": {"baseline": ..., ...}, "intrinsic": {"fx", "fy", "u0", "v0"}}``.

    Returns:
        (K, baseline): ``K`` the 3x3 pinhole matrix ``[[fx, 0, u0], [0, fy, v0], [0, 0, 1]]``
        as nested lists of floats, in pixels; ``baseline`` the stereo baseline in metres.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file, for invalid JSON, a missing key, a non-numeric or
            non-finite value, a focal length below ``MIN_FOCAL_PX`` (1 pixel) or a
            non-positive baseline.
    """
    if not os.path.isfile(camera_file):
        raise FileNotFoundError(f"Cityscapes camera file not found: {camera_file}")
    try:
        with open(camera_file, "r") as f:
            cam = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot parse Cityscapes camera file {camera_file}: {e}") from e

    def number(section: str, key: str) -> float:
        try:
            value = cam[section][key]
        except (KeyError, TypeError):
            raise ValueError(
                f"Cityscapes camera file {camera_file} lacks '{section}.{key}'"
            ) from None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"Cityscapes camera file {camera_file}: '{section}.{key}' is not a number "
                f"({value!r})"
            ) from None
        if not math.isfinite(value):
            raise ValueError(
                f"Cityscapes camera file {camera_file}: '{section}.{key}' is not finite ({value})"
            )
        return value

    fx, fy = number("intrinsic", "fx"), number("intrinsic", "fy")
    u0, v0 = number("intrinsic", "u0"), number("intrinsic", "v0")
    baseline = number("extrinsic", "baseline")
    if fx < MIN_FOCAL_PX or fy < MIN_FOCAL_PX:
        raise ValueError(
            f"Cityscapes camera file {camera_file} needs focal lengths 'intrinsic.fx', "
            f"'intrinsic.fy' >= {MIN_FOCAL_PX} pixel, got fx={fx}, fy={fy}" + FOCAL_UNIT_HINT
        )
    if baseline <= 0:
        raise ValueError(
            f"Cityscapes camera file {camera_file} needs a positive stereo baseline (metres), "
            f"got {baseline}"
        )
    K = [[fx, 0.0, u0], [0.0, fy, v0], [0.0, 0.0, 1.0]]
    return K, baseline


def _check_has_images(image_dir: str) -> None:
    """Raise ``FileNotFoundError`` unless ``image_dir/<city>/`` holds a Cityscapes image."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"Cityscapes image folder not found: {image_dir}")
    for city in sorted(os.listdir(image_dir)):
        city_dir = os.path.join(image_dir, city)
        if os.path.isdir(city_dir) and any(n.endswith(_IMAGE_SUFFIX) for n in os.listdir(city_dir)):
            return
    raise FileNotFoundError(f"no Cityscapes images (<city>/*{_IMAGE_SUFFIX}) found in {image_dir}")


def _depth_fields(image_file: str, image_dir: str, disparity_dir: str, camera_dir: str) -> dict:
    """The depth fields of one image, after checking that its disparity file exists."""
    rel = os.path.relpath(image_file, image_dir)  # <city>/<stem>_leftImg8bit.png
    if not rel.endswith(_IMAGE_SUFFIX):
        raise ValueError(f"unexpected Cityscapes image name {image_file}")
    stem = rel[: -len(_IMAGE_SUFFIX)]
    disparity_file = os.path.join(disparity_dir, stem + _DISPARITY_SUFFIX)
    camera_file = os.path.join(camera_dir, stem + _CAMERA_SUFFIX)
    if not os.path.isfile(disparity_file):
        raise FileNotFoundError(
            f"Cityscapes disparity file not found: {disparity_file} (for image {image_file})"
        )
    K, baseline = read_cityscapes_camera(camera_file)
    return {
        "depth_file_name": disparity_file,
        "depth_format": "cityscapes_disparity",
        "stereo_baseline": baseline,
        "intrinsics": K,
    }


#: splits with fewer images convert their polygons in this process; larger ones through
#: detectron2's loader, whose pool of processes (each importing torch and detectron2 when
#: started by spawn, as in multi-process training) costs more than it saves on small splits
POOL_MIN_IMAGES = 256


def _load_instances(image_dir: str, gt_dir: str) -> List[dict]:
    """detectron2's Cityscapes instance dicts (polygons from the JSON files, contiguous thing
    ids): its own ``load_cityscapes_instances`` for large splits, the same per-image
    conversion in this process for small ones."""
    files = _get_cityscapes_files(image_dir, gt_dir)
    if len(files) >= POOL_MIN_IMAGES:
        return load_cityscapes_instances(image_dir, gt_dir, from_json=True, to_polygons=True)
    convert = functools.partial(_cityscapes_files_to_dict, from_json=True, to_polygons=True)
    dicts = [convert(f) for f in files]
    contiguous = cityscapes_depth_metadata()["thing_dataset_id_to_contiguous_id"]
    for d in dicts:
        for anno in d["annotations"]:
            anno["category_id"] = contiguous[anno["category_id"]]
    return dicts


def default_panoptic_paths(gt_dir: str) -> Tuple[str, str]:
    """(panoptic PNG folder, panoptic JSON) of the split whose ``gt_dir`` is
    ``<cityscapes>/gtFine/<split>``, where cityscapesscripts' ``createPanopticImgs`` writes
    them and detectron2's ``cityscapes_fine_panoptic_<split>`` reads them."""
    gt_dir = os.path.normpath(gt_dir)
    parent, split = os.path.dirname(gt_dir), os.path.basename(gt_dir)
    root = os.path.join(parent, f"cityscapes_panoptic_{split}")
    return root, root + ".json"


def _add_panoptic_fields(
    dicts: List[dict], image_dir: str, panoptic_root: str, panoptic_json: str
) -> None:
    """Add ``pan_seg_file_name`` and ``segments_info`` (contiguous ids, ``isthing``) to every
    dict, through detectron2's Cityscapes panoptic loader."""
    meta = cityscapes_depth_metadata()
    panoptic = load_cityscapes_panoptic(image_dir, panoptic_root, panoptic_json, meta)
    by_file = {p["file_name"]: p for p in panoptic}
    thing_ids = set(meta["thing_dataset_id_to_contiguous_id"])
    for d in dicts:
        p = by_file.get(d["file_name"])
        if p is None:
            raise FileNotFoundError(
                f"{panoptic_json} has no annotation of {d['file_name']}; remake the panoptic "
                "files with tools/prepare_cityscapes.py --overwrite"
            )
        for seg in p["segments_info"]:
            # the loader made category_id contiguous; the segment id keeps the label id:
            # label_id * 1000 + k for a thing instance, the bare label id otherwise
            label_id = seg["id"] // 1000 if seg["id"] >= 1000 else seg["id"]
            seg["isthing"] = label_id in thing_ids
        d["pan_seg_file_name"] = p["pan_seg_file_name"]
        d["segments_info"] = p["segments_info"]


def load_cityscapes_depth(
    image_dir: str,
    gt_dir: str,
    disparity_dir: str,
    camera_dir: str,
    panoptic_root: Optional[str] = None,
    panoptic_json: Optional[str] = None,
) -> List[dict]:
    """Load one Cityscapes split with instance, semantic, panoptic and depth annotations.

    Args:
        image_dir: e.g. ``<root>/cityscapes/leftImg8bit/train``.
        gt_dir: e.g. ``<root>/cityscapes/gtFine/train``; needs the ``*_gtFine_polygons.json``,
            ``*_gtFine_instanceIds.png`` and ``*_gtFine_labelTrainIds.png`` files.
        disparity_dir: e.g. ``<root>/cityscapes/disparity/train``.
        camera_dir: e.g. ``<root>/cityscapes/camera/train``.
        panoptic_root, panoptic_json: the panoptic PNG folder and JSON (default: beside
            ``gt_dir``, see :func:`default_panoptic_paths`); the panoptic fields are added
            when the JSON exists.

    Returns:
        detectron2 dataset dicts, sorted by ``file_name``: detectron2's Cityscapes instance
        dicts (polygons, ``XYXY_ABS`` boxes in pixels, contiguous thing category ids) with
        ``image_id`` ``"<city>_<seq>_<frame>"``, plus ``sem_seg_file_name``,
        ``depth_file_name``, ``depth_format`` (``"cityscapes_disparity"``),
        ``stereo_baseline`` (metres), ``intrinsics`` (3x3 nested list, pixels) and, with the
        panoptic JSON, ``pan_seg_file_name`` and ``segments_info``.

    Raises:
        FileNotFoundError: naming the path, for a missing image folder, an image folder
            without images, a missing disparity, camera or ``labelTrainIds`` file, or an
            image that the panoptic JSON lacks.
        ValueError: naming the camera file, for a malformed camera JSON, a focal length
            below 1 pixel or a non-positive baseline.
        ImportError: ``shapely`` (needed by detectron2's polygon loader) is not installed.

    Files are checked for existence only; disparity maps are decoded later, by
    :func:`panoptic_curriculum.data.read_depth`.
    """
    _check_has_images(image_dir)
    if panoptic_root is None or panoptic_json is None:
        default_root, default_json = default_panoptic_paths(gt_dir)
        panoptic_root = panoptic_root or default_root
        panoptic_json = panoptic_json or default_json

    # file_name, sem_seg_file_name, height, width (reads the polygon JSONs for the sizes)
    semantic = load_cityscapes_semantic(image_dir, gt_dir)
    extra: Dict[str, dict] = {}
    for d in semantic:
        image_file = d["file_name"]
        if not os.path.isfile(d["sem_seg_file_name"]):
            raise FileNotFoundError(
                f"Cityscapes semantic file not found: {d['sem_seg_file_name']} (make the "
                "*_gtFine_labelTrainIds.png files with tools/prepare_cityscapes.py)"
            )
        fields = _depth_fields(image_file, image_dir, disparity_dir, camera_dir)
        fields["sem_seg_file_name"] = d["sem_seg_file_name"]
        extra[image_file] = fields

    if importlib.util.find_spec("shapely") is None:
        raise ImportError(
            "loading Cityscapes polygons with detectron2 needs the 'shapely' package; "
            "install it with `pip install shapely`"
        )
    instances = _load_instances(image_dir, gt_dir)

    dicts = []
    for d in instances:
        if d["file_name"] not in extra:
            raise RuntimeError(
                f"{d['file_name']} was listed by the instance loader but not by the semantic one"
            )
        d.update(extra.pop(d["file_name"]))
        # <city>_<seq>_<frame>: the image id of the panoptic ground truth
        d["image_id"] = os.path.basename(d["file_name"])[: -len(_IMAGE_SUFFIX)]
        dicts.append(d)
    if extra:
        raise RuntimeError(
            f"{len(extra)} images have no instance annotations, e.g. {next(iter(extra))}"
        )
    dicts.sort(key=lambda d: d["file_name"])
    if os.path.isfile(panoptic_json):
        _add_panoptic_fields(dicts, image_dir, panoptic_root, panoptic_json)
    logger.info(f"Loaded {len(dicts)} Cityscapes images with depth from {image_dir}")
    return dicts


def cityscapes_depth_metadata() -> dict:
    """Metadata shared by the Cityscapes-with-depth splits: the 8 thing and 19 stuff classes
    (train-id order) with their colours, and for the panoptic evaluation the maps from
    Cityscapes label ids to the model's contiguous ids (thing index for things, train id for
    the 11 stuff classes) and ``label_divisor`` 1000."""
    from cityscapesscripts.helpers.labels import name2label

    meta = dict(_get_builtin_metadata("cityscapes"))
    by_name = {c["name"]: c for c in CITYSCAPES_CATEGORIES}
    meta["thing_colors"] = [by_name[n]["color"] for n in meta["thing_classes"]]
    meta["stuff_colors"] = [by_name[n]["color"] for n in meta["stuff_classes"]]
    things = meta["thing_classes"]
    meta["thing_dataset_id_to_contiguous_id"] = {name2label[n].id: i for i, n in enumerate(things)}
    meta["stuff_dataset_id_to_contiguous_id"] = {
        name2label[n].id: name2label[n].trainId for n in meta["stuff_classes"] if n not in things
    }
    meta["label_divisor"] = 1000
    return meta


def register_cityscapes_depth(
    name: str,
    image_dir: str,
    gt_dir: str,
    disparity_dir: str,
    camera_dir: str,
    panoptic_root: Optional[str] = None,
    panoptic_json: Optional[str] = None,
) -> None:
    """Register one Cityscapes-with-depth split under ``name`` (lazily: no disk access).

    The dataset loads with :func:`load_cityscapes_depth`; its metadata has
    :func:`cityscapes_depth_metadata`, ``image_dir``, ``gt_dir``, ``disparity_dir``,
    ``camera_dir``, ``panoptic_root`` and ``panoptic_json`` (default: beside ``gt_dir``),
    ``ignore_label=255``, ``evaluator_type="cityscapes_depth"`` (Cityscapes semantic and
    instance evaluation, panoptic quality with detectron2's COCOPanopticEvaluator, and depth
    evaluation) and ``has_depth=True``. A name that is already registered is left as it is.
    """
    if name in DatasetCatalog.list():
        logger.debug(f"dataset {name} is already registered; keeping the existing entry")
        return
    if panoptic_root is None or panoptic_json is None:
        default_root, default_json = default_panoptic_paths(gt_dir)
        panoptic_root = panoptic_root or default_root
        panoptic_json = panoptic_json or default_json
    DatasetCatalog.register(
        name,
        lambda i=image_dir, g=gt_dir, p=disparity_dir, c=camera_dir, r=panoptic_root, j=(
            panoptic_json
        ): load_cityscapes_depth(i, g, p, c, r, j),
    )
    MetadataCatalog.get(name).set(
        image_dir=image_dir,
        gt_dir=gt_dir,
        disparity_dir=disparity_dir,
        camera_dir=camera_dir,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        evaluator_type="cityscapes_depth",
        ignore_label=255,
        has_depth=True,
        **cityscapes_depth_metadata(),
    )


def register_all_cityscapes_depth(root: str) -> None:
    """Register ``cityscapes_fine_depth_train`` and ``cityscapes_fine_depth_val`` under
    ``<root>/cityscapes/`` (see the module docstring for the layout). Touches no file;
    calling it again (e.g. on re-import) skips the names already registered."""
    for name, dirs in CITYSCAPES_DEPTH_SPLITS.items():
        register_cityscapes_depth(name, *(os.path.join(root, d) for d in dirs))
