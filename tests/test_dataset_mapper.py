"""RGBDDatasetMapper: consistent augmentation of image, labels, instances, depth and K, and
clear errors for bad input."""

import copy
import os

import cv2
import numpy as np
import pytest
import torch

import detectron2.data.transforms as T
from detectron2.config import get_cfg

from panoptic_curriculum import add_panoptic_curriculum_config, load_config
from panoptic_curriculum.data.dataset_mapper import RGBDDatasetMapper, build_rgbd_augmentation
from panoptic_curriculum.geometry import backproject, project


def _points(depth, K):
    return backproject(depth[None].double(), K[None].double())[0]


def _map(d, augs, is_train=True, **kw):
    return RGBDDatasetMapper(is_train, augmentations=augs, **kw)(d)


def test_output_keys_types_and_shapes(small_dicts):
    d = small_dicts[0]
    out = _map(d, [])
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 96, 128)
    assert out["sem_seg"].dtype == torch.int64 and out["sem_seg"].shape == (96, 128)
    assert out["depth"].dtype == torch.float32 and out["depth"].shape == (96, 128)
    assert out["intrinsics"].dtype == torch.float32 and out["intrinsics"].shape == (3, 3)
    np.testing.assert_allclose(out["intrinsics"].numpy(), np.asarray(d["intrinsics"]), rtol=1e-6)
    inst = out["instances"]
    assert len(inst) == len(d["annotations"]) and inst.gt_masks.tensor.shape[1:] == (96, 128)
    assert "annotations" in d  # the input dict is not modified


def test_inference_drops_annotations_keeps_depth(small_dicts):
    out = _map(small_dicts[0], [T.ResizeShortestEdge(64, 1000)], is_train=False)
    assert "annotations" not in out and "instances" not in out
    assert out["depth"].shape == (64, 85) and out["image"].shape[1:] == (64, 85)


def test_hflip_mirrors_points_in_x(small_dicts):
    d = small_dicts[1]
    a, b = _map(d, []), _map(d, [T.RandomFlip(prob=1.0)])
    pa, pb = _points(a["depth"], a["intrinsics"]), _points(b["depth"], b["intrinsics"])
    mirrored = pa.flip(1) * torch.tensor([-1.0, 1.0, 1.0], dtype=pa.dtype)
    torch.testing.assert_close(pb, mirrored, atol=1e-4, rtol=1e-5)


def test_crop_keeps_points(small_dicts):
    d = small_dicts[2]
    a = _map(d, [])
    b = _map(d, [T.CropTransform(10, 7, 80, 60)])
    pa = _points(a["depth"], a["intrinsics"])[7:67, 10:90]
    torch.testing.assert_close(_points(b["depth"], b["intrinsics"]), pa, atol=1e-4, rtol=1e-5)
    assert torch.equal(b["sem_seg"], a["sem_seg"][7:67, 10:90])


@pytest.mark.parametrize("short", [60, 150])  # down- and up-scaling
def test_resize_crop_flip_gives_same_3d_points(small_dicts, short):
    """Every augmented pixel back-projects (with the updated K) onto the ray of the source
    position it samples, at the source pixel's depth: the same 3D point, up to the
    nearest-neighbour sub-pixel offset, which projection with the original K recovers."""
    d = small_dicts[3]
    src = _map(d, [])
    torch.manual_seed(0)
    np.random.seed(0)
    augs = [
        T.ResizeShortestEdge(short, 1000),
        T.RandomCrop("absolute", (50, 70)),
        T.RandomFlip(prob=1.0),
    ]
    out = _map(d, augs)
    pts = _points(out["depth"], out["intrinsics"])  # [h, w, 3]
    valid = out["depth"] > 0
    # undo the flip in 3D, then project with the original K into the original image
    pts = pts * torch.tensor([-1.0, 1.0, 1.0], dtype=pts.dtype)
    uv, z = project(pts[valid][None], src["intrinsics"][None].double())
    uv, z = uv[0], z[0]
    # nearest-neighbour rule: the sampled source pixel is the one whose centre is nearest to
    # the continuous source position; at exact ties either neighbour may be taken (PIL's
    # rounding), so both candidates are tried. 1e-3 absorbs the float32 error of K.
    assert (uv >= -0.5 - 1e-3).all() and (uv[:, 0] < 128 - 0.5 + 1e-3).all()
    assert (uv[:, 1] < 96 - 0.5 + 1e-3).all()
    matched = torch.zeros(len(z), dtype=torch.bool)
    for dc in (-1e-3, 1e-3):
        for dr in (-1e-3, 1e-3):
            col = torch.floor(uv[:, 0] + 0.5 + dc).long().clamp(0, 127)
            row = torch.floor(uv[:, 1] + 0.5 + dr).long().clamp(0, 95)
            # the 3D point is the source pixel's ray at the source pixel's depth: same
            # depth exactly (no interpolation), same label, sub-pixel offset <= 0.5
            same = ((z.float() - src["depth"][row, col]).abs() <= 1e-5) & (
                out["sem_seg"][valid] == src["sem_seg"][row, col]
            )
            matched |= same & ((uv - torch.stack([col, row], 1)).abs().max(1).values <= 0.5 + 1e-3)
    assert matched.all(), f"{(~matched).sum()} of {len(z)} pixels do not map back"


def test_depth_values_are_never_interpolated(small_dicts):
    d = small_dicts[4]
    src = _map(d, [])
    out = _map(d, [T.ResizeShortestEdge(77, 1000)])
    assert set(np.unique(out["depth"].numpy())) <= set(np.unique(src["depth"].numpy()))


def test_instance_masks_align_with_labels(small_dicts):
    d = small_dicts[5]
    out = _map(d, [T.ResizeShortestEdge(130, 1000), T.RandomFlip(prob=1.0)])
    inst = out["instances"]
    for m, c in zip(inst.gt_masks.tensor, inst.gt_classes):
        labels = out["sem_seg"][m]
        assert (labels == c).float().mean() > 0.95


def test_from_config(small_dicts):
    cfg = get_cfg()
    add_panoptic_curriculum_config(cfg)
    cfg.merge_from_file("configs/synthetic/curriculum_R18_FPN.yaml")
    mapper = RGBDDatasetMapper(cfg, is_train=True)
    out = mapper(small_dicts[0])
    assert out["depth"].shape == out["sem_seg"].shape == out["image"].shape[1:]
    assert {"image", "sem_seg", "instances", "depth", "intrinsics"} <= set(out)


# ------------------------------------------------------------------- bad input


def test_missing_depth_file(small_dicts, tmp_path):
    d = dict(small_dicts[0], depth_file_name=str(tmp_path / "nope.png"))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        _map(d, [])


def test_depth_of_wrong_size(small_dicts, tmp_path):
    bad = tmp_path / "small_depth.png"
    cv2.imwrite(str(bad), np.ones((10, 12), np.uint16))
    with pytest.raises(ValueError, match="small_depth.png"):
        _map(dict(small_dicts[0], depth_file_name=str(bad)), [])


def test_nan_depth(small_dicts, tmp_path):
    depth = np.ones((96, 128), np.float32)
    depth[3, 4] = np.nan
    bad = tmp_path / "nan_depth.npy"
    np.save(bad, depth)
    with pytest.raises(ValueError, match="nan_depth.npy.*non-finite"):
        _map(dict(small_dicts[0], depth_file_name=str(bad), depth_format="npy_m"), [])


@pytest.mark.parametrize(
    "K",
    [
        [[0, 0, 64], [0, 100, 48], [0, 0, 1]],
        [[100, 0, 64], [0, -1, 48], [0, 0, 1]],
        [[100, 0, float("nan")], [0, 100, 48], [0, 0, 1]],
        [[100, 0, 64], [0, 100, 48]],
    ],
)
def test_degenerate_intrinsics(small_dicts, K):
    with pytest.raises(ValueError, match="intrinsics of .*000000.png"):
        _map(dict(small_dicts[0], intrinsics=K), [])


def test_undecodable_image(small_dicts, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        _map(dict(small_dicts[0], file_name=str(bad)), [])


def test_missing_depth_policy(small_dicts):
    d = copy.deepcopy(small_dicts[0])
    del d["depth_file_name"]
    with pytest.raises(KeyError, match="depth_file_name"):
        _map(d, [])
    out = _map(d, [T.RandomFlip(prob=1.0)], missing_depth="skip")
    assert "depth" not in out and "sem_seg" in out
    # K alone is still carried, updated by the flip
    assert out["intrinsics"][0, 2] == pytest.approx(127 - d["intrinsics"][0][2], abs=1e-4)
    del d["intrinsics"]
    out = _map(d, [], missing_depth="skip")
    assert "depth" not in out and "intrinsics" not in out


def test_unknown_depth_format(small_dicts):
    with pytest.raises(KeyError, match="unknown depth_format 'exr'"):
        _map(dict(small_dicts[0], depth_format="exr"), [])


# ---------------------------------------------------------------- augmentation order

CONFIGS = sorted(
    os.path.join(root, f)
    for root, _, files in os.walk(os.path.join(os.path.dirname(__file__), "..", "configs"))
    for f in files
    if f.startswith("curriculum_")
)


@pytest.mark.parametrize("config_file", CONFIGS, ids=os.path.basename)
def test_every_config_resizes_then_crops(config_file):
    cfg = load_config(config_file)
    augs = build_rgbd_augmentation(cfg, is_train=True)
    # (an augmentation applied to a fraction of the images counts as the one it wraps)
    augs = [a.aug if isinstance(a, T.RandomApply) else a for a in augs]
    kinds = [type(a) for a in augs]
    # the plugin's camera / photometric augmentations (INPUT.CAMERA_AUG, INPUT.PHOTOMETRIC)
    # come after detectron2's, on the training-size tensors
    extra = [k for k in kinds if k.__module__.startswith("panoptic_curriculum")]
    assert kinds[len(kinds) - len(extra) :] == extra
    kinds = kinds[: len(kinds) - len(extra)]
    if cfg.INPUT.CROP.ENABLED:
        assert kinds == [T.ResizeShortestEdge, T.RandomCrop, T.RandomFlip]
        assert tuple(augs[1].crop_size) == tuple(cfg.INPUT.CROP.SIZE)
    else:
        assert kinds == [T.ResizeShortestEdge, T.RandomFlip]
    # never a crop at inference
    assert [type(a) for a in build_rgbd_augmentation(cfg, is_train=False)] == [T.ResizeShortestEdge]


def test_cityscapes_sample_resized_then_cropped_with_k_and_depth(tmp_path):
    """A 1024x2048 Cityscapes-sized sample through the Cityscapes config's training mapper:
    every output is the configured 512x1024 crop of an image resized by a random scale, and
    the new K describes it. Depth encodes each source pixel (1 + u + W v), so the output depth
    names the source pixel of every output pixel (nearest-neighbour resampling), and the ray
    of every output pixel centre through the new K must be the ray of that source pixel
    through the original K, up to half a source pixel (mirrored in x after a flip)."""
    h, w = 1024, 2048
    K = np.array([[2262.52, 0.0, 1096.98], [0.0, 2265.30, 513.137], [0.0, 0.0, 1.0]])
    cv2.imwrite(str(tmp_path / "image.png"), np.full((h, w, 3), 100, np.uint8))
    cv2.imwrite(str(tmp_path / "labels.png"), np.full((h, w), 7, np.uint8))
    v, u = np.mgrid[0:h, 0:w]
    np.save(tmp_path / "depth.npy", (1.0 + u + w * v).astype(np.float32))  # exact in float32
    d = {
        "file_name": str(tmp_path / "image.png"),
        "sem_seg_file_name": str(tmp_path / "labels.png"),
        "depth_file_name": str(tmp_path / "depth.npy"),
        "depth_format": "npy_m",
        "intrinsics": K.tolist(),
        "height": h,
        "width": w,
    }
    cfg = load_config("configs/cityscapes/curriculum_R50_FPN.yaml", ["INPUT.DEPTH.MAX_DEPTH", 1e9])
    mapper = RGBDDatasetMapper(cfg, is_train=True)
    scales, flips = set(), set()
    for seed in range(4):
        np.random.seed(seed)  # detectron2's augmentations draw from NumPy's global RNG
        out = mapper(d)
        assert out["image"].shape == (3, 512, 1024)
        assert out["sem_seg"].shape == out["depth"].shape == (512, 1024)
        assert bool((out["sem_seg"] == 7).all())
        source = out["depth"].numpy().astype(np.int64) - 1
        su, sv = source % w, source // w
        K2 = out["intrinsics"].double().numpy()
        scales.add(round(K2[0, 0] / K[0, 0], 6))
        flipped = bool(su[0, 1] < su[0, 0])
        flips.add(flipped)
        vo, uo = np.mgrid[0:512, 0:1024]
        ray_x = (uo - K2[0, 2]) / K2[0, 0]
        ray_y = (vo - K2[1, 2]) / K2[1, 1]
        src_x = (su - K[0, 2]) / K[0, 0] * (-1 if flipped else 1)
        src_y = (sv - K[1, 2]) / K[1, 1]
        half = 0.5 + 1e-3  # half a source pixel, plus float32 rounding of the new K
        assert np.abs(ray_x - src_x).max() <= half / K[0, 0]
        assert np.abs(ray_y - src_y).max() <= half / K[1, 1]
        np.testing.assert_allclose(K2[0, 0] / K[0, 0], K2[1, 1] / K[1, 1], rtol=1e-6)  # float32 K
    assert len(scales) > 1  # the random resize did happen, and before the crop
    assert flips == {True, False}  # these seeds draw both
