"""Robustness to image corruptions, the ImageNet-C / Cityscapes-C protocol (Hendrycks &
Dietterich 2019; Michaelis et al. 2019), for mIoU, PQ and depth δ<1.25.

A model is evaluated on the clean validation split and on corrupted copies of it (every
corruption at every severity, corrupted in memory by the test-time mapper: no file is
written). Per metric ``m`` (higher is better):

* per corruption ``c``: the mean of ``m`` over the severities, ``m_c``;
* ``mPC`` (mean performance under corruption): the mean of ``m_c`` over the corruptions;
* ``rPC`` (relative performance under corruption): ``mPC / clean``.

Several models (seeds) under one label are summarised as mean ± standard deviation over
models of each number. :func:`evaluate_robustness` runs one model, :func:`aggregate_corruptions`
does the arithmetic, :func:`summarize_runs`, :func:`robustness_markdown`,
:func:`plot_robustness` and :func:`write_report` report.
"""

import copy
import json
import logging
import math
import os
import statistics
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import (
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
    inference_on_dataset,
)
from detectron2.utils import comm

from ..data.corruptions import (
    ALL_CORRUPTIONS,
    COMMON_CORRUPTIONS,
    CORRUPTION_GROUPS,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    ImageCorruption,
    check_corruptions,
)
from ..data.dataset_mapper import RGBDDatasetMapper, build_rgbd_augmentation
from .depth_evaluation import DepthEvaluator

__all__ = [
    "ROBUSTNESS_METRICS",
    "resolve_corruptions",
    "aggregate_corruptions",
    "subset_dataset",
    "evaluate_robustness",
    "summarize_runs",
    "check_pairing",
    "paired_differences",
    "robustness_markdown",
    "plot_robustness",
    "write_report",
]

logger = logging.getLogger(__name__)

#: reported metric -> (evaluator task, key); all higher-is-better
ROBUSTNESS_METRICS = OrderedDict(
    [("mIoU", ("sem_seg", "mIoU")), ("PQ", ("panoptic_seg", "PQ")), ("d1", ("depth", "d1"))]
)


def resolve_corruptions(names: Sequence[str]) -> List[str]:
    """Expand group names ("noise", "blur", "weather", "digital"), "common" (the 15 of the
    benchmark), "extra" (the 4 held-out ones), "all", and "none" (clean only) into corruption
    names, in order and without repeats.

    Raises:
        ValueError: listing the valid names for an unknown one.
    """
    out: List[str] = []
    for n in names:
        if n == "none":
            continue
        expanded = (
            list(CORRUPTION_GROUPS[n])
            if n in CORRUPTION_GROUPS
            else list(COMMON_CORRUPTIONS)
            if n == "common"
            else list(EXTRA_CORRUPTIONS)
            if n == "extra"
            else list(ALL_CORRUPTIONS)
            if n == "all"
            else [n]
        )
        try:
            check_corruptions(expanded)
        except ValueError as e:
            raise ValueError(
                f"{e}; or a group {list(CORRUPTION_GROUPS)}, 'common', 'extra', 'all', 'none'"
            ) from None
        out += [c for c in expanded if c not in out]
    return out


def aggregate_corruptions(
    clean: Mapping[str, float], corrupted: Mapping[str, Mapping[int, Mapping[str, float]]]
) -> Dict:
    """The protocol's numbers for one model.

    Args:
        clean: metric -> value on the clean images.
        corrupted: corruption -> severity -> metric -> value.

    Returns:
        dict with ``"per_corruption"`` (corruption -> metric -> mean over its severities),
        ``"mPC"`` (metric -> mean over corruptions of those means) and ``"rPC"`` (metric ->
        ``mPC / clean``; NaN when clean is 0). Metrics are those of ``clean``; both summaries
        are empty without corruptions.

    Raises:
        KeyError: a corrupted result lacking a metric that the clean one has.
    """
    metrics = list(clean)
    per_corruption: Dict[str, Dict[str, float]] = OrderedDict()
    for name, by_severity in corrupted.items():
        if not by_severity:
            raise ValueError(f"corruption {name!r} has no severity evaluated")
        per_corruption[name] = {}
        for m in metrics:
            missing = [s for s, r in by_severity.items() if m not in r]
            if missing:
                raise KeyError(f"corruption {name!r} severities {missing} have no {m!r}")
            per_corruption[name][m] = statistics.fmean(float(r[m]) for r in by_severity.values())
    mpc = (
        {m: statistics.fmean(v[m] for v in per_corruption.values()) for m in metrics}
        if per_corruption
        else {}
    )
    rpc = {m: mpc[m] / clean[m] if clean[m] else float("nan") for m in mpc}
    return {"per_corruption": per_corruption, "mPC": mpc, "rPC": rpc}


def subset_dataset(dataset_name: str, num_images: int, output_dir: str) -> str:
    """Register the first ``num_images`` images of ``dataset_name`` as a dataset of their own
    (``"<name>@first<N>"``) and return its name; its metadata is the original's, with a
    filtered copy of the panoptic ground-truth JSON (written into ``output_dir``), since the
    panoptic evaluator expects a prediction for every image of that file."""
    if num_images <= 0:
        raise ValueError(f"max_images must be positive, got {num_images}")
    dicts = DatasetCatalog.get(dataset_name)
    if num_images >= len(dicts):
        return dataset_name
    name = f"{dataset_name}@first{num_images}"
    subset = dicts[:num_images]
    meta = MetadataCatalog.get(dataset_name).as_dict()
    meta.pop("name", None)
    if meta.get("panoptic_json"):
        with open(meta["panoptic_json"]) as f:
            pan = json.load(f)
        keep = {d["image_id"] for d in subset}
        pan["images"] = [i for i in pan["images"] if i["id"] in keep]
        pan["annotations"] = [a for a in pan["annotations"] if a["image_id"] in keep]
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, f"panoptic_{name.replace('@', '_')}.json")
        with open(path, "w") as f:
            json.dump(pan, f)
        meta["panoptic_json"] = path
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda subset=subset: copy.deepcopy(subset))
    MetadataCatalog.get(name).set(**meta)
    return name


def _evaluators(cfg, dataset_name: str, notes: List[str]):
    """Evaluators of the three metrics available for ``dataset_name`` and the model."""
    meta = MetadataCatalog.get(dataset_name)
    pc = cfg.MODEL.PANOPTIC_CURRICULUM
    evaluators, metrics = [], []
    if pc.SEM_SEG_ON and meta.get("stuff_classes"):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=None))
        metrics.append("mIoU")
    else:
        notes.append("no mIoU: the semantic head is off or the dataset has no stuff_classes")
    if pc.SEM_SEG_ON and pc.INSTANCE_ON and meta.get("evaluator_type") == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_dir=None))
        metrics.append("PQ")
    else:
        notes.append(
            "no PQ: needs both decoders and a dataset with COCO-panoptic ground truth "
            f"(evaluator_type of {dataset_name}: {meta.get('evaluator_type')!r})"
        )
    if pc.DEPTH_ON and meta.get("has_depth", False):
        evaluators.append(
            DepthEvaluator(
                dataset_name,
                min_depth=cfg.INPUT.DEPTH.MIN_DEPTH,
                max_depth=cfg.INPUT.DEPTH.MAX_DEPTH,
                pooled=False,
                diagnostics=False,
            )
        )
        metrics.append("d1")
    else:
        why = "the depth head is off" if not pc.DEPTH_ON else f"{dataset_name} has no depth"
        notes.append(f"no depth δ<1.25: {why}; reporting segmentation metrics only")
    if not evaluators:
        raise ValueError(f"nothing to evaluate on {dataset_name}: {'; '.join(notes)}")
    return DatasetEvaluators(evaluators), metrics


def _pick(results: Mapping, metrics: Sequence[str]) -> Dict[str, float]:
    out = {}
    for m in metrics:
        task, key = ROBUSTNESS_METRICS[m]
        out[m] = float(results[task][key])
    return out


def evaluate_robustness(
    cfg,
    model,
    dataset_name: str,
    corruptions: Sequence[str],
    severities: Sequence[int] = SEVERITIES,
    *,
    cache_dir: Optional[str] = None,
    max_images: Optional[int] = None,
    seed: int = 0,
) -> Optional[Dict]:
    """Evaluate ``model`` on ``dataset_name`` clean and under each corruption and severity.

    Args:
        cfg: the model's config (test-time input size, branches, depth range, format).
        model: the model, in eval mode on its device.
        dataset_name: a registered dataset with ground truth.
        corruptions: names from :data:`~panoptic_curriculum.data.corruptions.ALL_CORRUPTIONS`.
        severities: each in 1..5.
        cache_dir: if given, each condition's metrics are stored there as JSON and read back
            on a re-run (an interrupted evaluation resumes), and filtered ground-truth files
            of a ``max_images`` subset go there. Never the dataset's own folder.
        max_images: evaluate only the first N images.
        seed: base seed of the corruptions' random numbers.

    Returns:
        On the main process: ``{"dataset", "num_images", "metrics", "notes", "clean",
        "corrupted"}`` plus the numbers of :func:`aggregate_corruptions`; ``None`` on others.

    Raises:
        ValueError: unknown corruption or severity (listing the valid ones), or nothing to
        evaluate.
    """
    check_corruptions(corruptions, severities)
    notes: List[str] = []
    if not MetadataCatalog.get(dataset_name).get("has_depth", False):
        # its samples have no depth files: load them without depth instead of failing
        cfg = cfg.clone()
        cfg.defrost()
        cfg.INPUT.DEPTH.MISSING = "skip"
        cfg.freeze()
    if max_images:
        dataset_name = subset_dataset(dataset_name, max_images, cache_dir or cfg.OUTPUT_DIR)
    evaluators, metrics = _evaluators(cfg, dataset_name, notes)
    for n in notes:
        logger.warning("robustness on %s: %s", dataset_name, n)
    dicts = DatasetCatalog.get(dataset_name)
    base_augs = build_rgbd_augmentation(cfg, False)

    def run(condition: str, augs) -> Dict[str, float]:
        path = os.path.join(cache_dir, f"{condition}.json") if cache_dir else None
        if path and os.path.isfile(path):
            with open(path) as f:
                cached = json.load(f)
            if set(metrics) <= set(cached):
                return {m: cached[m] for m in metrics}
        mapper = RGBDDatasetMapper(cfg, False, augmentations=augs + base_augs)
        loader = build_detection_test_loader(
            dataset=dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS
        )
        results = inference_on_dataset(model, loader, evaluators)
        values = _pick(results, metrics) if comm.is_main_process() else {}
        if path and comm.is_main_process():
            os.makedirs(cache_dir, exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump(values, f)
            os.replace(path + ".tmp", path)
        logger.info("robustness on %s, %s: %s", dataset_name, condition, values)
        return values

    clean = run("clean", [])
    corrupted: Dict[str, Dict[int, Dict[str, float]]] = OrderedDict()
    for name in corruptions:
        corrupted[name] = OrderedDict()
        for s in severities:
            corruption = ImageCorruption(name, s, seed=seed, image_format=cfg.INPUT.FORMAT)
            corrupted[name][int(s)] = run(f"{name}_{s}", [corruption])
    if not comm.is_main_process():
        return None
    return {
        "dataset": dataset_name,
        "num_images": len(dicts),
        "metrics": metrics,
        "notes": notes,
        "clean": clean,
        "corrupted": corrupted,
        **aggregate_corruptions(clean, corrupted),
    }


def _int_severities(result: Dict) -> Dict:
    """``result`` with integer severity keys (JSON turns them into strings)."""
    r = dict(result)
    r["corrupted"] = {
        c: {int(s): v for s, v in by_s.items()} for c, by_s in result["corrupted"].items()
    }
    return r


def _mean_std(values: List[float]) -> Dict[str, float]:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    mean = math.fsum(values) / len(values)
    # sample standard deviation; NaN (e.g. an rPC with a clean value of 0) propagates
    n = len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def summarize_runs(runs: Mapping[str, Sequence[Dict]]) -> Dict:
    """label -> list of :func:`evaluate_robustness` results (one per model, e.g. seeds) ->
    label -> {"clean"/"mPC"/"rPC": metric -> {mean, std, n}, "per_corruption": corruption ->
    metric -> {mean, std, n}, "metrics": [...]} (std over models, 0 for a single one)."""
    out = OrderedDict()
    for label, results in runs.items():
        if not results:
            raise ValueError(f"no result for {label!r}")
        results = [_int_severities(r) for r in results]
        metrics = [m for m in ROBUSTNESS_METRICS if all(m in r["metrics"] for r in results)]
        entry = {"metrics": metrics, "num_models": len(results)}
        for field in ("clean", "mPC", "rPC"):
            entry[field] = {m: _mean_std([r[field].get(m) for r in results]) for m in metrics}
        names = [c for c in results[0]["per_corruption"]]
        entry["per_corruption"] = OrderedDict(
            (c, {m: _mean_std([r["per_corruption"][c][m] for r in results]) for m in metrics})
            for c in names
            if all(c in r["per_corruption"] for r in results)
        )
        # the mean over corruptions at each severity (0 = clean), for the plot
        severities = sorted({int(s) for r in results for v in r["corrupted"].values() for s in v})
        entry["by_severity"] = {
            m: {
                0: _mean_std([r["clean"][m] for r in results]),
                **{
                    s: _mean_std(
                        [
                            statistics.fmean(v[s][m] for v in r["corrupted"].values())
                            for r in results
                        ]
                    )
                    for s in severities
                },
            }
            for m in metrics
        }
        out[label] = entry
    return out


def check_pairing(counts: Mapping[str, int], baseline: str) -> None:
    """Whether labels with ``counts`` models each can be paired against ``baseline`` (see
    :func:`paired_differences`): it must be a label, there must be another one, and every
    label must have as many models.

    Raises:
        ValueError: naming the labels and their numbers of models.
    """
    if baseline not in counts:
        raise ValueError(f"--paired-against {baseline!r} is not one of the labels {list(counts)}")
    if len(counts) < 2 or len(set(counts.values())) != 1:
        raise ValueError(
            f"paired differences need at least two labels with as many models each as "
            f"{baseline!r}; models per label: {dict(counts)}"
        )


def paired_differences(runs: Mapping[str, Sequence[Dict]], baseline: str) -> Dict:
    """Each label's models minus the ``baseline`` label's, paired by position (the k-th
    checkpoint of one label against the k-th of the other: give them in the same seed
    order), as mean ± std over the pairs: label -> {"clean"/"mPC"/"rPC": metric -> {mean,
    std, n}, "per_corruption": corruption -> metric -> {mean, std, n}}.

    Raises:
        ValueError: ``baseline`` is not a label, or a label has another number of models
            than the baseline (nothing to pair).
    """
    check_pairing({label: len(results) for label, results in runs.items()}, baseline)
    base = runs[baseline]
    out = OrderedDict()
    for label, results in runs.items():
        if label == baseline:
            continue
        metrics = [
            m for m in ROBUSTNESS_METRICS if all(m in r["metrics"] for r in results + base)
        ]

        def diff(get):
            return {
                m: _mean_std(
                    [
                        None if get(a, m) is None or get(b, m) is None else get(a, m) - get(b, m)
                        for a, b in zip(results, base)
                    ]
                )
                for m in metrics
            }

        entry = {"metrics": metrics, "num_pairs": len(base)}
        for field in ("clean", "mPC", "rPC"):
            entry[field] = diff(lambda r, m, f=field: r[f].get(m))
        shared = [
            c
            for c in results[0]["per_corruption"]
            if all(c in r["per_corruption"] for r in results + base)
        ]
        entry["per_corruption"] = OrderedDict(
            (c, diff(lambda r, m, c=c: r["per_corruption"][c][m])) for c in shared
        )
        out[label] = entry
    return out


def _fmt(
    stat: Mapping[str, float], metric: str, relative: bool = False, signed: bool = False
) -> str:
    """``mean ± std`` (the std left out for one model); ``signed``: a difference, with its
    sign and always with its std."""
    if stat["n"] == 0 or math.isnan(stat["mean"]):
        return "-"
    digits = 3 if relative or metric == "d1" else 1
    text = f"{stat['mean']:{'+' if signed else ''}.{digits}f}"
    return text + (f" ± {stat['std']:.{digits}f}" if stat["n"] > 1 or signed else "")


def robustness_markdown(
    summary: Mapping[str, Dict],
    notes: Sequence[str] = (),
    paired: Optional[Mapping[str, Dict]] = None,
    baseline: Optional[str] = None,
) -> str:
    """Markdown tables: clean / mPC / rPC per label and metric, then the per-corruption
    means over severities, then (with ``paired``, :func:`paired_differences` against
    ``baseline``) the paired differences; ``notes`` (e.g. "no depth") are listed below."""
    labels = list(summary)
    metrics = [m for m in ROBUSTNESS_METRICS if any(m in summary[l]["metrics"] for l in labels)]
    names = {"mIoU": "mIoU", "PQ": "PQ", "d1": "δ<1.25"}
    header = ["model"] + [f"{f} {names[m]}" for m in metrics for f in ("clean", "mPC", "rPC")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in labels:
        e = summary[label]
        cells = [f"{label} (n={e['num_models']})"]
        for m in metrics:
            for f in ("clean", "mPC", "rPC"):
                stat = e[f].get(m, {"n": 0, "mean": float("nan")})
                cells.append(_fmt(stat, m, relative=f == "rPC"))
        lines.append("| " + " | ".join(cells) + " |")
    corruptions = []
    for label in labels:
        corruptions += [c for c in summary[label]["per_corruption"] if c not in corruptions]
    if corruptions:
        lines += ["", "Per corruption, mean over severities:", ""]
        header = ["corruption"] + [f"{l} {names[m]}" for l in labels for m in metrics]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for c in corruptions:
            cells = [c]
            for label in labels:
                for m in metrics:
                    stat = summary[label]["per_corruption"].get(c, {}).get(m)
                    cells.append(_fmt(stat, m) if stat else "-")
            lines.append("| " + " | ".join(cells) + " |")
    for label, e in (paired or {}).items():
        lines += [
            "",
            f"Paired by position, {label} − {baseline} ({e['num_pairs']} "
            f"pair{'' if e['num_pairs'] == 1 else 's'}; mean ± std over pairs):",
            "",
        ]
        header = ["condition"] + [names[m] for m in e["metrics"]]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        rows = [(f, e[f], f == "rPC") for f in ("clean", "mPC", "rPC")]
        rows += [(c, v, False) for c, v in e["per_corruption"].items()]
        for name, values, relative in rows:
            cells = [name] + [_fmt(values[m], m, relative, signed=True) for m in e["metrics"]]
            lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"Note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_report(
    runs: Mapping[str, Sequence[Dict]], output_dir: str, paired_against: Optional[str] = None
) -> Dict[str, str]:
    """Write ``robustness.json`` (every model's numbers, the summary and, with
    ``paired_against``, the paired differences), ``robustness.md``
    (:func:`robustness_markdown`) and ``robustness.png`` (:func:`plot_robustness`) into
    ``output_dir``; returns their paths and the markdown under ``"markdown"``."""
    summary = summarize_runs(runs)
    paired = paired_differences(runs, paired_against) if paired_against else None
    notes = []
    for results in runs.values():
        for r in results:
            notes += [n for n in r.get("notes", []) if n not in notes]
    text = robustness_markdown(summary, notes, paired, paired_against)
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "json": os.path.join(output_dir, "robustness.json"),
        "markdown_file": os.path.join(output_dir, "robustness.md"),
        "plot": os.path.join(output_dir, "robustness.png"),
    }
    for key, payload in (
        (
            "json",
            json.dumps(
                {
                    "runs": runs,
                    "summary": summary,
                    **(
                        {"paired": {"against": paired_against, "differences": paired}}
                        if paired
                        else {}
                    ),
                },
                indent=1,
            ),
        ),
        ("markdown_file", text),
    ):
        with open(paths[key] + ".tmp", "w") as f:
            f.write(payload)
        os.replace(paths[key] + ".tmp", paths[key])
    plot_robustness(summary, paths["plot"])
    paths["markdown"] = text
    return paths


def plot_robustness(summary: Mapping[str, Dict], path: str) -> None:
    """One panel per metric: the metric against severity (0 = clean), the mean over
    corruptions, one line per label with a band of ± one standard deviation over models."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(summary)
    metrics = [m for m in ROBUSTNESS_METRICS if any(m in summary[l]["metrics"] for l in labels)]
    fig = Figure(figsize=(4.2 * max(len(metrics), 1), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    titles = {"mIoU": "mIoU", "PQ": "PQ", "d1": "depth δ<1.25"}
    for k, m in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), k + 1)
        for i, label in enumerate(labels):
            series = summary[label]["by_severity"].get(m)
            if not series:
                continue
            xs = sorted(int(s) for s in series)
            mean = [series[s]["mean"] for s in xs]
            std = [series[s]["std"] for s in xs]
            color = colors[i % len(colors)]
            ax.plot(xs, mean, marker="o", color=color, label=label)
            ax.fill_between(
                xs,
                [a - b for a, b in zip(mean, std)],
                [a + b for a, b in zip(mean, std)],
                color=color,
                alpha=0.15,
            )
        ax.set_xlabel("severity (0 = clean; mean over corruptions)")
        ax.set_title(titles[m])
        ax.grid(True, alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
