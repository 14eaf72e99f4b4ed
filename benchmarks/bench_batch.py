"""Benchmark: batch prediction throughput against the number of local Dask workers (CPU).

The cohort is the IBSR-18 development manifest (data_manifests/ibsr18.csv, 8 subjects of
256x128x256 voxels), segmented with the built-in brain-tissue model in ``--fast`` mode,
confidence map included, file to file. In one run, each into a fresh folder:

* ``plain loop``: ``load_predictor`` once, then ``predict_case`` per case in this process (torch
  with all cores): the baseline;
* ``dask N (cold)``: :func:`medseg.batch.predict_manifest` with ``workers=N``, timed end to
  end: starting the embedded LocalCluster, importing torch in each worker, loading the model
  once per worker, predicting, shutting the cluster down -- what one ``medseg batch predict``
  costs;
* ``dask N (warm)`` (N = 1 by default): the same on a LocalCluster of N workers started as
  the engine starts it (:func:`medseg.batch.start_local_cluster`; its workers' imports done)
  before the clock starts, reached with ``scheduler=``: the
  steady-state throughput of a long-running cluster (the model is still loaded once per
  worker inside the timing).

Each worker gets ``max(1, cores // N)`` torch threads. It prints and writes cases per minute,
CPU seconds per case (user + system, this process and the workers), the ratios to the plain
loop and the Dask overhead for one worker (target <= 10 %), with the machine's 1-minute load
average before and after each run: on a machine shared with other jobs, wall times follow the
load, CPU seconds much less.

Usage: python benchmarks/bench_batch.py [--cases 8] [--workers 1 2 4] [--warm 1]
       [--data-root ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from machine import describe_machine

from medseg.batch import BatchConfig, predict_manifest, start_local_cluster
from medseg.manifest import load_manifest
from medseg.predict import load_predictor, predict_case

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "data_manifests" / "ibsr18.csv"
DATA_ROOT = REPO.parent / "shared" / "data"


def _subset(manifest: Path, num_cases: int, folder: Path) -> Path:
    """The first ``num_cases`` rows of ``manifest`` (with its labels sidecar) in ``folder``."""
    lines = manifest.read_text(encoding="utf-8").splitlines()
    out = folder / manifest.name
    out.write_text("\n".join(lines[: num_cases + 1]) + "\n", encoding="utf-8")
    sidecar = manifest.with_name(manifest.stem + ".labels.json")
    (folder / sidecar.name).write_text(sidecar.read_text(encoding="utf-8"), encoding="utf-8")
    return out


def _cpu(children: bool = False) -> float:
    """CPU seconds (user + system) of this process, plus its reaped child processes."""
    t = os.times()
    return t.user + t.system + (t.children_user + t.children_system if children else 0.0)


def _plain_loop(manifest: Path, data_root: Path, out: Path) -> tuple[float, float]:
    cpu, start = _cpu(), time.perf_counter()
    ckpt, net = load_predictor(["brain-tissue"], device="cpu")
    out.mkdir()
    for case in load_manifest(manifest, data_root=data_root).cases:
        predict_case(
            case.image, ckpt, out / f"{case.case}.nii.gz", model=net, device="cpu", fast=True,
            confidence=True,
        )  # fmt: skip
    return time.perf_counter() - start, _cpu() - cpu


def _dask(
    manifest: Path, data_root: Path, out: Path, workers: int, warm: bool
) -> tuple[float, float]:
    """Wall and CPU seconds (this process and the workers) of one ``predict_manifest``."""
    if not warm:  # the workers are child processes, reaped when the cluster stops
        config = BatchConfig(manifest, data_root, workers=workers, device="cpu", fast=True)
        cpu, start = _cpu(children=True), time.perf_counter()
        result = predict_manifest(config, out)
        seconds, cpu = time.perf_counter() - start, _cpu(children=True) - cpu
    else:
        from distributed import Client

        with start_local_cluster(workers) as cluster:  # as the engine starts it
            config = BatchConfig(
                manifest,
                data_root,
                scheduler=cluster.scheduler_address,
                threads=max(1, (os.cpu_count() or 1) // workers),
                device="cpu",
                fast=True,
            )
            with Client(cluster, set_as_default=False) as client:
                client.run(lambda: __import__("medseg.predict"))  # imports before the clock
                before = client.run(_cpu)  # worker address -> CPU seconds
                cpu, start = _cpu(), time.perf_counter()
                result = predict_manifest(config, out)
                seconds, cpu = time.perf_counter() - start, _cpu() - cpu
                after = client.run(_cpu)
            cpu += sum(after[w] - before[w] for w in before)
    if result.num_failed or result.num_predicted != len(result.predicted):
        raise SystemExit(f"dask {workers}: {[o.error for o in result.failures]}")
    loads = {o.worker_pid: o.model_loads for o in result.predicted}
    print(f"  dask {workers} ({'warm' if warm else 'cold'}): model built {loads} (pid: count)")
    return seconds, cpu


def _name(workers: int, *, warm: bool) -> str:
    kind = "warm cluster" if warm else "cold: cluster start + stop"
    return f"dask {workers} worker{'s' if workers > 1 else ''} ({kind})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="cold runs")
    parser.add_argument("--warm", type=int, nargs="*", default=[1], help="warm-cluster runs")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results_batch.md")
    args = parser.parse_args()
    rows: list[tuple[str, float, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = _subset(MANIFEST, args.cases, folder)
        runs = [("plain loop (this process)", None, False)]
        runs += [(_name(n, warm=False), n, False) for n in args.workers]
        runs += [(_name(n, warm=True), n, True) for n in args.warm]
        for i, (name, workers, warm) in enumerate(runs):
            load = f"{os.getloadavg()[0]:.1f}"
            out = folder / f"run{i}"
            if workers is None:
                seconds, cpu = _plain_loop(manifest, args.data_root, out)
            else:
                seconds, cpu = _dask(manifest, args.data_root, out, workers, warm)
            load += f" / {os.getloadavg()[0]:.1f}"
            rows.append((name, seconds, cpu, load))
            print(f"{name}: {seconds:.1f} s, CPU {cpu:.1f} s (load average {load})")
    _, base, base_cpu, _ = rows[0]
    n = args.cases
    lines = [
        f"IBSR-18 development cases: {n} of 256x128x256, model 'brain-tissue' --fast "
        "(whole slices), confidence map written, device cpu, file to file.",
        f"Machine: {describe_machine()}.",
        "Torch threads per worker: max(1, cores // workers); the plain loop uses "
        f"{torch.get_num_threads()}. CPU: user + system seconds of this process and the "
        "workers (cold runs: cluster start and stop included).",
        "The machine was shared with other jobs: see the 1-minute load average (2 cores); "
        "wall times vary with it, CPU seconds much less.",
        "",
        "| run | seconds | cases / min | vs plain (wall) | CPU s / case | vs plain (CPU) "
        "| load average before / after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, seconds, cpu, load in rows:
        lines.append(
            f"| {name} | {seconds:.1f} | {60.0 * n / seconds:.2f} | {seconds / base:.2f}x "
            f"| {cpu / n:.1f} | {cpu / base_cpu:.2f}x | {load} |"
        )
    lines.append("")
    for name, seconds, cpu, _ in rows:
        if name in (_name(1, warm=False), _name(1, warm=True)):
            wall_pct, cpu_pct = 100.0 * (seconds / base - 1.0), 100.0 * (cpu / base_cpu - 1.0)
            lines.append(
                f"Dask overhead against the plain loop, {name}: wall {wall_pct:+.1f} %, "
                f"CPU {cpu_pct:+.1f} % (target <= 10 %)."
            )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
