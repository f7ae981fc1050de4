"""Evaluators of the plugin (detectron2 ``DatasetEvaluator`` protocol)."""

from .depth_evaluation import DELTA_THRESHOLDS, METRIC_NAMES, DepthEvaluator

__all__ = ["DepthEvaluator", "METRIC_NAMES", "DELTA_THRESHOLDS"]
