"""Procedural RGB-D scenes whose depth, labels and intrinsics are exact by construction."""

from .generator import CATEGORIES, SceneSample, render_scene, sample_scene

__all__ = ["CATEGORIES", "SceneSample", "render_scene", "sample_scene"]
