"""Recall of annotated nuclei by their contrast: which nuclei a model misses (issue #16).

For every annotated nucleus of a manifest's cases, its contrast in the model's input (the
grey conversion of ``--colour``, percentile-normalised as the ``nuclei`` recipe: the
nucleus's median grey value minus the median of the image's background pixels, over the
image's 99.8th percentile minus that median) and the best IoU of any predicted object
(``<pred-dir>/<case>_instances.png``). Prints, per ``kind`` and contrast bin, the number of
nuclei, the fraction found at IoU > 0.5 and the mean best IoU; ``-o`` writes the
per-nucleus table as CSV.

Usage:
    python pipelines/recall_by_contrast.py --manifest data_manifests/dsb2018_stage1_test.csv \
        --split all --pred-dir nuc_test [--data-root ../shared/data] [-o nuclei.csv] [--overwrite]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from medseg.io import atomic_output
from medseg.normalize import model_input_channels

BINS = [-np.inf, 0.1, 0.2, 0.3, 0.45, 0.6, np.inf]


def nucleus_table(image: np.ndarray, label: np.ndarray, pred: np.ndarray, colour: str):
    """Per annotated nucleus: (contrast, best IoU of a predicted object, area in px)."""
    channels = np.moveaxis(image.astype(np.float32), -1, 0) if image.ndim == 3 else image[None]
    grey = model_input_channels(channels[:, None], colour)[0, 0]
    background = float(np.median(grey[label == 0])) if (label == 0).any() else 0.0
    span = max(float(np.percentile(grey, 99.8)) - background, 1e-6)
    pred_area = np.bincount(pred.ravel())
    rows = []
    for i in np.unique(label[label > 0]):
        inside = label == i
        contrast = (float(np.median(grey[inside])) - background) / span
        ids, overlap = np.unique(pred[inside], return_counts=True)
        keep = ids > 0
        union = inside.sum() + pred_area[ids[keep]] - overlap[keep]
        best = float((overlap[keep] / union).max()) if keep.any() else 0.0
        rows.append((contrast, best, int(inside.sum())))
    return rows


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--split", default="val", help="a split, or all")
    parser.add_argument("--pred-dir", type=Path, required=True)
    parser.add_argument("--data-root", default=os.environ.get("MEDSEG_DATA_ROOT", "."))
    parser.add_argument("--colour", default="grey-darkest", help="the model's data.colour")
    parser.add_argument("-o", "--output", type=Path, default=None)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing -o")
    args = parser.parse_args(argv)
    cases = pd.read_csv(args.manifest)
    if args.split != "all":
        cases = cases[cases["split"] == args.split]
    rows = []
    for case in cases.itertuples():
        root = Path(args.data_root)
        pred_path = args.pred_dir / f"{case.case}_instances.png"
        if not pred_path.is_file():
            print(f"error: {pred_path}: no prediction for case {case.case}", file=sys.stderr)
            return 1
        image = np.asarray(Image.open(root / case.image).convert("RGB"))
        label = np.asarray(Image.open(root / case.label))
        pred = np.asarray(Image.open(pred_path))
        for contrast, best, area in nucleus_table(image, label, pred, args.colour):
            rows.append((case.case, case.kind, contrast, best, area))
    table = pd.DataFrame(rows, columns=["case", "kind", "contrast", "best_iou", "area"])
    table["bin"] = pd.cut(table["contrast"], BINS)
    summary = table.groupby(["kind", "bin"], observed=True).agg(
        nuclei=("best_iou", "size"),
        recall_50=("best_iou", lambda v: float((v > 0.5).mean())),
        mean_iou=("best_iou", "mean"),
    )
    print(summary.round(3).to_string())
    if args.output is not None:
        try:
            with atomic_output(args.output, overwrite=args.overwrite) as tmp:
                table.to_csv(tmp, index=False)
        except FileExistsError:
            print(f"error: {args.output}: exists; pass --overwrite to replace it", file=sys.stderr)
            return 1
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
