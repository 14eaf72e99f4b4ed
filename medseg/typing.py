"""Type aliases shared across medseg (see ARCHITECTURE.md section 2 for the array conventions)."""

from __future__ import annotations

import os
from typing import Union

import numpy as np
import numpy.typing as npt

Shape3 = tuple[int, int, int]
"""A spatial shape or size in (z, y, x) order, in voxels."""

Spacing3 = tuple[float, float, float]
"""Voxel spacing in (z, y, x) order, in mm."""

FloatArray = npt.NDArray[np.floating]
"""Intensities or probabilities, float32 unless stated."""

LabelArray = npt.NDArray[np.integer]
"""Label map, uint8 ``(Z, Y, X)`` with 0 as background unless stated."""

PathLike = Union[str, "os.PathLike[str]"]
"""A filesystem path given as ``str`` or ``pathlib.Path``."""
