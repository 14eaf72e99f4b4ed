"""Benchmark: U-Net elastic deformation of an image and its label map, medseg against peers.

Cases (synthetic, fixed seed: Gaussian-smoothed noise in [0, 1], 4 label classes by
thresholds): a 512x512 slice, image (1, 1, 512, 512) + label (1, 512, 512), and a volume of
(Z, Y, X) = (64, 128, 128) (x = y = 128, z = 64), image + label. Every method draws a new
random field inside the timed call and warps image and label with the same field, the
label by nearest neighbour, mirror (reflect) boundaries where the method has them.

Methods (image interpolation in brackets; "cubic" groups cubic kernels, "linear" linear):

* ``medseg numpy``: elastic_deform_sample, scipy map_coordinates (order 1 / order 3).
* ``medseg torch-cpu``: apply_augment_torch on CPU tensors (bilinear / bspline = the same
  cubic B-spline as order 3 / bicubic = torch's Keys kernel, 2D only).
* ``... crop 40x40``: the same deformation evaluated on a 40x40 window only (``crop=``).
* ``elasticdeform``: deform_random_grid([image, label], sigma=10, points=3,
  order=[1 or 3, 0], mode="mirror"), built from source (the U-Net model, C loop).
* ``MONAI Rand2DElastic``: spacing=(256, 256) px (MONAI pads the control grid, 6x6 points
  here), magnitude_range=(10, 10) (offsets N(0, 1) * 10 px), padding "reflection", modes
  "bilinear" / 3 (spline order 3 through scipy); the label with randomize=False (same grid).
* ``MONAI Rand3DElastic``: a different model (Gaussian-smoothed dense random field);
  sigma_range=(8, 8), magnitude_range=(1500, 1500) (std of the smoothed unit noise is about
  1 / ((4 pi)^(3/4) 8^(3/2)) = 0.0066, so about 10 px), "bilinear", "reflection".
* ``TorchIO RandomElasticDeformation``: num_control_points=5, locked_borders=1 (the
  3x3(x3) interior points move), max_displacement=17.3 (uniform, std 10 px; z fixed in 2D),
  image_interpolation "linear" / "bspline", label nearest (LabelMap); SimpleITK resampling.

Timing: every method runs once to warm up, then ``--repeats`` rounds in which each method
runs once (interleaved, so background load hits all alike); median per method. By default
every library is limited to ``--threads 1`` (torch, OpenMP/MKL, SimpleITK): a per-core
comparison that is stable on a shared machine. Ratios: to the fastest peer of the same
interpolation group, and to the fastest peer overall. If CUDA is available, batched
throughput of apply_augment_torch on the GPU is reported too.

Usage: python benchmarks/bench_augment.py [--repeats 7] [--threads 1]
       [--out benchmarks/results_augment.md]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings
from pathlib import Path


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="threads for every library")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results_augment.md",
        help="Markdown file to write",
    )
    return parser.parse_args()


ARGS = _parse()
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)  # before numpy / torch load their thread pools

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import describe_machine  # noqa: E402
from scipy import ndimage  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medseg.augment import (  # noqa: E402
    AffineParams,
    AugmentParams,
    apply_augment_torch,
    elastic_deform,
    elastic_deform_label,
    elastic_deform_sample,
    elastic_deform_torch,
    sample_elastic_params,
)

torch.set_num_threads(ARGS.threads)
warnings.filterwarnings("ignore")  # library deprecation chatter; none affects timing
SIGMA = 10.0
CROP = 40
NOTES: list[str] = []  # skipped methods, written into the results


def _data(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random(shape), 4.0 if shape[0] == 1 else 2.0)
    image = ((image - image.min()) / (image.max() - image.min())).astype(np.float32)
    label = np.digitize(image, [0.3, 0.5, 0.7]).astype(np.uint8)
    return image[None], label


# ---------------------------------------------------------------------------
# Methods: each returns a zero-argument callable doing one draw + image and label warp
# ---------------------------------------------------------------------------


def _medseg_numpy(image, label, ndim, order, crop=None):
    rng = np.random.default_rng(0)
    shape = image.shape[1:]

    def run():
        params = sample_elastic_params(rng, shape, sigma=SIGMA, ndim=ndim)
        return elastic_deform_sample(image, label, params=params, order=order, crop=crop)

    return run


def _medseg_torch(image, label, ndim, mode, crop=None, device="cpu"):
    rng = np.random.default_rng(0)
    shape = image.shape[1:]
    timg = torch.from_numpy(image)[None].to(device)
    tlab = torch.from_numpy(label)[None].to(device)

    def run():
        params = sample_elastic_params(rng, shape, sigma=SIGMA, ndim=ndim)
        aug = AugmentParams(AffineParams(shape, ndim=ndim), elastic=params)
        return apply_augment_torch(timg, tlab, None, [aug], mode=mode, crop=crop)

    return run


def _elasticdeform(image, label, order, crop=None):
    import elasticdeform

    img = image[0, 0] if image.shape[1] == 1 else image[0]
    lab = label[0] if label.shape[0] == 1 else label
    crop2 = None if crop is None else crop[3 - img.ndim :]

    def run():
        return elasticdeform.deform_random_grid(
            [img, lab], sigma=SIGMA, points=3, order=[order, 0], mode="mirror", crop=crop2
        )

    return run


def _monai(image, label, mode):
    from monai.transforms import Rand2DElastic, Rand3DElastic

    if image.shape[1] == 1:  # (1, Y, X) channel-first 2D
        img = torch.from_numpy(image[:, 0])
        lab = torch.from_numpy(label[None, 0].astype(np.float32))
        pad = "reflection" if isinstance(mode, str) else "mirror"
        t = Rand2DElastic(
            spacing=(256, 256),
            magnitude_range=(SIGMA, SIGMA),
            prob=1.0,
            mode=mode,
            padding_mode=pad,
        )
        nearest = "nearest" if isinstance(mode, str) else 0
    else:
        img = torch.from_numpy(image)
        lab = torch.from_numpy(label[None].astype(np.float32))
        t = Rand3DElastic(
            sigma_range=(8, 8),
            magnitude_range=(1500, 1500),
            prob=1.0,
            mode=mode,
            padding_mode="reflection",
        )
        nearest = "nearest"
    t.set_random_state(0)

    def run():
        out_img = t(img, randomize=True)
        out_lab = t(lab, mode=nearest, randomize=False)
        return out_img, out_lab

    return run


def _torchio(image, label, interpolation):
    import SimpleITK as sitk
    import torchio as tio

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(ARGS.threads)
    # TorchIO is (C, W, H, D) = (C, x, y, z): reverse our (z, y, x) axes once, outside timing
    img = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 2, 1)))
    lab = torch.from_numpy(np.ascontiguousarray(label.transpose(2, 1, 0)))[None]
    subject = tio.Subject(image=tio.ScalarImage(tensor=img), label=tio.LabelMap(tensor=lab))
    two_d = image.shape[1] == 1
    transform = tio.RandomElasticDeformation(
        num_control_points=5,
        max_displacement=(17.3, 17.3, 0.0) if two_d else 17.3,
        locked_borders=1,
        image_interpolation=interpolation,
        label_interpolation="nearest",
    )
    torch.manual_seed(0)
    return lambda: transform(subject)


def _methods(image, label, ndim):
    """(name, group, kind, factory); kind is "medseg" or "peer", factory() builds the call."""
    crop = (slice(None), slice(236, 236 + CROP), slice(236, 236 + CROP))
    window = f"crop {CROP}x{CROP}"
    specs = [
        ("medseg numpy [order 1]", "linear", "medseg", _medseg_numpy, (ndim, 1)),
        ("medseg numpy [order 3, B-spline]", "cubic", "medseg", _medseg_numpy, (ndim, 3)),
        ("medseg torch-cpu [bilinear]", "linear", "medseg", _medseg_torch, (ndim, "bilinear")),
        ("medseg torch-cpu [bspline]", "cubic", "medseg", _medseg_torch, (ndim, "bspline")),
    ]
    if ndim == 2:
        specs += [
            ("medseg torch-cpu [bicubic, Keys]", "cubic", "medseg", _medseg_torch, (2, "bicubic")),
            (f"medseg numpy [order 3], {window}", "crop", "medseg", _medseg_numpy, (2, 3, crop)),
            (
                f"medseg torch-cpu [bspline], {window}",
                "crop",
                "medseg",
                _medseg_torch,
                (2, "bspline", crop),
            ),
            (
                f"medseg torch-cpu [bilinear], {window}",
                "crop",
                "medseg",
                _medseg_torch,
                (2, "bilinear", crop),
            ),
        ]
    try:
        import elasticdeform  # noqa: F401

        specs += [
            ("elasticdeform [order 1]", "linear", "peer", _elasticdeform, (1,)),
            ("elasticdeform [order 3]", "cubic", "peer", _elasticdeform, (3,)),
        ]
        if ndim == 2:
            specs.append(
                (f"elasticdeform [order 3], {window}", "crop", "peer", _elasticdeform, (3, crop))
            )
    except ImportError:
        note = "elasticdeform is not importable: skipped (pip install --no-binary elasticdeform)"
        if note not in NOTES:
            NOTES.append(note)
    monai = "MONAI Rand2DElastic" if ndim == 2 else "MONAI Rand3DElastic"
    specs.append((f"{monai} [bilinear]", "linear", "peer", _monai, ("bilinear",)))
    if ndim == 2:
        specs.append((f"{monai} [mode=3, scipy spline]", "cubic", "peer", _monai, (3,)))
    tio = "TorchIO RandomElasticDeformation"
    specs += [
        (f"{tio} [linear]", "linear", "peer", _torchio, ("linear",)),
        (f"{tio} [bspline]", "cubic", "peer", _torchio, ("bspline",)),
    ]
    return [
        (name, group, kind, functools.partial(fn, image, label, *args))
        for name, group, kind, fn, args in specs
    ]


def _time_all(methods, repeats):
    runs = {name: factory() for name, _, _, factory in methods}
    for run in runs.values():
        run()  # warm-up: imports, caches, thread pools
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def _table(methods, medians):
    """Rows with ratios; crop rows are compared with the cropped peer only."""
    peers = {n: g for n, g, k, _ in methods if k == "peer"}
    fastest_any = min(medians[n] for n, g in peers.items() if g != "crop")
    fastest_group: dict[str, float] = {}
    for n, g in peers.items():
        fastest_group[g] = min(fastest_group.get(g, np.inf), medians[n])
    lines = [
        "| method | group | time (ms) | vs fastest peer, same group | vs fastest peer, any |",
        "|---|---|---:|---:|---:|",
    ]
    for n, g, _, _ in methods:
        same = f"{medians[n] / fastest_group[g]:.2f}x" if g in fastest_group else "-"
        anyr = "-" if g == "crop" else f"{medians[n] / fastest_any:.2f}x"
        lines.append(f"| {n} | {g} | {medians[n] * 1e3:.1f} | {same} | {anyr} |")
    return lines, fastest_any, fastest_group


def _agreement(image, label, ndim):
    """numpy vs torch (same field), and medseg vs elasticdeform, for the results file."""
    rng = np.random.default_rng(1)
    noise = rng.random(image.shape, dtype=np.float32)
    params = sample_elastic_params(rng, image.shape[1:], sigma=SIGMA, ndim=ndim)
    rows = []
    for name, img in (("smooth", image), ("white noise", noise)):
        span = float(img.max() - img.min())
        t_img = torch.from_numpy(img)[None]
        for order, mode in ((1, "bilinear"), (3, "bspline")):
            ref = elastic_deform(img, params, order=order)
            out = elastic_deform_torch(t_img, [params], mode=mode)[0].numpy()
            rows.append(
                (f"{name}: numpy order {order} vs torch {mode}", np.abs(out - ref).max() / span)
            )
    ref_label = elastic_deform_label(label, params)
    out_label = elastic_deform_torch(torch.from_numpy(label)[None, None], [params], mode="nearest")
    frac = float((out_label[0, 0].numpy() != ref_label).mean())
    rows.append(("labels: numpy order 0 vs torch nearest (fraction of pixels differing)", frac))
    try:
        import elasticdeform

        axis = (1, 2) if ndim == 2 else (0, 1, 2)
        for order in (1, 3):
            ed = elasticdeform.deform_grid(
                image[0], params.displacement, order=order, mode="mirror", axis=axis
            )
            ours = elastic_deform(image, params, order=order)[0]
            span = float(image.max() - image.min())
            rows.append(
                (f"elasticdeform vs medseg numpy, order {order}", np.abs(ed - ours).max() / span)
            )
    except ImportError:
        rows.append(("elasticdeform", float("nan")))
    return rows


def _gpu_throughput():
    if not torch.cuda.is_available():
        return [
            "No CUDA device here: GPU throughput not measured (the code path is the same "
            "apply_augment_torch call on CUDA tensors)."
        ]
    lines = ["| case | batch | mode | images/s |", "|---|---:|---|---:|"]
    for shape, batch, ndim in (((1, 512, 512), 64, 2), ((64, 128, 128), 8, 3)):
        image, label = _data(shape, 0)
        rng = np.random.default_rng(0)
        timg = torch.from_numpy(np.repeat(image[None], batch, 0)).cuda()
        tlab = torch.from_numpy(np.repeat(label[None], batch, 0)).cuda()
        for mode in ("bilinear", "bspline"):
            params = [
                AugmentParams(
                    AffineParams(shape, ndim=ndim),
                    elastic=sample_elastic_params(rng, shape, sigma=SIGMA, ndim=ndim),
                )
                for _ in range(batch)
            ]
            apply_augment_torch(timg, tlab, None, params, mode=mode)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                apply_augment_torch(timg, tlab, None, params, mode=mode)
            torch.cuda.synchronize()
            rate = 10 * batch / (time.perf_counter() - start)
            lines.append(f"| {'x'.join(map(str, shape))} + label | {batch} | {mode} | {rate:.0f} |")
    return lines


def main() -> None:
    out = [
        "Elastic deformation (U-Net model: 3x3(x3) coarse grid, sigma 10 px) of an image and its "
        "label map with one field; one random draw per call, included in the time.",
        f"Machine: {describe_machine()}; every library limited to {ARGS.threads} thread(s).",
        f"Median of {ARGS.repeats} interleaved rounds. Data: synthetic smooth image, 4 classes.",
        "",
    ]
    verdicts = []
    for title, shape, ndim in (
        ("512x512 slice, image + label", (1, 512, 512), 2),
        ("128x128x64 volume (Z, Y, X) = (64, 128, 128), image + label", (64, 128, 128), 3),
    ):
        image, label = _data(shape, 0)
        methods = _methods(image, label, ndim)
        medians = _time_all(methods, ARGS.repeats)
        lines, fastest_any, fastest_group = _table(methods, medians)
        out += [f"### {title}", "", *lines, ""]
        best = min((n for n, g, k, _ in methods if k == "medseg" and g != "crop"), key=medians.get)
        verdicts.append(
            f"- {title}: fastest medseg ({best}) {medians[best] * 1e3:.1f} ms = "
            f"{medians[best] / fastest_any:.2f}x the fastest peer "
            f"({fastest_any * 1e3:.1f} ms); target <= 0.5x: "
            f"{'met' if medians[best] <= 0.5 * fastest_any else 'NOT met'}."
        )
        subsets = (
            ("linear", "linear", lambda n: True),
            ("cubic", "cubic", lambda n: True),
            ("cubic B-spline (elasticdeform's kernel)", "cubic", lambda n: "spline" in n),
        )
        for label_, group, keep in subsets:
            best_n = min(
                (n for n, g, k, _ in methods if k == "medseg" and g == group and keep(n)),
                key=medians.get,
            )
            verdicts.append(
                f"  - {label_}: best medseg ({best_n}) {medians[best_n] * 1e3:.1f} ms = "
                f"{medians[best_n] / fastest_group[group]:.2f}x the fastest {group} peer."
            )
        out += ["Agreement on this case (max |difference| / image range unless stated):", ""]
        out += ["| comparison | value |", "|---|---:|"]
        out += [f"| {name} | {value:.2e} |" for name, value in _agreement(image, label, ndim)]
        out.append("")
    out += ["### Target (CPU: medseg <= half the fastest peer)", "", *verdicts, ""]
    out += [f"Note: {note}" for note in NOTES]
    out += ["### GPU batched throughput", "", *_gpu_throughput(), ""]
    text = "\n".join(out)
    ARGS.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
