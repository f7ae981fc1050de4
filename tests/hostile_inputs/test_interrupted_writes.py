"""Writes that are interrupted: a disk that fills up during a checkpoint save, an export or
a dataset generation, and processes killed while writing. Nothing partial may stay behind, a
full disk is reported as such with the path, and the leftovers of killed processes are
removed by the next run."""

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import panoptic_curriculum  # noqa: F401  (detectron2 compatibility fixes, dataset registration)
from panoptic_curriculum.data.datasets import synthetic_scenes
from panoptic_curriculum.engine import run_curriculum
from panoptic_curriculum.engine.checkpoint import AtomicCheckpointer
from panoptic_curriculum.utils import atomic_io

from model_utils import tiny_cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
R18_CONFIG = os.path.join(REPO, "configs", "synthetic", "curriculum_R18_FPN.yaml")


class _FullDiskFile:
    """A real file on which the disk fills up after ``room`` bytes: ``write`` stores what fits,
    then raises ``OSError(ENOSPC)``, as the operating system does."""

    def __init__(self, f, room):
        self._f, self._room = f, room

    def write(self, data):
        if len(data) > self._room:
            self._f.write(data[: self._room])
            self._f.flush()
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _full_disk_open(room):
    """``open`` whose files for writing hold at most ``room`` bytes."""

    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _FullDiskFile(f, room) if "w" in mode else f

    return fake_open


def _dead_pid():
    """The id of a process that has exited (and was reaped)."""
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout)


def _temp_files(folder):
    return sorted(n for n in os.listdir(folder) if ".tmp-" in n)


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_full_disk_during_checkpoint_save(tmp_path, monkeypatch, where):
    """The disk fills up while a checkpoint is written (torch's zip writer sees the failed write;
    or the final fsync fails)."""
    model = nn.Linear(64, 64)
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    before = (tmp_path / "model_0000001.pth").read_bytes()
    with torch.no_grad():
        model.weight.add_(1)

    if where == "write":
        monkeypatch.setattr(atomic_io, "open", _full_disk_open(room=4096), raising=False)
    else:

        def full_fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(atomic_io.os, "fsync", full_fsync)
    for name in ("model_0000001", "model_0000002"):  # over an old checkpoint, and a new one
        with pytest.raises(OSError) as info:
            ckpt.save(name)
        assert info.value.errno == errno.ENOSPC
        message = str(info.value)
        assert "no space left on device" in message
        assert str(tmp_path / f"{name}.pth") in message
        assert "inline_container" not in message
        assert _temp_files(tmp_path) == []  # the partial file is gone: the disk has room again
    assert (tmp_path / "model_0000001.pth").read_bytes() == before  # the old file is intact
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"

    monkeypatch.undo()  # space freed: the retry succeeds
    ckpt.save("model_0000002")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    saved = torch.load(tmp_path / "model_0000002.pth", weights_only=True)["model"]
    assert torch.equal(saved["weight"], model.weight.detach())


def test_full_disk_while_tagging_last_checkpoint(tmp_path, monkeypatch):
    """The disk fills up while the small last_checkpoint tag (a text file) is written."""
    ckpt = AtomicCheckpointer(nn.Linear(2, 2), str(tmp_path))
    ckpt.save("model_0000001")
    monkeypatch.setattr(atomic_io, "open", _full_disk_open(room=3), raising=False)
    with pytest.raises(OSError, match="no space left on device .*last_checkpoint"):
        ckpt.tag_last_checkpoint("model_0000002.pth")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert _temp_files(tmp_path) == []


KILLED_WRITER = textwrap.dedent(
    """
    import importlib.util, os, signal, sys
    spec = importlib.util.spec_from_file_location("atomic_io", sys.argv[1])
    atomic_io = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atomic_io)
    with atomic_io.atomic_open(sys.argv[2], "wb") as f:
        f.write(b"x" * 100000)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the save
    """
)


def test_killed_save_leaves_a_temp_file_that_the_next_start_removes(tmp_path):
    """A process killed (SIGKILL) in the middle of a checkpoint save orphans
    model_final.pth.tmp-<pid>; temporary files of processes still alive are kept."""
    target = tmp_path / "model_final.pth"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, atomic_io.__file__, str(target)],
        stderr=subprocess.PIPE,
    )
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, stderr
    orphan = f"model_final.pth.tmp-{proc.pid}"
    assert _temp_files(tmp_path) == [orphan] and not target.exists()
    alive = tmp_path / f"model_0000004.pth.tmp-{os.getppid()}"  # a writer that still runs
    alive.write_bytes(b"in progress")

    AtomicCheckpointer(nn.Linear(2, 2), str(tmp_path))  # the next start
    assert _temp_files(tmp_path) == [alive.name]


def test_curriculum_start_removes_stale_temp_files(tmp_path):
    """Temporary files of killed runs in the curriculum root (summary) and in a stage folder
    (stage marker, last_checkpoint) when the curriculum is started again."""
    dead = _dead_pid()
    (tmp_path / "semantic").mkdir()
    stale = [
        tmp_path / f"summary.json.tmp-{dead}",
        tmp_path / "semantic" / f"stage_complete.json.tmp-{dead}",
        tmp_path / "semantic" / f"last_checkpoint.tmp-{dead}",
    ]
    for path in stale:
        path.write_text("partial")

    class _Started(Exception):
        pass

    def trainer(cfg):  # stop the stage as soon as it would build its trainer
        raise _Started

    cfg = tiny_cfg(R18_CONFIG, "OUTPUT_DIR", str(tmp_path), "CURRICULUM.STAGES", ["semantic"])
    with pytest.raises(_Started):
        run_curriculum(cfg, trainer_cls=trainer)
    assert not any(p.exists() for p in stale)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_full_disk_during_export(tmp_path, monkeypatch, fmt):
    """torch.jit.save given a path aborts the process on a full disk; the export writes
    through a file object, so the user gets the ENOSPC error naming the file instead, and
    no partial model file stays."""
    from detectron2.modeling import build_model

    from panoptic_curriculum.export import export_model

    if fmt == "onnx":
        pytest.importorskip("onnx", reason="the 'export' extra is installed by scripts/test.sh")
    cfg = tiny_cfg(R18_CONFIG, "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 96)
    model = build_model(cfg).eval()
    image = torch.rand(3, 64, 96) * 255
    K = torch.tensor([[60.0, 0.0, 47.5], [0.0, 60.0, 31.5], [0.0, 0.0, 1.0]])
    out = tmp_path / "export"
    monkeypatch.setattr(atomic_io, "open", _full_disk_open(room=4096), raising=False)
    with pytest.raises(OSError) as info:
        export_model(model, cfg, image, K, str(out), fmt)
    assert info.value.errno == errno.ENOSPC
    assert "no space left on device" in str(info.value) and str(out) in str(info.value)
    assert os.listdir(out) == []  # neither the model file nor its temporary file
    monkeypatch.undo()  # space freed: the retry writes the model and its description
    path = export_model(model, cfg, image, K, str(out), fmt)
    assert os.path.getsize(path) > 4096 and sorted(os.listdir(out)) == sorted(
        [os.path.basename(path), "export_info.json"]
    )


GEN = dict(num_images=2, seed=5, height=32, width=48)


def test_full_disk_during_dataset_generation(tmp_path, monkeypatch):
    """The disk fills up while a synthetic-scenes split is generated."""
    split = tmp_path / "synthetic_scenes" / "x"
    monkeypatch.setattr(synthetic_scenes, "open", _full_disk_open(room=2000), raising=False)
    with pytest.raises(OSError) as info:
        synthetic_scenes.ensure_generated(str(split), GEN)
    assert info.value.errno == errno.ENOSPC
    assert "no space left on device" in str(info.value) and str(split) in str(info.value)
    assert sorted(os.listdir(split.parent)) == ["x.lock"]  # no partial folder, no split

    monkeypatch.undo()  # space freed: the retry generates the split
    synthetic_scenes.ensure_generated(str(split), GEN)
    assert len(os.listdir(split / "image")) == 2


def test_abandoned_dataset_generation_folders_are_removed(tmp_path):
    """Folders of generations that were killed (x.partial-<dead pid>), next to a complete split
    and before a new generation; the folder of a generation still running is kept."""
    parent = tmp_path / "synthetic_scenes"
    split = parent / "x"
    synthetic_scenes.ensure_generated(str(split), GEN)
    dead = parent / f"x.partial-{_dead_pid()}"
    (dead / "image").mkdir(parents=True)
    (dead / "image" / "000000.png").write_bytes(b"half")
    running = parent / f"x.partial-{os.getppid()}"
    running.mkdir()
    other_split = parent / f"y.partial-{_dead_pid()}"
    other_split.mkdir()

    synthetic_scenes.ensure_generated(str(split), GEN)  # complete already: nothing generated
    assert not dead.exists() and running.exists() and other_split.exists()
    dead.mkdir()
    synthetic_scenes.ensure_generated(str(split), dict(GEN, num_images=3))  # regenerated
    assert not dead.exists() and running.exists()
    assert len(os.listdir(split / "image")) == 3
