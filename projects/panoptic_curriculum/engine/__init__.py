"""Training: the trainer, the curriculum stages, run records, freezing, merging, checkpoints,
job set-up, launching."""

from .curriculum import (
    STAGES,
    check_run_record,
    evaluate_run,
    final_stage,
    run_curriculum,
    stage_config,
    summary_table,
)
from .defaults import default_setup
from .freeze import freeze_modules
from .merge import merge_stage_checkpoints
from .run_record import ConfigMismatchError
from .trainer import PanopticCurriculumTrainer

__all__ = [
    "STAGES",
    "ConfigMismatchError",
    "PanopticCurriculumTrainer",
    "check_run_record",
    "default_setup",
    "evaluate_run",
    "final_stage",
    "freeze_modules",
    "merge_stage_checkpoints",
    "run_curriculum",
    "stage_config",
    "summary_table",
]
