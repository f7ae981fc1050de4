"""Bad config values and damaged data name themselves (issue 12, item 5).

Config values (``load_config`` -> ``validate_config``; message ``KEY = value: allowed ...``):

* ``MODEL.POINT_HEAD.NUM_POINTS -5`` (and 0);
* ``CURRICULUM.SEMANTIC_ITER / INSTANCE_ITER / JOINT_ITER 0`` (was a ZeroDivisionError);
* ``CURRICULUM.STAGES []`` (did nothing and exited 0), an unknown stage, a repeated stage;
* unknown loss names: ``MODEL.POINT_HEAD.CONSISTENCY_LOSS``, ``MODEL.DEPTH_HEAD.LOSS_TYPE``,
  ``MODEL.SEM_SEG_HEAD.LOSS_TYPE``; an unknown ``MODEL.POINT_HEAD.NORM`` or
  ``MODEL.DEPTH_HEAD.OUTPUT``;
* point-head level lists of different lengths; non-positive SA entries; negative radius;
* depth ranges: ``MODEL.DEPTH_HEAD.MIN_DEPTH`` 0 or >= ``MAX_DEPTH``,
  ``INPUT.DEPTH.MAX_DEPTH`` <= ``MIN_DEPTH``; ``INPUT.DEPTH.MISSING`` unknown;
* ``MODEL.DEPTH_HEAD.CANONICAL_FOCAL`` 1e-12 and ``SILOG_LAMBDA`` 2;
* ``MODEL.POINT_HEAD.NO_SURFACE_CLASSES`` out of range; ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``
  inside the class ids; ``NUM_CLASSES`` 0;
* the point branch on with the depth head off; every branch off;
* panoptic thresholds outside [0, 1]; negative loss weights; ``JOINT_LR_FACTOR 0``;
* ``SOLVER.IMS_PER_BATCH 0``, ``SOLVER.CHECKPOINT_PERIOD 0``;
* several bad keys at once: all listed, with the config file;
* configs built by hand: checked again when the model and the trainer are built
  (``SOLVER.MAX_ITER 0`` for training).

Data (named by file when read):

* a label value >= NUM_CLASSES that is not the ignore value (was ``IndexError: Target 200
  is out of bounds``), in the mapper; an annotation ``category_id`` >= ROI_HEADS.NUM_CLASSES;
* a camera JSON without "K" (was ``KeyError: 'K'``) or with an unknown depth_format;
* a malformed camera, instances or panoptic JSON (was a bare ``JSONDecodeError``);
* an unknown panoptic category (was ``KeyError: 99``); a panoptic JSON missing an image;
* a near-zero focal length (fx = 1e-12 was accepted): synthetic camera JSON, dataset dict
  in the mapper, Cityscapes camera JSON, ``--intrinsics`` JSON of the demo;
* a batch whose pixels are all ignore and whose depth is all invalid: every loss is a
  finite 0 connected to the graph (``loss_sem_seg`` was NaN and stopped training).
"""

import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.projects.deeplab import DeepLabV3PlusHead
from detectron2.utils.events import EventStorage

from panoptic_curriculum import load_config, validate_config
from panoptic_curriculum.data.dataset_mapper import RGBDDatasetMapper
from panoptic_curriculum.data.datasets.cityscapes_depth import read_cityscapes_camera
from panoptic_curriculum.data.datasets.synthetic_scenes import load_synthetic_scenes
from panoptic_curriculum.engine import PanopticCurriculumTrainer, stage_config
from panoptic_curriculum.engine.predictor import load_intrinsics_json

from conftest import SMALL_PARAMS
from model_utils import fake_sample, tiny_cfg

CONFIG = "configs/synthetic/curriculum_R18_FPN.yaml"


def _config_error(*opts) -> str:
    """The message of the ValueError that loading CONFIG with ``opts`` raises."""
    with pytest.raises(ValueError) as e:
        load_config(CONFIG, list(opts))
    return str(e.value)


# ====================================================================== config values
@pytest.mark.parametrize(
    "opts, expected",
    [
        (
            ("MODEL.POINT_HEAD.NUM_POINTS", "-5"),
            "MODEL.POINT_HEAD.NUM_POINTS = -5: allowed an integer >= 1",
        ),
        (
            ("MODEL.POINT_HEAD.NUM_POINTS", "0"),
            "MODEL.POINT_HEAD.NUM_POINTS = 0: allowed an integer >= 1",
        ),
        (
            ("CURRICULUM.SEMANTIC_ITER", "0"),
            "CURRICULUM.SEMANTIC_ITER = 0: allowed an integer >= 1",
        ),
        (
            ("CURRICULUM.INSTANCE_ITER", "-1"),
            "CURRICULUM.INSTANCE_ITER = -1: allowed an integer >= 1",
        ),
        (("CURRICULUM.JOINT_ITER", "0"), "CURRICULUM.JOINT_ITER = 0: allowed an integer >= 1"),
        (
            ("CURRICULUM.STAGES", "[]"),
            "CURRICULUM.STAGES = []: allowed a non-empty list of distinct stages from "
            "'semantic', 'instance', 'merge', 'joint'",
        ),
        (
            ("CURRICULUM.STAGES", "['semantic', 'warmup']"),
            "CURRICULUM.STAGES = ['semantic', 'warmup']: allowed a non-empty list",
        ),
        (
            ("CURRICULUM.STAGES", "['semantic', 'semantic']"),
            "CURRICULUM.STAGES = ['semantic', 'semantic']: allowed a non-empty list of distinct",
        ),
        (
            ("MODEL.POINT_HEAD.CONSISTENCY_LOSS", "jsd"),
            "MODEL.POINT_HEAD.CONSISTENCY_LOSS = 'jsd': allowed one of 'sym_kl', 'js', 'l2'",
        ),
        (
            ("MODEL.DEPTH_HEAD.LOSS_TYPE", "l2"),
            "MODEL.DEPTH_HEAD.LOSS_TYPE = 'l2': allowed one of 'silog', 'l1_log', 'l1'",
        ),
        (
            ("MODEL.DEPTH_HEAD.OUTPUT", "softplus"),
            "MODEL.DEPTH_HEAD.OUTPUT = 'softplus': allowed one of 'sigmoid', 'log_linear'",
        ),
        (
            ("MODEL.SEM_SEG_HEAD.LOSS_TYPE", "focal"),
            "MODEL.SEM_SEG_HEAD.LOSS_TYPE = 'focal': allowed one of 'cross_entropy', "
            "'hard_pixel_mining'",
        ),
        (
            ("MODEL.POINT_HEAD.NORM", "LN"),
            "MODEL.POINT_HEAD.NORM = 'LN': allowed one of '', 'BN', 'GN'",
        ),
        (
            ("MODEL.POINT_HEAD.SA_RADII", "[0.5, 1.0]"),
            "MODEL.POINT_HEAD.SA_RADII = [0.5, 1.0]: allowed a list of 3 entries, one per "
            "set-abstraction level",
        ),
        (
            ("MODEL.POINT_HEAD.FP_CHANNELS", "[128, 64, 64, 32]"),
            "MODEL.POINT_HEAD.FP_CHANNELS = [128, 64, 64, 32]: allowed a list of 3 entries",
        ),
        (
            ("MODEL.POINT_HEAD.SA_NUM_CENTROIDS", "[512, 0, 32]"),
            "MODEL.POINT_HEAD.SA_NUM_CENTROIDS = [512, 0, 32]: allowed a non-empty list of "
            "integers >= 1",
        ),
        (
            ("MODEL.POINT_HEAD.SA_RADII", "[0.5, -1.0, 2.0]"),
            "MODEL.POINT_HEAD.SA_RADII = [0.5, -1.0, 2.0]: allowed a non-empty list of finite "
            "numbers >= 0.0",
        ),
        (
            ("MODEL.POINT_HEAD.MLP_LAYERS", "0"),
            "MODEL.POINT_HEAD.MLP_LAYERS = 0: allowed an integer >= 1",
        ),
        (
            ("MODEL.DEPTH_HEAD.MIN_DEPTH", "100.0"),
            "MODEL.DEPTH_HEAD.MAX_DEPTH = 60.0: allowed a finite number > "
            "MODEL.DEPTH_HEAD.MIN_DEPTH = 100.0 (metres)",
        ),
        (
            ("MODEL.DEPTH_HEAD.MIN_DEPTH", "0.0"),
            "MODEL.DEPTH_HEAD.MIN_DEPTH = 0.0: allowed a finite number > 0.0 (metres)",
        ),
        (
            ("INPUT.DEPTH.MAX_DEPTH", "0.0001"),
            "INPUT.DEPTH.MAX_DEPTH = 0.0001: allowed a number > INPUT.DEPTH.MIN_DEPTH = 0.001",
        ),
        (
            ("INPUT.DEPTH.MISSING", "ignore"),
            "INPUT.DEPTH.MISSING = 'ignore': allowed one of 'error', 'skip'",
        ),
        (
            ("MODEL.DEPTH_HEAD.CANONICAL_FOCAL", "1e-12"),
            "MODEL.DEPTH_HEAD.CANONICAL_FOCAL = 1e-12: allowed 0 (no focal scaling) or a focal "
            "length >= 1.0 pixel",
        ),
        (
            ("MODEL.DEPTH_HEAD.SILOG_LAMBDA", "2.0"),
            "MODEL.DEPTH_HEAD.SILOG_LAMBDA = 2.0: allowed a finite number in [0.0, 1.0]",
        ),
        (
            ("MODEL.POINT_HEAD.NO_SURFACE_CLASSES", "[7]"),
            "MODEL.POINT_HEAD.NO_SURFACE_CLASSES = [7]: allowed a list of semantic class ids in "
            "[0, 7) (MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7)",
        ),
        (
            ("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "3"),
            "MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 3: allowed an integer outside the class ids "
            "[0, 7)",
        ),
        (
            ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "0"),
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES = 0: allowed an integer >= 1",
        ),
        (
            ("MODEL.ROI_HEADS.NUM_CLASSES", "0"),
            "MODEL.ROI_HEADS.NUM_CLASSES = 0: allowed an integer >= 1",
        ),
        (
            ("MODEL.PANOPTIC_CURRICULUM.DEPTH_ON", "False"),
            "MODEL.POINT_HEAD.ENABLED = True: allowed only with "
            "MODEL.PANOPTIC_CURRICULUM.DEPTH_ON True",
        ),
        (
            (
                "MODEL.PANOPTIC_CURRICULUM.SEM_SEG_ON",
                "False",
                "MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON",
                "False",
                "MODEL.PANOPTIC_CURRICULUM.DEPTH_ON",
                "False",
                "MODEL.POINT_HEAD.ENABLED",
                "False",
            ),
            "MODEL.PANOPTIC_CURRICULUM.SEM_SEG_ON/INSTANCE_ON/DEPTH_ON = False/False/False: "
            "allowed at least one branch switched on",
        ),
        (
            ("MODEL.PANOPTIC_CURRICULUM.PANOPTIC_OVERLAP_THRESH", "1.5"),
            "MODEL.PANOPTIC_CURRICULUM.PANOPTIC_OVERLAP_THRESH = 1.5: allowed a finite number "
            "in [0.0, 1.0]",
        ),
        (
            ("MODEL.POINT_HEAD.CONSISTENCY_WEIGHT", "-1.0"),
            "MODEL.POINT_HEAD.CONSISTENCY_WEIGHT = -1.0: allowed a finite number >= 0.0",
        ),
        (
            ("CURRICULUM.JOINT_LR_FACTOR", "0.0"),
            "CURRICULUM.JOINT_LR_FACTOR = 0.0: allowed a finite number > 0.0",
        ),
        (
            ("CURRICULUM.INSTANCE_LR_FACTOR", "-2.0"),
            "CURRICULUM.INSTANCE_LR_FACTOR = -2.0: allowed a finite number > 0.0",
        ),
        (("SOLVER.IMS_PER_BATCH", "0"), "SOLVER.IMS_PER_BATCH = 0: allowed an integer >= 1"),
        (
            ("SOLVER.CHECKPOINT_PERIOD", "0"),
            "SOLVER.CHECKPOINT_PERIOD = 0: allowed an integer >= 1",
        ),
    ],
    ids=lambda x: x[0] if isinstance(x, tuple) else None,
)
def test_bad_config_value_names_key(opts, expected):
    """A config value outside its range fails at load time with `KEY = value: allowed ...`."""
    message = _config_error(*opts)
    assert expected in message
    assert CONFIG in message


def test_several_bad_values_are_listed_together():
    """Three bad keys at once: one line each, in one error."""
    message = _config_error(
        "MODEL.POINT_HEAD.NUM_POINTS", "-5", "CURRICULUM.STAGES", "[]", "SOLVER.BASE_LR", "0.0"
    )
    assert message.startswith("3 invalid config values")
    lines = message.splitlines()[1:]
    assert [line.split(" = ")[0].strip() for line in lines] == [
        "MODEL.POINT_HEAD.NUM_POINTS",
        "CURRICULUM.STAGES",
        "SOLVER.BASE_LR",
    ]


def test_shipped_configs_and_defaults_are_valid():
    """Every YAML in configs/ and the plain defaults pass validation (no false alarms)."""
    import glob

    from detectron2.config import get_cfg

    from panoptic_curriculum import add_panoptic_curriculum_config

    for path in sorted(glob.glob(os.path.join("configs", "**", "*.yaml"), recursive=True)):
        load_config(path)  # validates
    cfg = get_cfg()
    add_panoptic_curriculum_config(cfg)
    validate_config(cfg)
    for stage in ("semantic", "instance", "merge", "joint"):
        validate_config(stage_config(load_config(CONFIG), stage, "unused_root"))


def test_config_without_plugin_keys():
    """validate_config on a plain detectron2 config says how to add the plugin's keys."""
    from detectron2.config import get_cfg

    with pytest.raises(KeyError, match="add_panoptic_curriculum_config"):
        validate_config(get_cfg())


def test_hand_built_config_checked_at_model_build():
    """A config built by hand with NUM_POINTS -5 fails when the model is built."""
    cfg = tiny_cfg(CONFIG, "MODEL.POINT_HEAD.NUM_POINTS", -5)
    with pytest.raises(ValueError, match="MODEL.POINT_HEAD.NUM_POINTS = -5: allowed"):
        build_model(cfg)


@pytest.mark.parametrize(
    "opts, expected",
    [
        (("SOLVER.MAX_ITER", 0), "SOLVER.MAX_ITER = 0: allowed an integer >= 1"),
        (("CURRICULUM.SEMANTIC_ITER", 0), "CURRICULUM.SEMANTIC_ITER = 0: allowed"),
    ],
    ids=["max_iter_0", "semantic_iter_0"],
)
def test_hand_built_config_checked_at_trainer_build(opts, expected, tmp_path):
    """A training run with 0 iterations fails when the trainer is built, before any work."""
    cfg = tiny_cfg(CONFIG, "OUTPUT_DIR", str(tmp_path), *opts)
    if opts[0].startswith("CURRICULUM"):  # as the curriculum derives the stage's config
        cfg = stage_config(cfg, "semantic")
    with pytest.raises(ValueError, match=expected):
        PanopticCurriculumTrainer(cfg)
    assert not os.listdir(tmp_path)


# ====================================================================== labels in the mapper
def _label_file(tmp_path, value):
    labels = np.full((96, 128), 4, np.uint8)
    labels[10:20, 30:40] = value
    labels[0:5] = 255  # ignore: allowed
    path = str(tmp_path / "labels_bad.png")
    cv2.imwrite(path, labels)
    return path


@pytest.mark.parametrize("value", [7, 200])
def test_label_value_out_of_range_names_file(small_dicts, tmp_path, value):
    """A label value >= NUM_CLASSES that is not the ignore value names the label file."""
    cfg = load_config(CONFIG)
    mapper = RGBDDatasetMapper(cfg, is_train=True)
    d = dict(small_dicts[0], sem_seg_file_name=_label_file(tmp_path, value))
    with pytest.raises(ValueError) as e:
        mapper(d)
    message = str(e.value)
    assert "labels_bad.png" in message and f"[{value}]" in message
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7" in message and "IGNORE_VALUE = 255" in message
    mapper(dict(small_dicts[0], sem_seg_file_name=_label_file(tmp_path, 6)))  # in range: fine


def test_annotation_category_out_of_range_names_image(small_dicts):
    """An instance annotation with category_id >= ROI_HEADS.NUM_CLASSES names the image."""
    mapper = RGBDDatasetMapper(load_config(CONFIG), is_train=True)
    d = json.loads(json.dumps(small_dicts[0]))  # deep copy
    assert d["annotations"]
    d["annotations"][0]["category_id"] = 9
    with pytest.raises(ValueError) as e:
        mapper(d)
    assert os.path.basename(d["file_name"]) in str(e.value)
    assert "category_id [9]" in str(e.value) and "MODEL.ROI_HEADS.NUM_CLASSES = 4" in str(e.value)


# ====================================================================== synthetic dataset files
@pytest.fixture
def split_copy(small_split_dir, tmp_path):
    """A private copy of the small synthetic split, to damage."""
    dst = str(tmp_path / "split")
    shutil.copytree(small_split_dir, dst)
    params = {k: v for k, v in SMALL_PARAMS.items() if k != "split"}
    return dst, params


def _edit_json(path, edit):
    with open(path) as f:
        content = json.load(f)
    edit(content)
    with open(path, "w") as f:
        json.dump(content, f)


def _load_error(split_copy, exc=ValueError) -> str:
    with pytest.raises(exc) as e:
        load_synthetic_scenes(*split_copy)
    return str(e.value)


def test_camera_json_without_K(split_copy):
    """A camera JSON without "K" names the camera file and what it needs."""
    camera = os.path.join(split_copy[0], "camera", "000002.json")
    _edit_json(camera, lambda c: c.pop("K"))
    message = _load_error(split_copy)
    assert camera in message and "'K'" in message


def test_camera_json_unknown_depth_format(split_copy):
    """A camera JSON whose depth_format is not registered names the file and the formats."""
    camera = os.path.join(split_copy[0], "camera", "000001.json")
    _edit_json(camera, lambda c: c.update(depth_format="exr"))
    message = _load_error(split_copy)
    assert camera in message and "'exr'" in message and "png_mm" in message


@pytest.mark.parametrize(
    "relpath",
    ["camera/000003.json", "instances.json", "panoptic.json"],
    ids=["camera", "instances", "panoptic"],
)
def test_malformed_json_names_file(split_copy, relpath):
    """A truncated camera / instances / panoptic JSON names the file (not a bare JSONDecodeError)."""
    path = os.path.join(split_copy[0], relpath)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
    message = _load_error(split_copy)
    assert path in message


def test_unknown_panoptic_category(split_copy):
    """A panoptic segment with category_id 99 names panoptic.json and the allowed ids."""
    path = os.path.join(split_copy[0], "panoptic.json")
    _edit_json(path, lambda c: c["annotations"][1]["segments_info"][0].update(category_id=99))
    message = _load_error(split_copy)
    assert path in message and "category_id 99" in message and "allowed" in message


def test_panoptic_json_missing_an_image(split_copy):
    """A panoptic JSON without the annotation of an image names the file and the image."""
    path = os.path.join(split_copy[0], "panoptic.json")
    _edit_json(path, lambda c: c["annotations"].pop(2))
    message = _load_error(split_copy)
    assert path in message and "image_id 2" in message and "000002.png" in message


# ====================================================================== near-zero focal lengths
def test_near_zero_focal_in_camera_json(split_copy):
    """A synthetic camera JSON with fx = 1e-12 names the file and the 1-pixel minimum."""
    camera = os.path.join(split_copy[0], "camera", "000004.json")
    _edit_json(camera, lambda c: c["K"][0].__setitem__(0, 1e-12))
    message = _load_error(split_copy)
    assert camera in message and "fx=1e-12" in message and ">= 1.0 pixel" in message


def test_near_zero_focal_in_dataset_dict(small_dicts):
    """A dataset dict whose K has fx = 1e-12 fails in the mapper, naming the image."""
    K = [[1e-12, 0.0, 64.0], [0.0, 100.0, 48.0], [0.0, 0.0, 1.0]]
    mapper = RGBDDatasetMapper(True, augmentations=[])
    with pytest.raises(ValueError, match=r"intrinsics of .*000000.png must have focal lengths"):
        mapper(dict(small_dicts[0], intrinsics=K))
    K[0][0] = 0.5  # normalised intrinsics, not pixels
    with pytest.raises(ValueError, match="normalised intrinsics"):
        mapper(dict(small_dicts[0], intrinsics=K))


def test_near_zero_focal_in_cityscapes_camera(tmp_path):
    """A Cityscapes camera JSON with fx = 1e-12 names the file."""
    path = str(tmp_path / "x_camera.json")
    with open(path, "w") as f:
        json.dump(
            {
                "extrinsic": {"baseline": 0.2},
                "intrinsic": {"fx": 1e-12, "fy": 2262.5, "u0": 1096.98, "v0": 513.137},
            },
            f,
        )
    with pytest.raises(ValueError, match="intrinsic.fx") as e:
        read_cityscapes_camera(path)
    assert path in str(e.value) and "fx=1e-12" in str(e.value)


def test_near_zero_focal_in_intrinsics_json(tmp_path):
    """The demo's --intrinsics JSON with fx = 1e-12 names the file."""
    path = str(tmp_path / "K.json")
    with open(path, "w") as f:
        json.dump({"fx": 1e-12, "fy": 500.0, "cx": 320.0, "cy": 240.0}, f)
    with pytest.raises(ValueError, match="fx, fy >= 1.0 pixels") as e:
        load_intrinsics_json(path)
    assert path in str(e.value)


# ====================================================================== all-ignore batches
@pytest.mark.parametrize("loss_type", ["cross_entropy", "hard_pixel_mining"])
def test_all_ignore_batch_gives_zero_losses(loss_type):
    """A batch with every label ignore and every depth invalid: every loss is a finite 0 that
    backpropagates (loss_sem_seg was NaN, which stopped training)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(CONFIG, "MODEL.SEM_SEG_HEAD.LOSS_TYPE", loss_type))
    model.train()
    batch = [fake_sample(seed=s, num_instances=0, depth_value=0.0) for s in (0, 1)]
    for x in batch:
        x["sem_seg"].fill_(255)
    with EventStorage():
        losses = model(batch)
    for k in ("loss_sem_seg", "loss_depth", "loss_sem_seg_3d", "loss_consistency"):
        assert losses[k].item() == 0.0, k
        assert losses[k].requires_grad, k
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    head = model.sem_seg_head
    assert all(
        p.grad is not None and not p.grad.any() for p in head.predictor.parameters()
    ), "an all-ignore batch must not move the semantic classifier"


def test_semantic_loss_unchanged_on_labelled_pixels():
    """With labelled pixels the semantic loss equals detectron2's DeepLab loss exactly."""
    torch.manual_seed(0)
    head = build_model(tiny_cfg(CONFIG)).sem_seg_head
    logits = torch.randn(2, 7, 16, 24)
    targets = torch.randint(0, 7, (2, 64, 96))
    targets[0, :10] = 255
    ours = head.losses(logits, targets)["loss_sem_seg"]
    theirs = DeepLabV3PlusHead.losses(head, logits, targets)["loss_sem_seg"]
    assert torch.isfinite(ours) and ours > 0
    assert torch.equal(ours, theirs)
