"""Predict and score a training run's validation cases, as the results tables report them.

Usage:
    python pipelines/evaluate_run.py runs/unet_dsb2018 [--objects watershed] [--overwrite]
    python pipelines/evaluate_run.py runs/nuclei_boundary --manifest \
        data_manifests/dsb2018_stage1_test.csv --split all --by kind   # the external test

It loads ``<run>/best.pt`` (or ``--checkpoint``, e.g. a tuned copy), reads the run's
manifest (``<run>/config.json``) and data root (``$MEDSEG_DATA_ROOT`` unless
``--data-root``), predicts every case of the validation split
with :func:`medseg.crossval.predict_and_evaluate` into ``<run>/val_<objects>/`` (label maps of
volumes as ``<case>.nii.gz``) and scores them with
:func:`medseg.evaluation.evaluate_manifest`, writing ``<run>/val_<objects>/report.csv`` and
``.md``. A case that fails is reported and the others still run.

``--diameter`` (auto, none or pixels) is ``medseg predict``'s, into ``..._diameter-<value>/``.
``--manifest`` / ``--split`` score another set instead (``all``: every case of it), into
``<run>/<manifest stem>_<split>_<objects>/``; ``--by COLUMN`` also prints the object metrics
averaged over the cases of each value of a manifest column (e.g. DSB2018's ``kind``), with
the touching-pair split rate pooled over the group's pairs. ``--seen-in TRAIN_MANIFEST``
groups the cases by whether their image type (``kind`` and height × width, a proxy for the
experiment an image comes from) occurs among that manifest's ``train`` cases: an external
test's figure on image types the network never saw, next to the types it did.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medseg.crossval import predict_and_evaluate
from medseg.manifest import load_manifest
from medseg.options import OBJECT_METHODS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder holding best.pt and config.json")
    parser.add_argument("--data-root", default=None, help="default: $MEDSEG_DATA_ROOT")
    parser.add_argument("--objects", choices=OBJECT_METHODS, default=None)
    parser.add_argument("--manifest", default=None, help="default: the run's own manifest")
    parser.add_argument("--split", default=None, help="default: the run's val split; all: all")
    parser.add_argument("--by", default=None, help="a manifest column to group the metrics by")
    parser.add_argument(
        "--seen-in",
        default=None,
        metavar="MANIFEST",
        help="also group by whether each image type (kind, height x width) is in this "
        "manifest's train split",
    )
    parser.add_argument("--min-size", type=int, default=None)
    parser.add_argument(
        "--diameter", default=None, help="2D object models: auto, none or pixels (predict's)"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: <run>/best.pt")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    config = json.loads((args.run / "config.json").read_text(encoding="utf-8"))
    manifest_path = args.manifest or config["data"]["manifest"]
    split = args.split or config["data"]["val_split"]
    overrides = {k: v for k, v in (("method", args.objects), ("min_size", args.min_size)) if v}
    diameter = args.diameter
    if diameter is not None and diameter not in ("auto", "none"):
        try:
            diameter = float(diameter)
        except ValueError:
            parser.error(f"--diameter must be auto, none or a number of pixels, got {diameter!r}")
    tag = (args.objects or "model") + ("" if diameter is None else f"_diameter-{args.diameter}")
    name = f"val_{tag}"
    if args.manifest or args.split:
        name = f"{Path(manifest_path).stem}_{split}_{tag}"
    out = args.run / name
    checkpoint = args.checkpoint or args.run / "best.pt"
    result = predict_and_evaluate(
        checkpoint,
        manifest_path,
        out,
        split=None if split == "all" else split,
        data_root=args.data_root,
        objects=overrides or None,
        device=args.device,
        overwrite=args.overwrite,
        diameter=diameter,
    )
    for path in result.written:
        print(f"wrote {path}")
    for case, reason in result.failures:
        print(f"{case}: {reason}", file=sys.stderr)
    print(f"{checkpoint} on {args.run}; {len(result.failures)} failure(s)")
    if (out / "report.md").is_file():
        print((out / "report.md").read_text(encoding="utf-8"))
    if args.by or args.seen_in:
        cases = load_manifest(manifest_path, data_root=args.data_root).cases
    if args.by:
        groups = {c.case: str(c.metadata.get(args.by, "")) for c in cases}
        print(_grouped(out / "report.csv", groups, args.by))
    if args.seen_in:
        trained = load_manifest(args.seen_in, data_root=args.data_root).cases
        groups = seen_groups(cases, trained)
        print(_grouped(out / "report.csv", groups, "image type in training"))
    return 1 if result.failures else 0


def image_type(case) -> tuple[str, str, str]:
    """A case's image type: its ``kind`` and its height and width (manifest metadata)."""
    meta = case.metadata
    return (str(meta.get("kind", "")), str(meta.get("height", "")), str(meta.get("width", "")))


def seen_groups(cases, trained) -> dict[str, str]:
    """``seen`` for each case whose image type is that of a ``train`` case of ``trained``."""
    seen = {image_type(c) for c in trained if c.split == "train"}
    return {c.case: "seen" if image_type(c) in seen else "unseen" for c in cases}


def _grouped(report: Path, groups: dict[str, str], column: str) -> str:
    """Markdown table of the per-case object metrics averaged within each group.

    ``groups`` maps a case to its group; cases of the report not in it are left out.
    """
    import pandas as pd

    frame = pd.read_csv(report)
    frame = frame[frame["case"].isin(list(groups))].copy()
    frame[column] = frame["case"].map(groups)
    lines = [
        f"| {column} (images) | AP@0.5:0.95 | AP@0.5 | F1@0.5 | pixel IoU | split rate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for value, group in [*frame.groupby(column), ("all", frame)]:
        pairs = group["touching_pairs"].sum()
        split = group["touching_split"].sum() / pairs if pairs else float("nan")
        lines.append(
            f"| {value} ({len(group)}) | {group['ap'].mean():.3f} | {group['ap_50'].mean():.3f} "
            f"| {group['f1_at_05'].mean():.3f} | {group['pixel_iou'].mean():.3f} | {split:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
