"""The embedded default dataset, "synthetic scenes": generated on first use, then read from
disk like any real dataset.

Layout under ``<root>/synthetic_scenes/<split>/`` (root: ``$DETECTRON2_DATASETS``, default
``./datasets``)::

    image/000000.png        RGB, uint8
    depth/000000.png        depth, uint16 millimetres, 0 = invalid (sky)
    sem_seg/000000.png      contiguous class ids (things first), 255 = ignore
    panoptic/000000.png     COCO panoptic PNG (id = R + 256 G + 256^2 B)
    camera/000000.json      {"K": 3x3 pixels, "depth_format": "png_mm", camera pose info}
    instances.json          COCO instances (thing categories, RLE masks)
    panoptic.json           COCO panoptic (all categories)
    spec.json               generation parameters; written last, marks the split complete

Generation is deterministic from the split's seed (image ``i`` uses seed ``(seed, i)``),
written into a temporary folder (``<split>.partial-<pid>``) and moved into place when complete,
under a file lock so that several processes (multi-GPU training) generate it once. A failed
generation removes its temporary folder (a full disk is reported as such, with the split's
path); the folders of generations that were killed are removed by the next call.
"""

import json
import logging
import multiprocessing
import os
import shutil
import time
from typing import Dict, List, Optional

import cv2
import numpy as np
import pycocotools.mask as mask_util
from filelock import FileLock

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode

from ...utils.atomic_io import disk_full_error, remove_abandoned_folders
from ..depth_io import DEPTH_DECODERS, as_intrinsics, encode_depth_png_mm, read_json
from ..synthetic.generator import (
    CATEGORIES,
    IGNORE_LABEL,
    SceneRanges,
    render_scene,
    sample_scene,
)
from .label_subsets import register_label_subset

__all__ = [
    "SYNTHETIC_SPLITS",
    "SYNTHETIC_LABEL_SUBSETS",
    "GENERATOR_VERSION",
    "register_synthetic_scenes",
    "register_all_synthetic_scenes",
    "generate_synthetic_scenes",
    "load_synthetic_scenes",
    "get_synthetic_scenes_metadata",
    "make_synthetic_split",
]

logger = logging.getLogger(__name__)

#: bump when the generator's output changes, so cached splits are regenerated
GENERATOR_VERSION = 3

#: camera ranges of the shifted validation split: other lenses, rig heights and pitches
#: (training: 55-80 degrees, 1.45-1.6 m, 3-6 degrees)
SHIFTED_CAMERA_RANGES = dict(
    hfov_deg=(40.0, 100.0), camera_height_m=(0.9, 2.3), pitch_deg=(0.0, 12.0)
)
#: lighting ranges of the shifted validation split: other exposure, white balance, ambient
#: (training: 1, neutral, 0.35)
SHIFTED_LIGHTING_RANGES = dict(
    exposure=(0.55, 1.5), white_balance=(0.7, 1.35), ambient=(0.15, 0.6)
)

#: registered splits: name -> (folder, number of images, seed, height, width[, ranges])
SYNTHETIC_SPLITS = {
    "synthetic_scenes_train": dict(split="train", num_images=400, seed=0, height=192, width=256),
    "synthetic_scenes_val": dict(split="val", num_images=100, seed=1, height=192, width=256),
    # validation scenes under distribution shift (other seeds, other camera / lighting ranges)
    "synthetic_scenes_shifted_camera": dict(
        split="shifted_camera",
        num_images=100,
        seed=11,
        height=192,
        width=256,
        ranges=SHIFTED_CAMERA_RANGES,
    ),
    "synthetic_scenes_shifted_lighting": dict(
        split="shifted_lighting",
        num_images=100,
        seed=12,
        height=192,
        width=256,
        ranges=SHIFTED_LIGHTING_RANGES,
    ),
}

#: label-partial halves of the training split, for a curriculum with labels from different
#: datasets (configs/synthetic/curriculum_R18_FPN_disjoint_labels.yaml): disjoint images,
#: the first half with semantic labels, depth and K only, the second with instances only.
#: name -> arguments of :func:`~.label_subsets.register_label_subset`
SYNTHETIC_LABEL_SUBSETS = {
    "synthetic_scenes_train_semantic_part": dict(
        source="synthetic_scenes_train", labels=("sem_seg", "depth", "intrinsics"), stop=200
    ),
    "synthetic_scenes_train_instance_part": dict(
        source="synthetic_scenes_train", labels=("instances",), start=200
    ),
}

_LABEL_DIVISOR = 1000


def get_synthetic_scenes_metadata() -> Dict:
    """Class names, colours and id maps, in detectron2's COCO-panoptic conventions.

    Contiguous ids put the things first, so a thing's Mask R-CNN class id equals its semantic
    class id: ``thing_classes`` lists the things, ``stuff_classes`` lists every class (the
    semantic segmentation label space).
    """
    things = [c for c in CATEGORIES if c["isthing"]]
    return dict(
        thing_classes=[c["name"] for c in things],
        thing_colors=[c["color"] for c in things],
        stuff_classes=[c["name"] for c in CATEGORIES],
        stuff_colors=[c["color"] for c in CATEGORIES],
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(things)},
        stuff_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(CATEGORIES)},
        ignore_label=IGNORE_LABEL,
        label_divisor=_LABEL_DIVISOR,
        evaluator_type="coco_panoptic_seg",
        has_depth=True,
        depth_format="png_mm",
    )


def _write_png(path: str, array: np.ndarray) -> None:
    # encoded here and written by Python, so that a full disk raises OSError(ENOSPC) (cv2's
    # imwrite only returns False)
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"could not encode {path} as PNG (array {array.shape}, {array.dtype})")
    with open(path, "wb") as f:
        f.write(data.tobytes())


def _rle(mask: np.ndarray) -> Dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _render_one(job) -> Dict:
    """Render scene ``idx`` of a split and write its files; returns its COCO image entry, its
    instance annotations (without ids) and its panoptic annotation. Runs in a worker process
    when the split is generated in parallel: everything it needs comes in ``job``."""
    out_dir, idx, seed, height, width, ranges = job
    rng = np.random.default_rng([seed, idx])
    sample = render_scene(sample_scene(rng, height, width, ranges), height, width, rng)
    stem = f"{idx:06d}"
    _write_png(os.path.join(out_dir, "image", stem + ".png"), sample.image[:, :, ::-1])
    _write_png(os.path.join(out_dir, "depth", stem + ".png"), encode_depth_png_mm(sample.depth))
    _write_png(os.path.join(out_dir, "sem_seg", stem + ".png"), sample.sem_seg)
    with open(os.path.join(out_dir, "camera", stem + ".json"), "w") as f:
        camera = {"K": sample.K.tolist(), "depth_format": "png_mm", "depth_unit_m": 1e-3}
        json.dump({**camera, **sample.camera}, f)
    image = {"id": idx, "file_name": stem + ".png", "height": height, "width": width}

    # Panoptic segments: one per present stuff class, one per instance.
    pan = np.zeros((height, width), dtype=np.int64)
    annotations, segments = [], []
    regions = [
        (sample.instance_ids == k, CATEGORIES[inst["category"]]["id"], True)
        for k, inst in enumerate(sample.instances, start=1)
    ] + [
        (sample.sem_seg == cls, cat["id"], False)
        for cls, cat in enumerate(CATEGORIES)
        if not cat["isthing"]
    ]
    for mask, category_id, is_instance in regions:
        if not is_instance and not mask.any():  # stuff classes absent from the image
            continue
        x0, y0, w, h = cv2.boundingRect(mask.astype(np.uint8))
        region = {
            "category_id": category_id,
            "iscrowd": 0,
            "area": int(mask.sum()),
            "bbox": [x0, y0, w, h],
        }
        if is_instance:
            annotations.append({"image_id": idx, **region, "segmentation": _rle(mask)})
        segments.append({"id": len(segments) + 1, **region})
        pan[mask] = len(segments)
    rgb = np.stack([pan % 256, pan // 256 % 256, pan // 65536], axis=-1).astype(np.uint8)
    _write_png(os.path.join(out_dir, "panoptic", stem + ".png"), rgb[:, :, ::-1])
    pan_annotation = {"image_id": idx, "file_name": stem + ".png", "segments_info": segments}
    return {"image": image, "annotations": annotations, "panoptic": pan_annotation}


def _generation_workers(workers: Optional[int], num_images: int) -> int:
    """How many processes render a split: ``workers`` (default: the CPU count, at most 8),
    1 where worker processes cannot be forked (no ``fork`` start method, or this process is a
    daemon such as a data-loader worker)."""
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if (
        "fork" not in multiprocessing.get_all_start_methods()
        or multiprocessing.current_process().daemon
    ):
        return 1
    return max(1, min(workers, num_images // 16))  # a pool costs more than a few scenes


def generate_synthetic_scenes(
    out_dir: str,
    num_images: int,
    seed: int,
    height: int,
    width: int,
    ranges: Optional[SceneRanges] = None,
    workers: Optional[int] = None,
) -> float:
    """Render ``num_images`` scenes into ``out_dir`` (created; must not exist), with camera
    and lighting drawn from ``ranges`` (default: :class:`SceneRanges`), in ``workers``
    processes (default: one per CPU core, at most 8). Scene ``i`` depends only on ``(seed,
    i)``, so the files are the same for any number of workers.

    Returns:
        generation rate in images per second (rendering and writing).
    """
    start = time.perf_counter()
    for sub in ("image", "depth", "sem_seg", "panoptic", "camera"):
        os.makedirs(os.path.join(out_dir, sub))
    jobs = [(out_dir, idx, seed, height, width, ranges) for idx in range(num_images)]
    workers = _generation_workers(workers, num_images)
    if workers == 1:
        scenes = [_render_one(job) for job in jobs]
    else:
        # fork: the workers inherit the imported generator instead of importing it again
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            scenes = pool.map(_render_one, jobs, chunksize=8)
    images = [s["image"] for s in scenes]
    pan_annotations = [s["panoptic"] for s in scenes]
    annotations = [
        {"id": ann_id, **ann}
        for ann_id, ann in enumerate((a for s in scenes for a in s["annotations"]), start=1)
    ]

    thing_cats = [
        {"id": c["id"], "name": c["name"], "supercategory": "thing"}
        for c in CATEGORIES
        if c["isthing"]
    ]
    pan_cats = [
        {
            "id": c["id"],
            "name": c["name"],
            "isthing": c["isthing"],
            "color": c["color"],
            "supercategory": "thing" if c["isthing"] else "stuff",
        }
        for c in CATEGORIES
    ]
    info = {"description": "synthetic scenes (panoptic_curriculum)", "version": GENERATOR_VERSION}
    with open(os.path.join(out_dir, "instances.json"), "w") as f:
        json.dump(
            {"info": info, "images": images, "annotations": annotations, "categories": thing_cats},
            f,
        )
    with open(os.path.join(out_dir, "panoptic.json"), "w") as f:
        json.dump(
            {
                "info": info,
                "images": images,
                "annotations": pan_annotations,
                "categories": pan_cats,
            },
            f,
        )
    return num_images / (time.perf_counter() - start)


def _spec(params: Dict) -> Dict:
    spec = {
        "version": GENERATOR_VERSION,
        **{k: params[k] for k in ("num_images", "seed", "height", "width")},
    }
    changed = SceneRanges.from_dict(params.get("ranges")).changed()
    if changed:  # default splits keep the spec (and the cached files) of earlier versions
        spec["ranges"] = changed
    return spec


def ensure_generated(split_dir: str, params: Dict) -> None:
    """Generate the split into ``split_dir`` unless a complete copy with the same spec is
    there; safe against concurrent callers and interrupted runs."""
    spec = _spec(params)
    spec_file = os.path.join(split_dir, "spec.json")

    def complete() -> bool:
        if not os.path.isfile(spec_file):
            return False
        with open(spec_file) as f:
            return json.load(f) == spec

    parent, name = os.path.split(os.path.normpath(split_dir))
    remove_abandoned_folders(parent, name)  # generations that were killed
    if complete():
        return
    os.makedirs(parent, exist_ok=True)
    with FileLock(split_dir + ".lock"):
        if complete():
            return
        tmp = f"{split_dir}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        logger.info("Generating %d synthetic scenes into %s ...", spec["num_images"], split_dir)
        try:
            rate = generate_synthetic_scenes(
                tmp,
                spec["num_images"],
                spec["seed"],
                spec["height"],
                spec["width"],
                SceneRanges.from_dict(spec.get("ranges")),
            )
            with open(os.path.join(tmp, "spec.json"), "w") as f:
                json.dump(spec, f)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            full = disk_full_error(e, split_dir)
            if full is not None:
                raise full from e
            raise
        if os.path.exists(split_dir):
            logger.info("Replacing %s (generated with another spec)", split_dir)
            shutil.rmtree(split_dir)
        os.replace(tmp, split_dir)
        logger.info("Generated %s at %.1f images/s", split_dir, rate)


def load_synthetic_scenes(split_dir: str, params: Dict, dataset_name: str = None) -> List[Dict]:
    """Dataset dicts of one split (generating it first if needed).

    Each dict has detectron2's instance fields (``annotations`` with RLE masks, XYWH_ABS
    boxes, contiguous ``category_id``), ``sem_seg_file_name``, ``pan_seg_file_name`` and
    ``segments_info`` (as detectron2's COCO panoptic loader), and the depth fields
    ``depth_file_name``, ``depth_format`` and ``intrinsics`` (3x3, pixels).
    """
    ensure_generated(split_dir, params)
    instances_file = os.path.join(split_dir, "instances.json")
    try:  # detectron2's loader; its errors (JSONDecodeError is a ValueError) get the file name
        dicts = load_coco_json(instances_file, os.path.join(split_dir, "image"), dataset_name)
    except (KeyError, ValueError, TypeError, AssertionError) as e:
        raise ValueError(
            f"invalid COCO instances file {instances_file}: {type(e).__name__}: {e}"
        ) from e
    meta = get_synthetic_scenes_metadata()
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    thing_ids = set(meta["thing_dataset_id_to_contiguous_id"])
    panoptic_file = os.path.join(split_dir, "panoptic.json")
    panoptic = _panoptic_by_image(panoptic_file)
    for d in dicts:
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        pan = panoptic.get(d["image_id"])
        if pan is None:
            raise ValueError(
                f"panoptic file {panoptic_file} has no annotation for image_id "
                f"{d['image_id']} ({d['file_name']}, listed in {instances_file})"
            )
        d["sem_seg_file_name"] = os.path.join(split_dir, "sem_seg", stem + ".png")
        d["pan_seg_file_name"] = os.path.join(split_dir, "panoptic", pan["file_name"])
        segments = []
        for s in pan["segments_info"]:
            if s.get("category_id") not in stuff_map:
                raise ValueError(
                    f"panoptic file {panoptic_file}: a segment of image_id {d['image_id']} has "
                    f"category_id {s.get('category_id')!r}; allowed: {sorted(stuff_map)}"
                )
            cat = s["category_id"]
            segments.append({**s, "category_id": stuff_map[cat], "isthing": cat in thing_ids})
        d["segments_info"] = segments
        camera_file = os.path.join(split_dir, "camera", stem + ".json")
        camera = read_json(camera_file, "camera file")
        missing = [
            k for k in ("K", "depth_format") if not isinstance(camera, dict) or k not in camera
        ]
        if missing:
            raise ValueError(
                f"camera file {camera_file} lacks {missing}; it needs 'K' (3x3 pixel-unit "
                f"camera matrix) and 'depth_format' (one of {sorted(DEPTH_DECODERS)})"
            )
        if camera["depth_format"] not in DEPTH_DECODERS:
            raise ValueError(
                f"camera file {camera_file}: 'depth_format' = {camera['depth_format']!r}; "
                f"allowed: {sorted(DEPTH_DECODERS)}"
            )
        as_intrinsics(camera["K"], f"'K' of camera file {camera_file}")  # raises if invalid
        d["intrinsics"] = camera["K"]
        d["depth_file_name"] = os.path.join(split_dir, "depth", stem + ".png")
        d["depth_format"] = camera["depth_format"]
        for a in d["annotations"]:
            assert a["bbox_mode"] == BoxMode.XYWH_ABS
    return dicts


def _panoptic_by_image(panoptic_file: str) -> Dict[int, Dict]:
    """``image_id -> annotation`` of a COCO panoptic JSON, with errors naming the file."""
    content = read_json(panoptic_file, "COCO panoptic file")
    annotations = content.get("annotations") if isinstance(content, dict) else None
    if not isinstance(annotations, list):
        raise ValueError(f"COCO panoptic file {panoptic_file} has no 'annotations' list")
    by_image = {}
    for i, a in enumerate(annotations):
        missing = [
            k
            for k in ("image_id", "file_name", "segments_info")
            if not isinstance(a, dict) or k not in a
        ]
        if missing:
            raise ValueError(f"COCO panoptic file {panoptic_file}: annotation {i} lacks {missing}")
        by_image[a["image_id"]] = a
    return by_image


def register_synthetic_scenes(
    name: str,
    root: str,
    split: str,
    num_images: int,
    seed: int,
    height: int,
    width: int,
    ranges: Optional[Dict] = None,
) -> None:
    """Register a synthetic-scenes split as ``name`` (generated lazily under
    ``<root>/synthetic_scenes/<split>``). Other sizes, seeds, counts and camera / lighting
    ``ranges`` (``{name: (low, high)}`` of :class:`SceneRanges`) can be registered under new
    names the same way."""
    ranges = SceneRanges.from_dict(ranges).changed()  # checked now, not at first use
    params = dict(num_images=num_images, seed=seed, height=height, width=width, ranges=ranges)
    split_dir = os.path.join(root, "synthetic_scenes", split)
    DatasetCatalog.register(
        name,
        lambda split_dir=split_dir, params=params, name=name: load_synthetic_scenes(
            split_dir, params, name
        ),
    )
    MetadataCatalog.get(name).set(
        image_root=os.path.join(split_dir, "image"),
        sem_seg_root=os.path.join(split_dir, "sem_seg"),
        panoptic_root=os.path.join(split_dir, "panoptic"),
        panoptic_json=os.path.join(split_dir, "panoptic.json"),
        json_file=os.path.join(split_dir, "instances.json"),
        scene_ranges=ranges,
        **get_synthetic_scenes_metadata(),
    )


def register_all_synthetic_scenes(root: str) -> None:
    """Register the splits of :data:`SYNTHETIC_SPLITS` under ``root``, the label-partial
    halves of the training split (:data:`SYNTHETIC_LABEL_SUBSETS`), and every other complete
    split found in ``<root>/synthetic_scenes/`` (written by ``tools/make_shifted_scenes.py``)
    as ``synthetic_scenes_<folder>``."""
    for name, params in SYNTHETIC_SPLITS.items():
        if name in DatasetCatalog.list():
            continue
        register_synthetic_scenes(name, root, **params)
    for name, args in SYNTHETIC_LABEL_SUBSETS.items():
        register_label_subset(name, **args)
    base = os.path.join(root, "synthetic_scenes")
    known = {p["split"] for p in SYNTHETIC_SPLITS.values()}
    for split in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        spec_file = os.path.join(base, split, "spec.json")
        name = f"synthetic_scenes_{split}"
        if (
            split in known
            or ".partial-" in split
            or name in DatasetCatalog.list()
            or not os.path.isfile(spec_file)
        ):
            continue
        try:
            with open(spec_file) as f:
                spec = json.load(f)
            params = {k: spec[k] for k in ("num_images", "seed", "height", "width")}
            register_synthetic_scenes(name, root, split, ranges=spec.get("ranges"), **params)
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("not registering %s: unreadable %s (%s)", name, spec_file, e)


def make_synthetic_split(
    root: str,
    split: str,
    *,
    num_images: int,
    seed: int,
    height: int = 192,
    width: int = 256,
    ranges: Optional[Dict] = None,
) -> str:
    """Generate the split ``<root>/synthetic_scenes/<split>`` now (replacing a copy made
    with other parameters), register it as ``synthetic_scenes_<split>`` and return that name;
    later processes register it by themselves (:func:`register_all_synthetic_scenes`).

    Raises:
        ValueError: a split name of the built-in splits or one that is not a plain folder
            name, non-positive sizes, or bad ``ranges`` (naming the valid ones).
    """
    builtin = sorted(p["split"] for p in SYNTHETIC_SPLITS.values())
    if split in builtin or not split or os.sep in split or split.startswith("."):
        raise ValueError(
            f"split name {split!r} must be a plain folder name other than the built-in "
            f"splits {builtin}"
        )
    if min(num_images, height, width) <= 0:
        raise ValueError(
            f"num_images, height and width must be positive, got {num_images}, {height}, {width}"
        )
    name = f"synthetic_scenes_{split}"
    changed = SceneRanges.from_dict(ranges).changed()
    params = dict(num_images=num_images, seed=seed, height=height, width=width, ranges=changed)
    ensure_generated(os.path.join(root, "synthetic_scenes", split), params)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_synthetic_scenes(name, root, split, ranges=changed, **{
        k: params[k] for k in ("num_images", "seed", "height", "width")
    })
    return name
