"""Where tensors live: the one place that turns ``--device`` into a ``torch.device``.

``"auto"`` (or None) picks CUDA when it is available, then Apple's ``mps``, else the CPU.
An explicit ``cuda[:N]`` or ``mps`` that the machine lacks is refused with a one-line
error naming ``--device``; ``cpu`` always works.
"""

from __future__ import annotations

import re

import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
"""The ``--device`` values medseg accepts: auto, cpu, mps, cuda or cuda:N."""


def check_device_name(device: object, name: str = "--device") -> str:
    """``device`` if it is a valid device string (see :data:`DEVICE_PATTERN`), else ValueError.

    Example:
        >>> check_device_name("cuda:1")
        'cuda:1'
    """
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise ValueError(f"{name} must be auto, cpu, mps, cuda or cuda:N, got {device!r}")
    return device


def mps_available() -> bool:
    """True on Apple silicon with a torch build that can use it."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA, else mps, else CPU; an unavailable explicit device is refused.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"mps"``, ``"cuda"``, ``"cuda:N"``, a
            ``torch.device`` or None.

    Returns:
        The ``torch.device`` to use.

    Raises:
        ValueError: for a device this machine does not have (named, with the fix).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device must be available, got {str(device)!r} but CUDA is not; use cpu"
        )
    if dev.type == "mps" and not mps_available():
        raise ValueError(
            f"--device must be available, got {str(device)!r} but this torch build or machine "
            "has no mps (Apple silicon) backend; use cpu"
        )
    return dev
