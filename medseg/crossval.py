"""K-fold cross-validation of a training config over every labelled case of its manifest.

``medseg crossval -c CONFIG --folds K --out DIR`` is the shell; :func:`crossval` does the work.

Folds: the manifest's labelled cases (of every split) sorted by a group column (default
``spacing_group``, skipped when the manifest has no such column) and then by case id, dealt
round-robin into ``folds`` folds, so every fold spans the groups (IBSR-18: its three
voxel-spacing groups). ``blocks`` deals the cases, sorted by case id, into contiguous
blocks instead (serial sections: a section's neighbour must not train the model that is
scored on it).

For fold ``i``, ``<out>/fold_i/manifest.csv`` (with the labels sidecar) marks fold ``i``'s
cases ``val`` and the others ``train``; training validates only after the last epoch
(``schedule.val_every`` = ``schedule.epochs``), so the scored checkpoint is the last one and
no case chooses its own checkpoint; the fold's cases are then predicted and scored into
``<out>/fold_i/run/val_model/``.

``inner_val`` makes the choice nested: fold ``i``'s cases are marked ``test``, the block
before it (cyclically) ``val`` and the rest ``train``; training chooses its checkpoint on
``val`` with the config's own ``schedule.val_every``, ``tune`` then runs
:func:`medseg.tuning.tune_postprocess` on ``val``, and only the ``test`` cases are scored,
into ``<out>/fold_i/run/manifest_test_model/``. No test case chooses anything.

Rerunning continues: a fold with a report is kept, a killed training resumes from its
``last.pt``; ``overwrite`` starts every fold again. At the end ``<out>/cv_report.csv`` holds
every case's rows (with its fold) and ``<out>/cv_summary.md`` the per-case table and the
mean over all cases; for object models (2D) the per-case object metrics and their mean and
standard deviation over the folds' means. A fold that fails is recorded and the others
still run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from medseg._errors import one_line
from medseg.io import atomic_output
from medseg.manifest import Case, Manifest, load_manifest, write_manifest
from medseg.typing import PathLike

logger = logging.getLogger(__name__)

OBJECT_SUMMARY = ("rand_error", "pixel_error", "v_rand", "v_info", "ap", "ap_50", "pixel_iou")
"""The object metrics that the summary reports per case and as mean +- std over folds."""


@dataclass(frozen=True)
class CrossvalOptions:
    """How :func:`crossval` cuts the folds and chooses within them.

    Attributes:
        folds: Number of folds, from 2 to the number of labelled cases (3 with
            ``inner_val``).
        blocks: Contiguous blocks of case ids instead of round-robin folds.
        inner_val: Choose the checkpoint (and post-processing) on the previous fold, score
            only the fold's own cases (``test``).
        tune: Run ``tune-postprocess`` on the inner validation block (needs ``inner_val``).
        tune_crf: Let tuning grid-search the CRF (3D tissue models).
        objects_metric: What tuning chooses 2D objects by: ``rand_error`` or ``ap``.
        group_column: Manifest column whose values every fold spans (``None``: case id
            order only); ignored when the manifest lacks it.
        device: Where training, tuning and prediction run (``auto``, ``cpu``, ``cuda[:N]``,
            ``mps``).
        overwrite: Start every fold again instead of continuing.
        progress: Progress bars during training.
    """

    folds: int = 4
    blocks: bool = False
    inner_val: bool = False
    tune: bool = False
    tune_crf: bool = True
    objects_metric: str = "rand_error"
    group_column: str | None = "spacing_group"
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True


@dataclass
class CrossvalResult:
    """What :func:`crossval` did: the fold of every case, failures, the files written."""

    fold_of: dict[str, int]
    failures: list[tuple[int, str]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    report: Path | None = None
    summary: Path | None = None


def assign_folds(cases: Sequence[Case], folds: int, group_column: str | None) -> dict[str, int]:
    """Case id -> fold: sorted by (group, case id), dealt round-robin into ``folds`` folds.

    Example:
        >>> from pathlib import Path
        >>> cs = [Case(c, Path(c), Path(c), "train", {"g": g}) for c, g in
        ...       [("a", "1"), ("b", "2"), ("c", "1"), ("d", "2")]]
        >>> assign_folds(cs, 2, "g")
        {'a': 0, 'c': 1, 'b': 0, 'd': 1}
    """
    _check_folds(folds, len(cases))

    def key(case: Case) -> tuple[str, str]:
        group = str(case.metadata.get(group_column, "")) if group_column else ""
        return group, case.case

    return {case.case: i % folds for i, case in enumerate(sorted(cases, key=key))}


def assign_blocks(cases: Sequence[Case], folds: int) -> dict[str, int]:
    """Case id -> fold: sorted by case id, cut into ``folds`` contiguous blocks.

    Block sizes differ by at most one, the larger blocks first.

    Example:
        >>> from pathlib import Path
        >>> cs = [Case(f"s{i}", Path("i"), Path("l"), "train", {}) for i in range(5)]
        >>> assign_blocks(cs, 2)
        {'s0': 0, 's1': 0, 's2': 0, 's3': 1, 's4': 1}
    """
    _check_folds(folds, len(cases))
    ids = sorted(c.case for c in cases)
    size, extra = divmod(len(ids), folds)
    fold_of, start = {}, 0
    for fold in range(folds):
        stop = start + size + (1 if fold < extra else 0)
        fold_of.update({case: fold for case in ids[start:stop]})
        start = stop
    return fold_of


def _check_folds(folds: int, cases: int) -> None:
    if folds < 2 or folds > cases:
        raise ValueError(
            f"--folds must be between 2 and the number of labelled cases ({cases}), got {folds}"
        )


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


def write_fold_manifest(source: Manifest, splits: dict[str, str], out: Path) -> Path:
    """``source``'s cases that are in ``splits``, each with its split from ``splits``, as a
    manifest CSV with absolute paths (and the source's label names, if it has them)."""
    cases = [replace(c, split=splits[c.case]) for c in source.cases if c.case in splits]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(
        out,
        cases,
        label_names=source.label_names or None,
        label_format=source.label_format,
        foreground_value=source.foreground_value,
        overwrite=True,
    )
    return out


def report_folder(run: Path, inner_val: bool) -> Path:
    """Where a fold's own cases are predicted and scored."""
    return run / ("manifest_test_model" if inner_val else "val_model")


def predict_and_evaluate(
    checkpoint: PathLike,
    manifest: PathLike,
    out: PathLike,
    *,
    split: str | None,
    data_root: PathLike | None = None,
    objects: dict | None = None,
    device: str = "auto",
    overwrite: bool = False,
    diameter: float | str | None = None,
):
    """Predict every case of a manifest's ``split`` (``None``: all) into ``out`` and score them.

    ``objects`` and ``diameter`` (2D object models) are passed to
    :func:`medseg.predict.predict_case`.

    Volumes are written as ``<case>.nii.gz``, 2D images as the tile predictor names them;
    the report is ``out/report.csv`` (and ``.md``). A case whose prediction fails is
    recorded in the result's ``failures`` and the others still run.

    Returns:
        The :class:`medseg.evaluation.EvaluationResult`, its failures including the
        prediction failures as ``(case, reason)``.
    """
    from medseg.checkpoint import load_checkpoint
    from medseg.evaluation import evaluate_manifest
    from medseg.predict import predict_case

    table = load_manifest(manifest, data_root=data_root)
    cases = table.cases if split is None else table.split(split)
    ckpt = load_checkpoint(checkpoint)
    net = ckpt.build_model()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    volumes = not ckpt.is_tile_model  # label maps named as the case
    failed = []
    for case in cases:
        try:
            predict_case(
                case.image,
                ckpt,
                folder / f"{case.case}.nii.gz" if volumes else folder,
                model=net,
                device=device,
                overwrite=overwrite,
                objects=objects,
                diameter=diameter,
            )
        except Exception as err:  # one case's failure stops only it
            failed.append((case.case, one_line(err)))
    result = evaluate_manifest(
        manifest,
        folder,
        data_root=data_root,
        split=split,
        output=folder / "report.csv",
        overwrite=overwrite,
    )
    done = {case for case, _ in result.failures}
    result.failures.extend((case, reason) for case, reason in failed if case not in done)
    return result


def run_fold(
    config: PathLike | None,
    overrides: Sequence[str],
    manifest: Path,
    run: Path,
    options: CrossvalOptions,
) -> bool:
    """Train (or resume) one fold in ``run`` and score its held-out cases.

    Returns:
        False if the fold's report existed and was kept, True if it ran.

    Raises:
        ValueError, OSError, ...: the fold failed (bad data, a case that did not predict).
    """
    from medseg.checkpoint import load_checkpoint
    from medseg.config import load_config
    from medseg.train import train

    report = report_folder(run, options.inner_val) / "report.csv"
    if report.is_file() and not options.overwrite:
        return False
    settings = [
        *overrides,
        f"data.manifest={manifest}",  # absolute paths: no data root needed
        "data.train_split=train",
        "data.val_split=val",
        f"out_dir={run}",
    ]
    if options.device != "auto":  # training runs there too
        settings.append(f"device={options.device}")
    config_of = load_config(config, settings)
    if not options.inner_val:
        epochs = config_of.schedule.epochs
        config_of = load_config(config, [*settings, f"schedule.val_every={epochs}"])
    resume = (run / "last.pt").is_file() and not options.overwrite
    # without a checkpoint there is nothing to keep in a fold folder of ours
    best = train(
        config_of, resume=resume, overwrite=not resume and run.exists(), progress=options.progress
    )
    checkpoint = best
    if options.inner_val and options.tune:
        from medseg.tuning import tune_postprocess

        checkpoint = run / "tuned.pt"
        tune_postprocess(
            load_checkpoint(best),
            manifest,
            checkpoint,
            split="val",
            device=options.device,
            crf=options.tune_crf,
            objects_metric=options.objects_metric,
            overwrite=True,
            progress=options.progress,
        )
    result = predict_and_evaluate(
        checkpoint,
        manifest,
        report_folder(run, options.inner_val),
        split="test" if options.inner_val else "val",
        device=options.device,
        overwrite=True,
    )
    if result.failures:
        case, reason = result.failures[0]
        raise ValueError(f"{len(result.failures)} case(s) failed to score, first {case}: {reason}")
    return True


def crossval(
    config: PathLike | None,
    out: PathLike,
    *,
    overrides: Sequence[str] = (),
    data_root: PathLike | None = None,
    options: CrossvalOptions = CrossvalOptions(),
) -> CrossvalResult:
    """Cross-validate a training config: train, choose and score every fold; summarise.

    Args:
        config: The training config (YAML/JSON); ``overrides`` as ``--set key=value``.
        out: Folder for ``fold_i/`` and the summary.
        data_root: Root of the manifest's relative paths (default: the config's
            ``data.data_root``, then ``$MEDSEG_DATA_ROOT``; a JSON datalist's own folder).
        options: Folds and choice, see :class:`CrossvalOptions`.

    Returns:
        The folds, the failed folds with their errors, and the report and summary paths
        (``None`` when no fold has a report).

    Raises:
        ValueError: bad options or config (nothing is written then).
    """
    from medseg.config import load_config
    from medseg.options import OBJECT_METRICS

    resolved = load_config(config, list(overrides))
    if options.tune and not options.inner_val:
        raise ValueError("--tune needs --inner-val (tuning on scored cases is optimistic)")
    if options.inner_val and options.folds < 3:
        raise ValueError(f"--inner-val needs --folds >= 3, got {options.folds}")
    if options.objects_metric not in OBJECT_METRICS:
        raise ValueError(
            f"--objects-metric must be one of {', '.join(OBJECT_METRICS)}, "
            f"got {options.objects_metric!r}"
        )
    source = load_manifest(resolved.data.manifest, data_root=data_root or resolved.data.data_root)
    labelled = [c for c in source.cases if c.label is not None]
    group = options.group_column
    if group and not all(group in c.metadata for c in labelled):
        group = None  # no such column: plain round-robin over case ids
    if options.blocks:
        fold_of = assign_blocks(labelled, options.folds)
    else:
        fold_of = assign_folds(labelled, options.folds, group)

    result = CrossvalResult(fold_of)
    folder = Path(out).resolve()
    for fold in range(options.folds):
        splits = split_of(fold_of, fold, options.folds, options.inner_val)
        for name in ("val", "test"):
            chosen = sorted(c for c, s in splits.items() if s == name)
            if chosen:
                logger.info("fold %d: %s %s", fold, name, ", ".join(chosen))
        try:
            manifest = write_fold_manifest(source, splits, folder / f"fold_{fold}" / "manifest.csv")
            ran = run_fold(config, overrides, manifest, folder / f"fold_{fold}" / "run", options)
        except Exception as err:  # one fold's failure, whatever it is, stops only it
            reason = one_line(err)
            result.failures.append((fold, reason))
            logger.error("fold %d failed: %s; the others still run", fold, reason)
            continue
        if not ran:
            result.kept.append(fold)
            logger.info("fold %d: kept (its report exists)", fold)
    if any((report_folder(folder / f"fold_{f}" / "run", options.inner_val) / "report.csv").is_file()
           for f in range(options.folds)):  # fmt: skip
        result.report, result.summary = summarize(
            folder, fold_of, options.folds, inner_val=options.inner_val
        )
    return result


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
