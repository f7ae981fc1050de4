"""panoptic_curriculum: a Detectron2 plugin for one-pass semantic, instance and panoptic
segmentation plus metric depth, trained by a transfer-then-merge curriculum with
3D-guided segmentation.

Importing the package applies the Detectron2 v0.6 compatibility layer first, then registers
the plugin's datasets.
"""

from . import compat

compat.apply()  # before any detectron2 import that needs it

from . import geometry  # noqa: E402
from .config import add_panoptic_curriculum_config, load_config, validate_config  # noqa: E402
from . import data  # noqa: E402  registers synthetic_scenes_*, cityscapes_fine_depth_*, nyud_v2_*
from . import modeling  # noqa: E402  registers the meta-architecture, backbones and heads
from . import evaluation  # noqa: E402  DepthEvaluator

__all__ = [
    "add_panoptic_curriculum_config",
    "load_config",
    "validate_config",
    "compat",
    "data",
    "evaluation",
    "geometry",
    "modeling",
]
__version__ = "0.1.0"
