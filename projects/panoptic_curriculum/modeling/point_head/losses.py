"""Losses of the point branch: per-point cross-entropy (L_3D-seg) and the 2D-3D consistency
loss (L_consist) between the 2D head's and the point head's class distributions at the
same pixels.

Both losses average over the points that count (valid, and for the cross-entropy not
ignored). With no such point they return an exact 0 that is still attached to the graph
(so ``backward`` works and gives zero gradients), never NaN. Padding points' logits are
replaced by 0 before any computation, so non-finite values there cannot leak into the loss
or its gradients.
"""

import math

import torch
from torch.nn import functional as F

__all__ = [
    "point_cross_entropy",
    "consistency_loss",
    "route_to_better_teacher",
    "CONSISTENCY_KINDS",
]

CONSISTENCY_KINDS = ("sym_kl", "js", "l2")


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [B, N]`` where ``keep [B, N]`` is True; exactly 0 if none."""
    values = torch.where(keep, values, values.new_zeros(()))
    return values.sum() / keep.sum().clamp(min=1).to(values.dtype)


def point_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Mean cross-entropy of the points that are valid and not labelled ``ignore_index``.

    Args:
        logits: ``[B, N, C]`` per-point class logits.
        labels: ``[B, N]`` long class indices in ``[0, C)`` or ``ignore_index``; values at
            invalid points are not read.
        valid: ``[B, N]`` bool.
        ignore_index: label value excluded from the loss.

    Returns:
        scalar (float32 or wider).
    """
    keep = valid.bool() & (labels != ignore_index)
    C = logits.shape[-1]
    logits = torch.where(keep.unsqueeze(-1), logits, logits.new_zeros(()))
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    safe_labels = torch.where(keep, labels, labels.new_zeros(()))
    nll = F.cross_entropy(logits.reshape(-1, C), safe_labels.reshape(-1), reduction="none")
    return _masked_mean(nll.view_as(keep), keep)


def consistency_loss(
    logits_2d: torch.Tensor,
    logits_3d: torch.Tensor,
    valid: torch.Tensor,
    kind: str,
) -> torch.Tensor:
    """Disagreement between two class distributions at the same points, averaged over the
    valid points.

    Neither input is detached: by design the consistency gradients reach both the 2D head
    (and through it the encoder) and the point network (and through the point coordinates
    the depth head), so the two branches pull towards each other. Detach one input at the
    call site for a one-way teacher.

    Args:
        logits_2d: ``[B, N, C]`` 2D head logits sampled at the points' pixels.
        logits_3d: ``[B, N, C]`` point head logits.
        valid: ``[B, N]`` bool.
        kind: with ``p = softmax(logits_2d)``, ``q = softmax(logits_3d)`` per point:
            "sym_kl": ``KL(p||q) + KL(q||p) = sum_c (p - q)(log p - log q)`` (nats);
            "js": Jensen-Shannon divergence ``(KL(p||m) + KL(q||m)) / 2``, ``m = (p + q) / 2``
            (nats, in ``[0, ln 2]``);
            "l2": ``sum_c (p - q)^2``.
            All are computed from ``log_softmax`` (stable for large logits) and symmetric.

    Returns:
        scalar (float32 or wider).

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind not in CONSISTENCY_KINDS:
        raise ValueError(f"Unknown consistency loss {kind!r}; expected one of {CONSISTENCY_KINDS}")
    if logits_2d.shape != logits_3d.shape:
        raise ValueError(f"Shape mismatch: {tuple(logits_2d.shape)} vs {tuple(logits_3d.shape)}")
    keep = valid.bool()
    zero = logits_2d.new_zeros(())
    dtype = torch.promote_types(
        torch.promote_types(logits_2d.dtype, logits_3d.dtype), torch.float32
    )
    log_p = F.log_softmax(torch.where(keep.unsqueeze(-1), logits_2d, zero).to(dtype), dim=-1)
    log_q = F.log_softmax(torch.where(keep.unsqueeze(-1), logits_3d, zero).to(dtype), dim=-1)
    p, q = log_p.exp(), log_q.exp()
    if kind == "sym_kl":
        per_point = ((p - q) * (log_p - log_q)).sum(dim=-1)
    elif kind == "js":
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        per_point = 0.5 * ((p * (log_p - log_m)).sum(dim=-1) + (q * (log_q - log_m)).sum(dim=-1))
    else:  # "l2"
        per_point = (p - q).square().sum(dim=-1)
    return _masked_mean(per_point, keep)


def route_to_better_teacher(
    logits_2d: torch.Tensor,
    logits_3d: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
):
    """Per point, the side that gives the point's label the higher probability teaches the
    other in L_consist: its logits are detached there, the other side's are not.

    Where the point network is right and the 2D head is not (a ball the image alone takes
    for a pillar), L_consist trains the 2D head; everywhere else it trains the point network,
    so a 3D network weaker than the 2D head cannot pull the 2D head towards its mistakes.

    Args:
        logits_2d, logits_3d: ``[B, N, C]`` logits of the two sides at the same points.
        labels: ``[B, N]`` long ground-truth class of each point; values outside ``[0, C)``
            (ignore labels, padding) never make the 3D side the teacher.
        valid: ``[B, N]`` bool.

    Returns:
        ``(logits_2d, logits_3d, teaches_2d)``: the two inputs, each detached where the
        other side learns, and ``teaches_2d`` ``[B, N]`` bool, True where the point network
        is the teacher. The forward values are unchanged.
    """
    if logits_2d.shape != logits_3d.shape or logits_2d.shape[:2] != labels.shape:
        raise ValueError(
            f"Shape mismatch: logits {tuple(logits_2d.shape)} / {tuple(logits_3d.shape)}, "
            f"labels {tuple(labels.shape)}"
        )
    C = logits_2d.shape[-1]
    known = valid.bool() & (labels >= 0) & (labels < C)
    index = torch.where(known, labels, labels.new_zeros(())).unsqueeze(-1)
    with torch.no_grad():
        zero = logits_2d.new_zeros(())
        p_2d = F.log_softmax(torch.where(known.unsqueeze(-1), logits_2d, zero).float(), -1)
        p_3d = F.log_softmax(torch.where(known.unsqueeze(-1), logits_3d, zero).float(), -1)
        teaches_2d = known & (p_3d.gather(-1, index) > p_2d.gather(-1, index)).squeeze(-1)
    side = teaches_2d.unsqueeze(-1)
    return (
        torch.where(side, logits_2d, logits_2d.detach()),
        torch.where(side, logits_3d.detach(), logits_3d),
        teaches_2d,
    )
