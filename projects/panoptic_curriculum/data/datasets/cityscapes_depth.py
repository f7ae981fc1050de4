"""Cityscapes (fine annotations) with stereo depth, as detectron2 datasets.

Registers ``cityscapes_fine_depth_train`` and ``cityscapes_fine_depth_val``, read from the
official Cityscapes layout under ``<root>/cityscapes/``::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png       RGB image
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   train ids, 255 ignore
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png     instance ids
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_polygons.json       polygons, image size
    disparity/<split>/<city>/<city>_<seq>_<frame>_disparity.png           16-bit disparity
    camera/<split>/<city>/<city>_<seq>_<frame>_camera.json                calibration

``*_gtFine_labelTrainIds.png`` is produced by cityscapesscripts'
``createTrainIdLabelImgs``. Instance annotations come from detectron2's own Cityscapes
loader (polygons from the JSON files; it needs ``cityscapesscripts`` and ``shapely``).

Each dataset dict holds detectron2's Cityscapes instance fields (``file_name``,
``image_id``, ``height``, ``width``, ``annotations``), ``sem_seg_file_name``, and the depth
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

import importlib.util
import json
import logging
import math
import os
from typing import Dict, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES, _get_builtin_metadata
from detectron2.data.datasets.cityscapes import load_cityscapes_instances, load_cityscapes_semantic

from ...geometry import FOCAL_UNIT_HINT, MIN_FOCAL_PX

__all__ = [
    "CITYSCAPES_DEPTH_SPLITS",
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


def load_cityscapes_depth(
    image_dir: str, gt_dir: str, disparity_dir: str, camera_dir: str
) -> List[dict]:
    """Load one Cityscapes split with instance, semantic and depth annotations.

    Args:
        image_dir: e.g. ``<root>/cityscapes/leftImg8bit/train``.
        gt_dir: e.g. ``<root>/cityscapes/gtFine/train``; needs the ``*_gtFine_polygons.json``,
            ``*_gtFine_instanceIds.png`` and ``*_gtFine_labelTrainIds.png`` files.
        disparity_dir: e.g. ``<root>/cityscapes/disparity/train``.
        camera_dir: e.g. ``<root>/cityscapes/camera/train``.

    Returns:
        detectron2 dataset dicts, sorted by ``file_name``: detectron2's Cityscapes instance
        dicts (polygons, ``XYXY_ABS`` boxes in pixels, contiguous thing category ids) plus
        ``sem_seg_file_name``, ``depth_file_name``, ``depth_format`` (``"cityscapes_disparity"``),
        ``stereo_baseline`` (metres) and ``intrinsics`` (3x3 nested list, pixels).

    Raises:
        FileNotFoundError: naming the path, for a missing image folder, an image folder
            without images, or a missing disparity, camera or ``labelTrainIds`` file.
        ValueError: naming the camera file, for a malformed camera JSON, a focal length
            below 1 pixel or a non-positive baseline.
        ImportError: ``shapely`` (needed by detectron2's polygon loader) is not installed.

    Files are checked for existence only; disparity maps are decoded later, by
    :func:`panoptic_curriculum.data.read_depth`.
    """
    _check_has_images(image_dir)

    # file_name, sem_seg_file_name, height, width (reads the polygon JSONs for the sizes)
    semantic = load_cityscapes_semantic(image_dir, gt_dir)
    extra: Dict[str, dict] = {}
    for d in semantic:
        image_file = d["file_name"]
        if not os.path.isfile(d["sem_seg_file_name"]):
            raise FileNotFoundError(
                f"Cityscapes semantic file not found: {d['sem_seg_file_name']} (generate the "
                "*_gtFine_labelTrainIds.png files with cityscapesscripts' createTrainIdLabelImgs)"
            )
        fields = _depth_fields(image_file, image_dir, disparity_dir, camera_dir)
        fields["sem_seg_file_name"] = d["sem_seg_file_name"]
        extra[image_file] = fields

    if importlib.util.find_spec("shapely") is None:
        raise ImportError(
            "loading Cityscapes polygons with detectron2 needs the 'shapely' package; "
            "install it with `pip install shapely`"
        )
    instances = load_cityscapes_instances(image_dir, gt_dir, from_json=True, to_polygons=True)

    dicts = []
    for d in instances:
        if d["file_name"] not in extra:
            raise RuntimeError(
                f"{d['file_name']} was listed by the instance loader but not by the semantic one"
            )
        d.update(extra.pop(d["file_name"]))
        dicts.append(d)
    if extra:
        raise RuntimeError(
            f"{len(extra)} images have no instance annotations, e.g. {next(iter(extra))}"
        )
    dicts.sort(key=lambda d: d["file_name"])
    logger.info(f"Loaded {len(dicts)} Cityscapes images with depth from {image_dir}")
    return dicts


def _cityscapes_metadata() -> dict:
    meta = dict(_get_builtin_metadata("cityscapes"))
    by_name = {c["name"]: c for c in CITYSCAPES_CATEGORIES}
    meta["thing_colors"] = [by_name[n]["color"] for n in meta["thing_classes"]]
    meta["stuff_colors"] = [by_name[n]["color"] for n in meta["stuff_classes"]]
    return meta


def register_cityscapes_depth(
    name: str, image_dir: str, gt_dir: str, disparity_dir: str, camera_dir: str
) -> None:
    """Register one Cityscapes-with-depth split under ``name`` (lazily: no disk access).

    The dataset loads with :func:`load_cityscapes_depth`; its metadata has the Cityscapes
    thing/stuff classes and colours, ``image_dir``, ``gt_dir``, ``disparity_dir``,
    ``camera_dir``, ``ignore_label=255``, ``evaluator_type="cityscapes_depth"`` (Cityscapes
    instance and semantic evaluation plus depth evaluation) and ``has_depth=True``.
    A name that is already registered is left as it is.
    """
    if name in DatasetCatalog.list():
        logger.debug(f"dataset {name} is already registered; keeping the existing entry")
        return
    DatasetCatalog.register(
        name,
        lambda i=image_dir, g=gt_dir, p=disparity_dir, c=camera_dir: load_cityscapes_depth(
            i, g, p, c
        ),
    )
    MetadataCatalog.get(name).set(
        image_dir=image_dir,
        gt_dir=gt_dir,
        disparity_dir=disparity_dir,
        camera_dir=camera_dir,
        evaluator_type="cityscapes_depth",
        ignore_label=255,
        has_depth=True,
        **_cityscapes_metadata(),
    )


def register_all_cityscapes_depth(root: str) -> None:
    """Register ``cityscapes_fine_depth_train`` and ``cityscapes_fine_depth_val`` under
    ``<root>/cityscapes/`` (see the module docstring for the layout). Touches no file;
    calling it again (e.g. on re-import) skips the names already registered."""
    for name, dirs in CITYSCAPES_DEPTH_SPLITS.items():
        register_cityscapes_depth(name, *(os.path.join(root, d) for d in dirs))
