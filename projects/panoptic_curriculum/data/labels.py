"""Which labels a dataset carries, which labels a training config needs, and label-partial
views of datasets.

A label kind is carried by these dataset-dict fields (detectron2's names where detectron2
has one):

========== ====================================== =============================================
kind       fields                                 meaning
========== ====================================== =============================================
sem_seg    ``sem_seg_file_name``                  PNG of contiguous class ids, 255 = ignore
instances  ``annotations``                        detectron2 instance annotations (``[]`` for
                                                  an image without objects)
panoptic   ``pan_seg_file_name``,                 COCO panoptic PNG and its segments
           ``segments_info``
depth      ``depth_file_name``                    metric depth (``depth_format`` says how it
                                                  is stored, see :mod:`.depth_io`)
intrinsics ``intrinsics``                         3x3 camera matrix K, pixels
========== ====================================== =============================================

Training needs, per branch that is on: the semantic head ``sem_seg``; the instance decoder
``instances``; the depth head ``depth`` (and ``intrinsics`` when it is camera-aware); the
point branch ``intrinsics``; and the dataset mapper ``depth`` and ``intrinsics`` when it loads
them (``INPUT.DEPTH.ENABLED``) and a sample without them is an error
(``INPUT.DEPTH.MISSING "error"``). :func:`check_training_labels` checks a config's training
datasets before training starts and names the dataset, the kind, its fields and the key
that needs it.
"""

import logging
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog

__all__ = [
    "LABEL_FIELDS",
    "MissingLabelsError",
    "labels_of",
    "keep_labels",
    "labels_needed_for_training",
    "check_training_labels",
    "check_stage_labels",
]

logger = logging.getLogger(__name__)

#: label kind -> dataset-dict fields that must all be present for a sample to carry it
LABEL_FIELDS: Dict[str, Tuple[str, ...]] = {
    "sem_seg": ("sem_seg_file_name",),
    "instances": ("annotations",),
    "panoptic": ("pan_seg_file_name", "segments_info"),
    "depth": ("depth_file_name",),
    "intrinsics": ("intrinsics",),
}

# fields removed with a kind (format fields that only mean something with it)
_DROPPED_WITH = {
    "sem_seg": ("sem_seg_file_name",),
    "instances": ("annotations",),
    "panoptic": ("pan_seg_file_name", "segments_info"),
    "depth": ("depth_file_name", "depth_format", "stereo_baseline"),
    "intrinsics": ("intrinsics",),
}


class MissingLabelsError(ValueError):
    """A training dataset lacks a label kind that the config needs."""


def _check_kinds(kinds: Iterable[str]) -> List[str]:
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in LABEL_FIELDS]
    if unknown:
        raise ValueError(f"unknown label kinds {unknown}; known: {sorted(LABEL_FIELDS)}")
    return kinds


def _has(d: Mapping, kind: str) -> bool:
    return all(f in d for f in LABEL_FIELDS[kind])


def labels_of(dicts: Sequence[Mapping]) -> List[str]:
    """The label kinds that every dict of ``dicts`` carries (sorted)."""
    return sorted(k for k in LABEL_FIELDS if dicts and all(_has(d, k) for d in dicts))


def keep_labels(dicts: Sequence[dict], kinds: Iterable[str]) -> List[dict]:
    """Shallow copies of ``dicts`` without the fields of every label kind not in ``kinds``
    (image fields ``file_name``, ``image_id``, ``height``, ``width`` always stay)."""
    kinds = set(_check_kinds(kinds))
    drop = {f for k, fields in _DROPPED_WITH.items() if k not in kinds for f in fields}
    return [{k: v for k, v in d.items() if k not in drop} for d in dicts]


def labels_needed_for_training(cfg) -> Dict[str, str]:
    """Label kinds a training run with ``cfg`` needs in every sample, each mapped to the
    config key that needs it."""
    pc = cfg.MODEL.PANOPTIC_CURRICULUM
    need = {}
    if pc.SEM_SEG_ON:
        need["sem_seg"] = "MODEL.PANOPTIC_CURRICULUM.SEM_SEG_ON"
    if pc.INSTANCE_ON:
        need["instances"] = "MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON"
    if pc.DEPTH_ON:
        need["depth"] = "MODEL.PANOPTIC_CURRICULUM.DEPTH_ON"
        if cfg.MODEL.DEPTH_HEAD.CANONICAL_FOCAL > 0:
            need["intrinsics"] = "MODEL.DEPTH_HEAD.CANONICAL_FOCAL > 0"
        elif cfg.MODEL.DEPTH_HEAD.CAMERA_COORDS:
            need["intrinsics"] = "MODEL.DEPTH_HEAD.CAMERA_COORDS"
    if cfg.MODEL.POINT_HEAD.ENABLED:
        need["intrinsics"] = "MODEL.POINT_HEAD.ENABLED"
    if cfg.INPUT.DEPTH.ENABLED and cfg.INPUT.DEPTH.MISSING == "error":
        # the mapper loads both and fails on a sample without them
        key = "INPUT.DEPTH.ENABLED with INPUT.DEPTH.MISSING 'error' (the dataset mapper)"
        need.setdefault("depth", key)
        need.setdefault("intrinsics", key)
    return need


def _missing(dicts: Sequence[Mapping], kind: str) -> Tuple[int, Optional[str]]:
    """(number of dicts without ``kind``, file name of the first one)."""
    lacking = [d for d in dicts if not _has(d, kind)]
    return len(lacking), (lacking[0].get("file_name") if lacking else None)


def _error(name: str, kind: str, count: int, total: int, example, needed_by: str) -> str:
    fields = " + ".join(f"'{f}'" for f in LABEL_FIELDS[kind])
    return (
        f"training dataset {name!r} has no {kind!r} labels (dataset-dict field {fields}) in "
        f"{count} of {total} samples (e.g. {example}), but {needed_by} needs them. Train this "
        "part on a dataset that has them (for a curriculum stage: CURRICULUM.SEMANTIC_DATASETS "
        "or CURRICULUM.INSTANCE_DATASETS), or turn the branch off."
    )


def check_training_labels(cfg, dicts: Optional[Sequence[Mapping]] = None) -> None:
    """Raise :class:`MissingLabelsError` unless every sample of ``cfg.DATASETS.TRAIN`` carries
    every label kind :func:`labels_needed_for_training` lists.

    Args:
        cfg: the training config.
        dicts: the datasets' dicts, concatenated in ``cfg.DATASETS.TRAIN`` order, when the
            caller has loaded them already; otherwise each dataset is loaded here. When a
            label is missing, the datasets are loaded one by one to name the culprit.
    """
    need = labels_needed_for_training(cfg)
    names = list(cfg.DATASETS.TRAIN)
    if dicts is not None:
        if all(_missing(dicts, kind)[0] == 0 for kind in need):
            return
        dicts = None  # find which dataset it is
    for name in names:
        ds = DatasetCatalog.get(name)
        for kind, key in need.items():
            count, example = _missing(ds, kind)
            if count:
                raise MissingLabelsError(_error(name, kind, count, len(ds), example, key))


def check_stage_labels(stage_cfgs: Mapping[str, object]) -> None:
    """Check the training datasets of several curriculum stages before any of them runs,
    loading each dataset once.

    Args:
        stage_cfgs: stage name -> the config that stage trains with.

    Raises:
        MissingLabelsError: naming the dataset, the label kind and its fields, the stage and
            the config key that needs it.
    """
    needs: Dict[str, Dict[str, str]] = {}  # dataset -> kind -> who needs it
    for stage, c in stage_cfgs.items():
        for kind, key in labels_needed_for_training(c).items():
            for name in c.DATASETS.TRAIN:
                needs.setdefault(name, {}).setdefault(kind, f"the '{stage}' stage ({key})")
    for name, kinds in needs.items():
        ds = DatasetCatalog.get(name)
        for kind, who in kinds.items():
            count, example = _missing(ds, kind)
            if count:
                raise MissingLabelsError(_error(name, kind, count, len(ds), example, who))
        logger.info("Training dataset %s carries the labels its stages need: %s", name, kinds)
