"""Backend helpers of :mod:`medseg.patches`: the same code runs on numpy arrays and torch
tensors (on any device)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _zeros_like_backend(ref: Any, shape: Sequence[int], dtype: Any) -> Any:
    if _is_torch(ref):
        import torch

        return torch.zeros(tuple(shape), dtype=dtype, device=ref.device)
    return np.zeros(tuple(shape), dtype=dtype)


def _as_index(ref: Any, values: np.ndarray) -> Any:
    """Index array on the backend (and device) of ``ref``."""
    if _is_torch(ref):
        import torch

        return torch.as_tensor(values, dtype=torch.long, device=ref.device)
    return values


def _moveaxis(x: Any, src: int, dst: int) -> Any:
    if _is_torch(x):
        return x.movedim(src, dst)
    return np.moveaxis(x, src, dst)
