"""Config keys of the panoptic_curriculum plugin.

``add_panoptic_curriculum_config(cfg)`` adds every key this plugin reads, each with its
default and unit. Keys a YAML file sets that are not defined here (or in detectron2) still
fail loudly, as in detectron2. ``load_config`` parses YAML files (and their ``_BASE_`` chain)
with a safe loader only: a Python tag is an error naming the file.
"""

import os

from detectron2.config import CfgNode as CN

from .config_validation import validate_config

__all__ = ["add_panoptic_curriculum_config", "load_config", "validate_config"]


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

    # ---------------------------------------------------------------- training augmentation
    # Photometric jitter at training time (data/augmentations.py, RandomPhotometric).
    cfg.INPUT.PHOTOMETRIC = CN()
    cfg.INPUT.PHOTOMETRIC.ENABLED = False
    # Brightness, contrast and saturation factors drawn in [1 - x, 1 + x] (x in [0, 1)).
    cfg.INPUT.PHOTOMETRIC.BRIGHTNESS = 0.0
    cfg.INPUT.PHOTOMETRIC.CONTRAST = 0.0
    cfg.INPUT.PHOTOMETRIC.SATURATION = 0.0
    # White balance: red and blue gains (relative to green) drawn in [1 - x, 1 + x].
    cfg.INPUT.PHOTOMETRIC.WHITE_BALANCE = 0.0
    # Hue rotation about the grey axis drawn in [-x, x] degrees.
    cfg.INPUT.PHOTOMETRIC.HUE = 0.0
    # Gaussian blur with probability BLUR_PROB, sigma drawn in [0.3, BLUR_SIGMA] pixels
    # (0: never).
    cfg.INPUT.PHOTOMETRIC.BLUR_SIGMA = 0.0
    cfg.INPUT.PHOTOMETRIC.BLUR_PROB = 0.0
    # Additive Gaussian noise with probability NOISE_PROB, std drawn in [0, NOISE_STD]
    # (0-255 intensity units).
    cfg.INPUT.PHOTOMETRIC.NOISE_STD = 0.0
    cfg.INPUT.PHOTOMETRIC.NOISE_PROB = 0.0
    # Probability that an image gets the photometric change at all (the rest stay as
    # rendered); 1.0: every image.
    cfg.INPUT.PHOTOMETRIC.PROB = 1.0
    # Camera (focal-length) augmentation at training time: scale the image by a factor
    # drawn log-uniformly in ZOOM_RANGE and crop / pad back to its size; K is updated.
    cfg.INPUT.CAMERA_AUG = CN()
    cfg.INPUT.CAMERA_AUG.ENABLED = False
    cfg.INPUT.CAMERA_AUG.ZOOM_RANGE = (0.8, 1.25)

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
    # Loss weights: "fixed" (the *_LOSS_WEIGHT / LOSS_WEIGHT / CONSISTENCY_WEIGHT keys) or
    # "uncertainty" (one learned log-variance per task, Kendall et al. 2018, starting at the
    # fixed weights; logged as task_weight/<task>).
    cfg.MODEL.PANOPTIC_CURRICULUM.LOSS_WEIGHTING = "fixed"
    # Panoptic fusion (as Panoptic FPN): instances below this score are dropped.
    cfg.MODEL.PANOPTIC_CURRICULUM.PANOPTIC_INSTANCES_CONFIDENCE_THRESH = 0.5
    # Panoptic fusion: an instance whose visible part overlaps earlier ones by more than
    # this fraction is dropped.
    cfg.MODEL.PANOPTIC_CURRICULUM.PANOPTIC_OVERLAP_THRESH = 0.5
    # Panoptic fusion: stuff regions smaller than this (pixels) are dropped.
    cfg.MODEL.PANOPTIC_CURRICULUM.PANOPTIC_STUFF_AREA_LIMIT = 64
    # Run the convolutions in the channels-last (NHWC) memory format: the model's 4-D
    # weights and the input batch are stored that way (same numbers, another layout). A
    # speed option; README "Benchmark" (e) has what it gives on the CPU.
    cfg.MODEL.PANOPTIC_CURRICULUM.CHANNELS_LAST = False
    # Parameter-name prefixes frozen (no gradients, normalisation statistics fixed) in any
    # training run, curriculum or not, e.g. ["backbone"].
    cfg.MODEL.FREEZE = CN()
    cfg.MODEL.FREEZE.PREFIXES = []

    # ---------------------------------------------------------------- instance adapter
    # A residual block between the encoder and the Mask R-CNN decoder, owned (and trained)
    # by the instance decoder: in the curriculum's instance stage the encoder stays frozen
    # while the adapter learns what detection needs from its features. "" or "none": off.
    cfg.MODEL.INSTANCE_ADAPTER = CN()
    # Name in INSTANCE_ADAPTER_REGISTRY ("ResidualConvAdapter") or "none".
    cfg.MODEL.INSTANCE_ADAPTER.NAME = "none"
    # Convolutions in the residual block (the last starts at zero: identity at start).
    cfg.MODEL.INSTANCE_ADAPTER.NUM_CONVS = 2
    # Their kernel size (odd).
    cfg.MODEL.INSTANCE_ADAPTER.KERNEL_SIZE = 3
    # Normalisation after each convolution but the last ("", "GN", "BN", "SyncBN").
    cfg.MODEL.INSTANCE_ADAPTER.NORM = "GN"

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
    # Logit to log depth: "sigmoid" (bounded; its gradient fades near MAX_DEPTH) or
    # "log_linear" (geometric mean of the range + logit, clamped to it: one slope everywhere).
    cfg.MODEL.DEPTH_HEAD.OUTPUT = "sigmoid"
    # Add an image-level feature (global average of the coarsest level, 1x1 conv, ReLU) to
    # every pixel's features, as ASPP's image pooling does.
    cfg.MODEL.DEPTH_HEAD.GLOBAL_CONTEXT = False
    # Self-attention along each image column after the fusing convolutions (residual, ray
    # directions in queries and keys): carries the depth at a surface's foot up the column.
    cfg.MODEL.DEPTH_HEAD.COLUMN_CONTEXT = False
    # Loss: "silog" (scale-invariant log), "l1_log" (L1 on log depth) or "l1" (metres).
    cfg.MODEL.DEPTH_HEAD.LOSS_TYPE = "silog"
    # Variance weight lambda of the scale-invariant log loss (0: plain L2 on log depth).
    cfg.MODEL.DEPTH_HEAD.SILOG_LAMBDA = 0.85
    # Pixel weights gt ** DISTANCE_POWER in the depth loss's means (normalised to a mean of 1
    # over the batch's valid pixels): 0 weighs every pixel alike, 1 a pixel by its distance.
    cfg.MODEL.DEPTH_HEAD.DISTANCE_POWER = 0.0
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
    # Which side L_consist teaches: "both" (neither side detached), "to_3d" (the 2D logits
    # are detached: the 2D head teaches the point head), "to_2d" (the 3D logits are
    # detached: the point head teaches the 2D head) or "better_teaches" (per point, the side
    # giving the point's label the higher probability is detached and teaches the other:
    # the point network trains the 2D head only where it is the more correct of the two;
    # the share of such points is logged as point_branch/3d_teaches_2d_fraction).
    cfg.MODEL.POINT_HEAD.CONSISTENCY_DIRECTION = "both"
    # Which pixels the branch samples in training: "uniform" (every valid pixel alike) or
    # "class_balanced" (each class present in the image gets the same expected share of
    # the points, so small objects are not a few dozen points among thousands).
    # Inference always samples uniformly.
    cfg.MODEL.POINT_HEAD.SAMPLING = "uniform"
    # What the branch lifts: "depth" (the predicted depth, with K) or "plane" (every pixel at
    # 10 m: the points keep their image layout and lose the scene's 3D shape; the control
    # that tells what the geometry gives the branch from what its losses give).
    cfg.MODEL.POINT_HEAD.LIFT = "depth"
    # Lift a detached copy of the predicted depth: L_3D-seg and L_consist then do not train
    # the depth head (only L_depth does).
    cfg.MODEL.POINT_HEAD.DETACH_DEPTH = False
    # Depth-confidence gate of L_consist: 0 (off) or a factor g > 1; L_consist is then taken
    # only at points whose predicted depth is within a factor g of the ground truth (the
    # δ<g criterion), so that points lifted to the wrong place neither teach nor are taught.
    cfg.MODEL.POINT_HEAD.CONSISTENCY_DEPTH_GATE = 0.0
    # "" or a torch.compile backend ("inductor") for the point network's forward: on CUDA its
    # many small kernels are launch-bound (training step +51 % with the branch, +26 % compiled,
    # H200, README "Benchmark"); weights and checkpoints are the same either way.
    cfg.MODEL.POINT_HEAD.COMPILE_BACKEND = ""
    # Return the labelled point cloud at inference ("point_cloud" in each output dict).
    cfg.MODEL.POINT_HEAD.INFERENCE_ON = False
    # Semantic class ids without a surface (e.g. sky): at inference, pixels predicted as
    # one of them are not lifted into the point cloud.
    cfg.MODEL.POINT_HEAD.NO_SURFACE_CLASSES = []
    from .modeling.point_head import add_point_head_config

    add_point_head_config(cfg)  # the PointNet++ layout keys (FP_CHANNELS, NORM, ...)

    # ---------------------------------------------------------------- curriculum
    cfg.CURRICULUM = CN()
    # Stages to run, in order: "semantic", "instance", "merge", "joint". ["joint"] alone
    # trains the whole multi-task model jointly from MODEL.WEIGHTS (no curriculum).
    cfg.CURRICULUM.STAGES = ["semantic", "instance", "merge"]
    # Solver iterations of each training stage (the merge stage does not train).
    cfg.CURRICULUM.SEMANTIC_ITER = 2000
    cfg.CURRICULUM.INSTANCE_ITER = 2000
    cfg.CURRICULUM.JOINT_ITER = 1000
    # Training datasets of the semantic stage; empty: DATASETS.TRAIN. E.g. a dataset with
    # semantic labels and depth but no instance annotations.
    cfg.CURRICULUM.SEMANTIC_DATASETS = ()
    # Training datasets of the instance stage; empty: DATASETS.TRAIN. E.g. a COCO-format
    # instance dataset without semantic labels or depth. (The joint stage needs every label
    # and trains on DATASETS.TRAIN.)
    cfg.CURRICULUM.INSTANCE_DATASETS = ()
    # Base learning rate of the instance stage (a new Mask R-CNN decoder on the frozen
    # encoder), as a factor of SOLVER.BASE_LR.
    cfg.CURRICULUM.INSTANCE_LR_FACTOR = 1.0
    # Base learning rate of the joint fine-tuning stage (after merge), as a factor of
    # SOLVER.BASE_LR; joint training without a merge stage uses SOLVER.BASE_LR.
    cfg.CURRICULUM.JOINT_LR_FACTOR = 0.1
    # The joint fine-tuning stage's learning rate for the instance decoder (proposal
    # generator, RoI heads, instance adapter) as a multiple of that stage's rate for the rest
    # of the merged model (1: one rate for all; appended to SOLVER.LR_MULTIPLIERS).
    cfg.CURRICULUM.JOINT_INSTANCE_LR_MULTIPLIER = 1.0
    # Stages evaluated on DATASETS.TEST when they finish (a subset of STAGES; the others
    # train without an evaluation and have no row in summary.txt). The merged model
    # reproduces the semantic and instance stages' outputs exactly, so ["merge", "joint"]
    # reports every number of a four-stage curriculum with two evaluations instead of four.
    cfg.CURRICULUM.EVAL_STAGES = ["semantic", "instance", "merge", "joint"]
    # Write the point cloud of one training sample every N iterations (0: never).
    cfg.CURRICULUM.POINT_CLOUD_DUMP_PERIOD = 0
    # detectron2's SOLVER.MAX_ITER: each curriculum stage trains CURRICULUM.*_ITER iterations
    # instead, so run_curriculum rejects any other value than 0 here; set it only to train
    # PanopticCurriculumTrainer directly, outside the curriculum.
    cfg.SOLVER.MAX_ITER = 0
    # [module_prefix, multiplier] pairs: the parameters of that submodule of the model train at
    # multiplier x their learning rate (engine/optimizer.py); e.g. [["backbone", 0.1]].
    cfg.SOLVER.LR_MULTIPLIERS = []
    # "SGD" (detectron2's: SOLVER.MOMENTUM, SOLVER.NESTEROV) or "ADAMW" (torch's AdamW with
    # SOLVER.ADAMW_BETAS; decoupled weight decay SOLVER.WEIGHT_DECAY, e.g. 0.05, and a base
    # rate near 1e-4 to 1e-3, as Mask2Former trains). Both keep detectron2's per-parameter
    # groups (norm / bias weight decay, BIAS_LR_FACTOR), gradient clipping and LR schedule.
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.ADAMW_BETAS = (0.9, 0.999)


def load_config(config_file: str, opts=(), freeze: bool = True) -> CN:
    """detectron2's defaults + this plugin's keys, merged with ``config_file`` (``_BASE_``
    inheritance; every file read with ``yaml.safe_load``, a Python tag raises
    :class:`~panoptic_curriculum.utils.safe_load.UntrustedContentError`) and the ``KEY VALUE``
    list ``opts``; unknown keys raise ``KeyError``. The Python files named in the environment
    variable ``PANOPTIC_CURRICULUM_DATASETS`` (``os.pathsep``-separated; they register your
    own datasets) are run once per process first."""
    from detectron2.config import get_cfg

    from .utils.safe_load import merge_config_file

    cfg = get_cfg()
    add_panoptic_curriculum_config(cfg)
    merge_config_file(cfg, config_file)
    cfg.merge_from_list(list(opts or []))
    validate_config(cfg, config_file)
    from .data.datasets.rgbd import REGISTRATION_ENV, run_registration_files

    # your own dataset registrations: named by you in the environment, never by a config
    # file (a config someone hands you must not run code)
    run_registration_files(os.environ.get(REGISTRATION_ENV, "").split(os.pathsep))
    if freeze:
        cfg.freeze()
    return cfg
