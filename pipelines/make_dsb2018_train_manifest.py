"""Write ``data_manifests/dsb2018_stage1_train.csv``: the DSB2018 stage-1 training set.

The 664 images of ``dsb2018_stage1_train/`` (see ``../shared/data/README.md``), in the order
of its ``index.csv``, with a validation split stratified by ``kind``: every 7th image of
each kind (fluorescence ``gray_dark_bg``, grey on light ``gray_light_bg``, ``color``) is
``val``, the rest ``train`` (about 14 % of each kind). The external test set is
``dsb2018_stage1_test`` (its own manifest); no image is in both.

Usage: python pipelines/make_dsb2018_train_manifest.py --data-root ../shared/data [--overwrite]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from medseg.io import atomic_output

NAME = "dsb2018_stage1_train"
VAL_EVERY = 7
COLUMNS = ["case", "image", "label", "split", "kind", "n_nuclei", "touching_pairs"]
COLUMNS += ["height", "width"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding the data")
    parser.add_argument("--out", type=Path, default=Path("data_manifests"), help="manifest folder")
    parser.add_argument("--overwrite", action="store_true", help="replace existing manifests")
    args = parser.parse_args(argv)
    index = args.data_root / NAME / "index.csv"
    with index.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    seen: dict[str, int] = {}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        kind = row["kind"]
        seen[kind] = seen.get(kind, 0) + 1
        split = "val" if seen[kind] % VAL_EVERY == 0 else "train"
        case = row["id"]
        writer.writerow(
            [case, f"{NAME}/images/{case}.png", f"{NAME}/labels/{case}.png", split, kind,
             row["nuclei"], row["touching_pairs"], row["height"], row["width"]]
        )  # fmt: skip
    labels = {"labels": {"0": "background", "1": "nucleus"}, "label_format": "instances"}
    with atomic_output(args.out / f"{NAME}.csv", overwrite=args.overwrite) as tmp:
        tmp.write_text(buffer.getvalue())
    with atomic_output(args.out / f"{NAME}.labels.json", overwrite=args.overwrite) as tmp:
        tmp.write_text(json.dumps(labels, indent=2) + "\n")
    print(f"wrote {args.out / (NAME + '.csv')}: {len(rows)} cases, per kind {seen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
