"""Models of the plugin; importing registers every module in detectron2's registries."""

from . import backbone  # registers the Xception backbones
from . import point_head  # registers the PointNet++ point-cloud head
from .instance_adapter import INSTANCE_ADAPTER_REGISTRY, ResidualConvAdapter  # registers adapters
from .depth_head import DEPTH_HEAD_REGISTRY, DeepLabDepthHead, build_depth_head
from .semantic_head import DeepLabV3PlusAnySizeHead  # registers the semantic head
from .meta_arch import PanopticCurriculumModel  # registers the meta-architecture

__all__ = [
    "DEPTH_HEAD_REGISTRY",
    "DeepLabDepthHead",
    "DeepLabV3PlusAnySizeHead",
    "INSTANCE_ADAPTER_REGISTRY",
    "ResidualConvAdapter",
    "PanopticCurriculumModel",
    "build_depth_head",
]
