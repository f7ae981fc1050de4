"""Tiny models and inputs for the model tests."""

import torch

from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Boxes, Instances

from panoptic_curriculum import add_panoptic_curriculum_config
from panoptic_curriculum.engine.ablation import VARIANTS

NUM_THINGS, NUM_CLASSES = 4, 7


#: KEY VALUE options that shrink a config's heads for CPU tests (any config of configs/)
TINY_OPTS = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.FPN.OUT_CHANNELS",
    32,
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM",
    16,
    "MODEL.ROI_MASK_HEAD.NUM_CONV",
    1,
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS",
    32,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM",
    32,
    "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS",
    [32],
    "MODEL.DEPTH_HEAD.CONVS_DIM",
    32,
    "MODEL.POINT_HEAD.NUM_POINTS",
    256,
    "MODEL.POINT_HEAD.SA_NUM_CENTROIDS",
    [64, 16],
    "MODEL.POINT_HEAD.SA_NUM_NEIGHBORS",
    [8, 8],
    "MODEL.POINT_HEAD.SA_RADII",
    [0.5, 1.0],
    "MODEL.POINT_HEAD.SA_CHANNELS",
    [16, 32],
    "MODEL.POINT_HEAD.FP_CHANNELS",
    [32, 32],
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    50,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    32,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    32,
]
#: the same list under the name some tests use
TINY_OVERRIDES = TINY_OPTS


#: the plugin's defaults for how the point branch trains, as the ablation's variant sets them
#: (the main job's config sets class-balanced sampling, a detached depth and L_consist to
#: the 2D side only)
POINT_TRAINING_DEFAULTS = tuple(VARIANTS["curriculum_point_uniform"].opts)


def tiny_cfg(config_file="configs/synthetic/curriculum_R18_FPN.yaml", *overrides):
    """The synthetic R18-FPN config (or ``config_file``) shrunk for CPU tests."""
    cfg = get_cfg()
    add_panoptic_curriculum_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list([*TINY_OPTS, *overrides])
    return cfg


def fake_sample(h=64, w=96, num_instances=2, seed=0, with_depth=True, depth_value=None):
    """A mapper-style training dict with consistent labels, masks, depth and K."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    sem = torch.full((h, w), 4, dtype=torch.long)  # ground
    sem[: h // 3] = 6  # sky
    inst = Instances((h, w))
    masks = torch.zeros(num_instances, h, w, dtype=torch.bool)
    classes = torch.arange(num_instances) % NUM_THINGS
    for i in range(num_instances):
        y0, x0 = 10 + 5 * i, 8 + 30 * i
        masks[i, y0 : y0 + 20, x0 : x0 + 16] = True
        sem[masks[i]] = int(classes[i])
    inst.gt_masks = BitMasks(masks)
    inst.gt_boxes = (
        inst.gt_masks.get_bounding_boxes() if num_instances else Boxes(torch.zeros(0, 4))
    )
    inst.gt_classes = classes
    d = {
        "image": image,
        "sem_seg": sem,
        "instances": inst,
        "height": h,
        "width": w,
        "file_name": f"fake_{seed}.png",
    }
    if with_depth:
        depth = 2.0 + 10.0 * torch.rand(h, w, generator=g)
        depth[sem == 6] = 0.0
        if depth_value is not None:
            depth.fill_(depth_value)
        d["depth"] = depth
        d["intrinsics"] = torch.tensor([[80.0, 0, (w - 1) / 2], [0, 80.0, (h - 1) / 2], [0, 0, 1]])
    return d


def tiny_curriculum_cfg(split, out_dir, *overrides):
    """``tiny_cfg`` trained and evaluated on the dataset ``split`` under ``out_dir``: batches
    of 2 images at 96 px, no warm-up, 3 iterations per training stage (2 for the joint
    stage, not run unless ``CURRICULUM.STAGES`` asks for it), every stage evaluated, 1 data
    worker."""
    return tiny_cfg(
        "configs/synthetic/curriculum_R18_FPN.yaml",
        *[
            "DATASETS.TRAIN",
            (split,),
            "DATASETS.TEST",
            (split,),
            "OUTPUT_DIR",
            str(out_dir),
            "SOLVER.IMS_PER_BATCH",
            2,
            "DATALOADER.NUM_WORKERS",
            0,
            "SEED",
            0,
            "INPUT.MIN_SIZE_TRAIN",
            (96,),
            "INPUT.MAX_SIZE_TRAIN",
            200,
            "INPUT.MIN_SIZE_TEST",
            96,
            "INPUT.MAX_SIZE_TEST",
            200,
            "INPUT.CROP.SIZE",
            (64, 96),
            "SOLVER.WARMUP_ITERS",
            0,
            "CURRICULUM.SEMANTIC_ITER",
            3,
            "CURRICULUM.INSTANCE_ITER",
            3,
            "CURRICULUM.JOINT_ITER",
            2,
            # the shipped config ends with the joint stage; tests that need it ask for it
            "CURRICULUM.STAGES",
            ["semantic", "instance", "merge"],
            # every stage evaluated (the shipped config evaluates the merged and joint models)
            "CURRICULUM.EVAL_STAGES",
            ["semantic", "instance", "merge", "joint"],
            "SOLVER.CHECKPOINT_PERIOD",
            100,
            *overrides,
        ],
    )
