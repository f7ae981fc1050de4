"""Config keys of the panoptic_curriculum plugin.

``add_panoptic_curriculum_config(cfg)`` adds every key this plugin reads, each with its
default and unit. Keys a YAML file sets that are not defined here (or in detectron2) still
fail loudly at ``merge_from_file``, as in detectron2.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_panoptic_curriculum_config", "load_config"]


def add_panoptic_curriculum_config(cfg: CN) -> None:
    """Add the plugin's keys to ``cfg`` in place (idempotent)."""
    if hasattr(cfg, "CURRICULUM"):
        return
    # DeepLab keys (ASPP, poly LR schedule, ...), used by the semantic decoder.
    from detectron2.projects.deeplab import add_deeplab_config

    if not hasattr(cfg.MODEL.SEM_SEG_HEAD, "ASPP_CHANNELS"):
        add_deeplab_config(cfg)
    from .modeling.backbone.xception import add_xception_config

    add_xception_config(cfg)  # MODEL.XCEPTION

    # ---------------------------------------------------------------- data: depth + camera
    cfg.INPUT.DEPTH = CN()
    # Load "depth" (metres) and "intrinsics" (3x3, pixels) in the dataset mapper.
    cfg.INPUT.DEPTH.ENABLED = True
    # Depths above this (metres) are treated as invalid (set to 0) when loading.
    cfg.INPUT.DEPTH.MAX_DEPTH = 80.0
    # Depths below this (metres) are treated as invalid (set to 0) when loading.
    cfg.INPUT.DEPTH.MIN_DEPTH = 1e-3
    # Samples without depth or intrinsics: "error" raises naming the file, "skip" loads
    # the sample without "depth"/"intrinsics" (for datasets such as COCO).
    cfg.INPUT.DEPTH.MISSING = "error"

    # ---------------------------------------------------------------- meta-architecture
    cfg.MODEL.PANOPTIC_CURRICULUM = CN()
    # Build and run the DeepLabV3+ semantic decoder.
    cfg.MODEL.PANOPTIC_CURRICULUM.SEM_SEG_ON = True
    # Build and run the Mask R-CNN instance decoder (RPN + ROI heads).
    cfg.MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON = True
    # Build and run the depth head.
    cfg.MODEL.PANOPTIC_CURRICULUM.DEPTH_ON = True
    # Weight of the semantic cross-entropy loss (L_2D-seg).
    cfg.MODEL.PANOPTIC_CURRICULUM.SEM_SEG_LOSS_WEIGHT = 1.0
    # Weight applied to every Mask R-CNN loss (loss_rpn_*, loss_cls, loss_box_reg, loss_mask).
    cfg.MODEL.PANOPTIC_CURRICULUM.INSTANCE_LOSS_WEIGHT = 1.0
    # Panoptic fusion (as Panoptic FPN): instances below this score are dropped.
    cfg.MODEL.PANOPTIC_CURRICULUM.PANOPTIC_INSTANCES_CONFIDENCE_THRESH = 0.5
    # Panoptic fusion: an instance whose visible part overlaps earlier ones by more than
    # this fraction is dropped.
    cfg.MODEL.PANOPTIC_CURRICULUM.PANOPTIC_OVERLAP_THRESH = 0.5
    # Panoptic fusion: stuff regions smaller than this (pixels) are dropped.
    cfg.MODEL.PANOPTIC_CURRICULUM.PANOPTIC_STUFF_AREA_LIMIT = 64
    # Parameter-name prefixes frozen (no gradients, normalisation statistics fixed) in any
    # training run, curriculum or not, e.g. ["backbone"].
    cfg.MODEL.FREEZE = CN()
    cfg.MODEL.FREEZE.PREFIXES = []

    # ---------------------------------------------------------------- depth head
    cfg.MODEL.DEPTH_HEAD = CN()
    # Name in DEPTH_HEAD_REGISTRY.
    cfg.MODEL.DEPTH_HEAD.NAME = "DeepLabDepthHead"
    # Backbone features the head reads (finest first).
    cfg.MODEL.DEPTH_HEAD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    # Channels of the head's convolutions.
    cfg.MODEL.DEPTH_HEAD.CONVS_DIM = 128
    # Normalisation in the head ("", "BN", "GN", "SyncBN").
    cfg.MODEL.DEPTH_HEAD.NORM = "GN"
    # Predicted depth range (metres, of the canonical camera when CANONICAL_FOCAL > 0).
    cfg.MODEL.DEPTH_HEAD.MIN_DEPTH = 0.1
    cfg.MODEL.DEPTH_HEAD.MAX_DEPTH = 80.0
    # Loss: "silog" (scale-invariant log), "l1_log" (L1 on log depth) or "l1" (metres).
    cfg.MODEL.DEPTH_HEAD.LOSS_TYPE = "silog"
    # Variance weight lambda of the scale-invariant log loss (0: plain L2 on log depth).
    cfg.MODEL.DEPTH_HEAD.SILOG_LAMBDA = 0.85
    # Weight of L_depth.
    cfg.MODEL.DEPTH_HEAD.LOSS_WEIGHT = 1.0
    # Focal length (pixels) of the canonical camera the head predicts depth for; depth is
    # scaled by fx / CANONICAL_FOCAL of each image. 0: no focal scaling (camera-agnostic).
    cfg.MODEL.DEPTH_HEAD.CANONICAL_FOCAL = 0.0
    # Append each pixel's normalised ray direction ((u-cx)/fx, (v-cy)/fy) to the head's
    # features (camera-aware convolutions).
    cfg.MODEL.DEPTH_HEAD.CAMERA_COORDS = False
    # Speed opt-in: one 5x5 depthwise-separable convolution (depthwise, then 1x1 + norm +
    # ReLU) instead of the two 3x3 convolutions; same receptive field, about a tenth of their
    # multiply-adds. Another architecture: weights trained without it do not fit.
    cfg.MODEL.DEPTH_HEAD.USE_DEPTHWISE_SEPARABLE_CONV = False

    # ---------------------------------------------------------------- point-cloud branch
    cfg.MODEL.POINT_HEAD = CN()
    # Back-project predicted depth and segment the point cloud (training-time teacher).
    cfg.MODEL.POINT_HEAD.ENABLED = True
    # Name in POINT_HEAD_REGISTRY.
    cfg.MODEL.POINT_HEAD.NAME = "PointNet2SegHead"
    # Points sampled per image among pixels with valid predicted and ground-truth depth.
    cfg.MODEL.POINT_HEAD.NUM_POINTS = 4096
    # Set-abstraction levels: centroids kept per level (farthest-point sampling).
    cfg.MODEL.POINT_HEAD.SA_NUM_CENTROIDS = [1024, 256, 64]
    # Neighbours grouped around each centroid, per level.
    cfg.MODEL.POINT_HEAD.SA_NUM_NEIGHBORS = [32, 32, 32]
    # Ball-query radius per level (metres); 0 means plain kNN grouping.
    cfg.MODEL.POINT_HEAD.SA_RADII = [0.5, 1.0, 2.0]
    # Output channels of each level's shared MLP.
    cfg.MODEL.POINT_HEAD.SA_CHANNELS = [64, 128, 256]
    # Feed the 2D encoder features sampled at each point's pixel to the point network.
    cfg.MODEL.POINT_HEAD.USE_IMAGE_FEATURES = False
    # Weight of L_3D-seg (per-point cross-entropy against the label at its pixel).
    cfg.MODEL.POINT_HEAD.LOSS_WEIGHT = 1.0
    # L_consist between the 2D and 3D class distributions at the same pixels:
    # "sym_kl" (symmetric KL), "js" (Jensen-Shannon) or "l2" (squared L2 of probabilities).
    cfg.MODEL.POINT_HEAD.CONSISTENCY_LOSS = "js"
    # Weight of L_consist.
    cfg.MODEL.POINT_HEAD.CONSISTENCY_WEIGHT = 1.0
    # Return the labelled point cloud at inference ("point_cloud" in each output dict).
    cfg.MODEL.POINT_HEAD.INFERENCE_ON = False
    # Semantic class ids without a surface (e.g. sky): at inference, pixels predicted as
    # one of them are not lifted into the point cloud.
    cfg.MODEL.POINT_HEAD.NO_SURFACE_CLASSES = []
    from .modeling.point_head import add_point_head_config

    add_point_head_config(cfg)  # the PointNet++ layout keys (FP_CHANNELS, NORM, ...)

    # ---------------------------------------------------------------- curriculum
    cfg.CURRICULUM = CN()
    # Stages to run, in order: "semantic", "instance", "merge", "joint".
    cfg.CURRICULUM.STAGES = ["semantic", "instance", "merge"]
    # Solver iterations of each training stage (the merge stage does not train).
    cfg.CURRICULUM.SEMANTIC_ITER = 2000
    cfg.CURRICULUM.INSTANCE_ITER = 2000
    cfg.CURRICULUM.JOINT_ITER = 1000
    # Base learning rate of the joint fine-tuning stage, as a factor of SOLVER.BASE_LR.
    cfg.CURRICULUM.JOINT_LR_FACTOR = 0.1
    # Write the point cloud of one training sample every N iterations (0: never).
    cfg.CURRICULUM.POINT_CLOUD_DUMP_PERIOD = 0


def load_config(config_file: str, opts=(), freeze: bool = True) -> CN:
    """detectron2's defaults + this plugin's keys, merged with ``config_file`` (``_BASE_``
    inheritance) and the ``KEY VALUE`` list ``opts``; unknown keys raise ``KeyError``."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_panoptic_curriculum_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    if freeze:
        cfg.freeze()
    return cfg
