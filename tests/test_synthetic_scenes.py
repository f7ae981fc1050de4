"""The embedded synthetic-scenes dataset: exact geometry, determinism, on-disk formats and
detectron2's stock evaluators running on it unchanged."""

import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from detectron2.structures import BitMasks, Boxes, Instances

from panoptic_curriculum.data import read_depth
from panoptic_curriculum.data.datasets.synthetic_scenes import (
    SYNTHETIC_SPLITS,
    ensure_generated,
    generate_synthetic_scenes,
)
from panoptic_curriculum.data.synthetic import generator as gen
from panoptic_curriculum.geometry import backproject

H, W = 96, 128


def _render(seed, idx=0, h=H, w=W):
    rng = np.random.default_rng([seed, idx])
    scene = gen.sample_scene(rng, h, w)
    return scene, gen.render_scene(scene, h, w, rng)


def _world_points(scene, sample):
    """Camera-frame points of every pixel -> world frame (y down, z forward, level)."""
    pts = backproject(
        torch.from_numpy(sample.depth)[None].double(), torch.from_numpy(sample.K)[None]
    )[0].numpy()
    p = scene["pitch"]
    R = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    return pts @ R.T


def test_classes_cover_stuff_things_and_shared_colours():
    things = [c for c in gen.CATEGORIES if c["isthing"]]
    stuff = [c for c in gen.CATEGORIES if not c["isthing"]]
    assert len(things) >= 3 and len(stuff) >= 2
    assert gen.CATEGORIES[: len(things)] == things  # things first: thing id == semantic id
    # colour alone cannot separate these pairs: same albedo distribution, other 3D shape/size
    assert gen._PALETTE[gen.BALL] is gen._PALETTE[gen.PILLAR]
    assert gen._PALETTE[gen.CRATE] is gen._PALETTE[gen.CONTAINER]
    assert min(gen._CONTAINER_SIDE) > 1.8 * max(gen._CRATE_SIDE)


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_depth_and_labels_are_exact(seed):
    scene, s = _render(seed)
    world = _world_points(scene, s)
    g = scene["cam_height"]
    assert s.depth.dtype == np.float32 and s.depth.shape == (H, W)
    sky = s.sem_seg == gen.SKY
    np.testing.assert_array_equal(s.depth == 0, sky)  # nothing hit <=> sky
    ground = s.sem_seg == gen.GROUND
    assert ground.any()
    np.testing.assert_allclose(world[ground][:, 1], g, rtol=1e-5)  # on the plane y = h
    wall = s.sem_seg == gen.WALL
    if wall.any():
        np.testing.assert_allclose(world[wall][:, 2], scene["wall_dist"], rtol=1e-5)
    # every visible ball pixel lies on its sphere
    for k, obj in enumerate(scene["objects"]):
        if obj.kind != gen.BALL:
            continue
        pts = world[(s.sem_seg == gen.BALL)]
        dist = np.linalg.norm(pts - obj.center, axis=1)
        on_this = np.abs(dist - obj.size[0]) < 1e-4
        assert on_this.any() or not (s.sem_seg == gen.BALL).any()
    # instance ids and semantic labels agree
    for k, inst in enumerate(s.instances, start=1):
        m = s.instance_ids == k
        assert m.sum() == inst["area"] and (s.sem_seg[m] == inst["category"]).all()


def test_deterministic_from_seed():
    _, a = _render(5, 2)
    _, b = _render(5, 2)
    _, c = _render(6, 2)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.K, b.K)
    assert not np.array_equal(a.depth, c.depth)


def test_intrinsics_vary_per_image():
    Ks = np.stack([_render(0, i)[1].K for i in range(5)])
    assert np.unique(Ks[:, 0, 0]).size == 5 and np.unique(Ks[:, 0, 2]).size == 5


def test_registered_splits_and_metadata():
    for name in SYNTHETIC_SPLITS:
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco_panoptic_seg"
        assert meta.thing_classes == ["ball", "crate", "container", "pillar"]
        assert meta.stuff_classes[: len(meta.thing_classes)] == meta.thing_classes
        assert len(meta.stuff_classes) == len(gen.CATEGORIES)
        assert meta.ignore_label == 255 and meta.has_depth


def test_on_disk_formats(small_dicts, small_split_dir):
    assert len(small_dicts) == 6
    spec = json.load(open(os.path.join(small_split_dir, "spec.json")))
    for d in small_dicts:
        idx = d["image_id"]
        scene, s = _render(spec["seed"], idx)
        img = cv2.imread(d["file_name"], cv2.IMREAD_COLOR)[:, :, ::-1]
        np.testing.assert_array_equal(img, s.image)
        depth = read_depth(d)
        assert depth.dtype == np.float32 and depth.shape == (H, W)
        assert np.abs(depth - s.depth).max() <= 0.5e-3 + 1e-6  # millimetre PNG
        np.testing.assert_array_equal(depth == 0, s.depth == 0)
        np.testing.assert_array_equal(
            cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_UNCHANGED), s.sem_seg
        )
        np.testing.assert_allclose(np.asarray(d["intrinsics"]), s.K)
        assert len(d["annotations"]) == len(s.instances)
        for k, (ann, inst) in enumerate(zip(d["annotations"], s.instances), start=1):
            assert ann["category_id"] == inst["category"]
            np.testing.assert_array_equal(
                mask_util.decode(ann["segmentation"]).astype(bool), s.instance_ids == k
            )
        # panoptic PNG: ids decode to segments whose areas and categories match
        pan = cv2.imread(d["pan_seg_file_name"], cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.int64)
        ids = pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2]
        for seg in d["segments_info"]:
            m = ids == seg["id"]
            assert m.sum() == seg["area"]
            sem = s.sem_seg[m]
            assert (sem == seg["category_id"]).all()
            assert seg["isthing"] == (seg["category_id"] < 4)
        assert ((ids == 0) == (s.sem_seg == 255)).all()


def test_generation_is_cached_and_atomic(tmp_path):
    params = dict(num_images=2, seed=9, height=32, width=48)
    split = str(tmp_path / "synthetic_scenes" / "x")
    os.makedirs(split + ".partial-999")  # an interrupted earlier run leaves this behind
    ensure_generated(split, params)
    stamp = os.path.getmtime(os.path.join(split, "spec.json"))
    ensure_generated(split, params)  # same spec: nothing is regenerated
    assert os.path.getmtime(os.path.join(split, "spec.json")) == stamp
    ensure_generated(split, dict(params, num_images=3))  # other spec: regenerated
    assert len(os.listdir(os.path.join(split, "image"))) == 3


def test_generation_rate(tmp_path):
    rate = generate_synthetic_scenes(str(tmp_path / "rate"), 10, 0, 192, 256)
    print(f"synthetic scenes generation rate (192x256, render + write): {rate:.1f} images/s")
    assert rate > 0


def test_parallel_generation_writes_the_same_files(tmp_path):
    """Scenes rendered by worker processes are the serial generator's, byte for byte, with
    annotation ids in the same order."""
    from panoptic_curriculum.data.datasets.synthetic_scenes import _generation_workers

    assert _generation_workers(2, 32) == 2 and _generation_workers(8, 20) == 1
    with pytest.raises(ValueError, match="workers must be >= 1"):
        _generation_workers(0, 32)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    generate_synthetic_scenes(str(serial), 32, 5, H, W, workers=1)
    generate_synthetic_scenes(str(parallel), 32, 5, H, W, workers=2)
    files = sorted(
        os.path.relpath(os.path.join(d, f), serial)
        for d, _, fs in os.walk(serial)
        for f in fs
    )
    assert len(files) == 5 * 32 + 2
    for rel in files:
        assert (serial / rel).read_bytes() == (parallel / rel).read_bytes(), rel
    ids = [a["id"] for a in json.loads((parallel / "instances.json").read_text())["annotations"]]
    assert ids == list(range(1, len(ids) + 1))


def _perfect_outputs(d, meta):
    """Model-style outputs equal to the ground truth of dataset dict ``d``."""
    sem = torch.from_numpy(
        cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_UNCHANGED).astype(np.int64)
    )
    num_classes = len(meta.stuff_classes)
    logits = (
        torch.nn.functional.one_hot(sem.clamp(max=num_classes - 1), num_classes)
        .permute(2, 0, 1)
        .float()
    )
    inst = Instances((d["height"], d["width"]))
    masks = [mask_util.decode(a["segmentation"]).astype(bool) for a in d["annotations"]]
    inst.pred_masks = (
        torch.from_numpy(np.stack(masks))
        if masks
        else torch.zeros(0, d["height"], d["width"], dtype=torch.bool)
    )
    inst.pred_boxes = (
        BitMasks(inst.pred_masks).get_bounding_boxes() if masks else Boxes(torch.zeros(0, 4))
    )
    inst.scores = torch.ones(len(masks))
    inst.pred_classes = torch.tensor(
        [a["category_id"] for a in d["annotations"]], dtype=torch.int64
    )
    pan = cv2.imread(d["pan_seg_file_name"], cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.int64)
    ids = torch.from_numpy(pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2]).int()
    segs = [
        {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
        for s in d["segments_info"]
    ]
    return {"sem_seg": logits, "instances": inst, "panoptic_seg": (ids, segs)}


def test_stock_evaluators_run_unchanged(small_split, small_dicts, tmp_path):
    meta = MetadataCatalog.get(small_split)
    evaluators = {
        "sem_seg": SemSegEvaluator(small_split, distributed=False, output_dir=str(tmp_path / "s")),
        "bbox": COCOEvaluator(
            small_split, tasks=("bbox", "segm"), distributed=False, output_dir=str(tmp_path / "c")
        ),
        "panoptic_seg": COCOPanopticEvaluator(small_split, output_dir=str(tmp_path / "p")),
    }
    for ev in evaluators.values():
        ev.reset()
    for d in small_dicts:
        out = _perfect_outputs(d, meta)
        inputs = [{k: d[k] for k in ("file_name", "image_id", "height", "width")}]
        for ev in evaluators.values():
            ev.process(inputs, [out])
    sem = evaluators["sem_seg"].evaluate()["sem_seg"]
    assert sem["mIoU"] == pytest.approx(100.0)
    coco = evaluators["bbox"].evaluate()
    assert coco["segm"]["AP"] == pytest.approx(100.0)
    assert coco["bbox"]["AP"] == pytest.approx(100.0)
    pq = evaluators["panoptic_seg"].evaluate()["panoptic_seg"]
    assert pq["PQ"] == pytest.approx(100.0)
