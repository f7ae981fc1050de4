"""Model analysis (multiply-adds, activations, parameters) and the benchmark's measuring
helpers, on tiny models."""

import pytest
import torch

from detectron2.modeling import build_model

from panoptic_curriculum.utils import benchmark as bm
from panoptic_curriculum.utils.analysis import (
    analysis_inputs,
    analyze_model,
    count_macs,
    format_report,
    synthetic_inputs,
)

from model_utils import TINY_OVERRIDES, tiny_cfg


class _Conv(torch.nn.Module):
    """``list[dict]`` in, ``{"sem_seg": ...}`` out: one 3x3 convolution, 3 -> 4 channels."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, batched_inputs):
        return [{"sem_seg": self.conv(x["image"].float()[None])[0]} for x in batched_inputs]


def test_count_macs_of_a_known_model():
    inputs = synthetic_inputs(2, 8, 10) + synthetic_inputs(1, 4, 5)
    result = count_macs(_Conv(), inputs)
    per_pixel = 3 * 9 * 4  # multiply-adds of one output pixel
    expected = [per_pixel * 80 / 1e9, per_pixel * 80 / 1e9, per_pixel * 20 / 1e9]
    assert result["gmacs"] == pytest.approx(expected)
    assert result["gmacs_mean"] == pytest.approx(sum(expected) / 3)
    assert result["by_module"] == {"conv": pytest.approx(sum(expected) / 3)}
    assert result["by_operator"] == {"conv": pytest.approx(sum(expected) / 3)}


def test_synthetic_inputs():
    a, b = synthetic_inputs(2, 30, 40, seed=1)
    assert a["image"].shape == (3, 30, 40) and a["image"].dtype == torch.uint8
    assert (a["height"], a["width"]) == (30, 40)
    assert a["intrinsics"][0, 2] == pytest.approx(19.5) and a["intrinsics"][1, 2] == 14.5
    assert not torch.equal(a["image"], b["image"])
    assert torch.equal(synthetic_inputs(1, 30, 40, seed=1)[0]["image"], a["image"])
    with pytest.raises(ValueError, match="positive size"):
        synthetic_inputs(1, 0, 40)


def test_analysis_inputs_from_the_test_set(small_split):
    cfg = tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        "DATASETS.TEST",
        (small_split,),
        "INPUT.MIN_SIZE_TEST",
        48,
    )
    inputs = analysis_inputs(cfg, 2)
    assert len(inputs) == 2
    assert inputs[0]["image"].shape[-2:] == (48, 64)  # resized as in evaluation
    assert (inputs[0]["height"], inputs[0]["width"]) == (96, 128)
    assert inputs[0]["intrinsics"].shape == (3, 3)
    assert analysis_inputs(cfg, 1, (20, 30))[0]["image"].shape == (3, 20, 30)


def test_analysis_inputs_missing_dataset_names_the_alternative():
    cfg = tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml", "DATASETS.TEST", ("no_such_set",)
    )
    with pytest.raises(RuntimeError, match="'no_such_set'.*--input-size"):
        analysis_inputs(cfg, 1)


def test_analyze_tiny_model_every_task():
    """All four tasks on the tiny model with the point branch at inference (traced)."""
    torch.manual_seed(0)
    cfg = tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml", "MODEL.POINT_HEAD.INFERENCE_ON", True
    )
    model = build_model(cfg).train()
    tasks = ["flop", "activation", "parameter", "structure"]
    report = analyze_model(model, synthetic_inputs(1, 64, 96), tasks)
    assert model.training  # restored
    flop = report["flop"]
    assert set(flop["by_module"]) >= {"backbone", "sem_seg_head", "depth_head", "roi_heads"}
    assert flop["gmacs_mean"] == pytest.approx(sum(flop["by_operator"].values()))
    assert flop["gmacs_mean"] >= sum(flop["by_module"].values()) * 0.99
    assert flop["by_module"]["backbone"] > 0.01
    assert report["activation"]["mactivations_mean"] > 0
    assert report["parameter"]["total"] == sum(p.numel() for p in model.parameters())
    assert report["structure"].startswith("PanopticCurriculumModel(")
    text = format_report(report)
    assert "Total GMACs per image" in text and "Total parameters" in text
    with pytest.raises(ValueError, match="unknown analysis task"):
        analyze_model(model, [], ["flops"])


# ------------------------------------------------------------------------------- benchmark


def test_panoptic_fpn_peer_config():
    cfg = tiny_cfg()
    peer = bm.panoptic_fpn_peer_config(cfg)
    assert peer.MODEL.META_ARCHITECTURE == "PanopticFPN"
    assert peer.MODEL.SEM_SEG_HEAD.NAME == "SemSegFPNHead"
    assert peer.MODEL.SEM_SEG_HEAD.IN_FEATURES == cfg.MODEL.ROI_HEADS.IN_FEATURES
    assert peer.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 7 - 4 + 1  # stuff + one "things" class
    # same encoder and detection budget
    for key in ("BACKBONE", "RESNETS", "FPN", "RPN", "ROI_HEADS", "ROI_BOX_HEAD", "ROI_MASK_HEAD"):
        assert peer.MODEL[key] == cfg.MODEL[key], key
    assert peer.TEST.DETECTIONS_PER_IMAGE == cfg.TEST.DETECTIONS_PER_IMAGE
    combine = peer.MODEL.PANOPTIC_FPN.COMBINE
    pc = cfg.MODEL.PANOPTIC_CURRICULUM
    assert combine.STUFF_AREA_LIMIT == pc.PANOPTIC_STUFF_AREA_LIMIT
    assert combine.INSTANCES_CONFIDENCE_THRESH == pc.PANOPTIC_INSTANCES_CONFIDENCE_THRESH


def test_compare_with_panoptic_fpn_tiny(small_split):
    result = bm.compare_with_panoptic_fpn(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        height=64,
        width=96,
        warmup=0,
        iters=2,
        cpu=True,
        opts=TINY_OVERRIDES + ["DATASETS.TRAIN", (small_split,)],
    )
    ours, peer = result["ours"], result["panoptic_fpn"]
    assert len(ours["times_s"]) == len(peer["times_s"]) == 2
    assert result["ratio"] == pytest.approx(ours["median_s"] / peer["median_s"])
    assert result["cpu_ratio"] == pytest.approx(ours["cpu_median_s"] / peer["cpu_median_s"])
    rounds = [a / b for a, b in zip(ours["times_s"], peer["times_s"])]
    assert result["paired_ratio_median"] == pytest.approx(sum(rounds) / 2)  # 2 rounds
    assert ours["detections"] == peer["detections"]  # shared encoder and detector weights
    assert result["shared_parameters"] > 0
    for r in (ours, peer):
        assert r["gmacs_per_image"] > 0
        assert r["achieved_gflops_per_s"] == pytest.approx(
            2 * r["gmacs_per_image"] / r["median_s"]
        )


def test_time_interleaved_round_robin():
    calls = []
    cpu = {}
    times = bm.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        warmup=1,
        iters=2,
        cpu_times=cpu,
    )
    assert calls == ["a", "b"] * 3
    assert [len(v) for v in times.values()] == [2, 2]
    assert set(cpu) == {"a", "b"} and all(t >= 0 for v in cpu.values() for t in v)


def test_matmul_gflops_positive():
    assert bm.matmul_gflops("cpu", size=64, iters=2) > 0


SHIPPED = [
    "configs/synthetic/curriculum_R18_FPN.yaml",
    "configs/synthetic/curriculum_Xception65.yaml",
    "configs/cityscapes/curriculum_R50_FPN.yaml",
    "configs/cityscapes/curriculum_Xception65.yaml",
    "configs/coco/curriculum_R50_FPN.yaml",
]


@pytest.mark.parametrize("path", SHIPPED)
def test_multiply_adds_of_every_shipped_config(path):
    """The analysis traces every shipped architecture (kept small: thin Xception, few
    detections, a 64x96 input)."""
    from panoptic_curriculum import load_config

    opts = ["MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", 3]
    opts += ["MODEL.RPN.POST_NMS_TOPK_TEST", 20]
    if "Xception" in path:
        opts += ["MODEL.XCEPTION.WIDTH_MULTIPLIER", 0.25, "MODEL.XCEPTION.MIDDLE_BLOCKS", 1]
    cfg = load_config(path, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    report = analyze_model(model, synthetic_inputs(1, 64, 96), ["flop", "parameter"])
    heads = {"backbone", "sem_seg_head", "proposal_generator", "roi_heads"}
    if cfg.MODEL.PANOPTIC_CURRICULUM.DEPTH_ON:
        heads.add("depth_head")
    assert heads <= set(report["flop"]["by_module"])
    assert all(report["flop"]["by_module"][h] > 0 for h in heads)


def test_compare_point_branch_tiny(small_split):
    """The point branch's training-step cost, on and off interleaved in one process: both
    models time the same number of rounds and the overheads are the medians' ratios (the
    off model loading the on model's weights raises if it had weights of its own)."""
    result = bm.compare_point_branch(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        height=64,
        width=96,
        batch_size=2,
        num_points=64,
        warmup=0,
        iters=2,
        cpu=True,
        opts=TINY_OVERRIDES + ["DATASETS.TRAIN", (small_split,)],
    )
    on, off = result["on"], result["off"]
    assert len(on["times_s"]) == len(off["times_s"]) == 2
    assert result["overhead"] == pytest.approx(on["median_s"] / off["median_s"] - 1)
    assert result["cpu_overhead"] == pytest.approx(on["cpu_median_s"] / off["cpu_median_s"] - 1)
    rounds = [a / b - 1 for a, b in zip(on["times_s"], off["times_s"])]
    assert result["paired_overhead_median"] == pytest.approx(sum(rounds) / 2)
    assert result["num_points"] == 64 and result["batch_size"] == 2


def test_compare_training_options_tiny(small_split, tmp_path):
    """A config against the same config with other settings, interleaved: the ratio is the
    medians'; a setting that changes a head's layers leaves those tensors unshared and is
    named; a stage config (frozen encoder) with trained weights loads them into both
    models."""
    opts = TINY_OVERRIDES + ["DATASETS.TRAIN", (small_split,), "MODEL.POINT_HEAD.ENABLED", False]
    common = dict(height=64, width=96, batch_size=2, warmup=0, iters=2, cpu=True)
    result = bm.compare_training_options(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        ["MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV", False],  # the config's: True
        opts=opts,
        **common,
    )
    base, other = result["base"], result["compared"]
    assert len(base["times_s"]) == len(other["times_s"]) == 2
    assert result["ratio"] == pytest.approx(other["median_s"] / base["median_s"])
    rounds = [a / b for a, b in zip(other["times_s"], base["times_s"])]
    assert result["paired_ratio_median"] == pytest.approx(sum(rounds) / 2)
    assert result["not_shared"] and all(k.startswith("sem_seg_head.") for k in result["not_shared"])

    # a trained checkpoint of a frozen-encoder stage: both models load all of it
    cfg = tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", *opts)
    torch.manual_seed(3)
    model = build_model(cfg)
    weights = tmp_path / "stage.pth"
    torch.save({"model": model.state_dict()}, weights)
    stage_opts = opts + ["MODEL.FREEZE.PREFIXES", ["backbone"]]
    result = bm.compare_training_options(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16],
        weights=str(weights),
        opts=stage_opts,
        **common,
    )
    assert result["not_shared"] == [] and result["weights"] == str(weights)
    with pytest.raises(ValueError, match="KEY VALUE"):
        bm.compare_training_options(
            "configs/synthetic/curriculum_R18_FPN.yaml", ["MODEL.DEVICE"], opts=opts, **common
        )
