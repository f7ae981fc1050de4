"""The plugin's detectron2 trainer: RGB-D data, freezing, evaluators, atomic checkpoints and
exactly resumable training."""

import copy
import logging
import os
import weakref
from collections import OrderedDict

import torch

from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.build import build_batch_data_loader
from detectron2.data.common import MapDataset
from detectron2.engine import DefaultTrainer
from detectron2.engine import defaults as d2_defaults
from detectron2.engine import hooks as d2_hooks
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.modeling import build_model
from detectron2.projects.deeplab import build_lr_scheduler as build_deeplab_lr_scheduler
from detectron2.utils import comm

from ..config_validation import validate_config
from ..data.dataset_mapper import RGBDDatasetMapper
from ..data.labels import check_training_labels
from ..evaluation import DepthEvaluator
from .checkpoint import AtomicCheckpointer
from .data import PositionalDataset, ResumableTrainingSampler, SeededMapper
from .ddp import create_ddp_model
from .freeze import freeze_modules
from .hooks import RNGStateHook
from .optimizer import build_optimizer, check_optimizer_state_fits
from .pointcloud_hook import build_pointcloud_hook

__all__ = ["PanopticCurriculumTrainer", "create_ddp_model"]

logger = logging.getLogger(__name__)


# DefaultTrainer.__init__ calls the module-level function; v0.6's passes CUDA device ids even
# for CPU models, which DistributedDataParallel rejects, and never finds unused parameters.
d2_defaults.create_ddp_model = create_ddp_model


class RNGNeutralIterator:
    """Fetches batches without touching the global torch RNG of the training process.

    A DataLoader draws its worker base seed from the global RNG when its iteration starts
    (at ``iter()``, or lazily at the first batch behind detectron2's aspect-ratio grouping);
    after a resume that draw would land in the middle of the restored training stream.
    Sample randomness comes from :class:`SeededMapper` instead.
    """

    def __init__(self, iterator):
        self._it = iterator

    def __iter__(self):
        return self

    def __next__(self):
        with torch.random.fork_rng(devices=[]):
            return next(self._it)


class PanopticCurriculumTrainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` for the multi-task model.

    * data: :class:`RGBDDatasetMapper`, and a training stream that is a pure function of
      ``(cfg.SEED, position)`` so that resuming reproduces the uninterrupted run;
    * ``MODEL.FREEZE.PREFIXES`` frozen after building the model;
    * evaluators chosen from the dataset's ``evaluator_type`` and the branches that are on,
      plus :class:`DepthEvaluator` for datasets with depth;
    * detectron2's SGD, or AdamW (``SOLVER.OPTIMIZER``), with per-module learning-rate
      multipliers (``SOLVER.LR_MULTIPLIERS``) and the poly / step LR schedules of detectron2's
      DeepLab project;
    * atomic checkpoints that also carry the RNG states.
    """

    def __init__(self, cfg):
        validate_config(cfg, training=True)  # also configs built by hand
        super().__init__(cfg)
        self._trainer._data_loader_iter = RNGNeutralIterator(self._trainer._data_loader_iter)
        # the optimizer's hyperparameters and the LR schedule as this config starts them
        self._config_schedule = (
            [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups],
            copy.deepcopy(self.scheduler.state_dict()),
        )

    # ------------------------------------------------------------------ building
    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        if cfg.MODEL.FREEZE.PREFIXES:
            freeze_modules(model, cfg.MODEL.FREEZE.PREFIXES)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        logger.info("Model: %.2fM parameters, %.2fM trainable", total / 1e6, trainable / 1e6)
        return model

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        check_training_labels(cfg, dicts)  # a dataset without a label the branches need
        if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS and cfg.MODEL.PANOPTIC_CURRICULUM.INSTANCE_ON:
            # detectron2's filter, only where instances are trained (a semantic stage keeps
            # every labelled image)
            kept = [d for d in dicts if any(a.get("iscrowd", 0) == 0 for a in d["annotations"])]
            logger.info("Removed %d images without instance annotations", len(dicts) - len(kept))
            dicts = kept
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        sampler = ResumableTrainingSampler(
            len(dicts), seed=seed, start=start_iter * cfg.SOLVER.IMS_PER_BATCH
        )
        dataset = MapDataset(
            PositionalDataset(dicts), SeededMapper(RGBDDatasetMapper(cfg, True), seed)
        )
        return build_batch_data_loader(
            dataset,
            sampler,
            cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=RGBDDatasetMapper(cfg, False))

    @classmethod
    def build_optimizer(cls, cfg, model):
        # detectron2's SGD or AdamW (SOLVER.OPTIMIZER), with SOLVER.LR_MULTIPLIERS per module
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_deeplab_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """Evaluators for ``dataset_name`` given its ``evaluator_type`` and the model's
        branches: semantic (SemSeg / Cityscapes), instances (COCO / Cityscapes), panoptic
        (COCO panoptic, also for Cityscapes with depth; needs both branches) and depth
        (datasets with ``has_depth``)."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        meta = MetadataCatalog.get(dataset_name)
        kind = meta.get("evaluator_type", None)
        pc = cfg.MODEL.PANOPTIC_CURRICULUM
        sem, inst = pc.SEM_SEG_ON, pc.INSTANCE_ON
        evaluators = []
        if kind in ("coco_panoptic_seg", "coco", "sem_seg"):
            if sem and meta.get("stuff_classes"):
                evaluators.append(
                    SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
                )
            if inst and kind != "sem_seg":
                evaluators.append(
                    COCOEvaluator(dataset_name, ("bbox", "segm"), True, output_folder)
                )
            if sem and inst and kind == "coco_panoptic_seg":
                evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        elif kind in ("cityscapes_depth", "cityscapes_sem_seg", "cityscapes_instance"):
            if sem and kind != "cityscapes_instance":
                evaluators.append(CityscapesSemSegEvaluator(dataset_name))
            if inst and kind != "cityscapes_sem_seg":
                evaluators.append(CityscapesInstanceEvaluator(dataset_name))
            if sem and inst and kind == "cityscapes_depth":
                panoptic_json = meta.get("panoptic_json", None)
                if not panoptic_json or not os.path.isfile(panoptic_json):
                    raise FileNotFoundError(
                        f"the panoptic evaluation of {dataset_name} needs its panoptic ground "
                        f"truth {panoptic_json}; make it with tools/prepare_cityscapes.py"
                    )
                evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        if pc.DEPTH_ON and meta.get("has_depth", False):
            evaluators.append(
                DepthEvaluator(
                    dataset_name,
                    min_depth=cfg.INPUT.DEPTH.MIN_DEPTH,
                    max_depth=cfg.INPUT.DEPTH.MAX_DEPTH,
                    output_dir=output_folder,
                    # depth error per ground-truth class, where the dataset has label maps
                    class_names=meta.get("stuff_classes", None),
                )
            )
        if not evaluators:
            raise NotImplementedError(
                f"no evaluator for dataset {dataset_name} (evaluator_type {kind!r}) with the "
                "branches that are on"
            )
        return DatasetEvaluators(evaluators)

    def build_hooks(self):
        # the checkpointer the default hooks use: atomic writes, RNG state included; start
        # weights may be a partial initialisation (summary logged), a resume must fit exactly
        self.checkpointer = AtomicCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, strict=False, trainer=weakref.proxy(self)
        )
        ret = super().build_hooks()
        ret.insert(0, RNGStateHook())
        dump = build_pointcloud_hook(self.cfg)
        if dump is not None:  # before the writers, so its scalar is written in the same step
            writers = [i for i, h in enumerate(ret) if isinstance(h, d2_hooks.PeriodicWriter)]
            ret.insert(writers[0] if writers else len(ret), dump)
        return ret

    # ------------------------------------------------------------------ resuming
    def state_dict(self):
        # v0.6's DefaultTrainer leaves the optimizer (momentum, current LR) out of its
        # checkpoints; a resumed run would restart them from scratch
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            saved = state_dict["_trainer"].get("optimizer")
            if saved is not None:
                check_optimizer_state_fits(self.optimizer, saved)
            self._trainer.load_state_dict(state_dict["_trainer"])

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            # restart the data stream where the interrupted run stopped
            loader = self.build_train_loader(self.cfg, start_iter=self.start_iter)
            self._trainer.data_loader = loader
            with torch.random.fork_rng(devices=[]):  # iter() itself may draw a seed
                iterator = iter(loader)
            self._trainer._data_loader_iter = RNGNeutralIterator(iterator)
            logger.info("Resumed at iteration %d; data stream restarted there", self.start_iter)

    def apply_config_schedule(self) -> None:
        """After a resume, continue with this trainer's config instead of the checkpoint's
        solver settings: the optimizer's hyperparameters (learning rate, momentum, weight
        decay) and the learning-rate schedule (base rate, length, warm-up) become those a
        fresh run of ``self.cfg`` has at iteration ``self.start_iter``; the momentum buffers
        are kept. For a stage resumed with a changed config (``allow_config_change``)."""
        if self.start_iter >= self.max_iter:
            raise ValueError(
                f"{self.cfg.OUTPUT_DIR} has trained {self.start_iter} iterations already, not "
                f"fewer than SOLVER.MAX_ITER = {self.max_iter}"
            )
        groups, scheduler_state = self._config_schedule
        for group, fresh in zip(self.optimizer.param_groups, groups):
            group.update(copy.deepcopy(fresh))
        self.scheduler.load_state_dict(copy.deepcopy(scheduler_state))
        # the state after start_iter scheduler steps (one per finished iteration)
        self.scheduler.last_epoch = self.start_iter
        lrs = self.scheduler.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.scheduler._last_lr = list(lrs)
        logger.info(
            "Solver settings of the config applied from iteration %d on (learning rate %.6g)",
            self.start_iter,
            lrs[0],
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        return results if results else OrderedDict()
