"""The notebooks in notebooks/: committed without outputs, and they run top to bottom.

Each notebook is executed with nbclient in a Jupyter kernel pinned to this interpreter
(the virtual environment's ipykernel, whatever other ``python3`` kernel a user's Jupyter
folders hold), with ``notebooks/`` as its working folder and ``TMPDIR`` in pytest's
temporary folder (the notebooks write their outputs under ``tempfile``). Execution is
marked ``slow``; a notebook's run is skipped only when the data it needs are absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
CELL_TIMEOUT_S = 300
NOTEBOOK_NAMES = (
    "01_brain_tissue_segmentation.ipynb",
    "02_cohort_analysis.ipynb",
    "03_microscopy_cells.ipynb",
)


def _data_root() -> Path:
    """As the notebooks find it: $MEDSEG_DATA_ROOT if set, else ../shared/data."""
    return Path(os.environ.get("MEDSEG_DATA_ROOT") or REPO.parent / "shared" / "data")


def _missing_data(name: str) -> str | None:
    """Why ``name`` cannot run here, or None."""
    root = _data_root()
    if name.startswith("01"):
        if not (root / "ibsr18").is_dir() and importlib.util.find_spec("nilearn") is None:
            return f"neither IBSR-18 ({root / 'ibsr18'}) nor nilearn (its MNI152 fallback)"
        return None
    folder = root / ("ibsr18" if name.startswith("02") else "dsb2018_stage1_test")
    return None if folder.is_dir() else f"data folder {folder} is absent"


def _kernel_manager(tmp_path: Path):
    """A kernel manager whose ``python3`` kernel is this interpreter's ipykernel."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (medseg tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)], ensure_native_kernel=False)
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def test_the_notebooks_exist():
    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(NOTEBOOK_NAMES)


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_is_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {index} has outputs; clear them"
            assert cell.execution_count is None, f"{name} cell {index} has an execution count"
        assert "attachments" not in cell, f"{name} cell {index} has attachments"
    assert nb.cells[0].cell_type == "markdown"  # every notebook starts by saying what it does


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_runs(name, tmp_path):
    from nbclient import NotebookClient

    reason = _missing_data(name)
    if reason is not None:
        pytest.skip(f"{name} needs {reason}")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    client.execute(env={**os.environ, "TMPDIR": str(scratch)})  # raises on a failing cell
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = [o for c in code_cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert figures, f"{name} drew no figure"
