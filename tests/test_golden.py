"""Golden files: ``medseg predict`` end to end on tiny committed inputs (ARCHITECTURE.md 11).

``tests/data/golden/`` holds two synthetic inputs, two tiny checkpoints and the outputs
that ``medseg predict --device cpu`` gave for them, all written by
``tests/data/make_golden.py`` (rerun only deliberately; see its docstring):

* brain (2.5D ``usegnet``, vote reassembly): a 24 x 28 x 32 NIfTI volume -> label map,
  class probabilities and vote confidence;
* cells (2D valid-padding ``unet``, overlap-tile, connected components): a 30 x 40 RGB PNG
  -> class mask, instance map and probabilities.

Probabilities must agree within 1e-4 (their max abs diff is printed: ``pytest -s``). Labels
and instances must be equal except where the expected top-2 probability margin is below
1e-3, where float round-off may legitimately flip a vote; at most ``MAX_FLIPS`` may differ.
The CLI runs on the CPU in float32 (``--precision fp32``): the default, ``auto``, predicts
under bfloat16 autocast on CUDA and on CPUs that compute bfloat16 natively.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.checkpoint import load_checkpoint
from medseg.cli import main
from medseg.io import read_image, read_instances, read_label

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
PROBS_ATOL = 1e-4
MARGIN = 1e-3  # labels may differ where the expected top-2 probability margin is below this
MAX_FLIPS = 2  # ... and at most this many may (the golden brain case has 1 such voxel)


def _cli(*args: str | Path) -> tuple[int, str, str]:
    """Run `medseg ARGS`; return (exit status, stdout, stderr)."""
    with CliRunner().isolation() as (out, err, _):
        code = main([str(a) for a in args])
        return code, out.getvalue().decode(), err.getvalue().decode()


def _margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per voxel, (K, ...) -> (...)."""
    top = np.sort(probs, axis=0)
    return top[-1] - top[-2]


def _compare_probs(name: str, got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    diff = float(np.abs(got - expected).max())
    print(f"\n[golden] {name}: max abs diff {diff:.3g} (atol {PROBS_ATOL:g})")
    np.testing.assert_allclose(got, expected, rtol=0, atol=PROBS_ATOL)


def _compare_probs_file(case: str, path: Path):
    """Compare the probabilities in ``path`` with ``GOLDEN/{case}_expected_probs.nii.gz``
    (:func:`_compare_probs`); return the predicted image and the expected array."""
    probs = read_image(path)
    expected = read_image(GOLDEN / f"{case}_expected_probs.nii.gz").array
    _compare_probs(f"{case} probs", probs.array, expected)
    return probs, expected


def _compare_labels(name: str, got: np.ndarray, expected: np.ndarray, probs: np.ndarray) -> None:
    """Equal except where the expected margin is below MARGIN; at most MAX_FLIPS differ."""
    assert got.shape == expected.shape
    ambiguous = _margin(probs) < MARGIN
    differ = got != expected
    print(
        f"[golden] {name}: {int(differ.sum())} of {differ.size} differ "
        f"({int(ambiguous.sum())} with expected margin < {MARGIN:g})"
    )
    clear = differ & ~ambiguous
    assert not clear.any(), f"{name} differs at decisive voxels {np.argwhere(clear)[:5].tolist()}"
    assert differ.sum() <= MAX_FLIPS


@pytest.fixture(scope="module")
def brain_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("golden_brain")
    code, _, err = _cli(
        "predict",
        GOLDEN / "brain_volume.nii.gz",
        "-m",
        GOLDEN / "brain_tiny.pt",
        "-o",
        out,
        "--probs",
        "--confidence",
        "--device",
        "cpu",
        "--precision",
        "fp32",  # the golden files are float32; bfloat16 (auto on AMX CPUs) moves probs ~0.06
    )
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def cells_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("golden_cells")
    code, stdout, err = _cli(
        "predict", GOLDEN / "cells.png", "-m", GOLDEN / "cells_tiny.pt", "-o", out, "--probs",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert "5 objects" in stdout
    return out


def test_brain_golden(brain_out):
    source = read_image(GOLDEN / "brain_volume.nii.gz")
    probs, expected_probs = _compare_probs_file("brain", brain_out / "brain_volume_probs.nii.gz")
    assert probs.array.shape == (4, 24, 28, 32)

    seg = read_label(brain_out / "brain_volume_seg.nii.gz")
    expected_seg = read_label(GOLDEN / "brain_expected_seg.nii.gz").array
    _compare_labels("brain seg", seg.array, expected_seg, expected_probs)
    assert set(np.unique(expected_seg)) == {0, 1, 2, 3}  # every class is exercised

    conf = read_image(brain_out / "brain_volume_confidence.nii.gz").array[0]
    expected_conf = read_image(GOLDEN / "brain_expected_confidence.nii.gz").array[0]
    decisive = _margin(expected_probs) >= MARGIN
    _compare_probs("brain confidence (decisive voxels)", conf[decisive], expected_conf[decisive])

    for volume in (probs, seg):
        assert volume.geometry == source.geometry  # exact spacing and affine
    assert source.geometry.spacing_mm == (1.5, 1.0, 1.0)
    for name, dtype in (("probs", np.float32), ("seg", np.uint8), ("confidence", np.float32)):
        header = nib.load(brain_out / f"brain_volume_{name}.nii.gz").header
        assert header.get_data_dtype() == dtype
        np.testing.assert_array_equal(header.get_best_affine(), source.geometry.affine)


def test_cells_golden(cells_out):
    from PIL import Image

    source = read_image(GOLDEN / "cells.png")
    probs, expected_probs = _compare_probs_file("cells", cells_out / "cells_probs.nii.gz")
    assert probs.array.shape == (2, 1, 30, 40)
    assert probs.geometry == source.geometry
    assert nib.load(cells_out / "cells_probs.nii.gz").get_data_dtype() == np.float32

    mask = read_label(cells_out / "cells_mask.png").array
    expected_mask = read_label(GOLDEN / "cells_expected_mask.png").array
    _compare_labels("cells mask", mask, expected_mask, expected_probs)
    instances = read_instances(cells_out / "cells_instances.png").array
    expected = read_instances(GOLDEN / "cells_expected_instances.png").array
    _compare_labels("cells instances", instances, expected, expected_probs)
    assert np.unique(expected).tolist() == [0, 1, 2, 3, 4, 5]  # 5 discs, 2 of them 1 px apart

    overlay = np.asarray(Image.open(cells_out / "cells_overlay.png"))
    assert overlay.shape == (30, 40, 3) and overlay.dtype == np.uint8


BRAIN_CHECKPOINT = {
    "model_name": "usegnet",
    "model_kwargs": {"in_channels": 3, "num_classes": 4, "base_features": 2},
    "patch": dict(size=16, stride=8, num_slices=3, slice_axis="axial", pad_mode="reflect"),
    "inference_mode": "vote",
    "input": (1, 3, 16, 16),
    "output": (1, 4, 16, 16),
}
CELLS_CHECKPOINT = {
    "model_name": "unet",
    "model_kwargs": {
        "in_channels": 3,
        "num_classes": 2,
        "base_features": 2,
        "depth": 2,
        "padding": "valid",
    },
    "patch": {"size": 16, "stride": 16, "num_slices": 1, "slice_axis": 0, "pad_mode": "reflect"},
    "inference_mode": "tile",
    "input": (1, 3, 56, 56),  # a 16-pixel output tile with its 20 pixels of context per side
    "output": (1, 2, 16, 16),
}


@pytest.mark.parametrize(
    ("filename", "want"),
    [("brain_tiny.pt", BRAIN_CHECKPOINT), ("cells_tiny.pt", CELLS_CHECKPOINT)],
)
def test_golden_checkpoints(filename, want):
    raw = torch.load(GOLDEN / filename, map_location="cpu", weights_only=True)
    assert raw["format"] == "medseg-checkpoint"
    ckpt = load_checkpoint(GOLDEN / filename)
    assert ckpt.model_name == want["model_name"]
    assert ckpt.model_kwargs == want["model_kwargs"]
    assert ckpt.patch == want["patch"]
    assert ckpt.inference["mode"] == want["inference_mode"]
    floats = [v for v in ckpt.state_dict.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)  # not half
    if want is CELLS_CHECKPOINT:
        assert ckpt.inference["tile_size"] == 16
        assert ckpt.extra["postprocess"] == {
            "method": "components",
            "min_size": 0,
            "fill_gaps": False,
        }
    model = ckpt.build_model()
    with torch.no_grad():
        logits = model(torch.zeros(want["input"]))
    assert tuple(logits.shape) == want["output"]
