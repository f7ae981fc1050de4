"""Training-time camera (zoom) and photometric augmentation: K follows the zoom, depth and
labels stay aligned, colours change as specified, bad config values are named."""

import math

import numpy as np
import pytest
import torch
from fvcore.transforms.transform import NoOpTransform

import detectron2.data.transforms as T

from panoptic_curriculum.data.augmentations import (
    PhotometricTransform,
    RandomPhotometric,
    RandomZoom,
)
from panoptic_curriculum.data.dataset_mapper import RGBDDatasetMapper, build_rgbd_augmentation

from model_utils import tiny_cfg


def _map(d, augs):
    return RGBDDatasetMapper(True, augmentations=augs)(d)


@pytest.mark.parametrize("zoom", [1.25, 0.8])
def test_zoom_updates_K_and_keeps_depth_and_labels_aligned(small_dicts, zoom):
    d = small_dicts[0]
    a = _map(d, [])
    np.random.seed(0)
    b = _map(d, [RandomZoom((zoom, zoom))])
    h, w = a["depth"].shape
    assert b["image"].shape == a["image"].shape and b["depth"].shape == (h, w)
    Ka, Kb = a["intrinsics"].double(), b["intrinsics"].double()
    new_h, new_w = round(h * zoom), round(w * zoom)
    assert float(Kb[0, 0]) == pytest.approx(float(Ka[0, 0]) * new_w / w, rel=1e-6)
    assert float(Kb[1, 1]) == pytest.approx(float(Ka[1, 1]) * new_h / h, rel=1e-6)
    # every output pixel with depth is the source pixel it was resampled from, seen through
    # the new K: its 3D point projects back (original K) into that source pixel
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    valid = b["depth"] > 0
    z = b["depth"][valid].double()
    uv1 = torch.stack([u[valid], v[valid], torch.ones_like(u[valid])], 0).double()
    points = torch.linalg.inv(Kb) @ uv1 * z
    proj = Ka @ points
    su, sv = proj[0] / proj[2], proj[1] / proj[2]
    assert ((su > -0.5) & (su < w - 0.5) & (sv > -0.5) & (sv < h - 0.5)).all()
    iu, iv = su.round().long(), sv.round().long()
    src_depth = a["depth"][iv, iu].double()
    # nearest resampling: the source pixel may be the neighbour of the rounded projection
    close = (src_depth - z).abs() < 1e-4
    assert close.float().mean() > 0.9
    same_label = a["sem_seg"][iv, iu] == b["sem_seg"][valid]
    assert same_label.float().mean() > 0.9
    if zoom < 1:  # the padded border is ignored in the labels and invalid in depth
        border = b["sem_seg"] == 255
        assert border.any() and (b["depth"][border] == 0).all()
        assert (b["image"][:, border] == 0).all()
    assert len(b["instances"]) > 0


def test_zoom_draws_log_uniform_factors_and_rejects_bad_ranges():
    np.random.seed(1)
    aug = RandomZoom((0.5, 2.0))
    image = np.zeros((100, 100, 3), np.uint8)
    sizes = [aug.get_transform(image).transforms[0].new_h for _ in range(400)]
    logs = np.log(np.array(sizes) / 100)
    assert abs(logs.mean()) < 0.08 and logs.min() < -0.6 and logs.max() > 0.6
    with pytest.raises(ValueError, match="ZOOM_RANGE.*0 < min <= max"):
        RandomZoom((1.2, 0.8))


def test_photometric_transform_is_exact_where_it_should_be():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(PhotometricTransform().apply_image(img), img)
    grey = np.full((8, 8, 3), 100, np.uint8)
    for fmt in ("RGB", "BGR"):
        out = PhotometricTransform(hue_deg=90.0, saturation=1.5, image_format=fmt)
        np.testing.assert_array_equal(out.apply_image(grey), grey)  # greys stay grey
    # white balance: red gain 1.2 in RGB is channel 2 in BGR
    wb = PhotometricTransform(gains_rgb=(1.2, 1.0, 0.5), image_format="BGR").apply_image(grey)
    assert tuple(wb[0, 0]) == (50, 100, 120)
    bgr = PhotometricTransform(brightness=1.1, hue_deg=20, image_format="BGR")
    rgb = PhotometricTransform(brightness=1.1, hue_deg=20, image_format="RGB")
    np.testing.assert_array_equal(bgr.apply_image(img[..., ::-1])[..., ::-1], rgb.apply_image(img))
    noisy = PhotometricTransform(noise_std=10.0, noise_seed=3).apply_image(grey)
    assert 5 < np.std(noisy.astype(float)) < 15
    seg = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(bgr.apply_segmentation(seg), seg)


def test_random_photometric_changes_colours_not_geometry(small_dicts):
    d = small_dicts[1]
    a = _map(d, [])
    aug = RandomPhotometric(
        brightness=0.3,
        contrast=0.3,
        saturation=0.3,
        white_balance=0.2,
        hue_deg=10,
        blur_sigma=1.5,
        blur_prob=1.0,
        noise_std=5,
        noise_prob=1.0,
    )
    np.random.seed(0)
    b = _map(d, [aug])
    assert b["image"].dtype == torch.uint8 and b["image"].shape == a["image"].shape
    assert not torch.equal(b["image"], a["image"])
    for key in ("sem_seg", "depth", "intrinsics"):
        assert torch.equal(b[key], a[key]), key


def _photometric_aug(prob):
    cfg = tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml")
    cfg.INPUT.PHOTOMETRIC.ENABLED = True
    cfg.INPUT.PHOTOMETRIC.PROB = prob
    return build_rgbd_augmentation(cfg, True)[-1]


def test_photometric_prob_applies_the_change_to_that_fraction_of_images():
    img = np.random.default_rng(0).integers(0, 256, size=(8, 10, 3), dtype=np.uint8)
    np.random.seed(0)
    never = _photometric_aug(0.0)
    assert all(isinstance(never.get_transform(img), NoOpTransform) for _ in range(50))
    half = _photometric_aug(0.5)
    assert isinstance(half, T.RandomApply) and isinstance(half.aug, RandomPhotometric)
    changed = [
        not np.array_equal(half.get_transform(img).apply_image(img), img) for _ in range(400)
    ]
    assert 0.4 < np.mean(changed) < 0.6
    always = _photometric_aug(1.0)  # every image, drawn as before PROB existed
    assert type(always) is RandomPhotometric
    with pytest.raises(ValueError, match=r"INPUT.PHOTOMETRIC.PROB must be in \[0, 1\]"):
        _photometric_aug(1.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"brightness": 1.0}, r"BRIGHTNESS must be in \[0, 1\)"),
        ({"hue_deg": 200}, r"HUE must be in \[0, 180\]"),
        ({"blur_sigma": 0.1}, r"BLUR_SIGMA must be 0 \(off\) or in \[0.3, 20\]"),
        ({"noise_prob": 1.5}, r"NOISE_PROB must be in \[0, 1\]"),
    ],
)
def test_photometric_bad_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomPhotometric(**kwargs)


def test_config_switches():
    base = tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml")
    for node in ("PHOTOMETRIC", "CAMERA_AUG"):
        base.INPUT[node].ENABLED = False
    kinds = [type(a) for a in build_rgbd_augmentation(base, True)]
    assert RandomPhotometric not in kinds and RandomZoom not in kinds
    base.INPUT.PHOTOMETRIC.ENABLED = base.INPUT.CAMERA_AUG.ENABLED = True
    base.INPUT.PHOTOMETRIC.PROB = 1.0  # the main config's 0.5 wraps it in RandomApply
    augs = build_rgbd_augmentation(base, True)
    assert [type(a) for a in augs[-2:]] == [RandomZoom, RandomPhotometric]
    assert all(type(a) not in (RandomZoom, RandomPhotometric) for a in
               build_rgbd_augmentation(base, False))  # never at test time
    mapper = RGBDDatasetMapper(base, True)
    assert mapper.recompute_boxes
