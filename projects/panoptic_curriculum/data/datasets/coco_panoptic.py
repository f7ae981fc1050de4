"""Semantic label PNGs from COCO panoptic annotations (``tools/prepare_coco_panoptic.py``).

detectron2's ``coco_2017_*_panoptic_separated`` datasets (the COCO config) read their
semantic labels from ``<root>/coco/panoptic_stuff_{train,val}2017/``, which detectron2 makes
with a script that its installed package does not ship. This module makes them from the
official download (``panoptic_annotations_trainval2017.zip``: ``annotations/panoptic_*.json``
and ``annotations/panoptic_*.zip`` of PNGs), and makes the same kind of labels for a COCO
panoptic dataset of your own:

* ``"separated"`` (COCO, Panoptic FPN): every thing category -> 0, the stuff categories
  (sorted by id) -> 1..S, unlabelled pixels -> 255 — detectron2's ``panoptic_stuff`` layout
  and its ``coco_panoptic_separated`` metadata;
* ``"all"``: one semantic class per category, the things first (sorted by id) -> 0..T-1,
  then the stuff (sorted by id) -> T..T+S-1, unlabelled -> 255 — the layout
  ``register_rgbd_dataset`` assumes for a panoptic dataset without ``stuff_classes``.

Each output PNG (uint8, one channel) has the name of its panoptic PNG.
"""

import json
import logging
import os
import shutil
import zipfile
from multiprocessing import Pool
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = ["SEMANTIC_MODES", "semantic_id_map", "panoptic_to_semantic", "prepare_coco_panoptic"]

logger = logging.getLogger(__name__)

SEMANTIC_MODES = ("separated", "all")
_VOID = 255


def semantic_id_map(categories: Sequence[Dict], mode: str) -> Dict[int, int]:
    """Category id -> semantic id for ``mode`` (see the module docstring).

    Raises:
        ValueError: an unknown mode, or more classes than a uint8 PNG holds besides 255.
    """
    if mode not in SEMANTIC_MODES:
        raise ValueError(f"unknown semantic mode {mode!r}; modes: {SEMANTIC_MODES}")
    cats = sorted(categories, key=lambda c: c["id"])
    things = [c["id"] for c in cats if c.get("isthing")]
    stuff = [c["id"] for c in cats if not c.get("isthing")]
    if mode == "separated":
        id_map = {k: 0 for k in things}
        id_map.update({k: i + 1 for i, k in enumerate(stuff)})
    else:
        id_map = {k: i for i, k in enumerate(things + stuff)}
    if max(id_map.values(), default=0) >= _VOID:
        raise ValueError(f"{len(id_map)} categories do not fit uint8 labels with 255 = void")
    return id_map


def _convert_one(job: Tuple[str, str, np.ndarray, np.ndarray]) -> None:
    """Write one semantic PNG: panoptic ids (R + 256 G + 256^2 B) -> labels, others void."""
    src, dst, seg_ids, labels = job
    with Image.open(src) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint32)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    out = np.full(ids.shape, _VOID, dtype=np.uint8)
    if len(seg_ids):
        order = np.argsort(seg_ids)
        sorted_ids, sorted_labels = seg_ids[order], labels[order]
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        hit = sorted_ids[pos] == ids
        out[hit] = sorted_labels[pos[hit]]
    Image.fromarray(out).save(dst)


def panoptic_to_semantic(
    panoptic_json: str,
    panoptic_root: str,
    output_root: str,
    mode: str = "separated",
    workers: int = 0,
    overwrite: bool = False,
) -> int:
    """Write one semantic PNG per annotation of ``panoptic_json`` into ``output_root``.

    The folder appears complete or not at all (written beside it, then renamed); an existing
    one is kept unless ``overwrite``. Returns the number of PNGs written (0 when kept).

    Args:
        panoptic_json: COCO panoptic JSON (``annotations`` with ``file_name`` and
            ``segments_info``; ``categories`` with ``id`` and ``isthing``).
        panoptic_root: folder of its PNGs.
        output_root: folder to create.
        mode: "separated" or "all" (module docstring).
        workers: processes (0: this one).

    Raises:
        FileNotFoundError: naming the missing JSON, folder or PNG.
        ValueError: a segment whose category is not in ``categories``.
    """
    if os.path.isdir(output_root) and not overwrite:
        logger.info("%s exists; keeping it", output_root)
        return 0
    if not os.path.isfile(panoptic_json):
        raise FileNotFoundError(f"panoptic JSON not found: {panoptic_json}")
    if not os.path.isdir(panoptic_root):
        raise FileNotFoundError(f"panoptic PNG folder not found: {panoptic_root}")
    with open(panoptic_json) as f:
        data = json.load(f)
    id_map = semantic_id_map(data["categories"], mode)
    tmp = f"{output_root.rstrip(os.sep)}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    jobs = []
    for ann in data["annotations"]:
        src = os.path.join(panoptic_root, ann["file_name"])
        if not os.path.isfile(src):
            raise FileNotFoundError(f"panoptic PNG not found: {src} (listed in {panoptic_json})")
        segs = ann["segments_info"]
        unknown = [s["category_id"] for s in segs if s["category_id"] not in id_map]
        if unknown:
            raise ValueError(
                f"{panoptic_json}: {ann['file_name']} has segments of unknown category ids "
                f"{sorted(set(unknown))}"
            )
        seg_ids = np.array([s["id"] for s in segs], dtype=np.uint32)
        labels = np.array([id_map[s["category_id"]] for s in segs], dtype=np.uint8)
        jobs.append((src, os.path.join(tmp, ann["file_name"]), seg_ids, labels))
    if workers > 1:
        with Pool(workers) as pool:
            pool.map(_convert_one, jobs, chunksize=64)
    else:
        for job in jobs:
            _convert_one(job)
    if os.path.isdir(output_root):
        shutil.rmtree(output_root)
    os.replace(tmp, output_root)
    logger.info("Wrote %d %s semantic PNGs to %s", len(jobs), mode, output_root)
    return len(jobs)


def _extract_pngs(zip_path: str, coco_root: str, folder: str) -> None:
    """Unpack ``annotations/panoptic_<split>.zip`` (which holds ``<folder>/*.png``)."""
    logger.info("Extracting %s into %s ...", zip_path, coco_root)
    with zipfile.ZipFile(zip_path) as z:
        members = [m for m in z.namelist() if m.startswith(folder + "/")]
        if not members:
            raise ValueError(f"{zip_path} holds no {folder}/ folder")
        tmp = os.path.join(coco_root, f".{folder}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        z.extractall(tmp, members)
    os.replace(os.path.join(tmp, folder), os.path.join(coco_root, folder))
    shutil.rmtree(tmp)


def prepare_coco_panoptic(
    coco_root: str,
    splits: Sequence[str] = ("train2017", "val2017"),
    workers: int = 0,
    overwrite: bool = False,
) -> List[str]:
    """Make what detectron2's COCO panoptic datasets need under ``coco_root`` (e.g.
    ``datasets/coco``) for each split: ``panoptic_<split>/`` (unpacked from
    ``annotations/panoptic_<split>.zip`` when missing) and ``panoptic_stuff_<split>/``
    ("separated" semantic PNGs). Returns the semantic folders.

    Raises:
        FileNotFoundError: naming the annotation JSON, or the PNG folder / zip, that is
            missing, with the download that provides it.
    """
    out = []
    for split in splits:
        ann = os.path.join(coco_root, "annotations", f"panoptic_{split}.json")
        if not os.path.isfile(ann):
            raise FileNotFoundError(
                f"{ann} not found: unpack COCO's panoptic_annotations_trainval2017.zip into "
                f"{coco_root}"
            )
        pan_root = os.path.join(coco_root, f"panoptic_{split}")
        if not os.path.isdir(pan_root):
            zip_path = os.path.join(coco_root, "annotations", f"panoptic_{split}.zip")
            if not os.path.isfile(zip_path):
                raise FileNotFoundError(f"neither {pan_root}/ nor {zip_path} exists")
            _extract_pngs(zip_path, coco_root, f"panoptic_{split}")
        sem_root = os.path.join(coco_root, f"panoptic_stuff_{split}")
        panoptic_to_semantic(ann, pan_root, sem_root, "separated", workers, overwrite)
        out.append(sem_root)
    return out
