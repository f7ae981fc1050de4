"""Two CPU processes (gloo) train a few iterations through our ``launch``; the replicas'
parameters must stay equal, and must actually change."""

import json
import os
import shutil
import sys

import torch

from detectron2.data import DatasetCatalog

from panoptic_curriculum import load_config
from panoptic_curriculum.engine.launch import launch

from conftest import SMALL_PARAMS

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
WORLD_SIZE = 2


def _train_worker(split_name, root, out_dir):
    """Runs in each spawned process: register the split, build a tiny trainer, train 3
    iterations and save the (unwrapped) model's state."""
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    torch.set_num_threads(1)  # 2 processes on 2 shared cores

    from detectron2.data import DatasetCatalog
    from detectron2.utils import comm
    from torch.nn.parallel import DistributedDataParallel

    from panoptic_curriculum.data.datasets.synthetic_scenes import register_synthetic_scenes
    from panoptic_curriculum.engine import PanopticCurriculumTrainer

    from model_utils import tiny_cfg

    if split_name not in DatasetCatalog.list():
        register_synthetic_scenes(split_name, root, **SMALL_PARAMS)  # already generated: reads
    overrides = {
        "MODEL.WEIGHTS": "",
        "DATASETS.TRAIN": (split_name,),
        "DATASETS.TEST": (),  # the final EvalHook then evaluates nothing
        "INPUT.MIN_SIZE_TRAIN": (96,),
        "INPUT.MAX_SIZE_TRAIN": 128,
        "INPUT.CROP.ENABLED": False,
        "SOLVER.IMS_PER_BATCH": WORLD_SIZE,  # 1 image per process
        "SOLVER.MAX_ITER": 3,
        "SOLVER.WARMUP_ITERS": 0,
        "SOLVER.CHECKPOINT_PERIOD": 100000,
        "DATALOADER.NUM_WORKERS": 0,
        "TEST.EVAL_PERIOD": 0,
        "OUTPUT_DIR": os.path.join(out_dir, "output"),
        "SEED": 0,
    }
    config_file = os.path.join(TESTS_DIR, "..", "configs/synthetic/curriculum_R18_FPN.yaml")
    cfg = tiny_cfg(config_file, *[x for kv in overrides.items() for x in kv])
    rank = comm.get_rank()
    trainer = PanopticCurriculumTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    unwrapped = model.module if isinstance(model, DistributedDataParallel) else model

    def cpu_state():
        return {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}

    torch.save(cpu_state(), os.path.join(out_dir, f"rank{rank}_init.pt"))
    seen = []  # the images this rank trained on

    def recording(batches):
        for batch in batches:
            seen.append([d["file_name"] for d in batch])
            yield batch

    trainer._trainer._data_loader_iter = recording(trainer._trainer._data_loader_iter)
    trainer.train()
    torch.save(cpu_state(), os.path.join(out_dir, f"rank{rank}.pt"))
    info = {
        "model_type": type(model).__name__,
        "world_size": comm.get_world_size(),
        "iter": trainer.iter,
        "seen": seen,
        "trainable": sorted(n for n, p in unwrapped.named_parameters() if p.requires_grad),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(info, f)


def test_two_cpu_processes_keep_replicas_equal(small_split, small_dicts, synthetic_root, tmp_path):
    assert len(DatasetCatalog.get(small_split)) == 6  # generated here; the children only read
    launch(
        _train_worker,
        WORLD_SIZE,
        num_machines=1,
        machine_rank=0,
        dist_url=f"file://{tmp_path / 'dist_init'}",
        args=(small_split, synthetic_root, str(tmp_path)),
    )
    infos = []
    for r in range(WORLD_SIZE):
        with open(tmp_path / f"rank{r}.json") as f:
            infos.append(json.load(f))
    for info in infos:
        assert info["model_type"] == "DistributedDataParallel"
        assert info["world_size"] == WORLD_SIZE
        assert info["iter"] == 3  # v0.6 leaves trainer.iter at MAX_ITER after training
    final = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    init0 = torch.load(tmp_path / "rank0_init.pt")
    init1 = torch.load(tmp_path / "rank1_init.pt")
    assert final[0].keys() == final[1].keys() == init0.keys() == init1.keys()
    # DDP broadcasts rank 0's state at construction
    for k in init0:
        assert torch.equal(init0[k], init1[k]), k
    # each process trained on its own shard: 1 image per iteration, different images
    seen = [info["seen"] for info in infos]
    assert [len(s) for s in seen] == [3, 3] and all(len(b) == 1 for s in seen for b in s)
    assert not {b[0] for b in seen[0]} & {b[0] for b in seen[1]}
    # the replicas stay bit-identical: same all-reduced gradients, same updates, and no
    # rank-local normalisation statistics (GroupNorm everywhere)
    different = [k for k in final[0] if not torch.equal(final[0][k], final[1][k])]
    assert not different, f"replicas diverged: {different[:10]}"
    trainable = infos[0]["trainable"]
    assert trainable == infos[1]["trainable"]
    assert not set(trainable) & set(different)
    # and training moved the parameters
    unchanged = [k for k in trainable if torch.equal(init0[k], final[0][k])]
    assert not unchanged, f"{len(unchanged)}/{len(trainable)} unchanged: {unchanged[:10]}"


def test_launch_world_size_one_calls_directly():
    calls = []
    launch(lambda *a: calls.append((a, os.getpid())), 1, args=(1, "x"))
    assert calls == [((1, "x"), os.getpid())]


# ---------------------------------------------------------------- every config, every stage

# every shipped config but the label-partial variant of the synthetic one (its per-stage
# datasets are the 400-image halves; tests/test_disjoint_labels.py trains it)
CONFIG_FILES = sorted(
    os.path.relpath(os.path.join(d, f), os.path.join(TESTS_DIR, ".."))
    for d, _, files in os.walk(os.path.join(TESTS_DIR, "..", "configs"))
    for f in files
    if f.startswith("curriculum_") and "disjoint_labels" not in f
)


def _training_stages(config_file):
    """The training stages the config itself runs (CURRICULUM.STAGES)."""
    stages = load_config(os.path.join(TESTS_DIR, "..", config_file)).CURRICULUM.STAGES
    return [s for s in stages if s != "merge"]
# (config, stage) whose model holds trainable parameters that no loss reaches: the COCO
# config's semantic stage reads p2 and p5 only, with depth off (backbone.fpn_output3/4)
NEEDS_FIND_UNUSED = {("configs/coco/curriculum_R50_FPN.yaml", "semantic")}


def _recording_trainer():
    from panoptic_curriculum.engine import PanopticCurriculumTrainer

    class RecordingTrainer(PanopticCurriculumTrainer):
        """Records, per training stage, how the model was wrapped and a checksum of every
        parameter after training."""

        records = []

        def train(self):
            super().train()
            model = self._trainer.model
            module = model.module if hasattr(model, "module") else model
            RecordingTrainer.records.append(
                {
                    "stage": os.path.basename(self.cfg.OUTPUT_DIR),
                    "wrapper": type(model).__name__,
                    "find_unused": getattr(model, "find_unused_parameters", None),
                    "iter": self.iter,
                    "checksums": {
                        n: float(p.detach().double().sum()) for n, p in module.named_parameters()
                    },
                }
            )

    return RecordingTrainer


def _all_configs_worker(split_name, root, out_dir):
    """Each process: every shipped config, shrunk, through semantic -> instance -> merge ->
    joint on the small synthetic split, 2 iterations per training stage."""
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    torch.set_num_threads(1)

    from detectron2.data import DatasetCatalog
    from detectron2.utils import comm

    from panoptic_curriculum.data.datasets.synthetic_scenes import register_synthetic_scenes
    from panoptic_curriculum.engine import run_curriculum

    from model_utils import tiny_cfg

    if split_name not in DatasetCatalog.list():
        register_synthetic_scenes(split_name, root, **SMALL_PARAMS)
    trainer_cls = _recording_trainer()
    records = {}
    for config_file in CONFIG_FILES:
        overrides = {
            "MODEL.WEIGHTS": "",
            "MODEL.RESNETS.DEPTH": 18,
            "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
            "MODEL.XCEPTION.MIDDLE_BLOCKS": 1,
            "MODEL.XCEPTION.WIDTH_MULTIPLIER": 0.25,
            "DATASETS.TRAIN": (split_name,),
            "DATASETS.TEST": (),
            "INPUT.MASK_FORMAT": "bitmask",  # the synthetic masks are RLE
            "INPUT.MIN_SIZE_TRAIN": (64,),
            "INPUT.MAX_SIZE_TRAIN": 128,
            "INPUT.CROP.SIZE": (48, 64),
            "SOLVER.IMS_PER_BATCH": WORLD_SIZE,
            "SOLVER.WARMUP_ITERS": 0,
            "SOLVER.CHECKPOINT_PERIOD": 100000,
            "DATALOADER.NUM_WORKERS": 0,
            "CURRICULUM.SEMANTIC_ITER": 2,
            "CURRICULUM.INSTANCE_ITER": 2,
            "CURRICULUM.JOINT_ITER": 2,
            "OUTPUT_DIR": os.path.join(out_dir, config_file.replace("/", "_")),
            "SEED": 0,
        }
        cfg = tiny_cfg(
            os.path.join(TESTS_DIR, "..", config_file),
            *[x for kv in overrides.items() for x in kv],
        )
        trainer_cls.records.clear()
        run_curriculum(cfg, trainer_cls=trainer_cls)
        records[config_file] = list(trainer_cls.records)
        comm.synchronize()
        if comm.is_main_process():  # its checkpoints (~300 MB) are not looked at: one on disk
            shutil.rmtree(cfg.OUTPUT_DIR)
    with open(os.path.join(out_dir, f"all_rank{comm.get_rank()}.json"), "w") as f:
        json.dump(records, f)


def test_every_config_and_stage_trains_in_two_processes(
    small_split, small_dicts, synthetic_root, tmp_path
):
    """DDP with frozen (instance stage) and unused (COCO semantic stage) parameters: each
    training stage of each shipped config trains 2 iterations in 2 gloo processes, with
    ``find_unused_parameters`` only where the stage needs it, and the replicas stay equal."""
    assert len(small_dicts) == 6
    launch(
        _all_configs_worker,
        WORLD_SIZE,
        dist_url=f"file://{tmp_path / 'dist_init'}",
        args=(small_split, synthetic_root, str(tmp_path)),
    )
    ranks = []
    for r in range(WORLD_SIZE):
        with open(tmp_path / f"all_rank{r}.json") as f:
            ranks.append(json.load(f))
    assert sorted(ranks[0]) == CONFIG_FILES and len(CONFIG_FILES) == 8
    for config_file in CONFIG_FILES:
        per_rank = [r[config_file] for r in ranks]
        stages = _training_stages(config_file)
        for rank_records in per_rank:
            assert [rec["stage"] for rec in rank_records] == stages
        for stage_i, stage in enumerate(stages):
            recs = [rank_records[stage_i] for rank_records in per_rank]
            for rec in recs:
                assert rec["wrapper"] == "DistributedDataParallel", (config_file, stage)
                assert rec["find_unused"] == ((config_file, stage) in NEEDS_FIND_UNUSED)
                assert rec["iter"] == 2
            assert recs[0]["checksums"] == recs[1]["checksums"], (config_file, stage)
