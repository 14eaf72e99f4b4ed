"""Cohort reports: tissue volumes per case and one self-contained HTML report per cohort.

Three layers, as elsewhere in medseg; the first two live in their own modules and are
re-exported here, so ``from medseg.cohort import ...`` keeps working:

* :func:`tissue_statistics` is pure: one label map (and optionally its confidence map) in,
  tissue volumes in mL, brain volume, intracranial volume, grey-matter fraction and mean
  vote agreement out; :func:`tiv_statistics` adds the TIV and each tissue's fraction of it
  from a brain mask. The batch engine stores these as columns of its cases frame. They
  live in :mod:`medseg.tissue_stats`.
* :func:`order_cases`, :func:`case_table`, :func:`group_summary` and :func:`failed_table`
  are pure too: a cases DataFrame in, a table DataFrame out. They, and the formatting of
  tables as Markdown and HTML, live in :mod:`medseg._cohort_tables`.
* :func:`write_cohort_report` (this module) renders those tables, matplotlib plots (Dice
  box plots per group, volumes per group and against numeric metadata) and overlay
  thumbnails into ``cases.csv``, ``report.md`` and a self-contained ``report.html``
  (inline CSS, PNGs as base64 data URIs, no network access), all written atomically.

Definitions (also printed in the report):

* ``<name>_ml``: voxels of that label x voxel volume (prod(spacing_mm) mm^3) / 1000.
* ``brain_ml``: GM + WM (total brain volume without CSF); ``icv_ml``: every non-background
  label (intracranial volume as segmented); ``gm_fraction``: GM / (GM + WM + CSF).
* ``tiv_ml``: voxels of the brain mask x voxel volume / 1000 (total intracranial volume
  when the skull was stripped); ``<name>_fraction_of_tiv``: ``<name>_ml / tiv_ml``. The
  report shows these columns when the cases frame has ``tiv_ml``.
* ``mean_agreement``: mean of the confidence map (vote agreement, or the winner's
  probability with ``--fast``) over non-background voxels.
* Quality control: a case is flagged when its mean agreement is below ``qc_threshold``
  (default :data:`QC_THRESHOLD` = 0.9, a fixed value rather than one relative to the
  cohort, so a flag means the same thing in a cohort of 3 and of 300; the shipped brain
  model gives about 0.92 on IBSR-18 with ``--fast``).
* Order, worst first: failed cases, then by ``weighted_dice`` ascending, then by
  ``mean_agreement`` ascending (cases without a reference come after those with one),
  then by case name.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medseg._cohort_tables import (  # noqa: F401  (STATUSES, order_cases re-exported)
    QC_THRESHOLD,
    STATUSES,
    _as_numbers,
    _check_cases,
    _check_group_by,
    _check_threshold,
    _dice_columns,
    _formatted_case_table,
    _formatted_summary,
    _group_values,
    _header,
    _html_table,
    _markdown_cell,
    _markdown_table,
    _metric_columns,
    _sort_worst_first,
    case_table,
    failed_table,
    group_summary,
    order_cases,
)
from medseg.io import atomic_output, axial_axis, check_output_path, read_image, read_label
from medseg.tissue_stats import (  # noqa: F401  (re-exported: their home is tissue_stats)
    SUMMARY_KEYS,
    TIV_KEY,
    statistic_keys,
    tissue_statistics,
    tiv_keys,
    tiv_statistics,
)
from medseg.typing import PathLike
from medseg.visualize import label_colour, overlay_rgb

NUM_THUMBNAILS = 3
"""Default ``num_thumbnails``: overlay thumbnails of this many worst and best cases each."""

REPORT_FILES = ("cases.csv", "report.md", "report.html")
"""The files :func:`write_cohort_report` writes into its output folder, in order."""


# --------------------------------------------------------------------------------------
# Plots and thumbnails (matplotlib's object API: no pyplot state, thread-safe, Agg)


def _png_bytes(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _box_panel(ax: Any, groups: list[str], series: list[np.ndarray], ylabel: str) -> None:
    """Box per group with the cases drawn over it (fixed horizontal offsets, no RNG)."""
    positions = [i + 1 for i, s in enumerate(series) if s.size]
    data = [s for s in series if s.size]
    ax.boxplot(data, positions=positions, widths=0.5, showfliers=False)
    for pos, values in zip(positions, data, strict=True):
        offsets = np.linspace(-0.12, 0.12, values.size) if values.size > 1 else np.zeros(1)
        ax.plot(pos + offsets, values, "o", ms=4, alpha=0.7, color="tab:blue")
    crowded = len(groups) > 3 or sum(len(g) for g in groups) > 18
    ax.set_xticks(
        range(1, len(groups) + 1),
        groups,
        rotation=30 if crowded else 0,
        ha="right" if crowded else "center",
        fontsize=8,
    )
    ax.set_xlim(0.4, len(groups) + 0.6)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def _panel_grid(num: int, width: float, height: float) -> tuple[Any, list[Any]]:
    ncols = min(num, 4)
    nrows = math.ceil(num / ncols)
    fig = _new_figure(width * ncols, height * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    for ax in axes[num:]:
        ax.set_visible(False)
    return fig, axes[:num]


def _per_group_plot(
    table: pd.DataFrame, columns: list[str], groups: pd.Series, order: list[str], title: str
) -> bytes | None:
    """Box plots of ``columns`` per group, one panel per column with data; None if none."""
    shown = [c for c in columns if table[c].notna().any()]
    if not shown:
        return None
    fig, axes = _panel_grid(len(shown), 3.2, 3.0)
    for ax, column in zip(axes, shown, strict=True):
        series = [table.loc[groups == g, column].dropna().to_numpy(np.float64) for g in order]
        _box_panel(ax, order, series, _header(column))
        ax.set_title(_header(column), fontsize=10)
    fig.suptitle(title, fontsize=11)
    return _png_bytes(fig)


def _scatter_plot(
    table: pd.DataFrame, x_columns: list[str], groups: pd.Series, order: list[str]
) -> bytes | None:
    """brain_ml and gm_fraction against numeric metadata, coloured by group."""
    pairs = [
        (x, y)
        for x in x_columns
        for y in ("brain_ml", "gm_fraction")
        if (table[x].notna() & table[y].notna()).sum() >= 2
    ]
    if not pairs:
        return None
    fig, axes = _panel_grid(len(pairs), 3.4, 3.0)
    for ax, (x, y) in zip(axes, pairs, strict=True):
        for k, group in enumerate(order):
            part = table[groups == group]
            ax.plot(part[x], part[y], "o", ms=5, alpha=0.8, color=f"C{k % 10}", label=group)
        ax.set_xlabel(x)
        ax.set_ylabel(_header(y))
        ax.grid(alpha=0.3)
    if len(order) > 1:
        axes[0].legend(fontsize=8)
    fig.suptitle("Volumes against metadata", fontsize=11)
    return _png_bytes(fig)


def _numeric_metadata(
    frame: pd.DataFrame, tissues: Mapping[int, str], group_by: str | None
) -> pd.DataFrame:
    """Up to two metadata columns whose values are all numbers (or missing), as float64."""
    known = {"case", "status", "error", "stage", "image", "prediction", "label", "seconds"}
    known |= set(_metric_columns(frame, tissues)) | {"qc_flag"}
    out = {}
    for column in frame.columns:
        if column in known or column == group_by or not isinstance(column, str):
            continue
        numbers = _as_numbers(frame[column])
        if numbers is not None and numbers.dropna().nunique() >= 2:
            out[column] = numbers
        if len(out) == 2:  # two metadata axes keep the report short
            break
    return pd.DataFrame(out, index=frame.index)


def _axial_slices(row: Mapping[str, Any]) -> tuple[list[np.ndarray], list[str], float]:
    """Mid axial slices of image, prediction and (if any) reference; and the aspect ratio."""
    image = read_image(row["image"])
    pred = read_label(row["prediction"])
    volumes = [pred]
    if row["label"]:
        volumes.append(read_label(row["label"]))
    for volume in volumes:
        if volume.spatial_shape != image.spatial_shape:
            raise ValueError(
                f"label map {str(volume.path)!r} must have the image's shape "
                f"{image.spatial_shape}, got {volume.spatial_shape}"
            )
    axis = axial_axis(pred.geometry)
    # middle of the predicted tissue along the axial axis (the array middle if none)
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(np.any(pred.array != 0, axis=other))
    index = int((present[0] + present[-1]) // 2) if present.size else pred.spatial_shape[axis] // 2
    grey = np.take(image.array[0], index, axis=axis).astype(np.float64)
    slices = [grey] + [np.take(v.array, index, axis=axis) for v in volumes]
    # crop to the labelled tissue of this slice plus a margin, so small brains stay legible
    tissue = np.any(np.stack(slices[1:]) != 0, axis=0)
    if tissue.any():
        box = []
        for ax in (0, 1):
            hit = np.flatnonzero(tissue.any(axis=1 - ax))
            margin = 2 + (hit[-1] - hit[0]) // 12
            box.append(slice(max(hit[0] - margin, 0), hit[-1] + margin + 1))
        slices = [s[box[0], box[1]] for s in slices]
    spacing = pred.geometry.spacing_mm
    aspect = spacing[other[0]] / spacing[other[1]]
    names = ["prediction", "reference"][: len(volumes)]
    return slices, names, aspect


def _thumbnail(row: Mapping[str, Any], tissues: Mapping[int, str]) -> bytes:
    from matplotlib.patches import Patch

    slices, names, aspect = _axial_slices(row)
    grey, maps = slices[0], slices[1:]
    fig = _new_figure(2.6 * len(maps), 3.0)
    axes = np.atleast_1d(fig.subplots(1, len(maps))).ravel()
    for ax, labels, name in zip(axes, maps, names, strict=True):
        ax.imshow(overlay_rgb(grey, labels), origin="lower", aspect=aspect)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    present = sorted({int(v) for m in maps for v in np.unique(m) if v != 0})
    handles = [Patch(color=label_colour(v), label=tissues.get(v, str(v))) for v in present]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    return _png_bytes(fig)


def _thumbnail_cases(ordered_ok: pd.DataFrame, num: int) -> tuple[list[int], list[int]]:
    """Row positions of the worst ``num`` and (other) best ``num`` cases with predictions."""
    eligible = [i for i, p in enumerate(ordered_ok["prediction"]) if p]
    worst = eligible[:num]
    best = [i for i in reversed(eligible[num:])][:num]
    return worst, best


# --------------------------------------------------------------------------------------
# Writing

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px;
       color: #1d2329; background: #fff; max-width: 1400px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #d0d7de; }
p.note, ul.note { color: #57606a; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f3f5f7; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #f8f9fa; }
tr.flagged td { background: #fff1c2; }
table.failed th { background: #fbe2e2; }
table.failed td, table.failed th { text-align: left; }
td { white-space: nowrap; }
td pre { margin: 0; white-space: pre-wrap; font-size: 0.95em; max-width: 900px; }
figure { display: inline-block; margin: 6px 12px 12px 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #e1e4e8; }
figcaption { font-size: 0.8em; color: #57606a; }
div.missing { display: inline-block; padding: 12px; border: 1px dashed #c00; color: #900; }
"""

# Counts the <img> elements that decoded (naturalWidth > 0) once the page has loaded, so a
# headless browser can check that every plot and thumbnail rendered.
_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
  }
  document.body.setAttribute("data-images-total", String(images.length));
  document.body.setAttribute("data-images-loaded", String(loaded));
});
"""


def _img(png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'
    )


def _case_caption(row: Mapping[str, Any]) -> str:
    parts = [str(row["case"])]
    for column, name in (("weighted_dice", "weighted Dice"), ("mean_agreement", "agreement")):
        value = row.get(column, math.nan)
        if isinstance(value, (float, np.floating)) and not math.isnan(value):
            parts.append(f"{name} {value:.3f}")
    return " \u00b7 ".join(parts)


def _thumbnail_html(row: Mapping[str, Any], tissues: Mapping[int, str]) -> str:
    caption = _case_caption(row)
    try:
        png = _thumbnail(row, tissues)
    except (OSError, ValueError) as err:
        warnings.warn(f"thumbnail of case {row['case']!r} skipped: {err}", stacklevel=3)
        return f'<div class="missing">{html.escape(caption)}: thumbnail unavailable: ' + (
            f"{html.escape(str(err))}</div>"
        )
    return _img(png, f"overlay of case {row['case']}", caption)


def _definitions(qc_threshold: float, *, tiv: bool = False) -> list[str]:
    volumes = (
        "Volumes: voxels \u00d7 voxel volume / 1000 (mL). Brain = GM + WM; ICV = every "
        "labelled tissue; GM fraction = GM / (GM + WM + CSF)."
    )
    if tiv:
        volumes += (
            " TIV = volume of the brain mask (the intracranial volume when the skull was "
            "stripped); <tissue> / TIV = the tissue's volume divided by it."
        )
    return [
        volumes,
        "Mean agreement: mean confidence (vote agreement, or the winning probability with "
        f"--fast) over labelled voxels. QC flags cases with mean agreement below "
        f"{qc_threshold:g}.",
        "Cases are ordered worst first: by weighted Dice ascending, then by mean agreement "
        "ascending (cases without a reference label after those with one).",
    ]


def write_cohort_report(
    cases: pd.DataFrame,
    out_dir: PathLike,
    *,
    label_names: Mapping[int, str],
    group_by: str | None = None,
    overwrite: bool = False,
    title: str | None = None,
    qc_threshold: float = QC_THRESHOLD,
    num_thumbnails: int = NUM_THUMBNAILS,
) -> list[Path]:
    """Write ``cases.csv``, ``report.md`` and a self-contained ``report.html`` for a cohort.

    The HTML report shows, in order: the failed cases with stage and error; per-tissue
    Dice box plots per group (when Dice columns have values), brain volume and GM fraction
    per group (with ``group_by``) and against numeric metadata columns (at most two, e.g.
    ``age``; numbers stored as text count); mean ± SD per group; the per-case table worst
    first with a QC flag (mean agreement below ``qc_threshold``); and mid-axial overlay
    thumbnails of the worst
    and best ``num_thumbnails`` cases (prediction, and the reference beside it when a label
    file is given), read from the case files. CSS, plots and thumbnails are inline (PNG
    data URIs); nothing is loaded from the network. ``report.md`` has the same tables;
    ``cases.csv`` is ``cases`` worst first (:func:`order_cases`) with a ``qc_flag`` column.

    A thumbnail whose files cannot be read is replaced by a note and a warning.

    Args:
        cases: One row per case: ``case`` (str), ``status`` ("ok" / "failed"), ``error``
            (str, "" when ok), ``stage`` ("predict", "evaluate" or ""), ``image``,
            ``prediction`` and ``label`` (absolute paths, or "" when absent), ``seconds``
            (float), any metadata columns (e.g. ``split``, ``sex``, ``age``), the
            :func:`tissue_statistics` keys, optionally the :func:`tiv_keys` (shown when
            ``tiv_ml`` is a column) and, for cases with a reference,
            ``dice_<name>`` per tissue and ``weighted_dice`` (NaN where unknown).
        out_dir: Existing folder that receives the three files.
        label_names: Label value -> tissue name, e.g. ``{1: "CSF", 2: "GM", 3: "WM"}``.
        group_by: A column of ``cases`` whose values group the plots and summaries.
        overwrite: Replace existing report files instead of raising.
        title: Heading of the report; default "Cohort report".
        qc_threshold: Mean agreement below which a case is flagged, in [0, 1].
        num_thumbnails: Worst and best cases shown as thumbnails (each), >= 0.

    Returns:
        The paths written: ``out_dir/cases.csv``, ``out_dir/report.md``,
        ``out_dir/report.html``.

    Raises:
        FileExistsError: if a report file exists and ``overwrite`` is False (nothing is
            written then).
        FileNotFoundError: if ``out_dir`` does not exist.
        TypeError / ValueError: for a bad cases frame (see :func:`order_cases`), an unknown
            ``group_by`` column, or bad ``label_names``, ``qc_threshold``,
            ``num_thumbnails`` or ``title``.
    """
    frame, tissues = _check_cases(cases, label_names)
    _check_group_by(frame, group_by)
    threshold = _check_threshold(qc_threshold)
    if (
        isinstance(num_thumbnails, (bool, np.bool_))
        or not isinstance(num_thumbnails, (int, np.integer))
        or num_thumbnails < 0
    ):
        raise ValueError(f"num_thumbnails must be an int >= 0, got {num_thumbnails!r}")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")
    heading = title or "Cohort report"
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(
            f"out_dir must be an existing folder, got {str(out)!r}; create it first"
        )
    targets = [out / name for name in REPORT_FILES]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"report files must not exist, got existing {existing}; "
            "pass --overwrite (overwrite=True) to replace them"
        )
    for target in targets:
        check_output_path(target, overwrite=overwrite)

    ordered = _sort_worst_first(frame)
    ok_rows = ordered[ordered["status"] == "ok"].reset_index(drop=True)
    table = case_table(frame, label_names=tissues, group_by=group_by, qc_threshold=threshold)
    summary = group_summary(frame, label_names=tissues, group_by=group_by, qc_threshold=threshold)
    failed = failed_table(frame, label_names=tissues)
    groups, order = _group_values(ok_rows, group_by)
    metrics = ok_rows.reindex(columns=_metric_columns(ok_rows, tissues))

    plots: list[tuple[str, bytes]] = []
    dice_columns = _dice_columns(ok_rows, tissues)
    if "weighted_dice" in ok_rows.columns:
        dice_columns.append("weighted_dice")
    dice_png = _per_group_plot(metrics, dice_columns, groups, order, "Dice per tissue")
    if dice_png is not None:
        plots.append(("Dice per tissue and group", dice_png))
    if group_by is not None:
        volume_png = _per_group_plot(
            metrics, ["brain_ml", "gm_fraction"], groups, order, f"Volumes by {group_by}"
        )
        if volume_png is not None:
            plots.append((f"brain volume and GM fraction by {group_by}", volume_png))
    metadata = _numeric_metadata(ok_rows, tissues, group_by)
    if not metadata.empty:
        with_meta = pd.concat([metrics, metadata], axis=1)
        scatter_png = _scatter_plot(with_meta, list(metadata.columns), groups, order)
        if scatter_png is not None:
            plots.append(("volumes against metadata", scatter_png))

    worst, best = _thumbnail_cases(ok_rows, int(num_thumbnails))
    records = ok_rows.to_dict("records")
    thumbs_worst = [_thumbnail_html(records[i], tissues) for i in worst]
    thumbs_best = [_thumbnail_html(records[i], tissues) for i in best]

    case_headers, case_cells = _formatted_case_table(table)
    summary_headers, summary_cells = _formatted_summary(summary, group_by)
    failed_headers = ["case", "stage", "error"]
    failed_cells = [[str(v) for v in row] for row in failed.itertuples(index=False)]
    num_flagged = int(table["qc_flag"].sum())
    overview = (
        f"{len(frame)} cases: {len(ok_rows)} ok, {len(failed)} failed; {num_flagged} flagged "
        f"for low mean agreement (< {threshold:g})."
    )

    definitions = _definitions(threshold, tiv=TIV_KEY in frame.columns)

    # ---- HTML
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(heading)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head><body>",
        f"<h1>{html.escape(heading)}</h1>",
        f"<p>{html.escape(overview)}</p>",
        '<ul class="note">' + "".join(f"<li>{html.escape(d)}</li>" for d in definitions) + "</ul>",
    ]
    if len(failed):
        parts += [
            f"<h2>Failed cases ({len(failed)})</h2>",
            _html_table(failed_headers, failed_cells, pre_columns=(2,), css_class="failed"),
        ]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [_img(png, alt, alt) for alt, png in plots]
    parts += [
        f"<h2>Summary per {html.escape(group_by) if group_by else 'cohort'}: mean \u00b1 SD "
        "over successful cases</h2>",
        _html_table(summary_headers, summary_cells),
        f"<h2>Cases, worst first ({len(ok_rows)})</h2>",
        _html_table(
            case_headers,
            case_cells,
            row_classes=["flagged" if f else "" for f in table["qc_flag"]],
        ),
    ]
    if thumbs_worst or thumbs_best:
        parts.append("<h2>Overlays: mid axial slice</h2>")
        if thumbs_worst:
            parts += ["<h3>Worst cases</h3>", *thumbs_worst]
        if thumbs_best:
            parts += ["<h3>Best cases</h3>", *thumbs_best]
    parts.append("</body></html>\n")
    page = "\n".join(parts)

    # ---- Markdown
    md = [f"# {_markdown_cell(heading)}", "", overview, ""]
    md += [f"- {d}" for d in definitions] + [""]
    if len(failed):
        md += [
            f"## Failed cases ({len(failed)})",
            "",
            _markdown_table(failed_headers, failed_cells),
        ]
        md.append("")
    md += [
        f"## Summary per {_markdown_cell(group_by) if group_by else 'cohort'}: mean \u00b1 SD "
        "over successful cases",
        "",
        _markdown_table(summary_headers, summary_cells),
        "",
        f"## Cases, worst first ({len(ok_rows)})",
        "",
        _markdown_table(case_headers, case_cells),
        "",
        "Plots and overlay thumbnails are in report.html.",
        "",
    ]

    # ---- cases.csv: every case, worst first, with the QC flag
    csv_frame = ordered.copy()
    agreement = ordered.get("mean_agreement", pd.Series(np.nan, index=ordered.index))
    csv_frame["qc_flag"] = (
        (ordered["status"] == "ok") & (agreement.astype(np.float64) < threshold)
    ).to_numpy(dtype=bool)

    with contextlib.ExitStack() as stack:  # renames happen only when every write succeeded
        tmp_csv, tmp_md, tmp_html = (
            stack.enter_context(atomic_output(t, overwrite=overwrite)) for t in targets
        )
        csv_frame.to_csv(tmp_csv, index=False)
        tmp_md.write_text("\n".join(md), encoding="utf-8")
        tmp_html.write_text(page, encoding="utf-8")
    return targets
