"""End-to-end tests of tools/demo.py, tools/visualize_pointcloud.py, tools/plot_metrics.py and
tools/analyze_model.py with a tiny randomly initialised model saved as a checkpoint, plus unit
tests of the pieces they are built from (intrinsics files, the predictor's inputs, metrics
loading).

The costly tool runs (model inference, Open3D rendering, a fresh synthetic split, model
analysis) are started together as subprocesses by one module fixture, so that they
overlap."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import panoptic_curriculum  # noqa: F401  (detectron2 compatibility fixes, dataset registration)
from panoptic_curriculum.engine.predictor import (
    RGBDPredictor,
    intrinsics_from_fov,
    load_intrinsics_json,
)
from panoptic_curriculum.geometry import resize_intrinsics
from panoptic_curriculum.utils.metrics_plot import key_to_filename, load_metrics_json, load_run
from panoptic_curriculum.utils.visualization import (
    DISAGREEMENT_COLOR,
    disagreement_point_colors,
    label_point_colors,
    tile_panels,
)

import cv2
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from log_utils import isolated_loggers
from model_utils import tiny_cfg, tiny_curriculum_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
IMAGE_SIZES = {"img_a": (64, 80), "img_b": (72, 96)}  # stem -> (H, W), original sizes
RENDER = (120, 90)  # point-cloud renderings, W x H
TITLE_BAR = 26  # rows above each visualize_pointcloud panel
PANEL_RENDER = (100, 75)
STUFF_COLORS = MetadataCatalog.get("synthetic_scenes_val").stuff_colors

# A synthetic curriculum root: stage -> JSON-lines records (detectron2's metrics.json).
CURRICULUM = {
    "semantic": [
        {
            "iteration": i,
            "total_loss": 3.0 - 0.1 * i,
            "loss_sem_seg": 1.0 - 0.05 * i,
            "loss_depth": 0.5,
            "lr": 0.01,
            "data_time": 0.1,
        }
        for i in range(0, 10, 2)
    ]
    + [
        {
            "iteration": 9,
            "total_loss": 2.0,
            "sem_seg/mIoU": 20.0,
            "depth/AbsRel": 0.3,
            "depth/d1": 0.5,
        }
    ],
    "instance": [
        {"iteration": i, "total_loss": 2.0 - 0.1 * i, "loss_cls": 0.5, "loss_mask": 0.6}
        for i in range(0, 6, 2)
    ]
    + [{"iteration": 5, "segm/AP": 5.0}],
    "merge": [
        {
            "iteration": 0,
            "sem_seg/mIoU": 21.0,
            "segm/AP": 5.0,
            "panoptic_seg/PQ": 10.0,
            "depth/AbsRel": 0.3,
            "depth/d1": 0.5,
        }
    ],
    "joint": [
        {"iteration": i, "total_loss": 1.5 - 0.1 * i, "loss_sem_seg": 0.5, "loss_cls": 0.4}
        for i in range(4)
    ]
    + [{"iteration": 3, "sem_seg/mIoU": 25.0, "panoptic_seg/PQ": 12.0}],
}
PLAIN = [
    {"iteration": i, "total_loss": 2.5 - 0.05 * i, "loss_sem_seg": 0.8} for i in range(0, 20, 3)
]
PLAIN += [{"iteration": 19, "sem_seg/mIoU": 23.0, "segm/AP": 4.0}]
EXPECTED_KEYS = {
    "total_loss",
    "loss_sem_seg",
    "loss_depth",
    "loss_cls",
    "loss_mask",
    "sem_seg/mIoU",
    "depth/AbsRel",
    "depth/d1",
    "segm/AP",
    "panoptic_seg/PQ",
}


def write_metrics(folder, records):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def tool_env(datasets_dir):
    env = dict(os.environ)
    env.pop("DISPLAY", None)  # headless: no window may be opened
    env.pop("WAYLAND_DISPLAY", None)
    env["MPLBACKEND"] = "Agg"
    env["OMP_NUM_THREADS"] = "1"  # the runs overlap on few cores: no OpenMP oversubscription
    env["DETECTRON2_DATASETS"] = str(datasets_dir)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(REPO, "projects")] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    return env


@pytest.fixture(scope="module")
def setup(module_tmp_path):
    """A tiny model (config YAML + random-weight checkpoint), input images with one corrupt
    file, and metrics folders."""
    root = module_tmp_path
    cfg = tiny_cfg(
        os.path.join(REPO, "configs", "synthetic", "curriculum_R18_FPN.yaml"),
        "INPUT.MIN_SIZE_TEST",
        96,  # the 64x80 and 72x96 inputs are upscaled: K must follow
        "INPUT.MAX_SIZE_TEST",
        160,
        "DATALOADER.NUM_WORKERS",
        0,
        "MODEL.POINT_HEAD.NO_SURFACE_CLASSES",
        [],  # every pixel is lifted: the PLY point count is known (see test_visualization)
    )
    config = root / "tiny.yaml"
    config.write_text(cfg.dump())
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(root)).save("tiny_model")
    weights = root / "tiny_model.pth"

    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for stem, (h, w) in IMAGE_SIZES.items():
        cv2.imwrite(str(images / f"{stem}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (images / "notes.txt").write_text("not an image: ignored")

    for stage, records in CURRICULUM.items():
        write_metrics(root / "curriculum" / stage, records)
    write_metrics(root / "plain_run", PLAIN)
    return {"root": root, "config": str(config), "weights": str(weights), "cfg": cfg}


@pytest.fixture(scope="module")
def runs(setup):
    """Run the tools as subprocesses, concurrently; name -> (return code, output, seconds)."""
    root, env = setup["root"], tool_env(setup["root"] / "datasets")
    weights = ["MODEL.WEIGHTS", setup["weights"]]
    commands = {
        "demo": [
            os.path.join(TOOLS, "demo.py"),
            "--config-file",
            setup["config"],
            "--input-dir",
            str(root / "images"),
            "--output",
            str(root / "demo"),
            "--render-size",
            *map(str, RENDER),
            *weights,
        ],
        "pointcloud_dataset": [
            os.path.join(TOOLS, "visualize_pointcloud.py"),
            "--config-file",
            setup["config"],
            "--dataset",
            "synthetic_scenes_val",
            "--index",
            "1",
            "--output",
            str(root / "pc_dataset.png"),  # no --headless: no DISPLAY is enough
            "--render-size",
            *map(str, PANEL_RENDER),
            *weights,
        ],
        "analyze": [
            os.path.join(TOOLS, "analyze_model.py"),
            "--config-file",
            setup["config"],
            "--tasks",
            "flop",
            "parameter",
            "activation",
            "structure",
            "--num-inputs",
            "2",
            "--input-size",
            "64",
            "96",
            "--output",
            str(root / "analysis.json"),
            *weights,
        ],
        "ablation_evaluate_training_key": [
            os.path.join(TOOLS, "ablation.py"),
            "--evaluate-from",
            str(root / "curriculum"),
            "--output",
            str(root / "ablation_again"),
            "INPUT.MIN_SIZE_TEST",
            "64",
            "SOLVER.BASE_LR",
            "0.1",
        ],
        "depth_trend": [
            os.path.join(TOOLS, "depth_trend.py"),
            "--config-file",
            setup["config"],
            "--class",
            "wall",
            "--bins",
            "0",
            "10",
            "20",
            "--min-pixels",
            "1",
            "--output",
            str(root / "depth_trend"),
            *weights,
        ],
        "plot_metrics": [
            os.path.join(TOOLS, "plot_metrics.py"),
            str(root / "curriculum"),
            str(root / "plain_run"),
            "--output-dir",
            str(root / "plots"),
        ],
    }
    procs = {}
    for name, cmd in commands.items():
        log = open(root / f"{name}.log", "w")
        procs[name] = (
            subprocess.Popen(
                [sys.executable, *cmd], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            ),
            log,
            time.perf_counter(),
        )
    results = {}
    for name, (proc, log, start) in procs.items():
        try:
            code = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
        output = (root / f"{name}.log").read_text()
        results[name] = (code, output, time.perf_counter() - start)
    return results


def check_run(runs, name):
    code, output, _ = runs[name]
    assert code == 0, f"{name} failed ({code}):\n{output[-4000:]}"
    return output


def test_ablation_evaluate_from_refuses_training_keys(setup, runs):
    """--evaluate-from evaluates finished runs again: a training key among the overrides is
    an error that names it, before anything is loaded or written."""
    code, output, _ = runs["ablation_evaluate_training_key"]
    assert code == 2, output[-2000:]
    assert "['SOLVER.BASE_LR']" in output and "evaluation-only" in output
    assert not (setup["root"] / "ablation_again").exists()


# ------------------------------------------------------------------------------------ demo
def test_demo_outputs(setup, runs):
    output = check_run(runs, "demo")
    out = setup["root"] / "demo"
    assert "No camera intrinsics given" in output and "60 degrees" in output
    assert "broken.png" in output and "Skipping" in output
    assert "2 processed, 1 skipped" in output

    summary = json.loads((out / "demo_summary.json").read_text())
    assert (summary["num_processed"], summary["num_skipped"]) == (2, 1)
    assert [os.path.basename(s["input"]) for s in summary["skipped"]] == ["broken.png"]
    assert "cannot decode" in summary["skipped"][0]["reason"]

    import open3d as o3d

    allowed = {tuple(c) for c in STUFF_COLORS}
    for entry in summary["images"]:
        stem = os.path.splitext(os.path.basename(entry["input"]))[0]
        height, width = IMAGE_SIZES[stem]
        assert entry["image_size"] == [height, width]
        for kind in ("semantic", "instances", "panoptic", "depth", "pointcloud"):
            assert (out / f"{stem}_{kind}.png").is_file(), (stem, kind)
        assert (out / f"{stem}_pointcloud.ply").is_file()
        for kind in ("semantic", "instances", "panoptic"):
            assert cv2.imread(str(out / f"{stem}_{kind}.png")).shape == (height, width, 3)
        depth_png = cv2.imread(str(out / f"{stem}_depth.png"))
        assert depth_png.shape[1] == width and depth_png.shape[0] > height  # + scale bar
        assert cv2.imread(str(out / f"{stem}_pointcloud.png")).shape == (RENDER[1], RENDER[0], 3)

        # the default K: 60 degrees horizontal field of view, centred principal point
        np.testing.assert_allclose(entry["intrinsics"], intrinsics_from_fov(height, width, 60))
        cloud = o3d.io.read_point_cloud(str(out / f"{stem}_pointcloud.ply"))
        assert len(cloud.points) == entry["num_points"] == height * width  # depth > 0 everywhere
        colors = {tuple(c) for c in np.rint(np.asarray(cloud.colors) * 255).astype(int).tolist()}
        assert colors <= allowed, colors - allowed
        # the points are the predicted depth back-projected with K: z within the depth range
        z = np.asarray(cloud.points)[:, 2]
        lo, hi = entry["depth_range_m"]
        assert lo - 1e-4 <= z.min() and z.max() <= hi + 1e-4


def test_demo_every_image_failing(setup, tmp_path):
    """In-process: with only undecodable inputs the run fails (exit code 1), naming them."""
    sys.path.insert(0, TOOLS)
    try:
        import demo
    finally:
        sys.path.remove(TOOLS)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    (tmp_path / "K.json").write_text(json.dumps({"fx": 50, "fy": 50, "cx": 40, "cy": 30}))
    argv = ["--config-file", setup["config"], "--input", str(bad), "--output", str(tmp_path)]
    argv += ["--intrinsics", str(tmp_path / "K.json"), "MODEL.WEIGHTS", setup["weights"]]
    assert demo.main(argv) == 1
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert summary["num_processed"] == 0 and summary["skipped"][0]["input"] == str(bad)
    assert summary["intrinsics"] == str(tmp_path / "K.json")


# ---------------------------------------------------------------------- visualize_pointcloud
def test_visualize_pointcloud_dataset(setup, runs):
    output = check_run(runs, "pointcloud_dataset")
    assert "rendering headlessly" in output
    image = cv2.imread(str(setup["root"] / "pc_dataset.png"))[:, :, ::-1]
    width, height = PANEL_RENDER
    assert image.shape == (height + TITLE_BAR, 4 * width, 3)  # 4 panels side by side
    panels = [image[TITLE_BAR:, i * width : (i + 1) * width] for i in range(4)]
    assert all(p.reshape(-1, 3).max(0).max() > 60 for p in panels)  # points were drawn
    magenta = np.all(panels[3] == np.array(DISAGREEMENT_COLOR) * 255, axis=-1).sum()
    # random weights: the 2D and 3D predictions disagree somewhere
    assert "2D and 3D labels agree on 100.0%" in output or magenta > 0
    assert all(image[:TITLE_BAR, i * width : (i + 1) * width].max() > 200 for i in range(4))


def test_visualize_pointcloud_ply(setup, runs, tmp_path):
    """In-process (same code path as the command line): one titled panel per PLY file."""
    check_run(runs, "demo")
    sys.path.insert(0, TOOLS)
    try:
        import visualize_pointcloud
    finally:
        sys.path.remove(TOOLS)
    plys = [str(setup["root"] / "demo" / f"{s}_pointcloud.ply") for s in IMAGE_SIZES]
    png = tmp_path / "plys.png"
    argv = ["--ply", *plys, "--headless", "--output", str(png), "--render-size", "80", "60"]
    assert visualize_pointcloud.main(argv) == 0
    assert cv2.imread(str(png)).shape == (60 + TITLE_BAR, 2 * 80, 3)
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        visualize_pointcloud.main(["--ply", str(tmp_path / "missing.ply"), "--headless"])


# ------------------------------------------------------------------------------ plot_metrics
# ---------------------------------------------------------------------------- analyze_model
def test_analyze_model(setup, runs):
    output = check_run(runs, "analyze")
    with open(setup["root"] / "analysis.json") as f:
        report = json.load(f)
    assert report["num_inputs"] == 2 and report["input_sizes"] == [[64, 96], [64, 96]]
    flop = report["flop"]
    assert len(flop["gmacs"]) == 2 and all(g > 0 for g in flop["gmacs"])
    assert {"backbone", "sem_seg_head", "depth_head", "roi_heads"} <= set(flop["by_module"])
    model = build_model(setup["cfg"])
    assert report["parameter"]["total"] == sum(p.numel() for p in model.parameters())
    assert report["activation"]["mactivations_mean"] > 0
    assert report["structure"] == str(model)
    assert "Total GMACs per image" in output and "Total parameters" in output


def test_depth_trend(setup, runs):
    """Per image, the wall's true depth and the model's error there, binned, with the slope;
    written as json and markdown."""
    output = check_run(runs, "depth_trend")
    assert "slope of log predicted against log true depth" in output
    result = json.loads((setup["root"] / "depth_trend" / "depth_trend.json").read_text())
    assert result["class"] == "wall" and result["num_images"] == len(result["per_image"]) > 0
    assert [b["bin"] for b in result["bins"]] == ["0-10m", "10-20m", "over20m"]
    assert sum(b["images"] for b in result["bins"]) == result["num_images"]
    assert all(p["depth"] > 0 for p in result["per_image"])
    pixel_bins = result["pixel_bins"]
    assert [b["bin"] for b in pixel_bins] == ["0-10m", "10-20m", "over20m"]
    assert sum(b["pixels"] for b in pixel_bins) > 0
    assert all(0 <= b["d1"] <= 1 for b in pixel_bins if b["pixels"])
    assert "by their own true depth" in output
    assert (setup["root"] / "depth_trend" / "depth_trend.md").is_file()


def test_plot_metrics(setup, runs):
    output = check_run(runs, "plot_metrics")
    written = sorted(os.listdir(setup["root"] / "plots"))
    assert written == sorted(key_to_filename(k) for k in EXPECTED_KEYS), output
    assert "sem_seg-mIoU.png" in written and "total_loss.png" in written
    for name in written:
        assert cv2.imread(str(setup["root"] / "plots" / name)) is not None, name


def test_curriculum_axis(setup):
    run = load_run(str(setup["root"] / "curriculum"))
    assert [(s.name, s.start, s.length) for s in run.stages] == [
        ("semantic", 0, 10),
        ("instance", 10, 6),
        ("merge", 16, 0),
        ("joint", 16, 4),
    ]
    assert run.series["segm/AP"] == [(15.0, 5.0), (16.0, 5.0)]  # instance end, then merge
    assert run.series["sem_seg/mIoU"] == [(9.0, 20.0), (16.0, 21.0), (19.0, 25.0)]
    assert run.series["loss_cls"][0] == (10.0, 0.5) and run.series["loss_cls"][-1] == (19.0, 0.4)


def test_plot_metrics_missing_or_bad_metrics(setup, tmp_path):
    sys.path.insert(0, TOOLS)
    try:
        import plot_metrics
    finally:
        sys.path.remove(TOOLS)
    (tmp_path / "run" / "semantic").mkdir(parents=True)  # a curriculum stage without metrics
    missing = os.path.join(str(tmp_path / "run" / "semantic"), "metrics.json")
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        load_run(str(tmp_path / "run"))
    assert plot_metrics.main([str(tmp_path / "run"), "--output-dir", str(tmp_path / "p")]) == 1
    assert not (tmp_path / "p").exists()
    with pytest.raises(FileNotFoundError) as info:
        load_metrics_json(missing)
    assert missing in str(info.value)

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text('{"iteration": 0}\nnot json\n{"iteration": 2}\n')
    with pytest.raises(ValueError, match=r"bad.metrics\.json.*line 2"):
        load_run(str(tmp_path / "bad"))
    # a truncated last line (run killed mid-write) is tolerated
    (tmp_path / "bad" / "metrics.json").write_text('{"iteration": 0, "total_loss": 1}\n{"iter')
    assert load_run(str(tmp_path / "bad")).series["total_loss"] == [(0.0, 1.0)]


# ---------------------------------------------------------------------------- building blocks
def test_load_intrinsics_json(tmp_path):
    K = [[500.0, 0.0, 320.0], [0.0, 510.0, 240.0], [0.0, 0.0, 1.0]]
    layouts = {
        "matrix": {"K": K},
        "flat": {"fx": 500, "fy": 510, "cx": 320, "cy": 240},
        "cityscapes": {"extrinsic": {}, "intrinsic": {"fx": 500, "fy": 510, "u0": 320, "v0": 240}},
    }
    for name, data in layouts.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        np.testing.assert_allclose(load_intrinsics_json(str(tmp_path / f"{name}.json")), K)
    (tmp_path / "bad.json").write_text(json.dumps({"fx": 500}))
    with pytest.raises(ValueError, match="bad.json"):
        load_intrinsics_json(str(tmp_path / "bad.json"))
    (tmp_path / "neg.json").write_text(json.dumps({"K": [[-1, 0, 1], [0, 1, 1], [0, 0, 1]]}))
    with pytest.raises(ValueError, match="neg.json"):
        load_intrinsics_json(str(tmp_path / "neg.json"))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_intrinsics_json(str(tmp_path / "nope.json"))


def test_intrinsics_from_fov():
    K = intrinsics_from_fov(480, 640, 90.0)
    np.testing.assert_allclose(K, [[320.0, 0, 319.5], [0, 320.0, 239.5], [0, 0, 1]])
    with pytest.raises(ValueError):
        intrinsics_from_fov(480, 640, 180.0)


def test_predictor_passes_resized_intrinsics(setup):
    predictor = RGBDPredictor(setup["cfg"])  # random weights (MODEL.WEIGHTS empty)
    K = intrinsics_from_fov(64, 80, 60.0)
    inputs = predictor.inputs(np.zeros((64, 80, 3), dtype=np.uint8), K)
    assert tuple(inputs["image"].shape) == (3, 96, 120)  # shortest edge to MIN_SIZE_TEST
    assert (inputs["height"], inputs["width"]) == (64, 80)
    expected = resize_intrinsics(torch.as_tensor(K), 120 / 80, 96 / 64).float()
    torch.testing.assert_close(inputs["intrinsics"], expected)
    assert "intrinsics" not in predictor.inputs(np.zeros((64, 80, 3), dtype=np.uint8))


def test_point_colouring_and_panels():
    colors = label_point_colors(np.array([0, 2, 255, 99]), [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    np.testing.assert_allclose(colors[:2], [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(colors[2:], 0.5)  # ignored and unknown labels are grey
    dis = disagreement_point_colors([1, 2, 3], [1, 0, 3])
    np.testing.assert_allclose(dis[1], DISAGREEMENT_COLOR)
    assert not np.allclose(dis[0], DISAGREEMENT_COLOR)
    tiled = tile_panels(
        [np.zeros((10, 30, 3), np.uint8), np.zeros((12, 20, 3), np.uint8)], ["a", "b"]
    )
    assert tiled.shape == (12 + TITLE_BAR, 50, 3)


def test_display_detection(monkeypatch):
    from panoptic_curriculum.utils.visualization import display_available

    monkeypatch.delenv("DISPLAY", raising=False)
    assert not display_available()
    monkeypatch.setenv("DISPLAY", ":987")  # no X server there: Open3D must not be asked
    assert not display_available()


# ------------------------------------------------------------------------------- train_net
def test_train_net_talks(small_split, tmp_path, capsys):
    """tools/train_net.py (in-process, parsed as from the command line) shows the curriculum's
    own lines on the console and in OUTPUT_DIR/log.txt: stage start, results table, resuming,
    skipping; a re-run with a changed training key exits 2 with the differences and leaves
    OUTPUT_DIR/config.yaml as it was."""
    sys.path.insert(0, TOOLS)
    try:
        import train_net
    finally:
        sys.path.remove(TOOLS)
    out = tmp_path / "run"
    cfg = tiny_curriculum_cfg(small_split, out, "CURRICULUM.STAGES", ["semantic"])
    cfg.merge_from_list(["CURRICULUM.SEMANTIC_ITER", 2, "SOLVER.CHECKPOINT_PERIOD", 1])
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.dump())

    def run(*opts):
        args = train_net.build_parser().parse_args(["--config-file", str(config), *opts])
        with isolated_loggers():
            train_net.main(args)
        console = capsys.readouterr().out
        return console, (out / "log.txt").read_text()

    for text in run():
        assert "[curriculum] stage 1/1 'semantic' (2 iterations)" in text
        assert "[curriculum] results on synthetic_scenes_test_small:" in text
        assert "| semantic |" in text
    # as if killed after the checkpoint of iteration 0
    os.remove(out / "semantic" / "stage_complete.json")
    (out / "semantic" / "last_checkpoint").write_text("model_0000000.pth")
    for text in run():
        assert "Resumed at iteration 1" in text
    for text in run():
        assert "[curriculum] stage 1/1 'semantic' already complete, skipping" in text

    root_config = (out / "config.yaml").read_bytes()
    with pytest.raises(SystemExit) as info:
        run("SOLVER.BASE_LR", repr(cfg.SOLVER.BASE_LR / 2))
    assert info.value.code == 2
    console = capsys.readouterr().out
    log = (out / "log.txt").read_text()
    change = f"SOLVER.BASE_LR: {cfg.SOLVER.BASE_LR!r} (recorded) -> {cfg.SOLVER.BASE_LR / 2!r} (now)"
    for text in (console, log):
        assert change in text
    assert (out / "config.yaml").read_bytes() == root_config


def test_benchmark_train_options_needs_compare(tmp_path):
    """tools/benchmark.py's (e) without the settings to compare, or with a weights file
    that is not there: an error naming the flag, before any model is built."""
    base = [sys.executable, "tools/benchmark.py", "--variants", "train_options"]
    proc = subprocess.run(base, capture_output=True, text=True)
    assert proc.returncode == 2 and "needs --compare" in proc.stderr
    missing = str(tmp_path / "none.pth")
    proc = subprocess.run(
        base + ["--compare", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 64", "--weights", missing],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and f"--weights {missing}: no such file" in proc.stderr
