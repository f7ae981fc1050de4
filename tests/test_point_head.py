"""Point-cloud branch: operators, PointNet++ head and losses (tiny sizes, CPU)."""

import math
import time

import pytest
import torch
from torch.nn import functional as F

import panoptic_curriculum  # noqa: F401  applies the detectron2 compatibility layer
from panoptic_curriculum.modeling.point_head import (
    CONSISTENCY_KINDS,
    POINT_HEAD_REGISTRY,
    PointNet2SegHead,
    add_point_head_config,
    ball_query,
    build_point_head,
    consistency_loss,
    farthest_point_sample,
    first_occurrence,
    gather_points,
    knn_group,
    pairwise_sq_dist,
    point_cross_entropy,
    sample_pixels,
    three_nn_interpolate,
)
from panoptic_curriculum.modeling.point_head import ops as point_ops

TINY = dict(
    num_classes=3,
    sa_num_centroids=[64, 16],
    sa_num_neighbors=[8, 8],
    sa_radii=[0.5, 0.0],  # ball query at level 1, plain kNN at level 2
    sa_channels=[16, 32],
    fp_channels=[32, 16],
    mlp_layers=2,
)


def _cloud(B=2, N=256, seed=0):
    """Random points in a 4 m cube in front of the camera, ~20% invalid."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(B, N, 3, generator=g) * 4.0 + torch.tensor([-2.0, -2.0, 2.0])
    valid = torch.rand(B, N, generator=g) > 0.2
    return xyz, valid


def _min_pairwise(points):
    d = torch.cdist(points, points)
    d.fill_diagonal_(float("inf"))
    return d.min().item()


# ----------------------------------------------------------------------------- ops
def test_fps_valid_distinct_and_spread():
    u, v = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    grid = torch.stack([u.flatten() * 0.1, v.flatten() * 0.1, torch.full((256,), 3.0)], -1)
    xyz = grid[None].repeat(2, 1, 1)
    valid = torch.rand(2, 256, generator=torch.Generator().manual_seed(1)) > 0.3
    gen = torch.Generator().manual_seed(0)
    for generator in (None, gen):
        idx = farthest_point_sample(xyz, 32, valid, generator=generator)
        assert idx.shape == (2, 32) and idx.dtype == torch.long
        assert valid.gather(1, idx).all()
        for b in range(2):
            assert idx[b].unique().numel() == 32
            fps_spread = _min_pairwise(xyz[b, idx[b]])
            pool = valid[b].nonzero().flatten()
            for seed in range(5):
                perm = torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(seed))
                assert fps_spread >= _min_pairwise(xyz[b, pool[perm[:32]]])
    # deterministic start: the first valid point
    idx = farthest_point_sample(xyz, 4, valid)
    assert torch.equal(idx[:, 0], valid.float().argmax(1))
    assert torch.equal(idx, farthest_point_sample(xyz, 4, valid))


def test_fps_pads_with_repeated_valid_and_handles_empty():
    xyz, _ = _cloud(B=2, N=50)
    valid = torch.zeros(2, 50, dtype=torch.bool)
    valid[0, [3, 7, 20, 41, 49]] = True  # 5 valid points; image 1 has none
    idx = farthest_point_sample(xyz, 16, valid)
    assert set(idx[0].tolist()) == {3, 7, 20, 41, 49}
    first = first_occurrence(idx, 50)
    assert first[0].sum() == 5 and first[0, :5].all()  # each valid point first, then repeats
    assert (idx[1] == 0).all()  # no valid point: index 0, never out of range


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fps_numpy_loop_picks_what_the_torch_loop_picks(dtype):
    """The CPU path (NumPy calls) and the torch loop (every other device) agree pick for
    pick: random clouds, invalid points, fewer valid points than picks, a cloud with none,
    duplicated points (distance ties), far from the origin, a random start."""
    g = torch.Generator().manual_seed(0)
    cases = [(4, 1024, 256, 0.1), (2, 300, 40, 0.3), (1, 37, 50, 0.3), (3, 128, 16, 0.0)]
    cases += [(2, 64, 8, 0.0), (2, 200, 64, 0.5)]
    for B, N, S, drop in cases:
        xyz = (torch.rand(B, N, 3, generator=g) * 10.0).to(dtype)
        valid = torch.rand(B, N, generator=g) >= drop
        if B == 3:
            valid[1] = False
        if N == 64:
            xyz[:, 32:] = xyz[:, :32]  # ties
        if N == 200:
            xyz = xyz + 1000.0  # far from the origin: rounding matters
        for gen_seed in (None, 5):
            gen = None if gen_seed is None else torch.Generator().manual_seed(gen_seed)
            d_t, start = point_ops._fps_start(xyz, valid, gen)
            d_n = d_t.clone()
            ref = point_ops._fps_loop_torch(xyz, S, d_t, start.clone())
            got = point_ops._fps_loop_numpy(xyz, S, d_n, start.clone())
            assert got.dtype == torch.long and torch.equal(got, ref), (B, N, S, gen_seed)
            assert torch.equal(d_n, d_t)  # the same distances, bit for bit
    # the public function takes the NumPy path on the CPU and returns the same
    xyz, valid = _cloud(B=2, N=256)
    d_t, start = point_ops._fps_start(xyz, valid, None)
    assert torch.equal(
        farthest_point_sample(xyz, 32, valid), point_ops._fps_loop_torch(xyz, 32, d_t, start)
    )


def test_ball_query_radius_fallback_and_validity():
    xyz, valid = _cloud(B=2, N=300, seed=2)
    centroids = gather_points(xyz, farthest_point_sample(xyz, 40, valid))
    radius, k = 0.6, 16
    idx = ball_query(xyz, centroids, k, radius, valid)
    assert idx.shape == (2, 40, k)
    assert valid.gather(1, idx.flatten(1)).all()  # never an invalid point
    dist = (gather_points(xyz, idx) - centroids[:, :, None]).norm(dim=-1)
    true_d = torch.cdist(centroids, xyz).masked_fill(~valid[:, None], float("inf"))
    nearest = true_d.argmin(-1, keepdim=True)
    assert torch.equal(idx[..., :1], nearest)
    assert ((dist <= radius + 1e-6) | (idx == nearest)).all()
    # the distinct neighbours are all the in-ball points (the k nearest of them if more)
    in_ball = (true_d <= radius).sum(-1).clamp(max=k)
    s = idx.sort(dim=-1).values
    distinct = 1 + (s[..., 1:] != s[..., :-1]).sum(-1)
    assert torch.equal(distinct, in_ball)
    # plain kNN = the k nearest valid points, sorted
    idx_knn = knn_group(xyz, centroids, k, valid)
    ref = true_d.topk(k, dim=-1, largest=False).indices
    assert torch.equal(idx_knn, ref)
    # fewer valid points than k: repeats of the nearest, still valid
    few = torch.zeros_like(valid)
    few[:, :5] = True
    idx_few = knn_group(xyz, centroids, k, few)
    assert (idx_few < 5).all()


def test_three_nn_interpolation_exact_at_sources():
    g = torch.Generator().manual_seed(3)
    src = torch.rand(2, 40, 3, generator=g) * 5
    A, c = torch.randn(3, 4, generator=g), torch.randn(4, generator=g)
    feat = src @ A + c  # linear function of position
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[:, 30:] = False
    feat_bad = feat.clone()
    feat_bad[:, 30:] = 1e6  # invalid sources must be ignored
    perm = torch.randperm(30, generator=g)
    dst = src[:, perm]  # coincident with valid sources
    out = three_nn_interpolate(dst, src, feat_bad, valid)
    torch.testing.assert_close(out, feat[:, perm], atol=1e-4, rtol=1e-5)
    # between points: a convex combination of the 3 nearest valid sources
    mid = torch.rand(2, 25, 3, generator=g) * 5
    out = three_nn_interpolate(mid, src, feat_bad, valid)
    assert out.abs().max() < 1e3 and torch.isfinite(out).all()
    # fewer than 3 / no valid sources
    one = torch.zeros_like(valid)
    one[:, 4] = True
    torch.testing.assert_close(
        three_nn_interpolate(mid, src, feat, one), feat[:, 4:5].expand(-1, 25, -1)
    )
    assert torch.equal(
        three_nn_interpolate(mid, src, feat, torch.zeros_like(valid)), torch.zeros(2, 25, 4)
    )
    # differentiable with respect to both coordinate sets and the features
    src_r, mid_r, feat_r = (
        src.clone().requires_grad_(),
        mid.clone().requires_grad_(),
        feat.clone().requires_grad_(),
    )
    three_nn_interpolate(mid_r, src_r, feat_r, valid).square().sum().backward()
    for t in (src_r, mid_r, feat_r):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_pairwise_sq_dist_exact_far_from_the_origin():
    """Squared distances from coordinate differences: exact where the matmul expansion
    |a|² - 2ab + |b|² cancels catastrophically (points 1 km out, centimetres apart); low
    precision inputs are computed in float32."""
    a = torch.tensor([[[1000.0, 1000.0, 1000.0]]])
    b = torch.tensor([[[1000.0, 1000.0, 1000.01], [1000.03, 1000.0, 1000.0]]])
    d2 = pairwise_sq_dist(a, b)
    ref = (a.double()[:, :, None] - b.double()[:, None]).square().sum(-1)
    assert d2.shape == (1, 1, 2) and d2.dtype == torch.float32
    torch.testing.assert_close(d2.double(), ref, rtol=1e-3, atol=1e-9)
    assert pairwise_sq_dist(a.bfloat16(), b.bfloat16()).dtype == torch.float32
    # float64: the exact squared differences, and differentiable
    a64 = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    b64 = torch.randn(2, 4, 3, dtype=torch.float64)
    ref = (a64[:, :, None] - b64[:, None]).square().sum(-1)
    torch.testing.assert_close(pairwise_sq_dist(a64, b64), ref, rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: pairwise_sq_dist(t, b64), (a64,))


def test_gather_points():
    x = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2)
    idx = torch.tensor([[[4, 0]], [[1, 1]]])
    out = gather_points(x, idx)
    assert out.shape == (2, 1, 2, 2)
    assert torch.equal(out[0, 0], x[0, [4, 0]]) and torch.equal(out[1, 0], x[1, [1, 1]])


def test_sample_pixels():
    valid = torch.rand(3, 12, 16, generator=torch.Generator().manual_seed(4)) > 0.5
    valid[1] = False
    valid[1, 0, :7] = True  # 7 valid pixels < N
    valid[2] = False  # none
    pix, pv = sample_pixels(valid, 20, generator=torch.Generator().manual_seed(0))
    assert pix.shape == pv.shape == (3, 20) and pix.dtype == torch.long
    flat = valid.flatten(1)
    assert torch.equal(pv, flat.gather(1, pix))
    assert pv[0].all() and pix[0].unique().numel() == 20
    assert pv[1].sum() == 7 and set(pix[1][pv[1]].tolist()) == set(range(7))
    assert not pv[2].any()
    again, _ = sample_pixels(valid, 20, generator=torch.Generator().manual_seed(0))
    other, _ = sample_pixels(valid, 20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pix, again) and not torch.equal(pix[0], other[0])
    pix, pv = sample_pixels(valid[:1], 500)  # more points than pixels
    assert pix.shape == (1, 500) and pv.sum() == flat[0].sum()


# ----------------------------------------------------------------------------- head
@pytest.mark.parametrize("norm", ["BN", "GN", ""])
def test_head_shape_and_invariance_to_invalid_points(norm):
    torch.manual_seed(0)
    head = PointNet2SegHead(in_channels=4, norm=norm, **TINY)
    xyz, valid = _cloud(seed=5)
    feats = torch.randn(2, 256, 4)
    xyz2, feats2 = xyz.clone(), feats.clone()
    xyz2[~valid] = torch.randn(int((~valid).sum()), 3) * 10
    feats2[~valid] = float("nan")
    for train in (True, False):
        head.train(train)
        out = head(xyz, valid, feats)
        assert out.shape == (2, 256, 3)
        out2 = head(xyz2, valid, feats2)
        assert torch.isfinite(out2).all()
        torch.testing.assert_close(out2[valid], out[valid], atol=1e-5, rtol=1e-5)


def test_head_pads_few_points_and_handles_empty_images():
    torch.manual_seed(0)
    head = PointNet2SegHead(**TINY)
    xyz, _ = _cloud(B=2, N=256, seed=6)
    valid = torch.zeros(2, 256, dtype=torch.bool)
    keep = torch.randperm(256)[:20].sort().values  # same order, so the same FPS start
    valid[0, keep] = True  # 20 valid points < 64 centroids; image 1 is empty
    out = head(xyz, valid)
    assert torch.isfinite(out).all()
    # same logits as the compact 20-point cloud alone (padding, repeats and the empty image
    # change nothing: they are left out of sampling, grouping and the BN statistics)
    alone = head(xyz[:1, keep], None)
    torch.testing.assert_close(out[0, keep], alone[0], atol=1e-5, rtol=1e-5)
    head.eval()
    torch.testing.assert_close(
        head(xyz, valid)[0, keep], head(xyz[:1, keep])[0], atol=1e-5, rtol=1e-5
    )
    head.train()
    # a batch with no valid point at all
    xyz_r = xyz.clone().requires_grad_()
    out = head(xyz_r, torch.zeros_like(valid))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(xyz_r.grad).all()


def test_head_gradients_reach_xyz_and_every_parameter():
    torch.manual_seed(0)
    head = PointNet2SegHead(in_channels=2, **TINY)
    xyz, valid = _cloud(seed=7)
    xyz.requires_grad_()
    feats = torch.randn(2, 256, 2, requires_grad=True)
    logits = head(xyz, valid, feats)
    labels = torch.randint(0, 3, (2, 256))
    point_cross_entropy(logits, labels, valid).backward()
    assert xyz.grad.abs()[valid].sum() > 0 and torch.isfinite(xyz.grad).all()
    assert xyz.grad[~valid].abs().sum() == 0  # padding gets nothing
    assert feats.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _toy_batch(B, N, g):
    """Sphere (label 1, radius 0.5 m) above a random tilted plane patch (label 0)."""
    n_sph = N // 3
    d = torch.randn(B, n_sph, 3, generator=g)
    centre = torch.rand(B, 1, 3, generator=g) * torch.tensor([2.0, 0.5, 2.0]) + torch.tensor(
        [-1.0, -0.5, 4.0]
    )
    sphere = centre + 0.5 * d / d.norm(dim=-1, keepdim=True)
    uv = torch.rand(B, N - n_sph, 2, generator=g) * 4.0 - 2.0
    tilt = (torch.rand(B, 1, 2, generator=g) - 0.5) * 0.4
    height = 1.0 + torch.rand(B, 1, generator=g)
    plane = torch.stack(
        [uv[..., 0], height + (uv * tilt).sum(-1), uv[..., 1] + 5.0], dim=-1
    )  # y down: the plane lies below the sphere
    xyz = torch.cat([sphere, plane], dim=1)
    labels = torch.cat([torch.ones(B, n_sph), torch.zeros(B, N - n_sph)], dim=1).long()
    valid = torch.rand(B, N, generator=g) > 0.1
    return xyz, labels, valid


def test_head_learns_sphere_vs_plane():
    torch.manual_seed(0)
    head = PointNet2SegHead(**dict(TINY, num_classes=2))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(200):
        xyz, labels, valid = _toy_batch(2, 256, g)
        loss = point_cross_entropy(head(xyz, valid), labels, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        xyz, labels, valid = _toy_batch(8, 256, torch.Generator().manual_seed(123))
        pred = head(xyz, valid).argmax(-1)
    acc = (pred == labels)[valid].float().mean().item()
    print(
        f"toy sphere/plane accuracy {acc:.3f} after 200 steps ({time.perf_counter() - start:.1f} s)"
    )
    assert acc > 0.9


def test_default_head_timing():
    """Not an assertion: forward + backward time of the default-size head, B=2, N=4096."""
    torch.manual_seed(0)
    head = PointNet2SegHead(
        num_classes=19,
        sa_num_centroids=[1024, 256, 64],
        sa_num_neighbors=[32, 32, 32],
        sa_radii=[0.5, 1.0, 2.0],
        sa_channels=[64, 128, 256],
        fp_channels=[256, 128, 128],
    )
    xyz = torch.rand(2, 4096, 3) * torch.tensor([20.0, 10.0, 40.0]) + torch.tensor(
        [-10.0, -5.0, 1.0]
    )
    xyz.requires_grad_()
    valid = torch.rand(2, 4096) > 0.05
    times = []
    for _ in range(3):
        start = time.perf_counter()
        head(xyz, valid).square().mean().backward()
        times.append(time.perf_counter() - start)
    print(
        f"default PointNet2SegHead fwd+bwd, B=2 N=4096, {torch.get_num_threads()} threads: "
        f"first {times[0]:.2f} s, then {min(times[1:]):.2f} s"
    )


@pytest.mark.parametrize("groups,channels", [(32, 32), (4, 16)])
def test_masked_group_norm_matches_group_norm_on_the_valid_entries(groups, channels):
    """Forward and (hand-written) backward of MaskedGroupNorm: per sample, the valid entries
    are normalised exactly as F.group_norm normalises them alone, and a loss on them sends
    the same gradient; the whole function (invalid entries' outputs included) passes
    gradcheck."""
    from panoptic_curriculum.modeling.point_head import MaskedGroupNorm

    torch.manual_seed(0)
    B, P = 3, 40
    norm = MaskedGroupNorm(groups, channels)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels))
        norm.bias.copy_(torch.randn(channels))
    x = (torch.randn(B, P, channels) * 3 + 2).requires_grad_()
    mask = torch.rand(B, P) > 0.3
    mask[2] = False  # a sample without valid entries: finite, mean 0 and variance 0
    grad_out = torch.randn(B, P, channels)
    grad_out[:2][~mask[:2]] = 0.0  # the reference below sees the valid entries' outputs only
    y = norm(x, mask)
    (y * grad_out).sum().backward()
    for b in range(2):
        xb = x[b, mask[b]].detach().T.unsqueeze(0).requires_grad_()  # [1, C, Pvalid]
        yb = F.group_norm(xb, groups, norm.weight, norm.bias, norm.eps)
        torch.testing.assert_close(y[b, mask[b]], yb[0].T, atol=1e-5, rtol=1e-5)
        (yb[0].T * grad_out[b, mask[b]]).sum().backward()
        torch.testing.assert_close(x.grad[b, mask[b]], xb.grad[0].T, atol=1e-4, rtol=1e-4)
    # no valid entry: mean 0, variance 0, and only the affine map's gradient
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    r = torch.rsqrt(torch.tensor(norm.eps))
    torch.testing.assert_close(y[2], norm.bias + norm.weight * x[2].detach() * r)
    torch.testing.assert_close(x.grad[2], grad_out[2] * norm.weight.detach() * r)
    # the whole function, parameters included, against finite differences (float64)
    norm64 = MaskedGroupNorm(groups, channels).double()
    with torch.no_grad():
        norm64.weight.copy_(torch.randn(channels))
    x64 = torch.randn(2, 7, channels, dtype=torch.float64, requires_grad=True)
    m64 = torch.rand(2, 7) > 0.4
    m64[:, 0] = True
    assert torch.autograd.gradcheck(lambda t: norm64(t, m64), (x64,))
    params = (norm64.weight, norm64.bias)
    assert all(p.dtype == torch.float64 for p in params)
    y64 = norm64(x64, m64)
    gw, gb = torch.autograd.grad((y64 * y64.detach().sin()).sum(), params)
    xhat = (y64.detach() - norm64.bias) / norm64.weight.detach()
    torch.testing.assert_close(gw, (y64.detach().sin() * xhat).sum((0, 1)))
    torch.testing.assert_close(gb, y64.detach().sin().sum((0, 1)))


@pytest.mark.parametrize("norm", ["BN", "GN"])
def test_head_under_bf16_autocast(norm):
    """Under autocast (bf16 matrix products, as on a GPU) the masked norms keep float32
    statistics: the head runs forward and backward, and stays near its float32 output."""
    torch.manual_seed(0)
    head = PointNet2SegHead(in_channels=4, norm=norm, **TINY)
    xyz, valid = _cloud(seed=9)
    feats = torch.randn(2, 256, 4, requires_grad=True)
    ref = head(xyz, valid, feats).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(xyz, valid, feats)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    err = (out.float() - ref)[valid].abs().max() / ref[valid].abs().max()
    assert err < 0.1, err


def test_build_from_config():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    panoptic_curriculum.add_panoptic_curriculum_config(cfg)
    add_point_head_config(cfg)
    add_point_head_config(cfg)  # idempotent
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    cfg.MODEL.POINT_HEAD.SA_NUM_CENTROIDS = [32, 8]
    cfg.MODEL.POINT_HEAD.SA_NUM_NEIGHBORS = [8, 4]
    cfg.MODEL.POINT_HEAD.SA_RADII = [0.5, 0]
    cfg.MODEL.POINT_HEAD.SA_CHANNELS = [8, 16]
    cfg.MODEL.POINT_HEAD.FP_CHANNELS = [16, 8]
    head = build_point_head(cfg, in_channels=3)
    assert isinstance(head, PointNet2SegHead) and POINT_HEAD_REGISTRY.__doc__
    xyz, valid = _cloud(B=1, N=64)
    assert head(xyz, valid, torch.randn(1, 64, 3)).shape == (1, 64, 5)
    with pytest.raises(ValueError):
        PointNet2SegHead(**dict(TINY, fp_channels=[8]))


# ----------------------------------------------------------------------------- losses
def test_point_cross_entropy():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 30, 4, generator=g, requires_grad=True)
    labels = torch.randint(0, 4, (2, 30), generator=g)
    labels[0, :5] = 255
    valid = torch.rand(2, 30, generator=g) > 0.3
    keep = valid & (labels != 255)
    ref = F.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(point_cross_entropy(logits, labels, valid), ref)
    # padding with NaN logits / out-of-range labels does not leak
    bad = logits.detach().clone()
    bad[~valid] = float("nan")
    labels_bad = torch.where(valid, labels, torch.full_like(labels, -7))
    torch.testing.assert_close(point_cross_entropy(bad, labels_bad, valid), ref.detach())
    # nothing to supervise: exactly 0, attached, zero gradients
    bad.requires_grad_()
    empty = point_cross_entropy(bad, labels, torch.zeros_like(valid))
    assert empty.item() == 0.0 and empty.requires_grad
    empty.backward()
    assert torch.equal(bad.grad, torch.zeros_like(bad))


def test_consistency_losses():
    g = torch.Generator().manual_seed(9)
    a = torch.randn(2, 50, 5, generator=g)
    b = torch.randn(2, 50, 5, generator=g)
    valid = torch.rand(2, 50, generator=g) > 0.2
    p, q = a.softmax(-1), b.softmax(-1)
    kl = lambda x, y: (x * (x.log() - y.log())).sum(-1)  # noqa: E731
    m = (p + q) / 2
    refs = {
        "sym_kl": (kl(p, q) + kl(q, p))[valid].mean(),
        "js": (0.5 * kl(p, m) + 0.5 * kl(q, m))[valid].mean(),
        "l2": ((p - q) ** 2).sum(-1)[valid].mean(),
    }
    for kind in CONSISTENCY_KINDS:
        ar, br = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = consistency_loss(ar, br, valid, kind)
        torch.testing.assert_close(loss, refs[kind])
        assert loss > 0
        assert torch.equal(loss, consistency_loss(br, ar, valid, kind))  # symmetric
        loss.backward()
        assert ar.grad.abs().sum() > 0 and br.grad.abs().sum() > 0  # both sides learn
        assert consistency_loss(a, a.clone(), valid, kind).abs() < 1e-6
        empty = consistency_loss(ar, br, torch.zeros_like(valid), kind)
        assert empty.item() == 0.0 and empty.requires_grad
        empty.backward()
    # JS is bounded by ln 2, even for saturated, disjoint distributions
    hot = torch.full((1, 4, 3), -1e4)
    hot[0, :, 0] = 1e4
    cold = hot.roll(1, dims=-1)
    js = consistency_loss(hot, cold, torch.ones(1, 4, dtype=torch.bool), "js")
    assert math.log(2) - 1e-5 < js <= math.log(2) + 1e-6
    assert torch.isfinite(consistency_loss(hot, cold, torch.ones(1, 4, dtype=torch.bool), "sym_kl"))
    with pytest.raises(ValueError, match="sym_kl.*js.*l2"):
        consistency_loss(a, b, valid, "kl")
