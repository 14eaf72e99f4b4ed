"""Pack a trained checkpoint as a built-in model: float16 weights, no optimiser state.

Usage: python pipelines/ship_model.py runs/usegnet_ibsr18_cpu/best.pt brain-tissue [--overwrite]
       python pipelines/ship_model.py runs/unet_dsb2018_e40_nowm/best.pt nuclei --objects watershed
writes medseg/weights/<name>.pt (the model card medseg/weights/<name>.md is written by hand).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medseg.checkpoint import WEIGHTS_DIR, load_checkpoint, resave_checkpoint

# what prediction needs besides the weights; optimiser, scheduler and RNG states are dropped
SHIPPED_EXTRA = ("postprocess", "label_format", "foreground_value")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="trained checkpoint (best.pt)")
    parser.add_argument("name", help="built-in model name, e.g. brain-tissue")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--objects",
        choices=("components", "watershed"),
        default=None,
        help="2D object models: the post-processing to ship (default: the run's)",
    )
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    if args.objects is not None:
        if "postprocess" not in ckpt.extra:
            parser.error(f"--objects needs a 2D object model, got {args.checkpoint}")
        ckpt.extra["postprocess"] = {**ckpt.extra["postprocess"], "method": args.objects}
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
