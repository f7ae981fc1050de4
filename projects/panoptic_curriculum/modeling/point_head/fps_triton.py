"""Farthest-point sampling as one Triton kernel launch (CUDA tensors, float32).

The pure-torch ``ops.farthest_point_sample`` runs its greedy loop in Python, a handful of
small kernels per centroid. On a GPU that is bound by kernel launches, not arithmetic: with
the default point branch (1024 + 256 + 64 centroids per image) it made a training step 2.4x
slower on an H200 (``tools/benchmark.py``, README "Benchmark"). Here one program per cloud
keeps the cloud's coordinates and running distances in registers and runs the whole loop
on the device: one launch per call.

The picks are those of the torch loop: the same start (given), the same squared distances
(``dx*dx + dy*dy + dz*dz`` in float32), ties broken towards the lowest index, invalid points
never picked before every valid point is (they sit at -1 against a valid point's >= 0;
lanes past the cloud's end at -2). The kernel also runs in Triton's interpreter
(``TRITON_INTERPRET=1``) on CPU tensors, which is how the CPU test suite checks it.
"""

from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch's Linux wheels bring triton
    triton = None

__all__ = ["MAX_POINTS", "fps_kernel_applies", "farthest_point_sample_triton"]

#: largest cloud one program holds (registers); larger clouds use the torch loop
MAX_POINTS = 16384


def fps_kernel_applies(xyz: torch.Tensor) -> bool:
    """Whether :func:`farthest_point_sample_triton` serves ``xyz`` (``[B, N, 3]``)."""
    return (
        triton is not None
        and not torch.jit.is_tracing()  # traced shapes are tensors; the torch loop traces
        and not torch.jit.is_scripting()
        and xyz.is_cuda
        and xyz.dtype == torch.float32
        and 0 < xyz.shape[1] <= MAX_POINTS
    )


if triton is not None:

    @triton.jit
    def _fps_kernel(
        xyz_ptr, valid_ptr, start_ptr, out_ptr, N, S: tl.constexpr, BLOCK: tl.constexpr
    ):
        b = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        inside = offs < N
        base = xyz_ptr + b * N * 3 + offs * 3
        x = tl.load(base, mask=inside, other=0.0)
        y = tl.load(base + 1, mask=inside, other=0.0)
        z = tl.load(base + 2, mask=inside, other=0.0)
        ok = tl.load(valid_ptr + b * N + offs, mask=inside, other=0) != 0
        min_d2 = tl.where(ok, float("inf"), -1.0)
        min_d2 = tl.where(inside, min_d2, -2.0)
        cur = tl.load(start_ptr + b).to(tl.int32)
        for s in range(S):
            tl.store(out_ptr + b * S + s, cur.to(tl.int64))
            sel = offs == cur
            cx = tl.sum(tl.where(sel, x, 0.0), axis=0)
            cy = tl.sum(tl.where(sel, y, 0.0), axis=0)
            cz = tl.sum(tl.where(sel, z, 0.0), axis=0)
            dx = x - cx
            dy = y - cy
            dz = z - cz
            d2 = dx * dx + dy * dy + dz * dz
            min_d2 = tl.where(inside, tl.minimum(min_d2, d2), -2.0)
            cur = tl.argmax(min_d2, axis=0).to(tl.int32)


def farthest_point_sample_triton(
    xyz: torch.Tensor, num: int, valid: torch.Tensor, start: torch.Tensor
) -> torch.Tensor:
    """Farthest-point sampling of ``num`` centroids per cloud in one kernel launch.

    Args:
        xyz: ``[B, N, 3]`` float32 coordinates (metres).
        num: number ``S`` of centroids per cloud.
        valid: ``[B, N]`` bool.
        start: ``[B]`` long, the first pick of each cloud.

    Returns:
        ``[B, S]`` long indices, as ``ops.farthest_point_sample`` defines them.
    """
    if triton is None:
        raise RuntimeError("farthest_point_sample_triton needs the triton package")
    B, N = int(xyz.shape[0]), int(xyz.shape[1])
    if xyz.dtype != torch.float32 or N > MAX_POINTS:
        raise ValueError(f"needs float32 clouds of at most {MAX_POINTS} points, got "
                         f"{xyz.dtype} with {N}")
    out = torch.empty(B, num, dtype=torch.long, device=xyz.device)
    if num == 0 or B == 0:
        return out
    block = max(16, triton.next_power_of_2(N))
    num_warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
    _fps_kernel[(B,)](
        xyz.detach().contiguous(),
        valid.to(torch.uint8).contiguous(),
        start.to(torch.long).contiguous(),
        out,
        int(N),
        S=int(num),
        BLOCK=block,
        num_warps=num_warps,
    )
    return out
