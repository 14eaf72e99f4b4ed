"""medseg: 2.5D/3D segmentation of brain MRI and microscopy images.

Public names are re-exported lazily so that ``import medseg`` (and ``medseg --help``)
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "read_image": "medseg.io",
    "read_label": "medseg.io",
    "write_image": "medseg.io",
    "write_label": "medseg.io",
    "extract_patches": "medseg.patches",
    "reassemble_patches": "medseg.patches",
    "predict_sliding_window": "medseg.patches",
    "extract_patches_at": "medseg.patches",
    "PatchSpec": "medseg.patches",
    "confusion_matrix": "medseg.metrics",
    "evaluate_case": "medseg.report",
    "evaluate_files": "medseg.evaluation",
    "create_model": "medseg.models",
    "list_models": "medseg.models",
    "load_weights": "medseg.models",
    "unet_weight_map": "medseg.weightmap",
    "median_frequency_weights": "medseg.weightmap",
    "create_loss": "medseg.losses",
    "normalize_intensity": "medseg.normalize",
    "load_config": "medseg.config",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")
