"""Export of the one-pass network (TorchScript and ONNX, by tracing) and the post-processing
of the exported outputs.

A small randomly initialised model is traced once per format on a 96x128 image and run on
that image and on an 80x120 one (padded inside the network). Stated tolerances, float32 on
the CPU:

* raw outputs, max |exported - eager|: semantic logits 1e-4, depth 1e-4 m, boxes 1e-3 px,
  scores 1e-5, mask probabilities 1e-5; numbers of instances, classes and sizes exact
  (``RAW_ATOL``);
* after post-processing to the original image: logits, depth, boxes and scores as above,
  per-instance depth and centroid 1e-4 m; pasted masks and the panoptic map may differ on at
  most 0.1% of their pixels for onnxruntime (a pixel whose logit or mask probability lies
  within float32 rounding of the decision boundary) and on none for TorchScript.

onnxruntime is a test dependency (the ``export`` extra, which ``scripts/test.sh`` installs):
without it the ONNX cases fail with an error naming the extra; they are never skipped.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import panoptic_curriculum  # noqa: F401  (detectron2 compatibility fixes)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from panoptic_curriculum.engine.predictor import RGBDPredictor, image_inputs
from panoptic_curriculum.export import (
    ExportedModel,
    ExportedPredictor,
    compare_with_eager,
    export_model,
    lift_points,
    postprocess_exported,
    read_export_info,
)
from panoptic_curriculum.geometry import backproject

from model_utils import tiny_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW_ATOL = {
    "sem_seg": 1e-4,
    "depth": 1e-4,
    "instances.pred_boxes": 1e-3,
    "instances.scores": 1e-5,
    "instances.pred_masks": 1e-5,
    "instances.pred_classes": 0.0,
    "instances.image_size": 0.0,
}
OUTPUT_NAMES = [  # the adapter's order: dict keys sorted, Instances fields sorted, then size
    "depth",
    "instances.pred_boxes",
    "instances.pred_classes",
    "instances.pred_masks",
    "instances.scores",
    "instances.image_size",
    "sem_seg",
]
PIXEL_FRACTION = {"torchscript": 0.0, "onnx": 1e-3}
NET_SIZES = [(96, 128), (80, 120)]  # network inputs: traced on the first
ORIGINAL_SIZES = [(72, 96), (100, 150)]  # predictor inputs, resized to 96 rows
MAX_DETECTIONS = 20


def K_of(h, w, f=80.0):
    return torch.tensor([[f, 0.0, (w - 1) / 2], [0.0, f * 1.02, (h - 1) / 2 + 3], [0, 0, 1]])


def bgr_image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def net_input(h, w, seed):
    return torch.from_numpy(bgr_image(h, w, seed).transpose(2, 0, 1).copy()).float()


def small_cfg(*overrides):
    return tiny_cfg(
        os.path.join(REPO, "configs", "synthetic", "curriculum_R18_FPN.yaml"),
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        0.36,  # with the initialisation below: a few detections, not the 20 of the cap
        "MODEL.PANOPTIC_CURRICULUM.PANOPTIC_INSTANCES_CONFIDENCE_THRESH",
        0.3,
        "TEST.DETECTIONS_PER_IMAGE",
        MAX_DETECTIONS,
        "INPUT.MIN_SIZE_TEST",
        96,
        "INPUT.MAX_SIZE_TEST",
        160,
        # the anchors the score threshold above was chosen with (the synthetic config's own
        # small-object anchors give this random model other detections); the instance
        # adapter stays on, so that it is exported too
        "MODEL.ANCHOR_GENERATOR.SIZES",
        [[16], [32], [64], [128], [256]],
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
        [[0.5, 1.0, 2.0]],
        *overrides,
    )


def spread_predictions(model):
    """Random predictor weights large enough that scores, mask probabilities and depth vary
    across boxes and pixels far more than float32 rounding (so that exported and eager runs
    keep the same detections and order)."""
    torch.manual_seed(1)
    with torch.no_grad():
        torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.1)
        torch.nn.init.normal_(model.roi_heads.mask_head.predictor.weight, std=0.1)
        torch.nn.init.normal_(model.depth_head.predictor.weight, std=0.1)
    return model


@pytest.fixture(scope="module")
def cfg_model():
    cfg = small_cfg()
    torch.manual_seed(0)
    return cfg, spread_predictions(build_model(cfg).eval())


@pytest.fixture(scope="module", params=["torchscript", "onnx"])
def exported(request, cfg_model, tmp_path_factory):
    cfg, model = cfg_model
    out = tmp_path_factory.mktemp(f"export_{request.param}")
    image, K = net_input(*NET_SIZES[0], 0), K_of(*NET_SIZES[0])
    path = export_model(model, cfg, image, K, str(out), request.param)
    return request.param, path, ExportedModel(path)


def assert_close(a, b, atol, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    if a.numel():
        diff = float((a.double() - b.double()).abs().max())
        assert diff <= atol, f"{what}: max |exported - eager| = {diff:.3g} > {atol}"


def test_raw_outputs_match_eager_on_two_sizes(exported, cfg_model):
    fmt, path, net = exported
    _, model = cfg_model
    assert net.format == fmt and net.output_names == OUTPUT_NAMES
    if fmt == "onnx":
        import onnx

        onnx.checker.check_model(path, full_check=True)
    assert [i["name"] for i in net.info["inputs"]] == ["image", "intrinsics"]
    counts = []
    for seed, (h, w) in enumerate(NET_SIZES):
        image, K = net_input(h, w, seed), K_of(h, w)
        diffs, out = compare_with_eager(model, net, image, K)
        for name, atol in RAW_ATOL.items():
            assert diffs[name] <= atol, f"{fmt} {h}x{w} {name}: {diffs[name]:.3g} > {atol}"
        assert out["sem_seg"].shape == (7, h, w) and out["depth"].shape == (h, w)
        assert out["instances.image_size"].tolist() == [h, w]
        assert bool((out["depth"] > 0).all())
        n = out["instances.scores"].shape[0]
        assert out["instances.pred_masks"].shape == (n, 1, 28, 28)
        counts.append(n)
    # detections on both images, and a count set by the scores, not by the cap
    assert min(counts) > 0 and min(counts) < MAX_DETECTIONS, counts


def test_postprocessed_outputs_match_model_inference(exported, cfg_model):
    """ExportedPredictor (resize, exported network, post-processing) gives what the model's
    own inference gives at the original size."""
    fmt, _, net = exported
    cfg, model = cfg_model
    predictor = ExportedPredictor(net)
    aug = T.ResizeShortestEdge([96, 96], 160)
    for seed, (h, w) in enumerate(ORIGINAL_SIZES):
        image, K = bgr_image(h, w, 10 + seed), K_of(h, w, f=60.0).numpy()
        got = predictor(image, K)
        with torch.no_grad():
            ref = model([image_inputs(image, K, aug, cfg.INPUT.FORMAT)])[0]
        assert set(got) == {"sem_seg", "depth", "instances", "panoptic_seg"}
        assert_close(got["sem_seg"], ref["sem_seg"], 1e-4, "sem_seg")
        assert_close(got["depth"], ref["depth"], 1e-4, "depth")
        gi, ri = got["instances"], ref["instances"]
        assert len(gi) == len(ri) > 0 and gi.image_size == ri.image_size == (h, w)
        assert torch.equal(gi.pred_classes, ri.pred_classes)
        assert_close(gi.pred_boxes.tensor, ri.pred_boxes.tensor, 1e-3, "boxes")
        assert_close(gi.scores, ri.scores, 1e-5, "scores")
        assert_close(gi.pred_depth, ri.pred_depth, 1e-4, "pred_depth")
        assert_close(gi.pred_centroid, ri.pred_centroid, 1e-4, "pred_centroid")
        assert gi.pred_masks.shape == ri.pred_masks.shape == (len(ri), h, w)
        assert (gi.pred_masks != ri.pred_masks).float().mean() <= PIXEL_FRACTION[fmt]
        (gp, gseg), (rp, rseg) = got["panoptic_seg"], ref["panoptic_seg"]
        assert (gp != rp).float().mean() <= PIXEL_FRACTION[fmt]
        assert [s["category_id"] for s in gseg] == [s["category_id"] for s in rseg]
        assert any(s["isthing"] for s in rseg) and any(not s["isthing"] for s in rseg)


def _without_detections(fmt, path, model, folder):
    """A copy of the export whose box classifier always prefers background."""
    bias = model.roi_heads.box_predictor.cls_score.bias.detach()
    shutil.copytree(os.path.dirname(path), folder)
    if fmt == "torchscript":
        net = ExportedModel(str(folder))
        with torch.no_grad():
            net._ts.model.model.roi_heads.box_predictor.cls_score.bias[-1] += 50.0
        return net
    import onnx
    from onnx import numpy_helper

    onnx_path = os.path.join(folder, "model.onnx")
    proto = onnx.load(onnx_path)
    found = 0
    for init in proto.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.shape == tuple(bias.shape) and np.array_equal(value, bias.numpy()):
            value = value.copy()
            value[-1] += 50.0
            init.CopyFrom(numpy_helper.from_array(value, init.name))
            found += 1
    assert found == 1, f"the classifier bias is {found} initializers of {onnx_path}"
    onnx.save(proto, onnx_path)
    return ExportedModel(str(folder))


def test_exported_network_without_detections(exported, cfg_model, tmp_path):
    """Traced with detections, run where there are none: empty outputs, stuff-only
    panoptic segmentation."""
    fmt, path, _ = exported
    _, model = cfg_model
    net = _without_detections(fmt, path, model, tmp_path / "no_detections")
    h, w = NET_SIZES[1]
    K = K_of(h, w)
    out = net(net_input(h, w, 1), K)
    assert out["instances.scores"].shape == (0,)
    assert out["instances.pred_boxes"].shape == (0, 4)
    assert out["instances.pred_masks"].shape == (0, 1, 28, 28)
    r = postprocess_exported(out, net.info, 2 * h, 2 * w, K)
    assert len(r["instances"]) == 0 and r["instances"].pred_masks.shape == (0, 2 * h, 2 * w)
    assert r["instances"].pred_centroid.shape == (0, 3)
    assert r["panoptic_seg"][1] and not any(s["isthing"] for s in r["panoptic_seg"][1])


def test_export_info_and_input_errors(exported):
    fmt, path, net = exported
    info = read_export_info(path)
    assert info["format"] == fmt and info["export_method"] == "tracing"
    assert info["camera_aware"] is True and info["input_format"] == "BGR"
    assert info["min_size_test"] == 96 and info["max_size_test"] == 160
    post = info["postprocess"]
    assert post["thing_to_sem"] == [0, 1, 2, 3] and post["no_surface_classes"] == [6]
    assert post["score_threshold"] == pytest.approx(0.3)
    assert [o["name"] for o in info["outputs"]] == OUTPUT_NAMES
    image = net_input(64, 64, 0)
    with pytest.raises(ValueError, match="camera-aware"):
        net(image)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        net(image[0], K_of(64, 64))
    with pytest.raises(ValueError, match="intrinsics must be"):
        net(image, torch.eye(4))


def test_export_argument_errors(cfg_model, tmp_path):
    cfg, model = cfg_model
    image, K = net_input(64, 64, 0), K_of(64, 64)
    with pytest.raises(ValueError, match="export format"):
        export_model(model, cfg, image, K, str(tmp_path), "caffe2")
    with pytest.raises(ValueError, match="export method"):
        export_model(model, cfg, image, K, str(tmp_path), "onnx", method="scripting")
    with pytest.raises(ValueError, match="opset >= 16"):
        export_model(model, cfg, image, K, str(tmp_path), "onnx", opset=11)
    with pytest.raises(ValueError, match="needs intrinsics"):
        export_model(model, cfg, image, None, str(tmp_path), "torchscript")
    with pytest.raises(FileNotFoundError, match="export_info.json"):
        ExportedModel(str(tmp_path))


def test_missing_onnx_packages_name_the_extra(cfg_model, tmp_path, monkeypatch):
    cfg, model = cfg_model
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="PANOPTIC_EXTRAS=export"):
        export_model(model, cfg, net_input(64, 64, 0), K_of(64, 64), str(tmp_path), "onnx")
    info = {"format": "onnx", "model_file": "model.onnx", "inputs": [], "outputs": []}
    (tmp_path / "export_info.json").write_text(json.dumps(info))
    with pytest.raises(ImportError, match="needs onnxruntime.*PANOPTIC_EXTRAS=export"):
        ExportedModel(str(tmp_path))


def test_depth_head_without_camera_input(tmp_path):
    """A depth head that ignores K: the exported network takes the image only; without
    intrinsics the post-processing cannot lift points. (Instance branch off: the smallest
    export with another input set.)"""
    cfg = small_cfg(
        "MODEL.DEPTH_HEAD.CANONICAL_FOCAL",
        0.0,
        "MODEL.DEPTH_HEAD.CAMERA_COORDS",
        False,
        "MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON",
        False,
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = export_model(model, cfg, net_input(64, 96, 0), None, str(tmp_path), "torchscript")
    net = ExportedModel(path)
    assert [i["name"] for i in net.info["inputs"]] == ["image"] and not net.camera_aware
    assert net.output_names == ["depth", "sem_seg"]
    image = net_input(72, 100, 1)
    diffs, out = compare_with_eager(model, net, image, K_of(72, 100))  # K is ignored
    # eager inference evaluates the DeepLab decoder factorised (same logits up to float
    # rounding); the traced graph runs the plain convolutions
    assert set(diffs) == {"depth", "sem_seg"} and max(diffs.values()) <= 1e-5, diffs
    r = postprocess_exported(out, net.info, 144, 200)
    assert set(r) == {"sem_seg", "depth"} and r["depth"].shape == (144, 200)
    with pytest.raises(ValueError, match="needs the depth output and the intrinsics"):
        postprocess_exported(out, net.info, with_points=True)


def test_lift_points():
    depth = torch.tensor([[2.0, 0.0, 3.0], [4.0, 5.0, float("nan")]])
    labels = torch.tensor([[1, 1, 6], [2, 1, 1]])
    K = torch.tensor([[10.0, 0.0, 1.0], [0.0, 12.0, 0.5], [0.0, 0.0, 1.0]])
    out = lift_points(depth, K, labels, skip_classes=[6])
    # kept: (u, v) = (0, 0), (0, 1), (1, 1); dropped: zero depth, class 6, NaN
    assert out["pixels"].tolist() == [[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    assert out["labels_2d"].tolist() == [1, 2, 1]
    full = backproject(torch.nan_to_num(depth)[None], K[None])[0]
    assert torch.allclose(out["points"], full[[0, 1, 1], [0, 0, 1]])
    assert torch.allclose(
        out["points"][2], torch.tensor([(1 - 1.0) / 10 * 5, (1 - 0.5) / 12 * 5, 5.0])
    )
    assert "labels_2d" not in lift_points(depth, K)


def test_postprocessed_point_cloud(exported, cfg_model):
    """with_points: one point per pixel with depth whose predicted class is not sky (6)."""
    predictor = ExportedPredictor(exported[2])
    h, w = ORIGINAL_SIZES[0]
    image, K = bgr_image(h, w, 3), K_of(h, w, f=60.0).numpy()
    r = predictor(image, K, with_points=True)
    pc, labels = r["point_cloud"], r["sem_seg"].argmax(0)
    assert pc["points"].shape == (int((labels != 6).sum()), 3)
    u, v = pc["pixels"].long().unbind(-1)
    assert torch.equal(pc["labels_2d"], labels[v, u])
    assert torch.allclose(pc["points"][:, 2], r["depth"][v, u])
    with pytest.raises(ValueError, match="intrinsics K"):
        predictor(image)


def test_export_tool(tmp_path):
    """tools/export_model.py: loads MODEL.WEIGHTS, traces on a rendered synthetic scene,
    writes the ONNX network and its info, verifies it against eager PyTorch; the export then
    reproduces RGBDPredictor with the same weights."""
    cfg = small_cfg("MODEL.DEVICE", "cpu")
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.dump())
    torch.manual_seed(3)
    model = spread_predictions(build_model(cfg))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("weights")
    weights = str(tmp_path / "weights.pth")
    out = tmp_path / "export"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(REPO, "projects")] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "export_model.py"),
        "--config-file",
        str(config),
        "--format",
        "onnx",
        "--output",
        str(out),
        "--verify",
        "MODEL.WEIGHTS",
        weights,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["export_info.json", "model.onnx", "verify.json"]
    report = json.loads((out / "verify.json").read_text())
    assert report["passed"] and report["sample"].startswith("synthetic scene 96x128")
    assert set(report["max_abs_diff"]) == set(OUTPUT_NAMES)

    eager = RGBDPredictor(small_cfg("MODEL.WEIGHTS", weights))
    image, K = bgr_image(90, 120, 7), K_of(90, 120, f=70.0).numpy()
    got, ref = ExportedPredictor(str(out))(image, K), eager(image, K)
    assert_close(got["sem_seg"], ref["sem_seg"], 1e-4, "sem_seg")
    assert_close(got["depth"], ref["depth"], 1e-4, "depth")
    assert len(got["instances"]) == len(ref["instances"])
    assert_close(got["instances"].scores, ref["instances"].scores, 1e-5, "scores")

    with pytest.raises(ValueError, match="camera-aware"):
        ExportedPredictor(str(out))(image)


def test_export_tool_arguments(capsys):
    spec = importlib.util.spec_from_file_location(
        "export_model_tool", os.path.join(REPO, "tools", "export_model.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    config = os.path.join(REPO, "configs", "synthetic", "curriculum_R18_FPN.yaml")
    common = ["--config-file", config, "--output", "unused"]
    assert tool.main(common + ["--format", "onnx", "--intrinsics", "K.json"]) == 2
    captured = capsys.readouterr()
    assert "give both or neither" in captured.out + captured.err
    with pytest.raises(SystemExit):
        tool.parse_args(common + ["--format", "caffe2"])
    with pytest.raises(SystemExit):
        tool.parse_args(common + ["--format", "onnx", "--export-method", "scripting"])
