"""Dataset registration: importing this module registers every dataset of the plugin under
the root ``$DETECTRON2_DATASETS`` (default ``./datasets``)."""

import os

from .cityscapes_depth import register_all_cityscapes_depth
from .label_subsets import register_label_subset
from .nyud import register_all_nyud, register_nyud
from .rgbd import register_rgbd_dataset
from .synthetic_scenes import register_all_synthetic_scenes

_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_all_synthetic_scenes(_root)  # + the label-partial halves of its training split
register_all_cityscapes_depth(_root)
register_all_nyud(_root)

__all__ = [
    "register_all_cityscapes_depth",
    "register_all_nyud",
    "register_all_synthetic_scenes",
    "register_label_subset",
    "register_nyud",
    "register_rgbd_dataset",
]
