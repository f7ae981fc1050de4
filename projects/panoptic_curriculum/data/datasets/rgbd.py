"""Your own RGB-D dataset in one call: :func:`register_rgbd_dataset`.

Every path is an argument; each label source may be left out (a dataset with partial labels
trains every branch whose labels it has, see :mod:`panoptic_curriculum.data.labels`)::

    <image_root>/<name>                  images (.jpg/.png/...; sub-folders allowed)
    <instances_json>                     COCO instances: "images" (file_name relative to
                                         image_root, height, width), "annotations" (polygons
                                         or RLE), "categories" (the thing classes)
    <depth_root>/<stem><ext>             depth, one file per image, in any registered depth
                                         format (DEPTH_DECODERS: "png_mm" = uint16 mm PNG,
                                         "npy_m" = float metres .npy, ...); 0 = invalid
    intrinsics                           one 3x3 K (pixels) for every image; or a folder of
                                         per-image <stem>.json; or one JSON file keyed by
                                         image name (see _camera_matrix for the forms)
    <sem_seg_root>/<stem>.png            semantic labels, uint8 contiguous ids 0..C-1 of
                                         ``stuff_classes``, 255 = ignore
    <panoptic_json>, <panoptic_root>/    COCO panoptic (PNG id = R + 256 G + 256^2 B)

``<stem>`` is the image's path relative to ``image_root`` without its extension. With an
instances JSON the images are the JSON's; without one, ``image_names`` or every image file
under ``image_root`` (sorted). Registration reads only the JSON files' categories (for the
class metadata); every image's files are listed and checked when the dataset is loaded.

Python files that register datasets can be named in the environment variable
``PANOPTIC_CURRICULUM_DATASETS`` (``os.pathsep``-separated) so that every tool and every
training process runs them (:func:`run_registration_files`, called by ``load_config``). Not in
a config: a config file someone hands you never runs code.
"""

import json
import logging
import os
import runpy
from collections.abc import Mapping
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.utils.colormap import colormap

from ..depth_io import DEPTH_DECODERS, DEPTH_FILE_EXTENSIONS, read_intrinsics
from .label_subsets import evaluator_type_for_labels

__all__ = [
    "register_rgbd_dataset",
    "load_rgbd_dataset",
    "rgbd_metadata",
    "REGISTRATION_ENV",
    "run_registration_files",
    "IMAGE_EXTENSIONS",
]

logger = logging.getLogger(__name__)

#: file extensions listed as images when no instances JSON or image list is given
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

Intrinsics = Union[None, str, Sequence[Sequence[float]], np.ndarray, Mapping]


def _palette(n: int) -> List[List[int]]:
    colors = colormap(rgb=True, maximum=255).astype(int).tolist()
    return [colors[i % len(colors)] for i in range(n)]


def _read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"cannot parse {what} {path}: {e}") from e


def _camera_matrix(obj, where: str) -> List[List[float]]:
    """A validated 3x3 K (pixels) from ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``,
    ``{"K": <that>}`` or ``{"fx": .., "fy": .., "cx": .., "cy": ..}``; errors name ``where``."""
    if isinstance(obj, Mapping):
        if "K" in obj:
            obj = obj["K"]
        elif all(k in obj for k in ("fx", "fy", "cx", "cy")):
            obj = [[obj["fx"], 0.0, obj["cx"]], [0.0, obj["fy"], obj["cy"]], [0.0, 0.0, 1.0]]
        else:
            raise ValueError(
                f"{where}: camera must be a 3x3 matrix, {{'K': 3x3}} or "
                f"{{'fx', 'fy', 'cx', 'cy'}}; got keys {sorted(obj)}"
            )
    try:
        K = read_intrinsics({"intrinsics": np.asarray(obj, dtype=np.float64), "file_name": where})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: not a valid 3x3 camera matrix ({e})") from None
    return K.tolist()


def _is_single_camera(obj) -> bool:
    return isinstance(obj, Mapping) and (
        "K" in obj or all(k in obj for k in ("fx", "fy", "cx", "cy"))
    )


def _intrinsics_lookup(intrinsics: Intrinsics) -> Optional[Callable[[str], List[List[float]]]]:
    """``K_of(image name relative to image_root)``, or None without intrinsics."""
    if intrinsics is None:
        return None
    if isinstance(intrinsics, str):
        if os.path.isdir(intrinsics):
            folder = intrinsics

            def per_file(rel: str):
                path = os.path.join(folder, os.path.splitext(rel)[0] + ".json")
                return _camera_matrix(_read_json(path, f"camera file of image {rel}"), path)

            return per_file
        table = _read_json(intrinsics, "intrinsics file")
        where = intrinsics
    else:
        table, where = intrinsics, "intrinsics"
    if not isinstance(table, Mapping) or _is_single_camera(table):
        K = _camera_matrix(table, where)
        return lambda rel: K

    def per_name(rel: str):
        if rel not in table:
            raise KeyError(f"{where} has no camera for image {rel!r}")
        return _camera_matrix(table[rel], f"{where}[{rel!r}]")

    return per_name


def _list_images(image_root: str) -> List[str]:
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"image folder not found: {image_root}")
    names = sorted(
        os.path.relpath(os.path.join(dirpath, f), image_root)
        for dirpath, _, files in os.walk(image_root)
        for f in files
        if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not names:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_root}")
    return names


def _image_dicts(image_root: str, names: Sequence[str]) -> List[dict]:
    dicts = []
    for i, rel in enumerate(names):
        path = os.path.join(image_root, rel)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
        dicts.append({"file_name": path, "image_id": i, "height": height, "width": width})
    return dicts


def _require_files(dicts: List[dict], key: str, what: str) -> None:
    missing = [d[key] for d in dicts if not os.path.isfile(d[key])]
    if missing:
        raise FileNotFoundError(
            f"{what} not found for {len(missing)} of {len(dicts)} images, e.g. {missing[0]}"
        )


def load_rgbd_dataset(
    name: str,
    image_root: str,
    *,
    instances_json: Optional[str] = None,
    image_names: Optional[Sequence[str]] = None,
    depth_root: Optional[str] = None,
    depth_format: str = "png_mm",
    depth_ext: Optional[str] = None,
    depth_fields: Optional[Dict] = None,
    intrinsics: Intrinsics = None,
    sem_seg_root: Optional[str] = None,
    panoptic_json: Optional[str] = None,
    panoptic_root: Optional[str] = None,
) -> List[dict]:
    """The dataset dicts of :func:`register_rgbd_dataset` (same arguments).

    Returns:
        one dict per image: ``file_name``, ``image_id``, ``height``, ``width``; with an
        instances JSON detectron2's ``annotations`` (contiguous ``category_id``); with depth
        ``depth_file_name``, ``depth_format`` (and ``depth_fields``); with intrinsics
        ``intrinsics`` (3x3 nested list, pixels); with semantic labels
        ``sem_seg_file_name``; with panoptic labels ``pan_seg_file_name`` and
        ``segments_info`` (contiguous ids, ``isthing``).

    Raises:
        FileNotFoundError, ValueError, KeyError: naming the file, for a missing image, depth,
        semantic, panoptic or camera file, an image without a panoptic annotation, or a bad
        camera matrix.
    """
    if instances_json is not None:
        dicts = load_coco_json(instances_json, image_root, name)
        _require_files(dicts, "file_name", "image files")
    else:
        dicts = _image_dicts(image_root, image_names or _list_images(image_root))
    K_of = _intrinsics_lookup(intrinsics)
    ext = depth_ext or DEPTH_FILE_EXTENSIONS.get(depth_format)
    for d in dicts:
        rel = os.path.relpath(d["file_name"], image_root)
        stem = os.path.splitext(rel)[0]
        if sem_seg_root is not None:
            d["sem_seg_file_name"] = os.path.join(sem_seg_root, stem + ".png")
        if depth_root is not None:
            d["depth_file_name"] = os.path.join(depth_root, stem + ext)
            d["depth_format"] = depth_format
            d.update(depth_fields or {})
        if K_of is not None:
            d["intrinsics"] = K_of(rel)
    if sem_seg_root is not None:
        _require_files(dicts, "sem_seg_file_name", f"semantic label PNGs (in {sem_seg_root})")
    if depth_root is not None:
        _require_files(dicts, "depth_file_name", f"depth files (*{ext} in {depth_root})")
    if panoptic_json is not None:
        _attach_panoptic(name, dicts, panoptic_json, panoptic_root, by_id=bool(instances_json))
    logger.info("Loaded %d images of %s from %s", len(dicts), name, image_root)
    return dicts


def _attach_panoptic(name, dicts, panoptic_json, panoptic_root, by_id: bool) -> None:
    meta = MetadataCatalog.get(name)
    things = meta.thing_dataset_id_to_contiguous_id
    stuff = meta.get("stuff_dataset_id_to_contiguous_id", {})
    pan = _read_json(panoptic_json, "panoptic JSON")
    key = (lambda a: a["image_id"]) if by_id else (lambda a: os.path.splitext(a["file_name"])[0])
    anns = {key(a): a for a in pan["annotations"]}
    missing = []
    for d in dicts:
        k = d["image_id"] if by_id else os.path.splitext(os.path.basename(d["file_name"]))[0]
        ann = anns.get(k)
        if ann is None:
            missing.append(d["file_name"])
            continue
        d["pan_seg_file_name"] = os.path.join(panoptic_root, ann["file_name"])
        segments = []
        for s in ann["segments_info"]:
            cat = s["category_id"]
            isthing = cat in things
            if not isthing and cat not in stuff:
                raise ValueError(f"{panoptic_json}: segment of unknown category id {cat}")
            segments.append(
                {**s, "category_id": things[cat] if isthing else stuff[cat], "isthing": isthing}
            )
        d["segments_info"] = segments
    if missing:
        raise KeyError(
            f"{panoptic_json} has no panoptic annotation for {len(missing)} of {len(dicts)} "
            f"images, e.g. {missing[0]}"
        )
    _require_files(dicts, "pan_seg_file_name", f"panoptic PNGs (in {panoptic_root})")


def rgbd_metadata(
    *,
    instances_json: Optional[str] = None,
    panoptic_json: Optional[str] = None,
    sem_seg_root: Optional[str] = None,
    stuff_classes: Optional[Sequence[str]] = None,
) -> Dict:
    """Class metadata in detectron2's conventions.

    * ``thing_classes`` / ``thing_dataset_id_to_contiguous_id``: the instances JSON's
      categories sorted by id (as detectron2's ``load_coco_json``), else the panoptic JSON's
      thing categories.
    * with semantic labels: ``stuff_classes`` (the names of the semantic ids 0..C-1) as given;
      with a panoptic JSON and no ``stuff_classes``, every panoptic category, things first
      (sorted by id), then stuff (sorted by id) — the layout
      ``tools/prepare_coco_panoptic.py --semantic all`` writes.
    * with a panoptic JSON: ``stuff_dataset_id_to_contiguous_id`` maps each category id to
      its semantic id (by name; a thing missing from ``stuff_classes`` maps to a ``"things"``
      class when there is one, as detectron2's "separated" COCO panoptic).
    """
    meta: Dict = {}
    thing_cats = []
    if instances_json is not None:
        thing_cats = sorted(
            _read_json(instances_json, "instances JSON").get("categories", []),
            key=lambda c: c["id"],
        )
    pan_cats = None
    if panoptic_json is not None:
        pan_cats = sorted(
            _read_json(panoptic_json, "panoptic JSON")["categories"], key=lambda c: c["id"]
        )
        pan_things = [c for c in pan_cats if c.get("isthing")]
        if instances_json is None:
            thing_cats = pan_things
        elif [c["id"] for c in pan_things] != [c["id"] for c in thing_cats]:
            raise ValueError(
                f"the thing categories of {panoptic_json} (ids {[c['id'] for c in pan_things]}) "
                f"differ from the categories of {instances_json} "
                f"(ids {[c['id'] for c in thing_cats]})"
            )
    if thing_cats:
        meta["thing_classes"] = [c["name"] for c in thing_cats]
        palette = _palette(len(thing_cats))
        meta["thing_colors"] = [c.get("color") or p for c, p in zip(thing_cats, palette)]
        meta["thing_dataset_id_to_contiguous_id"] = {c["id"]: i for i, c in enumerate(thing_cats)}
    if sem_seg_root is None:
        return meta
    if stuff_classes is None:
        if pan_cats is None:
            raise ValueError(
                "a dataset with semantic labels (sem_seg_root) needs stuff_classes: the names "
                "of the semantic ids 0, 1, ... in its PNGs"
            )
        ordered = [c for c in pan_cats if c.get("isthing")]
        ordered += [c for c in pan_cats if not c.get("isthing")]
        stuff_classes = [c["name"] for c in ordered]
    stuff_classes = list(stuff_classes)
    meta["stuff_classes"] = stuff_classes
    colors = {c["name"]: c["color"] for c in pan_cats or [] if c.get("color")}
    meta["stuff_colors"] = [
        colors.get(n, p) for n, p in zip(stuff_classes, _palette(len(stuff_classes)))
    ]
    if pan_cats is not None:
        index = {n: i for i, n in enumerate(stuff_classes)}
        id_map = {}
        for c in pan_cats:
            if c["name"] in index:
                id_map[c["id"]] = index[c["name"]]
            elif not (c.get("isthing") and "things" in index):
                raise ValueError(
                    f"category {c['name']!r} of {panoptic_json} is not in stuff_classes "
                    f"{stuff_classes}"
                )
        if "things" in index:
            id_map[0] = index["things"]
        meta["stuff_dataset_id_to_contiguous_id"] = id_map
    return meta


def register_rgbd_dataset(
    name: str,
    image_root: str,
    *,
    instances_json: Optional[str] = None,
    image_names: Optional[Sequence[str]] = None,
    depth_root: Optional[str] = None,
    depth_format: str = "png_mm",
    depth_ext: Optional[str] = None,
    depth_fields: Optional[Dict] = None,
    intrinsics: Intrinsics = None,
    sem_seg_root: Optional[str] = None,
    stuff_classes: Optional[Sequence[str]] = None,
    panoptic_json: Optional[str] = None,
    panoptic_root: Optional[str] = None,
    ignore_label: int = 255,
    **metadata,
) -> None:
    """Register an RGB-D dataset of your own as ``name`` (see the module docstring for the
    layout). Loading is lazy; registration reads only the JSON files' categories.

    Args:
        name: dataset name, as used in ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        image_root: folder of the images.
        instances_json: COCO instances JSON (file names relative to ``image_root``).
        image_names: without ``instances_json``: the images to use, relative to
            ``image_root`` (default: every image file under it, sorted).
        depth_root: folder of the depth files, ``<depth_root>/<stem><depth_ext>``.
        depth_format: a key of ``DEPTH_DECODERS`` ("png_mm": uint16 PNG, millimetres;
            "npy_m": float .npy, metres; add others with ``register_depth_format``).
        depth_ext: extension of the depth files (default: the format's, e.g. ".png").
        depth_fields: extra dataset-dict fields the depth format reads, e.g.
            ``{"stereo_baseline": 0.22}`` (metres) for "cityscapes_disparity".
        intrinsics: the camera matrix K in pixels (pixel centres at integer coordinates, see
            :mod:`panoptic_curriculum.geometry`): one ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``
            (or ``{"fx", "fy", "cx", "cy"}``) for every image; a folder holding
            ``<stem>.json`` per image (``{"K": 3x3}`` or fx/fy/cx/cy); or a JSON file (or
            dict) mapping each image name relative to ``image_root`` to its K.
        sem_seg_root: folder of semantic label PNGs ``<stem>.png`` (ids 0..C-1, 255 ignore).
        stuff_classes: names of the semantic ids (needed with ``sem_seg_root`` unless a
            panoptic JSON gives them).
        panoptic_json, panoptic_root: COCO panoptic annotations (both or neither).
        ignore_label: the semantic "ignore" id of the PNGs.
        metadata: more metadata (e.g. ``thing_colors``).

    Raises:
        ValueError: a depth format that is not registered, a depth format without a known
            extension and no ``depth_ext``, only one of the panoptic arguments, bad
            intrinsics, semantic labels without class names, or ``name`` registered before
            with other arguments.
    """
    if depth_root is not None:
        if depth_format not in DEPTH_DECODERS:
            raise ValueError(
                f"dataset {name!r}: unknown depth_format {depth_format!r}; registered: "
                f"{sorted(DEPTH_DECODERS)}"
            )
        if depth_ext is None and depth_format not in DEPTH_FILE_EXTENSIONS:
            raise ValueError(
                f"dataset {name!r}: depth format {depth_format!r} has no default file "
                "extension; pass depth_ext"
            )
    if (panoptic_json is None) != (panoptic_root is None):
        raise ValueError(f"dataset {name!r}: give both panoptic_json and panoptic_root")
    if intrinsics is not None and not isinstance(intrinsics, (str, Mapping)):
        _camera_matrix(intrinsics, f"intrinsics of dataset {name!r}")  # fail at registration
    args = dict(
        image_root=image_root,
        instances_json=instances_json,
        image_names=None if image_names is None else list(image_names),
        depth_root=depth_root,
        depth_format=depth_format,
        depth_ext=depth_ext,
        depth_fields=depth_fields,
        intrinsics=intrinsics,
        sem_seg_root=sem_seg_root,
        panoptic_json=panoptic_json,
        panoptic_root=panoptic_root,
    )
    spec = json.dumps(
        {**args, "stuff_classes": stuff_classes, "metadata": metadata},
        sort_keys=True,
        default=lambda o: np.asarray(o).tolist(),
    )
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("rgbd_dataset", None) == spec:
            return
        raise ValueError(f"dataset {name!r} is already registered (with other arguments)")

    kinds = []
    if instances_json is not None:
        kinds.append("instances")
    if sem_seg_root is not None:
        kinds.append("sem_seg")
    if panoptic_json is not None:
        kinds.append("panoptic")
    if depth_root is not None:
        kinds.append("depth")
    if intrinsics is not None:
        kinds.append("intrinsics")
    meta = rgbd_metadata(
        instances_json=instances_json,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        stuff_classes=stuff_classes,
    )
    DatasetCatalog.register(name, lambda name=name, args=args: load_rgbd_dataset(name, **args))
    paths = {
        "image_root": image_root,
        "json_file": instances_json,
        "sem_seg_root": sem_seg_root,
        "panoptic_json": panoptic_json,
        "panoptic_root": panoptic_root,
    }
    meta.update({k: v for k, v in paths.items() if v is not None})
    meta.update(
        ignore_label=ignore_label,
        label_divisor=1000,
        evaluator_type=evaluator_type_for_labels(kinds),
        has_depth=depth_root is not None,
        labels=sorted(kinds),
    )
    meta.update(metadata)
    MetadataCatalog.get(name).set(rgbd_dataset=spec, **meta)


_RAN_FILES = set()

#: environment variable naming the Python files that register your datasets
REGISTRATION_ENV = "PANOPTIC_CURRICULUM_DATASETS"


def run_registration_files(paths: Sequence[str]) -> None:
    """Run each Python file of ``paths`` (from ``$PANOPTIC_CURRICULUM_DATASETS``; empty
    entries ignored) once per process:
    files that register datasets, e.g. with :func:`register_rgbd_dataset`. Relative paths
    are taken from the current directory."""
    for path in paths:
        if not path:
            continue
        full = os.path.abspath(os.path.expanduser(path))
        if full in _RAN_FILES:
            continue
        if not os.path.isfile(full):
            raise FileNotFoundError(
                f"{REGISTRATION_ENV} names {path}, which does not exist (relative "
                f"paths are taken from the current directory, {os.getcwd()})"
            )
        runpy.run_path(full, run_name="__panoptic_curriculum_datasets__")
        _RAN_FILES.add(full)
