"""Overlays of label maps on images, for people to look at (PNG via matplotlib).

:func:`overlay_rgb` is pure (arrays in, an RGB array out); :func:`save_overlay_png`
draws the three orthogonal middle slices of a volume with its labels and writes the
figure atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.io import atomic_output
from medseg.typing import PathLike

# label -> RGB in [0, 1]; CSF blue, GM orange, WM light grey-green, then a cycle
DEFAULT_COLORS = {
    1: (0.20, 0.45, 0.95),
    2: (0.95, 0.55, 0.10),
    3: (0.55, 0.85, 0.55),
    4: (0.85, 0.20, 0.55),
    5: (0.60, 0.30, 0.90),
    6: (0.10, 0.80, 0.80),
}


def label_colour(label: int) -> tuple[float, float, float]:
    """The RGB colour (floats in [0, 1]) that overlays and legends give a label value:
    the default tissue colours, else a colour drawn once from the value as seed."""
    if label in DEFAULT_COLORS:
        return DEFAULT_COLORS[label]
    rng = np.random.default_rng(label)  # stable colour per label value
    r, g, b = rng.uniform(0.2, 1.0, 3)
    return float(r), float(g), float(b)


def overlay_rgb(image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """Blend label colours over a grey image.

    Args:
        image: Intensities, float ``(Y, X)``; scaled to [0, 1] by its 1st/99th percentiles.
        labels: Integer ``(Y, X)``; 0 is left uncoloured.
        alpha: Opacity of the label colours.

    Returns:
        uint8 ``(Y, X, 3)`` RGB.

    Example:
        >>> rgb = overlay_rgb(np.ones((2, 3)), np.array([[0, 1, 2], [0, 0, 3]]))
        >>> rgb.shape, rgb.dtype.name, rgb[0, 0].tolist()
        ((2, 3, 3), 'uint8', [255, 255, 255])
    """
    if image.shape != labels.shape or image.ndim != 2:
        raise ValueError(
            f"image and labels must be 2D arrays of one shape, got {image.shape} and {labels.shape}"
        )
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    grey = np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.ones_like(image, float)
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float64)
    for value in np.unique(labels):
        if value == 0:
            continue
        mask = labels == value
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.array(label_colour(int(value)))
    return np.round(rgb * 255).astype(np.uint8)


def overlay_figure(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    label_names: dict[int, str] | None = None,
    title: str = "",
    mask: np.ndarray | None = None,
    cut: Sequence[int | None] | None = None,
) -> Any:
    """Three orthogonal slices of a volume with its label overlay, as a matplotlib Figure.

    Args:
        image: Intensities, float ``(Z, Y, X)`` (or ``(1, Z, Y, X)``).
        labels: Integer ``(Z, Y, X)``.
        spacing_mm: ``(z, y, x)``, for the aspect ratio of each view.
        label_names: Legend entries.
        title: Figure title.
        mask: bool ``(Z, Y, X)`` (a brain mask) or None. Its outline is drawn in yellow,
            and the views cut through its centre instead of the volume's middle.
        cut: ``(z, y, x)`` voxel indices of the three slices; None entries (or None) take
            the mask's centre or the middle.

    Returns:
        A ``matplotlib.figure.Figure`` (made without pyplot: it shows in a notebook and
        leaves the backend alone).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if image.ndim == 4:
        image = image[0]
    if image.shape != labels.shape or image.ndim != 3:
        raise ValueError(
            f"image and labels must be (Z, Y, X) of one shape, got {image.shape} and {labels.shape}"
        )
    sz, sy, sx = (float(s) for s in spacing_mm)
    if mask is not None and mask.shape != labels.shape:
        raise ValueError(f"mask must have the labels' shape {labels.shape}, got {mask.shape}")
    if mask is not None and mask.any():
        centre = [int(round(c)) for c in np.argwhere(mask).mean(axis=0)]
        where = "brain centre"
    else:
        centre = [n // 2 for n in labels.shape]
        where = "middle"
    given = list(cut) if cut is not None else [None, None, None]
    if len(given) != 3:
        raise ValueError(f"cut must be (z, y, x) indices, got {cut!r}")
    for axis, (index, size) in enumerate(zip(given, labels.shape, strict=True)):
        if index is not None and not 0 <= int(index) < size:
            raise ValueError(f"cut[{axis}] must be in 0..{size - 1}, got {index}")
    cz, cy, cx = (c if g is None else int(g) for c, g in zip(centre, given, strict=True))
    names_of = [where if g is None else "chosen" for g in given]
    cuts: list[tuple[tuple[Any, Any, Any], float, str]] = [
        ((cz, slice(None), slice(None)), sy / sx, f"z = {cz} ({names_of[0]})"),
        ((slice(None), cy, slice(None)), sz / sx, f"y = {cy} ({names_of[1]})"),
        ((slice(None), slice(None), cx), sz / sy, f"x = {cx} ({names_of[2]})"),
    ]
    fig = Figure(figsize=(12, 4.6))
    axes = fig.subplots(1, 3)
    for ax, (where_cut, aspect, name) in zip(axes, cuts, strict=True):
        ax.imshow(
            overlay_rgb(image[where_cut], labels[where_cut]), origin="lower", aspect=aspect,
            interpolation="nearest",
        )  # fmt: skip
        if mask is not None and mask[where_cut].any():
            ax.contour(
                mask[where_cut].astype(np.float32), levels=[0.5], colors="yellow", linewidths=0.8
            )
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    present = [int(v) for v in np.unique(labels) if v != 0]
    names = label_names or {}
    handles = [Patch(color=label_colour(v), label=names.get(v, str(v))) for v in present]
    if mask is not None:
        handles.append(Patch(facecolor="none", edgecolor="yellow", label="brain mask"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def save_overlay_png(
    path: PathLike,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    label_names: dict[int, str] | None = None,
    title: str = "",
    overwrite: bool = False,
    mask: np.ndarray | None = None,
) -> Path:
    """Write :func:`overlay_figure` (the middle slice along each axis, or through the mask's
    centre, with the label overlay) as a PNG, atomically.

    Args:
        path: Output ``.png``.
        image, labels, spacing_mm, label_names, title, mask: As :func:`overlay_figure`.
        overwrite: Replace an existing file.
    """
    fig = overlay_figure(
        image, labels, spacing_mm=spacing_mm, label_names=label_names, title=title, mask=mask
    )
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return Path(path)


def _object_colours(num: int) -> np.ndarray:
    """A fixed, well-spread colour per object id (id 0 unused): float ``(num + 1, 3)``."""
    rng = np.random.default_rng(0)  # the same colours in every run
    hues = (np.arange(num + 1) * 0.618033988749895) % 1.0  # golden-ratio hue steps
    sat = rng.uniform(0.65, 1.0, num + 1)
    val = rng.uniform(0.8, 1.0, num + 1)
    i = np.floor(hues * 6).astype(int) % 6
    f = hues * 6 - np.floor(hues * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    table = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)]
    rgb = np.zeros((num + 1, 3))
    for k, (r, g, b) in enumerate(table):
        sel = i == k
        rgb[sel] = np.stack([r[sel], g[sel], b[sel]], axis=1)
    return rgb


def instance_overlay_rgb(
    image: np.ndarray, instances: np.ndarray, *, alpha: float = 0.35
) -> np.ndarray:
    """Objects over a microscopy image: tinted interiors and solid outlines, one colour each.

    Args:
        image: Intensities, float ``(C, Y, X)`` with C = 1 (grey) or 3 (RGB); each channel
            scaled to [0, 1] by its 1st/99th percentiles.
        instances: Object ids, integer ``(Y, X)``, 0 = background.
        alpha: Opacity of the interior tint (outlines are opaque).

    Returns:
        uint8 ``(Y, X, 3)`` RGB.

    Example:
        >>> ids = np.zeros((4, 5), int); ids[1:3, 1:4] = 1
        >>> rgb = instance_overlay_rgb(np.ones((1, 4, 5)), ids)
        >>> rgb.shape, rgb[0, 0].tolist()
        ((4, 5, 3), [255, 255, 255])
    """
    if image.ndim != 3 or image.shape[0] not in (1, 3) or image.shape[1:] != instances.shape:
        raise ValueError(
            f"image must be (C, Y, X) with C 1 or 3 and instances (Y, X) of the same size, got "
            f"{image.shape} and {instances.shape}"
        )
    planes = []
    for channel in image.astype(np.float64):
        lo, hi = np.percentile(channel, [1, 99])
        planes.append(
            np.clip((channel - lo) / (hi - lo), 0, 1) if hi > lo else np.ones_like(channel)
        )
    rgb = np.stack(planes * (3 if len(planes) == 1 else 1), axis=-1)
    ids = np.asarray(instances)
    if ids.max(initial=0) > 0:
        _, dense = np.unique(ids, return_inverse=True)  # 0 stays 0 (smallest id)
        dense = dense.reshape(ids.shape)
        colours = _object_colours(int(dense.max()))[dense]
        inside = ids > 0
        edge = np.zeros_like(inside)
        edge[:-1] |= ids[:-1] != ids[1:]
        edge[1:] |= ids[1:] != ids[:-1]
        edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
        edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
        edge &= inside
        rgb[inside] = (1 - alpha) * rgb[inside] + alpha * colours[inside]
        rgb[edge] = colours[edge]
    return np.round(rgb * 255).astype(np.uint8)
