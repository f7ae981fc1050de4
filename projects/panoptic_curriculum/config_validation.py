"""Value checks of the config keys the plugin reads.

``validate_config(cfg)`` runs when a config is loaded (``load_config``) and again when a
model or trainer is built from a config assembled by hand, so that a bad value stops the
run before any work, with one line per bad key::

    MODEL.POINT_HEAD.NUM_POINTS = -5: allowed an integer >= 1 (points sampled per image)

yacs already rejects unknown keys and values of the wrong type when merging a file or a
``KEY VALUE`` list; these checks cover ranges, names and the consistency between keys.
Every key is checked whether or not its branch is switched on (a typo stays a typo); only
requirements between branches (the point branch needs the semantic and depth heads)
depend on the switches.
"""

import math
import numbers
from typing import Callable, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode

__all__ = ["validate_config", "parse_lr_multipliers"]

#: DeepLab's semantic losses (detectron2.projects.deeplab)
_SEM_SEG_LOSS_TYPES = ("cross_entropy", "hard_pixel_mining")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _fmt(v) -> str:
    if isinstance(v, tuple):
        v = list(v)
    return repr(v)


# SOLVER.OPTIMIZER values (engine/optimizer.py)
OPTIMIZERS = ("SGD", "ADAMW")


def parse_lr_multipliers(entries: Sequence) -> List[Tuple[str, float]]:
    """``SOLVER.LR_MULTIPLIERS`` as ``[(prefix, multiplier), ...]``.

    Raises:
        ValueError: an entry that is not a ``[str, number > 0]`` pair, or a prefix given twice.
    """
    out: List[Tuple[str, float]] = []
    for e in entries:
        ok = (
            isinstance(e, (list, tuple))
            and len(e) == 2
            and isinstance(e[0], str)
            and e[0] != ""
            and isinstance(e[1], (int, float))
            and not isinstance(e[1], bool)
            and math.isfinite(e[1])
            and e[1] > 0
        )
        if not ok:
            raise ValueError(
                f"SOLVER.LR_MULTIPLIERS entry {e!r}: allowed [module_prefix, multiplier] with a "
                "non-empty module name and a finite multiplier > 0"
            )
        out.append((e[0], float(e[1])))
    names = [p for p, _ in out]
    dup = sorted({p for p in names if names.count(p) > 1})
    if dup:
        raise ValueError(f"SOLVER.LR_MULTIPLIERS names {dup} more than once")
    return out


class _Checker:
    """Collects ``KEY = value: allowed ...`` lines."""

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg
        self.errors: List[str] = []

    def get(self, key: str):
        node = self.cfg
        for part in key.split("."):
            node = node[part]
        return node

    def fail(self, key: str, allowed: str, shown: Optional[str] = None) -> None:
        """Record ``key`` (its value shown as ``shown``, default its repr) as bad."""
        shown = _fmt(self.get(key)) if shown is None else shown
        self.errors.append(f"{key} = {shown}: allowed {allowed}")

    def check(self, key: str, ok: Callable[[object], bool], allowed: str) -> bool:
        value = self.get(key)
        try:
            good = bool(ok(value))
        except TypeError:  # e.g. comparing a string with a number
            good = False
        if not good:
            self.fail(key, allowed, _fmt(value))
        return good

    # ------------------------------------------------------------------ kinds of values
    def int_at_least(self, key: str, low: int, what: str) -> bool:
        return self.check(key, lambda v: _is_int(v) and v >= low, f"an integer >= {low} ({what})")

    def number(self, key: str, low: float, what: str, *, strict=False, high=None) -> bool:
        """A finite number ``>= low`` (``> low`` when ``strict``), ``<= high`` when given."""
        rng = f"{'>' if strict else '>='} {low}" if high is None else f"in [{low}, {high}]"

        def ok(v):
            if not (_is_number(v) and math.isfinite(v)):
                return False
            if v < low or (strict and v == low):
                return False
            return high is None or v <= high

        return self.check(key, ok, f"a finite number {rng} ({what})")

    def one_of(self, key: str, options: Sequence[str], what: str) -> bool:
        names = ", ".join(repr(o) for o in options)
        return self.check(key, lambda v: v in options, f"one of {names} ({what})")

    def boolean(self, key: str) -> bool:
        return self.check(key, lambda v: isinstance(v, bool), "True or False")

    def int_list(self, key: str, low: int, what: str) -> bool:
        def ok(v):
            return (
                isinstance(v, (list, tuple))
                and len(v) > 0
                and all(_is_int(x) and x >= low for x in v)
            )

        return self.check(key, ok, f"a non-empty list of integers >= {low} ({what})")

    def number_list(self, key: str, low: float, what: str) -> bool:
        def ok(v):
            return (
                isinstance(v, (list, tuple))
                and len(v) > 0
                and all(_is_number(x) and math.isfinite(x) and x >= low for x in v)
            )

        return self.check(key, ok, f"a non-empty list of finite numbers >= {low} ({what})")


def _check_input(c: _Checker) -> None:
    c.boolean("INPUT.DEPTH.ENABLED")
    if c.number("INPUT.DEPTH.MIN_DEPTH", 0.0, "metres; shallower depths become invalid"):
        low = c.get("INPUT.DEPTH.MIN_DEPTH")
        c.check(
            "INPUT.DEPTH.MAX_DEPTH",
            lambda v: _is_number(v) and not math.isnan(v) and v > low,
            f"a number > INPUT.DEPTH.MIN_DEPTH = {low} (metres; deeper depths become invalid)",
        )
    c.one_of("INPUT.DEPTH.MISSING", ("error", "skip"), "samples without depth or intrinsics")


def _check_branches(c: _Checker) -> None:
    pc = "MODEL.PANOPTIC_CURRICULUM."
    flags = [pc + k for k in ("SEM_SEG_ON", "INSTANCE_ON", "DEPTH_ON")]
    if all([c.boolean(k) for k in flags]) and not any(c.get(k) for k in flags):
        c.fail(
            pc + "SEM_SEG_ON/INSTANCE_ON/DEPTH_ON",
            "at least one branch switched on",
            shown="False/False/False",
        )
    c.number(pc + "SEM_SEG_LOSS_WEIGHT", 0.0, "weight of loss_sem_seg")
    c.number(pc + "INSTANCE_LOSS_WEIGHT", 0.0, "weight of the Mask R-CNN losses")
    c.number(pc + "PANOPTIC_INSTANCES_CONFIDENCE_THRESH", 0.0, "instance score", high=1.0)
    c.number(pc + "PANOPTIC_OVERLAP_THRESH", 0.0, "fraction of an instance's area", high=1.0)
    c.int_at_least(pc + "PANOPTIC_STUFF_AREA_LIMIT", 0, "pixels")
    c.check(
        "MODEL.FREEZE.PREFIXES",
        lambda v: isinstance(v, (list, tuple)) and all(isinstance(p, str) and p for p in v),
        "a list of non-empty parameter-name prefixes, e.g. ['backbone']",
    )

    sem = "MODEL.SEM_SEG_HEAD."
    if c.int_at_least(sem + "NUM_CLASSES", 1, "semantic classes"):
        n = c.get(sem + "NUM_CLASSES")
        c.check(
            sem + "IGNORE_VALUE",
            lambda v: _is_int(v) and not 0 <= v < n,
            f"an integer outside the class ids [0, {n}) (MODEL.SEM_SEG_HEAD.NUM_CLASSES = {n}), "
            "e.g. 255",
        )
    if "LOSS_TYPE" in c.get("MODEL.SEM_SEG_HEAD"):
        c.one_of(sem + "LOSS_TYPE", _SEM_SEG_LOSS_TYPES, "DeepLab semantic loss")
    if c.get(pc + "INSTANCE_ON") is True:
        c.int_at_least("MODEL.ROI_HEADS.NUM_CLASSES", 1, "thing classes of Mask R-CNN")


def _check_depth_head(c: _Checker) -> None:
    from .geometry import MIN_FOCAL_PX
    from .modeling.depth_head import _LOSS_TYPES, _OUTPUTS

    dh = "MODEL.DEPTH_HEAD."
    c.check(
        dh + "IN_FEATURES",
        lambda v: isinstance(v, (list, tuple))
        and len(v) > 0
        and all(isinstance(f, str) for f in v),
        "a non-empty list of backbone feature names, e.g. ['p2', 'p3', 'p4', 'p5']",
    )
    c.int_at_least(dh + "CONVS_DIM", 1, "channels")
    if c.number(dh + "MIN_DEPTH", 0.0, "metres", strict=True):
        low = c.get(dh + "MIN_DEPTH")
        c.check(
            dh + "MAX_DEPTH",
            lambda v: _is_number(v) and math.isfinite(v) and v > low,
            f"a finite number > MODEL.DEPTH_HEAD.MIN_DEPTH = {low} (metres)",
        )
    c.one_of(dh + "LOSS_TYPE", _LOSS_TYPES, "depth loss")
    c.one_of(dh + "OUTPUT", _OUTPUTS, "depth output mapping")
    c.number(dh + "SILOG_LAMBDA", 0.0, "variance weight of the silog loss", high=1.0)
    c.number(dh + "LOSS_WEIGHT", 0.0, "weight of loss_depth")
    c.check(
        dh + "CANONICAL_FOCAL",
        lambda v: _is_number(v) and math.isfinite(v) and (v == 0 or v >= MIN_FOCAL_PX),
        f"0 (no focal scaling) or a focal length >= {MIN_FOCAL_PX} pixel",
    )
    c.boolean(dh + "CAMERA_COORDS")


def _check_point_head(c: _Checker) -> None:
    from .modeling.meta_arch import CONSISTENCY_DIRECTIONS, POINT_LIFT, POINT_SAMPLING
    from .modeling.point_head.losses import CONSISTENCY_KINDS
    from .modeling.point_head.pointnet2 import _NORMS

    ph = "MODEL.POINT_HEAD."
    pc = "MODEL.PANOPTIC_CURRICULUM."
    if c.boolean(ph + "ENABLED") and c.get(ph + "ENABLED"):
        off = [k for k in ("SEM_SEG_ON", "DEPTH_ON") if c.get(pc + k) is not True]
        if off:
            c.fail(
                ph + "ENABLED",
                f"only with {' and '.join(pc + k for k in off)} True (MODEL.POINT_HEAD needs "
                "the semantic head and the depth head: it lifts the predicted depth and "
                "compares with the semantic head)",
            )
    c.int_at_least(ph + "NUM_POINTS", 1, "points sampled per image")
    levels = {
        "SA_NUM_CENTROIDS": c.int_list(ph + "SA_NUM_CENTROIDS", 1, "centroids per level"),
        "SA_NUM_NEIGHBORS": c.int_list(ph + "SA_NUM_NEIGHBORS", 1, "neighbours per level"),
        "SA_RADII": c.number_list(ph + "SA_RADII", 0.0, "metres per level; 0 means kNN"),
        "SA_CHANNELS": c.int_list(ph + "SA_CHANNELS", 1, "channels per level"),
        "FP_CHANNELS": c.int_list(ph + "FP_CHANNELS", 1, "channels per level"),
    }
    if levels["SA_NUM_CENTROIDS"]:  # its length is the number of levels
        L = len(c.get(ph + "SA_NUM_CENTROIDS"))
        for key, ok in levels.items():
            if ok and len(c.get(ph + key)) != L:
                c.fail(
                    ph + key,
                    f"a list of {L} entries, one per set-abstraction level "
                    f"(MODEL.POINT_HEAD.SA_NUM_CENTROIDS has {L})",
                )
    c.int_at_least(ph + "MLP_LAYERS", 1, "layers per shared MLP")
    c.one_of(ph + "NORM", _NORMS, "normalisation of the point network")
    c.one_of(ph + "CONSISTENCY_LOSS", CONSISTENCY_KINDS, "2D-3D consistency loss")
    c.number(ph + "LOSS_WEIGHT", 0.0, "weight of loss_sem_seg_3d")
    c.number(ph + "CONSISTENCY_WEIGHT", 0.0, "weight of loss_consistency")
    c.one_of(ph + "CONSISTENCY_DIRECTION", CONSISTENCY_DIRECTIONS, "side L_consist trains")
    c.one_of(ph + "SAMPLING", POINT_SAMPLING, "pixels the point branch samples in training")
    c.one_of(ph + "LIFT", POINT_LIFT, "what the point branch lifts")
    c.boolean(ph + "DETACH_DEPTH")
    c.check(
        ph + "CONSISTENCY_DEPTH_GATE",
        lambda v: _is_number(v) and math.isfinite(v) and (v == 0 or v > 1),
        "0 (off) or a finite factor > 1 (L_consist only where the predicted depth is within "
        "that factor of the ground truth)",
    )
    import torch._dynamo

    backends = [""] + sorted(torch._dynamo.list_backends(exclude_tags=()))
    c.one_of(ph + "COMPILE_BACKEND", backends, "'' off, else the torch.compile backend")
    c.boolean(ph + "USE_IMAGE_FEATURES")
    c.boolean(ph + "INFERENCE_ON")
    n = c.get("MODEL.SEM_SEG_HEAD.NUM_CLASSES")
    n = n if _is_int(n) and n >= 1 else None  # a bad NUM_CLASSES is reported on its own
    c.check(
        ph + "NO_SURFACE_CLASSES",
        lambda v: isinstance(v, (list, tuple))
        and all(_is_int(x) and 0 <= x < (n or math.inf) for x in v),
        f"a list of semantic class ids in [0, {n}) (MODEL.SEM_SEG_HEAD.NUM_CLASSES = {n})",
    )


def _check_curriculum(c: _Checker) -> None:
    from .engine.curriculum import STAGES

    names = ", ".join(repr(s) for s in STAGES)
    c.check(
        "CURRICULUM.STAGES",
        lambda v: isinstance(v, (list, tuple))
        and len(v) > 0
        and all(s in STAGES for s in v)
        and len(set(v)) == len(v)
        # the joint stage fine-tunes the merged model, or (alone) trains from MODEL.WEIGHTS:
        # after the semantic / instance stages it needs the merge between them
        and not ("joint" in v and "merge" not in v and ({"semantic", "instance"} & set(v))),
        f"a non-empty list of distinct stages from {names}; 'joint' after 'semantic' or "
        "'instance' needs 'merge' (['joint'] alone trains the whole model jointly from "
        "MODEL.WEIGHTS)",
    )
    c.check(
        "CURRICULUM.EVAL_STAGES",
        lambda v: isinstance(v, (list, tuple)) and all(s in STAGES for s in v),
        f"a list of stages from {names} (those evaluated when they finish; may be empty)",
    )
    for key in ("SEMANTIC_ITER", "INSTANCE_ITER", "JOINT_ITER"):
        c.int_at_least("CURRICULUM." + key, 1, "solver iterations of the stage")
    c.number("CURRICULUM.INSTANCE_LR_FACTOR", 0.0, "factor of SOLVER.BASE_LR", strict=True)
    c.number("CURRICULUM.JOINT_LR_FACTOR", 0.0, "factor of SOLVER.BASE_LR", strict=True)
    c.number(
        "CURRICULUM.JOINT_INSTANCE_LR_MULTIPLIER",
        0.0,
        "x the joint stage's learning rate, for the instance decoder",
        strict=True,
    )
    c.int_at_least("CURRICULUM.POINT_CLOUD_DUMP_PERIOD", 0, "iterations; 0 never")


def _check_solver(c: _Checker, training: bool) -> None:
    c.int_at_least("SOLVER.IMS_PER_BATCH", 1, "images per batch, all processes together")
    c.number("SOLVER.BASE_LR", 0.0, "learning rate", strict=True)
    c.int_at_least("SOLVER.CHECKPOINT_PERIOD", 1, "iterations")
    c.int_at_least("SOLVER.WARMUP_ITERS", 0, "iterations")
    # the curriculum sets MAX_ITER per stage (0 for the merge stage, which does not train)
    c.int_at_least("SOLVER.MAX_ITER", 1 if training else 0, "solver iterations")
    c.check(
        "SOLVER.OPTIMIZER",
        lambda v: v in OPTIMIZERS,
        f"one of {list(OPTIMIZERS)}",
    )
    c.check(
        "SOLVER.ADAMW_BETAS",
        lambda v: isinstance(v, (list, tuple))
        and len(v) == 2
        and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in v
        ),
        "two numbers in [0, 1), e.g. (0.9, 0.999)",
    )
    try:
        parse_lr_multipliers(c.get("SOLVER.LR_MULTIPLIERS"))
    except (TypeError, ValueError):
        c.fail(
            "SOLVER.LR_MULTIPLIERS",
            "a list of distinct [module_prefix, multiplier] pairs, multiplier a finite "
            "number > 0 (e.g. [['roi_heads', 5.0]])",
        )


def validate_config(cfg: CfgNode, source: Optional[str] = None, *, training: bool = False):
    """Check the values of the keys the plugin reads.

    Args:
        cfg: a config with the plugin's keys (``add_panoptic_curriculum_config``).
        source: the config file, named in the message.
        training: also require what a training run needs (``SOLVER.MAX_ITER >= 1``).

    Raises:
        KeyError: ``cfg`` lacks the plugin's keys.
        ValueError: one line per bad key, ``KEY = value: allowed ...``.
    """
    if "CURRICULUM" not in cfg or "POINT_HEAD" not in cfg.MODEL:
        raise KeyError(
            "the config lacks the panoptic_curriculum keys; build it with "
            "panoptic_curriculum.load_config or add_panoptic_curriculum_config(cfg)"
        )
    c = _Checker(cfg)
    _check_input(c)
    _check_branches(c)
    _check_depth_head(c)
    _check_point_head(c)
    _check_curriculum(c)
    _check_solver(c, training)
    if c.errors:
        where = f" (config file {source} and its command-line options)" if source else ""
        raise ValueError(
            f"{len(c.errors)} invalid config value{'s' if len(c.errors) > 1 else ''}{where}:\n  "
            + "\n  ".join(c.errors)
        )
