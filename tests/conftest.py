"""Shared fixtures. Real data live in ../shared/data beside the repo; tests that need
them skip cleanly where that folder is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ibsr_case(shared_data) -> dict:
    """IBSR_01 as float32 image (1, Z, Y, X), uint8 label (Z, Y, X) and spacing (z, y, x) mm.

    Read with nibabel directly (x, y, z file order transposed), independent of medseg.io.
    """
    import nibabel as nib

    folder = shared_data / "ibsr18" / "IBSR_01"
    img = nib.load(folder / "IBSR_01_t1.nii.gz")
    lab = nib.load(folder / "IBSR_01_labels.nii.gz")
    image = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)[None]
    label = np.asarray(lab.dataobj, dtype=np.uint8).transpose(2, 1, 0)
    zooms = img.header.get_zooms()[:3]
    return {
        "image": np.ascontiguousarray(image),
        "label": np.ascontiguousarray(label),
        "spacing_mm": (float(zooms[2]), float(zooms[1]), float(zooms[0])),
    }
