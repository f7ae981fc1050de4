"""Synthetic scenes under distribution shift: camera and lighting ranges, unchanged default
scenes, paired relit scenes, the built-in shifted splits and tools/make_shifted_scenes.py."""

import json
import os
import sys

import numpy as np
import pytest

import panoptic_curriculum  # noqa: F401
from detectron2.data import DatasetCatalog, MetadataCatalog

from panoptic_curriculum.data.datasets.synthetic_scenes import (
    SYNTHETIC_SPLITS,
    _spec,
    register_all_synthetic_scenes,
)
from panoptic_curriculum.data.synthetic.generator import SceneRanges, render_scene, sample_scene

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import make_shifted_scenes  # noqa: E402  (tools/make_shifted_scenes.py)


def _render(seed, ranges=None, h=48, w=64):
    rng = np.random.default_rng([seed, 0])
    scene = sample_scene(rng, h, w, ranges)
    return scene, render_scene(scene, h, w, rng)


def test_default_ranges_change_nothing():
    scene, a = _render(1)
    _, b = _render(1, SceneRanges())
    assert not {"exposure", "white_balance", "ambient"} & set(scene)  # old render path
    for x, y in ((a.image, b.image), (a.depth, b.depth), (a.sem_seg, b.sem_seg), (a.K, b.K)):
        np.testing.assert_array_equal(x, y)
    # default splits keep their spec, so cached copies are not regenerated
    params = dict(num_images=3, seed=1, height=8, width=8)
    assert _spec(params) == _spec({**params, "ranges": {}}) and "ranges" not in _spec(params)


def test_camera_ranges_are_respected():
    ranges = SceneRanges(hfov_deg=(95.0, 100.0), camera_height_m=(2.0, 2.1), pitch_deg=(9, 10))
    for seed in range(5):
        _, s = _render(seed, ranges)
        assert 95.0 <= s.camera["hfov_deg"] <= 100.0
        assert 2.0 <= s.camera["camera_height_m"] <= 2.1 and 9 <= s.camera["pitch_deg"] <= 10
        fx = s.K[0, 0]
        assert fx == pytest.approx((64 / 2) / np.tan(np.deg2rad(s.camera["hfov_deg"]) / 2))


def test_relit_scene_pairs_with_the_default_one():
    _, base = _render(4)
    _, dark = _render(4, SceneRanges(exposure=(0.5, 0.5), white_balance=(0.8, 0.8)))
    np.testing.assert_array_equal(dark.depth, base.depth)  # same geometry and labels
    np.testing.assert_array_equal(dark.sem_seg, base.sem_seg)
    assert dark.image.mean() < 0.7 * base.image.mean()
    assert dark.camera["exposure"] == 0.5 and dark.camera["white_balance_rgb"] == [0.8, 1.0, 0.8]


def test_bad_ranges_are_named():
    with pytest.raises(ValueError, match=r"hfov_deg must be \(low, high\)"):
        SceneRanges(hfov_deg=(80, 50))
    with pytest.raises(ValueError, match=r"unknown scene range\(s\) \['fov'\]; known"):
        SceneRanges.from_dict({"fov": (1, 2)})


def test_builtin_shifted_splits_are_registered():
    for name in ("synthetic_scenes_shifted_camera", "synthetic_scenes_shifted_lighting"):
        assert name in DatasetCatalog.list()
        params = SYNTHETIC_SPLITS[name]
        assert params["seed"] not in (0, 1)  # not the training or validation scenes
        assert MetadataCatalog.get(name).scene_ranges == SceneRanges.from_dict(
            params["ranges"]
        ).changed()


def test_make_shifted_scenes_tool(tmp_path):
    root = str(tmp_path)
    argv = ["--root", root, "--split", "wide", "--num-images", "2", "--height", "48"]
    argv += ["--width", "64", "--preset", "camera", "--exposure", "0.5", "0.6"]
    assert make_shifted_scenes.main(argv) == 0
    split_dir = tmp_path / "synthetic_scenes" / "wide"
    spec = json.loads((split_dir / "spec.json").read_text())
    assert spec["ranges"]["hfov_deg"] == [40.0, 100.0] and spec["ranges"]["exposure"] == [0.5, 0.6]
    camera = json.loads((split_dir / "camera" / "000000.json").read_text())
    assert 40.0 <= camera["hfov_deg"] <= 100.0 and 0.5 <= camera["exposure"] <= 0.6
    dicts = DatasetCatalog.get("synthetic_scenes_wide")
    assert len(dicts) == 2 and os.path.isfile(dicts[0]["depth_file_name"])
    # a later process finds it by itself
    DatasetCatalog.remove("synthetic_scenes_wide")
    MetadataCatalog.remove("synthetic_scenes_wide")
    register_all_synthetic_scenes(root)
    assert len(DatasetCatalog.get("synthetic_scenes_wide")) == 2
    # bad input: a built-in split name, a reversed range
    assert make_shifted_scenes.main(["--root", root, "--split", "val"]) == 2
    bad = ["--root", root, "--split", "x", "--pitch", "5", "1", "--num-images", "1"]
    assert make_shifted_scenes.main(bad) == 2
    assert not (tmp_path / "synthetic_scenes" / "x").exists()
