"""Pictures stay the same: the drawing and colouring code, run on the fixed inputs of
``golden_inputs.py``, reproduces bit for bit the arrays (SHA-256 of their bytes, shape, dtype)
that the code made before ``utils/visualization.py`` was split into a package and the tools'
logic moved into it (``tests/data/visualization_golden.json``): the library functions, the
hook's colouring, and what ``tools/visualize_data.py``, ``tools/demo.py`` (its
``process_image``, with a stand-in model) and ``tools/visualize_pointcloud.py`` draw.

detectron2's panoptic drawing jitters thing colours with NumPy's global random state: it is
seeded before each such drawing, as when the golden file was made.
"""

import hashlib
import json
import os

import cv2
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


class FakeRenderer:
    """Stands in for the Open3D renderer: records what it is given."""

    def __init__(self):
        self.calls = []

    def render(self, points, colors):
        self.calls.append((points, colors))
        return np.zeros((12, 16, 3), np.uint8)


def test_sample_views(golden, metadata, tmp_path):
    """``tools/visualize_data.py``'s pictures, cloud and summary entry of a mapped sample."""
    from panoptic_curriculum.data.preview import sample_views

    pictures, cloud, entry = sample_views(gi.mapped_sample(), metadata, "BGR", None)
    renderer = FakeRenderer()
    entry["files"] = V.write_views(str(tmp_path), "scene_0007", pictures, cloud, renderer)
    assert renderer.calls[0][0] is cloud[0]
    for key, name in entry["files"].items():
        assert (tmp_path / name).is_file(), name
        if key in pictures:  # the PNG holds the picture exactly
            png = cv2.imread(str(tmp_path / name))[:, :, ::-1]
            np.testing.assert_array_equal(png, pictures[key])
    out = {f"data_{k}": v for k, v in pictures.items()}
    out["data_points"], out["data_colors"] = cloud
    out["data_entry"] = json.dumps(entry, sort_keys=True)
    check(golden, out)


def test_demo_process_image(golden, metadata, tmp_path):
    """``tools/demo.py``'s pictures, cloud and summary entry of one image (a stand-in model
    returning fixed outputs)."""
    import argparse
    import sys
    from types import SimpleNamespace

    tools = os.path.join(os.path.dirname(HERE), "tools")
    sys.path.insert(0, tools)
    try:
        import demo
    finally:
        sys.path.remove(tools)

    class Predictor:
        cfg = SimpleNamespace(
            MODEL=SimpleNamespace(POINT_HEAD=SimpleNamespace(NO_SURFACE_CLASSES=[6]))
        )

        def __init__(self):
            self.metadata = metadata

        def __call__(self, image_bgr, K):
            assert image_bgr.shape == (gi.H, gi.W, 3)
            return gi.model_outputs()

    path = str(tmp_path / "in.png")
    cv2.imwrite(path, gi.image_rgb()[:, :, ::-1])
    args = argparse.Namespace(
        output=str(tmp_path), fov=60.0, confidence_threshold=0.5, max_depth=None
    )
    renderer = FakeRenderer()
    np.random.seed(0)
    entry = demo.process_image(path, "in", Predictor(), None, args, renderer)
    out = {}
    for key, name in entry["files"].items():
        if key not in ("pointcloud_ply", "pointcloud_render"):
            out[f"demo_{key}"] = cv2.imread(str(tmp_path / name))[:, :, ::-1]
    out["demo_points"], out["demo_colors"] = renderer.calls[0]
    entry["input"] = "in.png"
    out["demo_entry"] = json.dumps(entry, sort_keys=True)
    check(golden, out)


def test_point_branch_views(golden, metadata):
    """``tools/visualize_pointcloud.py``'s four colourings of the point branch's points."""
    clouds, titles, summary = V.point_branch_views(
        gi.point_branch_output(), metadata.stuff_colors, 255, gi.sem_seg()
    )
    out = {"pc_titles": titles}
    for i, (points, colors) in enumerate(clouds):
        out[f"pc_points_{i}"], out[f"pc_colors_{i}"] = points, colors
    check(golden, out)
    assert summary.startswith("40 points; 2D and 3D labels agree on 75.0%; accuracy")
