"""Training curves from detectron2's ``metrics.json``: losses and evaluation metrics against
iteration, for plain runs and for curriculum runs (stages concatenated on one axis).

``metrics.json`` is detectron2's ``JSONWriter`` output: one JSON object per line with
``"iteration"`` and scalars (``"total_loss"``, ``"loss_sem_seg"``, ..., ``"lr"``, and
evaluation results flattened as ``"sem_seg/mIoU"``, ``"segm/AP"``, ``"panoptic_seg/PQ"``,
``"depth/AbsRel"``, ...). A curriculum root (see :mod:`panoptic_curriculum.engine.curriculum`)
holds one such run per stage in ``<root>/<stage>/``; its stages are laid end to end on a
global iteration axis: a training stage of ``n`` iterations (0 .. n-1 in its own file) spans
``[offset, offset + n)``, and a stage that does not train (``merge``, which only writes its
evaluation at iteration 0) takes no room: its metrics sit at the boundary where it ran.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no display needed, and
the process's matplotlib backend is left alone).
"""

import fnmatch
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "CURRICULUM_STAGES",
    "Run",
    "load_metrics_json",
    "load_run",
    "is_loss_key",
    "is_metric_key",
    "is_weight_key",
    "plot_task_weights",
    "plotted_keys",
    "key_to_filename",
    "plot_key",
    "plot_runs",
]

logger = logging.getLogger(__name__)

#: stage folders of a curriculum root, in training order
#: (as :data:`panoptic_curriculum.engine.curriculum.STAGES`)
CURRICULUM_STAGES = ("semantic", "instance", "merge", "joint")
#: stages that do not train: their metrics are placed at the boundary, taking no iterations
NON_TRAINING_STAGES = ("merge",)


def load_metrics_json(path: str) -> List[Dict]:
    """The records of a detectron2 ``metrics.json`` (JSON lines), in file order.

    A truncated last line (a run killed while writing) is skipped with a warning.

    Raises:
        FileNotFoundError: naming ``path`` when it does not exist.
        ValueError: naming ``path`` (and the line) when it is not valid JSON lines with an
            ``"iteration"`` in every record, or holds no record.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metrics file not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    records = []
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    for k, (lineno, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if k == len(numbered) - 1 and records:
                logger.warning("%s: skipping the truncated last line %d (%s)", path, lineno, e)
                break
            raise ValueError(
                f"{path} is not a detectron2 metrics.json: line {lineno} is not JSON ({e})"
            ) from None
        if not isinstance(record, dict) or "iteration" not in record:
            raise ValueError(
                f"{path} is not a detectron2 metrics.json: line {lineno} has no 'iteration'"
            )
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no metrics (empty file)")
    return records


@dataclass
class Stage:
    """One stage of a run on the run's global iteration axis."""

    name: str
    start: int  # global iteration of the stage's iteration 0
    length: int  # iterations it takes on the axis (0 for a non-training stage)


@dataclass
class Run:
    """The scalar series of one run, on its global iteration axis.

    Attributes:
        name: label in legends.
        path: the run folder.
        series: key -> ``[(global_iteration, value)]`` sorted by iteration.
        stage_of: key -> the stage index of each point of ``series[key]`` (all 0 for a plain
            run), to break loss curves at stage boundaries.
        stages: the curriculum stages (empty for a plain run).
    """

    name: str
    path: str
    series: Dict[str, List[Tuple[float, float]]] = field(default_factory=dict)
    stage_of: Dict[str, List[int]] = field(default_factory=dict)
    stages: List[Stage] = field(default_factory=list)


def is_loss_key(key: str) -> bool:
    return key.startswith("loss_") or key == "total_loss"


def is_metric_key(key: str) -> bool:
    return "/" in key


def is_weight_key(key: str) -> bool:
    """Learned loss weights (``task_weight/<task>``): a per-iteration training series."""
    return key.startswith("task_weight/")


def _is_training_series(key: str) -> bool:
    return is_loss_key(key) or is_weight_key(key)


def _scalar_series(records: Sequence[Dict]) -> Dict[str, Dict[int, float]]:
    """key -> {iteration: value}; a later record for the same iteration wins (a resumed run
    rewrites the iterations after its checkpoint)."""
    out: Dict[str, Dict[int, float]] = {}
    for r in records:
        it = int(r["iteration"])
        for key, value in r.items():
            if key == "iteration" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(float(value)):
                continue
            out.setdefault(key, {})[it] = float(value)
    return out


def _is_curriculum_root(path: str) -> bool:
    return any(os.path.isdir(os.path.join(path, s)) for s in CURRICULUM_STAGES)


def load_run(path: str, name: Optional[str] = None) -> Run:
    """Load a run folder: a plain detectron2 output folder (``path/metrics.json``) or a
    curriculum root (``path/<stage>/metrics.json`` for the stage folders present).

    Raises:
        FileNotFoundError, ValueError: naming the missing or bad ``metrics.json``.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"run folder not found: {path}")
    run = Run(name=name or os.path.basename(os.path.normpath(os.path.abspath(path))), path=path)
    if not _is_curriculum_root(path):
        series = _scalar_series(load_metrics_json(os.path.join(path, "metrics.json")))
        for key, values in series.items():
            run.series[key] = sorted((float(i), v) for i, v in values.items())
            run.stage_of[key] = [0] * len(values)
        return run

    offset = 0
    for stage in CURRICULUM_STAGES:
        stage_dir = os.path.join(path, stage)
        if not os.path.isdir(stage_dir):
            continue
        series = _scalar_series(load_metrics_json(os.path.join(stage_dir, "metrics.json")))
        trains = stage not in NON_TRAINING_STAGES and any(is_loss_key(k) for k in series)
        last = max((max(v) for v in series.values() if v), default=-1)
        length = last + 1 if trains else 0
        run.stages.append(Stage(stage, offset, length))
        index = len(run.stages) - 1
        for key, values in series.items():
            points = sorted((float(offset + (i if trains else 0)), v) for i, v in values.items())
            run.series.setdefault(key, []).extend(points)  # stages come in axis order
            run.stage_of.setdefault(key, []).extend([index] * len(points))
        offset += length
    return run


def _segments(run: Run, key: str, split_stages: bool) -> List[List[Tuple[float, float]]]:
    """The points of ``key``, as one polyline, or one per stage with ``split_stages``."""
    points = run.series.get(key, [])
    if not split_stages:
        return [points] if points else []
    segments: List[List[Tuple[float, float]]] = []
    previous = None
    for point, stage in zip(points, run.stage_of.get(key, [0] * len(points))):
        if stage != previous:
            segments.append([])
            previous = stage
        segments[-1].append(point)
    return segments


#: metric groups left out unless asked for by a pattern (dozens of keys each)
DIAGNOSTIC_PREFIXES = ("depth_diagnostics/",)


def plotted_keys(runs: Sequence[Run], patterns: Optional[Sequence[str]] = None) -> List[str]:
    """Keys to plot, sorted (losses first): every loss (``loss_*``, ``total_loss``) and every
    metric (a ``/`` in the key) of any run, except the depth diagnostics
    (``depth_diagnostics/*``); with ``patterns`` (fnmatch, e.g. ``"loss_*"``,
    ``"sem_seg/*"``, ``"depth_diagnostics/*"``), every key of any run that matches one of
    them instead."""
    keys = set()
    for run in runs:
        for key in run.series:
            if patterns:
                if any(fnmatch.fnmatchcase(key, p) for p in patterns):
                    keys.add(key)
            elif (is_loss_key(key) or is_metric_key(key)) and not key.startswith(
                DIAGNOSTIC_PREFIXES
            ):
                keys.add(key)
    return sorted(keys, key=lambda k: (not is_loss_key(k), k != "total_loss", k))


def key_to_filename(key: str) -> str:
    """File name of a key's plot: ``"sem_seg/mIoU"`` -> ``"sem_seg-mIoU.png"`` (``/`` becomes
    ``-``, other characters outside ``[A-Za-z0-9_.-]`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", key.replace("/", "-")) + ".png"


def _stage_boundaries(run: Run) -> List[Tuple[float, str]]:
    """(global iteration, label) of each stage start; stages starting at the same iteration
    (``merge`` and ``joint``) share one label."""
    starts: Dict[int, List[str]] = {}
    for stage in run.stages:
        starts.setdefault(stage.start, []).append(stage.name)
    return [(float(x), " | ".join(names)) for x, names in sorted(starts.items())]


def plot_key(key: str, runs: Sequence[Run], path: str) -> None:
    """Write the figure of one key: each run that has it as a line (markers where points are
    sparse), with its stage boundaries as labelled dashed vertical lines."""
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    with_boundaries = [r for r in runs if r.stages]
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        # a loss means something else in each stage (other heads train): no line across them
        segments = _segments(run, key, split_stages=_is_training_series(key))
        num_points = sum(len(s) for s in segments)
        marker = "o" if num_points <= 30 or not _is_training_series(key) else None
        for k, segment in enumerate(segments):
            xs, ys = zip(*segment)
            ax.plot(
                xs,
                ys,
                marker=marker,
                markersize=4,
                linewidth=1.2,
                color=colors[i % len(colors)],
                label=run.name if k == 0 else None,
            )
    for i, run in enumerate(with_boundaries):
        color = colors[runs.index(run) % len(colors)] if len(runs) > 1 else "0.35"
        for x, label in _stage_boundaries(run):
            ax.axvline(x, color=color, linestyle="--", linewidth=0.9, alpha=0.8)
            ax.annotate(
                label,
                xy=(x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -4 - 11 * i),
                textcoords="offset points",
                fontsize=8,
                color=color,
                va="top",
                ha="left",
            )
    ax.set_xlabel("iteration" + (" (curriculum stages end to end)" if with_boundaries else ""))
    ax.set_ylabel(key)
    ax.set_title(key)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_task_weights(runs: Sequence[Run], path: str) -> bool:
    """One figure with every learned loss weight (``task_weight/<task>``, log scale) of every
    run; returns False (and writes nothing) when no run has one."""
    keys = sorted({k for run in runs for k in run.series if is_weight_key(k)})
    if not keys:
        return False
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for i, key in enumerate(keys):
        for j, run in enumerate(runs):
            for k, segment in enumerate(_segments(run, key, split_stages=True)):
                xs, ys = zip(*segment)
                label = key.split("/", 1)[1] + (f" ({run.name})" if len(runs) > 1 else "")
                ax.plot(
                    xs,
                    ys,
                    linestyle=styles[j % len(styles)],
                    linewidth=1.2,
                    color=colors[i % len(colors)],
                    label=label if k == 0 else None,
                )
    for run in runs:
        for x, label in _stage_boundaries(run):
            ax.axvline(x, color="0.35", linestyle="--", linewidth=0.9, alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("weight exp(-s)")
    ax.set_title("learned loss weights (uncertainty weighting)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return True


def _unique_names(runs: Sequence[Run]) -> None:
    """Give runs with the same folder name their full paths as legend labels."""
    counts: Dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    for run in runs:
        if counts[run.name] > 1:
            run.name = os.path.normpath(run.path)


def plot_runs(
    run_dirs: Sequence[str], output_dir: str, patterns: Optional[Sequence[str]] = None
) -> Dict[str, str]:
    """Load runs and write one PNG per key (see :func:`plotted_keys`) into ``output_dir``.

    Returns:
        key -> written PNG path.

    Raises:
        FileNotFoundError, ValueError: naming the missing or bad ``metrics.json``, or when
        there is nothing to plot.
    """
    if not run_dirs:
        raise ValueError("no run folder given")
    runs = [load_run(d) for d in run_dirs]
    _unique_names(runs)
    keys = plotted_keys(runs, patterns)
    if not keys:
        what = f"matching {list(patterns)}" if patterns else "(losses or metrics)"
        raise ValueError(f"no key to plot {what} in {', '.join(run_dirs)}")
    os.makedirs(output_dir, exist_ok=True)
    written: Dict[str, str] = {}
    used = set()
    for key in keys:
        name = key_to_filename(key)
        stem, k = name[:-4], 1
        while name in used:
            name, k = f"{stem}_{k}.png", k + 1
        used.add(name)
        path = os.path.join(output_dir, name)
        plot_key(key, runs, path)
        written[key] = path
    if not patterns or any(fnmatch.fnmatchcase("task_weight/x", p) for p in patterns):
        path = os.path.join(output_dir, "task_weights.png")
        if plot_task_weights(runs, path):
            written["task_weight/*"] = path
    return written
