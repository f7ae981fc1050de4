"""Label-partial views of registered datasets: a range of a dataset's images with only some
of its label kinds, registered under a new name.

They stand in for datasets that carry only some labels (a semantic-only driving dataset, a
COCO-format instance dataset): the curriculum trains its semantic stage on one and its
instance stage on another (``CURRICULUM.SEMANTIC_DATASETS`` / ``INSTANCE_DATASETS``).
"""

import logging
from typing import Iterable, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..labels import LABEL_FIELDS, keep_labels

__all__ = ["register_label_subset", "evaluator_type_for_labels"]

logger = logging.getLogger(__name__)

# metadata that describes the semantic label space / the depth data
_SEMANTIC_META = ("stuff_classes", "stuff_colors", "stuff_dataset_id_to_contiguous_id")
_PANOPTIC_META = ("panoptic_root", "panoptic_json")


def evaluator_type_for_labels(kinds: Iterable[str]) -> Optional[str]:
    """detectron2's ``evaluator_type`` for a COCO-style dataset carrying label ``kinds``:
    ``"coco_panoptic_seg"`` (instances + semantic + panoptic), ``"coco"`` (instances),
    ``"sem_seg"`` (semantic only) or None (neither: depth is evaluated through
    ``has_depth``)."""
    kinds = set(kinds)
    if {"instances", "sem_seg", "panoptic"} <= kinds:
        return "coco_panoptic_seg"
    if "instances" in kinds:
        return "coco"
    if "sem_seg" in kinds:
        return "sem_seg"
    return None


def _load_subset(source: str, start: int, stop: Optional[int], labels: List[str]) -> List[dict]:
    dicts = DatasetCatalog.get(source)
    subset = dicts[start:stop]
    if not subset:
        raise ValueError(
            f"images [{start}:{stop}] of dataset {source!r} ({len(dicts)} images) are empty"
        )
    return keep_labels(subset, labels)


def register_label_subset(
    name: str, source: str, labels: Iterable[str], start: int = 0, stop: Optional[int] = None
) -> None:
    """Register images ``[start:stop]`` of the registered dataset ``source`` as ``name``,
    keeping only the label kinds ``labels`` (see
    :data:`~panoptic_curriculum.data.labels.LABEL_FIELDS`).

    The metadata is ``source``'s, without the semantic class list when ``sem_seg`` is
    dropped, without the panoptic files when ``panoptic`` is dropped, with ``has_depth``
    and ``evaluator_type`` matching the kinds kept. A name that is already registered with
    the same arguments is left as it is; with other arguments it is an error.
    """
    labels = sorted(set(labels))
    unknown = [k for k in labels if k not in LABEL_FIELDS]
    if unknown:
        raise ValueError(f"unknown label kinds {unknown}; known: {sorted(LABEL_FIELDS)}")
    if source not in DatasetCatalog.list():
        raise KeyError(f"source dataset {source!r} of {name!r} is not registered")
    spec = dict(source=source, labels=labels, start=start, stop=stop)
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("label_subset", None) == spec:
            return
        raise ValueError(f"dataset {name!r} is already registered (with other arguments)")
    DatasetCatalog.register(
        name,
        lambda source=source, start=start, stop=stop, labels=labels: _load_subset(
            source, start, stop, labels
        ),
    )
    meta = {k: v for k, v in MetadataCatalog.get(source).as_dict().items() if k != "name"}
    if "sem_seg" not in labels:
        for key in _SEMANTIC_META:
            meta.pop(key, None)
    if "panoptic" not in labels:
        for key in _PANOPTIC_META:
            meta.pop(key, None)
    meta["has_depth"] = bool(meta.get("has_depth", False)) and "depth" in labels
    meta["evaluator_type"] = evaluator_type_for_labels(labels)
    MetadataCatalog.get(name).set(label_subset=spec, **meta)
