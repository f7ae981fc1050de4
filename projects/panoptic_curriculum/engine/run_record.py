"""The run record: the config each curriculum stage trains with, kept next to its checkpoints
as ``OUTPUT_DIR/<stage>/config.yaml``, and the comparison that stops a re-run whose config
would train something else than what the folder holds.

What is compared is a stage's config as :func:`~.curriculum.stage_config` derives it, not the
curriculum config: ``CURRICULUM.SEMANTIC_ITER`` shows up as the semantic stage's
``SOLVER.MAX_ITER``, ``CURRICULUM.INSTANCE_LR_FACTOR`` and ``JOINT_LR_FACTOR`` as the
instance and joint stages' ``SOLVER.BASE_LR``.
Every key is training-relevant except the **evaluation-only** ones, which may differ between
runs of one folder because they do not change the weights a stage trains:

* any key whose last part ends in ``_TEST`` (``INPUT.MIN_SIZE_TEST``,
  ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``, ``MODEL.RPN.POST_NMS_TOPK_TEST``, ...);
* ``DATASETS.TEST`` and ``TEST.*``, except ``TEST.PRECISE_BN.*`` (PreciseBN rewrites the
  normalisation statistics of the trained weights);
* inference-only model keys: ``MODEL.POINT_HEAD.INFERENCE_ON``,
  ``MODEL.POINT_HEAD.NO_SURFACE_CLASSES``, the panoptic fusion thresholds
  ``MODEL.PANOPTIC_CURRICULUM.PANOPTIC_*`` and ``MODEL.PANOPTIC_FPN.COMBINE.*``;
* where and on what the run happens: ``OUTPUT_DIR`` (a moved folder is the same run; start
  weights inside it are compared relative to it), ``MODEL.DEVICE``,
  ``MODEL.POINT_HEAD.COMPILE_BACKEND`` (the same network, compiled), ``CUDNN_BENCHMARK``,
  ``DATALOADER.NUM_WORKERS`` (the training stream is a function of ``SEED`` and the
  position only);
* bookkeeping: ``SOLVER.CHECKPOINT_PERIOD``, ``VIS_PERIOD``;
* ``CURRICULUM.*``: a stage config already carries their effect on that stage (its
  iterations and learning rate); ``CURRICULUM.STAGES`` and ``POINT_CLOUD_DUMP_PERIOD`` change
  no stage's weights.
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from detectron2.config import CfgNode

from .checkpoint import atomic_write_text

__all__ = [
    "RECORD",
    "EVALUATION_ONLY_KEYS",
    "ConfigMismatchError",
    "is_evaluation_only",
    "training_items",
    "flat_items",
    "read_record",
    "record_diff",
    "write_record",
    "format_diff",
]

#: file name of a stage's record, in the stage's folder
RECORD = "config.yaml"

#: evaluation-only keys: exact keys, or prefixes when they end with "."
EVALUATION_ONLY_KEYS = (
    "OUTPUT_DIR",
    "MODEL.DEVICE",
    "MODEL.POINT_HEAD.COMPILE_BACKEND",
    "CUDNN_BENCHMARK",
    "DATALOADER.NUM_WORKERS",
    "SOLVER.CHECKPOINT_PERIOD",
    "VIS_PERIOD",
    "DATASETS.TEST",
    "TEST.",
    "MODEL.POINT_HEAD.INFERENCE_ON",
    "MODEL.POINT_HEAD.NO_SURFACE_CLASSES",
    "MODEL.PANOPTIC_CURRICULUM.PANOPTIC_INSTANCES_CONFIDENCE_THRESH",
    "MODEL.PANOPTIC_CURRICULUM.PANOPTIC_OVERLAP_THRESH",
    "MODEL.PANOPTIC_CURRICULUM.PANOPTIC_STUFF_AREA_LIMIT",
    "MODEL.PANOPTIC_FPN.COMBINE.",
    "CURRICULUM.",
)
#: keys under an evaluation-only prefix that do change the weights
_TRAINING_EXCEPTIONS = ("TEST.PRECISE_BN.",)

#: shown for a key one side lacks (e.g. a key added by a newer version of the plugin)
_ABSENT = "<absent>"


class ConfigMismatchError(ValueError):
    """A re-run's config would train something else than what ``OUTPUT_DIR`` records."""


def is_evaluation_only(key: str) -> bool:
    """Whether the dotted config ``key`` may differ between runs of one folder."""
    if any(key.startswith(p) for p in _TRAINING_EXCEPTIONS):
        return False
    if key.rsplit(".", 1)[-1].endswith("_TEST"):
        return True
    return any(key.startswith(k) if k.endswith(".") else key == k for k in EVALUATION_ONLY_KEYS)


def _flatten(d: Dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def flat_items(d: Dict) -> Dict[str, object]:
    """``{dotted key: value}`` of a nested config dict (e.g. ``yaml.safe_load(cfg.dump())``),
    every key, evaluation-only ones included."""
    return dict(_flatten(d))


def training_items(config) -> Dict[str, object]:
    """The training-relevant ``{dotted key: value}`` of a stage config (a ``CfgNode``, or the
    dict of a record), values as YAML writes them (tuples become lists). ``MODEL.WEIGHTS``
    inside the run's folder (the parent of the stage's ``OUTPUT_DIR``) is written relative to
    it, as ``<OUTPUT_DIR>/...``."""
    d = yaml.safe_load(config.dump()) if isinstance(config, CfgNode) else config
    items = dict(_flatten(d))
    out_dir = items.get("OUTPUT_DIR")
    weights = items.get("MODEL.WEIGHTS")
    if isinstance(out_dir, str) and out_dir and isinstance(weights, str) and weights:
        root = os.path.dirname(os.path.normpath(out_dir))
        if os.path.normpath(weights).startswith(os.path.normpath(root) + os.sep):
            items["MODEL.WEIGHTS"] = "<OUTPUT_DIR>/" + os.path.relpath(weights, root)
    return {k: v for k, v in items.items() if not is_evaluation_only(k)}


def read_record(path: str) -> Dict:
    """The config dict of the record ``path``.

    Raises:
        ValueError: naming ``path``, when it is not a YAML config mapping (damaged, or not
            written by this plugin); YAML tags that build Python objects are refused.
    """
    try:
        with open(path) as f:
            d = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(
            f"the run record {path} cannot be read ({type(e).__name__}: {e}); it holds the "
            "config this stage was trained with: restore it, or pick a new OUTPUT_DIR"
        ) from None
    if not isinstance(d, dict) or not isinstance(d.get("MODEL"), dict):
        raise ValueError(
            f"the run record {path} is not a config (a YAML mapping with a MODEL section); it "
            "holds the config this stage was trained with: restore it, or pick a new OUTPUT_DIR"
        )
    return d


def _default_items() -> Dict[str, object]:
    """``{dotted key: value}`` of the plugin's default config, as YAML writes them."""
    from detectron2.config import get_cfg

    from ..config import add_panoptic_curriculum_config

    cfg = get_cfg()
    add_panoptic_curriculum_config(cfg)
    return dict(_flatten(yaml.safe_load(cfg.dump())))


def record_diff(recorded: Dict, current: CfgNode) -> List[Tuple[str, object, object]]:
    """``(key, recorded value, current value)`` for every training-relevant key that differs
    between a record and a stage config, sorted by key.

    A key the record lacks while the current config holds it at the plugin's default is not
    a difference: such a key was added to the plugin after the run was recorded, and every
    key is added with a default that trains as the code did without it."""
    a, b = training_items(recorded), training_items(current)
    defaults = None
    diff = []
    for k in sorted(set(a) | set(b)):
        old, new = a.get(k, _ABSENT), b.get(k, _ABSENT)
        if old == new:
            continue
        if k not in a:
            if defaults is None:
                defaults = _default_items()
            if k in defaults and defaults[k] == new:
                continue
        diff.append((k, old, new))
    return diff


def format_diff(diff: Sequence[Tuple[str, object, object]], indent: str = "    ") -> str:
    return "\n".join(f"{indent}{k}: {old!r} (recorded) -> {new!r} (now)" for k, old, new in diff)


def write_record(path: str, cfg: CfgNode, header: Optional[Sequence[str]] = None) -> None:
    """Write ``cfg`` to ``path`` atomically, after ``header`` lines as YAML comments."""
    lines = "".join(f"# {line}\n" for line in (header or ()))
    atomic_write_text(path, lines + cfg.dump())
