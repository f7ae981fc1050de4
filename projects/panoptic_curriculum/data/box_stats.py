"""Object-size statistics of a detection dataset, for choosing RPN anchors.

detectron2's anchors (``MODEL.ANCHOR_GENERATOR.SIZES`` per FPN level, ``ASPECT_RATIOS`` as
height / width) should cover the objects the dataset holds at the size the network sees
them. ``box_statistics`` measures the boxes of a registered dataset (optionally rescaled to
the training resolution) and ``suggest_anchors`` turns the percentiles into a config.
"""

import math
from typing import Dict, List, Sequence

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

__all__ = ["box_statistics", "suggest_anchors", "format_box_statistics"]

_PERCENTILES = (5, 25, 50, 75, 95)


def box_statistics(dataset_name: str, image_scale: float = 1.0) -> Dict:
    """Percentiles of box size ``sqrt(w * h)`` (pixels, times ``image_scale``) and aspect
    ratio ``h / w`` (detectron2's convention), per thing class and over all boxes.

    Raises:
        ValueError: the dataset has no instance annotations (names the dataset).
    """
    dicts = DatasetCatalog.get(dataset_name)
    boxes, classes = [], []
    for d in dicts:
        for a in d.get("annotations", []):
            if a.get("iscrowd", 0):
                continue
            b = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYWH_ABS)
            boxes.append(b[2:4])
            classes.append(a["category_id"])
    if not boxes:
        raise ValueError(f"dataset {dataset_name!r} has no instance annotations ('annotations')")
    wh = np.asarray(boxes, dtype=np.float64)
    cls = np.asarray(classes)
    ok = (wh > 0).all(axis=1)
    wh, cls = wh[ok], cls[ok]
    size = np.sqrt(wh[:, 0] * wh[:, 1]) * image_scale
    ratio = wh[:, 1] / wh[:, 0]
    names = MetadataCatalog.get(dataset_name).get("thing_classes", None)

    def summary(mask):
        return {
            "count": int(mask.sum()),
            "size": dict(zip(_PERCENTILES, np.percentile(size[mask], _PERCENTILES).tolist())),
            "aspect_ratio": dict(
                zip(_PERCENTILES, np.percentile(ratio[mask], _PERCENTILES).tolist())
            ),
        }

    per_class = {}
    for c in np.unique(cls):
        name = names[c] if names and c < len(names) else str(int(c))
        per_class[name] = summary(cls == c)
    return {"all": summary(np.ones_like(cls, dtype=bool)), "per_class": per_class}


def suggest_anchors(stats: Dict, num_levels: int = 5) -> Dict[str, List]:
    """Anchor sizes (one per level, doubling, the smallest the power of two nearest the 5th
    size percentile) and aspect ratios (powers of two spanning the per-class median ratios,
    always including 1)."""
    smallest = stats["all"]["size"][5]
    start = 2 ** max(2, round(math.log2(max(smallest, 1.0))))
    sizes = [[float(start * 2**i)] for i in range(num_levels)]
    medians = [c["aspect_ratio"][50] for c in stats["per_class"].values()] or [1.0]
    lo = min(0, math.floor(math.log2(min(medians)) + 0.5))
    hi = max(0, math.ceil(math.log2(max(medians)) - 0.5))
    ratios = sorted({2.0**k for k in range(lo, hi + 1)} | {1.0})
    # keep detectron2's usual spread of at least [0.5, 1, 2]
    ratios = sorted(set(ratios) | {0.5, 2.0})
    return {"SIZES": sizes, "ASPECT_RATIOS": [ratios]}


def format_box_statistics(stats: Dict, percentiles: Sequence[int] = _PERCENTILES) -> str:
    """A plain-text table of ``box_statistics``."""
    head = "class        count  " + "  ".join(f"size p{p:<3}" for p in percentiles)
    head += "  " + "  ".join(f"h/w p{p:<3}" for p in percentiles)
    lines = [head]
    rows = list(stats["per_class"].items()) + [("all", stats["all"])]
    for name, s in rows:
        cells = "  ".join(f"{s['size'][p]:8.1f}" for p in percentiles)
        cells += "  " + "  ".join(f"{s['aspect_ratio'][p]:7.2f}" for p in percentiles)
        lines.append(f"{name[:12]:12s} {s['count']:6d}  {cells}")
    return "\n".join(lines)
