"""The point-branch diagnostics (evaluation/point_branch.py, tools/point_branch_diagnostics.py):
numbers recomputed independently from the model's own recorded tensors, no weight changes,
the model's mode restored, and the tool end to end on a tiny checkpoint."""

import json
import math
import os
import sys

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from model_utils import (
    NUM_CLASSES,
    POINT_TRAINING_DEFAULTS,
    TINY_OPTS,
    fake_sample,
    tiny_cfg,
)
from panoptic_curriculum.evaluation.point_branch import (
    average_diagnostics,
    diagnostics_markdown,
    parameter_groups,
    point_branch_diagnostics,
    record_point_branch,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import point_branch_diagnostics as diagnostics_tool  # noqa: E402  (tools/...)

CLASSES = [f"c{i}" for i in range(NUM_CLASSES)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)  # L_consist both ways, the depth not detached: every route is open
    cfg = tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", *POINT_TRAINING_DEFAULTS)
    return build_model(cfg)


def _batch(seed):
    return [fake_sample(seed=seed), fake_sample(seed=seed + 1, num_instances=1)]


def test_numbers_match_the_recorded_forward(model):
    """Per-class accuracies and depth ratios equal those recomputed from the recorded tensors
    of the same (seeded) forward; nothing is trained; the eval mode is restored."""
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    result = point_branch_diagnostics(model, [_batch(0)], CLASSES)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k

    model.train()
    torch.manual_seed(7)
    with EventStorage(0), record_point_branch(model) as records:
        model(_batch(0))
    model.eval()
    assert model.point_branch_record is None
    (rec,) = records
    keep = rec["point_valid"] & (rec["gt_depth"] > 0)
    labels = rec["labels"][keep]
    pred_2d = rec["logits_2d"].argmax(-1)[keep]
    ratio = (rec["xyz"][..., 2] / rec["gt_depth"])[keep]
    shares = 0.0
    for c, row in enumerate(result["classes"]):
        on = labels == c
        if not on.any():
            assert math.isnan(row["acc_2d"])
            continue
        assert row["acc_2d"] == pytest.approx(float((pred_2d[on] == c).float().mean()), abs=1e-6)
        assert row["depth_median_ratio"] == pytest.approx(
            math.exp(float(ratio[on].log().median())), rel=1e-5
        )
        assert 0 <= row["only_3d_right"] <= 1 - row["acc_2d"] + 1e-9
        assert 0 <= row["acc_3d_gt_depth"] <= 1
        shares += row["points_share"]
    assert shares == pytest.approx(1.0)


def test_gradients_by_part(model):
    """Each loss's gradient reaches the parts it should: L_consist the 2D head, the point
    head and (through the lifted points) the depth head; the 2D cross-entropy not the point
    head; the cosines are cosines."""
    result = point_branch_diagnostics(model, [_batch(2), _batch(4)], CLASSES)
    g = result["gradients"]
    assert g["loss_consistency"]["2D head"] > 0
    assert g["loss_consistency"]["point head"] > 0
    assert g["loss_consistency"]["depth head"] > 0
    assert g["loss_sem_seg"]["point head"] == 0
    assert g["loss_sem_seg_3d"]["2D head"] == 0
    for cos in result["cosine_consistency_vs_sem_seg"].values():
        assert -1 - 1e-6 <= cos <= 1 + 1e-6
    assert set(parameter_groups(model)) >= {"encoder", "2D head", "depth head", "point head"}
    assert result["num_batches"] == 2
    text = diagnostics_markdown(result, title="tiny")
    assert "| c0 |" in text and "loss_consistency" in text
    twice = average_diagnostics([result, result])
    assert twice["classes"][0]["points_share"] == pytest.approx(
        result["classes"][0]["points_share"]
    )
    assert twice["gradients"]["loss_depth"]["encoder"] == pytest.approx(
        result["gradients"]["loss_depth"]["encoder"]
    )


def test_needs_a_point_branch():
    cfg = tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", "MODEL.POINT_HEAD.ENABLED", False)
    m = build_model(cfg)
    with pytest.raises(ValueError, match="POINT_HEAD.ENABLED"):
        with record_point_branch(m):
            pass


def test_tool_end_to_end(small_split, tmp_path):
    """The tool on a tiny checkpoint and the 6-image split: a table per model plus the
    mean, and a JSON with per-class rows; a missing checkpoint is named."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    weights = str(tmp_path / "model.pth")
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    out = tmp_path / "diag"
    argv = [
        "--weights", weights, weights,
        "--dataset", small_split,
        "--num-batches", "2",
        "--batch-size", "2",
        "--output", str(out),
        *[str(x) for x in TINY_OPTS],
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "200",
    ]  # fmt: skip
    assert diagnostics_tool.main(argv) == 0
    data = json.loads((out / "point_branch_diagnostics.json").read_text())
    assert data["dataset"] == small_split and len(data["runs"]) == 2
    assert [r["class"] for r in data["mean"]["classes"]][:2] == ["ball", "crate"]
    assert data["runs"][0]["classes"] == data["runs"][1]["classes"]  # same weights, same data
    assert "mean of 2 models" in (out / "point_branch_diagnostics.md").read_text()
    assert diagnostics_tool.main(["--weights", str(tmp_path / "missing.pth")]) == 2
