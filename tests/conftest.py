"""Shared fixtures: a small synthetic-scenes split generated once per test session."""

import os
import shutil

import pytest

import panoptic_curriculum  # noqa: F401  applies the detectron2 compatibility layer
from detectron2.data import DatasetCatalog

from panoptic_curriculum.data.datasets.synthetic_scenes import register_synthetic_scenes

SMALL_SPLIT = "synthetic_scenes_test_small"
SMALL_PARAMS = dict(split="test_small", num_images=6, seed=3, height=96, width=128)


@pytest.fixture(scope="module")
def module_tmp_path(request, tmp_path_factory):
    """A folder for one test module's shared runs (checkpoints of ~90 MB each), removed once
    the module's tests are done unless one of them failed, as pytest.ini's
    ``tmp_path_retention_policy = failed`` does for ``tmp_path``: the suite's disk use stays
    that of one module, not the sum of all."""
    failed_before = request.session.testsfailed
    path = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets"))


@pytest.fixture(scope="session")
def small_split(synthetic_root):
    """Name of a registered 6-image 96x128 synthetic split, generated on first use."""
    if SMALL_SPLIT not in DatasetCatalog.list():
        register_synthetic_scenes(SMALL_SPLIT, synthetic_root, **SMALL_PARAMS)
    return SMALL_SPLIT


@pytest.fixture(scope="session")
def small_dicts(small_split):
    return DatasetCatalog.get(small_split)


@pytest.fixture(scope="session")
def small_split_dir(small_split, synthetic_root):
    DatasetCatalog.get(small_split)
    return os.path.join(synthetic_root, "synthetic_scenes", SMALL_PARAMS["split"])
