"""K-fold cross-validation of a training config over every labelled case of its manifest.

Usage:
    python pipelines/crossval.py -c configs/usegnet_ibsr18_cpu.yaml --folds 4 \
        --out runs/cv_usegnet [--set key=value ...] [--data-root DIR] [--overwrite]

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

Rerunning continues: a fold with a report is kept, a killed training resumes from its
``last.pt``. ``--overwrite`` starts every fold again. At the end ``<out>/cv_report.csv``
holds every case's rows (with its fold) and ``<out>/cv_summary.md`` the per-case table
and the mean over all cases. A fold that fails is reported and the others still run;
the exit status is then 1.
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


def write_fold_manifest(source: Path, fold_of: dict[str, int], fold: int, out: Path) -> Path:
    """``source``'s labelled rows with split ``val`` for ``fold``'s cases, ``train`` else."""
    table = pd.read_csv(source, dtype=str, keep_default_na=False)
    table = table[table["case"].isin(list(fold_of))].copy()
    table["split"] = ["val" if fold_of[c] == fold else "train" for c in table["case"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out, overwrite=True) as tmp:
        table.to_csv(tmp, index=False)
    sidecar = labels_path_for(source)
    if sidecar.is_file():
        shutil.copyfile(sidecar, labels_path_for(out))
    return out


def run_fold(
    config: Path,
    overrides: list[str],
    manifest: Path,
    run: Path,
    data_root: Path,
    epochs: int,
    *,
    overwrite: bool,
) -> int:
    """Train (or resume) one fold in ``run`` and score its validation cases; exit status."""
    report = run / "val_model" / "report.csv"
    if report.is_file() and not overwrite:
        print(f"{run}: kept (its report exists)")
        return 0
    args = ["train", "-c", str(config), "--quiet"]
    for item in [
        *overrides,
        f"data.manifest={manifest}",
        f"data.data_root={data_root}",
        "data.train_split=train",
        "data.val_split=val",
        f"schedule.val_every={epochs}",
        f"out_dir={run}",
    ]:
        args += ["--set", item]
    if (run / "last.pt").is_file() and not overwrite:
        args.append("--resume")
    elif run.exists():
        args.append("--overwrite")  # ours, and without a checkpoint there is nothing to keep
    code = medseg_main(args)
    if code != 0:
        return code
    eval_args = [str(run), "--data-root", str(data_root), "--overwrite"]
    return evaluate_run.main(eval_args)


def summarize(out: Path, fold_of: dict[str, int], folds: int) -> tuple[Path, Path]:
    """Gather the folds' reports into ``cv_report.csv`` and ``cv_summary.md``."""
    rows, cases = [], []
    for fold in range(folds):
        folder = out / f"fold_{fold}" / "run" / "val_model"
        if not (folder / "report.csv").is_file():
            continue
        rows.append(pd.read_csv(folder / "report.csv").assign(fold=fold))
        cases.append(pd.read_csv(folder / "report_cases.csv").assign(fold=fold))
    if not rows:
        raise ValueError(f"no fold of {out} has a report to summarise, got none")
    table = pd.concat(rows, ignore_index=True)
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
        fold_of = assign_folds(labelled, args.folds, group)
    except (TypeError, ValueError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1

    failed = []
    for fold in range(args.folds):
        folder = args.out.resolve() / f"fold_{fold}"
        fold_manifest = write_fold_manifest(source, fold_of, fold, folder / "manifest.csv")
        val = sorted(c for c, f in fold_of.items() if f == fold)
        print(f"fold {fold}: validation {', '.join(val)}")
        code = run_fold(
            args.config,
            args.overrides,
            fold_manifest,
            folder / "run",
            data_root,
            config.schedule.epochs,
            overwrite=args.overwrite,
        )
        if code != 0:
            failed.append(fold)
            print(f"fold {fold} failed (exit status {code}); the others still run", file=sys.stderr)
    try:
        report, summary = summarize(args.out.resolve(), fold_of, args.folds)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {report}\nwrote {summary}")
    print(summary.read_text(encoding="utf-8"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
