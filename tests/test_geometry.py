"""Tests of the pinhole geometry (panoptic_curriculum.geometry) and of how detectron2's
geometric transforms update depth maps and intrinsics (panoptic_curriculum.data.transforms).

Pixel convention under test: pixel ``(u, v)`` (column, row) has its centre at the continuous
coordinate ``(u, v)``; an image of width ``W`` spans ``[-0.5, W - 0.5]``.
"""

import numpy as np
import pytest
import torch

import panoptic_curriculum  # noqa: F401  (detectron2 compatibility fixes)
from panoptic_curriculum import geometry
from panoptic_curriculum.geometry import (
    backproject,
    check_intrinsics,
    crop_intrinsics,
    hflip_intrinsics,
    project,
    resize_intrinsics,
)

from detectron2.data import transforms as T  # noqa: E402
from fvcore.transforms.transform import CropTransform, HFlipTransform  # noqa: E402

from panoptic_curriculum.data.transforms import (  # noqa: E402
    resize_depth_nearest,
    transform_depth,
    transform_intrinsics,
)


def _K(fx, fy, cx, cy, s=0.0, dtype=torch.float64):
    return torch.tensor([[fx, s, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def _random_K(rng, h, w, skew=0.0):
    fx = rng.uniform(100.0, 600.0)
    fy = fx * rng.uniform(0.8, 1.2)
    cx = w * rng.uniform(0.3, 0.7)
    cy = h * rng.uniform(0.3, 0.7)
    return _K(fx, fy, cx, cy, skew)


def _random_depth(rng, h, w, lo=0.2, hi=10.0, invalid=0.2):
    depth = rng.uniform(lo, hi, size=(h, w)).astype(np.float32)
    depth[rng.random((h, w)) < invalid] = 0.0
    return depth


def _points(rng, n=200):
    """Camera-frame points in front of the camera, ``[n, 3]`` float64."""
    xy = rng.uniform(-5.0, 5.0, size=(n, 2))
    z = rng.uniform(1.0, 20.0, size=(n, 1))
    return torch.from_numpy(np.concatenate([xy, z], axis=1))


# ---------------------------------------------------------------- backprojection vs Open3D


OPEN3D_SIZES = [(1, 1), (5, 7), (31, 45), (48, 64), (97, 130)]


def test_backproject_matches_open3d():
    import open3d as o3d  # a pinned dependency: its absence is a failure

    rng = np.random.default_rng(0)
    worst = {torch.float32: 0.0, torch.float64: 0.0}
    for h, w in OPEN3D_SIZES:
        K = _random_K(rng, h, w)
        fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
        assert fx != fy and cx != (w - 1) / 2 and cy != (h - 1) / 2
        depth = _random_depth(rng, h, w)
        if h * w > 1:
            depth[0, 0] = 0.0  # an invalid pixel in every multi-pixel case
        cloud = o3d.geometry.PointCloud.create_from_depth_image(
            o3d.geometry.Image(depth),
            o3d.camera.PinholeCameraIntrinsic(w, h, fx, fy, cx, cy),
            depth_scale=1.0,
            depth_trunc=1e6,
            project_valid_depth_only=True,
        )
        expected = np.asarray(cloud.points)
        valid = depth.reshape(-1) > 0
        assert expected.shape == (int(valid.sum()), 3)
        for dtype in worst:
            points = backproject(torch.from_numpy(depth).to(dtype)[None], K[None].to(dtype))
            assert points.shape == (1, h, w, 3) and points.dtype == dtype
            ours = points[0].reshape(-1, 3).double().numpy()
            assert np.all(ours[~valid] == 0.0)  # invalid pixels map to the origin
            dev = float(np.abs(ours[valid] - expected).max()) if valid.any() else 0.0
            worst[dtype] = max(worst[dtype], dev)
    for dtype, dev in worst.items():
        print(
            f"\nmax deviation from Open3D: {dev:.3g} m ({str(dtype)[6:]} backproject, sizes "
            f"{OPEN3D_SIZES}, depth 0.2-10 m)"
        )
        assert dev < 1e-5


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_backproject_round_trip(dtype):
    rng = np.random.default_rng(1)
    b, h, w = 3, 6, 9
    K = torch.stack([_random_K(rng, h, w, skew=s) for s in (0.0, 1.5, -0.7)]).to(dtype)
    depth = torch.from_numpy(np.stack([_random_depth(rng, h, w) for _ in range(b)])).to(dtype)
    depth[1, 2, 3] = -1.0  # behind the camera
    depth[2, 0, 0] = 0.0
    uv, z = project(backproject(depth, K), K)
    assert uv.shape == (b, h, w, 2) and z.shape == (b, h, w)
    assert uv.dtype == dtype and z.dtype == dtype
    valid = depth > 0
    u, v = geometry.pixel_grid(h, w, dtype=dtype)
    grid = torch.stack([u, v], dim=-1).expand(b, h, w, 2)
    atol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(uv[valid], grid[valid], atol=atol, rtol=0)
    torch.testing.assert_close(z, depth, atol=atol, rtol=1e-6)
    assert torch.isnan(uv[~valid]).all()
    assert not torch.isnan(uv[valid]).any()


def test_project_points_behind_camera_are_nan():
    K = _K(200.0, 180.0, 30.0, 20.0)[None]
    points = torch.tensor(
        [[[0.5, 0.2, 2.0], [0.5, 0.2, 0.0], [0.5, 0.2, -3.0]]], dtype=torch.float64
    )
    uv, z = project(points, K)
    assert torch.allclose(uv[0, 0], torch.tensor([30.0 + 50.0, 20.0 + 18.0], dtype=torch.float64))
    assert torch.isnan(uv[0, 1:]).all()
    torch.testing.assert_close(z[0], points[0, :, 2])


def test_pixel_grid():
    u, v = geometry.pixel_grid(2, 3)
    assert u.tolist() == [[0, 1, 2], [0, 1, 2]]
    assert v.tolist() == [[0, 0, 0], [1, 1, 1]]


# ---------------------------------------------------------------- intrinsics updates


SKEWS = [0.0, 1.7]


def _proj(P, K):
    uv, _ = project(P[None], K[None])
    return uv[0]


@pytest.mark.parametrize("skew", SKEWS)
@pytest.mark.parametrize("sx,sy", [(0.5, 0.5), (2.0, 3.0), (0.37, 1.21)])
def test_resize_intrinsics(skew, sx, sy):
    rng = np.random.default_rng(2)
    P = _points(rng)
    K = _K(420.0, 400.0, 311.3, 170.6, skew)
    uv = _proj(P, K)
    expected = (uv + 0.5) * torch.tensor([sx, sy], dtype=torch.float64) - 0.5
    torch.testing.assert_close(_proj(P, resize_intrinsics(K, sx, sy)), expected)


@pytest.mark.parametrize("skew", SKEWS)
def test_crop_intrinsics(skew):
    rng = np.random.default_rng(3)
    P = _points(rng)
    K = _K(420.0, 400.0, 311.3, 170.6, skew)
    expected = _proj(P, K) - torch.tensor([13.0, 7.0], dtype=torch.float64)
    torch.testing.assert_close(_proj(P, crop_intrinsics(K, 13, 7)), expected)


def _mirror(P):
    return P * torch.tensor([-1.0, 1.0, 1.0], dtype=P.dtype)


@pytest.mark.parametrize("skew", SKEWS)
def test_hflip_intrinsics_projection(skew):
    rng = np.random.default_rng(4)
    P = _points(rng)
    width = 640
    K = _K(420.0, 400.0, 311.3, 170.6, skew)
    K_flip = hflip_intrinsics(K, width)
    assert K_flip[0, 0] > 0  # focal length stays positive
    uv = _proj(P, K)
    expected = torch.stack([width - 1 - uv[:, 0], uv[:, 1]], dim=-1)
    torch.testing.assert_close(_proj(_mirror(P), K_flip), expected)


@pytest.mark.parametrize("skew", [0.0, 2.0])
def test_hflip_depth_backprojects_to_mirrored_points_exactly(skew):
    """Dyadic intrinsics and depths: every operation is exact, so is the mirror."""
    h, w = 5, 8
    K = _K(256.0, 128.0, 3.25, 1.5, skew)[None]
    rng = np.random.default_rng(5)
    depth = torch.from_numpy(rng.integers(0, 80, size=(1, h, w)) / 8.0)
    points = backproject(depth, K)
    flipped = backproject(depth.flip(-1), hflip_intrinsics(K, w)).flip(-2)
    assert torch.equal(flipped, _mirror(points))


@pytest.mark.parametrize("skew", SKEWS)
def test_hflip_depth_backprojects_to_mirrored_points(skew):
    rng = np.random.default_rng(6)
    h, w = 7, 11
    K = _random_K(rng, h, w, skew)[None]
    depth = torch.from_numpy(_random_depth(rng, h, w)).double()[None]
    points = backproject(depth, K)
    flipped = backproject(depth.flip(-1), hflip_intrinsics(K, w)).flip(-2)
    torch.testing.assert_close(flipped, _mirror(points), atol=1e-12, rtol=0)


def test_intrinsics_updates_batched_and_pure():
    K = torch.stack([_K(400.0, 410.0, 100.0, 50.0), _K(300.0, 320.0, 90.0, 40.0, 1.0)])
    K0 = K.clone()
    for fn, args in (
        (resize_intrinsics, (0.5, 2.0)),
        (crop_intrinsics, (3, 4)),
        (hflip_intrinsics, (200,)),
    ):
        out = fn(K, *args)
        assert out.shape == K.shape
        torch.testing.assert_close(out[1], fn(K[1], *args))
        assert torch.equal(K, K0)  # input untouched


# ---------------------------------------------------------------- gradients


def test_backproject_gradcheck():
    gen = torch.Generator().manual_seed(0)
    depth = (0.5 + torch.rand(2, 2, 3, dtype=torch.float64, generator=gen)).requires_grad_()
    K = torch.stack([_K(3.0, 2.5, 1.2, 0.7, 0.3), _K(2.0, 2.2, 0.9, 1.1)]).requires_grad_()
    assert torch.autograd.gradcheck(backproject, (depth, K))


def test_project_gradcheck():
    gen = torch.Generator().manual_seed(1)
    points = torch.rand(2, 4, 3, dtype=torch.float64, generator=gen) + torch.tensor(
        [-0.5, -0.5, 1.0], dtype=torch.float64
    )
    points.requires_grad_()
    K = torch.stack([_K(3.0, 2.5, 1.2, 0.7, 0.3), _K(2.0, 2.2, 0.9, 1.1)]).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, k: project(p, k)[0], (points, K))


# ---------------------------------------------------------------- check_intrinsics


def test_check_intrinsics_accepts_valid():
    check_intrinsics(_K(400.0, 410.0, 100.0, 50.0, 1.0))
    check_intrinsics(torch.stack([_K(400.0, 410.0, 100.0, 50.0)] * 3).float())


def _bad(i, j, value):
    K = _K(400.0, 410.0, 100.0, 50.0)
    K[i, j] = value
    return K


@pytest.mark.parametrize(
    "K",
    [
        _bad(0, 0, 0.0),
        _bad(0, 0, -400.0),
        _bad(1, 1, 0.0),
        _bad(1, 1, -1.0),
        _bad(0, 2, float("nan")),
        _bad(1, 2, float("inf")),
        _bad(0, 0, float("nan")),
        _bad(2, 2, 2.0),
        _bad(2, 0, 0.1),
        _bad(2, 1, -1.0),
        torch.eye(3, dtype=torch.float64)[:2],
        torch.eye(4, dtype=torch.float64)[:3],
        torch.eye(4, dtype=torch.float64),
        torch.ones(9, dtype=torch.float64),
        torch.stack([_K(400.0, 410.0, 100.0, 50.0), _bad(0, 0, -1.0)]),
    ],
    ids=[
        "fx=0",
        "fx<0",
        "fy=0",
        "fy<0",
        "cx=nan",
        "cy=inf",
        "fx=nan",
        "K22=2",
        "K20!=0",
        "K21!=0",
        "shape2x3",
        "shape3x4",
        "shape4x4",
        "shape9",
        "batch-one-bad",
    ],
)
def test_check_intrinsics_rejects(K):
    with pytest.raises(ValueError):
        check_intrinsics(K)


# ---------------------------------------------------------------- detectron2 transforms


K_NP = np.array([[420.0, 0.0, 211.3], [0.0, 400.0, 97.6], [0.0, 0.0, 1.0]])
K_NP_SKEW = np.array([[420.0, 1.7, 211.3], [0.0, 400.0, 97.6], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("K", [K_NP, K_NP_SKEW], ids=["no-skew", "skew"])
def test_transform_intrinsics_matches_geometry(K):
    Kt = torch.from_numpy(K)
    resize = T.ResizeTransform(200, 400, 150, 260)
    crop = CropTransform(x0=17, y0=9, w=120, h=80)
    flip = HFlipTransform(width=400)
    cases = [
        (resize, resize_intrinsics(Kt, 260 / 400, 150 / 200)),
        (crop, crop_intrinsics(Kt, 17, 9)),
        (flip, hflip_intrinsics(Kt, 400)),
    ]
    for t, expected in cases:
        out = transform_intrinsics(t, K)
        assert isinstance(out, np.ndarray) and out.shape == (3, 3)
        np.testing.assert_allclose(out, expected.numpy(), rtol=0, atol=1e-12)
    # composition, in order
    crop2 = CropTransform(x0=5, y0=3, w=100, h=60)
    flip2 = HFlipTransform(width=100)
    tl = T.TransformList([resize, crop2, flip2])
    expected = hflip_intrinsics(crop_intrinsics(resize_intrinsics(Kt, 0.65, 0.75), 5, 3), 100)
    np.testing.assert_allclose(transform_intrinsics(tl, K), expected.numpy(), atol=1e-12)
    np.testing.assert_array_equal(K, K_NP_SKEW if K[0, 1] else K_NP)  # input untouched


@pytest.mark.parametrize(
    "t",
    [
        T.ResizeTransform(200, 400, 150, 260),
        CropTransform(x0=17, y0=9, w=120, h=80),
        HFlipTransform(width=400),
    ],
    ids=["resize", "crop", "hflip"],
)
def test_transform_intrinsics_agrees_with_detectron2_coords(t):
    """detectron2 puts pixel centres at ``u + 0.5``; its apply_coords (used for boxes and
    keypoints) must move projected points exactly as the updated intrinsics do."""
    rng = np.random.default_rng(7)
    P = _points(rng)
    K = torch.from_numpy(K_NP_SKEW)
    uv = _proj(P, K).numpy()
    new_K = torch.from_numpy(transform_intrinsics(t, K_NP_SKEW))
    P_new = _mirror(P) if isinstance(t, HFlipTransform) else P
    expected = t.apply_coords(uv + 0.5) - 0.5
    np.testing.assert_allclose(_proj(P_new, new_K).numpy(), expected, atol=1e-9, rtol=0)


def _source_index_through_labels(t, h, w):
    """Flat source pixel index read by every output pixel of detectron2's label-map path
    (apply_segmentation on uint8), recovered from three uint8 planes of the index."""
    idx = np.arange(h * w, dtype=np.int64).reshape(h, w)
    out = 0
    for k in range(3):
        plane = ((idx >> (8 * k)) & 255).astype(np.uint8)
        out = out | (t.apply_segmentation(plane).astype(np.int64) << (8 * k))
    return out


RESIZES = [
    (30, 40, 15, 20),  # / 2
    (37, 53, 20, 31),  # odd, uneven
    (64, 128, 50, 100),
    (1024, 2048, 800, 1600),  # Cityscapes to an 800 shortest edge
    (100, 7, 33, 3),
    (7, 9, 16, 20),  # up
    (2, 2, 7, 7),  # ties at exact half-pixels
    (6, 9, 9, 13),
    (5, 3, 21, 17),
]


@pytest.mark.parametrize("h,w,new_h,new_w", RESIZES)
def test_resize_depth_nearest_selects_pil_nearest_source_pixels(h, w, new_h, new_w):
    t = T.ResizeTransform(h, w, new_h, new_w)
    expected = _source_index_through_labels(t, h, w)
    assert expected.shape == (new_h, new_w)
    idx = np.arange(h * w, dtype=np.float32).reshape(h, w)
    out = resize_depth_nearest(idx, new_h, new_w)
    assert out.shape == (new_h, new_w)
    mismatch = np.argwhere(out.astype(np.int64) != expected)
    assert len(mismatch) == 0, (
        f"{len(mismatch)} of {out.size} pixels read another source pixel than the labels, "
        f"first at output (v, u) = {tuple(mismatch[0])}: depth reads "
        f"{divmod(int(out[tuple(mismatch[0])]), w)}, labels read "
        f"{divmod(int(expected[tuple(mismatch[0])]), w)}"
    )
    # the registered apply_depth is the same resampling
    np.testing.assert_array_equal(transform_depth(t, idx), out)


@pytest.mark.parametrize(
    "t",
    [CropTransform(x0=3, y0=2, w=10, h=7), HFlipTransform(width=17)],
    ids=["crop", "hflip"],
)
def test_depth_stays_aligned_with_labels(t):
    h, w = 12, 17
    expected = _source_index_through_labels(t, h, w)
    idx = np.arange(h * w, dtype=np.float32).reshape(h, w)
    np.testing.assert_array_equal(transform_depth(t, idx).astype(np.int64), expected)


def test_hflip_through_detectron2_transforms_mirrors_points():
    rng = np.random.default_rng(8)
    h, w = 9, 14
    depth = _random_depth(rng, h, w)
    K = K_NP_SKEW.copy()
    t = T.TransformList([HFlipTransform(width=w)])
    points = backproject(torch.from_numpy(depth).double()[None], torch.from_numpy(K)[None])
    new = backproject(
        torch.from_numpy(transform_depth(t, depth)).double()[None],
        torch.from_numpy(transform_intrinsics(t, K))[None],
    )
    torch.testing.assert_close(new.flip(-2), _mirror(points), atol=1e-12, rtol=0)


def test_unsupported_transform_is_named():
    rotation = T.RotationTransform(20, 30, angle=15)
    with pytest.raises(NotImplementedError, match="RotationTransform"):
        transform_intrinsics(rotation, K_NP)
    tl = T.TransformList([T.ResizeTransform(20, 30, 10, 15), rotation])
    with pytest.raises(NotImplementedError, match="RotationTransform"):
        transform_intrinsics(tl, K_NP)
    with pytest.raises(NotImplementedError, match="RotationTransform"):
        transform_depth(rotation, np.ones((20, 30), np.float32))
