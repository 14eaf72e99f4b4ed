"""The `make demo` job: segment a licence-clear T1 with the built-in brain model.

Sample: the MNI152 ICBM 2009a T1 template and its grey/white-matter probability maps,
as bundled in the nilearn wheel (© McConnell Brain Imaging Centre, freely
redistributable with attribution; see README "Demo data"). Nothing is downloaded.

Steps (every step calls public medseg functions; no algorithm lives here):
1. Write the sample T1 and a reference tissue map (CSF/GM/WM = argmax of the template's
   tissue probabilities inside its brain mask, CSF = 1 - GM - WM).
2. `medseg predict` it with the built-in ``brain-tissue`` model: 40x40x3 patches at
   stride 10, majority-vote reassembly; writes the label map and the vote-agreement map.
3. Draw an overlay PNG, print the tissue volumes, and `medseg evaluate` the result
   against the template reference (a sanity check: the template's tissue maps are a
   population average, not a manual segmentation).

Usage: python pipelines/demo.py --out demo_output [--overwrite] [--fast]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

LABELS = "1=CSF,2=GM,3=WM"


def _sample_volumes(tmp: Path):
    """The template T1 and reference labels as medseg Volumes (geometry from medseg.io)."""
    import nibabel as nib
    from nilearn import datasets

    from medseg.io import read_image, read_label

    t1 = datasets.load_mni152_template(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    tissue = np.argmax(np.stack([csf, gm, wm]), axis=0).astype(np.uint8) + 1
    labels_xyz = np.where(mask, tissue, 0).astype(np.uint8)
    t1_xyz = np.where(mask, np.asarray(t1.dataobj, dtype=np.float32), 0.0)
    nib.save(nib.Nifti1Image(t1_xyz, t1.affine), tmp / "t1.nii.gz")
    nib.save(nib.Nifti1Image(labels_xyz, t1.affine), tmp / "labels.nii.gz")
    return read_image(tmp / "t1.nii.gz"), read_label(tmp / "labels.nii.gz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="medseg demo: segment a sample T1")
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs")
    parser.add_argument("--fast", action="store_true", help="whole slices (no vote)")
    parser.add_argument("--model", default="brain-tissue", help="checkpoint or built-in name")
    args = parser.parse_args(argv)

    from medseg.cli import main as medseg_main
    from medseg.io import write_image, write_label
    from medseg.predict import load_predictor, predict_case
    from medseg.visualize import save_overlay_png

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

    ckpt, model = load_predictor([args.model])
    print(f"model: {args.model} = {ckpt.model_name} {ckpt.model_kwargs}")
    result = predict_case(
        t1_path,
        ckpt,
        args.out / "mni152_seg.nii.gz",
        model=model,
        fast=args.fast,
        confidence=True,
        overwrite=args.overwrite,
    )
    for path in result.written:
        print(f"wrote {path}")
    overlay = save_overlay_png(
        args.out / "mni152_overlay.png",
        image.array,
        result.labels,
        spacing_mm=image.geometry.spacing_mm,
        label_names=ckpt.label_names,
        title=f"MNI152 2009a T1, medseg {args.model}",
        overwrite=args.overwrite,
    )
    print(f"wrote {overlay}")
    brain = result.labels > 0
    print(
        f"segmented in {result.seconds:.1f} s; tissue volumes: "
        + ", ".join(f"{k} {v:.1f} mL" for k, v in result.volumes_ml.items())
        + f"; mean vote agreement in the brain {float(result.confidence[brain].mean()):.3f}"
    )

    cli_args = [
        "evaluate",
        str(result.written[0]),
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
