"""Hostile and ill-fitting files a user may be handed: weights (.pkl, .pth) and YAML configs
whose payload would run a shell command, and weights that do not fit the model.

Every payload writes a marker file when it runs; each test first proves the payload is live
(the unsafe loader it replaces runs it), then that the plugin's loaders refuse the file,
name it and what they refused, and that the marker never appears."""

import copy
import logging
import os
import pickle
import shlex
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import panoptic_curriculum  # noqa: F401  (detectron2 compatibility fixes, dataset registration)
from panoptic_curriculum import load_config
from panoptic_curriculum.engine.checkpoint import AtomicCheckpointer, IncompatibleWeightsError
from panoptic_curriculum.engine.merge import load_model_state, merge_stage_checkpoints
from panoptic_curriculum.engine.predictor import RGBDPredictor
from panoptic_curriculum.utils.safe_load import UntrustedContentError, load_yaml_with_base

from detectron2.modeling import build_model

from model_utils import tiny_cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(REPO, "tools")
R18_CONFIG = os.path.join(REPO, "configs", "synthetic", "curriculum_R18_FPN.yaml")


def _tool(name):
    sys.path.insert(0, TOOLS)
    try:
        return __import__(name)
    finally:
        sys.path.remove(TOOLS)


class _ShellPayload:
    """Unpickling this object runs ``touch <marker>`` (an attacker's ``__reduce__``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def _assert_live(marker, unsafe_load):
    """The payload really runs under the unsafe loader: the tests below are not vacuous."""
    unsafe_load()
    assert os.path.exists(marker), "the payload did not run under the unsafe loader"
    os.remove(marker)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(module_tmp_path):
    """The tiny R18 model, its config as a YAML file, and weights files that fit it or not."""
    root = module_tmp_path
    cfg = tiny_cfg(R18_CONFIG, "MODEL.WEIGHTS", "")
    (root / "tiny.yaml").write_text(cfg.dump())
    torch.manual_seed(0)
    model = build_model(cfg)
    AtomicCheckpointer(model, str(root)).save("good")

    other_classes = tiny_cfg(
        R18_CONFIG, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 9, "MODEL.ROI_HEADS.NUM_CLASSES", 6
    )
    AtomicCheckpointer(build_model(other_classes), str(root)).save("other_classes")
    r50 = tiny_cfg(  # a thin ResNet-50 (bottleneck blocks) in place of the config's ResNet-18
        R18_CONFIG, "MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.WIDTH_PER_GROUP", 32
    )
    AtomicCheckpointer(build_model(r50), str(root)).save("r50")
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), root / "tv_resnet18.pth")
    return {"root": root, "cfg": cfg, "model": model, "config": str(root / "tiny.yaml")}


@pytest.fixture
def checkpoint_log():
    """Records of the checkpointer's logger (kept even where a tool made it not propagate)."""
    records = []

    class _Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    log = logging.getLogger("panoptic_curriculum.engine.checkpoint")
    handler, level = _Keep(level=logging.INFO), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield records
    log.removeHandler(handler)
    log.setLevel(level)


# ----------------------------------------------------------------------------- .pkl weights
def _hostile_pickles(tmp_path, marker):
    payload = _ShellPayload(marker)
    arrays = {"weight": np.zeros((2, 2), np.float32), "bias": np.zeros(2, np.float32)}
    files = {
        "bare.pkl": payload,  # the payload as the whole file
        "zoo.pkl": {"model": arrays, "__author__": payload},  # hidden in the model-zoo format
        "caffe2.pkl": {"blobs": dict(arrays, fc_w=payload)},  # hidden among Caffe2 blobs
    }
    for name, obj in files.items():
        (tmp_path / name).write_bytes(pickle.dumps(obj, protocol=2))
    return [tmp_path / name for name in files]


@pytest.mark.parametrize("strict", [True, False], ids=["evaluation", "training_start"])
def test_pickle_weights_payload_never_runs(tmp_path, strict):
    """.pkl MODEL.WEIGHTS whose __reduce__ runs `touch marker` (bare, in a model-zoo dict, among
    Caffe2 blobs), given to evaluation/demo (strict) and as training start weights."""
    marker = tmp_path / "pwned"
    paths = _hostile_pickles(tmp_path, marker)
    _assert_live(marker, lambda: pickle.loads(paths[0].read_bytes()))
    for path in paths:
        with pytest.raises(UntrustedContentError) as info:
            AtomicCheckpointer(nn.Linear(2, 2), strict=strict).load(str(path))
        assert str(path) in str(info.value)
        assert "refused type 'posix.system'" in str(info.value)
        assert not marker.exists()


def test_predictor_refuses_hostile_pickle(tiny, tmp_path):
    """demo.py / visualize_pointcloud.py (RGBDPredictor) with a .pkl whose __reduce__ runs
    `touch marker`."""
    marker = tmp_path / "pwned"
    path = _hostile_pickles(tmp_path, marker)[1]
    cfg = tiny["cfg"].clone()
    cfg.MODEL.WEIGHTS = str(path)
    with pytest.raises(UntrustedContentError, match="posix.system"):
        RGBDPredictor(cfg)
    assert not marker.exists()


def test_model_zoo_pickles_still_load(tmp_path):
    """Genuine detectron2 and Caffe2 model-zoo .pkl files (numpy arrays, scalars, OrderedDict,
    Python-2-style protocol) still load through the restricted unpickler."""
    model = nn.Linear(3, 2)
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    bias = np.array([0.5, -1.5], dtype=np.float32)
    zoo = {
        "model": OrderedDict(weight=weight, bias=bias),
        "__author__": "Detectron2 Model Zoo",
        "matching_heuristics": False,
        "extra": [np.float64(1.0), np.int64(3), np.dtype("float32"), "text", b"raw", {1, 2}],
    }
    (tmp_path / "zoo.pkl").write_bytes(pickle.dumps(zoo, protocol=2))
    extra = AtomicCheckpointer(model).load(str(tmp_path / "zoo.pkl"))
    np.testing.assert_array_equal(model.weight.detach().numpy(), weight)
    np.testing.assert_array_equal(model.bias.detach().numpy(), bias)
    assert extra["extra"][:2] == [1.0, 3] and extra["extra"][2] == np.dtype("float32")

    blobs = {"blobs": {"weight": weight * 2, "weight_momentum": weight, "bias": bias}}
    (tmp_path / "c2.pkl").write_bytes(pickle.dumps(blobs, protocol=2))
    data = AtomicCheckpointer(model)._load_file(str(tmp_path / "c2.pkl"))
    assert data["__author__"] == "Caffe2" and data["matching_heuristics"] is True
    assert set(data["model"]) == {"weight", "bias"}  # momenta dropped, as detectron2 does


# ----------------------------------------------------------------------------- .pth weights
def test_torch_weights_payload_never_runs(tmp_path):
    """.pth checkpoint holding an object whose __reduce__ runs `touch marker`, given to the
    checkpointer (evaluation, training start), the merge and tools/merge_checkpoints.py."""
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"weight": torch.zeros(2, 2)}, "meta": _ShellPayload(marker)}, path)
    _assert_live(marker, lambda: torch.load(path, weights_only=False))

    loaders = [
        lambda: AtomicCheckpointer(nn.Linear(2, 2), strict=True).load(str(path)),
        lambda: AtomicCheckpointer(nn.Linear(2, 2), strict=False).load(str(path)),
        lambda: load_model_state(str(path)),
        lambda: merge_stage_checkpoints(str(path), str(path), str(tmp_path / "m.pth")),
        lambda: _tool("merge_checkpoints").main(
            ["--semantic", str(path), "--instance", str(path), "--output", str(tmp_path / "o")]
        ),
    ]
    for load in loaders:
        with pytest.raises(UntrustedContentError) as info:
            load()
        assert str(path) in str(info.value) and "refused type 'posix.system'" in str(info.value)
        assert not marker.exists()


# ----------------------------------------------------------------------------- YAML configs
def _hostile_yaml(marker):
    return (
        "MODEL:\n"
        f"  WEIGHTS: !!python/object/apply:os.system [\"touch {shlex.quote(str(marker))}\"]\n"
    )


def test_yaml_python_tag_never_runs(tmp_path):
    """A config with `!!python/object/apply:os.system ["touch marker"]`, loaded directly and as
    the _BASE_ of an innocent-looking config."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_base.yaml"
    evil.write_text(_hostile_yaml(marker))
    _assert_live(marker, lambda: yaml.unsafe_load(evil.read_text()))
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: [{R18_CONFIG!r}, evil_base.yaml]\nSOLVER:\n  MAX_ITER: 5\n")

    for path, named in ((evil, evil), (child, evil)):
        with pytest.raises(UntrustedContentError) as info:
            load_config(str(path))
        message = str(info.value)
        assert str(named) in message and "line 2" in message
        assert "tag:yaml.org,2002:python/object/apply:os.system" in message
        assert not marker.exists()


@pytest.mark.parametrize("tool", ["train_net", "demo"])
def test_tools_refuse_hostile_config(tmp_path, tool):
    """--config-file with a `!!python/object/apply:os.system` payload, given to train_net.py
    and demo.py."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(_hostile_yaml(marker))
    module = _tool(tool)
    with pytest.raises(UntrustedContentError, match="evil.yaml"):
        if tool == "train_net":
            module.setup(module.build_parser().parse_args(["--config-file", str(evil)]))
        else:
            module.main(["--config-file", str(evil), "--input", "x.png", "--output", "o"])
    assert not marker.exists()


def test_safe_yaml_keeps_detectron2_semantics(tmp_path):
    """Configs without tags load exactly as detectron2's merge_from_file loads them; a _BASE_
    chain that loops is an error naming the files."""
    from detectron2.config import get_cfg

    from panoptic_curriculum import add_panoptic_curriculum_config

    for name in ("synthetic/curriculum_R18_FPN.yaml", "coco/curriculum_R50_FPN.yaml"):
        reference = get_cfg()
        add_panoptic_curriculum_config(reference)
        reference.merge_from_file(os.path.join(REPO, "configs", name))
        assert load_config(os.path.join(REPO, "configs", name)).dump() == reference.dump()
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\n")
    with pytest.raises(ValueError, match=r"loops: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_yaml_with_base(str(tmp_path / "a.yaml"))


# ----------------------------------------------------------------------------- fit (item 4)
MISFITS = {
    "tv_resnet18.pth": ["model tensors missing from the file", "unknown to the model", "conv1"],
    "r50.pth": ["unknown to the model", "res2.2.conv1", "another shape", "(64, 64, 3, 3) in the"],
    "other_classes.pth": ["another shape", "cls_score", "in the file", "in the model"],
}


@pytest.mark.parametrize("name", sorted(MISFITS))
def test_misfitting_weights_stop_evaluation(tiny, name):
    """Weights of another model for evaluation/demo: a torchvision ResNet-18 state dict, an R50
    checkpoint for the R18 config, a checkpoint with other class counts."""
    path = str(tiny["root"] / name)
    with pytest.raises(IncompatibleWeightsError) as info:
        AtomicCheckpointer(copy.deepcopy(tiny["model"]), strict=True).load(path)
    message = str(info.value)
    assert path in message
    for text in MISFITS[name]:
        assert text in message, (text, message)
    assert message.count(", ...") >= 1  # long lists are cut after the first few names


def test_predictor_refuses_misfitting_weights(tiny):
    """demo.py / visualize_pointcloud.py (RGBDPredictor) given a checkpoint with other class
    counts."""
    cfg = tiny["cfg"].clone()
    cfg.MODEL.WEIGHTS = str(tiny["root"] / "other_classes.pth")
    with pytest.raises(IncompatibleWeightsError, match="other_classes.pth.*another shape"):
        RGBDPredictor(cfg)
    cfg.MODEL.WEIGHTS = str(tiny["root"] / "good.pth")
    predictor = RGBDPredictor(cfg)  # the weights the config was trained with load
    for k, v in tiny["model"].state_dict().items():
        assert torch.equal(predictor.model.state_dict()[k], v), k


def test_eval_only_needs_fitting_weights(tiny, tmp_path, monkeypatch):
    """train_net.py --eval-only with no weights, and with a checkpoint of other class counts."""
    train_net = _tool("train_net")
    monkeypatch.setattr(train_net, "default_setup", lambda cfg, args: None)  # no log files
    argv = ["--config-file", tiny["config"], "--eval-only", "OUTPUT_DIR", str(tmp_path)]
    with pytest.raises(ValueError, match="--eval-only needs weights"):
        train_net.main(train_net.build_parser().parse_args(argv))
    weights = str(tiny["root"] / "other_classes.pth")
    args = train_net.build_parser().parse_args(argv + ["MODEL.WEIGHTS", weights])
    with pytest.raises(IncompatibleWeightsError, match="other_classes.pth"):
        train_net.main(args)


def test_partial_initialisation_trains_with_a_summary(tiny, checkpoint_log):
    """Training start weights that fit only in part (other class counts; a backbone alone)
    load what fits and log the summary; weights of which nothing fits are an error."""
    model = copy.deepcopy(tiny["model"])
    AtomicCheckpointer(model, strict=False).load(str(tiny["root"] / "other_classes.pth"))
    assert any("another shape" in r and "partial initialisation" in r for r in checkpoint_log)
    other = torch.load(tiny["root"] / "other_classes.pth", weights_only=True)["model"]
    for k, v in model.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(v, other[k]), k  # what fits was loaded

    backbone = {k: v for k, v in tiny["model"].state_dict().items() if k.startswith("backbone.")}
    torch.save({"model": backbone}, tiny["root"] / "backbone_only.pth")
    checkpoint_log.clear()
    AtomicCheckpointer(copy.deepcopy(tiny["model"]), strict=False).load(
        str(tiny["root"] / "backbone_only.pth")
    )
    assert len(checkpoint_log) == 1 and "model tensors missing from the file" in checkpoint_log[0]
    with pytest.raises(IncompatibleWeightsError, match="Not a single tensor fits"):
        AtomicCheckpointer(copy.deepcopy(tiny["model"]), strict=False).load(
            str(tiny["root"] / "tv_resnet18.pth")
        )


def test_resume_must_fit(tmp_path):
    """A training run resumed (last_checkpoint in OUTPUT_DIR) from a checkpoint of another
    model: the run's own checkpoint must fit exactly, even for the partial-start checkpointer."""
    AtomicCheckpointer(nn.Linear(3, 4), str(tmp_path)).save("model_0000009")
    with pytest.raises(IncompatibleWeightsError, match="model_0000009.pth"):
        AtomicCheckpointer(nn.Linear(3, 5), str(tmp_path), strict=False).resume_or_load(
            "", resume=True
        )
