"""The CUDA path: geometry, point-branch ops and the whole model give on the GPU what they
give on the CPU, and a training step runs there.

These tests need a CUDA device and are skipped without one (CI has none); on a GPU machine
run ``pytest tests/test_cuda.py``. Comparisons are in float32 (TF32 off): the GPU's
reductions run in another order, so values agree to a tolerance, indices exactly where no
two candidates are within float error of each other.
"""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from panoptic_curriculum.geometry import backproject, project
from panoptic_curriculum.modeling.point_head.fps_triton import fps_kernel_applies
from panoptic_curriculum.modeling.point_head.ops import (
    ball_query,
    class_balanced_weights,
    farthest_point_sample,
    pairwise_sq_dist,
    sample_pixels,
    three_nn_interpolate,
)

from model_utils import fake_sample, tiny_cfg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _fp32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_geometry_round_trip_on_gpu_matches_cpu():
    g = torch.Generator().manual_seed(0)
    depth = 1.0 + 20.0 * torch.rand(2, 24, 32, generator=g)
    depth[:, :3] = 0.0  # invalid rows
    K = torch.tensor([[[60.0, 0, 15.5], [0, 58.0, 11.5], [0, 0, 1]]]).repeat(2, 1, 1)
    cpu = backproject(depth, K)
    gpu = backproject(depth.cuda(), K.cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    uv, z = project(gpu.reshape(2, -1, 3), K.cuda())[:2]
    valid = depth.reshape(2, -1) > 0
    torch.testing.assert_close(z.cpu()[valid], depth.reshape(2, -1)[valid], rtol=1e-5, atol=0)


def test_point_ops_on_gpu_match_cpu():
    g = torch.Generator().manual_seed(1)
    # float64 random points: no two distances within float error of each other
    xyz = torch.rand(2, 600, 3, generator=g, dtype=torch.float64) * 10.0
    valid = torch.rand(2, 600, generator=g) > 0.2
    fps_cpu = farthest_point_sample(xyz, 64, valid)
    fps_gpu = farthest_point_sample(xyz.cuda(), 64, valid.cuda())  # float64: the torch loop
    assert torch.equal(fps_gpu.cpu(), fps_cpu)
    # float32 on CUDA: the Triton kernel (one launch), the same picks as the CPU loop
    xyz32 = xyz.float()
    fps_cpu32 = farthest_point_sample(xyz32, 256, valid)
    assert fps_kernel_applies(xyz32.cuda())
    assert torch.equal(farthest_point_sample(xyz32.cuda(), 256, valid.cuda()).cpu(), fps_cpu32)
    centroids = torch.gather(xyz, 1, fps_cpu.unsqueeze(-1).expand(-1, -1, 3))
    bq_cpu = ball_query(xyz, centroids, 16, 2.0, valid)
    bq_gpu = ball_query(xyz.cuda(), centroids.cuda(), 16, 2.0, valid.cuda())
    # the same neighbour sets (order within a group may differ among equal-distance pads)
    assert torch.equal(bq_gpu.cpu().sort(-1).values, bq_cpu.sort(-1).values)
    # float32 distances: the same coordinate differences on both devices
    d_gpu = pairwise_sq_dist(xyz32.cuda(), xyz32[:, :50].cuda())
    torch.testing.assert_close(d_gpu.cpu(), pairwise_sq_dist(xyz32, xyz32[:, :50]))
    c32 = centroids.float()
    bq32 = ball_query(xyz32.cuda(), c32.cuda(), 16, 2.0, valid.cuda()).cpu()
    assert torch.equal(bq32.sort(-1).values, ball_query(xyz32, c32, 16, 2.0, valid).sort(-1).values)
    feats = torch.rand(2, 64, 8, generator=g, dtype=torch.float64)
    up_cpu = three_nn_interpolate(xyz, centroids, feats)
    up_gpu = three_nn_interpolate(xyz.cuda(), centroids.cuda(), feats.cuda())
    torch.testing.assert_close(up_gpu.cpu(), up_cpu)


def test_class_balanced_sampling_on_gpu():
    labels = torch.zeros(1, 40, 50, dtype=torch.long, device="cuda")
    labels[0, :4, :5] = 3  # a small object: 20 of 2000 pixels
    valid = torch.ones_like(labels, dtype=torch.bool)
    w = class_balanced_weights(labels, valid, num_classes=7)
    assert w.is_cuda
    gen = torch.Generator(device="cuda").manual_seed(0)
    counts = torch.zeros(2, device="cuda")
    for _ in range(50):
        idx, ok = sample_pixels(valid, 20, generator=gen, weights=w)
        assert ok.all() and idx.unique().numel() == 20
        small = (labels.reshape(1, -1).gather(1, idx) == 3).sum()
        counts += torch.stack([small, 20 - small]).float()
    share = (counts[0] / counts.sum()).item()
    assert 0.35 < share < 0.65, share  # half the points, not 1 %


def _tiny_model(device):
    cfg = tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        "MODEL.DEVICE",
        device,
        "MODEL.WEIGHTS",
        "",
        "MODEL.POINT_HEAD.SAMPLING",
        "class_balanced",
    )
    torch.manual_seed(0)
    return build_model(cfg)


def test_model_inference_on_gpu_matches_cpu():
    cpu_model = _tiny_model("cpu").eval()
    gpu_model = _tiny_model("cuda").eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    sample = fake_sample(h=96, w=128, seed=4)
    inputs = [{k: sample[k] for k in ("image", "height", "width", "intrinsics")}]
    with torch.no_grad():
        out_cpu = cpu_model(inputs)[0]
        out_gpu = gpu_model(inputs)[0]
    assert out_gpu["sem_seg"].is_cuda and out_gpu["depth"].is_cuda
    torch.testing.assert_close(out_gpu["sem_seg"].cpu(), out_cpu["sem_seg"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out_gpu["depth"].cpu(), out_cpu["depth"], rtol=1e-3, atol=1e-3)
    agree = (out_gpu["sem_seg"].argmax(0).cpu() == out_cpu["sem_seg"].argmax(0)).float().mean()
    assert agree > 0.99
    assert out_gpu["panoptic_seg"][0].shape == out_cpu["panoptic_seg"][0].shape


def test_training_step_on_gpu_reduces_nothing_to_nan():
    model = _tiny_model("cuda").train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = [fake_sample(h=96, w=128, seed=s) for s in (0, 1)]
    with EventStorage(0):
        losses = model(batch)
        assert {"loss_sem_seg_3d", "loss_consistency", "loss_depth"} <= set(losses)
        assert all(v.is_cuda and torch.isfinite(v) for v in losses.values()), losses
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
