"""Install the ``panoptic_curriculum`` Detectron2 plugin from ``projects/panoptic_curriculum``.

Dependencies are pinned in ``requirements/`` and installed by ``scripts/setup_env.sh``
(Detectron2 v0.6 itself is built there from the registry's sdist).
"""

from setuptools import find_packages, setup

setup(
    name="panoptic_curriculum",
    version="0.1.0",
    description="Detectron2 plugin: one encoder for semantic, instance and panoptic "
    "segmentation plus metric depth, trained by a transfer-then-merge curriculum with "
    "3D-guided segmentation.",
    package_dir={"": "projects"},
    packages=find_packages("projects"),
    python_requires=">=3.10",
    install_requires=["torch", "torchvision", "numpy", "opencv-python", "pycocotools", "fvcore"],
)
