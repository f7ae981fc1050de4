"""Make the derived Cityscapes files the plugin needs from the official downloads.

The official downloads (``csDownload`` of cityscapesscripts, or www.cityscapes-dataset.com),
unpacked into one folder ``<cityscapes>/``::

    leftImg8bit_trainvaltest.zip   leftImg8bit/<split>/<city>/*_leftImg8bit.png
    gtFine_trainvaltest.zip        gtFine/<split>/<city>/*_gtFine_{polygons.json,labelIds.png,
                                                                   instanceIds.png,color.png}
    disparity_trainvaltest.zip     disparity/<split>/<city>/*_disparity.png
    camera_trainvaltest.zip        camera/<split>/<city>/*_camera.json

:func:`prepare_cityscapes` checks that every image has its annotation, disparity and camera
files, then writes with cityscapesscripts' own converters:

* ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (``json2labelImg``, train ids, 255
  ignored): the semantic training targets;
* ``*_gtFine_labelIds.png`` and ``*_gtFine_instanceIds.png`` only where missing
  (``json2labelImg`` / ``json2instanceImg``; both ship with gtFine): the ground truth of
  the Cityscapes semantic and instance evaluations;
* ``gtFine/cityscapes_panoptic_<split>.json`` and ``gtFine/cityscapes_panoptic_<split>/``
  (``createPanopticImgs``, label ids as category ids): the panoptic ground truth, where
  detectron2's ``cityscapes_fine_panoptic_<split>`` registration looks for it.

Existing files are kept unless ``overwrite`` (the official label and instance id PNGs are
never overwritten).
"""

import contextlib
import glob
import io
import logging
import multiprocessing as mp
import os
from typing import Dict, List, Sequence, Tuple

__all__ = ["OFFICIAL_DOWNLOADS", "check_cityscapes_split", "prepare_cityscapes"]

logger = logging.getLogger(__name__)

#: folder -> the official download that provides it
OFFICIAL_DOWNLOADS = {
    "leftImg8bit": "leftImg8bit_trainvaltest.zip",
    "gtFine": "gtFine_trainvaltest.zip",
    "disparity": "disparity_trainvaltest.zip",
    "camera": "camera_trainvaltest.zip",
}
_IMAGE_SUFFIX = "_leftImg8bit.png"
# per-image files of each download, as suffixes of <city>_<seq>_<frame>
_NEEDED = {
    "gtFine": "_gtFine_polygons.json",
    "disparity": "_disparity.png",
    "camera": "_camera.json",
}


def _missing_download(cityscapes_dir: str, folder: str, path: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{path} not found: unpack the official {OFFICIAL_DOWNLOADS[folder]} into "
        f"{cityscapes_dir} (it provides {folder}/)"
    )


def check_cityscapes_split(cityscapes_dir: str, split: str) -> List[str]:
    """Check one split of an official Cityscapes tree.

    Args:
        cityscapes_dir: the folder holding ``leftImg8bit/``, ``gtFine/``, ``disparity/`` and
            ``camera/``.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        the image stems ``<city>/<city>_<seq>_<frame>``, sorted.

    Raises:
        FileNotFoundError: naming the first missing folder or file and the official download
            that provides it.
    """
    for folder in OFFICIAL_DOWNLOADS:
        path = os.path.join(cityscapes_dir, folder, split)
        if not os.path.isdir(path):
            raise _missing_download(cityscapes_dir, folder, path)
    image_dir = os.path.join(cityscapes_dir, "leftImg8bit", split)
    stems = sorted(
        os.path.relpath(p, image_dir)[: -len(_IMAGE_SUFFIX)]
        for p in glob.glob(os.path.join(image_dir, "*", "*" + _IMAGE_SUFFIX))
    )
    if not stems:
        raise FileNotFoundError(
            f"no Cityscapes images (<city>/*{_IMAGE_SUFFIX}) in {image_dir}: unpack "
            f"{OFFICIAL_DOWNLOADS['leftImg8bit']} into {cityscapes_dir}"
        )
    for stem in stems:
        for folder, suffix in _NEEDED.items():
            path = os.path.join(cityscapes_dir, folder, split, stem + suffix)
            if not os.path.isfile(path):
                raise _missing_download(cityscapes_dir, folder, path)
    return stems


def _convert(job: Tuple[str, str, str]) -> str:
    """Write one label image: (kind, polygons file, output file) with kind one of
    "trainIds", "ids" (json2labelImg) or "instanceIds" (json2instanceImg)."""
    kind, polygons, out = job
    if kind == "instanceIds":
        from cityscapesscripts.preparation import json2instanceImg as module

        module.json2instanceImg(polygons, out, "ids")
    else:
        from cityscapesscripts.preparation import json2labelImg as module

        module.json2labelImg(polygons, out, kind)
    return kind


def prepare_cityscapes(
    cityscapes_dir: str,
    splits: Sequence[str] = ("train", "val"),
    overwrite: bool = False,
    workers: int = 0,
) -> Dict[str, Dict[str, int]]:
    """Write the derived files of ``splits`` (see the module docstring).

    Args:
        cityscapes_dir: the folder holding the unpacked official downloads.
        splits: the splits to prepare.
        overwrite: rewrite ``labelTrainIds`` and the panoptic files that already exist.
        workers: processes converting polygons (0: one per CPU).

    Returns:
        ``{split: {"labelTrainIds": n, "labelIds": n, "instanceIds": n, "panoptic": n}}``,
        the number of files written (``panoptic``: images in the written panoptic JSON).

    Raises:
        FileNotFoundError: naming a missing file and the download that provides it.
    """
    # (this package's compatibility layer fixes cityscapesscripts for NumPy 2 and Pillow 13)
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    gt_root = os.path.join(cityscapes_dir, "gtFine")
    report: Dict[str, Dict[str, int]] = {}
    for split in splits:
        stems = check_cityscapes_split(cityscapes_dir, split)
        jobs = []
        for stem in stems:
            base = os.path.join(gt_root, split, stem + "_gtFine_")
            for kind, suffix, replace in (
                ("trainIds", "labelTrainIds.png", overwrite),
                ("ids", "labelIds.png", False),
                ("instanceIds", "instanceIds.png", False),
            ):
                if replace or not os.path.isfile(base + suffix):
                    jobs.append((kind, base + "polygons.json", base + suffix))
        counts = {"labelTrainIds": 0, "labelIds": 0, "instanceIds": 0, "panoptic": 0}
        names = {"trainIds": "labelTrainIds", "ids": "labelIds", "instanceIds": "instanceIds"}
        logger.info(
            "Cityscapes %s: %d images, %d label files to write", split, len(stems), len(jobs)
        )
        processes = min(workers or os.cpu_count() or 1, len(jobs))
        if processes > 1:
            with mp.Pool(processes) as pool:
                done = pool.map(_convert, jobs, chunksize=max(1, len(jobs) // (4 * processes)))
        else:
            done = [_convert(job) for job in jobs]
        for kind in done:
            counts[names[kind]] += 1

        pan_json = os.path.join(gt_root, f"cityscapes_panoptic_{split}.json")
        if overwrite or not os.path.isfile(pan_json):
            with contextlib.redirect_stdout(io.StringIO()):  # per-file progress lines
                convert2panoptic(gt_root, gt_root, useTrainId=False, setNames=[split])
            counts["panoptic"] = len(stems)
        logger.info("Cityscapes %s: wrote %s", split, counts)
        report[split] = counts
    return report
