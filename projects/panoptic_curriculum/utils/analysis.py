"""Model analysis: multiply-adds, activations, parameters and structure of a built model, as
detectron2's ``tools/analyze_model.py`` reports them, on the plugin's inputs.

Counts come from fvcore's jit-trace analysis through detectron2's ``TracingAdapter`` (which
``panoptic_curriculum.compat`` makes importable on today's PyTorch). fvcore counts one fused
multiply-add as one "flop"; detectron2's tool prints that number as "GFlops". Here it is
called what it is, GMACs; arithmetic throughput (FLOP/s, as a machine's peak is quoted)
counts two operations per multiply-add (see :mod:`panoptic_curriculum.utils.benchmark`).
"""

import contextlib
import warnings
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fvcore.nn import ActivationCountAnalysis, flop_count_table, parameter_count_table
from torch import nn

from detectron2.export import TracingAdapter
from detectron2.utils.analysis import FlopCountAnalysis

__all__ = [
    "TASKS",
    "analysis_inputs",
    "synthetic_inputs",
    "count_macs",
    "count_activations",
    "count_parameters",
    "analyze_model",
    "format_report",
]

TASKS = ("flop", "activation", "parameter", "structure")


def synthetic_inputs(num_inputs: int, height: int, width: int, seed: int = 0) -> List[Dict]:
    """``num_inputs`` model inputs of random uint8 images ``[3, height, width]`` with
    intrinsics of a 60-degree horizontal field of view, centred (for the depth head's camera
    awareness and the point branch). Deterministic for a seed."""
    from ..engine.predictor import intrinsics_from_fov

    if num_inputs < 1 or height < 1 or width < 1:
        raise ValueError(
            f"need num_inputs >= 1 and a positive size, got {num_inputs}, {height}x{width}"
        )
    g = torch.Generator().manual_seed(seed)
    K = torch.as_tensor(intrinsics_from_fov(height, width), dtype=torch.float32)
    return [
        {
            "image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g),
            "height": height,
            "width": width,
            "intrinsics": K.clone(),
            "file_name": f"synthetic_{i}",
        }
        for i in range(num_inputs)
    ]


def analysis_inputs(
    cfg, num_inputs: int, input_size: Optional[Tuple[int, int]] = None
) -> List[Dict]:
    """Inputs to analyse a model on, one image each.

    Args:
        cfg: the model's config.
        num_inputs: how many.
        input_size: ``(height, width)``: random images of that size (see
            :func:`synthetic_inputs`); None: the first ``num_inputs`` images of
            ``cfg.DATASETS.TEST[0]`` through the plugin's test-time mapper (resized to
            ``INPUT.MIN_SIZE_TEST``, as in evaluation).

    Raises:
        RuntimeError: naming the dataset and the ``input_size`` alternative when the test
            set cannot be loaded (not registered, or its files are not on this machine).
    """
    if input_size is not None:
        return synthetic_inputs(num_inputs, int(input_size[0]), int(input_size[1]))
    from detectron2.data import DatasetCatalog

    from ..data.dataset_mapper import RGBDDatasetMapper

    if not cfg.DATASETS.TEST:
        raise RuntimeError("cfg.DATASETS.TEST is empty: give an input size to analyse on")
    name = cfg.DATASETS.TEST[0]
    try:
        dicts = DatasetCatalog.get(name)
    except Exception as e:  # unregistered, or files missing: say what to do instead
        raise RuntimeError(
            f"cannot load the test set {name!r} for analysis inputs ({type(e).__name__}: {e}); "
            "analyse on random images of a given size instead (tools/analyze_model.py "
            "--input-size H W)"
        ) from e
    if not dicts:
        raise RuntimeError(f"the test set {name!r} is empty")
    mapper = RGBDDatasetMapper(cfg, False)
    return [mapper(d) for d in dicts[:num_inputs]]


@contextlib.contextmanager
def _quiet_trace():
    """Silence the tracer's warnings: data-dependent Python control flow is expected in
    detection models and does not change the counts of the traced run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.*deprecated")
        yield


def _module_totals(by_module: Dict[str, int], depth: int = 1) -> Dict[str, float]:
    """Per-module totals at ``depth`` levels below the model, without the adapter's
    ``model.`` prefix."""
    out = {}
    for name, value in by_module.items():
        if not name.startswith("model.") or name.count(".") != depth:
            continue
        out[name[len("model.") :]] = value
    return out


def count_macs(model: nn.Module, inputs: Sequence[Dict]) -> Dict:
    """Multiply-adds of ``model`` on each input (batch 1), in evaluation mode unless the
    model is training (then the training forward is counted; run it under an
    ``EventStorage``).

    Returns:
        dict: ``gmacs`` list (one per input), ``gmacs_mean``, ``gmacs_std``,
        ``by_operator`` (GMACs averaged over inputs), ``by_module`` (GMACs of the model's
        top-level modules, averaged), ``unsupported`` (operator -> count, not counted:
        element-wise and indexing operations mostly), ``table`` (fvcore's table for the
        first input).
    """
    totals, by_op, by_mod, unsupported = [], Counter(), Counter(), Counter()
    table = ""
    with _quiet_trace():
        for i, x in enumerate(inputs):
            analysis = FlopCountAnalysis(model, [x])
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            totals.append(analysis.total() / 1e9)
            by_op.update({k: v / 1e9 for k, v in analysis.by_operator().items()})
            by_mod.update({k: v / 1e9 for k, v in _module_totals(analysis.by_module()).items()})
            unsupported.update(analysis.unsupported_ops())
            if i == 0:
                table = flop_count_table(analysis, max_depth=4)
    n = len(totals)
    return {
        "gmacs": totals,
        "gmacs_mean": float(np.mean(totals)),
        "gmacs_std": float(np.std(totals)),
        "by_operator": {k: v / n for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
        "by_module": {k: v / n for k, v in sorted(by_mod.items(), key=lambda kv: -kv[1])},
        "unsupported": dict(unsupported),
        "table": table,
    }


def count_activations(model: nn.Module, inputs: Sequence[Dict]) -> Dict:
    """Output elements of the convolutions and matrix products (fvcore's activation count),
    in millions, per input and by operator (averaged); all input keys are kept (detectron2's
    ``activation_count_operators`` keeps only ``image``, which the point branch cannot run
    on)."""
    totals, by_op = [], Counter()
    was_training = model.training
    model.eval()
    try:
        with _quiet_trace():
            for x in inputs:
                adapter = TracingAdapter(model, [x], allow_non_tensor=True)
                analysis = ActivationCountAnalysis(adapter, adapter.flattened_inputs)
                analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
                totals.append(analysis.total() / 1e6)
                by_op.update({k: v / 1e6 for k, v in analysis.by_operator().items()})
    finally:
        model.train(was_training)
    n = len(totals)
    return {
        "mactivations": totals,
        "mactivations_mean": float(np.mean(totals)),
        "mactivations_std": float(np.std(totals)),
        "by_operator": {k: v / n for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
    }


def count_parameters(model: nn.Module) -> Dict:
    """Parameter counts: ``total`` and ``trainable`` (numbers), ``by_module`` (millions, the
    model's top-level modules) and fvcore's ``table`` (5 levels deep)."""
    by_module = Counter()
    for name, p in model.named_parameters():
        by_module[name.split(".")[0]] += p.numel() / 1e6
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "by_module": dict(by_module.most_common()),
        "table": parameter_count_table(model, max_depth=5),
    }


def analyze_model(model: nn.Module, inputs: Sequence[Dict], tasks: Sequence[str]) -> Dict:
    """Run the analysis ``tasks`` (any of :data:`TASKS`) on ``model`` in evaluation mode.

    Returns:
        dict task -> result (see :func:`count_macs`, :func:`count_activations`,
        :func:`count_parameters`; ``structure`` is the model's ``str``), plus
        ``num_inputs`` and ``input_sizes`` (``[H, W]`` of each input image).
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown analysis task(s) {unknown}; choose from {list(TASKS)}")
    if not inputs and any(t in ("flop", "activation") for t in tasks):
        raise ValueError("flop and activation counts need at least one input")
    was_training = model.training
    model.eval()
    try:
        report: Dict = {
            "num_inputs": len(inputs),
            "input_sizes": [list(x["image"].shape[-2:]) for x in inputs],
        }
        for task in tasks:
            if task == "flop":
                report["flop"] = count_macs(model, inputs)
            elif task == "activation":
                report["activation"] = count_activations(model, inputs)
            elif task == "parameter":
                report["parameter"] = count_parameters(model)
            else:
                report["structure"] = str(model)
    finally:
        model.train(was_training)
    return report


def format_report(report: Dict) -> str:
    """The human-readable text of an :func:`analyze_model` report."""
    lines = [f"inputs: {report['num_inputs']} image(s), sizes {report['input_sizes']}"]
    if "flop" in report:
        f = report["flop"]
        lines += [
            "Multiply-adds table of the first input (fvcore; its 'flops' are multiply-adds):",
            f["table"],
            "GMACs by operator (averaged over inputs): "
            + ", ".join(f"{k}: {v:.3f}" for k, v in f["by_operator"].items()),
            "GMACs by top-level module: "
            + ", ".join(f"{k}: {v:.3f}" for k, v in f["by_module"].items()),
            f"Total GMACs per image: {f['gmacs_mean']:.3f} ± {f['gmacs_std']:.3f} "
            "(detectron2's analyze_model calls this 'GFlops')",
        ]
        if f["unsupported"]:
            lines.append(
                "Not counted (no multiply-add handle): "
                + ", ".join(f"{k} x{v}" for k, v in sorted(f["unsupported"].items()))
            )
    if "activation" in report:
        a = report["activation"]
        lines += [
            "Million activations by operator: "
            + ", ".join(f"{k}: {v:.3f}" for k, v in a["by_operator"].items()),
            f"Total million activations per image: {a['mactivations_mean']:.3f} ± "
            f"{a['mactivations_std']:.3f}",
        ]
    if "parameter" in report:
        p = report["parameter"]
        lines += [
            "Parameter count:",
            p["table"],
            f"Total parameters: {p['total']} ({p['trainable']} trainable)",
        ]
    if "structure" in report:
        lines += ["Model structure:", report["structure"]]
    return "\n".join(lines)
