"""Pack a trained checkpoint as a built-in model: float16 weights, no optimiser state.

Usage: python pipelines/ship_model.py runs/usegnet_ibsr18_cpu/best.pt brain-tissue [--overwrite]
       python pipelines/ship_model.py runs/unet_dsb2018_e40_nowm/best.pt nuclei --objects watershed
       python pipelines/ship_model.py medseg/weights/brain-tissue.pt brain-tissue --overwrite \\
           --grid-from data_manifests/ibsr18.csv --data-root ../shared/data --brain-extraction \
           --labels-note "IBSR-18 protocol: ..."   (the built-ins' note: see medseg/weights/*.md)
writes medseg/weights/<name>.pt (the model card medseg/weights/<name>.md is written by hand).
``--grid-from`` records the training split's orientation and spacings (the model's grid)
and ``--brain-extraction`` that it was trained on skull-stripped T1, for checkpoints
written before ``medseg train`` recorded both; ``--object-size-from`` records the
diameters of a 2D object model's training objects (as ``medseg train`` now does) and
``--diameter`` the scale ``medseg predict`` uses by default (``auto``, ``none`` or pixels,
:mod:`medseg.object_size`); the weights are not touched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medseg.checkpoint import WEIGHTS_DIR, load_checkpoint, resave_checkpoint
from medseg.instances import OBJECT_METHODS

# what prediction needs besides the weights; optimiser, scheduler and RNG states are dropped
SHIPPED_EXTRA = (
    "postprocess",
    "label_format",
    "foreground_value",
    "grid",
    "input",
    "object_size",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="trained checkpoint (best.pt)")
    parser.add_argument("name", help="built-in model name, e.g. brain-tissue")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--objects",
        choices=OBJECT_METHODS,
        default=None,
        help="2D object models: the post-processing to ship (default: the run's)",
    )
    parser.add_argument(
        "--grid-from", type=Path, default=None, help="manifest whose train split set the grid"
    )
    parser.add_argument("--data-root", type=Path, default=None, help="root of manifest paths")
    parser.add_argument("--split", default="train", help="the training split (default: train)")
    parser.add_argument(
        "--brain-extraction", action="store_true", help="trained on skull-stripped T1"
    )
    parser.add_argument(
        "--labels-note", default=None, help="the label protocol, shown by `medseg models`"
    )
    parser.add_argument(
        "--object-size-from",
        type=Path,
        default=None,
        help="2D object models: manifest whose train split gives the training object sizes",
    )
    parser.add_argument(
        "--diameter", default=None, help="2D object models: the default --diameter to ship"
    )
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    if args.objects is not None:
        if "postprocess" not in ckpt.extra:
            parser.error(f"--objects needs a 2D object model, got {args.checkpoint}")
        ckpt.extra["postprocess"] = {**ckpt.extra["postprocess"], "method": args.objects}
    if args.grid_from is not None:
        from medseg.io import read_volume_info
        from medseg.manifest import load_manifest
        from medseg.preprocess import ModelGrid

        cases = load_manifest(args.grid_from, data_root=args.data_root).split(args.split)
        grid = ModelGrid.from_geometries([read_volume_info(c.image).geometry for c in cases])
        ckpt.extra["grid"] = grid.as_dict()
        print(f"grid of {len(cases)} {args.split} cases: {ckpt.extra['grid']}")
    if args.brain_extraction:
        ckpt.extra["input"] = {**(ckpt.extra.get("input") or {}), "brain_extraction": True}
    if args.labels_note:
        ckpt.extra["input"] = {**(ckpt.extra.get("input") or {}), "labels_note": args.labels_note}
    if args.object_size_from is not None:
        from medseg.data import training_object_size
        from medseg.manifest import load_manifest

        manifest = load_manifest(args.object_size_from, data_root=args.data_root)
        labelled = [c.label for c in manifest.split(args.split) if c.label is not None]
        ckpt.extra["object_size"] = training_object_size(
            labelled,
            label_format=manifest.label_format,
            foreground_value=manifest.foreground_value,
        )
        print(f"object sizes of {len(labelled)} {args.split} cases: {ckpt.extra['object_size']}")
    if args.diameter is not None:
        if not ckpt.is_tile_model:
            parser.error(f"--diameter needs a 2D object model, got {args.checkpoint}")
        from medseg._validate import check_diameter

        value = args.diameter if args.diameter in ("auto", "none") else float(args.diameter)
        ckpt.inference["diameter"] = check_diameter(value, "--diameter")
    model = ckpt.build_model()
    out = resave_checkpoint(
        ckpt,
        WEIGHTS_DIR / f"{args.name}.pt",
        model=model,
        extra={k: ckpt.extra[k] for k in SHIPPED_EXTRA if k in ckpt.extra},
        half=True,
        overwrite=args.overwrite,
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
