"""PointCloudDumpHook: periodic labelled point-cloud dumps that leave training untouched."""

import json
import logging
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open3d as o3d
import pytest
import torch
from torch import nn

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.events import EventStorage

from panoptic_curriculum.data.dataset_mapper import RGBDDatasetMapper
from panoptic_curriculum.data.depth_io import read_image
from panoptic_curriculum.engine import PanopticCurriculumTrainer
from panoptic_curriculum.engine.pointcloud_hook import (
    AGREEMENT_KEY,
    KINDS,
    PointCloudDumpHook,
    build_pointcloud_hook,
)
from panoptic_curriculum.utils.visualization import IGNORED_POINT_COLOR

from model_utils import tiny_cfg

NUM_POINTS = 256  # tiny_cfg's MODEL.POINT_HEAD.NUM_POINTS


def _cfg(split, out_dir, period):
    # the test-time resize doubles the 96x128 images, so pixels map back to the original
    # image at (u + 0.5) / 2 - 0.5: never a rounding tie
    overrides = {
        "DATASETS.TRAIN": (split,),
        "DATASETS.TEST": (),  # no evaluation
        "TEST.EVAL_PERIOD": 0,
        "OUTPUT_DIR": str(out_dir),
        "SOLVER.MAX_ITER": 4,
        "SOLVER.IMS_PER_BATCH": 1,
        "SOLVER.WARMUP_ITERS": 0,
        "SOLVER.CHECKPOINT_PERIOD": 100,
        "DATALOADER.NUM_WORKERS": 0,
        "SEED": 0,
        "INPUT.MIN_SIZE_TRAIN": (96,),
        "INPUT.MAX_SIZE_TRAIN": 200,
        "INPUT.CROP.SIZE": (64, 96),
        "INPUT.MIN_SIZE_TEST": 192,
        "INPUT.MAX_SIZE_TEST": 400,
        # the point branch needs the semantic and depth heads only; keeps the test fast
        "MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON": False,
        "CURRICULUM.POINT_CLOUD_DUMP_PERIOD": period,
    }
    flat = [x for kv in overrides.items() for x in kv]
    return tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", *flat)


def _train(cfg):
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    trainer = PanopticCurriculumTrainer(cfg)  # registers the hook from the config
    trainer.resume_or_load(resume=False)
    trainer.train()
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return trainer, weights


@pytest.fixture(scope="module")
def runs(small_split, module_tmp_path):
    with_hook = _train(_cfg(small_split, module_tmp_path / "with_hook", 2))
    without_hook = _train(_cfg(small_split, module_tmp_path / "without_hook", 0))
    return with_hook, without_hook


def _read_ply(path):
    pc = o3d.io.read_point_cloud(str(path))
    return np.asarray(pc.points), np.asarray(pc.colors)


def _palette(split):
    return np.asarray(MetadataCatalog.get(split).stuff_colors, dtype=np.float64) / 255.0


def test_files_written_after_iterations_1_and_3(runs):
    (trainer, _), _ = runs
    folder = Path(trainer.cfg.OUTPUT_DIR) / "pointclouds"
    names = sorted(p.name for p in folder.iterdir())
    expected = sorted(
        [f"iter_{it:07d}_{k}.ply" for it in (1, 3) for k in KINDS]
        + [f"iter_{it:07d}.json" for it in (1, 3)]
    )
    assert names == expected
    for it in (1, 3):
        summary = json.loads((folder / f"iter_{it:07d}.json").read_text())
        assert summary["iteration"] == it and summary["num_points"] == NUM_POINTS
        assert 0.0 <= summary["agreement_2d_3d"] <= 1.0
        counts = {len(_read_ply(folder / f"iter_{it:07d}_{k}.ply")[0]) for k in KINDS}
        assert counts == {NUM_POINTS}
    # the agreement also reaches the EventStorage (and the metrics written from it)
    history = trainer.storage.history(AGREEMENT_KEY)
    assert [it for _, it in history.values()] == [1, 3]
    lines = (Path(trainer.cfg.OUTPUT_DIR) / "metrics.json").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert any(AGREEMENT_KEY in m for m in metrics)


def test_colours_match_the_labels(runs, small_split):
    (trainer, _), _ = runs
    cfg = trainer.cfg
    d = DatasetCatalog.get(small_split)[0]
    K = RGBDDatasetMapper(cfg, is_train=False)(d)["intrinsics"].double().numpy()
    gt = read_image(d["sem_seg_file_name"], "L")[..., 0].astype(np.int64)
    h, w = gt.shape
    palette = _palette(small_split)
    ignore = MetadataCatalog.get(small_split).ignore_label
    for it in (1, 3):
        stem = f"{cfg.OUTPUT_DIR}/pointclouds/iter_{it:07d}"
        points, gt_colors = _read_ply(stem + "_gt.ply")
        # the three files hold the same points
        for kind in ("pred2d", "pred3d"):
            other, colors = _read_ply(f"{stem}_{kind}.ply")
            np.testing.assert_array_equal(other, points)
            # every predicted colour is a class colour (within 8-bit quantisation)
            dist = np.abs(colors[:, None, :] - palette[None]).max(-1).min(-1)
            assert dist.max() <= 1 / 255
        # recover each point's pixel by projecting it with the network input's K: pixel
        # centres of the 192x256 input, mapped back to the 96x128 original
        x, y, z = points.T
        u_net = K[0, 0] * x / z + K[0, 1] * y / z + K[0, 2]
        v_net = K[1, 1] * y / z + K[1, 2]
        np.testing.assert_allclose(u_net, np.round(u_net), atol=1e-3)
        np.testing.assert_allclose(v_net, np.round(v_net), atol=1e-3)
        u = np.round((np.round(u_net) + 0.5) / 2 - 0.5).astype(int)
        v = np.round((np.round(v_net) + 0.5) / 2 - 0.5).astype(int)
        assert u.min() >= 0 and u.max() < w and v.min() >= 0 and v.max() < h
        labels = gt[v, u]
        expected = np.where(
            (labels == ignore)[:, None],
            np.asarray(IGNORED_POINT_COLOR)[None],
            palette[np.where(labels == ignore, 0, labels)],
        )
        np.testing.assert_allclose(gt_colors, expected, atol=1 / 255 + 1e-9)
        assert len(set(labels.tolist()) - {ignore}) >= 2  # a meaningful check


def test_training_is_unchanged_by_the_hook(runs):
    (_, with_hook), (trainer, without_hook) = runs
    assert build_pointcloud_hook(trainer.cfg) is None  # period 0: no hook
    assert not any(isinstance(h, PointCloudDumpHook) for h in trainer._hooks)
    assert with_hook.keys() == without_hook.keys()
    changed = [k for k in with_hook if not torch.equal(with_hook[k], without_hook[k])]
    assert not changed, f"the hook changed {changed[:5]}"


# ---------------------------------------------------------------------- unit tests
class _PointModel(nn.Module):
    """A stand-in with a point head whose forward draws random numbers, then fails."""

    def __init__(self):
        super().__init__()
        self.point_head = nn.Linear(2, 2)
        self.point_inference = False
        self.seen = []

    def forward(self, batched_inputs):
        self.seen.append((self.training, self.point_head.training, self.point_inference))
        torch.rand(10)
        np.random.rand(10)
        random.random()
        raise RuntimeError("boom")


class _CloudModel(_PointModel):
    """A stand-in returning a fixed labelled point cloud of 3 points."""

    def forward(self, batched_inputs):
        self.seen.append((self.training, self.point_head.training, self.point_inference))
        cloud = {
            "points": torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 2.0], [0.0, 1.0, 3.0]]),
            "pixels": torch.tensor([[0.25, 0.75], [5.0, 3.0], [-0.4, 200.0]]),  # clamped
            "labels_2d": torch.tensor([0, 1, 2]),
            "labels_3d": torch.tensor([0, 1, 3]),
        }
        return [{"point_cloud": cloud}]


def _hook_with_fake_trainer(cfg, model, tmp_path, period=2):
    hook = PointCloudDumpHook(cfg, period=period, output_dir=str(tmp_path))
    hook.trainer = SimpleNamespace(model=model, iter=1, max_iter=4, storage=EventStorage(0))
    return hook


def test_restores_modes_flag_and_rng_on_error(small_split, tmp_path):
    cfg = _cfg(small_split, tmp_path, 2)
    model = _PointModel().train()
    hook = _hook_with_fake_trainer(cfg, model, tmp_path)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    hook.before_train()
    assert hook.disabled_reason is None
    with pytest.raises(RuntimeError, match="boom"):
        hook.after_step()
    assert model.seen == [(False, False, True)]  # ran in eval mode with point inference
    assert model.training and model.point_head.training and model.point_inference is False
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]


@pytest.mark.parametrize("case", ["no_point_head", "no_intrinsics"])
def test_skips_with_a_warning(case, small_split, tmp_path, caplog):
    overrides = {"no_intrinsics": ["INPUT.DEPTH.ENABLED", False]}.get(case, [])
    cfg = _cfg(small_split, tmp_path, 2)
    cfg.merge_from_list(overrides)
    model = _PointModel()
    if case == "no_point_head":
        model.point_head = None
    hook = _hook_with_fake_trainer(cfg, model, tmp_path)
    with caplog.at_level(logging.WARNING, logger="panoptic_curriculum.engine.pointcloud_hook"):
        hook.before_train()
        hook.after_step()  # no crash, no model call
    reason = {"no_point_head": "no point head", "no_intrinsics": "no intrinsics"}[case]
    assert reason in hook.disabled_reason
    assert any(reason in r.getMessage() for r in caplog.records)
    assert model.seen == []
    assert not (tmp_path / "pointclouds").exists()


def test_period_and_last_iteration(small_split, small_dicts, tmp_path):
    cfg = _cfg(small_split, tmp_path, 3)
    model = _CloudModel()
    hook = _hook_with_fake_trainer(cfg, model, tmp_path, period=3)
    hook.before_train()
    with hook.trainer.storage:
        for it in range(4):
            hook.trainer.iter = it
            hook.trainer.storage.iter = it
            hook.after_step()
    names = sorted(p.name for p in (tmp_path / "pointclouds").glob("*.json"))
    assert names == ["iter_0000002.json", "iter_0000003.json"]  # every 3rd step and the last
    summary = json.loads((tmp_path / "pointclouds" / "iter_0000003.json").read_text())
    assert summary["num_points"] == 3 and summary["agreement_2d_3d"] == pytest.approx(2 / 3)
    values = [v for v, _ in hook.trainer.storage.history(AGREEMENT_KEY).values()]
    assert values == pytest.approx([2 / 3, 2 / 3])
    # ground truth at the rounded, clamped pixels of the original image
    gt = read_image(small_dicts[0]["sem_seg_file_name"], "L")[..., 0].astype(np.int64)
    expected = [gt[1, 0], gt[3, 5], gt[gt.shape[0] - 1, 0]]
    palette = _palette(small_split)
    _, colors = _read_ply(tmp_path / "pointclouds" / "iter_0000003_gt.ply")
    np.testing.assert_allclose(colors, palette[expected], atol=1 / 255 + 1e-9)
    _, colors = _read_ply(tmp_path / "pointclouds" / "iter_0000003_pred3d.ply")
    np.testing.assert_allclose(colors, palette[[0, 1, 3]], atol=1 / 255 + 1e-9)
    assert all(seen == (False, False, True) for seen in model.seen)
    assert model.training and not model.point_inference


def test_build_and_period(small_split, tmp_path):
    cfg = _cfg(small_split, tmp_path, 5)
    hook = build_pointcloud_hook(cfg)
    assert isinstance(hook, PointCloudDumpHook) and hook.period == 5
    assert hook.output_dir == str(tmp_path / "pointclouds")
    with pytest.raises(ValueError, match="positive period"):
        PointCloudDumpHook(cfg, 0)
