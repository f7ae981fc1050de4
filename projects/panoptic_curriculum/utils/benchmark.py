"""Speed, memory and arithmetic throughput of the multi-task model (``tools/benchmark.py``).

* :func:`run_variant`: median step time, peak memory, parameters and multiply-adds per
  image of one model variant (:data:`VARIANTS`), in inference or training mode; meant to run
  in a fresh process per variant so that memory peaks do not mix.
* :func:`compare_with_panoptic_fpn`: our one pass against detectron2's stock
  ``PanopticFPN`` built on the same encoder config with the same detection budget
  (:func:`panoptic_fpn_peer_config`), timed interleaved in one process.
* :func:`compare_point_branch`, :func:`compare_training_options`: two training steps
  (the point branch on / off; a config against the same config with other settings) timed
  interleaved in one process, the models sharing every weight they have in common.
* :func:`matmul_gflops`: the arithmetic rate a large matrix product reaches on the device,
  the practical ceiling that achieved GFLOP/s are read against.

Conventions: one multiply-add is one MAC and two FLOPs (fvcore's "flops", which detectron2
reports, are MACs). A training step is counted as three forward passes (the backward pass
costs about twice the forward), from the traced training forward.
"""

import copy
import resource
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from detectron2.config import CfgNode

__all__ = [
    "VARIANTS",
    "benchmark_device",
    "variant_config",
    "benchmark_batch",
    "time_interleaved",
    "run_variant",
    "matmul_gflops",
    "panoptic_fpn_peer_config",
    "share_weights",
    "compare_with_panoptic_fpn",
    "compare_point_branch",
    "compare_training_options",
]

_OFF = {  # config overrides that switch a branch off
    "sem": ["MODEL.PANOPTIC_CURRICULUM.SEM_SEG_ON", False],
    "inst": ["MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON", False],
    "depth": ["MODEL.PANOPTIC_CURRICULUM.DEPTH_ON", False],
    "point": ["MODEL.POINT_HEAD.ENABLED", False],
}

VARIANTS = {
    # name: (config overrides, mode)
    "one_pass": (["MODEL.POINT_HEAD.INFERENCE_ON", False], "inference"),
    "semantic_only": (_OFF["inst"] + _OFF["depth"] + _OFF["point"], "inference"),
    "instance_only": (_OFF["sem"] + _OFF["depth"] + _OFF["point"], "inference"),
    "depth_only": (_OFF["sem"] + _OFF["inst"] + _OFF["point"], "inference"),
    "train_point_on": (["MODEL.POINT_HEAD.ENABLED", True], "train"),
    "train_point_off": (_OFF["point"], "train"),
}


def benchmark_device(cpu: bool = False) -> str:
    """``"cuda"`` where a GPU is available and ``cpu`` is False, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() and not cpu else "cpu"


def variant_config(
    config_file: str, name: str, *, num_points: int, device: str, opts: Sequence = ()
) -> CfgNode:
    """The config of variant ``name`` of :data:`VARIANTS` (overrides ``opts`` last)."""
    from .. import load_config

    if name not in VARIANTS:
        raise KeyError(f"unknown benchmark variant {name!r}; choose from {sorted(VARIANTS)}")
    overrides, _ = VARIANTS[name]
    return load_config(
        config_file,
        list(overrides)
        + ["MODEL.DEVICE", device, "MODEL.POINT_HEAD.NUM_POINTS", num_points]
        + list(opts),
    )


def benchmark_batch(cfg: CfgNode, batch_size: int, height: int, width: int, train: bool):
    """``batch_size`` real samples of ``cfg.DATASETS.TRAIN[0]`` through the plugin's mapper,
    resized to ``height x width`` (ground truth kept for training, dropped for inference)."""
    import detectron2.data.transforms as T
    from detectron2.data import DatasetCatalog

    from ..data.dataset_mapper import RGBDDatasetMapper

    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:batch_size]
    if len(dicts) < batch_size:
        raise ValueError(f"{cfg.DATASETS.TRAIN[0]} has fewer than {batch_size} samples")
    mapper = RGBDDatasetMapper(True, augmentations=[T.Resize((height, width))])
    batch = [mapper(copy.deepcopy(d)) for d in dicts]
    if not train:
        for x in batch:
            x.pop("instances", None)
    return batch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    steps: Dict[str, Callable[[], None]],
    warmup: int,
    iters: int,
    device: str = "cpu",
    cpu_times: Optional[Dict[str, List[float]]] = None,
) -> Dict[str, List[float]]:
    """Wall-clock seconds of each step function, run round-robin (``a, b, a, b, ...``) so
    that load changes on a shared machine hit every step alike; ``warmup`` rounds first.
    With ``cpu_times``, also fills it with each step's CPU seconds of this process (less
    sensitive to other processes on the machine)."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
            _sync(device)
    times = {name: [] for name in steps}
    if cpu_times is not None:
        cpu_times.update({name: [] for name in steps})
    for _ in range(iters):
        for name, fn in steps.items():
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            if cpu_times is not None:
                cpu_times[name].append(time.process_time() - c0)
    return times


def _time_models(steps, context, warmup: int, iters: int, device: str):
    """:func:`time_interleaved` of ``steps`` inside ``context`` (``torch.no_grad()`` for
    inference, an ``EventStorage`` for training); returns ``(times, cpu_times)``."""
    cpu_times: Dict[str, List[float]] = {}
    with context:
        times = time_interleaved(
            steps, warmup=warmup, iters=iters, device=device, cpu_times=cpu_times
        )
    return times, cpu_times


def _setting(device: str, config_file: str, **sizes) -> Dict:
    """The setting recorded with an interleaved comparison."""
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        **sizes,
        "config_file": config_file,
    }


def matmul_gflops(device: str = "cpu", size: Optional[int] = None, iters: int = 5) -> float:
    """GFLOP/s (``2 size^3`` FLOPs per product) of the fastest of ``iters`` square matrix
    products on ``device`` (float32 on the CPU, bf16 on CUDA as the benchmark runs there;
    ``size`` 2048 and 8192 by default): the rate dense arithmetic reaches there, the
    practical ceiling for convolutions. The fastest run, not the median: a ceiling is what
    the machine can do, and a shared machine only ever slows a run down."""
    cuda = device.startswith("cuda")
    size = size or (8192 if cuda else 2048)
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = time_interleaved({"mm": lambda: torch.mm(a, b)}, warmup=1, iters=iters, device=device)
    return 2 * size**3 / min(times["mm"]) / 1e9


def _macs_per_image(model, sample: Dict, train: bool) -> float:
    """GMACs of one image: the traced forward, times 3 for a training step."""
    from detectron2.utils.events import EventStorage

    from .analysis import count_macs

    if train:
        with EventStorage():
            return 3 * count_macs(model, [sample])["gmacs_mean"]
    return count_macs(model, [sample])["gmacs_mean"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def run_variant(
    config_file: str,
    name: str,
    *,
    height: int,
    width: int,
    batch_size: int,
    num_points: int,
    warmup: int,
    iters: int,
    cpu: bool = False,
    opts: Sequence = (),
) -> Dict:
    """Measure variant ``name`` in this process.

    Returns:
        dict with ``median_s``/``mean_s`` (per step of ``batch_size`` images), ``peak_mem_mb``
        (CUDA peak allocation during the timed steps; on the CPU the peak resident memory
        above the level before the model was built), ``params_m``, ``gmacs_per_image``,
        ``gflops_per_image`` (2 per MAC) and ``achieved_gflops_per_s``.
    """
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    _, mode = VARIANTS[name]
    train = mode == "train"
    device = benchmark_device(cpu)
    cfg = variant_config(config_file, name, num_points=num_points, device=device, opts=opts)
    rss_before_model = _current_rss_mb()
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = benchmark_batch(cfg, batch_size, height, width, train)
    model.train(train)
    if train:
        optim = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9
        )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else None

    def step():
        if autocast is not None:
            with autocast:
                out = model(batch)
        else:
            out = model(batch)
        if train:
            loss = sum(out.values())
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()

    ctx = EventStorage() if train else torch.no_grad()
    with ctx:
        for _ in range(warmup):
            step()
        _sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = time_interleaved({name: step}, warmup=0, iters=iters, device=device)[name]
    peak = (
        (torch.cuda.max_memory_allocated() - base) / 2**20
        if device == "cuda"
        else _peak_rss_mb() - rss_before_model
    )
    gmacs = _macs_per_image(model, batch[0], train)
    median = statistics.median(times)
    return {
        "variant": name,
        "mode": mode,
        "device": device,
        "median_s": median,
        "mean_s": sum(times) / len(times),
        "peak_mem_mb": peak,
        "peak_mem_kind": "cuda_alloc" if device == "cuda" else "rss_above_pre_model",
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gmacs_per_image": gmacs,
        "gflops_per_image": 2 * gmacs,
        "achieved_gflops_per_s": 2 * gmacs * batch_size / median,
    }


def panoptic_fpn_peer_config(cfg: CfgNode) -> CfgNode:
    """detectron2's ``PanopticFPN`` on the same encoder config with the same detection
    budget (RPN and ROI settings, ``TEST.DETECTIONS_PER_IMAGE``, panoptic fusion
    thresholds): what a user would pick instead of this model.

    Its semantic head is ``SemSegFPNHead`` on the features the ROI heads read, with this
    config's ``CONVS_DIM`` and ``NORM``, predicting the stuff classes plus one class for all
    things (PanopticFPN's convention).
    """
    from ..modeling.meta_arch import thing_to_semantic_ids

    peer = cfg.clone()
    peer.defrost()
    m = peer.MODEL
    datasets = cfg.DATASETS.TRAIN or cfg.DATASETS.TEST
    thing_sem = thing_to_semantic_ids(datasets[0] if datasets else None, m.ROI_HEADS.NUM_CLASSES)
    m.META_ARCHITECTURE = "PanopticFPN"
    m.MASK_ON = True
    m.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    m.SEM_SEG_HEAD.IN_FEATURES = list(m.ROI_HEADS.IN_FEATURES)
    m.SEM_SEG_HEAD.NUM_CLASSES = m.SEM_SEG_HEAD.NUM_CLASSES - len(set(thing_sem)) + 1
    pc = cfg.MODEL.PANOPTIC_CURRICULUM
    m.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH = pc.PANOPTIC_OVERLAP_THRESH
    m.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = pc.PANOPTIC_STUFF_AREA_LIMIT
    m.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = pc.PANOPTIC_INSTANCES_CONFIDENCE_THRESH
    peer.freeze()
    return peer


def share_weights(ours: torch.nn.Module, peer: torch.nn.Module) -> int:
    """Copy our encoder's, RPN's and ROI heads' weights into ``peer`` (detectron2 names them
    alike: ``backbone.``, ``proposal_generator.``, ``roi_heads.``). Returns the number of
    tensors copied."""
    prefixes = ("backbone.", "proposal_generator.", "roi_heads.")
    state = {k: v for k, v in ours.state_dict().items() if k.startswith(prefixes)}
    target = peer.state_dict()
    mismatched = [k for k, v in state.items() if k not in target or target[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"the peer model has no matching tensors for {mismatched[:5]}")
    peer.load_state_dict(state, strict=False)
    return len(state)


def compare_with_panoptic_fpn(
    config_file: str,
    *,
    height: int,
    width: int,
    batch_size: int = 1,
    warmup: int = 2,
    iters: int = 10,
    cpu: bool = False,
    opts: Sequence = (),
    peer_opts: Optional[Sequence] = None,
) -> Dict:
    """Our one pass (semantic, instance, panoptic and depth; no point branch at inference)
    against :func:`panoptic_fpn_peer_config`'s PanopticFPN, timed interleaved in this
    process on the same ``batch_size`` real samples resized to ``height x width``.

    Our model is randomly initialised (or loads ``MODEL.WEIGHTS`` from ``opts``), and the
    peer takes our encoder, RPN and ROI heads' weights (:func:`share_weights`): both then
    detect the same instances, so the comparison is not skewed by how many detections
    random weights happen to give. ``opts`` apply to both configs, ``peer_opts`` (default:
    the same) to the peer's.

    Returns:
        dict: per model ``median_s`` and ``times_s`` (wall clock), ``cpu_median_s`` (CPU
        time of this process), ``gmacs_per_image``, ``achieved_gflops_per_s``,
        ``detections`` (per image, last run), ``params_m``; ``ratio`` (ours / PanopticFPN,
        wall-clock medians), ``paired_ratio_median`` (median over rounds of the two runs'
        ratio), ``cpu_ratio`` (CPU-time medians), ``shared_parameters`` and the setting.
    """
    from detectron2.modeling import build_model

    from .. import load_config

    device = benchmark_device(cpu)
    ours_cfg = load_config(
        config_file, ["MODEL.POINT_HEAD.INFERENCE_ON", False, "MODEL.DEVICE", device] + list(opts)
    )
    peer_cfg = panoptic_fpn_peer_config(ours_cfg)
    if peer_opts is None:
        peer_opts = opts
    if peer_opts:
        peer_cfg.defrost()
        peer_cfg.merge_from_list(list(peer_opts))
        peer_cfg.freeze()
    torch.manual_seed(0)
    models = {"ours": build_model(ours_cfg).eval(), "panoptic_fpn": build_model(peer_cfg).eval()}
    if ours_cfg.MODEL.WEIGHTS:
        from ..engine.checkpoint import AtomicCheckpointer

        AtomicCheckpointer(models["ours"]).load(ours_cfg.MODEL.WEIGHTS)
    shared = share_weights(models["ours"], models["panoptic_fpn"])
    batch = benchmark_batch(ours_cfg, batch_size, height, width, train=False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else None
    outputs = {}

    def stepper(name):
        def step():
            if autocast is not None:
                with autocast:
                    outputs[name] = models[name](batch)
            else:
                outputs[name] = models[name](batch)

        return step

    times, cpu_times = _time_models(
        {name: stepper(name) for name in models}, torch.no_grad(), warmup, iters, device
    )
    result = _setting(
        device, config_file, height=height, width=width, batch_size=batch_size, iters=iters
    )
    result["shared_parameters"] = shared
    for name, model in models.items():
        median = statistics.median(times[name])
        gmacs = _macs_per_image(model, batch[0], train=False)
        result[name] = {
            "median_s": median,
            "times_s": times[name],
            "cpu_median_s": statistics.median(cpu_times[name]),
            "gmacs_per_image": gmacs,
            "achieved_gflops_per_s": 2 * gmacs * batch_size / median,
            "detections": [len(o["instances"]) for o in outputs[name]],
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        }
    result["ratio"] = result["ours"]["median_s"] / result["panoptic_fpn"]["median_s"]
    result["paired_ratio_median"] = statistics.median(
        a / b for a, b in zip(times["ours"], times["panoptic_fpn"])
    )
    result["cpu_ratio"] = result["ours"]["cpu_median_s"] / result["panoptic_fpn"]["cpu_median_s"]
    return result


def _time_training_steps(
    models: Dict[str, torch.nn.Module],
    cfg: CfgNode,
    config_file: str,
    *,
    device: str,
    height: int,
    width: int,
    batch_size: int,
    warmup: int,
    iters: int,
    **setting,
) -> Dict:
    """Training steps (forward, backward, SGD step; bf16 autocast on CUDA) of ``models`` on
    ``batch_size`` samples of ``cfg``'s training set resized to ``height x width``, timed
    interleaved: the setting (with ``setting``'s extra entries) and per model ``median_s``,
    ``times_s``, ``cpu_median_s``."""
    from detectron2.utils.events import EventStorage

    batch = benchmark_batch(cfg, batch_size, height, width, train=True)
    optims = {
        key: torch.optim.SGD(
            [p for p in m.parameters() if p.requires_grad], lr=1e-4, momentum=0.9
        )
        for key, m in models.items()
    }
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else None

    def stepper(key):
        def step():
            if autocast is not None:
                with autocast:
                    losses = models[key](batch)
            else:
                losses = models[key](batch)
            optims[key].zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optims[key].step()

        return step

    times, cpu_times = _time_models(
        {key: stepper(key) for key in models}, EventStorage(), warmup, iters, device
    )
    result = _setting(
        device,
        config_file,
        height=height,
        width=width,
        batch_size=batch_size,
        iters=iters,
        **setting,
    )
    for key in models:
        result[key] = {
            "median_s": statistics.median(times[key]),
            "times_s": times[key],
            "cpu_median_s": statistics.median(cpu_times[key]),
        }
    return result


def _paired_ratios(result: Dict, num: str, den: str) -> Dict[str, float]:
    """Step time of model ``num`` over model ``den`` in a :func:`_time_training_steps`
    result: ``ratio`` (of the wall-clock medians), ``paired_ratio_median`` (median over the
    interleaved rounds), ``cpu_ratio`` (of the CPU-time medians)."""
    a, b = result[num], result[den]
    return {
        "ratio": a["median_s"] / b["median_s"],
        "paired_ratio_median": statistics.median(
            x / y for x, y in zip(a["times_s"], b["times_s"])
        ),
        "cpu_ratio": a["cpu_median_s"] / b["cpu_median_s"],
    }


def compare_point_branch(
    config_file: str,
    *,
    height: int,
    width: int,
    batch_size: int,
    num_points: int,
    warmup: int = 2,
    iters: int = 10,
    cpu: bool = False,
    opts: Sequence = (),
) -> Dict:
    """Training step (forward, backward, SGD step) with the point branch on against off,
    timed interleaved in this process on the same ``batch_size`` real samples resized to
    ``height x width``: the models of :data:`VARIANTS` ``train_point_on`` and
    ``train_point_off``, the second holding the first's weights for every module they share,
    so that both detect alike and only the branch differs. Interleaving makes the ratio
    robust to a machine whose speed drifts between separate runs.

    Returns:
        dict: per model (``"on"``, ``"off"``) ``median_s``, ``times_s`` and ``cpu_median_s``;
        ``overhead`` (on / off - 1, wall-clock medians), ``paired_overhead_median`` (median
        over rounds of on / off - 1), ``cpu_overhead`` and the setting.
    """
    from detectron2.modeling import build_model

    device = benchmark_device(cpu)
    cfgs = {
        key: variant_config(config_file, name, num_points=num_points, device=device, opts=opts)
        for key, name in (("on", "train_point_on"), ("off", "train_point_off"))
    }
    torch.manual_seed(0)
    models = {key: build_model(cfg).train() for key, cfg in cfgs.items()}
    missing = models["off"].load_state_dict(models["on"].state_dict(), strict=False).missing_keys
    if missing:
        raise RuntimeError(f"the point-off model has weights the point-on model lacks: {missing}")
    result = _time_training_steps(
        models,
        cfgs["on"],
        config_file,
        device=device,
        height=height,
        width=width,
        batch_size=batch_size,
        warmup=warmup,
        iters=iters,
        num_points=num_points,
    )
    ratios = _paired_ratios(result, "on", "off")
    result["overhead"] = ratios["ratio"] - 1
    result["paired_overhead_median"] = ratios["paired_ratio_median"] - 1
    result["cpu_overhead"] = ratios["cpu_ratio"] - 1
    return result


def compare_training_options(
    config_file: str,
    compare_opts: Sequence,
    *,
    height: int,
    width: int,
    batch_size: int,
    weights: str = "",
    warmup: int = 2,
    iters: int = 10,
    cpu: bool = False,
    opts: Sequence = (),
) -> Dict:
    """Training step (forward, backward, SGD step) of ``config_file`` (+ ``opts``: "base")
    against the same config with ``compare_opts`` on top ("compared"), timed interleaved in
    this process on the same ``batch_size`` real samples resized to ``height x width``.
    This is how a change meant to make training cheaper (fewer sampled RoIs, depthwise-
    separable convolutions, ...) is measured before it is trained with.

    Both models are built as the trainer builds them (``MODEL.FREEZE.PREFIXES`` frozen: give
    a curriculum stage's ``config.yaml`` to time that stage). With ``weights`` both load that
    checkpoint (read safely; tensors a model lacks or whose shapes differ are skipped), so
    that the step is timed at a trained model's cost (a trained detector sends more
    proposals to its box and mask heads than a random one); without, "compared" takes
    "base"'s random weights wherever they fit.

    Returns:
        dict: per model (``"base"``, ``"compared"``) ``median_s``, ``times_s`` and
        ``cpu_median_s``; ``ratio`` (compared / base, wall-clock medians),
        ``paired_ratio_median`` (median over rounds), ``cpu_ratio``, ``compare_opts``,
        ``not_shared`` (tensors of "compared" that "base" does not have with that shape)
        and the setting.
    """
    from .. import load_config
    from ..engine.checkpoint import AtomicCheckpointer
    from ..engine.trainer import PanopticCurriculumTrainer

    compare_opts = list(compare_opts)
    if not compare_opts or len(compare_opts) % 2:
        raise ValueError(f"compare_opts must be KEY VALUE pairs, got {compare_opts}")
    device = benchmark_device(cpu)
    base_opts = ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""] + list(opts)
    cfgs = {
        "base": load_config(config_file, base_opts),
        "compared": load_config(config_file, base_opts + compare_opts),
    }
    torch.manual_seed(0)
    models = {key: PanopticCurriculumTrainer.build_model(cfg) for key, cfg in cfgs.items()}
    if weights:
        for model in models.values():
            AtomicCheckpointer(model, strict=False).load(weights, checkpointables=[])
    base_state = models["base"].state_dict()
    fitting = {
        k: v
        for k, v in models["compared"].state_dict().items()
        if k in base_state and base_state[k].shape == v.shape
    }
    not_shared = sorted(set(models["compared"].state_dict()) - set(fitting))
    if not weights:
        models["compared"].load_state_dict({k: base_state[k] for k in fitting}, strict=False)
    for model in models.values():
        model.train()
    result = _time_training_steps(
        models,
        cfgs["base"],
        config_file,
        device=device,
        height=height,
        width=width,
        batch_size=batch_size,
        warmup=warmup,
        iters=iters,
        compare_opts=compare_opts,
        weights=weights,
        not_shared=not_shared,
    )
    result.update(_paired_ratios(result, "compared", "base"))
    return result
