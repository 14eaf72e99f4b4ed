"""Score one prediction folder's class maps with every object method (issue #16 ablation).

Usage:
    python pipelines/objects_ablation.py runs/abl_boundary_wm/val_model \\
        --manifest data_manifests/dsb2018_stage1_train.csv --split val \\
        --checkpoint runs/abl_boundary_wm/best.pt [--methods components watershed boundary]

The folder holds ``<stem>_mask.png`` class maps as ``medseg predict`` (or
``pipelines/evaluate_run.py``) wrote them. Each map is turned into objects by each method
of :func:`medseg.instances.instances_from_prediction`, with the checkpoint's ``min_size``
and ``fill_gaps``, and scored against the manifest's instance labels with the DSB2018 AP
(:func:`medseg.metrics.average_precision`) and the touching-pair split rate
(:func:`medseg.metrics.touching_split_rate`). The network runs once per image; only the
object step differs between the rows. Prints a markdown table per method, overall and per
``--by`` column (default ``kind``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from medseg.checkpoint import load_checkpoint
from medseg.instances import instances_from_prediction
from medseg.io import read_image, read_instances
from medseg.manifest import load_manifest
from medseg.metrics import average_precision, touching_split_rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pred_dir", type=Path)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--split", default="all", help="a split, or all")
    parser.add_argument("--checkpoint", required=True, help="gives min_size and fill_gaps")
    parser.add_argument("--data-root", default=None, help="default: $MEDSEG_DATA_ROOT")
    parser.add_argument("--methods", nargs="+", default=["components", "watershed", "boundary"])
    parser.add_argument("--by", default="kind")
    args = parser.parse_args(argv)

    pp = load_checkpoint(args.checkpoint).postprocess_settings
    manifest = load_manifest(args.manifest, data_root=args.data_root)
    cases = manifest.cases if args.split == "all" else manifest.split(args.split)
    rows: dict[str, list[tuple[str, float, float, float, int, int]]] = {m: [] for m in args.methods}
    for case in cases:
        mask_path = args.pred_dir / f"{Path(case.image).stem}_mask.png"
        if not mask_path.is_file() or case.label is None:
            print(f"{case.case}: no {mask_path.name} or no label, skipped", file=sys.stderr)
            continue
        classes = read_image(mask_path).array[0].astype(np.int32)
        truth = read_instances(case.label).array
        group = str(case.metadata.get(args.by, ""))
        for method in args.methods:
            pred = instances_from_prediction(
                classes,
                method=method,
                min_size=pp.min_size,
                fill=pp.fill_gaps and method != "boundary",
            )
            ap = average_precision(pred, truth)
            split = touching_split_rate(pred, truth)
            rows[method].append(
                (
                    group,
                    float(ap["ap"]),  # type: ignore[arg-type]
                    float(ap["precision"][0]),  # type: ignore[index]
                    float(ap["f1_at_05"]),  # type: ignore[arg-type]
                    int(split["num_pairs"]),
                    int(split["num_split"]),
                )
            )
    print(f"{args.pred_dir} ({len(next(iter(rows.values())))} images)")
    print(f"| objects | {args.by} | AP@0.5:0.95 | AP@0.5 | F1@0.5 | split rate (pooled) |")
    print("|---|---|---:|---:|---:|---:|")
    for method, items in rows.items():
        groups = sorted({g for g, *_ in items})
        for group in [*groups, "all"]:
            sel = [r for r in items if group == "all" or r[0] == group]
            pairs = sum(r[4] for r in sel)
            rate = sum(r[5] for r in sel) / pairs if pairs else float("nan")
            print(
                f"| {method} | {group} ({len(sel)}) | {np.mean([r[1] for r in sel]):.3f} "
                f"| {np.mean([r[2] for r in sel]):.3f} | {np.mean([r[3] for r in sel]):.3f} "
                f"| {rate:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
