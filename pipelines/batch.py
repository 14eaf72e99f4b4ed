"""Segment a cohort and write its report, on a local or remote Dask cluster.

Usage:
    python pipelines/batch.py data_manifests/ibsr18.csv runs/batch_ibsr18 --fast [--workers 2]
    python pipelines/batch.py data_manifests/ibsr18.csv runs/batch_ibsr18 \\
        --scheduler tcp://10.0.0.5:8786 --device cuda

The same engine and outputs as ``medseg batch run`` (:func:`medseg.batch.run_batch`):
``<out>/predictions`` (label map, confidence map and ``<case>.json`` per case) and
``<out>/report`` (``cases.csv``, ``report.md``, ``report.html``). Finished cases are skipped,
so rerunning after an interruption finishes the rest. The data root is ``--data-root`` or
``$MEDSEG_DATA_ROOT``. A case that fails is reported and the others still run; the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medseg.batch import BatchConfig, format_outcome, run_batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path, help="manifest CSV, e.g. data_manifests/ibsr18.csv")
    parser.add_argument("out", type=Path, help="output folder (predictions/ and report/)")
    parser.add_argument("--data-root", type=Path, default=None, help="default: $MEDSEG_DATA_ROOT")
    parser.add_argument("--model", default="brain-tissue", help="checkpoint or built-in name")
    parser.add_argument("--workers", type=int, default=None, help="local workers (default 2)")
    parser.add_argument("--scheduler", default=None, help="existing cluster, tcp://host:port")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--split", default=None, choices=("train", "val", "test"))
    parser.add_argument("--fast", action="store_true", help="whole slices, no patch voting")
    parser.add_argument("--mode", default=None, choices=("vote", "mean", "gaussian"))
    parser.add_argument("--group-by", default=None, help="manifest column for the report")
    parser.add_argument("--overwrite", action="store_true", help="redo finished cases")
    args = parser.parse_args(argv)

    config = BatchConfig(
        args.manifest,
        args.data_root,
        model=args.model,
        workers=args.workers,
        scheduler=args.scheduler,
        threads=args.threads,
        device=args.device,
        split=args.split,
        fast=args.fast,
        mode=args.mode,
        group_by=args.group_by,
        overwrite=args.overwrite,
    )
    result = run_batch(config, args.out, on_case=lambda o: print(format_outcome(o), flush=True))
    for path in result.written:
        print(f"wrote {path}")
    print(result.summary())
    for outcome in result.failures:
        print(f"{outcome.case} ({outcome.stage}): {outcome.error}", file=sys.stderr)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
