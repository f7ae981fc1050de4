"""Point-cloud branch: PointNet++ segmentation of the back-projected depth, its point-cloud
operators and its losses (L_3D-seg, L_consist)."""

from .losses import (
    CONSISTENCY_KINDS,
    consistency_loss,
    point_cross_entropy,
    route_to_better_teacher,
)
from .ops import (
    ball_query,
    farthest_point_sample,
    first_occurrence,
    gather_points,
    knn_group,
    class_balanced_weights,
    pairwise_sq_dist,
    sample_pixels,
    three_nn_interpolate,
)
from .pointnet2 import (
    POINT_HEAD_REGISTRY,
    MaskedBatchNorm,
    MaskedGroupNorm,
    PointNet2SegHead,
    SharedMLP,
    add_point_head_config,
    build_point_head,
)

__all__ = [
    "POINT_HEAD_REGISTRY",
    "build_point_head",
    "add_point_head_config",
    "PointNet2SegHead",
    "route_to_better_teacher",
    "SharedMLP",
    "MaskedBatchNorm",
    "MaskedGroupNorm",
    "point_cross_entropy",
    "consistency_loss",
    "CONSISTENCY_KINDS",
    "farthest_point_sample",
    "first_occurrence",
    "ball_query",
    "knn_group",
    "pairwise_sq_dist",
    "gather_points",
    "three_nn_interpolate",
    "sample_pixels",
    "class_balanced_weights",
]
