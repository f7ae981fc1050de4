"""Cityscapes end to end on a tiny tree in the official layout, prepared by
tools/prepare_cityscapes.py: every evaluator (Cityscapes semantic IoU/iIoU, Cityscapes
instance AP, panoptic quality against cityscapesscripts' panoptic ground truth, depth) on
perfect predictions, and tools/train_net.py training the curriculum (2 iterations per stage)
and evaluating with --eval-only, in one process and in 2 gloo processes."""

import json
import os
import subprocess
import sys
import uuid

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.structures import BitMasks, Instances

from panoptic_curriculum.data import read_depth
from panoptic_curriculum.data.datasets.cityscapes_depth import register_cityscapes_depth
from panoptic_curriculum.data.datasets.cityscapes_prepare import prepare_cityscapes
from panoptic_curriculum.engine import PanopticCurriculumTrainer
from panoptic_curriculum.modeling.meta_arch import thing_to_semantic_ids
from panoptic_curriculum.modeling.postprocessing import fuse_panoptic

from cityscapes_tree import THING_CLASSES, split_dirs, write_tree
from model_utils import TINY_OPTS

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
CONFIG = os.path.join(REPO, "configs", "cityscapes", "curriculum_R50_FPN.yaml")
_SUFFIX = uuid.uuid4().hex[:8]
TRAIN, VAL = f"cs_tiny_train_{_SUFFIX}", f"cs_tiny_val_{_SUFFIX}"


def _register(root):
    for name, split in ((TRAIN, "train"), (VAL, "val")):
        if name not in DatasetCatalog.list():
            d = split_dirs(root, split)
            register_cityscapes_depth(
                name, d["leftImg8bit"], d["gtFine"], d["disparity"], d["camera"]
            )


def _opts(out_dir):
    """train_net options: the Cityscapes config with a tiny ResNet-18-FPN model, 64x128
    inputs, 2 iterations per training stage, evaluation at the end of each stage."""
    opts = [
        *TINY_OPTS,
        "MODEL.RESNETS.DEPTH", 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "DATASETS.TRAIN", f"('{TRAIN}',)",
        "DATASETS.TEST", f"('{VAL}',)",
        "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MAX_SIZE_TRAIN", 128,
        "INPUT.CROP.SIZE", "(48, 96)",
        "INPUT.MIN_SIZE_TEST", 64,
        "INPUT.MAX_SIZE_TEST", 128,
        "SOLVER.IMS_PER_BATCH", 2,
        "SOLVER.WARMUP_ITERS", 0,
        "DATALOADER.NUM_WORKERS", 0,
        "CURRICULUM.SEMANTIC_ITER", 2,
        "CURRICULUM.INSTANCE_ITER", 2,
        # the evaluators are what this tests; the joint stage (tests/test_distributed.py
        # trains it for every config) would only add time
        "CURRICULUM.STAGES", "['semantic', 'instance', 'merge']",
        "TEST.EVAL_PERIOD", 0,
        "SEED", 0,
        "OUTPUT_DIR", out_dir,
    ]  # fmt: skip
    return [str(o) for o in opts]


def _train_net():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_net_tool", os.path.join(REPO, "tools", "train_net.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_train_net(runs):
    """Run ``tools/train_net.py``'s main in this process for each ``(argv, result_file)`` of
    ``runs``, writing the results it returns."""
    train_net = _train_net()
    for argv, result_file in runs:
        results = train_net.main(train_net.build_parser().parse_args(argv))
        with open(result_file, "w") as f:
            json.dump(results, f)


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory):
    """Root of a tiny Cityscapes tree (train + val), prepared; its splits registered."""
    root = str(tmp_path_factory.mktemp("cs_root"))
    write_tree(root)
    prepare_cityscapes(os.path.join(root, "cityscapes"), workers=1)
    _register(root)
    return root


def _check_all_metrics(results):
    """The keys of the four evaluations, each a finite number."""
    want = {
        "sem_seg": ("IoU", "iIoU"),
        "segm": ("AP", "AP50"),
        "panoptic_seg": ("PQ", "SQ", "RQ"),
        "depth": ("AbsRel", "d1"),
    }
    for task, keys in want.items():
        for k in keys:
            assert np.isfinite(results[task][k]), (task, k)


# ---------------------------------------------------------------- evaluators


class _Oracle(torch.nn.Module):
    """Predicts each input's ground truth: semantic logits from labelTrainIds (ignored
    pixels as class 0), one instance per thing in instanceIds (score 1), their panoptic
    fusion, and the depth from disparity."""

    def __init__(self, dataset_name):
        super().__init__()
        self.dicts = {d["file_name"]: d for d in DatasetCatalog.get(dataset_name)}
        self.thing_to_sem = thing_to_semantic_ids(dataset_name, len(THING_CLASSES))
        self.thing_ids = MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id

    def forward(self, inputs):
        outputs = []
        for x in inputs:
            d = self.dicts[x["file_name"]]
            train_ids = torch.from_numpy(
                cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_UNCHANGED).astype(np.int64)
            )
            labels = torch.where(train_ids == 255, 0, train_ids)
            sem_seg = F.one_hot(labels, 19).permute(2, 0, 1).float()
            ids = cv2.imread(
                d["sem_seg_file_name"].replace("labelTrainIds", "instanceIds"),
                cv2.IMREAD_UNCHANGED,
            )
            things = [i for i in np.unique(ids) if i >= 1000 and i // 1000 in self.thing_ids]
            inst = Instances(labels.shape)
            masks = torch.from_numpy(np.stack([ids == i for i in things]))
            inst.pred_masks = masks
            inst.pred_boxes = BitMasks(masks).get_bounding_boxes()
            inst.pred_classes = torch.tensor([self.thing_ids[i // 1000] for i in things])
            inst.scores = torch.ones(len(things))
            panoptic = fuse_panoptic(inst, labels, self.thing_to_sem, 0.5, 0, 0.5)
            depth = torch.from_numpy(read_depth(d))
            outputs.append(
                {"sem_seg": sem_seg, "instances": inst, "panoptic_seg": panoptic, "depth": depth}
            )
        return outputs


def test_every_evaluator_on_perfect_predictions(cs_root, tmp_path):
    from panoptic_curriculum import load_config

    cfg = load_config(CONFIG, _opts(str(tmp_path)))
    evaluator = PanopticCurriculumTrainer.build_evaluator(cfg, VAL)
    names = sorted(type(e).__name__ for e in evaluator._evaluators)
    assert names == [
        "COCOPanopticEvaluator",
        "CityscapesInstanceEvaluator",
        "CityscapesSemSegEvaluator",
        "DepthEvaluator",
    ]
    loader = PanopticCurriculumTrainer.build_test_loader(cfg, VAL)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the instance evaluation must not write into the current directory
    try:
        results = inference_on_dataset(_Oracle(VAL), loader, evaluator)
    finally:
        os.chdir(cwd)
    assert not os.path.exists(tmp_path / "matches.json")
    assert results["sem_seg"]["IoU"] == pytest.approx(100.0)
    assert results["sem_seg"]["iIoU"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert results["panoptic_seg"]["PQ_th"] == pytest.approx(100.0)
    assert results["panoptic_seg"]["PQ_st"] == pytest.approx(100.0)
    assert results["depth"]["AbsRel"] == pytest.approx(0.0, abs=1e-6)
    assert results["depth"]["d1"] == pytest.approx(1.0)
    assert results["depth"]["num_images"] == 2


def test_panoptic_evaluation_needs_the_prepared_ground_truth(cs_root, tmp_path):
    from panoptic_curriculum import load_config

    name = f"cs_unprepared_{uuid.uuid4().hex[:8]}"
    d = split_dirs(cs_root, "val")
    register_cityscapes_depth(
        name,
        d["leftImg8bit"],
        d["gtFine"],
        d["disparity"],
        d["camera"],
        panoptic_json=str(tmp_path / "absent.json"),
    )
    try:
        cfg = load_config(CONFIG, _opts(str(tmp_path)))
        with pytest.raises(FileNotFoundError, match="prepare_cityscapes") as e:
            PanopticCurriculumTrainer.build_evaluator(cfg, name)
        assert "absent.json" in str(e.value)
        # without the instance branch there is no panoptic evaluation to prepare for
        cfg.defrost()
        cfg.MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON = False
        PanopticCurriculumTrainer.build_evaluator(cfg, name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# ---------------------------------------------------------------- train_net.py


@pytest.fixture(scope="module")
def single_process_run(cs_root, module_tmp_path):
    """tools/train_net.py in one process: the curriculum, then --eval-only of its merged
    model. Returns (output dir, curriculum results, eval-only results)."""
    out = str(module_tmp_path)
    curriculum = ["--config-file", CONFIG, *_opts(os.path.join(out, "run"))]
    weights = os.path.join(out, "run", "merge", "model_merged.pth")
    eval_only = [
        "--config-file",
        CONFIG,
        "--eval-only",
        *_opts(os.path.join(out, "eval")),
        "MODEL.WEIGHTS",
        weights,
    ]
    files = [os.path.join(out, "curriculum.json"), os.path.join(out, "eval.json")]
    _run_train_net([(curriculum, files[0]), (eval_only, files[1])])
    loaded = []
    for path in files:
        with open(path) as f:
            loaded.append(json.load(f))
    return out, loaded[0], loaded[1]


def _check_curriculum(run_dir, results):
    assert set(results) == {"semantic", "instance", "merge"}
    assert set(results["semantic"]) >= {"sem_seg", "depth"}
    assert "segm" in results["instance"]
    _check_all_metrics(results["merge"])
    with open(os.path.join(run_dir, "summary.txt")) as f:
        rows = {line.split("|")[1].strip(): line for line in f if line.startswith("|")}
    merged = [c.strip() for c in rows["merged"].split("|")[2:-1]]
    assert len(merged) == 5 and "-" not in merged  # mIoU read from Cityscapes' sem_seg/IoU
    assert merged[0] == f"{results['merge']['sem_seg']['IoU']:.1f}"


def test_train_and_eval_only_single_process(single_process_run):
    out, curriculum, eval_only = single_process_run
    _check_curriculum(os.path.join(out, "run"), curriculum)
    _check_all_metrics(eval_only)
    # --eval-only on the merged weights repeats the merge stage's evaluation
    for task in ("sem_seg", "segm", "panoptic_seg", "depth"):
        for k, v in curriculum["merge"][task].items():
            assert eval_only[task][k] == pytest.approx(v, rel=1e-6, abs=1e-9), (task, k)


def _copypaste(output):
    """detectron2's ``copypaste`` result lines in a log: {task: {metric: "value"}}."""
    lines = [
        l.split("copypaste: ", 1)[1].strip() for l in output.splitlines() if "copypaste: " in l
    ]
    results = {}
    for i, line in enumerate(lines):
        if line.startswith("Task: "):
            keys, values = lines[i + 1].split(","), lines[i + 2].split(",")
            results[line[len("Task: ") :]] = dict(zip(keys, values))
    return results


def _train_net_two_processes(cs_root, argv):
    """``tools/train_net.py --num-gpus 2`` (2 gloo processes without GPUs) as a user runs it,
    on the official dataset names registered from ``DETECTRON2_DATASETS``."""
    env = dict(os.environ)
    env["DETECTRON2_DATASETS"] = cs_root
    env["OMP_NUM_THREADS"] = "1"  # 2 processes on 2 shared cores
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(REPO, "projects")] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    run = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--num-gpus", "2", *argv],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    return output


def test_train_and_eval_only_two_processes(cs_root, single_process_run, tmp_path):
    """2 gloo processes: the curriculum, and --eval-only of the single-process run's merged
    model, which must give the single-process numbers."""
    out, _, single_eval = single_process_run
    names = ["DATASETS.TRAIN", "('cityscapes_fine_depth_train',)"]
    names += ["DATASETS.TEST", "('cityscapes_fine_depth_val',)"]
    run_dir = str(tmp_path / "run")
    _train_net_two_processes(cs_root, ["--config-file", CONFIG, *_opts(run_dir), *names])
    with open(os.path.join(run_dir, "summary.json")) as f:
        _check_curriculum(run_dir, json.load(f))

    weights = os.path.join(out, "run", "merge", "model_merged.pth")
    argv = ["--config-file", CONFIG, "--eval-only", *_opts(str(tmp_path / "eval")), *names]
    two = _copypaste(_train_net_two_processes(cs_root, argv + ["MODEL.WEIGHTS", weights]))
    for task in ("sem_seg", "segm", "panoptic_seg", "depth"):
        assert two[task] == {k: f"{v:.4f}" for k, v in single_eval[task].items()}, task
