"""The start of a training or evaluation job: detectron2's ``default_setup`` for this plugin."""

import logging
import os

import torch

from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..device import check_device

__all__ = ["default_setup", "LOGGER_NAME"]

#: the plugin's logger hierarchy ("panoptic_curriculum.engine.curriculum", ...)
LOGGER_NAME = "panoptic_curriculum"


def default_setup(cfg, args) -> logging.Logger:
    """detectron2's ``default_setup`` with three differences:

    * ``MODEL.DEVICE`` is checked against the machine first (an error says what to set);
    * the plugin's loggers (``panoptic_curriculum.*``: stage start and skip, resuming, the
      results table) write to the console and ``OUTPUT_DIR/log.txt`` like detectron2's;
    * ``OUTPUT_DIR/config.yaml`` is not written here: :func:`~.curriculum.run_curriculum`
      writes it after checking the config against the folder's run records, so a refused
      re-run does not overwrite the config the folder was trained with, and ``--eval-only``
      writes its config to ``inference/config.yaml``.

    As detectron2's, it logs the environment, the arguments and the config, seeds the RNGs
    (``SEED + rank`` when ``SEED >= 0``) and sets ``torch.backends.cudnn.benchmark`` for
    training. Returns the detectron2 logger.
    """
    check_device(cfg)
    output_dir = cfg.OUTPUT_DIR
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank, name=LOGGER_NAME, abbrev_name="pc")
    logger = setup_logger(output_dir, distributed_rank=rank)
    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    logger.info("Environment info:\n%s", collect_env_info())
    logger.info("Command line arguments: %s", args)
    config_file = getattr(args, "config_file", "")
    if config_file:
        with open(config_file) as f:
            logger.info("Contents of args.config_file=%s:\n%s", config_file, f.read())
    logger.info("Running with full config:\n%s", cfg.dump())
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    return logger
