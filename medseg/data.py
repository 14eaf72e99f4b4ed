"""Training data: whole volumes on the device, and 2.5D patches sampled from them.

Volumes are read once, normalised (:mod:`medseg.normalize`), turned so that their
slice axis comes first, padded in-plane by a margin (mirror) and moved to the
training device. Patches are then drawn by index arithmetic and one gather per batch
(:func:`medseg.patches.extract_patches_at`) on that device, so data loading never
waits on the CPU or on files.

Sampling follows the U-SegNet paper (Kumar et al. 2018): 2.5D patches (a window on
one slice plus its neighbours as channels), skipping all-background windows
(``skip_background``), optionally class-balanced (each draw first picks a foreground
class uniformly, then a window containing it), which helps rare classes such as IBSR's
CSF. Each patch comes with an in-plane ``margin`` of context so that elastic
deformation can pull real image content into the patch; the margin is cropped after
augmentation (:func:`crop_margin`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medseg.io import Geometry, axial_axis, check_same_grid, read_image, read_label
from medseg.normalize import normalize_intensity
from medseg.patches import PatchSpec, extract_patches_at


@dataclass
class TrainingVolume:
    """One case prepared for patch sampling.

    Attributes:
        case: Case id.
        image: Normalised intensities, float32 ``(C, Z, Y + 2m, X + 2m)`` on the device,
            slice axis first, in-plane margin ``m`` mirrored.
        label: uint8 ``(Z, Y + 2m, X + 2m)``, same layout.
        starts: int64 ``(M, 3)`` candidate output-window starts ``(z, y, x)`` in the
            unpadded volume (a padded-volume window with the margin starts there too).
        class_starts: Per foreground class, the candidate starts whose window holds it.
        slice_axis: The original array axis used as the slice axis.
        geometry: The source geometry.
        shape: Unpadded spatial shape, slice axis first.
    """

    case: str
    image: torch.Tensor
    label: torch.Tensor
    starts: torch.Tensor
    class_starts: list[torch.Tensor]
    slice_axis: int
    geometry: Geometry
    shape: tuple[int, int, int]


def resolve_slice_axis(slice_axis: str | int, geometry: Geometry) -> int:
    """``"axial"`` -> the array axis closest to superior-inferior; ints pass through."""
    if slice_axis == "axial":
        return axial_axis(geometry)
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 'axial', 0, 1 or 2, got {slice_axis!r}")
    return int(slice_axis)


def window_starts(
    mask: np.ndarray, window: tuple[int, int], *, classes: Sequence[int] | None = None
) -> np.ndarray:
    """Starts ``(z, y, x)`` of every in-plane window that contains a True voxel.

    Args:
        mask: bool or label ``(Z, Y, X)``; with ``classes`` None, non-zero counts.
        window: ``(py, px)``.
        classes: If given, windows containing any of these label values.

    Returns:
        int64 ``(M, 3)``, sorted by z, then y, then x.

    Example:
        >>> m = np.zeros((1, 4, 4), bool); m[0, 3, 3] = True
        >>> window_starts(m, (2, 2)).tolist()
        [[0, 2, 2]]
    """
    fg = np.isin(mask, list(classes)) if classes is not None else mask != 0
    py, px = window
    # summed-area table per slice: window sum = S[y+py, x+px] - S[y, x+px] - S[y+py, x] + S[y, x]
    s = np.zeros((fg.shape[0], fg.shape[1] + 1, fg.shape[2] + 1), dtype=np.int32)
    s[:, 1:, 1:] = fg.cumsum(1, dtype=np.int32).cumsum(2, dtype=np.int32)
    sums = s[:, py:, px:] - s[:, :-py, px:] - s[:, py:, :-px] + s[:, :-py, :-px]
    return np.argwhere(sums > 0).astype(np.int64)


def load_training_volume(
    image_path,
    label_path,
    *,
    case: str,
    spec: PatchSpec,
    margin: int,
    num_classes: int,
    normalization: str = "zscore",
    percentiles: tuple[float, float] = (1.0, 99.0),
    slice_axis: str | int = "axial",
    skip_background: bool = True,
    device: str | torch.device = "cpu",
) -> TrainingVolume:
    """Read, check, normalise and lay out one case for sampling (module docstring).

    Raises:
        ValueError: image/label grids differ, the image is 2D, the volume is smaller
            than a patch, or the label holds values >= ``num_classes``.
    """
    image = read_image(image_path, allow_2d=False)
    label = read_label(label_path, allow_2d=False)
    check_same_grid(image, label)
    if int(label.array.max()) >= num_classes:
        raise ValueError(
            f"label values must be < num_classes={num_classes}, got {int(label.array.max())} "
            f"(in {label_path})"
        )
    axis = resolve_slice_axis(slice_axis, image.geometry)
    normed, _ = normalize_intensity(image.array, method=normalization, percentiles=percentiles)
    img = np.moveaxis(normed, 1 + axis, 1)
    lab = np.moveaxis(label.array, axis, 0)
    shape = tuple(int(s) for s in lab.shape)
    py, px = spec.patch_size[1:]
    if shape[1] < py or shape[2] < px:
        raise ValueError(
            f"patch size ({py}, {px}) must fit the slices of {case!r}, got slices of "
            f"{shape[1:]} (slice axis {axis}; in {image_path})"
        )
    window = (py, px)
    starts = (
        window_starts(lab, window)
        if skip_background
        else np.argwhere(np.ones((shape[0], shape[1] - py + 1, shape[2] - px + 1), bool))
    )
    class_starts = [window_starts(lab, window, classes=[c]) for c in range(1, num_classes)]
    pad = ((0, 0), (0, 0), (margin, margin), (margin, margin))
    img = np.pad(img, pad, mode="reflect" if margin else "constant")
    lab = np.pad(lab, pad[1:], mode="reflect" if margin else "constant")
    dev = torch.device(device)
    return TrainingVolume(
        case=case,
        image=torch.from_numpy(np.ascontiguousarray(img)).to(dev),
        label=torch.from_numpy(np.ascontiguousarray(lab)).to(dev),
        starts=torch.from_numpy(starts).to(dev),
        class_starts=[torch.from_numpy(s).to(dev) for s in class_starts],
        slice_axis=axis,
        geometry=image.geometry,
        shape=shape,  # type: ignore[arg-type]
    )


class PatchSampler:
    """Draws random 2.5D training patches (with margin) from volumes on one device.

    Args:
        volumes: Prepared volumes (all on the same device).
        spec: The patch spec (output window ``(1, py, px)``, ``num_slices`` inputs).
        margin: In-plane context around each window (as the volumes were padded).
        class_balanced: Pick a foreground class uniformly first (module docstring).
        generator: torch generator (on the volumes' device) for reproducible draws.
    """

    def __init__(
        self,
        volumes: Sequence[TrainingVolume],
        spec: PatchSpec,
        *,
        margin: int,
        class_balanced: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if not volumes:
            raise ValueError("volumes must hold at least one training volume, got none")
        self.volumes = list(volumes)
        self.margin = margin
        self.class_balanced = class_balanced
        self.generator = generator
        size = (spec.patch_size[1] + 2 * margin, spec.patch_size[2] + 2 * margin)
        self.input_spec = PatchSpec(
            (1, *size), (1, *size), num_slices=spec.num_slices, pad_mode=spec.pad_mode
        )
        self.label_spec = PatchSpec((1, *size), (1, *size))
        self.device = self.volumes[0].image.device
        counts = [len(v.starts) for v in self.volumes]
        if sum(counts) == 0:
            raise ValueError("volumes must contain foreground to sample from, got none")
        self._volume_weights = torch.tensor(counts, dtype=torch.float64, device=self.device)

    def _randint(self, high: int | torch.Tensor, n: int) -> torch.Tensor:
        u = torch.rand(n, generator=self.generator, device=self.device, dtype=torch.float64)
        return (u * high).long().clamp_max(torch.as_tensor(high, device=self.device) - 1)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` patches: inputs float32 ``(n, C * S, py + 2m, px + 2m)``, labels int64
        ``(n, py + 2m, px + 2m)`` (crop the margin with :func:`crop_margin`)."""
        which = torch.multinomial(
            self._volume_weights, n, replacement=True, generator=self.generator
        )
        inputs, labels = [], []
        order = []
        for v_index in torch.unique(which).tolist():
            idx = torch.nonzero(which == v_index).squeeze(1)
            vol = self.volumes[v_index]
            pool = vol.starts
            if self.class_balanced:
                present = [s for s in vol.class_starts if len(s)]
                cls = self._randint(len(present), len(idx))
                starts = torch.empty((len(idx), 3), dtype=torch.long, device=self.device)
                for c, cand in enumerate(present):
                    sel = torch.nonzero(cls == c).squeeze(1)
                    if len(sel):
                        starts[sel] = cand[self._randint(len(cand), len(sel))]
            else:
                starts = pool[self._randint(len(pool), len(idx))]
            inputs.append(extract_patches_at(vol.image, starts, self.input_spec))
            lab = extract_patches_at(vol.label[None], starts, self.label_spec)
            labels.append(lab[:, 0].long())
            order.append(idx)
        perm = torch.cat(order)
        out_x = torch.empty((n, *inputs[0].shape[1:]), dtype=torch.float32, device=self.device)
        out_y = torch.empty((n, *labels[0].shape[1:]), dtype=torch.long, device=self.device)
        out_x[perm] = torch.cat(inputs)
        out_y[perm] = torch.cat(labels)
        return out_x, out_y


def crop_margin(x: torch.Tensor, margin: int) -> torch.Tensor:
    """Drop ``margin`` pixels from each side of the last two axes."""
    if margin == 0:
        return x
    return x[..., margin:-margin, margin:-margin]
