"""Diagnostics of metric-depth errors: where the error lies (distance, camera) and what kind
it is (a global scale per image, or the shape of the depth map).

Used by :class:`~panoptic_curriculum.evaluation.DepthEvaluator`, which reports them as the
task ``"depth_diagnostics"`` (flat keys, so detectron2 writes them to ``metrics.json``) and
logs them as tables. All depths in metres; ``r = log p - log g`` is the natural-log ratio of
prediction ``p`` (clamped to the evaluation range) to ground truth ``g`` at a valid pixel.

What is reported (per-image quantities are averaged over images; binned ones pool the pixels
of all images that fall in the bin, so that a bin few images reach is not dominated by them):

* **by distance** (ground-truth depth bins ``[e_k, e_{k+1})`` named ``0-5m`` ..., the last
  bin open-ended, named ``over40m``):
  ``AbsRel_<bin>``, ``d1_<bin>`` (δ<1.25), ``log_ratio_<bin>`` (mean ``r``: > 0 predicted too
  far, < 0 too near) and ``frac_<bin>`` (share of all valid pixels);
* **near vs far**: the same four with suffixes ``_near`` (``g < near_far_threshold``) and
  ``_far``;
* **scale vs shape** of the error, per image: ``s = median(p / g)`` (the image's scale
  error) gives ``scale_log_mean`` and ``scale_log_std`` (mean and standard deviation of
  ``log s`` over images) and ``scale_ratio = exp(scale_log_mean)``; the mean-squared log
  error ``log_mse = mean(r^2)`` splits exactly into the two terms of the scale-invariant log
  error, ``log_var = mean(r^2) - mean(r)^2`` (shape: what no global scale can fix) and
  ``log_scale_sq = mean(r)^2`` (scale), each averaged over images, with
  ``scale_share = log_scale_sq / log_mse`` (0: all shape, 1: all scale); and the metrics
  after dividing each image's prediction by its ``s`` (the usual median scaling):
  ``AbsRel_median_scaled``, ``d1_median_scaled``;
* **by ground-truth class** (when the evaluator is given the class names and an image has a
  semantic label map of the same size as its depth): the same four per class, suffixed
  ``_cls-<name>`` (characters other than letters, digits, ``_.-`` in a name become ``_``;
  ``frac`` over the labelled valid pixels; ignored pixels are in no class),
  so a user sees, say, whether a distant wall or the thin objects carry the error;
* **by camera focal length** (``fx`` of the original image, pixels; images binned whole):
  ``AbsRel_fx<lo>-<hi>``, ``d1_fx<lo>-<hi>``, ``scale_log_mean_fx<lo>-<hi>``,
  ``num_images_fx<lo>-<hi>`` (the last given bin ``fxover<lo>``). Without given edges the
  bins are the tertiles of the evaluated images' ``fx``.

Empty bins report NaN (and a pixel or image count of 0).
"""

import math
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from tabulate import tabulate

__all__ = [
    "DEFAULT_DISTANCE_BINS",
    "check_bin_edges",
    "distance_bin_names",
    "image_diagnostics",
    "distance_trend",
    "aggregate_diagnostics",
    "diagnostics_tables",
]

#: default edges of the distance bins, metres: 0-5, 5-10, 10-20, 20-40, >40
DEFAULT_DISTANCE_BINS = (0.0, 5.0, 10.0, 20.0, 40.0)

# per-bin pixel sums kept in each image's record
_BIN_SUMS = ("count", "abs_rel", "d1", "log_ratio")


def check_bin_edges(edges: Sequence[float], what: str) -> Tuple[float, ...]:
    """``edges`` as floats, checked to be finite, >= 0 and strictly increasing (at least one).

    Raises:
        ValueError: naming ``what`` and the edges.
    """
    try:
        out = tuple(float(e) for e in edges)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a list of numbers, got {edges!r}") from None
    if (
        not out
        or not all(math.isfinite(e) and e >= 0 for e in out)
        or any(b <= a for a, b in zip(out, out[1:]))
    ):
        raise ValueError(
            f"{what} must be finite, >= 0 and strictly increasing (bin edges; the last bin "
            f"is open-ended), got {list(edges)}"
        )
    return out


def _bin_name(lo: float, hi: Optional[float], unit: str = "m") -> str:
    # only characters that tensorboard accepts in a tag
    return f"over{lo:g}{unit}" if hi is None else f"{lo:g}-{hi:g}{unit}"


def distance_bin_names(edges: Sequence[float]) -> List[str]:
    """``["0-5m", "5-10m", ..., "over40m"]`` for edges ``(0, 5, ..., 40)``."""
    return [_bin_name(lo, hi) for lo, hi in zip(edges, list(edges[1:]) + [None])]


def _median(x: torch.Tensor) -> torch.Tensor:
    """Median of a 1-D tensor (the mean of the two middle values for an even count)."""
    s, _ = torch.sort(x)
    n = s.numel()
    return 0.5 * (s[(n - 1) // 2] + s[n // 2])


def _bin_sums(g, abs_rel, d1, r, edges) -> Dict[str, List[float]]:
    """Per-bin sums over pixels: count, AbsRel, δ<1.25 hits, log ratio (bins by ``g``)."""
    index = torch.bucketize(g, torch.as_tensor(edges, dtype=g.dtype), right=True) - 1
    return _group_sums(index, len(edges), g, abs_rel, d1, r)


def _group_sums(index, n, g, abs_rel, d1, r) -> Dict[str, List[float]]:
    """Sums over pixels of each group ``0..n-1`` (``index`` per pixel; outside: no group)."""
    inside = (index >= 0) & (index < n)
    index = index[inside]
    out = {}
    for key, value in (
        ("count", torch.ones_like(g)),
        ("abs_rel", abs_rel),
        ("d1", d1.to(g.dtype)),
        ("log_ratio", r),
    ):
        out[key] = torch.zeros(n, dtype=g.dtype).index_add_(0, index, value[inside]).tolist()
    return out


def image_diagnostics(
    p: torch.Tensor,
    g: torch.Tensor,
    *,
    distance_bins: Sequence[float],
    near_far_threshold: float,
    fx: Optional[float] = None,
    labels: Optional[torch.Tensor] = None,
    num_classes: int = 0,
) -> Dict:
    """Per-image record of the diagnostics (plain floats and lists: picklable, JSON-able).

    Args:
        p: ``[N]`` float64 predictions (metres, clamped to the evaluation range, > 0) at the
            ``N > 0`` valid pixels.
        g: ``[N]`` float64 ground truth (metres, > 0) at the same pixels.
        distance_bins, near_far_threshold: see :class:`DepthEvaluator`.
        fx: focal length of the original image (pixels), or None when unknown.
        labels: ``[N]`` integer ground-truth class ids of the same pixels, or None; with
            them the record gets per-class sums (``"classes"``) for ids in
            ``[0, num_classes)`` (others, the ignore label, count in no class).
    """
    r = torch.log(p) - torch.log(g)
    abs_rel = (p - g).abs() / g
    d1 = torch.maximum(p / g, g / p) < 1.25
    log_mean = float(r.mean())
    log_mse = float((r * r).mean())
    s = _median(p / g)
    q = p / s  # median-scaled prediction
    record = {
        "fx": None if fx is None else float(fx),
        "median_ratio": float(s),
        "log_mse": log_mse,
        # mean(r^2) - mean(r)^2 >= 0 up to rounding
        "log_var": max(log_mse - log_mean * log_mean, 0.0),
        "log_scale_sq": log_mean * log_mean,
        "abs_rel": float(abs_rel.mean()),
        "d1": float(d1.to(torch.float64).mean()),
        "abs_rel_median_scaled": float(((q - g).abs() / g).mean()),
        "d1_median_scaled": float((torch.maximum(q / g, g / q) < 1.25).to(torch.float64).mean()),
        "bins": _bin_sums(g, abs_rel, d1, r, distance_bins),
        "near_far": _bin_sums(g, abs_rel, d1, r, (0.0, near_far_threshold)),
    }
    if labels is not None:
        record["classes"] = _group_sums(labels.to(torch.int64), num_classes, g, abs_rel, d1, r)
    return record


def _mean(values: List[float]) -> float:
    return math.fsum(values) / len(values) if values else float("nan")


def _binned(records: List[Dict], key: str, names: List[str]) -> Dict[str, float]:
    """AbsRel, d1, log_ratio and frac per bin from the pooled per-bin sums."""
    total = math.fsum(math.fsum(r[key]["count"]) for r in records)
    out = {}
    for k, name in enumerate(names):
        sums = {s: math.fsum(r[key][s][k] for r in records) for s in _BIN_SUMS}
        n = sums["count"]
        nan = float("nan")
        out[f"AbsRel_{name}"] = sums["abs_rel"] / n if n else nan
        out[f"d1_{name}"] = sums["d1"] / n if n else nan
        out[f"log_ratio_{name}"] = sums["log_ratio"] / n if n else nan
        out[f"frac_{name}"] = n / total if total else nan
    return out


def _focal_groups(records: List[Dict], edges: Optional[Sequence[float]]):
    """``[(name, member records)]`` per focal bin, in increasing ``fx``.

    Given ``edges``: bins ``[e_k, e_{k+1})`` and an open last bin ``>= e_last`` (images
    below ``e_0`` are in none). Without: the tertiles of the images' ``fx``, closed bins
    covering every image (fewer bins when tertiles coincide).
    """
    fxs = [r["fx"] for r in records]
    if edges is not None:
        bounds = list(zip(edges, list(edges[1:]) + [None]))
        return [
            (
                "fx" + _bin_name(lo, hi, unit=""),
                [r for r in records if lo <= r["fx"] and (hi is None or r["fx"] < hi)],
            )
            for lo, hi in bounds
        ]
    t = torch.tensor(fxs, dtype=torch.float64)
    qs = torch.quantile(t, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0], dtype=torch.float64)).tolist()
    cuts = [qs[0]] + [q for i, q in enumerate(qs[1:]) if q > qs[i]]
    if len(cuts) == 1:  # one focal length
        return [(f"fx{cuts[0]:.4g}", list(records))]
    groups = []
    for k, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
        last = k == len(cuts) - 2
        members = [
            r for r in records if lo <= r["fx"] and (r["fx"] < hi or (last and r["fx"] <= hi))
        ]
        groups.append((f"fx{lo:.4g}-{hi:.4g}", members))
    return groups


def aggregate_diagnostics(
    records: List[Dict],
    *,
    distance_bins: Sequence[float],
    focal_bins: Optional[Sequence[float]] = None,
    class_names: Optional[Sequence[str]] = None,
) -> Dict[str, float]:
    """The flat ``"depth_diagnostics"`` dict (see the module docstring) from the per-image
    records of :func:`image_diagnostics` (in any order: sums are correctly rounded); records
    with a ``"classes"`` entry (made with ``labels``) give the per-class keys of
    ``class_names``."""
    out: Dict[str, float] = {}
    if not records:
        return out
    out.update(_binned(records, "bins", distance_bin_names(distance_bins)))
    out.update(_binned(records, "near_far", ["near", "far"]))
    labelled = [r for r in records if "classes" in r]
    if class_names and labelled:
        # class names as tensorboard tags accept them ("traffic light" -> "traffic_light")
        names = [f"cls-{re.sub(r'[^A-Za-z0-9_.-]', '_', str(c))}" for c in class_names]
        out.update(_binned(labelled, "classes", names))
    log_s = [math.log(r["median_ratio"]) for r in records]
    mean_log_s = _mean(log_s)
    out["scale_log_mean"] = mean_log_s
    out["scale_log_std"] = (
        math.sqrt(math.fsum((x - mean_log_s) ** 2 for x in log_s) / len(log_s))
        if log_s
        else float("nan")
    )
    out["scale_ratio"] = math.exp(mean_log_s)
    for key in ("log_mse", "log_var", "log_scale_sq"):
        out[key] = _mean([r[key] for r in records])
    out["scale_share"] = out["log_scale_sq"] / out["log_mse"] if out["log_mse"] > 0 else 0.0
    out["AbsRel_median_scaled"] = _mean([r["abs_rel_median_scaled"] for r in records])
    out["d1_median_scaled"] = _mean([r["d1_median_scaled"] for r in records])

    with_fx = [r for r in records if r["fx"] is not None]
    out["num_images_without_fx"] = len(records) - len(with_fx)
    if with_fx:
        for name, members in _focal_groups(with_fx, focal_bins):
            out[f"AbsRel_{name}"] = _mean([r["abs_rel"] for r in members])
            out[f"d1_{name}"] = _mean([r["d1"] for r in members])
            out[f"scale_log_mean_{name}"] = _mean([math.log(r["median_ratio"]) for r in members])
            out[f"num_images_{name}"] = len(members)
    return out


def _pooled_table(diag: Dict[str, float], names: List[str], prefix: str, what: str) -> str:
    """Pixel share, AbsRel, δ<1.25 and log ratio of each pooled group ``prefix + name``."""
    rows = [
        [n] + [diag[f"{m}_{prefix}{n}"] for m in ("frac", "AbsRel", "d1", "log_ratio")]
        for n in names
    ]
    return tabulate(
        rows,
        headers=[what, "pixels", "AbsRel", "d<1.25", "log_ratio"],
        floatfmt=".3f",
        tablefmt="pipe",
    )


def diagnostics_tables(diag: Dict[str, float], distance_bins: Sequence[float]) -> str:
    """A readable text rendering of :func:`aggregate_diagnostics`' output: one table per
    grouping (distance bins and near/far, focal bins) and the scale/shape summary."""
    if not diag:
        return "(no depth diagnostics: no image evaluated)"
    text = [
        "by ground-truth distance (pixels pooled; log_ratio = mean log(pred/gt), > 0: too far):",
        _pooled_table(diag, distance_bin_names(distance_bins) + ["near", "far"], "", "depth"),
    ]
    classes = [k[len("frac_cls-") :] for k in diag if k.startswith("frac_cls-")]
    if classes:
        text += [
            "by ground-truth class (pixels pooled over the images with a label map):",
            _pooled_table(diag, classes, "cls-", "class"),
        ]
    focal = [k[len("num_images_") :] for k in diag if k.startswith("num_images_fx")]
    if focal:
        text += [
            "by focal length fx (pixels; per-image averages; scale_log_mean = mean log of "
            "the per-image median ratio pred/gt):",
            tabulate(
                [
                    [
                        n,
                        diag[f"num_images_{n}"],
                        diag[f"AbsRel_{n}"],
                        diag[f"d1_{n}"],
                        diag[f"scale_log_mean_{n}"],
                    ]
                    for n in focal
                ],
                headers=["focal", "images", "AbsRel", "d<1.25", "scale_log_mean"],
                floatfmt=".3f",
                tablefmt="pipe",
            ),
        ]
    text.append(
        "scale vs shape: per-image median ratio pred/gt = {:.3f} (log mean {:+.3f}, log std "
        "{:.3f}); mean squared log error {:.4f} = shape (variance) {:.4f} + scale {:.4f} "
        "({:.0%} scale); after per-image median scaling AbsRel {:.3f}, d<1.25 {:.3f}".format(
            diag["scale_ratio"],
            diag["scale_log_mean"],
            diag["scale_log_std"],
            diag["log_mse"],
            diag["log_var"],
            diag["log_scale_sq"],
            diag["scale_share"],
            diag["AbsRel_median_scaled"],
            diag["d1_median_scaled"],
        )
    )
    return "\n".join(text)


def distance_trend(
    true_depth: Sequence[float], log_ratio: Sequence[float], edges: Sequence[float]
) -> Dict:
    """Does a model resolve how far a surface is, image by image?

    Args:
        true_depth: per image, a surface's ground-truth depth (metres, > 0; e.g. the median
            over the pixels of one class).
        log_ratio: per image, the model's error there, ``log(pred / gt)`` (e.g. the median
            over the same pixels).
        edges: increasing bin edges (metres) of ``true_depth``; the last bin is open-ended.

    Returns:
        ``{"bins": [{"bin", "images", "log_ratio"}], "slope", "num_images"}``: per bin the
        number of images and their mean ``log_ratio`` (NaN when empty); ``slope`` of the
        least-squares line of ``log(pred) = log(gt) + log_ratio`` against ``log(gt)`` over the
        images: 1 when the model follows the true depth, 0 when it predicts one depth for
        every image (NaN with fewer than two distinct depths).
    """
    edges = check_bin_edges(edges, "distance_trend edges")
    g = torch.as_tensor(list(true_depth), dtype=torch.float64)
    r = torch.as_tensor(list(log_ratio), dtype=torch.float64)
    if g.shape != r.shape or g.dim() != 1:
        raise ValueError(
            f"distance_trend needs one log ratio per depth, got {tuple(g.shape)} depths and "
            f"{tuple(r.shape)} ratios"
        )
    if g.numel() and not (torch.isfinite(g).all() and (g > 0).all() and torch.isfinite(r).all()):
        raise ValueError("distance_trend needs finite depths > 0 and finite log ratios")
    index = torch.bucketize(g, torch.as_tensor(edges, dtype=g.dtype), right=True) - 1
    bins = []
    for k, name in enumerate(distance_bin_names(edges)):
        members = r[index == k]
        bins.append(
            {
                "bin": name,
                "images": int(members.numel()),
                "log_ratio": float(members.mean()) if members.numel() else float("nan"),
            }
        )
    x = torch.log(g)
    y = x + r
    dx = x - x.mean() if x.numel() else x
    var = float((dx * dx).sum())
    slope = float((dx * (y - y.mean())).sum()) / var if var > 0 else float("nan")
    return {"bins": bins, "slope": slope, "num_images": int(g.numel())}
