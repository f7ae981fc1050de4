"""Atomic writes that clean up after themselves.

A file is written to ``<path>.tmp-<pid>`` in the same folder, flushed to disk, then renamed
over ``<path>``: readers see the old file or the new one, never a truncated one. When the
write fails the temporary file is removed at once (a full disk stays usable for the retry),
and a full disk is reported as such, with the path, whatever layer noticed it first (torch's
zip writer turns the ``OSError`` of the file into ``RuntimeError [enforce fail at
inline_container.cc]``). A process killed mid-write cannot clean up: its ``*.tmp-<pid>``
files, and the ``*.partial-<pid>`` folders of dataset generation, are removed by the next
run (:func:`remove_stale_temp_files`, :func:`remove_abandoned_folders`) once no process with
that id is alive.
"""

import errno
import logging
import os
import re
import shutil
from contextlib import contextmanager
from typing import List, Optional

__all__ = [
    "atomic_open",
    "atomic_torch_save",
    "atomic_write_text",
    "disk_full_error",
    "pid_alive",
    "remove_abandoned_folders",
    "remove_stale_temp_files",
    "temp_path",
]

logger = logging.getLogger(__name__)

_TEMP_FILE = re.compile(r"^(?P<target>.+)\.tmp-(?P<pid>\d+)$")
_PARTIAL_DIR = re.compile(r"^(?P<target>.+)\.partial-(?P<pid>\d+)$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def temp_path(path: str) -> str:
    """The temporary file ``path`` is written to by this process: ``<path>.tmp-<pid>``."""
    return f"{path}.tmp-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` runs on this machine (another user's counts)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it belongs to someone else
        return True
    return True


class _WriteGuard:
    """File-object proxy that remembers the first ``OSError`` of ``write``/``flush``: torch's
    zip writer reports it only as a ``RuntimeError`` of its own."""

    def __init__(self, f):
        self._f = f
        self.error: Optional[OSError] = None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        try:
            return self._f.flush()
        except OSError as e:
            self.error = self.error or e
            raise


def disk_full_error(exc: BaseException, path: str, seen: Optional[OSError] = None):
    """An ``OSError(ENOSPC)`` naming ``path`` when ``exc`` (or an error it was raised from or
    while handling, or ``seen``) is a full disk or an exceeded quota, else None."""
    chain, e = [seen] if seen is not None else [], exc
    while e is not None and len(chain) < 20:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            why = os.strerror(e.errno)
            return OSError(
                errno.ENOSPC,
                f"no space left on device while writing {path} ({why}); the partial output "
                "was removed: free some space and run again",
            )
    return None


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as e:  # never hide the error that brought us here
        logger.warning("Could not remove the temporary file %s: %s", path, e)


@contextmanager
def atomic_open(path: str, mode: str = "wb"):
    """Open ``path`` for writing through ``<path>.tmp-<pid>``; on leaving the block without
    error the data is flushed, synced and renamed over ``path``. On any error (or interrupt)
    the temporary file is removed and ``path`` is left as it was; a full disk raises
    ``OSError(ENOSPC)`` saying "no space left on device" with ``path``."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes files; mode {mode!r} is not a write mode")
    tmp = temp_path(path)
    guard = None
    try:
        with open(tmp, mode) as f:
            guard = _WriteGuard(f)
            yield guard
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        _remove_quietly(tmp)
        full = disk_full_error(e, path, guard.error if guard is not None else None)
        if full is not None:
            raise full from e
        raise


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_open`)."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def _dead_entries(folder: str, pattern, want_dir: bool) -> List[str]:
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in sorted(names):
        m = pattern.match(name)
        if m is None or pid_alive(int(m.group("pid"))):
            continue
        full = os.path.join(folder, name)
        if os.path.islink(full) or os.path.isdir(full) != want_dir:
            continue
        found.append(full)
    return found


def remove_stale_temp_files(folder: str) -> List[str]:
    """Remove the ``*.tmp-<pid>`` files in ``folder`` whose writer (process ``pid``) no longer
    runs: leftovers of a process killed while saving. Returns the removed paths."""
    removed = []
    for path in _dead_entries(folder, _TEMP_FILE, want_dir=False):
        try:
            os.remove(path)
        except FileNotFoundError:  # another process cleaned it first
            continue
        logger.info("Removed %s, left by a process that was stopped while writing", path)
        removed.append(path)
    return removed


def remove_abandoned_folders(folder: str, target: Optional[str] = None) -> List[str]:
    """Remove the ``<target>.partial-<pid>`` folders in ``folder`` (any target when None)
    whose writer no longer runs: a dataset generation that was killed. Returns them."""
    removed = []
    for path in _dead_entries(folder, _PARTIAL_DIR, want_dir=True):
        if target is not None and _PARTIAL_DIR.match(os.path.basename(path))["target"] != target:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            logger.info("Removed %s, left by a process that was stopped while writing", path)
            removed.append(path)
    return removed
