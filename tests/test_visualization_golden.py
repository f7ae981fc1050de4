"""Pictures stay the same: the drawing and colouring code, run on the fixed inputs of
``golden_inputs.py``, reproduces bit for bit the arrays (SHA-256 of their bytes, shape, dtype)
that the code made before ``utils/visualization.py`` was split into a package and the tools'
logic moved into it (``tests/data/visualization_golden.json``).

detectron2's panoptic drawing jitters thing colours with NumPy's global random state: it is
seeded before each such drawing, as when the golden file was made.
"""

import hashlib
import json
import os

import numpy as np
import pytest

import panoptic_curriculum  # noqa: F401  (detectron2 compatibility fixes, dataset registration)
import golden_inputs as gi
from panoptic_curriculum.utils import visualization as V

from detectron2.data import MetadataCatalog

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "data", "visualization_golden.json")


@pytest.fixture(scope="module")
def golden():
    with open(GOLDEN) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def metadata():
    return MetadataCatalog.get("synthetic_scenes_val")  # registered at import


def digest(value):
    if isinstance(value, (list, str)):
        return value
    a = np.ascontiguousarray(value)
    sha = hashlib.sha256(a.tobytes()).hexdigest()
    return {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": sha}


def check(golden, outputs):
    assert outputs, "nothing computed"
    mismatched = [k for k, v in outputs.items() if digest(v) != golden[k]]
    assert not mismatched, f"outputs differ from the golden file: {mismatched}"


def test_drawing_functions(golden, metadata):
    img, dep, sem = gi.image_rgb(), gi.depth(), gi.sem_seg()
    out = {
        "depth_bar": V.colorize_depth(dep),
        "depth_plain_5m": V.colorize_depth(dep, 5.0, with_scale_bar=False),
        "semantic": V.draw_semantic(img, sem, metadata),
        "instances_gt": V.draw_instances(img, gi.gt_instances(), metadata),
        "instances_pred": V.draw_instances(img, gi.pred_instances(), metadata),
        "instances_annos": V.draw_instances(img, gi.annotations(), metadata),
        "instances_empty": V.draw_instances(img, [], metadata),
        "title": V.add_title(img, "a fairly long title that needs shrinking"),
        "tiles": V.tile_panels([img, img[:30, :40]], ["left", "right"]),
    }
    pan, seg = gi.panoptic()
    np.random.seed(0)
    out["panoptic"] = V.draw_panoptic(img, pan, seg, metadata)
    np.random.seed(0)
    pictures = V.draw_prediction(img, gi.model_outputs(), metadata, 0.5, None)
    assert sorted(pictures) == ["depth", "instances", "panoptic", "semantic"]
    out.update({f"prediction_{k}": v for k, v in pictures.items()})
    check(golden, out)


def test_point_colours(golden, metadata):
    dep, sem = gi.depth(), gi.sem_seg()
    out = {}
    out["ccp_points"], out["ccp_colors"] = V.class_colored_points(
        dep, gi.K, sem, metadata.stuff_colors
    )
    out["ccp_drop_points"], out["ccp_drop_colors"] = V.class_colored_points(
        dep, gi.K, sem, metadata.stuff_colors, keep_ignored=False
    )
    labels = np.array([0, 3, 6, 255, 7, -1, 2])
    out["label_point_colors"] = V.label_point_colors(labels, metadata.stuff_colors)
    out["disagreement"] = V.disagreement_point_colors(labels, labels[::-1])
    out["prediction_points"], out["prediction_colors"] = V.prediction_point_cloud(
        gi.model_outputs(), gi.K, metadata, [6]
    )
    check(golden, out)


def test_hook_colours(golden):
    """The point-cloud dump hook's palette (padded) and colouring, through the shared
    helpers."""
    palette = V.class_palette(gi.short_metadata(), 5)
    labels = np.array([0, 1, 2, 3, 4, 255, 9])
    pixels = gi.point_branch_output()["pixels"].double().numpy()
    out = {
        "hook_colors": V.label_point_colors(labels, palette, 255),
        "hook_labels_at_pixels": V.labels_at_pixels(gi.sem_seg(), pixels),
    }
    check(golden, out)


def test_package_exports():
    """``panoptic_curriculum.utils`` re-exports (lazily) every public name of the package."""
    import panoptic_curriculum.utils as utils

    assert sorted(utils.__all__) == sorted(V.__all__)
    for name in V.__all__:
        assert getattr(utils, name) is getattr(V, name)
