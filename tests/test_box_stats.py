"""Box statistics and anchor suggestions for a registered dataset."""

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from panoptic_curriculum.data.box_stats import (
    box_statistics,
    format_box_statistics,
    suggest_anchors,
)


def test_statistics_of_a_split_and_scaling(small_split, small_dicts):
    stats = box_statistics(small_split)
    n = sum(len(d["annotations"]) for d in small_dicts)
    assert stats["all"]["count"] == n
    assert set(stats["per_class"]) <= set(MetadataCatalog.get(small_split).thing_classes)
    doubled = box_statistics(small_split, image_scale=2.0)
    assert doubled["all"]["size"][50] == pytest.approx(2 * stats["all"]["size"][50])
    assert doubled["all"]["aspect_ratio"] == stats["all"]["aspect_ratio"]
    assert "all" in format_box_statistics(stats)


def test_anchor_suggestion_covers_small_and_tall_objects():
    stats = {
        "all": {"size": {5: 7.5}},
        "per_class": {
            "ball": {"aspect_ratio": {50: 1.0}},
            "pillar": {"aspect_ratio": {50: 3.9}},
        },
    }
    anchors = suggest_anchors(stats, num_levels=5)
    assert anchors["SIZES"] == [[8.0], [16.0], [32.0], [64.0], [128.0]]
    assert anchors["ASPECT_RATIOS"] == [[0.5, 1.0, 2.0, 4.0]]


def test_dataset_without_boxes_is_named():
    DatasetCatalog.register("_no_boxes_", lambda: [{"file_name": "x.png", "annotations": []}])
    try:
        with pytest.raises(ValueError, match="_no_boxes_"):
            box_statistics("_no_boxes_")
    finally:
        DatasetCatalog.remove("_no_boxes_")
