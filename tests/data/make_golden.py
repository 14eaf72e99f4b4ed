"""Regenerate the golden files of ``tests/test_golden.py`` (ARCHITECTURE.md section 11).

**Rerun only deliberately**, after a change that is meant to change predictions; review the
diff (``git diff --stat tests/data/golden``, and the max abs diffs that
``pytest -s tests/test_golden.py`` printed before the rerun) and say why in the commit::

    python tests/data/make_golden.py

It writes, into ``tests/data/golden/``, two end-to-end cases of ``medseg predict``:

* **brain** (2.5D): ``brain_volume.nii.gz``, a synthetic 24 x 28 x 32 (Z, Y, X) T1-like
  volume (an ellipsoidal "head" of concentric shells: CSF, grey and white matter, zero
  outside, spacing 1.5 x 1 x 1 mm, x flipped, origin off zero), and ``brain_tiny.pt``, a
  ``usegnet`` with ``base_features=2`` (3 slices in, 4 classes, float32 weights), 16 x 16
  patches at stride 8, vote reassembly. Expected: ``brain_expected_seg.nii.gz``,
  ``brain_expected_probs.nii.gz``, ``brain_expected_confidence.nii.gz``.
* **microscopy** (2D tile): ``cells.png``, a synthetic 30 x 40 RGB image of bright discs on a
  dark background, and ``cells_tiny.pt``, a valid-padding ``unet`` (depth 2,
  ``base_features=2``, RGB in, 2 classes) predicted by overlap-tile with 16-pixel output
  tiles (2 x 3 tiles), objects by connected components. Expected: ``cells_expected_mask.png``,
  ``cells_expected_instances.png``, ``cells_expected_probs.nii.gz``.

The weights start from ``torch.manual_seed`` and are then fitted for a few hundred full-batch
Adam steps to the synthetic image's own classes (in eval mode, so BatchNorm keeps its
identity statistics and dropout is off). A purely random network gives near-uniform
probabilities, so many voxels would have a top-2 margin within float noise and a label
comparison would say little; the fitted one gives every class and decisive margins. The
fit only has to be good enough for that: the golden files record whatever it predicts.

The expected files are ``medseg predict --device cpu`` outputs, copied unchanged, except
the probabilities: they are rounded to multiples of ``2**-16`` (error <= 7.6e-6, far inside
the test's 1e-4 tolerance) and stay float32, so that gzip shrinks them several times.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parent / "golden"
PROBS_STEP = 2.0**-16  # expected probabilities are stored on this grid (module docstring)

BRAIN_SHAPE = (24, 28, 32)  # (Z, Y, X)
BRAIN_SPACING = (1.5, 1.0, 1.0)  # mm, (z, y, x)
# voxel (x, y, z) -> RAS mm: x flipped (radiological storage), origin off zero
BRAIN_AFFINE = np.array(
    [[-1.0, 0, 0, 16.0], [0, 1.0, 0, -14.0], [0, 0, 1.5, -18.0], [0, 0, 0, 1.0]]
)
BRAIN_MODEL = "usegnet"
BRAIN_KWARGS = {"in_channels": 3, "num_classes": 4, "base_features": 2}
BRAIN_META = {
    "label_names": {0: "background", 1: "CSF", 2: "GM", 3: "WM"},
    "normalization": {"method": "zscore", "percentiles": [1.0, 99.0], "mask": "nonzero"},
    "patch": {
        "size": 16,
        "stride": 8,
        "num_slices": 3,
        "slice_axis": "axial",
        "pad_mode": "reflect",
    },
    "inference": {"mode": "vote", "batch_size": 64, "tile_size": 256, "halo": None},
    "extra": {
        "postprocess": {"method": "none", "min_size": 0, "fill_gaps": False},
        "label_format": "classes",
        "foreground_value": None,
    },
}

CELLS_SHAPE = (30, 40)  # (Y, X)
CELLS_MODEL = "unet"
CELLS_KWARGS = {
    "in_channels": 3,
    "num_classes": 2,
    "base_features": 2,
    "depth": 2,
    "padding": "valid",
}
CELLS_META = {
    "label_names": {0: "background", 1: "nucleus"},
    "normalization": {"method": "zscore", "percentiles": [1.0, 99.0], "mask": "all"},
    "patch": {"size": 16, "stride": 16, "num_slices": 1, "slice_axis": 0, "pad_mode": "reflect"},
    "inference": {"mode": "tile", "batch_size": 4, "tile_size": 16, "halo": None},
    "extra": {
        "postprocess": {"method": "components", "min_size": 0, "fill_gaps": False},
        "label_format": "instances",
        "foreground_value": None,
    },
}
# (row, column, radius) of the bright discs; a one-pixel gap parts the first two
CELLS_DISCS = ((8, 9, 5), (8, 21, 5), (21, 31, 6), (23, 8, 4), (4, 35, 3))


def brain_volume() -> tuple[np.ndarray, np.ndarray]:
    """Synthetic T1-like volume and its classes: float32 and uint8 ``(Z, Y, X)``."""
    z, y, x = np.indices(BRAIN_SHAPE, dtype=np.float64)
    # ellipsoidal radius: 1 on the head's surface
    r = np.sqrt(((z - 11.5) / 11) ** 2 + ((y - 13.5) / 13) ** 2 + ((x - 15.5) / 15) ** 2)
    classes = np.select([r < 0.5, r < 0.8, r < 1.0], [3, 2, 1], 0).astype(np.uint8)
    mean = np.array([0.0, 30.0, 70.0, 110.0])[classes]
    bias = 1.0 + 0.1 * (x / BRAIN_SHAPE[2] - 0.5)  # a smooth left-right intensity bias
    rng = np.random.default_rng(0)  # the noise, hence every golden output, depends on this seed
    noisy = mean * bias + rng.normal(0.0, 6.0, BRAIN_SHAPE)
    image = np.where(classes > 0, np.clip(np.round(noisy), 1, None), 0.0)
    return image.astype(np.float32), classes


def cells_image() -> tuple[np.ndarray, np.ndarray]:
    """Synthetic RGB image of bright discs and its foreground: uint8 ``(Y, X, 3)``, bool."""
    yy, xx = np.indices(CELLS_SHAPE)
    fg = np.zeros(CELLS_SHAPE, bool)
    for row, col, radius in CELLS_DISCS:
        fg |= (yy - row) ** 2 + (xx - col) ** 2 <= radius**2
    rng = np.random.default_rng(1)  # the noise, hence every golden output, depends on this seed
    colour = np.where(fg[..., None], [200.0, 170.0, 220.0], [20.0, 25.0, 30.0])
    rgb = np.clip(np.round(colour + rng.normal(0.0, 12.0, (*CELLS_SHAPE, 3))), 0, 255)
    return rgb.astype(np.uint8), fg


def _fit(model: torch.nn.Module, inputs, targets, crop, *, steps: int, lr: float) -> float:
    """Fit ``model`` (eval mode) to ``targets`` by full-batch Adam; return the accuracy."""
    model.eval()  # BatchNorm keeps identity statistics, dropout is off
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs)[crop], targets)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((model(inputs)[crop].argmax(1) == targets).float().mean())


def brain_model() -> torch.nn.Module:
    """The tiny 2.5D model, fitted on axial 3-slice stacks of :func:`brain_volume`."""
    from medseg.models import create_model
    from medseg.normalize import normalize_intensity

    image, classes = brain_volume()
    normed, _ = normalize_intensity(image[None], method="zscore")  # non-zero mask
    vol = np.pad(normed[0], ((1, 1), (0, 0), (0, 0)), mode="reflect")
    stacks = np.stack([vol[:-2], vol[1:-1], vol[2:]], axis=1)  # (Z, 3, Y, X)
    stacks = np.pad(stacks, ((0, 0), (0, 0), (0, 4), (0, 0)), mode="reflect")  # Y to 32
    torch.manual_seed(0)  # the weights, hence every golden output, depend on this seed
    model = create_model(BRAIN_MODEL, **BRAIN_KWARGS)
    crop = (slice(None), slice(None), slice(0, BRAIN_SHAPE[1]))
    acc = _fit(
        model,
        torch.from_numpy(stacks),
        torch.from_numpy(classes.astype(np.int64)),
        crop,
        steps=600,
        lr=0.05,
    )
    print(f"brain model: training accuracy {acc:.4f}")
    return model


def cells_model() -> torch.nn.Module:
    """The tiny valid-padding U-Net, fitted on the whole mirrored :func:`cells_image`."""
    from medseg.models import create_model
    from medseg.models.unet import UNet
    from medseg.normalize import normalize_intensity

    rgb, fg = cells_image()
    image = rgb.transpose(2, 0, 1)[:, None].astype(np.float32)  # (3, 1, Y, X)
    normed, _ = normalize_intensity(image, method="zscore", mask=np.ones(image.shape[1:], bool))
    depth = CELLS_KWARGS["depth"]
    out_y, out_x = 32, 40  # valid output sizes >= (30, 40) for depth 2
    pads = []
    for n, out in zip(CELLS_SHAPE, (out_y, out_x), strict=True):
        size = UNet.input_size_for(out, depth=depth, padding="valid")
        halo = (size - out) // 2
        pads.append((halo, size - n - halo))
    plane = np.pad(normed[:, 0], ((0, 0), *pads), mode="reflect")[None]  # (1, 3, y, x)
    torch.manual_seed(0)  # the weights, hence every golden output, depend on this seed
    model = create_model(CELLS_MODEL, **CELLS_KWARGS)
    crop = (slice(None), slice(None), slice(0, CELLS_SHAPE[0]), slice(0, CELLS_SHAPE[1]))
    acc = _fit(
        model,
        torch.from_numpy(np.ascontiguousarray(plane)),
        torch.from_numpy(fg.astype(np.int64)[None]),
        crop,
        steps=300,
        lr=0.02,
    )
    print(f"cells model: training accuracy {acc:.4f}")
    return model


def _predict(*args: str | Path) -> None:
    from medseg.cli import main

    code = main(["predict", *(str(a) for a in args), "--device", "cpu"])
    if code != 0:
        raise SystemExit(f"medseg predict {args} failed with exit status {code}")


def _save_checkpoint(path: Path, **kwargs) -> None:
    """``save_checkpoint``, but an existing file with the same contents is left alone.

    ``torch.save`` names the zip archive inside after the file it writes, and
    ``save_checkpoint`` writes a randomly named temporary file first, so the bytes differ on
    every run even when nothing else does; keeping the old file keeps ``git status`` clean.
    """
    from medseg.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        new = save_checkpoint(Path(tmp) / path.name, **kwargs)
        if not (
            path.is_file()
            and _same(torch.load(path, weights_only=True), torch.load(new, weights_only=True))
        ):
            shutil.copyfile(new, path)


def _same(a: object, b: object) -> bool:
    """Equal nested checkpoint contents (dicts, lists, tensors, plain values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _store_probs(source: Path, target: Path) -> None:
    """Copy a probability map, rounded to multiples of PROBS_STEP (still float32)."""
    from medseg.io import read_image, write_image

    probs = read_image(source)
    rounded = (np.round(probs.array / PROBS_STEP) * PROBS_STEP).astype(np.float32)
    write_image(target, rounded, probs.geometry, overwrite=True)


def _margins(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per voxel, ``(K, ...) -> (...)``.

    Example:
        >>> _margins(np.array([[0.7, 0.2], [0.1, 0.5], [0.2, 0.3]])).round(3).tolist()
        [0.5, 0.2]
    """
    top = np.sort(probs, axis=0)
    return top[-1] - top[-2]


def main() -> None:
    from medseg.io import Geometry, read_image, read_label, write_image

    torch.set_num_threads(1)  # one thread: the fit's float sums in one fixed order
    GOLDEN.mkdir(parents=True, exist_ok=True)

    image, _ = brain_volume()
    geometry = Geometry(BRAIN_SPACING, BRAIN_AFFINE)
    write_image(GOLDEN / "brain_volume.nii.gz", image[None], geometry, overwrite=True)
    _save_checkpoint(
        GOLDEN / "brain_tiny.pt",
        model_name=BRAIN_MODEL,
        model_kwargs=BRAIN_KWARGS,
        model=brain_model(),
        **BRAIN_META,
    )
    rgb, _ = cells_image()
    image = rgb.transpose(2, 0, 1)[:, None].astype(np.float32)
    write_image(GOLDEN / "cells.png", image, Geometry.from_spacing((1, 1, 1)), overwrite=True)
    _save_checkpoint(
        GOLDEN / "cells_tiny.pt",
        model_name=CELLS_MODEL,
        model_kwargs=CELLS_KWARGS,
        model=cells_model(),
        **CELLS_META,
    )

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        brain = (GOLDEN / "brain_volume.nii.gz", "-m", GOLDEN / "brain_tiny.pt", "-o", out / "b")
        _predict(*brain, "--probs", "--confidence", "--precision", "fp32")
        shutil.copyfile(out / "b/brain_volume_seg.nii.gz", GOLDEN / "brain_expected_seg.nii.gz")
        shutil.copyfile(
            out / "b/brain_volume_confidence.nii.gz",
            GOLDEN / "brain_expected_confidence.nii.gz",
        )
        _store_probs(out / "b/brain_volume_probs.nii.gz", GOLDEN / "brain_expected_probs.nii.gz")
        _predict(GOLDEN / "cells.png", "-m", GOLDEN / "cells_tiny.pt", "-o", out / "c", "--probs")
        for kind in ("mask", "instances"):
            shutil.copyfile(out / f"c/cells_{kind}.png", GOLDEN / f"cells_expected_{kind}.png")
        _store_probs(out / "c/cells_probs.nii.gz", GOLDEN / "cells_expected_probs.nii.gz")

    seg = read_label(GOLDEN / "brain_expected_seg.nii.gz").array
    margin = _margins(read_image(GOLDEN / "brain_expected_probs.nii.gz").array)
    counts = np.bincount(seg.ravel(), minlength=4).tolist()
    print(f"brain: classes {counts}, {int((margin < 1e-3).sum())} voxels with top-2 margin < 1e-3")
    margin = _margins(read_image(GOLDEN / "cells_expected_probs.nii.gz").array)
    print(f"cells: {int((margin < 1e-3).sum())} pixels with top-2 margin < 1e-3")
    total = 0
    for path in sorted(GOLDEN.iterdir()):
        total += path.stat().st_size
        print(f"{path.stat().st_size:>8}  {path.relative_to(GOLDEN.parents[2])}")
    print(f"{total:>8}  total")


if __name__ == "__main__":
    sys.exit(main())
