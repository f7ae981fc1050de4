"""Tests of panoptic_curriculum.evaluation.DepthEvaluator on tiny hand-made depth PNGs
("png_mm": uint16 millimetres) with analytic or hand-computed metric values, plus one
two-process (gloo) run checking that distributed gathering gives the single-process result."""

import json
import math
import os
import pickle
from datetime import timedelta

import cv2
import numpy as np
import pytest
import torch

import panoptic_curriculum  # noqa: F401  (detectron2 compatibility fixes, dataset registration)
from panoptic_curriculum.data.depth_io import encode_depth_png_mm
from panoptic_curriculum.evaluation import DepthEvaluator

METRICS = ("AbsRel", "SqRel", "RMSE", "RMSE_log", "d1", "d2", "d3")


def make_dict(tmp_path, name, depth_m):
    """Write ``depth_m`` ([H, W] metres, 0 invalid) as a png_mm file; return its dataset dict."""
    depth_m = np.asarray(depth_m, dtype=np.float64)
    path = os.path.join(str(tmp_path), f"{name}_depth.png")
    assert cv2.imwrite(path, encode_depth_png_mm(depth_m))
    h, w = depth_m.shape
    return {
        "file_name": os.path.join(str(tmp_path), f"{name}.png"),
        "depth_file_name": path,
        "depth_format": "png_mm",
        "height": h,
        "width": w,
    }


def run_eval(dicts, preds, **kwargs):
    """Single-process evaluation of ``dicts`` with predictions ``preds`` ([H, W] metres each)."""
    ev = DepthEvaluator("test", distributed=False, **kwargs)
    ev.reset()
    for d, p in zip(dicts, preds):
        out = {} if p is None else {"depth": torch.as_tensor(p, dtype=torch.float32)}
        ev.process([d], [out])
    return ev.evaluate()


GT_A = np.array([[2.0, 4.0, 5.0], [10.0, 1.5, 3.0]])


def test_perfect_prediction(tmp_path):
    d = make_dict(tmp_path, "a", GT_A)
    res = run_eval([d], [GT_A])["depth"]
    for m in ("AbsRel", "SqRel", "RMSE", "RMSE_log"):
        assert res[m] == pytest.approx(0.0, abs=1e-6)
    assert res["d1"] == res["d2"] == res["d3"] == 1.0
    assert res["num_images"] == 1 and res["num_images_skipped"] == 0


def test_scaled_prediction_analytic(tmp_path):
    d = make_dict(tmp_path, "a", GT_A)
    res = run_eval([d], [1.1 * GT_A])
    g = GT_A.ravel()
    expected = {
        "AbsRel": 0.1,
        "SqRel": 0.01 * g.mean(),
        "RMSE": 0.1 * math.sqrt((g**2).mean()),
        "RMSE_log": math.log(1.1),
        "d1": 1.0,
        "d2": 1.0,
        "d3": 1.0,
    }
    for task in ("depth", "depth_pooled"):  # one image: both conventions agree
        for m, v in expected.items():
            assert res[task][m] == pytest.approx(v, rel=1e-5), (task, m)


def test_delta_thresholds_and_per_image_vs_pooled(tmp_path):
    # image A: 4 valid pixels at 2 m, one predicted 1.3x (ratio 1.3: fails d1, passes d2)
    gt_a = np.full((2, 2), 2.0)
    pred_a = np.array([[2.0, 2.0], [2.0, 2.6]])
    # image B: 1 valid pixel at 4 m predicted 7.6 m (ratio 1.9: only d3); others invalid GT
    gt_b = np.array([[4.0, 0.0], [0.0, 0.0]])
    pred_b = np.array([[7.6, 100.0], [5.0, 5.0]])
    dicts = [make_dict(tmp_path, "a", gt_a), make_dict(tmp_path, "b", gt_b)]
    res = run_eval(dicts, [pred_a, pred_b])

    per_image = res["depth"]  # average of per-image metrics
    assert per_image["d1"] == pytest.approx((0.75 + 0.0) / 2)
    assert per_image["d2"] == pytest.approx((1.0 + 0.0) / 2)
    assert per_image["d3"] == pytest.approx(1.0)
    assert per_image["AbsRel"] == pytest.approx((0.3 / 4 + 0.9) / 2, rel=1e-5)
    assert per_image["SqRel"] == pytest.approx((0.18 / 4 + 3.24) / 2, rel=1e-5)
    assert per_image["RMSE"] == pytest.approx((0.3 + 3.6) / 2, rel=1e-5)
    rmse_log_a = math.sqrt(math.log(1.3) ** 2 / 4)
    assert per_image["RMSE_log"] == pytest.approx((rmse_log_a + math.log(1.9)) / 2, rel=1e-5)
    assert per_image["num_images"] == 2

    pooled = res["depth_pooled"]  # every valid pixel weighs the same (5 pixels)
    assert pooled["num_pixels"] == 5
    assert pooled["d1"] == pytest.approx(3 / 5)
    assert pooled["d2"] == pytest.approx(4 / 5)
    assert pooled["d3"] == pytest.approx(1.0)
    assert pooled["AbsRel"] == pytest.approx((0.3 + 0.9) / 5, rel=1e-5)
    assert pooled["SqRel"] == pytest.approx((0.18 + 3.24) / 5, rel=1e-5)
    assert pooled["RMSE"] == pytest.approx(math.sqrt((0.36 + 12.96) / 5), rel=1e-5)
    log_sq = math.log(1.3) ** 2 + math.log(1.9) ** 2
    assert pooled["RMSE_log"] == pytest.approx(math.sqrt(log_sq / 5), rel=1e-5)


def test_invalid_gt_ignored_and_predictions_clamped(tmp_path):
    # GT: 0 (invalid), 60 m (> max_depth 50), 0.5 m (< min_depth 1), then valid 10 m pixels
    gt = np.array([[0.0, 60.0, 0.5], [10.0, 10.0, 10.0]])
    wild = np.array([[1e6, -5.0, float("nan")], [10.0, 10.0, 10.0]])
    res = run_eval([make_dict(tmp_path, "a", gt)], [wild], min_depth=1.0, max_depth=50.0)
    assert res["depth"]["AbsRel"] == pytest.approx(0.0, abs=1e-6)
    assert res["depth"]["d1"] == 1.0
    assert res["depth_pooled"]["num_pixels"] == 3

    # predictions are clamped to [min_depth, max_depth]: 200 -> 50, 0 -> 1 (finite log)
    gt2 = np.array([[10.0, 2.0]])
    pred2 = np.array([[200.0, 0.0]])
    res2 = run_eval([make_dict(tmp_path, "b", gt2)], [pred2], min_depth=1.0, max_depth=50.0)
    assert res2["depth"]["AbsRel"] == pytest.approx((4.0 + 0.5) / 2, rel=1e-5)
    assert res2["depth"]["RMSE_log"] == pytest.approx(
        math.sqrt((math.log(5.0) ** 2 + math.log(0.5) ** 2) / 2), rel=1e-5
    )
    assert res2["depth"]["d3"] == 0.0


def test_wrong_prediction_size_names_the_file(tmp_path):
    d = make_dict(tmp_path, "sized", GT_A)
    ev = DepthEvaluator("test", distributed=False)
    with pytest.raises(ValueError, match=r"sized_depth\.png.*\(3, 3\).*\(2, 3\)"):
        ev.process([d], [{"depth": torch.ones(3, 3)}])


def test_inputs_without_depth_and_without_valid_pixels_are_skipped(tmp_path):
    good = make_dict(tmp_path, "good", GT_A)
    empty = make_dict(tmp_path, "empty", np.zeros((2, 3)))
    coco = {"file_name": "coco.jpg", "height": 2, "width": 3}
    res = run_eval([coco, good, empty, coco], [None, GT_A, GT_A, None])["depth"]
    assert res["num_images"] == 1
    assert res["num_images_skipped"] == 1
    assert res["num_images_no_depth"] == 2
    assert res["AbsRel"] == pytest.approx(0.0, abs=1e-6)


def test_no_depth_at_all_returns_empty(caplog):
    coco = {"file_name": "coco.jpg", "height": 2, "width": 3}
    with caplog.at_level("WARNING"):
        assert run_eval([coco, coco], [None, None]) == {}
    assert "no image has ground-truth depth" in caplog.text


def test_output_json_written_atomically(tmp_path):
    out = tmp_path / "out"
    d = make_dict(tmp_path, "a", GT_A)
    res = run_eval([d], [1.1 * GT_A], output_dir=str(out))
    assert os.listdir(out) == ["depth_evaluation.json"]  # no temp file left behind
    payload = json.loads((out / "depth_evaluation.json").read_text())
    assert payload["results"]["depth"]["AbsRel"] == pytest.approx(res["depth"]["AbsRel"])
    assert len(payload["per_image"]) == 1
    assert payload["per_image"][0]["depth_file_name"] == d["depth_file_name"]
    assert payload["per_image"][0]["AbsRel"] == pytest.approx(0.1, rel=1e-5)


def _dist_worker(rank, init_file, dicts, preds, result_file):
    """One of two gloo processes: evaluate every other image, rank 0 pickles the result."""
    import faulthandler

    import torch.distributed as dist
    from detectron2.utils import comm

    from panoptic_curriculum.engine.launch import release_process_groups

    # a native crash (e.g. SIGABRT in the communication library) leaves its stack here
    trace = open(f"{result_file}.rank{rank}.trace", "w")
    faulthandler.enable(file=trace)
    dist.init_process_group(
        backend="gloo",
        init_method=f"file://{init_file}",
        world_size=2,
        rank=rank,
        timeout=timedelta(seconds=60),
    )
    comm._LOCAL_PROCESS_GROUP = dist.new_group([0, 1])  # as detectron2's launch() does
    try:
        ev = DepthEvaluator("test", distance_bins=(0, 5, 10, 20))  # distributed by default
        ev.reset()
        for d, p in list(zip(dicts, preds))[rank::2]:
            out = {} if p is None else {"depth": torch.as_tensor(p, dtype=torch.float32)}
            ev.process([d], [out])
        res = ev.evaluate()
        if rank == 0:
            with open(result_file, "wb") as f:
                pickle.dump(res, f)
        else:
            assert res is None
        comm.synchronize()
    finally:
        release_process_groups()


def test_two_process_gather_matches_single_process(tmp_path):
    rng = np.random.default_rng(0)
    dicts, preds = [], []
    for i in range(5):
        gt = np.round(rng.uniform(0.5, 30.0, size=(4, 5)), 3)
        gt[rng.random((4, 5)) < 0.3] = 0.0  # different valid counts per image
        dicts.append(make_dict(tmp_path, f"img{i}", gt))
        dicts[-1]["intrinsics"] = torch.tensor([[100.0 + 10 * i, 0, 2], [0, 100, 1.5], [0, 0, 1]])
        preds.append(gt * rng.uniform(0.7, 1.4, size=gt.shape) + 0.1)
    dicts.append({"file_name": "coco.jpg", "height": 4, "width": 5})  # no depth
    preds.append(None)
    # every distance bin populated (ground truth up to 30 m): no NaN, so == compares all
    expected = run_eval(dicts, preds, distance_bins=(0, 5, 10, 20))
    assert not any(math.isnan(v) for v in expected["depth_diagnostics"].values())
    assert expected["depth_diagnostics"]["num_images_fx100-113.3"] == 2

    result_file = str(tmp_path / "rank0.pkl")
    try:
        torch.multiprocessing.spawn(
            _dist_worker,
            args=(str(tmp_path / "dist_init"), dicts, preds, result_file),
            nprocs=2,
            join=True,
        )
    except torch.multiprocessing.ProcessExitedException as e:
        traces = {
            r: open(f"{result_file}.rank{r}.trace").read() for r in range(2)
            if os.path.isfile(f"{result_file}.rank{r}.trace")
        }
        raise AssertionError(f"{e}; native stack traces by rank: {traces}") from e
    with open(result_file, "rb") as f:
        got = pickle.load(f)
    assert got == expected
    assert got["depth"]["num_images"] == 5 and got["depth"]["num_images_no_depth"] == 1


# ---------------------------------------------------------------- diagnostics
# image A: one pixel per distance bin (two in 0-5 m), known ratios pred/gt
GT_DIAG = np.array([[2.0, 4.0, 8.0], [16.0, 32.0, 64.0]])
RATIO_DIAG = np.array([[1.1, 1.1, 2.0], [0.5, 1.0, 1.3]])


def test_diagnostics_known_answers(tmp_path):
    a = make_dict(tmp_path, "a", GT_DIAG)
    # the mapped input is twice as wide as the original: its K was scaled by 2 with it
    a["image"] = torch.zeros(3, 4, 6, dtype=torch.uint8)
    a["intrinsics"] = torch.tensor([[200.0, 0, 2.5], [0, 200, 1.5], [0, 0, 1]])
    b = make_dict(tmp_path, "b", np.full((2, 2), 3.0))  # everything predicted twice as far
    b["intrinsics"] = torch.tensor([[300.0, 0, 1], [0, 300, 1], [0, 0, 1]])
    res = run_eval(
        [a, b],
        [GT_DIAG * RATIO_DIAG, np.full((2, 2), 6.0)],
        max_depth=100.0,
        focal_bins=(0, 200),
        near_far_threshold=10.0,
    )
    diag = res["depth_diagnostics"]
    approx = lambda v: pytest.approx(v, rel=1e-5, abs=1e-9)  # noqa: E731
    # distance bins pool the pixels of both images (b's four 3 m pixels are in 0-5 m)
    assert diag["AbsRel_0-5m"] == approx((0.1 + 0.1 + 4 * 1.0) / 6)
    assert diag["d1_0-5m"] == approx(2 / 6)
    assert diag["log_ratio_0-5m"] == approx((2 * math.log(1.1) + 4 * math.log(2)) / 6)
    assert diag["frac_0-5m"] == approx(6 / 10)
    assert diag["AbsRel_5-10m"] == approx(1.0) and diag["d1_5-10m"] == 0.0
    assert diag["log_ratio_10-20m"] == approx(math.log(0.5))
    assert diag["AbsRel_20-40m"] == approx(0.0) and diag["d1_20-40m"] == 1.0
    assert diag["AbsRel_over40m"] == approx(0.3) and diag["d1_over40m"] == 0.0
    assert diag["frac_over40m"] == approx(1 / 10)
    # near (< 10 m): a's 2, 4, 8 m and b's four pixels; far: a's 16, 32, 64 m
    assert diag["AbsRel_near"] == approx((0.1 + 0.1 + 1.0 + 4 * 1.0) / 7)
    assert diag["AbsRel_far"] == approx((0.5 + 0.0 + 0.3) / 3)
    assert diag["d1_far"] == approx(1 / 3)
    # scale: per-image median ratio 1.1 (a: mean of the middle two of 0.5 1 1.1 1.1 1.3 2)
    # and 2 (b)
    assert diag["scale_log_mean"] == approx((math.log(1.1) + math.log(2)) / 2)
    assert diag["scale_log_std"] == approx((math.log(2) - math.log(1.1)) / 2)
    assert diag["scale_ratio"] == approx(math.sqrt(1.1 * 2))
    r = np.log(RATIO_DIAG.ravel())
    mse_a, var_a = (r**2).mean(), r.var()
    mse_b = math.log(2) ** 2  # b: all scale, no shape
    assert diag["log_mse"] == approx((mse_a + mse_b) / 2)
    assert diag["log_var"] == approx(var_a / 2)
    assert diag["log_scale_sq"] == approx((r.mean() ** 2 + mse_b) / 2)
    assert diag["log_var"] + diag["log_scale_sq"] == approx(diag["log_mse"])
    assert diag["scale_share"] == approx(diag["log_scale_sq"] / diag["log_mse"])
    # median scaling removes b's error entirely; a's scaled ratios are RATIO / 1.1
    q = RATIO_DIAG.ravel() / 1.1
    d1_a = float((np.maximum(q, 1 / q) < 1.25).mean())
    assert d1_a == pytest.approx(4 / 6)
    assert diag["d1_median_scaled"] == approx((d1_a + 1.0) / 2)
    assert diag["AbsRel_median_scaled"] == approx((np.abs(q - 1).mean() + 0.0) / 2)
    # focal bins: a's original fx is 200 * 3 / 6 = 100 (in 0-200), b's 300 (> 200)
    assert diag["num_images_fx0-200"] == 1 and diag["num_images_fxover200"] == 1
    assert diag["AbsRel_fx0-200"] == approx(np.abs(RATIO_DIAG - 1).mean())
    assert diag["AbsRel_fxover200"] == approx(1.0)
    assert diag["scale_log_mean_fxover200"] == approx(math.log(2))
    assert diag["num_images_without_fx"] == 0
    # the headline task is unchanged by the diagnostics
    assert res["depth"]["num_images"] == 2


def test_diagnostics_empty_bins_nan_and_flat_keys(tmp_path):
    from detectron2.evaluation.testing import flatten_results_dict

    res = run_eval([make_dict(tmp_path, "a", GT_A)], [GT_A])  # 1.5-10 m only, no K
    diag = res["depth_diagnostics"]
    assert math.isnan(diag["AbsRel_over40m"]) and diag["frac_over40m"] == 0.0
    assert diag["num_images_without_fx"] == 1
    assert not any(k.startswith("num_images_fx") for k in diag)
    flat = flatten_results_dict(res)  # what the EvalHook writes to metrics.json
    assert flat["depth_diagnostics/d1_0-5m"] == 1.0
    assert all(isinstance(v, float) or isinstance(v, int) for v in flat.values())


def test_diagnostics_tertile_focal_bins_and_log_table(tmp_path, caplog):
    dicts, preds = [], []
    for i, fx in enumerate((100.0, 110.0, 120.0, 130.0, 140.0, 150.0)):
        d = make_dict(tmp_path, f"f{i}", GT_A)
        d["intrinsics"] = torch.tensor([[fx, 0, 1], [0, fx, 1], [0, 0, 1]])
        dicts.append(d)
        preds.append(GT_A * (1.0 + 0.1 * i))  # error grows with fx
    with caplog.at_level("INFO"):
        diag = run_eval(dicts, preds)["depth_diagnostics"]
    names = [k[len("num_images_") :] for k in diag if k.startswith("num_images_fx")]
    assert names == ["fx100-116.7", "fx116.7-133.3", "fx133.3-150"]
    assert [diag[f"num_images_{n}"] for n in names] == [2, 2, 2]
    assert diag["AbsRel_fx133.3-150"] == pytest.approx(0.45, rel=1e-5)
    assert "by ground-truth distance" in caplog.text and "by focal length" in caplog.text
    assert "scale vs shape" in caplog.text


def test_diagnostics_bad_bins_raise():
    with pytest.raises(ValueError, match="distance_bins.*increasing"):
        DepthEvaluator("x", distance_bins=(0, 10, 5))
    with pytest.raises(ValueError, match="focal_bins"):
        DepthEvaluator("x", focal_bins=[])
    with pytest.raises(ValueError, match="near_far_threshold"):
        DepthEvaluator("x", near_far_threshold=0)


def test_diagnostics_per_class_known_answers(tmp_path, caplog):
    """Depth error grouped by the ground-truth class of each pixel (the label map given by
    ``sem_seg_file_name``); the ignore label and images without a usable map count in no
    class, a map of the wrong size is reported."""
    gt = np.array([[2.0, 4.0, 20.0], [2.0, 4.0, 20.0]])
    pred = np.array([[2.0, 4.4, 10.0], [2.0, 4.4, 10.0]])  # class 0 exact, 1 +10 %, 2 -50 %
    labels = np.array([[0, 1, 2], [0, 255, 2]], dtype=np.uint8)  # one class-1 pixel ignored
    a = make_dict(tmp_path, "a", gt)
    a["sem_seg_file_name"] = os.path.join(str(tmp_path), "a_sem.png")
    assert cv2.imwrite(a["sem_seg_file_name"], labels)
    b = make_dict(tmp_path, "b", gt)  # no label map: in the distance bins, in no class
    c = make_dict(tmp_path, "c", gt)
    c["sem_seg_file_name"] = os.path.join(str(tmp_path), "c_sem.png")
    assert cv2.imwrite(c["sem_seg_file_name"], np.zeros((3, 3), np.uint8))
    with caplog.at_level("INFO"):
        res = run_eval([a, b, c], [pred, pred, pred], class_names=["near", "mid", "far wall"])
    diag = res["depth_diagnostics"]
    approx = lambda v: pytest.approx(v, rel=1e-5, abs=1e-9)  # noqa: E731
    assert diag["AbsRel_cls-near"] == approx(0.0) and diag["d1_cls-near"] == 1.0
    assert diag["AbsRel_cls-mid"] == approx(0.1) and diag["d1_cls-mid"] == 1.0
    wall = "cls-far_wall"  # a name with a space, as a tensorboard tag accepts it
    assert diag[f"log_ratio_{wall}"] == approx(math.log(0.5)) and diag[f"d1_{wall}"] == 0.0
    assert diag["frac_cls-near"] == approx(2 / 5) and diag["frac_cls-mid"] == approx(1 / 5)
    assert diag["frac_0-5m"] == approx(12 / 18)  # all three images in the distance bins
    assert "by ground-truth class" in caplog.text
    assert "c_sem.png" in caplog.text and "differ in size" in caplog.text
    # without class names: no per-class keys, label maps unread
    assert not any("cls-" in k for k in run_eval([a], [pred])["depth_diagnostics"])


def test_distance_trend_known_answers():
    from panoptic_curriculum.evaluation.depth_diagnostics import distance_trend

    g = np.array([16.0, 20.0, 25.0, 30.0])
    # a model that predicts 22 m for every surface: slope 0, near too far, far too near
    flat = distance_trend(g, np.log(22.0 / g), edges=(15, 20, 25))
    assert flat["slope"] == pytest.approx(0.0, abs=1e-9)
    assert [b["images"] for b in flat["bins"]] == [1, 1, 2]
    assert flat["bins"][0]["log_ratio"] == pytest.approx(math.log(22 / 16))
    far = (math.log(22 / 25) + math.log(22 / 30)) / 2
    assert flat["bins"][2]["log_ratio"] == pytest.approx(far)
    # a model that is 10 % too near everywhere still follows the depth: slope 1
    assert distance_trend(g, np.full(4, math.log(0.9)), edges=(0,))["slope"] == pytest.approx(1.0)
    # half-way: pred = sqrt(22 * g)
    assert distance_trend(g, 0.5 * np.log(22.0 / g), edges=(0,))["slope"] == pytest.approx(0.5)
    empty = distance_trend([], [], edges=(0, 10))
    assert math.isnan(empty["slope"]) and empty["bins"][0]["images"] == 0
    with pytest.raises(ValueError, match="one log ratio per depth"):
        distance_trend([1.0, 2.0], [0.0], edges=(0,))
    with pytest.raises(ValueError, match="finite depths > 0"):
        distance_trend([0.0, 2.0], [0.0, 0.0], edges=(0,))
