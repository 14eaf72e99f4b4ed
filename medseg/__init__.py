"""medseg: 2.5D/3D segmentation of brain MRI and microscopy images.

The in-memory API (:mod:`medseg.api`): ``load_model``, ``predict_volume``,
``segment_cells``, ``evaluate``, ``evaluate_objects``; they return numpy arrays, pandas
DataFrames and nibabel images. See ``notebooks/`` for worked examples.

Public names are re-exported lazily so that ``import medseg`` (and ``medseg --help``)
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what editors and mypy see; at run time __getattr__ imports lazily
    from medseg.api import (  # noqa: F401
        CellSegmentation,
        Model,
        Segmentation,
        evaluate,
        evaluate_objects,
        load_model,
        predict_volume,
        segment_cells,
    )
    from medseg.batch import BatchConfig, run_batch  # noqa: F401
    from medseg.class_weights import median_frequency_weights  # noqa: F401
    from medseg.cohort import tissue_statistics, write_cohort_report  # noqa: F401
    from medseg.config import load_config  # noqa: F401
    from medseg.evaluation import evaluate_files  # noqa: F401
    from medseg.io import (  # noqa: F401
        read_image,
        read_instances,
        read_label,
        to_nifti,
        volume_from_nifti,
        write_image,
        write_label,
    )
    from medseg.losses import create_loss  # noqa: F401
    from medseg.metrics import confusion_matrix  # noqa: F401
    from medseg.models import create_model, list_models, load_weights  # noqa: F401
    from medseg.normalize import normalize_intensity  # noqa: F401
    from medseg.patches import (  # noqa: F401
        PatchSpec,
        extract_patches,
        extract_patches_at,
        predict_sliding_window,
        reassemble_patches,
    )
    from medseg.report import evaluate_case, evaluate_instances  # noqa: F401
    from medseg.weightmap import unet_weight_map  # noqa: F401

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # the in-memory API (medseg.api): arrays, DataFrames and nibabel images
    "load_model": "medseg.api",
    "predict_volume": "medseg.api",
    "segment_cells": "medseg.api",
    "evaluate": "medseg.api",
    "evaluate_objects": "medseg.api",
    "Model": "medseg.api",
    "Segmentation": "medseg.api",
    "CellSegmentation": "medseg.api",
    "to_nifti": "medseg.io",
    "volume_from_nifti": "medseg.io",
    "read_instances": "medseg.io",
    "evaluate_instances": "medseg.report",
    "tissue_statistics": "medseg.cohort",
    "write_cohort_report": "medseg.cohort",
    "run_batch": "medseg.batch",
    "BatchConfig": "medseg.batch",
    # building blocks
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
    "median_frequency_weights": "medseg.class_weights",
    "create_loss": "medseg.losses",
    "normalize_intensity": "medseg.normalize",
    "load_config": "medseg.config",
}

__all__ = ["__version__", *_EXPORTS]


def __dir__() -> list[str]:
    """Module attributes plus the lazy exports, so ``medseg.<TAB>`` lists the API."""
    return sorted({*globals(), *_EXPORTS})


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")
