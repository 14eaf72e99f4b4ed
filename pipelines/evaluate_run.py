"""Predict and score a training run's validation cases, as the results tables report them.

Usage:
    python pipelines/evaluate_run.py runs/unet_dsb2018 [--objects watershed] [--overwrite]

It loads ``<run>/best.pt``, reads the run's manifest (``<run>/config.json``) and data root
(``$MEDSEG_DATA_ROOT`` unless ``--data-root``), predicts every case of the validation split
with :func:`medseg.predict.predict_case` into ``<run>/val_<objects>/`` (label maps of
volumes as ``<case>.nii.gz``) and scores them with
:func:`medseg.evaluation.evaluate_manifest`, writing ``<run>/val_<objects>/report.csv`` and
``.md``. A case that fails is reported and the others still run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medseg.checkpoint import load_checkpoint
from medseg.evaluation import evaluate_manifest
from medseg.manifest import load_manifest
from medseg.predict import predict_case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder holding best.pt and config.json")
    parser.add_argument("--data-root", default=None, help="default: $MEDSEG_DATA_ROOT")
    parser.add_argument("--objects", choices=("components", "watershed"), default=None)
    parser.add_argument("--min-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    config = json.loads((args.run / "config.json").read_text(encoding="utf-8"))
    manifest = load_manifest(config["data"]["manifest"], data_root=args.data_root)
    split = config["data"]["val_split"]
    ckpt = load_checkpoint(args.run / "best.pt")
    net = ckpt.build_model()
    overrides = {k: v for k, v in (("method", args.objects), ("min_size", args.min_size)) if v}
    out = args.run / f"val_{args.objects or 'model'}"
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    volumes = str(ckpt.inference.get("mode")) != "tile"  # label maps named as the case
    for case in manifest.split(split):
        try:
            predict_case(
                case.image,
                ckpt,
                out / f"{case.case}.nii.gz" if volumes else out,
                model=net,
                device=args.device,
                overwrite=args.overwrite,
                objects=overrides or None,
            )
        except (ValueError, OSError) as err:
            failed += 1
            print(f"{case.case}: {' '.join(str(err).split())}", file=sys.stderr)
    result = evaluate_manifest(
        config["data"]["manifest"],
        out,
        data_root=args.data_root,
        split=split,
        output=out / "report.csv",
        overwrite=args.overwrite,
    )
    for path in result.written:
        print(f"wrote {path}")
    for case, reason in result.failures:
        print(f"{case}: {reason}", file=sys.stderr)
    print(f"epoch {ckpt.epoch} of {args.run}; {len(result.failures) + failed} failure(s)")
    if (out / "report.md").is_file():
        print((out / "report.md").read_text(encoding="utf-8"))
    return 1 if result.failures or failed else 0


if __name__ == "__main__":
    sys.exit(main())
