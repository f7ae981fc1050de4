"""Tests of panoptic_curriculum.utils.visualization and of tools/visualize_data.py, on small
hand-made depth maps (known K, labels) and one end-to-end run of the tool."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import panoptic_curriculum  # noqa: F401  (detectron2 compatibility fixes, dataset registration)
from panoptic_curriculum.geometry import backproject
from panoptic_curriculum.utils import (
    IGNORED_POINT_COLOR,
    PointCloudRenderer,
    class_colored_points,
    colorize_depth,
    draw_instances,
    draw_panoptic,
    draw_semantic,
    render_point_cloud,
    save_point_cloud_ply,
)

import cv2
from detectron2.data import MetadataCatalog
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 6, 8
K = np.array([[10.0, 0.0, 3.5], [0.0, 12.0, 2.5], [0.0, 0.0, 1.0]], dtype=np.float32)
COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)  # 3 classes, 0..255
INVALID = [(0, 0), (2, 5), (5, 7)]  # (v, u) with depth 0
IGNORED = [(1, 1), (4, 2)]  # (v, u) labelled 255


@pytest.fixture(scope="module")
def scene():
    """``depth`` (H, W) metres with INVALID pixels 0, ``labels`` (H, W) with IGNORED 255."""
    v, u = np.mgrid[0:H, 0:W]
    depth = (1.0 + 0.5 * v + 0.25 * u).astype(np.float32)
    labels = ((u + v) % 3).astype(np.int64)
    for vv, uu in INVALID:
        depth[vv, uu] = 0.0
    for vv, uu in IGNORED:
        labels[vv, uu] = 255
    return depth, labels


@pytest.fixture(scope="module")
def metadata():
    return MetadataCatalog.get("synthetic_scenes_val")  # registered at import, not generated


def test_class_colored_points(scene):
    depth, labels = scene
    points, colors = class_colored_points(depth, K, labels, COLORS)
    valid = depth > 0
    assert points.shape == colors.shape == (int(valid.sum()), 3)
    assert points.dtype == np.float32
    expected = backproject(torch.from_numpy(depth)[None], torch.from_numpy(K)[None])[0].numpy()
    np.testing.assert_allclose(points, expected[valid], rtol=1e-6, atol=1e-6)
    lab = labels[valid]
    known = lab != 255
    np.testing.assert_allclose(colors[known], COLORS[lab[known]] / 255.0, atol=1e-6)
    np.testing.assert_allclose(colors[~known], np.tile(IGNORED_POINT_COLOR, ((~known).sum(), 1)))
    assert (~known).sum() == len(IGNORED)

    # torch inputs, and dropping the ignored pixels
    points2, colors2 = class_colored_points(
        torch.from_numpy(depth),
        torch.from_numpy(K),
        torch.from_numpy(labels),
        COLORS.tolist(),
        keep_ignored=False,
    )
    keep = valid & (labels != 255)
    assert points2.shape[0] == int(keep.sum())
    np.testing.assert_allclose(points2, expected[keep], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(colors2, COLORS[labels[keep]] / 255.0, atol=1e-6)


def test_class_colored_points_rejects_unknown_labels(scene):
    depth, labels = scene
    bad = labels.copy()
    bad[3, 3] = 7
    with pytest.raises(ValueError, match="7"):
        class_colored_points(depth, K, bad, COLORS)


def test_colorize_depth(scene):
    depth, _ = scene
    plain = colorize_depth(depth, with_scale_bar=False)
    assert plain.shape == (H, W, 3) and plain.dtype == np.uint8
    invalid = depth == 0
    assert (plain[invalid] == 0).all()
    assert (plain[~invalid].max(axis=1) > 0).all()

    wide = np.zeros((40, 200), dtype=np.float32)
    wide[10:30, 20:180] = np.linspace(0.5, 30.0, 160, dtype=np.float32)[None]
    with_bar = colorize_depth(wide, max_depth=40.0)
    assert with_bar.shape[0] > 40 and with_bar.shape[1:] == (200, 3)
    assert with_bar.dtype == np.uint8
    assert (with_bar[:40][wide == 0] == 0).all()
    np.testing.assert_array_equal(with_bar[:40], colorize_depth(wide, 40.0, with_scale_bar=False))
    assert len(np.unique(with_bar[40:].reshape(-1, 3), axis=0)) > 20  # gradient + labels


def test_save_point_cloud_ply_roundtrip(scene, tmp_path):
    import open3d as o3d  # a pinned dependency: its absence is a failure

    depth, labels = scene
    points, colors = class_colored_points(depth, K, labels, COLORS)
    path = str(tmp_path / "sub" / "cloud.ply")
    save_point_cloud_ply(path, points, colors)
    pc = o3d.io.read_point_cloud(path)
    assert len(pc.points) == points.shape[0]
    np.testing.assert_allclose(np.asarray(pc.points), points, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(pc.colors), colors, atol=1.0 / 255 + 1e-6)

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bad_path = str(blocker / "cloud.ply")
    with pytest.raises(OSError, match="a_file"):
        save_point_cloud_ply(bad_path, points, colors)


def test_render_point_cloud_upright():
    """A square in front of the camera, coloured by quadrant: the rendering keeps the image's
    orientation (y up/down, x left/right)."""
    import open3d  # noqa: F401  a pinned dependency: its absence is a failure

    g = np.linspace(-1.0, 1.0, 60, dtype=np.float32)
    x, y = np.meshgrid(g, g)
    points = np.stack([x, y, np.full_like(x, 5.0)], axis=-1).reshape(-1, 3)
    quadrant_colors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float32)
    quadrant = (points[:, 1] > 0).astype(int) * 2 + (points[:, 0] > 0).astype(int)
    colors = quadrant_colors[quadrant]  # top-left red, top-right green, bottom-left blue, ...

    image = render_point_cloud(points, colors, width=96, height=72, point_size=3.0)
    assert image.shape == (72, 96, 3) and image.dtype == np.uint8
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1

    def centre(rgb):
        rows, cols = np.nonzero((np.abs(image.astype(int) - rgb) < 40).all(axis=-1))
        assert rows.size > 0, f"colour {rgb} not rendered"
        return rows.mean(), cols.mean()

    red, green, blue = centre([255, 0, 0]), centre([0, 255, 0]), centre([0, 0, 255])
    assert red[0] < blue[0]  # y < 0 (up in the camera) is drawn above
    assert red[1] < green[1]  # x < 0 (left in the camera) is drawn left

    # a reusable renderer gives the same picture; the shared one is replaced and back
    renderer = PointCloudRenderer(96, 72, point_size=3.0)
    np.testing.assert_array_equal(renderer.render(points, colors), image)
    renderer.close()
    assert render_point_cloud(points[:10], None, width=32, height=24).shape == (24, 32, 3)


def test_draw_semantic_and_instances(metadata):
    height, width = 48, 64
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    sem_seg = np.full((height, width), 5, dtype=np.int64)  # ground
    sem_seg[:16] = 6  # sky
    sem_seg[20:40, 10:30] = 1  # crate
    sem_seg[0:4, 0:4] = 255
    out = draw_semantic(image, torch.from_numpy(sem_seg), metadata)
    assert out.shape == (height, width, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, image)

    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 20:40, 10:30] = True
    masks[1, 5:15, 40:60] = True
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [40.0, 5.0, 60.0, 15.0]])

    gt = Instances((height, width))
    gt.gt_boxes, gt.gt_classes, gt.gt_masks = Boxes(boxes), torch.tensor([1, 3]), BitMasks(masks)
    pred = Instances((height, width))
    pred.pred_boxes, pred.pred_classes = Boxes(boxes), torch.tensor([0, 2])
    pred.scores, pred.pred_masks = torch.tensor([0.9, 0.6]), masks
    annos = [
        {
            "bbox": [10, 20, 20, 20],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 1,
            "segmentation": [[10, 20, 30, 20, 30, 40, 10, 40]],
        },
    ]
    for inputs in (gt, pred, annos, Instances((height, width), gt_classes=torch.zeros(0))):
        out = draw_instances(image, inputs, metadata)
        assert out.shape == (height, width, 3) and out.dtype == np.uint8

    panoptic = np.zeros((height, width), dtype=np.int64)
    panoptic[:16], panoptic[16:] = 1, 2
    panoptic[20:40, 10:30] = 3
    segments = [
        {"id": 1, "category_id": 6, "isthing": False},
        {"id": 2, "category_id": 4, "isthing": False},
        {"id": 3, "category_id": 1, "isthing": True},
    ]
    out = draw_panoptic(image, panoptic, segments, metadata)
    assert out.shape == (height, width, 3) and out.dtype == np.uint8
    assert "area" not in segments[0]  # inputs untouched


def test_visualize_data_tool(tmp_path):
    """End to end: the tool on one augmented sample of a freshly generated val split."""
    import open3d as o3d  # a pinned dependency: its absence is a failure

    out_dir = tmp_path / "preview"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(REPO, "projects")] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    env["DETECTRON2_DATASETS"] = str(tmp_path / "datasets")
    config = os.path.join(REPO, "configs", "synthetic", "curriculum_R18_FPN.yaml")
    cmd = [sys.executable, os.path.join(REPO, "tools", "visualize_data.py")]
    cmd += ["--config-file", config, "--output-dir", str(out_dir)]
    cmd += "--source dataloader --dataset synthetic_scenes_val --num-images 1".split()
    cmd += "--render-size 160 120 DATALOADER.NUM_WORKERS 0".split()  # last: config opts
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    with open(out_dir / "summary.json") as f:
        summary = json.load(f)
    assert summary["dataset"] == "synthetic_scenes_val" and summary["num_images"] == 1
    (sample,) = summary["samples"]
    height, width = sample["image_size"]
    stem = os.path.splitext(os.path.basename(sample["file_name"]))[0]
    expected = {
        "image": f"{stem}_image.png",
        "semantic": f"{stem}_semantic.png",
        "instances": f"{stem}_instances.png",
        "depth": f"{stem}_depth.png",
        "pointcloud_ply": f"{stem}_pointcloud.ply",
        "pointcloud_render": f"{stem}_pointcloud.png",
    }
    assert sample["files"] == expected
    for name in expected.values():
        assert (out_dir / name).is_file(), name

    def png_shape(key):
        image = cv2.imread(str(out_dir / expected[key]), cv2.IMREAD_UNCHANGED)
        assert image is not None, expected[key]
        return image.shape

    for key in ("image", "semantic", "instances"):
        assert png_shape(key) == (height, width, 3)
    depth_shape = png_shape("depth")
    assert depth_shape[0] > height and depth_shape[1:] == (width, 3)
    assert png_shape("pointcloud_render") == (120, 160, 3)

    assert np.asarray(sample["intrinsics"]).shape == (3, 3)
    assert sample["num_instances"] >= 0
    pc = o3d.io.read_point_cloud(str(out_dir / expected["pointcloud_ply"]))
    assert sample["num_valid_depth_pixels"] > 0
    assert len(pc.points) == sample["num_points"] == sample["num_valid_depth_pixels"]


def test_prediction_point_cloud_skips_no_surface_classes():
    from types import SimpleNamespace

    from panoptic_curriculum.utils.visualization import prediction_point_cloud

    h, w = 6, 8
    logits = torch.zeros(3, h, w)
    logits[2, :2] = 5.0  # class 2 ("sky") on the top two rows
    logits[0, 2:] = 5.0
    outputs = {"sem_seg": logits, "depth": torch.full((h, w), 4.0)}
    K = np.array([[10.0, 0, 3.5], [0, 10.0, 2.5], [0, 0, 1]])
    meta = SimpleNamespace(get=lambda k, d=None: [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    pts, cols = prediction_point_cloud(outputs, K, meta)
    assert len(pts) == h * w
    pts, cols = prediction_point_cloud(outputs, K, meta, skip_classes=[2])
    assert len(pts) == (h - 2) * w and np.allclose(cols, [1.0, 0.0, 0.0])
