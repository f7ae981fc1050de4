"""Loading files a user is handed (weights, configs) without ever running code from them.

* ``.pkl`` weights (detectron2 / Caffe2 model-zoo format: dicts of numpy arrays) are read by
  a restricted unpickler that only builds dicts, lists, tuples, sets, strings, numbers, numpy
  arrays, dtypes and scalars (:func:`load_pickle_weights`);
* every other weights file goes through ``torch.load(weights_only=True)``
  (:func:`load_torch_weights`);
* YAML configs, and each ``_BASE_`` they inherit from, are parsed with ``yaml.safe_load``
  (:func:`load_yaml_with_base`, :func:`merge_config_file`), never with detectron2's fallback
  to ``yaml.unsafe_load``.

Anything outside these rules raises :class:`UntrustedContentError` naming the file and what
was refused; nothing from the file has run by then.
"""

import codecs
import collections
import os
import pickle
import re
from typing import Any, Dict, List, Optional

import numpy as np
import yaml

__all__ = [
    "BASE_KEY",
    "UntrustedContentError",
    "load_pickle_weights",
    "load_torch_weights",
    "load_yaml_with_base",
    "merge_config_file",
]

#: the key of a YAML config naming the config(s) it inherits from, as in detectron2
BASE_KEY = "_BASE_"


class UntrustedContentError(ValueError):
    """A file holds something that could run code when loaded (a Python object in a pickle,
    a Python tag in YAML); it was refused before anything from it ran."""


# ----------------------------------------------------------------------------- pickles
def _multiarray():
    try:  # NumPy >= 2
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray
    return multiarray


_TEXT_ENCODINGS = {"latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"}


def _encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (text codecs only)."""
    if str(encoding).lower() not in _TEXT_ENCODINGS:
        raise pickle.UnpicklingError(f"refused type '_codecs.encode' with codec {encoding!r}")
    return codecs.encode(obj, encoding, errors)


def _allowed_globals() -> Dict[tuple, Any]:
    ma = _multiarray()
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _encode,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = ma._reconstruct
        allowed[(module, "scalar")] = ma.scalar
    for module in ("builtins", "__builtin__"):  # Python 3 and Python 2 pickles
        for t in (dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float, bool):
            allowed[(module, t.__name__)] = t
        allowed[(module, "complex")] = complex
    allowed[("__builtin__", "unicode")] = str
    allowed[("__builtin__", "long")] = int
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only the types of :func:`_allowed_globals`; any other global (a function or a
    class that an attacker's ``__reduce__`` names) is refused before it is looked up."""

    _allowed: Optional[Dict[tuple, Any]] = None

    def find_class(self, module, name):
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused type '{module}.{name}'") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"refused persistent id {str(pid)[:80]!r}")


def load_pickle_weights(path: str) -> Any:
    """Unpickle ``path`` (a detectron2 / Caffe2 model-zoo ``.pkl``: dicts of numpy arrays,
    Python 2 pickles included) with the restricted unpickler.

    Raises:
        UntrustedContentError: naming ``path`` and the refused type.
        ValueError: ``path`` is not a readable pickle.
    """
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            if str(e).startswith("refused"):
                raise UntrustedContentError(
                    f"{path}: {e}; weight files (.pkl) may only hold dicts, lists, strings, "
                    "numbers and numpy arrays: this file was not loaded"
                ) from None
            raise ValueError(f"{path} is not a readable pickle: {e}") from e
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
            raise ValueError(f"{path} is not a readable pickle ({type(e).__name__}: {e})") from e


_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


def load_torch_weights(path: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``.

    Raises:
        UntrustedContentError: the file holds other objects than tensors and plain
            containers (the refused type is named).
        ValueError: ``path`` is not a readable PyTorch file.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = _UNSUPPORTED_GLOBAL.search(str(e))
        if m:
            what = f"refused type '{m.group(1).rstrip('.')}'"
        else:
            lines = [ln for ln in str(e).splitlines() if "nsupported" in ln]
            what = f"refused content ({(lines or str(e).splitlines() or ['?'])[0].strip()})"
        raise UntrustedContentError(
            f"{path}: {what}; weight files may only hold tensors, numbers, strings and "
            "containers of them: this file was not loaded"
        ) from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{path} is not a readable PyTorch file: {e}") from e


# ----------------------------------------------------------------------------- YAML
def _parse_yaml(path: str) -> Dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.constructor.ConstructorError as e:
            tag = re.search(r"tag '([^']+)'", str(e.problem))
            where = f", line {e.problem_mark.line + 1}" if e.problem_mark is not None else ""
            raise UntrustedContentError(
                f"{path}{where}: the YAML tag {tag.group(1) if tag else '?'} is not allowed; "
                "configs may only hold plain values (mappings, lists, strings, numbers, "
                "booleans, null): this file was not loaded"
            ) from None
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a YAML mapping, got a {type(data).__name__}")
    return data


def _merge_into(a: Dict, b: Dict, path: str) -> None:
    """Merge dict ``a`` into ``b`` in place, ``a``'s values winning (as detectron2)."""
    for k, v in a.items():
        if isinstance(v, dict) and k in b:
            if not isinstance(b[k], dict):
                raise ValueError(f"{path}: {k!r} is a mapping but its base sets it to {b[k]!r}")
            _merge_into(v, b[k], path)
        else:
            b[k] = v


def load_yaml_with_base(path: str, _stack: Optional[List[str]] = None) -> Dict:
    """The YAML mapping in ``path`` merged over the configs its ``_BASE_`` names (a path or a
    list of paths, relative to ``path``'s folder, ``~`` expanded), recursively, every file
    read with ``yaml.safe_load``; the result has no ``_BASE_`` key.

    Raises:
        UntrustedContentError: a file holds a Python tag (that file is named).
        FileNotFoundError, ValueError: a file is missing, not YAML, or the ``_BASE_`` chain
            loops (naming the files).
    """
    stack = list(_stack or [])
    real = os.path.realpath(path)
    if real in stack:
        chain = " -> ".join(stack[stack.index(real) :] + [real])
        raise ValueError(f"the {BASE_KEY} chain of configs loops: {chain}")
    cfg = _parse_yaml(path)
    if BASE_KEY not in cfg:
        return cfg
    bases = cfg.pop(BASE_KEY)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"{path}: {BASE_KEY} must be a path or a list of paths, got {bases!r}")
    merged: Dict = {}
    for base in bases:
        base = os.path.expanduser(base)
        if "://" in base:
            raise ValueError(
                f"{path}: {BASE_KEY} {base!r} is a URL; configs inherit only from local files"
            )
        if not os.path.isabs(base):
            base = os.path.join(os.path.dirname(path), base)
        _merge_into(load_yaml_with_base(base, stack + [real]), merged, path)
    _merge_into(cfg, merged, path)
    return merged


def merge_config_file(cfg, path: str) -> None:
    """Merge the YAML config ``path`` (with its ``_BASE_`` chain, see
    :func:`load_yaml_with_base`) into the detectron2 ``CfgNode`` ``cfg`` in place, as
    ``cfg.merge_from_file`` does (older config versions upgraded, unknown keys raise
    ``KeyError``) but without any unsafe YAML."""
    loaded = type(cfg)(load_yaml_with_base(path))
    if "VERSION" not in cfg:
        cfg.merge_from_other_cfg(loaded)
        return
    from detectron2.config.compat import downgrade_config, guess_version, upgrade_config

    version = loaded.get("VERSION", None)
    if version is None:
        version = guess_version(loaded, path)
    if version > cfg.VERSION:
        raise ValueError(f"{path} is a v{version} config; this detectron2 reads v{cfg.VERSION}")
    if version == cfg.VERSION:
        cfg.merge_from_other_cfg(loaded)
        return
    old = downgrade_config(cfg, to_version=version)
    old.merge_from_other_cfg(loaded)
    new = upgrade_config(old)
    cfg.clear()
    cfg.update(new)
