"""Shared fixtures. Real data live in ../shared/data beside the repo; tests that need
them skip cleanly where that folder is absent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def load_pipeline(name: str) -> ModuleType:
    """Import ``pipelines/<name>.py`` (a script folder, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, PIPELINES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pipeline_script():
    """:func:`load_pipeline`, as a fixture (``from conftest import`` is ambiguous)."""
    return load_pipeline


@pytest.fixture
def interrupt_training(monkeypatch):
    """``arm(epoch)``: the next ``medseg train`` is killed (Ctrl-C) while it saves that
    epoch's ``last.pt``, so the epoch before is on disk; ``arm(None)`` disarms it."""
    import medseg.train as train_module

    real_save = train_module.save_checkpoint

    def arm(epoch: int | None) -> None:
        def save_then_die(path, **kwargs):
            if Path(path).name == "last.pt" and kwargs["epoch"] == epoch:
                raise KeyboardInterrupt
            return real_save(path, **kwargs)

        monkeypatch.setattr(
            train_module, "save_checkpoint", real_save if epoch is None else save_then_die
        )

    return arm


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


@pytest.fixture(scope="session")
def dense_dsb_instances(shared_data) -> np.ndarray:
    """The DSB2018 stage-1 test image (<= 100,000 pixels) with the most touching nucleus
    pairs (at least 10): its annotation as an int32 (1, Y, X) instance map."""
    import csv

    from medseg.io import read_instances

    root = shared_data / "dsb2018_stage1_test"
    with open(root / "index.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    small = [r for r in rows if int(r["height"]) * int(r["width"]) <= 100_000]
    row = max(small, key=lambda r: int(r["touching_pairs"]))
    assert int(row["touching_pairs"]) >= 10
    return read_instances(root / "labels" / f"{row['image_id']}.png").array.astype(np.int32)


@pytest.fixture(scope="session")
def tiny_ibsr(shared_data, tmp_path_factory) -> Path:
    """12 axial slices x 64 x 64 crops of IBSR_01, 05 (train) and 04 (val) as NIfTI, with the
    manifest ``tiny.csv`` and its labels sidecar; read-only for the tests that use it."""
    root = tmp_path_factory.mktemp("tiny_ibsr")
    rows = []
    for case, split in (("IBSR_01", "train"), ("IBSR_05", "train"), ("IBSR_04", "val")):
        folder = shared_data / "ibsr18" / case
        for kind in ("t1", "labels"):
            img = nib.load(folder / f"{case}_{kind}.nii.gz")
            data = np.asarray(img.dataobj)[96:160, 32:96, 120:132]  # file axes (x, y, z)
            nib.save(nib.Nifti1Image(data, img.affine, img.header), root / f"{case}_{kind}.nii.gz")
        rows.append([case, f"{case}_t1.nii.gz", f"{case}_labels.nii.gz", split])
    pd.DataFrame(rows, columns=["case", "image", "label", "split"]).to_csv(
        root / "tiny.csv", index=False
    )
    (root / "tiny.labels.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"}})
    )
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a whole test module, restored afterwards: as fast for tiny CPU
    models, and steadier on a shared, busy machine. A module asks for it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="session")
def tiny_usegnet():
    """:func:`save_tiny_usegnet`, as a fixture (test folders have conftest modules of their own,
    so ``from conftest import`` is ambiguous)."""
    return save_tiny_usegnet


def save_tiny_usegnet(path: Path, *, size: int, stride: int) -> Path:
    """A fixed random 4-feature U-SegNet checkpoint (CSF/GM/WM, 2.5D, vote) for plumbing
    and geometry tests; its labels mean nothing."""
    import torch

    from medseg.checkpoint import save_checkpoint
    from medseg.models import create_model

    torch.manual_seed(0)
    kwargs = {"in_channels": 3, "num_classes": 4, "base_features": 4}
    return save_checkpoint(
        path,
        model_name="usegnet",
        model_kwargs=kwargs,
        model=create_model("usegnet", **kwargs),
        label_names={0: "background", 1: "CSF", 2: "GM", 3: "WM"},
        normalization={"method": "zscore", "percentiles": [1.0, 99.0]},
        patch={"size": size, "stride": stride, "num_slices": 3, "slice_axis": "axial"},
        inference={"mode": "vote", "batch_size": 64},
    )
