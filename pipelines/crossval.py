"""K-fold cross-validation of a training config over every labelled case of its manifest.

Usage:
    python pipelines/crossval.py -c configs/usegnet_ibsr18_cpu.yaml --folds 4 \
        --out runs/cv_usegnet [--set key=value ...] [--data-root DIR] [--overwrite]
    python pipelines/crossval.py -c configs/unet_isbi2012.yaml --folds 5 --blocks \
        --inner-val --tune --out runs/cv_em          # 2D: contiguous sections, nested choice

Folds: the manifest's labelled cases (of every split) sorted by ``--group-column`` (default
``spacing_group``, skipped when the manifest has no such column) and then by case id, dealt
round-robin into ``--folds`` folds, so every fold spans the groups (IBSR-18: its three
voxel-spacing groups).

For fold ``i``, ``<out>/fold_i/manifest.csv`` (with the labels sidecar) marks fold ``i``'s
cases ``val`` and the others ``train``; ``medseg train`` runs the config with validation
only after the last epoch (``schedule.val_every`` = ``schedule.epochs``), so the scored
checkpoint is the last one and no case chooses its own checkpoint; then the fold's cases
are predicted and scored as ``pipelines/evaluate_run.py`` does
(``<out>/fold_i/run/val_model/report.csv``).

``--blocks`` deals the cases, sorted by case id, into ``--folds`` contiguous blocks instead
(serial sections: neighbours correlate, so a section's neighbour must not train the model
that is scored on it). ``--inner-val`` makes the selection nested: fold ``i``'s cases are
marked ``test``, the block before it (cyclically) ``val`` and the rest ``train``; training
chooses its checkpoint on ``val`` with the config's own ``schedule.val_every``, ``--tune``
then runs ``medseg tune-postprocess`` on ``val`` (``--tune-args`` are passed on, e.g.
``"--no-crf"``), and only the ``test`` block is scored, into
``<out>/fold_i/run/manifest_test_model/``. No test case chooses anything.

Rerunning continues: a fold with a report is kept, a killed training resumes from its
``last.pt``. ``--overwrite`` starts every fold again. At the end ``<out>/cv_report.csv``
holds every case's rows (with its fold) and ``<out>/cv_summary.md`` the per-case table
and the mean over all cases; for object models (2D) the per-case object metrics and their
mean and standard deviation over the folds' means. A fold that fails is reported and the
others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from medseg.cli import main as medseg_main
from medseg.config import load_config
from medseg.io import atomic_output
from medseg.manifest import Case, labels_path_for, load_manifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_run  # noqa: E402  (the sibling pipeline: predicts and scores a run's val split)


def assign_folds(cases: list[Case], folds: int, group_column: str | None) -> dict[str, int]:
    """Case id -> fold: sorted by (group, case id), dealt round-robin into ``folds`` folds.

    Example:
        >>> from pathlib import Path
        >>> cs = [Case(c, Path(c), Path(c), "train", {"g": g}) for c, g in
        ...       [("a", "1"), ("b", "2"), ("c", "1"), ("d", "2")]]
        >>> assign_folds(cs, 2, "g")
        {'a': 0, 'c': 1, 'b': 0, 'd': 1}
    """
    if folds < 2 or folds > len(cases):
        raise ValueError(
            f"--folds must be between 2 and the number of labelled cases ({len(cases)}), "
            f"got {folds}"
        )

    def key(case: Case) -> tuple[str, str]:
        group = str(case.metadata.get(group_column, "")) if group_column else ""
        return group, case.case

    return {case.case: i % folds for i, case in enumerate(sorted(cases, key=key))}


def assign_blocks(cases: list[Case], folds: int) -> dict[str, int]:
    """Case id -> fold: sorted by case id, cut into ``folds`` contiguous blocks.

    Block sizes differ by at most one, the larger blocks first.

    Example:
        >>> from pathlib import Path
        >>> cs = [Case(f"s{i}", Path("i"), Path("l"), "train", {}) for i in range(5)]
        >>> assign_blocks(cs, 2)
        {'s0': 0, 's1': 0, 's2': 0, 's3': 1, 's4': 1}
    """
    if folds < 2 or folds > len(cases):
        raise ValueError(
            f"--folds must be between 2 and the number of labelled cases ({len(cases)}), "
            f"got {folds}"
        )
    ids = sorted(c.case for c in cases)
    size, extra = divmod(len(ids), folds)
    fold_of, start = {}, 0
    for fold in range(folds):
        stop = start + size + (1 if fold < extra else 0)
        fold_of.update({case: fold for case in ids[start:stop]})
        start = stop
    return fold_of


def split_of(fold_of: dict[str, int], fold: int, folds: int, inner_val: bool) -> dict[str, str]:
    """Case id -> split for ``fold``: ``val`` (or ``test`` with ``inner_val``) for its cases;
    with ``inner_val`` the previous fold's cases are ``val``; the rest ``train``.

    Example:
        >>> split_of({"a": 0, "b": 1, "c": 2}, 0, 3, True)
        {'a': 'test', 'b': 'train', 'c': 'val'}
    """
    inner = (fold - 1) % folds
    out = {}
    for case, f in fold_of.items():
        if f == fold:
            out[case] = "test" if inner_val else "val"
        elif inner_val and f == inner:
            out[case] = "val"
        else:
            out[case] = "train"
    return out


def write_fold_manifest(source: Path, splits: dict[str, str], out: Path) -> Path:
    """``source``'s labelled rows with the split of each case from ``splits``."""
    table = pd.read_csv(source, dtype=str, keep_default_na=False)
    table = table[table["case"].isin(list(splits))].copy()
    table["split"] = [splits[c] for c in table["case"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out, overwrite=True) as tmp:
        table.to_csv(tmp, index=False)
    sidecar = labels_path_for(source)
    if sidecar.is_file():
        shutil.copyfile(sidecar, labels_path_for(out))
    return out


def report_folder(run: Path, inner_val: bool) -> Path:
    """Where :func:`run_fold` scores the fold's own cases."""
    return run / ("manifest_test_model" if inner_val else "val_model")


def run_fold(
    config: Path,
    overrides: list[str],
    manifest: Path,
    run: Path,
    data_root: Path,
    epochs: int,
    *,
    overwrite: bool,
    inner_val: bool = False,
    tune: bool = False,
    tune_args: list[str] | None = None,
) -> int:
    """Train (or resume) one fold in ``run`` and score its held-out cases; exit status."""
    report = report_folder(run, inner_val) / "report.csv"
    if report.is_file() and not overwrite:
        print(f"{run}: kept (its report exists)")
        return 0
    args = ["train", "-c", str(config), "--quiet"]
    settings = [
        *overrides,
        f"data.manifest={manifest}",
        f"data.data_root={data_root}",
        "data.train_split=train",
        "data.val_split=val",
        f"out_dir={run}",
    ]
    if not inner_val:
        settings.append(f"schedule.val_every={epochs}")
    for item in settings:
        args += ["--set", item]
    if (run / "last.pt").is_file() and not overwrite:
        args.append("--resume")
    elif run.exists():
        args.append("--overwrite")  # ours, and without a checkpoint there is nothing to keep
    code = medseg_main(args)
    if code != 0:
        return code
    if not inner_val:
        return evaluate_run.main([str(run), "--data-root", str(data_root), "--overwrite"])
    checkpoint = run / "best.pt"
    if tune:
        checkpoint = run / "tuned.pt"
        code = medseg_main(
            [
                "tune-postprocess", str(checkpoint), "-m", str(run / "best.pt"),
                "--manifest", str(manifest), "--data-root", str(data_root),
                "--split", "val", "--overwrite", *(tune_args or []),
            ]
        )  # fmt: skip
        if code != 0:
            return code
    return evaluate_run.main(
        [
            str(run), "--data-root", str(data_root), "--manifest", str(manifest),
            "--split", "test", "--checkpoint", str(checkpoint), "--overwrite",
        ]
    )  # fmt: skip


OBJECT_SUMMARY = ("rand_error", "pixel_error", "v_rand", "v_info", "ap", "ap_50", "pixel_iou")
"""The object metrics that the summary reports per case and as mean +- std over folds."""


def summarize(
    out: Path, fold_of: dict[str, int], folds: int, *, inner_val: bool = False
) -> tuple[Path, Path]:
    """Gather the folds' reports into ``cv_report.csv`` and ``cv_summary.md``."""
    rows, cases = [], []
    for fold in range(folds):
        folder = report_folder(out / f"fold_{fold}" / "run", inner_val)
        if not (folder / "report.csv").is_file():
            continue
        rows.append(pd.read_csv(folder / "report.csv").assign(fold=fold))
        if (folder / "report_cases.csv").is_file():
            cases.append(pd.read_csv(folder / "report_cases.csv").assign(fold=fold))
    if not rows:
        raise ValueError(f"no fold of {out} has a report to summarise, got none")
    table = pd.concat(rows, ignore_index=True)
    if "rand_error" in table.columns:
        return _write_summary(out, table, _object_lines(table, len(fold_of), folds))
    per_case = pd.concat(cases, ignore_index=True)
    dice = table.pivot(index="case", columns="tissue", values="dice")
    bf = table.pivot(index="case", columns="tissue", values="bf_score").add_suffix(" BF")
    wide = pd.concat([dice, bf], axis=1)
    wide["weighted"] = per_case.set_index("case")["weighted_dice"]
    fold = per_case.set_index("case")["fold"]
    wide = wide.loc[sorted(wide.index, key=lambda c: (fold[c], c))]
    mean = wide.mean()
    wide.insert(0, "fold", [str(fold[c]) for c in wide.index])  # text: not float-formatted
    lines = [
        f"# Cross-validation: {len(wide)} of {len(fold_of)} cases in {folds} folds",
        "",
        "Dice and boundary F1 per case (whole volume, its fold's last checkpoint), and the "
        "mean over cases.",
        "",
        wide.to_markdown(floatfmt=".4f"),
        "",
        pd.DataFrame([mean], index=["mean"]).to_markdown(floatfmt=".4f"),
        "",
    ]
    return _write_summary(out, table, lines)


def _object_lines(table: pd.DataFrame, total: int, folds: int) -> list[str]:
    """The object summary: per case, then the mean and std over the folds' means."""
    columns = [c for c in OBJECT_SUMMARY if c in table.columns]
    wide = table.set_index("case")[["fold", *columns]].sort_values(["fold", "case"])
    per_fold = table.groupby("fold")[columns].mean()
    stats = pd.DataFrame(
        [per_fold.mean(), per_fold.std(ddof=1) if len(per_fold) > 1 else per_fold.mean() * 0],
        index=["mean over folds", "std over folds"],
    )
    wide["fold"] = wide["fold"].astype(str)
    return [
        f"# Cross-validation: {len(wide)} of {total} cases in {folds} folds",
        "",
        "Object metrics per held-out case (its fold's checkpoint and post-processing), each "
        "fold's mean, and the mean and standard deviation of the fold means.",
        "",
        wide.to_markdown(floatfmt=".4f"),
        "",
        per_fold.to_markdown(floatfmt=".4f"),
        "",
        stats.to_markdown(floatfmt=".4f"),
        "",
    ]


def _write_summary(out: Path, table: pd.DataFrame, lines: list[str]) -> tuple[Path, Path]:
    report, summary = out / "cv_report.csv", out / "cv_summary.md"
    with atomic_output(report, overwrite=True) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_output(summary, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return report, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True, help="folder for the folds")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--data-root", type=Path, default=None, help="default: the config's")
    parser.add_argument("--group-column", default="spacing_group")
    parser.add_argument("--blocks", action="store_true", help="contiguous folds by case id")
    parser.add_argument(
        "--inner-val", action="store_true", help="choose on the previous block, score the fold"
    )
    parser.add_argument("--tune", action="store_true", help="tune-postprocess on the inner val")
    parser.add_argument("--tune-args", default="", help='e.g. "--no-crf" (split on spaces)')
    parser.add_argument("--overwrite", action="store_true", help="start every fold again")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config, args.overrides)
        root = args.data_root or config.data.data_root or os.environ.get("MEDSEG_DATA_ROOT")
        if root is None:
            raise ValueError("--data-root must be given (or data.data_root), got neither")
        data_root = Path(root).resolve()
        source = Path(config.data.manifest).resolve()
        manifest = load_manifest(source, data_root=data_root)
        labelled = [c for c in manifest.cases if c.label is not None]
        group = args.group_column
        if group and not all(group in c.metadata for c in labelled):
            group = None  # no such column: plain round-robin over case ids
        fold_of = (
            assign_blocks(labelled, args.folds)
            if args.blocks
            else assign_folds(labelled, args.folds, group)
        )
        if args.tune and not args.inner_val:
            raise ValueError("--tune needs --inner-val (tuning on scored cases is optimistic)")
        if args.inner_val and args.folds < 3:
            raise ValueError(f"--inner-val needs --folds >= 3, got {args.folds}")
    except (TypeError, ValueError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1

    failed = []
    for fold in range(args.folds):
        folder = args.out.resolve() / f"fold_{fold}"
        splits = split_of(fold_of, fold, args.folds, args.inner_val)
        fold_manifest = write_fold_manifest(source, splits, folder / "manifest.csv")
        for name in ("val", "test"):
            chosen = sorted(c for c, s in splits.items() if s == name)
            if chosen:
                print(f"fold {fold}: {name} {', '.join(chosen)}")
        code = run_fold(
            args.config,
            args.overrides,
            fold_manifest,
            folder / "run",
            data_root,
            config.schedule.epochs,
            overwrite=args.overwrite,
            inner_val=args.inner_val,
            tune=args.tune,
            tune_args=args.tune_args.split(),
        )
        if code != 0:
            failed.append(fold)
            print(f"fold {fold} failed (exit status {code}); the others still run", file=sys.stderr)
    try:
        report, summary = summarize(
            args.out.resolve(), fold_of, args.folds, inner_val=args.inner_val
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {report}\nwrote {summary}")
    print(summary.read_text(encoding="utf-8"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
