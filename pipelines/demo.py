"""The `make demo` job: a per-tissue evaluation report on a licence-clear sample.

Sample: the MNI152 ICBM 2009a T1 template and its grey/white-matter probability maps,
as bundled in the nilearn wheel (© McConnell Brain Imaging Centre, freely
redistributable with attribution; see README "Demo data"). Nothing is downloaded.

Steps (every step calls public medseg functions; no algorithm lives here):
1. Write the sample T1 and a reference tissue map (CSF/GM/WM = argmax of the template's
   tissue probabilities inside its brain mask, CSF = 1 - GM - WM) in medseg's formats.
2. Segment the T1 through the 2.5D patch engine (40x40x3 patches, stride 10, majority
   vote) with an intensity baseline predictor: nearest class centroid of the centre
   slice, centroids from a 1D k-means of the brain intensities. It stands in for a
   trained network until the shipped brain model exists; it needs no weights.
3. `medseg evaluate` the result against the reference and print the per-tissue report.

Usage: python pipelines/demo.py --out demo_output [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

LABELS = "1=CSF,2=GM,3=WM"


def _sample_volumes(tmp: Path):
    """The template T1 (C, Z, Y, X) and reference labels (Z, Y, X) with their geometry."""
    import nibabel as nib
    from nilearn import datasets

    from medseg.io import read_image

    t1 = datasets.load_mni152_template(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    tissue = np.argmax(np.stack([csf, gm, wm]), axis=0).astype(np.uint8) + 1
    labels_xyz = np.where(mask, tissue, 0).astype(np.uint8)
    t1_xyz = np.where(mask, np.asarray(t1.dataobj, dtype=np.float32), 0.0)

    # round-trip through NIfTI so the geometry comes from medseg.io, the only axis-order owner
    nib.save(nib.Nifti1Image(t1_xyz, t1.affine), tmp / "t1.nii.gz")
    nib.save(nib.Nifti1Image(labels_xyz, t1.affine), tmp / "labels.nii.gz")
    image = read_image(tmp / "t1.nii.gz")
    from medseg.io import read_label

    return image, read_label(tmp / "labels.nii.gz")


def _centroids(values: np.ndarray, k: int = 3, iterations: int = 50) -> np.ndarray:
    """1D k-means of brain intensities (initialised at quantiles): sorted centroids."""
    centres = np.quantile(values, np.linspace(0.2, 0.8, k))
    for _ in range(iterations):
        assign = np.abs(values[:, None] - centres[None, :]).argmin(1)
        new = np.array([values[assign == j].mean() for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="medseg demo: evaluate a sample segmentation")
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs")
    args = parser.parse_args(argv)

    import torch

    from medseg.cli import main as medseg_main
    from medseg.io import axial_axis, write_image, write_label
    from medseg.patches import PatchSpec, predict_sliding_window

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        image, reference = _sample_volumes(Path(tmp))
    t1_path = write_image(
        args.out / "mni152_t1.nii.gz", image.array, image.geometry, overwrite=args.overwrite
    )
    ref_path = write_label(
        args.out / "mni152_reference.nii.gz",
        reference.array,
        reference.geometry,
        overwrite=args.overwrite,
    )
    print(f"sample: {t1_path} {tuple(image.array.shape)} (C, Z, Y, X), reference: {ref_path}")

    brain = image.array[0][reference.array > 0]
    centres = torch.tensor([0.0, *_centroids(brain)])  # background, CSF, GM, WM

    def nearest_centroid(patches: torch.Tensor) -> torch.Tensor:
        centre_slice = patches[:, 1:2]  # (B, 1, 40, 40) of the 3 slice channels
        return -((centre_slice - centres.view(1, -1, 1, 1)) ** 2)  # (B, 4, 40, 40) logits

    spec = PatchSpec.two_and_half_d(40, 10, num_slices=3, slice_axis=axial_axis(image.geometry))
    result = predict_sliding_window(image.array, nearest_centroid, spec, mode="vote")
    pred_path = write_label(
        args.out / "mni152_baseline_pred.nii.gz",
        result.labels,
        image.geometry,
        overwrite=args.overwrite,
    )
    conf_path = write_image(
        args.out / "mni152_baseline_agreement.nii.gz",
        result.confidence[None],
        image.geometry,
        overwrite=args.overwrite,
    )
    print(f"prediction: {pred_path}, vote agreement: {conf_path}")

    cli_args = [
        "evaluate",
        str(pred_path),
        str(ref_path),
        "--labels",
        LABELS,
        "-o",
        str(args.out / "report.csv"),
    ]
    if args.overwrite:
        cli_args.append("--overwrite")
    return medseg_main(cli_args)


if __name__ == "__main__":
    sys.exit(main())
