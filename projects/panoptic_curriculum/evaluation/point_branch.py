"""What the point branch sees and what its losses do to the rest of the network.

Answers, with numbers, why the 3D branch does or does not improve 2D segmentation:

* **per class**, at the pixels the branch samples (the training forward's own sampling):
  the share of points, the 2D head's and the point head's accuracy there, the share of
  points the point head gets right and the 2D head wrong (what ``L_consist`` could teach the
  2D head), the point head's accuracy on the same pixels lifted with the *ground-truth*
  depth (how much the predicted depth's distortion costs the 3D network) and the predicted
  depth's error there (AbsRel, median ratio predicted / true);
* **per loss**, the norm of its gradient on each part of the network (encoder, 2D head,
  instance decoder, depth head, point head) and the cosine between the consistency loss's
  and the 2D cross-entropy's gradients on the encoder and the 2D head: a cosine near 0 with
  a small norm means ``L_consist`` hardly teaches the 2D side; a negative one means it pulls
  against the labels.

All of it comes from the model's own training forward (``record_point_branch``), on labelled
images of any registered dataset, without an optimizer step (weights are not changed; the
model is returned in its previous mode).
"""

import contextlib
import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import nn

from detectron2.utils.events import EventStorage

from ..geometry import backproject_pixels

__all__ = [
    "record_point_branch",
    "parameter_groups",
    "point_branch_diagnostics",
    "diagnostics_markdown",
    "average_diagnostics",
]

#: model attribute -> group name of :func:`parameter_groups`
_GROUPS = (
    ("backbone", "encoder"),
    ("sem_seg_head", "2D head"),
    ("proposal_generator", "instance decoder"),
    ("roi_heads", "instance decoder"),
    ("instance_adapter", "instance decoder"),
    ("depth_head", "depth head"),
    ("point_head", "point head"),
)


@contextlib.contextmanager
def record_point_branch(model: nn.Module):
    """Within the block, every training forward of ``model`` appends a dict of its point
    branch's tensors (detached) to the yielded list: ``labels`` ``[B, N]``, ``gt_depth``
    ``[B, N]`` metres (0 = invalid), ``K`` ``[B, 3, 3]``, ``pixel_idx``, ``point_valid``,
    ``uv`` ``[B, N, 2]``, ``xyz`` ``[B, N, 3]`` metres (from the predicted depth),
    ``logits_2d`` and ``logits_3d`` ``[B, N, C]``."""
    if getattr(model, "point_head", None) is None:
        raise ValueError("the model has no point branch (MODEL.POINT_HEAD.ENABLED is False)")
    records: List[Dict[str, torch.Tensor]] = []
    model.point_branch_record = records
    try:
        yield records
    finally:
        model.point_branch_record = None


def parameter_groups(model: nn.Module) -> Dict[str, List[nn.Parameter]]:
    """Trainable parameters of each part of the multi-task model, by group name."""
    groups: Dict[str, List[nn.Parameter]] = {}
    for attr, name in _GROUPS:
        module = getattr(model, attr, None)
        if module is None:
            continue
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.setdefault(name, []).extend(params)
    return groups


def _flat_grads(loss: torch.Tensor, params: Sequence[nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


class _Accumulator:
    """Per-class counts over batches (one row per semantic class)."""

    def __init__(self, num_classes: int):
        z = lambda: torch.zeros(num_classes, dtype=torch.float64)  # noqa: E731
        self.points = z()
        self.right_2d = z()
        self.right_3d = z()
        self.only_3d = z()
        self.right_3d_gt = z()
        self.abs_rel = z()
        self.depth_points = z()
        self.log_ratio: List[List[torch.Tensor]] = [[] for _ in range(num_classes)]

    def add(self, labels, pred_2d, pred_3d, pred_3d_gt, depth, gt_depth, keep):
        C = self.points.numel()
        lab = labels[keep]
        one = lambda m: torch.bincount(lab[m], minlength=C).double()  # noqa: E731
        all_ = torch.ones_like(lab, dtype=torch.bool)
        self.points += one(all_)
        ok2, ok3 = pred_2d[keep] == lab, pred_3d[keep] == lab
        self.right_2d += one(ok2)
        self.right_3d += one(ok3)
        self.only_3d += one(ok3 & ~ok2)
        self.right_3d_gt += one(pred_3d_gt[keep] == lab)
        d, g = depth[keep], gt_depth[keep]
        has = (g > 0) & (d > 0)
        self.abs_rel += torch.bincount(
            lab[has], weights=((d[has] - g[has]).abs() / g[has]).double(), minlength=C
        )
        self.depth_points += one(has)
        log_ratio = torch.log(d[has] / g[has])
        for c in torch.unique(lab[has]).tolist():
            self.log_ratio[c].append(log_ratio[lab[has] == c])

    def rows(self, class_names: Sequence[str]) -> List[Dict]:
        total = float(self.points.sum().clamp(min=1))
        rows = []
        for c, name in enumerate(class_names):
            n = float(self.points[c])
            nd = float(self.depth_points[c])
            ratio = (
                math.exp(float(torch.cat(self.log_ratio[c]).median()))
                if self.log_ratio[c]
                else float("nan")
            )
            rows.append(
                {
                    "class": name,
                    "points_share": n / total,
                    "acc_2d": float(self.right_2d[c]) / n if n else float("nan"),
                    "acc_3d": float(self.right_3d[c]) / n if n else float("nan"),
                    "only_3d_right": float(self.only_3d[c]) / n if n else float("nan"),
                    "acc_3d_gt_depth": float(self.right_3d_gt[c]) / n if n else float("nan"),
                    "depth_abs_rel": float(self.abs_rel[c]) / nd if nd else float("nan"),
                    "depth_median_ratio": ratio,
                }
            )
        return rows


def point_branch_diagnostics(
    model: nn.Module,
    batches: Iterable[List[Mapping]],
    class_names: Sequence[str],
    gradient_losses: Sequence[str] = (
        "loss_sem_seg",
        "loss_consistency",
        "loss_sem_seg_3d",
        "loss_depth",
    ),
) -> Dict:
    """Run the training forward of ``model`` on ``batches`` (lists of mapper outputs with
    ``sem_seg``, ``depth``, ``intrinsics`` and, when the model has an instance decoder,
    ``instances``) and measure the point branch; no weight changes.

    Returns:
        ``{"classes": [per-class row], "gradients": {loss: {group: mean norm}},
        "cosine_consistency_vs_sem_seg": {group: mean cosine}, "losses": {loss: mean},
        "num_batches": int}``. Per-class rows: ``points_share``, ``acc_2d``, ``acc_3d``,
        ``only_3d_right``, ``acc_3d_gt_depth`` (fractions), ``depth_abs_rel``,
        ``depth_median_ratio`` (predicted / true depth at the class's points).
    """
    was_training = model.training
    model.train()
    groups = parameter_groups(model)
    all_params = [p for params in groups.values() for p in params]
    spans, start = {}, 0  # each group's slice of the flattened gradient of all_params
    for group, params in groups.items():
        end = start + sum(p.numel() for p in params)
        spans[group] = (start, end)
        start = end
    acc = _Accumulator(len(class_names))
    grad_norms: Dict[str, Dict[str, List[float]]] = {}
    cosines: Dict[str, List[float]] = {}
    loss_values: Dict[str, List[float]] = {}
    num_batches = 0
    try:
        # the point branch's generator is left as it was (a diagnostic draws nothing from
        # the training stream)
        with EventStorage(0), record_point_branch(model) as records, (
            model.preserved_point_generator()
        ):
            for batch in batches:
                losses = model(batch)
                rec = records.pop()
                num_batches += 1
                for k, v in losses.items():
                    loss_values.setdefault(k, []).append(float(v.detach()))
                flat = {}
                for name in gradient_losses:
                    if name not in losses or not losses[name].requires_grad:
                        continue
                    # one backward pass per loss over every group's parameters, then split
                    g_all = _flat_grads(losses[name], all_params)
                    for group, (start, end) in spans.items():
                        g = g_all[start:end]
                        flat[(name, group)] = g
                        grad_norms.setdefault(name, {}).setdefault(group, []).append(
                            float(g.norm())
                        )
                for group in groups:
                    a = flat.get(("loss_consistency", group))
                    b = flat.get(("loss_sem_seg", group))
                    if a is not None and b is not None and a.norm() > 0 and b.norm() > 0:
                        cos = float(torch.dot(a, b) / (a.norm() * b.norm()))
                        cosines.setdefault(group, []).append(cos)
                with torch.no_grad():
                    keep = rec["point_valid"] & (rec["labels"] != model.sem_seg_head.ignore_value)
                    keep &= rec["labels"] < len(class_names)
                    has_gt = rec["gt_depth"] > 0
                    xyz_gt = backproject_pixels(rec["gt_depth"], rec["uv"], rec["K"])
                    logits_gt = model.point_head(
                        xyz_gt, rec["point_valid"] & has_gt, rec.get("point_feats")
                    )
                    depth = rec["xyz"][..., 2]
                    acc.add(
                        rec["labels"],
                        rec["logits_2d"].argmax(-1),
                        rec["logits_3d"].argmax(-1),
                        logits_gt.argmax(-1),
                        depth,
                        rec["gt_depth"],
                        keep & has_gt,
                    )
                model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    if num_batches == 0:
        raise ValueError("point_branch_diagnostics: no batches")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "num_batches": num_batches,
        "classes": acc.rows(class_names),
        "gradients": {
            loss: {g: mean(v) for g, v in per_group.items()}
            for loss, per_group in grad_norms.items()
        },
        "cosine_consistency_vs_sem_seg": {g: mean(v) for g, v in cosines.items()},
        "losses": {k: mean(v) for k, v in loss_values.items()},
    }


def diagnostics_markdown(result: Mapping, title: Optional[str] = None) -> str:
    """Two markdown tables (per class; per loss and part of the network) and the cosines."""
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| class | share of points | 2D acc | 3D acc | 3D right, 2D wrong | 3D acc on true depth "
        "| depth AbsRel | depth median ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pct = lambda x: "-" if math.isnan(x) else f"{100 * x:.1f}"  # noqa: E731
    num = lambda x: "-" if math.isnan(x) else f"{x:.3f}"  # noqa: E731
    for r in result["classes"]:
        lines.append(
            f"| {r['class']} | {pct(r['points_share'])} | {pct(r['acc_2d'])} | "
            f"{pct(r['acc_3d'])} | {pct(r['only_3d_right'])} | {pct(r['acc_3d_gt_depth'])} | "
            f"{num(r['depth_abs_rel'])} | {num(r['depth_median_ratio'])} |"
        )
    groups = sorted({g for per in result["gradients"].values() for g in per})
    lines += ["", "| loss (value) | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for loss, per in result["gradients"].items():
        value = result["losses"].get(loss, float("nan"))
        cells = [f"{per[g]:.3g}" if g in per else "-" for g in groups]
        lines.append(f"| {loss} ({value:.3f}) | " + " | ".join(cells) + " |")
    cos = result["cosine_consistency_vs_sem_seg"]
    if cos:
        lines += [
            "",
            "cosine between the gradients of loss_consistency and loss_sem_seg: "
            + ", ".join(f"{g} {c:+.3f}" for g, c in sorted(cos.items())),
        ]
    lines.append(f"\n({result['num_batches']} batches; gradient norms are means over batches)")
    return "\n".join(lines) + "\n"


def average_diagnostics(results: Sequence[Mapping]) -> Dict:
    """The mean over several models (e.g. seeds) of :func:`point_branch_diagnostics`
    results: every per-class number, gradient norm, cosine and loss value (NaN entries are
    left out of their mean)."""
    if not results:
        raise ValueError("average_diagnostics: no results")

    def mean(values):
        vals = [v for v in values if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else float("nan")

    classes = []
    for rows in zip(*(r["classes"] for r in results)):
        row = {"class": rows[0]["class"]}
        for key in rows[0]:
            if key != "class":
                row[key] = mean([r[key] for r in rows])
        classes.append(row)
    gradients: Dict[str, Dict[str, float]] = {}
    for loss in results[0]["gradients"]:
        for group in results[0]["gradients"][loss]:
            gradients.setdefault(loss, {})[group] = mean(
                [r["gradients"].get(loss, {}).get(group, float("nan")) for r in results]
            )
    keys = lambda name: {k for r in results for k in r[name]}  # noqa: E731
    return {
        "num_batches": sum(r["num_batches"] for r in results),
        "classes": classes,
        "gradients": gradients,
        "cosine_consistency_vs_sem_seg": {
            g: mean([r["cosine_consistency_vs_sem_seg"].get(g, float("nan")) for r in results])
            for g in sorted(keys("cosine_consistency_vs_sem_seg"))
        },
        "losses": {
            k: mean([r["losses"].get(k, float("nan")) for r in results])
            for k in sorted(keys("losses"))
        },
    }
