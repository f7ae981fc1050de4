"""Options of the point branch suggested by its diagnostics: class-balanced pixel sampling,
one-way consistency, and lifting a detached depth (MODEL.POINT_HEAD.SAMPLING,
CONSISTENCY_DIRECTION, DETACH_DEPTH)."""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from model_utils import NUM_CLASSES, POINT_TRAINING_DEFAULTS, fake_sample, tiny_cfg
from panoptic_curriculum import load_config
from panoptic_curriculum.evaluation.point_branch import point_branch_diagnostics
from panoptic_curriculum.modeling.point_head import (
    class_balanced_weights,
    route_to_better_teacher,
    sample_pixels,
)

CLASSES = [f"c{i}" for i in range(NUM_CLASSES)]
MAIN_CONFIG = "configs/synthetic/curriculum_R18_FPN.yaml"


def test_class_balanced_weights_give_each_present_class_the_same_mass():
    labels = torch.tensor([[[0, 0, 0, 1], [0, 0, 2, 2]], [[3, 3, 3, 3], [3, 3, 3, 1]]])
    valid = torch.ones_like(labels, dtype=torch.bool)
    valid[0, 0, 0] = False
    w = class_balanced_weights(labels, valid, num_classes=4)
    assert w[0, 0, 0] == 0
    for b in range(2):
        for c in labels[b][valid[b]].unique().tolist():
            mass = w[b][(labels[b] == c) & valid[b]].sum()
            assert mass == pytest.approx(1.0)


def test_weighted_sampling_follows_the_weights():
    """Weight 0 is never drawn; a class with 1/20 of the pixels but the same total weight as
    the rest gets about half of the points; no weights: the uniform draw, unchanged."""
    g = torch.Generator().manual_seed(0)
    H, W = 40, 50
    labels = torch.zeros(1, H, W, dtype=torch.long)
    labels[0, :, :4] = 1  # 4 columns of 50: 8 % of the pixels
    valid = torch.ones(1, H, W, dtype=torch.bool)
    valid[0, 0, :] = False  # the first row is invalid
    weights = class_balanced_weights(labels, valid, 2)
    idx, ok = sample_pixels(valid, 100, generator=g, weights=weights)
    assert ok.all() and len(set(idx[0].tolist())) == 100
    assert (idx // W > 0).all()
    share_small = (labels.flatten()[idx[0]] == 1).float().mean()
    assert 0.3 < float(share_small) < 0.6  # uniform: about 0.08
    zero = weights.clone()
    zero[labels == 1] = 0
    idx0, _ = sample_pixels(valid, 100, generator=g, weights=zero)
    assert (labels.flatten()[idx0[0]] == 0).all()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, _ = sample_pixels(valid, 50, generator=g1)
    b, _ = sample_pixels(valid, 50, generator=g2)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="weights of shape"):
        sample_pixels(valid, 5, weights=weights[0])


def _grads(*overrides):
    torch.manual_seed(0)
    config = "configs/synthetic/curriculum_R18_FPN.yaml"
    cfg = tiny_cfg(config, *POINT_TRAINING_DEFAULTS, *overrides)
    model = build_model(cfg)
    torch.manual_seed(1)
    batch = [fake_sample(seed=0), fake_sample(seed=1, num_instances=1)]
    return point_branch_diagnostics(model, [batch], CLASSES)


def test_consistency_direction_and_detached_depth_route_the_gradients():
    both = _grads()
    assert both["gradients"]["loss_consistency"]["2D head"] > 0
    assert both["gradients"]["loss_consistency"]["point head"] > 0
    assert both["gradients"]["loss_sem_seg_3d"]["depth head"] > 0

    to_3d = _grads("MODEL.POINT_HEAD.CONSISTENCY_DIRECTION", "to_3d")
    assert to_3d["gradients"]["loss_consistency"]["2D head"] == 0
    assert to_3d["gradients"]["loss_consistency"]["point head"] > 0

    to_2d = _grads("MODEL.POINT_HEAD.CONSISTENCY_DIRECTION", "to_2d")
    assert to_2d["gradients"]["loss_consistency"]["2D head"] > 0
    assert to_2d["gradients"]["loss_consistency"]["point head"] == 0

    detached = _grads("MODEL.POINT_HEAD.DETACH_DEPTH", True)
    assert detached["gradients"]["loss_sem_seg_3d"]["depth head"] == 0
    assert detached["gradients"]["loss_consistency"]["depth head"] == 0
    assert detached["gradients"]["loss_depth"]["depth head"] > 0


def test_depth_gate_takes_consistency_only_where_the_depth_is_right():
    """A gate no prediction can pass leaves L_consist at 0 with no gradient; a gate every
    point passes gives the ungated loss; a tight gate keeps a logged share in between."""
    ungated = _grads()
    shut = _grads("MODEL.POINT_HEAD.CONSISTENCY_DEPTH_GATE", 1.0 + 1e-9)
    assert shut["losses"]["loss_consistency"] == 0
    assert shut["gradients"]["loss_consistency"]["point head"] == 0
    assert shut["gradients"]["loss_consistency"]["2D head"] == 0
    assert shut["gradients"]["loss_sem_seg_3d"]["point head"] > 0  # L_3D-seg is not gated
    wide = _grads("MODEL.POINT_HEAD.CONSISTENCY_DEPTH_GATE", 1e9)
    assert wide["losses"]["loss_consistency"] == pytest.approx(
        ungated["losses"]["loss_consistency"], rel=1e-6
    )


def test_depth_gate_compares_the_predicted_with_the_true_depth():
    from panoptic_curriculum.modeling.meta_arch import PanopticCurriculumModel

    gate = PanopticCurriculumModel._depth_within_gate
    holder = type("M", (), {"consistency_depth_gate": 1.25})()
    depth = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0]]])
    gt = torch.tensor([[[1.2, 1.5, 3.0, 0.0, 6.5]]])  # 0: invalid ground truth
    idx = torch.tensor([[0, 1, 2, 3, 4]])
    # ratios 1.2, 1.33, 1.0, invalid, 1.3
    assert gate(holder, depth, gt, idx).tolist() == [[True, False, True, False, False]]


def test_better_side_teaches_per_point():
    """Point 0: the 3D side is right, the 2D side wrong -> only the 2D logits get L_consist's
    gradient there. Point 1: the 2D side is right -> only the 3D logits. Point 2 is ignored
    (label 255) and point 3 is padding: the 3D side never teaches there."""
    logits_2d = torch.tensor([[[0.0, 3.0], [3.0, 0.0], [0.0, 3.0], [0.0, 3.0]]])
    logits_3d = torch.tensor([[[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [3.0, 0.0]]])
    labels = torch.tensor([[0, 0, 255, 0]])
    valid = torch.tensor([[True, True, True, False]])
    a, b = logits_2d.clone().requires_grad_(), logits_3d.clone().requires_grad_()
    l2, l3, teaches_2d = route_to_better_teacher(a, b, labels, valid)
    assert teaches_2d.tolist() == [[True, False, False, False]]
    assert torch.equal(l2, logits_2d) and torch.equal(l3, logits_3d)
    (l2.square().sum() + l3.square().sum()).backward()
    assert a.grad[0, 0].abs().sum() > 0 and b.grad[0, 0].abs().sum() == 0
    assert a.grad[0, 1].abs().sum() == 0 and b.grad[0, 1].abs().sum() > 0
    assert a.grad[0, 2:].abs().sum() == 0  # never the 2D side's lesson where 3D cannot teach
    with pytest.raises(ValueError, match="Shape mismatch"):
        route_to_better_teacher(a, b, labels[:, :3], valid)


def test_better_teaches_trains_both_sides_in_the_model():
    routed = _grads("MODEL.POINT_HEAD.CONSISTENCY_DIRECTION", "better_teaches")
    assert routed["gradients"]["loss_consistency"]["point head"] > 0
    # a random model's 3D side beats its 2D side at some points: the 2D head learns there
    assert routed["gradients"]["loss_consistency"]["2D head"] > 0


def test_class_balanced_sampling_puts_points_on_small_objects():
    uniform = _grads()
    balanced = _grads("MODEL.POINT_HEAD.SAMPLING", "class_balanced")
    things = lambda r: sum(row["points_share"] for row in r["classes"][:4])  # noqa: E731
    assert things(balanced) > 2 * things(uniform)


@pytest.mark.parametrize(
    "key, value",
    [
        ("MODEL.POINT_HEAD.CONSISTENCY_DIRECTION", "sideways"),
        ("MODEL.POINT_HEAD.SAMPLING", "random"),
        ("MODEL.POINT_HEAD.DETACH_DEPTH", "yes"),
        ("MODEL.POINT_HEAD.LIFT", "sphere"),
        ("MODEL.POINT_HEAD.CONSISTENCY_DEPTH_GATE", 0.5),
        ("MODEL.POINT_HEAD.COMPILE_BACKEND", "no_such_backend"),
    ],
)
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config("configs/synthetic/curriculum_R18_FPN.yaml", [key, value])


def test_compiled_point_head_gives_the_same_losses_and_checkpoint_keys():
    """MODEL.POINT_HEAD.COMPILE_BACKEND runs the point network's forward through
    torch.compile ("eager" here: the wiring, not inductor's code generation, is under test);
    losses and gradients equal the plain model's, the parameters and checkpoint keys are
    the same."""
    batch = [fake_sample(seed=0), fake_sample(seed=1, num_instances=1)]
    out = {}
    for backend in ("", "eager"):
        torch.manual_seed(0)
        cfg = tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml")
        cfg.MODEL.POINT_HEAD.COMPILE_BACKEND = backend
        model = build_model(cfg)
        model.train()
        torch.manual_seed(1)
        with EventStorage():
            losses = model(batch)
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.point_head.named_parameters()}
        out[backend] = (model, losses, grads)
    plain, compiled = out[""], out["eager"]
    assert compiled[0]._point_head_compiled is not None and plain[0]._point_head_compiled is None
    assert list(compiled[0].state_dict()) == list(plain[0].state_dict())
    for k in plain[1]:
        torch.testing.assert_close(compiled[1][k], plain[1][k])
    for n in plain[2]:
        torch.testing.assert_close(compiled[2][n], plain[2][n])


def _train_step(*overrides, steps=2):
    """``steps`` SGD steps of the tiny main-job model on two fake samples, built and trained
    from seed 0 as a training run does (no reseeding between); returns the model, the last
    step's losses and the global RNG state after them."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("configs/synthetic/curriculum_R18_FPN.yaml", *overrides))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = [fake_sample(seed=0), fake_sample(seed=1, num_instances=1)]
    with EventStorage():
        for _ in range(steps):
            losses = model(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
    return model, losses, torch.get_rng_state()


def test_point_branch_leaves_the_rest_of_the_run_as_without_it():
    """The branch samples its pixels with its own generator: with L_consist to the 3D side, a
    detached depth and xyz only (no image features) the branch on or off gives the same
    global random stream, the same 2D losses and the same weights outside the branch, bit for
    bit, after building the model and two training steps; and its own draws are a function
    of the seed."""
    xyz_only = (
        "MODEL.POINT_HEAD.USE_IMAGE_FEATURES",
        False,  # image features reach the encoder
        "MODEL.POINT_HEAD.CONSISTENCY_DIRECTION",
        "to_3d",  # to_2d (the main config's) trains the 2D head
    )
    on, losses_on, rng_on = _train_step(*xyz_only)
    off, losses_off, rng_off = _train_step(*xyz_only, "MODEL.POINT_HEAD.ENABLED", False)
    assert on.point_head is not None and off.point_head is None
    assert "loss_consistency" in losses_on and "loss_consistency" not in losses_off
    assert torch.equal(rng_on, rng_off)
    for k, v in losses_off.items():
        assert torch.equal(losses_on[k], v), k
    weights_off = off.state_dict()
    for k, v in on.state_dict().items():
        if not k.startswith("point_head."):
            assert torch.equal(v, weights_off[k]), k
    # the branch's own draws: equal for one seed, different for another
    valid = torch.ones(2, 16, 20, dtype=torch.bool)
    draws = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        model = build_model(tiny_cfg())
        draws.append(sample_pixels(valid, 32, generator=model.point_generator("cpu"))[0])
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_point_generator_state_travels_in_the_checkpoint():
    """RNGStateHook saves the point branch's generator with the global ones; loading the
    state makes the branch draw what it drew after the save."""
    from types import SimpleNamespace

    from panoptic_curriculum.engine.hooks import RNGStateHook

    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    hook = RNGStateHook()
    hook.trainer = SimpleNamespace(model=model)
    assert "point_branch" not in hook.state_dict()  # not made before the branch's first use
    valid = torch.ones(1, 16, 20, dtype=torch.bool)
    sample_pixels(valid, 8, generator=model.point_generator("cpu"))
    state = hook.state_dict()
    expected = sample_pixels(valid, 8, generator=model.point_generator("cpu"))[0]
    fresh = build_model(tiny_cfg())
    hook.trainer = SimpleNamespace(model=fresh)
    hook.load_state_dict(state)
    assert torch.equal(sample_pixels(valid, 8, generator=fresh.point_generator("cpu"))[0], expected)


def test_plane_lift_keeps_the_image_layout_and_drops_the_depth():
    """MODEL.POINT_HEAD.LIFT plane (the geometry control): every sampled pixel is lifted to
    z = 10 m through K, so x / z and y / z are its ray's, whatever the predicted depth; the
    default lifts the predicted depth."""
    from panoptic_curriculum.evaluation.point_branch import record_point_branch
    from panoptic_curriculum.modeling.meta_arch import PLANE_DEPTH_M

    batch = [fake_sample(seed=0), fake_sample(seed=1, num_instances=1)]
    xyz = {}
    for lift in ("depth", "plane"):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(MAIN_CONFIG, "MODEL.POINT_HEAD.LIFT", lift))
        model.train()
        with EventStorage(), record_point_branch(model) as records:
            model(batch)
        rec = records[0]
        ok = rec["point_valid"]
        K = rec["K"]
        u, v = rec["uv"][..., 0].float(), rec["uv"][..., 1].float()  # centres at integers
        ray_x = (u - K[:, 0, 2, None]) / K[:, 0, 0, None]
        ray_y = (v - K[:, 1, 2, None]) / K[:, 1, 1, None]
        p = rec["xyz"]
        assert torch.allclose((p[..., 0] / p[..., 2])[ok], ray_x[ok], atol=1e-4)
        assert torch.allclose((p[..., 1] / p[..., 2])[ok], ray_y[ok], atol=1e-4)
        xyz[lift] = p[ok]
    assert torch.all(xyz["plane"][:, 2] == PLANE_DEPTH_M)
    assert xyz["depth"][:, 2].std() > 0  # the predicted depth varies


def test_preserved_point_generator_restores_the_stream():
    """A side computation inside ``preserved_point_generator`` leaves the branch's next draws
    as they were; with a seed, the block's own draws are reproducible."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    valid = torch.ones(1, 16, 20, dtype=torch.bool)
    draw = lambda: sample_pixels(valid, 8, generator=model.point_generator("cpu"))[0]  # noqa
    draw()
    state = model.point_generator("cpu").get_state()
    with model.preserved_point_generator():
        draw()
    assert torch.equal(model.point_generator("cpu").get_state(), state)
    with model.preserved_point_generator(seed=3):
        a = draw()
    with model.preserved_point_generator(seed=3):
        b = draw()
    assert torch.equal(a, b)
    assert torch.equal(model.point_generator("cpu").get_state(), state)
