"""The Triton farthest-point-sampling kernel picks what the torch loop picks.

The kernel runs on CUDA tensors in training; here it runs in Triton's interpreter
(``TRITON_INTERPRET=1``, CPU tensors), in a subprocess because the variable is read when the
kernel is defined. ``tests/test_cuda.py`` checks it on a GPU.
"""

import os
import subprocess
import sys

import pytest
import torch

from panoptic_curriculum.modeling.point_head import fps_triton

_SCRIPT = r"""
import torch
from panoptic_curriculum.modeling.point_head.fps_triton import farthest_point_sample_triton
from panoptic_curriculum.modeling.point_head.ops import farthest_point_sample

g = torch.Generator().manual_seed(0)
cases = [(2, 300, 40, 0.3), (1, 37, 50, 0.3), (3, 128, 16, 0.0), (2, 64, 8, 0.0)]
for B, N, S, drop in cases:
    xyz = torch.rand(B, N, 3, generator=g) * 10.0
    valid = torch.rand(B, N, generator=g) >= drop
    if B == 3:
        valid[1] = False  # a cloud with no valid point: index 0 everywhere
    if N == 64:
        xyz[:, 32:] = xyz[:, :32]  # duplicated points: distance ties
    for gen in (None, torch.Generator().manual_seed(5)):
        ref = farthest_point_sample(xyz, S, valid, generator=gen)
        start = ref[:, 0]
        got = farthest_point_sample_triton(xyz, S, valid, start)
        assert torch.equal(got, ref), (B, N, S, got, ref)
print("OK")
"""


def test_kernel_matches_torch_loop_in_interpreter():
    root = os.path.join(os.path.dirname(__file__), "..")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(root, "projects"), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_kernel_applies_to_cuda_float32_clouds_only():
    xyz = torch.zeros(1, 10, 3)
    assert not fps_triton.fps_kernel_applies(xyz)  # CPU: the torch loop
    assert not fps_triton.fps_kernel_applies(xyz.double())
    with pytest.raises(ValueError, match="float32"):
        fps_triton.farthest_point_sample_triton(
            xyz.double(), 2, torch.ones(1, 10, dtype=torch.bool), torch.zeros(1).long()
        )
