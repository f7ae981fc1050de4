"""The multi-task model: losses, switches, gradients, outputs, one backbone call, bad input."""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from panoptic_curriculum.modeling.postprocessing import fuse_panoptic, instance_depth_and_centroid
from panoptic_curriculum.geometry import backproject

from model_utils import NUM_CLASSES, POINT_TRAINING_DEFAULTS, fake_sample, tiny_cfg

ALL_LOSSES = {
    "loss_sem_seg",
    "loss_depth",
    "loss_sem_seg_3d",
    "loss_consistency",
    "loss_rpn_cls",
    "loss_rpn_loc",
    "loss_cls",
    "loss_box_reg",
    "loss_mask",
}


def _train_losses(model, batch, seed=0):
    model.train()
    torch.manual_seed(seed)
    with EventStorage():
        return model(batch)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def test_training_step_returns_every_loss(model):
    batch = [fake_sample(seed=0), fake_sample(seed=1, num_instances=3)]
    losses = _train_losses(model, batch)
    assert set(losses) == ALL_LOSSES
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    sum(losses.values()).backward()
    assert all(
        p.grad is not None
        for n, p in model.named_parameters()
        if "sem_seg_head" in n and p.requires_grad
    )


def test_channels_last_is_the_same_model_in_another_layout():
    """MODEL.PANOPTIC_CURRICULUM.CHANNELS_LAST: the default model's checkpoint loads into
    it, its 4-D weights and the encoder's input are NHWC, and it computes the same losses,
    gradients and outputs."""
    # no ASPP dropout: its mask is drawn in memory order, so the same seed drops other
    # elements of an NHWC tensor (training differs by that draw only)
    def layout(channels_last):
        return tiny_cfg(
            "configs/synthetic/curriculum_R18_FPN.yaml",
            *["MODEL.SEM_SEG_HEAD.ASPP_DROPOUT", 0.0],
            *["MODEL.PANOPTIC_CURRICULUM.CHANNELS_LAST", channels_last],
        )

    torch.manual_seed(0)
    dense = build_model(layout(False))
    nhwc = build_model(layout(True))
    nhwc.load_state_dict(dense.state_dict())
    # (a weight with one input channel or a 1x1 kernel is both NCHW and NHWC)
    weights = [
        p for p in nhwc.parameters() if p.dim() == 4 and p.shape[1] > 1 and p[0, 0].numel() > 1
    ]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    # the default model really is NCHW: the two layouts differ in every other weight
    assert all(p.is_contiguous() for p in dense.parameters())
    assert not any(p.is_contiguous() for p in weights)
    seen = []
    hook = nhwc.backbone.register_forward_hook(
        lambda m, inp, out: seen.append(inp[0].is_contiguous(memory_format=torch.channels_last))
    )
    batch = [fake_sample(seed=0), fake_sample(seed=1, num_instances=3)]
    grads = []
    for m in (dense, nhwc):
        m.zero_grad(set_to_none=True)
        losses = _train_losses(m, batch)
        sum(losses.values()).backward()
        grads.append((losses, {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (l_dense, g_dense), (l_nhwc, g_nhwc) = grads
    assert set(l_nhwc) == ALL_LOSSES
    for k in l_dense:
        torch.testing.assert_close(l_nhwc[k], l_dense[k], rtol=1e-4, atol=1e-5, msg=k)
    assert g_nhwc.keys() == g_dense.keys()
    for n in g_dense:
        torch.testing.assert_close(g_nhwc[n], g_dense[n], rtol=1e-3, atol=1e-4, msg=n)
    dense.eval()
    nhwc.eval()
    with torch.no_grad():
        out_dense, out_nhwc = dense([fake_sample(seed=2)])[0], nhwc([fake_sample(seed=2)])[0]
    hook.remove()
    assert seen == [True, True]
    for key in ("sem_seg", "depth"):
        torch.testing.assert_close(out_nhwc[key], out_dense[key], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        out_nhwc["instances"].pred_boxes.tensor, out_dense["instances"].pred_boxes.tensor
    )


def test_one_backbone_call_per_batch(model):
    calls = []
    handle = model.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        _train_losses(model, [fake_sample(seed=0), fake_sample(seed=1)])
        assert len(calls) == 1
        model.eval()
        model([fake_sample(seed=2), fake_sample(seed=3)])
        assert len(calls) == 2
    finally:
        handle.remove()


def test_loss_weights_come_from_config():
    torch.manual_seed(0)
    base = build_model(
        tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", "MODEL.DEPTH_HEAD.LOSS_WEIGHT", 1.0)
    )
    torch.manual_seed(0)
    weighted = build_model(
        tiny_cfg(
            "configs/synthetic/curriculum_R18_FPN.yaml",
            "MODEL.PANOPTIC_CURRICULUM.SEM_SEG_LOSS_WEIGHT",
            2.0,
            "MODEL.PANOPTIC_CURRICULUM.INSTANCE_LOSS_WEIGHT",
            3.0,
            "MODEL.DEPTH_HEAD.LOSS_WEIGHT",
            4.0,
            "MODEL.POINT_HEAD.LOSS_WEIGHT",
            5.0,
            "MODEL.POINT_HEAD.CONSISTENCY_WEIGHT",
            6.0,
        )
    )
    batch = [fake_sample(seed=0)]
    a, b = _train_losses(base, batch), _train_losses(weighted, batch)
    factors = {
        "loss_sem_seg": 2.0,
        "loss_depth": 4.0,
        "loss_sem_seg_3d": 5.0,
        "loss_consistency": 6.0,
        "loss_mask": 3.0,
        "loss_rpn_cls": 3.0,
    }
    for k, f in factors.items():
        torch.testing.assert_close(b[k], f * a[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "overrides, absent_modules, absent_losses",
    [
        (
            ["MODEL.POINT_HEAD.ENABLED", False],
            ["point_head"],
            {"loss_sem_seg_3d", "loss_consistency"},
        ),
        (
            ["MODEL.POINT_HEAD.ENABLED", False, "MODEL.PANOPTIC_CURRICULUM.DEPTH_ON", False],
            ["point_head", "depth_head"],
            {"loss_sem_seg_3d", "loss_consistency", "loss_depth"},
        ),
        (
            ["MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON", False],
            ["proposal_generator", "roi_heads"],
            {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"},
        ),
        (
            ["MODEL.POINT_HEAD.ENABLED", False, "MODEL.PANOPTIC_CURRICULUM.SEM_SEG_ON", False],
            ["point_head", "sem_seg_head"],
            {"loss_sem_seg_3d", "loss_consistency", "loss_sem_seg"},
        ),
    ],
)
def test_branch_switches_build_and_run_nothing(overrides, absent_modules, absent_losses):
    m = build_model(tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", *overrides))
    for name in absent_modules:
        assert getattr(m, name) is None
        assert not any(n.startswith(name + ".") for n, _ in m.named_parameters())
    losses = _train_losses(m, [fake_sample(seed=0)])
    assert set(losses) == ALL_LOSSES - absent_losses
    m.eval()
    out = m([fake_sample(seed=0)])[0]
    if "sem_seg_head" in absent_modules:
        assert "sem_seg" not in out and "panoptic_seg" not in out
    if "roi_heads" in absent_modules:
        assert "instances" not in out and "panoptic_seg" not in out
    if "depth_head" in absent_modules:
        assert "depth" not in out


def test_point_branch_requires_its_inputs():
    with pytest.raises(ValueError, match="POINT_HEAD needs the semantic head and the depth head"):
        build_model(
            tiny_cfg(
                "configs/synthetic/curriculum_R18_FPN.yaml",
                "MODEL.PANOPTIC_CURRICULUM.DEPTH_ON",
                False,
            )
        )


def _consistency_grad_norms(model):
    model.zero_grad()
    losses = _train_losses(model, [fake_sample(seed=0), fake_sample(seed=4)])
    losses["loss_consistency"].backward()
    norms = {}
    for part in ("sem_seg_head", "point_head", "depth_head", "backbone", "roi_heads"):
        norms[part] = sum(
            p.grad.abs().sum().item()
            for n, p in model.named_parameters()
            if n.startswith(part) and p.grad is not None
        )
    return norms


def test_consistency_gradient_reaches_every_part():
    """With the plugin's defaults (L_consist both ways, the depth not detached)."""
    torch.manual_seed(0)
    both = build_model(
        tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", *POINT_TRAINING_DEFAULTS)
    )
    norms = _consistency_grad_norms(both)
    for part in ("sem_seg_head", "point_head", "depth_head", "backbone"):
        assert norms[part] > 0, part
    assert norms["roi_heads"] == 0  # not part of L_consist


def test_main_config_consistency_teaches_the_2d_head_only(model):
    """The main job's config (CONSISTENCY_DIRECTION to_2d): the point network teaches the 2D
    head, and through it the encoder; the point network (its logits detached), the depth head
    (detached depth) and the instance heads get no gradient from L_consist."""
    norms = _consistency_grad_norms(model)
    assert norms["sem_seg_head"] > 0 and norms["backbone"] > 0
    for part in ("point_head", "depth_head", "roi_heads"):
        assert norms[part] == 0, part


def test_inference_outputs_shapes_and_units(model):
    model.eval()
    x = fake_sample(h=64, w=96, seed=5)
    x["height"], x["width"] = 96, 144  # original size 1.5x the network input
    out = model([x])[0]
    assert out["sem_seg"].shape == (NUM_CLASSES, 96, 144)
    assert out["depth"].shape == (96, 144)
    # metres, within the head's range scaled from the canonical camera to this one
    head = model.depth_head
    scale = x["intrinsics"][0, 0].item() / head.canonical_focal if head.canonical_focal else 1.0
    assert (out["depth"] >= head.min_depth * scale * 0.999).all()
    assert (out["depth"] <= head.max_depth * scale * 1.001).all()
    inst = out["instances"]
    assert inst.image_size == (96, 144)
    assert inst.pred_depth.shape == (len(inst),) and inst.pred_centroid.shape == (len(inst), 3)
    pan, segments = out["panoptic_seg"]
    assert pan.shape == (96, 144)
    ids = set(pan.unique().tolist()) - {0}
    assert ids == {s["id"] for s in segments}


@pytest.mark.parametrize("output", ["sigmoid", "log_linear"])
def test_depth_output_mapping(output):
    """Both logit-to-depth mappings start at the geometric mean of the range and stay inside
    it; the log-linear one has slope 1 in log depth everywhere, the sigmoid's fades far."""
    cfg = tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml", "MODEL.DEPTH_HEAD.OUTPUT", output
    )
    head = build_model(cfg).depth_head
    lo, hi = head.log_min, head.log_max
    logit = torch.tensor([-1e3, -2.0, 0.0, 2.0, 1e3], requires_grad=True)
    log_depth = head._log_depth(logit)
    assert torch.allclose(log_depth[[0, 2, 4]], torch.tensor([lo, (lo + hi) / 2, hi]))
    log_depth.sum().backward()
    slope = logit.grad
    if output == "log_linear":
        assert torch.allclose(slope[1:4], torch.ones(3))
        assert torch.allclose(log_depth[3] - log_depth[2], torch.tensor(2.0))
    else:  # the sigmoid's slope at 2 (far) is under half its slope at 0
        assert slope[3] < 0.5 * slope[2]


@pytest.mark.parametrize("global_context", [False, True])
def test_depth_global_context_reaches_far_pixels(global_context):
    """With MODEL.DEPTH_HEAD.GLOBAL_CONTEXT a change in one corner of the coarsest feature map
    moves the depth at the opposite corner; without it the head's local convolutions do not
    reach that far (no normalisation in the head here: GroupNorm's statistics are image-wide
    too)."""
    cfg = tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        "MODEL.DEPTH_HEAD.GLOBAL_CONTEXT",
        global_context,
        "MODEL.DEPTH_HEAD.NORM",
        "",
    )
    model = build_model(cfg)
    head, shapes = model.depth_head.eval(), model.backbone.output_shape()
    with torch.no_grad():
        head.predictor.weight.normal_(0, 0.1)  # a trained head's predictor, not the init's
    size, g = 256, torch.Generator().manual_seed(0)
    feats = {
        k: torch.randn(1, shapes[k].channels, *(2 * [size // shapes[k].stride]), generator=g)
        for k in head.in_features
    }
    with torch.no_grad():
        before = head(feats, (size, size))
        feats["p5"][..., 0, 0] += 5.0
        after = head(feats, (size, size))
    moved = (after[0, -1, -1] - before[0, -1, -1]).abs()
    assert (moved > 1e-4) == global_context


def test_column_attention_reads_its_own_column_only():
    """The column attention starts at zero (identity residual); once trained, a change at the
    bottom of one column moves the top of that column and leaves every other column as it
    was; the ray channels reach its output."""
    from panoptic_curriculum.modeling.depth_head import ColumnAttention

    g = torch.Generator().manual_seed(0)
    att = ColumnAttention(16).eval()
    x, rays = torch.randn(2, 16, 10, 7, generator=g), torch.randn(2, 2, 10, 7, generator=g)
    with torch.no_grad():
        assert torch.equal(att(x, rays), torch.zeros_like(x))
        att.proj.weight.normal_(0, 0.5, generator=g)  # a trained projection, not the init's
        before = att(x, rays)
        x2 = x.clone()
        x2[1, :, -1, 3] += torch.randn(16, generator=g)  # not a constant: LayerNorm
        after = att(x2, rays)
        moved = (after - before).abs().amax(dim=(1, 2))  # [B, w]
        assert moved[1, 3] > 1e-3 and (after[1, :, 0, 3] - before[1, :, 0, 3]).abs().max() > 1e-4
        others = torch.ones_like(moved, dtype=torch.bool)
        others[1, 3] = False
        assert moved[others].max() == 0
        rays2 = rays.clone()
        rays2[0, 1] += 1.0
        assert (att(x, rays2) - before)[0].abs().max() > 1e-4


def test_depth_head_column_context_config():
    """MODEL.DEPTH_HEAD.COLUMN_CONTEXT builds the attention into the head, which then needs K
    (camera aware); a channel count its heads do not divide is an error naming the key."""
    cfg = tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        "MODEL.DEPTH_HEAD.COLUMN_CONTEXT",
        True,
        "MODEL.DEPTH_HEAD.CAMERA_COORDS",
        False,
        "MODEL.DEPTH_HEAD.CANONICAL_FOCAL",
        0.0,
    )
    model = build_model(cfg)
    assert model.depth_head.column is not None and model.depth_head.camera_aware
    cfg.defrost()
    cfg.MODEL.DEPTH_HEAD.CONVS_DIM = 30
    cfg.MODEL.DEPTH_HEAD.NORM = ""  # GroupNorm's 32 groups would not take 30 channels either
    with pytest.raises(ValueError, match="COLUMN_CONTEXT.*CONVS_DIM"):
        build_model(cfg)


@pytest.mark.parametrize("loss_type", ["silog", "l1_log", "l1"])
def test_depth_loss_distance_power_known_answer(loss_type):
    """DISTANCE_POWER weighs each valid pixel by gt ** power, normalised to a mean of 1 over
    the valid pixels: with gt 1 m and 3 m and power 1 the weights are 0.5 and 1.5; an invalid
    pixel (gt 0) weighs nothing; power 0 is the unweighted loss."""
    from panoptic_curriculum.modeling.depth_head import depth_loss

    gt = torch.tensor([[1.0, 3.0, 0.0]])
    pred = torch.tensor([[2.0, 2.0, 7.0]])
    g = torch.log(pred[0, :2]) - torch.log(gt[0, :2])
    err = {"silog": g, "l1_log": g.abs(), "l1": (pred[0, :2] - gt[0, :2]).abs()}[loss_type]

    def expected(w):
        if loss_type == "silog":
            return torch.sqrt((w * g * g).mean() - 0.5 * (w * g).mean() ** 2)
        return (w * err).mean()

    for power, w in ((0.0, torch.tensor([1.0, 1.0])), (1.0, torch.tensor([0.5, 1.5]))):
        got = depth_loss(pred, gt, loss_type, silog_lambda=0.5, distance_power=power)
        assert torch.allclose(got, expected(w)), (power, got, expected(w))
    assert depth_loss(pred, torch.zeros_like(gt), loss_type, distance_power=1.0) == 0
    cfg = tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml", "MODEL.DEPTH_HEAD.DISTANCE_POWER", 5.0
    )
    with pytest.raises(ValueError, match="DISTANCE_POWER"):
        build_model(cfg)


def test_depth_is_camera_aware():
    """Canonical-focal scaling: the same image seen with twice the focal length is twice as
    deep; camera coordinates: the prediction depends on where each pixel looks."""
    base = "configs/synthetic/curriculum_R18_FPN.yaml"
    m = build_model(tiny_cfg(base, "MODEL.DEPTH_HEAD.CAMERA_COORDS", False)).eval()
    assert m.depth_head.canonical_focal > 0
    x = fake_sample(seed=7)
    y = dict(x, intrinsics=x["intrinsics"].clone())
    y["intrinsics"][:2, :2] *= 2
    torch.testing.assert_close(m([y])[0]["depth"], 2 * m([x])[0]["depth"])

    m = build_model(tiny_cfg(base, "MODEL.DEPTH_HEAD.CAMERA_COORDS", True)).eval()
    with torch.no_grad():  # make the ray channels matter at initialisation
        m.depth_head.fuse[0].weight[:, -2:].normal_(0, 1.0)
    z = dict(x, intrinsics=x["intrinsics"].clone())
    z["intrinsics"][1, 2] += 20.0  # principal point moved down: every pixel looks higher
    assert not torch.allclose(m([z])[0]["depth"], m([x])[0]["depth"])
    rays = m.depth_head._ray_channels(x["intrinsics"][None], (1, 8, 16, 24), "cpu", torch.float32)
    K = x["intrinsics"]
    s = m.depth_head.common_stride
    assert rays[0, 0, 0, 0].item() == pytest.approx(
        (0.5 * s - 0.5 - K[0, 2].item()) / K[0, 0].item()
    )
    assert rays[0, 1, 15, 0].item() == pytest.approx(
        (15.5 * s - 0.5 - K[1, 2].item()) / K[1, 1].item()
    )


def test_point_cloud_at_inference():
    m = build_model(
        tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", "MODEL.POINT_HEAD.INFERENCE_ON", True)
    )
    m.eval()
    out = m([fake_sample(seed=6)])[0]["point_cloud"]
    n = out["points"].shape[0]
    assert n == 256 and out["points"].shape == (n, 3) and out["pixels"].shape == (n, 2)
    assert out["labels_3d"].shape == (n,) and out["labels_2d"].shape == (n,)
    assert (out["points"][:, 2] > 0).all()


def test_point_cloud_skips_no_surface_classes():
    cfg = tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        "MODEL.POINT_HEAD.INFERENCE_ON",
        True,
        "MODEL.POINT_HEAD.NO_SURFACE_CLASSES",
        [6],
    )
    m = build_model(cfg).eval()
    with torch.no_grad():  # a 2D head that predicts sky on the top half of every image
        m.sem_seg_head.predictor.weight.zero_()
        m.sem_seg_head.predictor.bias.zero_()
    x = fake_sample(seed=6)
    orig = m.sem_seg_head.layers

    def sky_on_top(features):
        y = orig(features)
        y[:, 6, : y.shape[2] // 2] = 10.0
        return y

    m.sem_seg_head.layers = sky_on_top
    out = m([x])[0]["point_cloud"]
    assert len(out["labels_2d"]) > 0 and (out["labels_2d"] != 6).all()
    assert (out["pixels"][:, 1] >= x["image"].shape[1] / 2 - 4).all()


def test_missing_intrinsics_is_a_clear_error(model):
    x = fake_sample(seed=0)
    del x["intrinsics"]
    with pytest.raises(KeyError, match="intrinsics.*fake_0.png"):
        _train_losses(model, [x])


def test_no_valid_depth_gives_zero_losses_not_nan(model):
    batch = [fake_sample(seed=0, depth_value=0.0), fake_sample(seed=1, depth_value=0.0)]
    losses = _train_losses(model, batch)
    for k in ("loss_depth", "loss_sem_seg_3d", "loss_consistency"):
        assert losses[k].item() == 0.0, k
    total = sum(losses.values())
    assert torch.isfinite(total)
    model.zero_grad()
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_images_without_instances_and_odd_sizes(model):
    batch = [fake_sample(h=61, w=87, num_instances=0, seed=0), fake_sample(h=70, w=99, seed=1)]
    losses = _train_losses(model, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    outs = model(batch)
    assert outs[0]["sem_seg"].shape[-2:] == (61, 87) and outs[1]["depth"].shape == (70, 99)


def test_instance_depth_and_centroid_on_a_plane():
    h, w = 40, 60
    depth = torch.full((h, w), 5.0)
    K = torch.tensor([[50.0, 0, 29.5], [0, 50.0, 19.5], [0, 0, 1]])
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 10:20, 5:15] = True
    masks[1, :, :] = True
    depth[0, 0] = 0.0  # invalid pixel ignored
    median, centroid = instance_depth_and_centroid(masks, depth, K)
    torch.testing.assert_close(median, torch.tensor([5.0, 5.0]))
    pts = backproject(depth[None], K[None])[0]
    torch.testing.assert_close(centroid[0], pts[10:20, 5:15].reshape(-1, 3).mean(0))
    assert centroid[1, 2].item() == pytest.approx(5.0)


def test_fuse_panoptic():
    from detectron2.structures import Instances

    sem = torch.full((10, 10), 4)
    sem[:, 5:] = 5
    inst = Instances((10, 10))
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True
    masks[1, 0:4, 1:4] = True  # mostly covered by the higher-scoring instance 0: dropped
    masks[2, 6:9, 6:9] = True
    inst.pred_masks, inst.scores = masks, torch.tensor([0.9, 0.8, 0.3])
    inst.pred_classes = torch.tensor([0, 1, 2])
    pan, segs = fuse_panoptic(inst, sem, [0, 1, 2, 3], 0.5, 5, 0.5)
    things = [s for s in segs if s["isthing"]]
    assert [s["category_id"] for s in things] == [0]  # low score and overlapped ones dropped
    stuff = {s["category_id"]: s["area"] for s in segs if not s["isthing"]}
    assert stuff == {4: 50 - 16, 5: 50}
    assert (pan[0:4, 0:4] == things[0]["id"]).all()


# ---------------------------------------------------------- faster inference, same outputs


def _dense_instance_depth(masks, depth, K):
    """The per-image dense computation: nanmedian over N full images, mean via a product."""
    n = masks.shape[0]
    inside = masks.flatten(1) & (depth.flatten() > 0)[None]
    flat = depth.flatten()[None]
    vals = torch.where(inside, flat.expand(n, -1), torch.full_like(flat, float("nan")))
    points = backproject(depth[None], K[None])[0].reshape(-1, 3)
    weights = inside.to(depth.dtype)
    return torch.nanmedian(vals, dim=1).values, (weights @ points) / weights.sum(1, keepdim=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_instance_depth_and_centroid_matches_dense_computation(dtype):
    g = torch.Generator().manual_seed(0)
    h, w = 30, 41
    depth = (torch.rand(h, w, generator=g) * 20 + 0.5).to(dtype)
    depth[torch.rand(h, w, generator=g) < 0.2] = 0.0  # invalid pixels
    depth[5, :10] = 3.25  # ties
    K = torch.tensor([[40.0, 0, 20.0], [0, 42.0, 14.5], [0, 0, 1]], dtype=dtype)
    fill = torch.tensor([0.5, 0.1, 0.02, 0, 0.3, 0.9])[:, None, None]
    masks = torch.rand(6, h, w, generator=g) < fill
    masks[3] = False  # empty mask
    masks[2] = False
    masks[2, 5, :4] = True  # 4 pixels (even count), all with depth 3.25
    masks[1, 0, 0] = True
    depth[0, 0] = 0.0
    masks[4] = False
    masks[4, 0, 0] = True  # only an invalid pixel: NaN
    median, centroid = instance_depth_and_centroid(masks, depth, K)
    ref_median, ref_centroid = _dense_instance_depth(masks, depth, K)
    torch.testing.assert_close(median, ref_median, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(centroid, ref_centroid, equal_nan=True)
    assert median.dtype == dtype and torch.isnan(median[[3, 4]]).all()
    assert median[2] == 3.25


def test_channel_argmax_matches_argmax():
    from panoptic_curriculum.modeling.postprocessing import channel_argmax

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 5, 7, 9, generator=g)
    scores[0, 1:4, 0, 0] = 10.0  # a tie: the first channel wins, as with argmax
    assert torch.equal(channel_argmax(scores), scores.argmax(dim=1))
    assert torch.equal(channel_argmax(scores[1]), scores[1].argmax(dim=0))


@pytest.mark.parametrize("out_size", [(10, 12), (23, 17)])
def test_crop_and_resize_matches_sem_seg_postprocess(out_size):
    from detectron2.modeling.postprocessing import sem_seg_postprocess

    from panoptic_curriculum.modeling.postprocessing import crop_and_resize

    x = torch.randn(3, 16, 16)
    torch.testing.assert_close(
        crop_and_resize(x, (10, 12), *out_size), sem_seg_postprocess(x, (10, 12), *out_size)
    )
    assert crop_and_resize(x[0], (10, 12), *out_size).shape == out_size


@pytest.mark.parametrize("size", [(40, 56), (17, 23), (5, 7), (3, 4)])
def test_conv3x3_of_upsampled_is_the_convolution(size):
    import torch.nn.functional as F

    from panoptic_curriculum.modeling.semantic_head import conv3x3_of_upsampled

    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 6, 3, 3, generator=g, dtype=torch.float64)
    up = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
    expected = F.conv2d(up, weight, padding=1)
    torch.testing.assert_close(conv3x3_of_upsampled(y, weight, size), expected)


def test_semantic_head_inference_equals_detectron2_decoder(model, monkeypatch):
    """The factorised decoder at inference gives detectron2's DeepLabV3+ logits, and the model
    returns what it returned with detectron2's decoder."""
    from detectron2.projects.deeplab import DeepLabV3PlusHead

    head = model.sem_seg_head
    model.eval()
    features = model.backbone(model.preprocess_image([fake_sample(h=64, w=96)]).tensor)
    with torch.no_grad():
        fast = head.layers(features)
        reference = DeepLabV3PlusHead.layers(head, features)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
    with torch.enable_grad():  # training (autograd on) runs detectron2's own code
        assert torch.equal(head.layers(features), DeepLabV3PlusHead.layers(head, features))

    batch = [fake_sample(h=61, w=87, seed=2), fake_sample(h=64, w=96, seed=3)]
    batch[0].update(height=70, width=100)  # outputs resized
    outs = model(batch)
    monkeypatch.setattr(type(head), "layers", DeepLabV3PlusHead.layers)
    refs = model(batch)
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out["sem_seg"], ref["sem_seg"], rtol=1e-4, atol=1e-5)
        assert torch.equal(out["depth"], ref["depth"])
        assert torch.equal(out["instances"].pred_masks, ref["instances"].pred_masks)
        assert torch.equal(out["panoptic_seg"][0], ref["panoptic_seg"][0])


def test_depthwise_separable_opt_ins():
    """Speed options: smaller heads, same outputs' shapes (the main job's config turns the
    semantic head's on, the depth head's stays off)."""
    cfg = tiny_cfg()
    assert cfg.MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV
    assert not cfg.MODEL.DEPTH_HEAD.USE_DEPTHWISE_SEPARABLE_CONV
    default = build_model(
        tiny_cfg(
            "configs/synthetic/curriculum_R18_FPN.yaml",
            "MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV",
            False,
        )
    )
    assert isinstance(default.depth_head.fuse, torch.nn.Sequential)
    cfg = tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        "MODEL.DEPTH_HEAD.USE_DEPTHWISE_SEPARABLE_CONV",
        True,
        "MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV",
        True,
    )
    fast = build_model(cfg).eval()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(fast.depth_head) < count(default.depth_head) / 2
    assert count(fast.sem_seg_head) < count(default.sem_seg_head)
    out = fast([fake_sample(h=64, w=96)])[0]
    assert out["depth"].shape == (64, 96) and (out["depth"] > 0).all()
    assert out["sem_seg"].shape == (NUM_CLASSES, 64, 96)
