"""Training: the trainer, the curriculum stages, freezing, merging, checkpoints, launching."""

from .curriculum import STAGES, run_curriculum, stage_config, summary_table
from .freeze import freeze_modules
from .merge import merge_stage_checkpoints
from .trainer import PanopticCurriculumTrainer

__all__ = [
    "STAGES",
    "PanopticCurriculumTrainer",
    "freeze_modules",
    "merge_stage_checkpoints",
    "run_curriculum",
    "stage_config",
    "summary_table",
]
