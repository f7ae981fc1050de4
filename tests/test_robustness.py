"""Image corruptions (the imagecorruptions package on today's stack), the robustness
protocol's arithmetic on hand numbers, and tools/robustness.py end to end on a 6-image split
with an untrained tiny model."""

import hashlib
import json
import os
import sys
import types

import numpy as np
import pytest
import torch

import panoptic_curriculum  # noqa: F401  (compatibility layer, dataset registration)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from panoptic_curriculum import compat
from panoptic_curriculum.data.corruptions import (
    ALL_CORRUPTIONS,
    COMMON_CORRUPTIONS,
    ImageCorruption,
    corrupt_image,
)
from panoptic_curriculum.evaluation.robustness import (
    paired_differences,
    aggregate_corruptions,
    resolve_corruptions,
    robustness_markdown,
    summarize_runs,
)

from model_utils import tiny_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import robustness as robustness_tool  # noqa: E402  (tools/robustness.py)

IMAGE = (np.random.RandomState(0).rand(40, 48, 3) * 255).astype(np.uint8)


# ---------------------------------------------------------------- corruptions
@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_every_corruption_runs_at_both_ends(name):
    for severity in (1, 5):
        out = corrupt_image(IMAGE, name, severity, seed=3)
        assert out.shape == IMAGE.shape and out.dtype == np.uint8
        assert not np.array_equal(out, IMAGE), (name, severity)
        np.testing.assert_array_equal(out, corrupt_image(IMAGE, name, severity, seed=3))


def test_severity_seed_and_channel_order():
    mild = np.abs(corrupt_image(IMAGE, "gaussian_noise", 1).astype(int) - IMAGE).mean()
    severe = np.abs(corrupt_image(IMAGE, "gaussian_noise", 5).astype(int) - IMAGE).mean()
    assert severe > 2 * mild
    a = corrupt_image(IMAGE, "shot_noise", 2, seed=0)
    assert not np.array_equal(a, corrupt_image(IMAGE, "shot_noise", 2, seed=1))
    # BGR in, BGR out: the same corruption of the same picture
    bgr = corrupt_image(IMAGE[:, :, ::-1], "saturate", 3, image_format="BGR")
    np.testing.assert_array_equal(bgr[:, :, ::-1], corrupt_image(IMAGE, "saturate", 3))
    # NumPy's global random state is left as it was
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    corrupt_image(IMAGE, "gaussian_noise", 1)
    assert np.random.rand() == expected


def test_bad_corruption_input_lists_the_valid_values():
    with pytest.raises(ValueError, match=r"unknown corruption.*'rain'.*valid.*gaussian_noise"):
        corrupt_image(IMAGE, "rain", 1)
    for bad in (0, 6):
        with pytest.raises(ValueError, match=r"severities must be in \[1, 2, 3, 4, 5\]"):
            corrupt_image(IMAGE, "fog", bad)
    with pytest.raises(ValueError, match="at least 32x32"):
        corrupt_image(IMAGE[:20], "fog", 1)
    with pytest.raises(ValueError, match="uint8"):
        corrupt_image(IMAGE.astype(np.float32), "fog", 1)
    with pytest.raises(ValueError, match="'rain'.*'common', 'extra', 'all', 'none'"):
        resolve_corruptions(["noise", "rain"])
    with pytest.raises(ValueError, match="unknown corruption"):
        ImageCorruption("rain", 1)
    assert resolve_corruptions(["noise", "gaussian_noise", "none"]) == [
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
    ]
    assert resolve_corruptions(["common"]) == list(COMMON_CORRUPTIONS)


def test_corruption_transform_leaves_geometry_alone():
    from detectron2.data import transforms as T

    from panoptic_curriculum.data.transforms import transform_depth, transform_intrinsics

    aug_input = T.AugInput(IMAGE.copy(), sem_seg=np.ones((40, 48), np.uint8))
    tfm = T.AugmentationList([ImageCorruption("fog", 2)])(aug_input)
    assert not np.array_equal(aug_input.image, IMAGE)
    np.testing.assert_array_equal(aug_input.sem_seg, 1)
    K = np.array([[50.0, 0, 20], [0, 50, 20], [0, 0, 1]])
    np.testing.assert_array_equal(transform_intrinsics(tfm, K), K)
    depth = np.full((40, 48), 3.0, np.float32)
    np.testing.assert_array_equal(transform_depth(tfm, depth), depth)


# ---------------------------------------------------------------- compatibility fixes
def test_compat_gaussian_multichannel_wrapper_and_inert_where_supported():
    def old_gaussian(image, sigma=1, multichannel=False):  # scikit-image < 0.19
        return ("old", multichannel)

    def new_gaussian(image, sigma=1, *, channel_axis=None):
        return ("new", channel_axis)

    np_with_alias = types.SimpleNamespace(float_=np.float64)
    old = types.SimpleNamespace(gaussian=old_gaussian, np=np_with_alias)
    assert compat.patch_imagecorruptions(old) == []
    assert old.gaussian is old_gaussian  # untouched where multichannel still exists
    new = types.SimpleNamespace(gaussian=new_gaussian, np=np_with_alias)
    assert "gaussian(multichannel)" in compat.patch_imagecorruptions(new)
    assert new.gaussian(None, sigma=2, multichannel=True) == ("new", -1)
    assert new.gaussian(None, sigma=2, multichannel=False) == ("new", None)
    assert "gaussian(multichannel)" not in compat.patch_imagecorruptions(new)  # once only


def test_compat_numpy_float_alias_only_where_missing():
    with_alias = types.SimpleNamespace(float_=np.float64)
    mod = types.SimpleNamespace(gaussian=lambda image, multichannel=None: 0, np=with_alias)
    assert compat.patch_imagecorruptions(mod) == []
    assert mod.np is with_alias
    mod = types.SimpleNamespace(gaussian=lambda image, multichannel=None: 0, np=np)
    assert compat.patch_imagecorruptions(mod) == ["np.float_"]  # NumPy 2 removed it
    assert mod.np.float_ is np.float64 and mod.np.empty((2,), dtype=mod.np.float_).dtype == float
    assert mod.np.pi == np.pi  # everything else is NumPy's


def test_compat_resource_filename_of_a_module():
    path = compat._resource_filename("imagecorruptions.corruptions", "./frost/frost1.png")
    assert os.path.isfile(path)
    assert compat._resource_filename("detectron2", "model_zoo").startswith(
        os.path.dirname(__import__("detectron2").__file__)
    )
    with pytest.raises(ImportError, match="no_such_package"):
        compat._resource_filename("no_such_package", "x")


def test_glass_blur_is_the_packages_exactly():
    from PIL import Image

    from panoptic_curriculum.data.corruptions import _glass_blur

    ic = compat.import_imagecorruptions()
    # every severity (pixel displacements of 1-4 and 1-3 passes, so chains of moves that
    # the vectorised version must resolve in the package's order), landscape and portrait
    tall = (np.random.RandomState(1).rand(56, 36, 3) * 255).astype(np.uint8)
    for image in (IMAGE, tall):
        for severity in (1, 2, 3, 4, 5):
            np.random.seed(11 + severity)
            expected = np.uint8(ic.corruptions.glass_blur(Image.fromarray(image), severity))
            np.random.seed(11 + severity)
            np.testing.assert_array_equal(np.uint8(_glass_blur(image, severity)), expected)


# ---------------------------------------------------------------- protocol arithmetic
def test_aggregation_on_hand_numbers():
    clean = {"mIoU": 80.0, "d1": 0.8}
    corrupted = {
        "fog": {1: {"mIoU": 70.0, "d1": 0.7}, 3: {"mIoU": 60.0, "d1": 0.5}},
        "snow": {1: {"mIoU": 50.0, "d1": 0.6}, 3: {"mIoU": 30.0, "d1": 0.2}},
    }
    agg = aggregate_corruptions(clean, corrupted)
    assert agg["per_corruption"]["fog"] == pytest.approx({"mIoU": 65.0, "d1": 0.6})
    assert agg["per_corruption"]["snow"] == pytest.approx({"mIoU": 40.0, "d1": 0.4})
    assert agg["mPC"] == pytest.approx({"mIoU": 52.5, "d1": 0.5})
    assert agg["rPC"] == pytest.approx({"mIoU": 52.5 / 80.0, "d1": 0.5 / 0.8})
    assert aggregate_corruptions(clean, {}) == {"per_corruption": {}, "mPC": {}, "rPC": {}}
    with pytest.raises(KeyError, match="'snow'.*'d1'"):
        aggregate_corruptions(clean, {"snow": {1: {"mIoU": 1.0}}})

    # two seeds under one label: mean and sample standard deviation
    def result(shift):
        c = {m: v + shift for m, v in clean.items()}
        cor = {n: {s: {m: v + shift for m, v in r.items()} for s, r in by.items()}
               for n, by in corrupted.items()}
        return {"metrics": ["mIoU", "d1"], "clean": c, "corrupted": cor,
                **aggregate_corruptions(c, cor)}

    summary = summarize_runs({"point": [result(0.0), result(2.0)]})["point"]
    assert summary["mPC"]["mIoU"]["mean"] == pytest.approx(53.5)
    assert summary["mPC"]["mIoU"]["std"] == pytest.approx(np.std([52.5, 54.5], ddof=1))
    assert summary["by_severity"]["mIoU"][0]["mean"] == pytest.approx(81.0)
    assert summary["by_severity"]["mIoU"][3]["mean"] == pytest.approx((60 + 30) / 2 + 1.0)
    text = robustness_markdown({"point": summary}, ["a note"])
    assert "| point (n=2) | 81.0 ± 1.4 | 53.5 ± 1.4 |" in text
    assert "Note: a note" in text

    # paired by position: (0 - 2, 3 - 0) = (-2, +3) on every number that shifts
    runs = {"point": [result(0.0), result(3.0)], "no_point": [result(2.0), result(0.0)]}
    paired = paired_differences(runs, "no_point")
    assert list(paired) == ["point"] and paired["point"]["num_pairs"] == 2
    for stat in (paired["point"]["clean"]["mIoU"], paired["point"]["mPC"]["mIoU"],
                 paired["point"]["per_corruption"]["fog"]["mIoU"]):
        assert stat["mean"] == pytest.approx(0.5) and stat["n"] == 2
        assert stat["std"] == pytest.approx(np.std([-2.0, 3.0], ddof=1))
    text = robustness_markdown(summarize_runs(runs), paired=paired, baseline="no_point")
    assert "Paired by position, point − no_point (2 pairs" in text
    assert "| mPC | +0.5 ± 3.5 | +0.500 ± 3.536 |" in text
    with pytest.raises(ValueError, match="not one of the labels"):
        paired_differences(runs, "nope")
    with pytest.raises(ValueError, match="models per label"):
        paired_differences({**runs, "third": [result(1.0)]}, "no_point")


# ---------------------------------------------------------------- the tool end to end
def _tree_digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(path.encode())
            h.update(open(path, "rb").read())
            h.update(str(os.stat(path).st_mtime_ns).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def checkpoint(module_tmp_path):
    torch.manual_seed(0)
    path = str(module_tmp_path / "model.pth")
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, path)
    return path


def _opts(split):
    cfg = tiny_cfg()
    overrides = []  # the tiny model's sizes, as in model_utils.tiny_cfg
    for key in (
        "MODEL.FPN.OUT_CHANNELS",
        "MODEL.ROI_BOX_HEAD.FC_DIM",
        "MODEL.ROI_MASK_HEAD.CONV_DIM",
        "MODEL.ROI_MASK_HEAD.NUM_CONV",
        "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM",
        "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS",
        "MODEL.DEPTH_HEAD.CONVS_DIM",
        "MODEL.POINT_HEAD.NUM_POINTS",
        "MODEL.POINT_HEAD.SA_NUM_CENTROIDS",
        "MODEL.POINT_HEAD.SA_NUM_NEIGHBORS",
        "MODEL.POINT_HEAD.SA_RADII",
        "MODEL.POINT_HEAD.SA_CHANNELS",
        "MODEL.POINT_HEAD.FP_CHANNELS",
    ):
        node = cfg
        for part in key.split("."):
            node = node[part]
        overrides += [key, str(list(node) if isinstance(node, (list, tuple)) else node)]
    return overrides + [
        "DATASETS.TEST",
        f"('{split}',)",
        "INPUT.MIN_SIZE_TEST",
        "96",
        "DATALOADER.NUM_WORKERS",
        "0",
    ]


def test_robustness_tool_end_to_end(small_split, small_split_dir, checkpoint, tmp_path):
    before = _tree_digest(small_split_dir)
    out = tmp_path / "rob"
    argv = [
        "--weights", checkpoint,
        "--labels", "tiny",
        "--corruptions", "gaussian_noise",
        "--severities", "1", "5",
        "--output", str(out),
        *_opts(small_split),
    ]  # fmt: skip
    assert robustness_tool.main(argv) == 0
    assert _tree_digest(small_split_dir) == before  # the dataset's files are untouched
    report = json.loads((out / "robustness.json").read_text())
    (run,) = report["runs"]["tiny"]
    assert run["metrics"] == ["mIoU", "PQ", "d1"] and run["num_images"] == 6
    assert set(run["corrupted"]["gaussian_noise"]) == {"1", "5"}
    by_s = run["corrupted"]["gaussian_noise"]
    assert by_s["1"] != by_s["5"]  # the corruption reached the model
    for m in run["metrics"]:  # the protocol, recomputed from the stored numbers
        mean = (by_s["1"][m] + by_s["5"][m]) / 2
        assert run["per_corruption"]["gaussian_noise"][m] == pytest.approx(mean)
        assert run["mPC"][m] == pytest.approx(mean)
        if run["clean"][m]:
            assert run["rPC"][m] == pytest.approx(mean / run["clean"][m])
    assert report["summary"]["tiny"]["num_models"] == 1
    assert (out / "robustness.png").stat().st_size > 1000
    assert "| tiny (n=1) |" in (out / "robustness.md").read_text()
    (folder,) = os.listdir(out / "runs")
    assert folder.startswith("00-tiny-")  # index, label, digest of weights and configs
    cached = sorted(os.listdir(out / "runs" / folder / f"{small_split}_firstall_seed0"))
    assert cached == ["clean.json", "gaussian_noise_1.json", "gaussian_noise_5.json"]


def test_robustness_cache_belongs_to_the_weights_and_the_settings(
    small_split, checkpoint, tmp_path
):
    """An output folder re-used with other weights under the same label, or with another
    test size, evaluates afresh instead of returning the cached numbers; the same weights
    and settings read the cache back."""
    torch.manual_seed(7)
    other = str(tmp_path / "other.pth")
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, other)
    out = tmp_path / "rob"

    def clean(weights, *extra):
        argv = ["--weights", weights, "--labels", "tiny", "--corruptions", "none"]
        argv += ["--max-images", "2", "--output", str(out), *_opts(small_split), *extra]
        assert robustness_tool.main(argv) == 0
        report = json.loads((out / "robustness.json").read_text())
        return report["runs"]["tiny"][0]["clean"]

    first = clean(checkpoint)
    alone = tmp_path / "alone"
    argv = ["--weights", other, "--labels", "tiny", "--corruptions", "none", "--max-images"]
    assert robustness_tool.main(argv + ["2", "--output", str(alone), *_opts(small_split)]) == 0
    other_alone = json.loads((alone / "robustness.json").read_text())["runs"]["tiny"][0]
    assert first != other_alone["clean"]
    assert clean(other) == other_alone["clean"]  # not the first checkpoint's cached numbers
    assert len(os.listdir(out / "runs")) == 2
    larger = clean(checkpoint, "INPUT.MIN_SIZE_TEST", "128")
    assert len(os.listdir(out / "runs")) == 3 and larger != first
    # the same weights and settings again: read back, no new cache folder
    assert clean(checkpoint) == first and len(os.listdir(out / "runs")) == 3


def test_robustness_tool_without_depth_and_bad_arguments(small_split, checkpoint, tmp_path):
    name = "synthetic_scenes_test_small_no_depth"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(
            name,
            lambda: [
                {k: v for k, v in d.items() if k not in ("depth_file_name", "depth_format")}
                for d in DatasetCatalog.get(small_split)
            ],
        )
        meta = MetadataCatalog.get(small_split).as_dict()
        meta.pop("name")
        MetadataCatalog.get(name).set(**{**meta, "has_depth": False})
    out = tmp_path / "nodepth"
    argv = ["--weights", checkpoint, "--corruptions", "none", "--max-images", "3"]
    argv += ["--output", str(out)] + _opts(small_split) + ["DATASETS.TEST", f"('{name}',)"]
    assert robustness_tool.main(argv) == 0
    report = json.loads((out / "robustness.json").read_text())
    (run,) = report["runs"][checkpoint]
    assert run["metrics"] == ["mIoU", "PQ"] and run["num_images"] == 3
    assert run["mPC"] == {} and run["corrupted"] == {}
    assert "reporting segmentation metrics only" in (out / "robustness.md").read_text()

    bad = ["--weights", checkpoint, "--output", str(tmp_path / "bad")]
    assert robustness_tool.main(bad + ["--corruptions", "rain"]) == 2
    assert robustness_tool.main(bad + ["--severities", "0"]) == 2
    assert robustness_tool.main(["--weights", str(tmp_path / "missing.pth")]) == 2
    assert not (tmp_path / "bad").exists()


def test_robustness_tool_paired_against(small_split, checkpoint, tmp_path):
    """--paired-against: the report adds each other label minus the named one, checkpoint by
    checkpoint; a label that is not given, or labels with unequal numbers of checkpoints,
    are refused before anything is evaluated."""
    torch.manual_seed(3)
    other = str(tmp_path / "other.pth")
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, other)
    out = tmp_path / "rob"
    argv = ["--weights", checkpoint, other, "--labels", "a", "b", "--corruptions",
            "gaussian_noise", "--severities", "3", "--max-images", "2", "--output", str(out)]
    assert robustness_tool.main(argv + ["--paired-against", "b", *_opts(small_split)]) == 0
    report = json.loads((out / "robustness.json").read_text())
    assert report["paired"]["against"] == "b"
    diff = report["paired"]["differences"]["a"]
    a, b = report["runs"]["a"][0], report["runs"]["b"][0]
    for m in a["metrics"]:
        assert diff["clean"][m]["mean"] == pytest.approx(a["clean"][m] - b["clean"][m])
        assert diff["mPC"][m]["mean"] == pytest.approx(a["mPC"][m] - b["mPC"][m])
    assert "Paired by position, a − b (1 pair;" in (out / "robustness.md").read_text()
    bad = tmp_path / "bad"
    for extra in (["--paired-against", "c"], ["--labels", "a", "a", "--paired-against", "a"]):
        argv = ["--weights", checkpoint, other, "--labels", "a", "b", "--output", str(bad)]
        assert robustness_tool.main(argv + extra + _opts(small_split)) == 2
    assert not bad.exists()


def test_robustness_tool_models_built_differently(small_split, checkpoint, tmp_path):
    """--model-configs: a checkpoint without the point branch is loaded (strictly) with its
    own config next to one with it; both are evaluated, each under its label."""
    torch.manual_seed(1)
    no_point = str(tmp_path / "no_point.pth")
    cfg = tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", "MODEL.POINT_HEAD.ENABLED", False)
    torch.save({"model": build_model(cfg).state_dict()}, no_point)
    with_point_cfg = os.path.join(REPO, "configs/synthetic/curriculum_R18_FPN.yaml")
    no_point_cfg = os.path.join(REPO, "configs/synthetic/curriculum_R18_FPN_no_point.yaml")
    out = tmp_path / "rob"
    argv = [
        "--config-file", with_point_cfg,
        "--weights", checkpoint, no_point,
        "--model-configs", with_point_cfg, no_point_cfg,
        "--labels", "point", "no_point",
        "--corruptions", "none",
        "--max-images", "2",
        "--output", str(out),
        *_opts(small_split),
    ]  # fmt: skip
    assert robustness_tool.main(argv) == 0
    report = json.loads((out / "robustness.json").read_text())
    assert set(report["runs"]) == {"point", "no_point"}
    assert report["runs"]["point"][0]["clean"] != report["runs"]["no_point"][0]["clean"]
    # without --model-configs the point-less checkpoint does not fit the model: refused
    with pytest.raises(Exception, match="point_head"):
        robustness_tool.main(argv[:5] + argv[8:])
    one_config = argv[:5] + ["--model-configs", with_point_cfg] + argv[8:]
    assert robustness_tool.main(one_config) == 2
