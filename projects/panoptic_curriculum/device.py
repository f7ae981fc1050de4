"""``MODEL.DEVICE`` checked against the machine before anything is built on it.

Without this, a config naming a GPU on a machine without one fails deep inside the first
``.to(device)`` with PyTorch's "Found no NVIDIA driver on your system", which says nothing
about the config key to change.
"""

import torch

__all__ = ["check_device"]


def _count(kind: str) -> int:
    """Devices of ``kind`` ("cuda", "mps", "xpu") this machine has, 0 when none."""
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return 1 if mps is not None and mps.is_available() else 0
    if kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        return xpu.device_count() if xpu is not None and xpu.is_available() else 0
    return 0


def check_device(cfg) -> torch.device:
    """The ``torch.device`` that ``cfg.MODEL.DEVICE`` names, after checking that this machine
    has it.

    Raises:
        ValueError: naming ``MODEL.DEVICE``, its value and what to set instead, when the value
            is not a device name, or names a device type or index this machine lacks.
    """
    name = cfg.MODEL.DEVICE
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"MODEL.DEVICE {name!r} is not a device name ({e}); use 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if device.type == "cpu":
        return device
    if device.type not in ("cuda", "mps", "xpu"):
        raise ValueError(
            f"MODEL.DEVICE {name!r}: device type {device.type!r} is not supported; use 'cpu' "
            "or 'cuda' / 'cuda:N'"
        )
    count = _count(device.type)
    if count == 0:
        raise ValueError(
            f"MODEL.DEVICE is {name!r} but this machine has no {device.type.upper()} device; "
            "set MODEL.DEVICE cpu (append 'MODEL.DEVICE cpu' to the command line, or set "
            'MODEL.DEVICE: "cpu" in the YAML)'
        )
    if device.index is not None and device.index >= count:
        raise ValueError(
            f"MODEL.DEVICE is {name!r} but this machine has {count} {device.type.upper()} "
            f"device{'s' if count > 1 else ''} ({device.type}:0 to {device.type}:{count - 1}); "
            f"set MODEL.DEVICE {device.type}:0, {device.type} or cpu"
        )
    return device
