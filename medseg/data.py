"""Training data: whole volumes on the device, and 2.5D patches sampled from them.

Volumes are read once, normalised (:mod:`medseg.normalize`), turned so that their
slice axis comes first, padded in-plane by a margin (mirror) and moved to the
training device. Patches are then drawn by index arithmetic and one gather per batch
(:func:`medseg.patches.window_view`, built once per volume) on that device, so data loading never
waits on the CPU or on files.

Sampling follows the U-SegNet paper (Kumar et al. 2018): 2.5D patches (a window on
one slice plus its neighbours as channels), skipping all-background windows
(``skip_background``), optionally class-balanced (each draw first picks a foreground
class uniformly, then a window containing it), which helps rare classes such as IBSR's
CSF. Each patch comes with an in-plane ``margin`` of context so that elastic
deformation can pull real image content into the patch; the margin is cropped after
augmentation (:func:`crop_margin`).

Microscopy (U-Net paper, Ronneberger et al. 2015) uses the same machinery with
``num_slices=1`` on 2D images (``Z == 1``, grey or RGB channels): labels are read by
the manifest's label format (classes, instance maps or a binary foreground value,
:func:`medseg.manifest.read_target`); touching objects can be separated by a one-pixel
gap in the target (:func:`medseg.instances.carve_touching`); the touching-cell weight
map (:func:`medseg.weightmap.unet_weight_map`) is computed once per image, optionally
cached on disk, and sampled and warped together with the image; and valid-padding
networks get ``context`` extra mirrored pixels around each patch, as in the paper's
overlap-tile strategy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from medseg.io import (
    Geometry,
    Volume,
    atomic_output,
    check_same_grid,
    read_image,
    resolve_slice_axis,  # noqa: F401  (re-exported: its home is medseg.io)
)
from medseg.manifest import read_target
from medseg.normalize import normalize_intensity
from medseg.patches import PatchSpec, patches_from_view, window_view
from medseg.typing import PathLike

NORMALIZE_MASKS = ("nonzero", "all")


@dataclass(frozen=True)
class VolumeOptions:
    """How :func:`load_training_volume` prepares a case (plain values, from the config).

    Attributes:
        num_classes: Classes K, background included; label values must be < K.
        margin: In-plane context for augmentation, pixels (cropped after warping).
        context: In-plane context the network consumes (valid padding: the halo), pixels.
        normalization: ``"zscore"`` or ``"percentile"`` (:mod:`medseg.normalize`).
        percentiles: Low / high percentiles for ``"percentile"``.
        normalize_mask: ``"nonzero"`` (statistics over non-zero voxels, 0 outside: brain
            MRI) or ``"all"`` (every pixel: microscopy, where 0 is real signal).
        slice_axis: ``"axial"`` or an array axis; 2D images (``Z == 1``) always use 0.
        skip_background: Only windows holding some foreground are drawn.
        label_format: ``"classes"``, ``"instances"`` or ``"binary"``
            (:data:`medseg.manifest.LABEL_FORMATS`).
        foreground_value: File value of the foreground for ``"binary"``.
        separate_touching: Carve a one-pixel gap between touching objects of the target.
        weight_map: ``(w0, sigma_px)`` of the U-Net border weight map, or None. With
            ``"boundary"`` targets the map is that of the carved instances with ``w_c = 1``
            (the border term weighs the contacts between touching objects).
        cache_dir: Folder for cached weight maps (None: computed in memory each run).
        colour: ``"keep"``, ``"grey"`` or ``"grey-darkest"``
            (:func:`medseg.normalize.model_input_channels`,
            :func:`medseg.normalize.grey_dark_background`
            before normalisation).
        targets: ``"classes"`` or ``"boundary"`` (the three-class target of the
            instances, :func:`medseg.boundary.boundary_classes`).
        boundary_width: Rim width of ``"boundary"`` targets, pixels.
        keep_stain_source: Keep a brightfield colour image's intensities as read
            (:attr:`TrainingVolume.stain_source`), so that training can compute its input
            again under another stain (:meth:`TrainingVolume.restain`).
    """

    num_classes: int
    margin: int = 0
    context: int = 0
    normalization: str = "zscore"
    percentiles: tuple[float, float] = (1.0, 99.0)
    normalize_mask: str = "nonzero"
    slice_axis: str | int = "axial"
    skip_background: bool = True
    label_format: str = "classes"
    foreground_value: int | None = None
    separate_touching: bool = False
    weight_map: tuple[float, float] | None = None
    cache_dir: str | None = None
    colour: str = "keep"
    targets: str = "classes"
    boundary_width: int = 1
    keep_stain_source: bool = False

    def __post_init__(self) -> None:
        if self.targets == "boundary" and self.label_format == "classes":
            raise ValueError(
                "label_format must be 'instances' or 'binary' for boundary targets (they "
                f"need objects), got {self.label_format!r}"
            )
        if self.normalize_mask not in NORMALIZE_MASKS:
            raise ValueError(
                f"normalize_mask must be one of {list(NORMALIZE_MASKS)}, got "
                f"{self.normalize_mask!r}"
            )
        if self.margin < 0 or self.context < 0:
            raise ValueError(
                f"margin and context must be >= 0, got {self.margin} and {self.context}"
            )
        if (self.separate_touching or self.weight_map) and self.label_format == "classes":
            raise ValueError(
                "label_format must be 'instances' or 'binary' for separate_touching or "
                f"weight maps (they need objects), got {self.label_format!r}"
            )


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
        pad: In-plane padding of ``image``, ``label`` and ``weight`` on each side
            (augmentation margin + network context), pixels.
        weight: U-Net weight map, float32 ``(Z, Y + 2p, X + 2p)`` on the device, or None.
        instances: The target's objects (after carving), int32 ``(Z, Y, X)`` unpadded, on
            the CPU (object metrics in validation), or None for class labels.
        stain_source: A brightfield colour image's intensities as read, float32 ``(3, Z,
            Y, X)`` on the CPU, with the options that made ``image`` from them; None for
            other images or without ``keep_stain_source``.
    """

    case: str
    image: torch.Tensor
    label: torch.Tensor
    starts: torch.Tensor
    class_starts: list[torch.Tensor]
    slice_axis: int
    geometry: Geometry
    shape: tuple[int, int, int]
    pad: int = 0
    weight: torch.Tensor | None = None
    instances: np.ndarray | None = None
    stain_source: tuple[np.ndarray, VolumeOptions] | None = None

    def restain(self, alpha: np.ndarray, beta: np.ndarray) -> None:
        """Compute ``image`` again, in place, from the stain source with its haematoxylin,
        eosin and DAB concentrations ``s`` made ``alpha * s + beta``
        (:func:`medseg.augment.stain.jitter_stains`); colour conversion, normalisation
        and padding as when it was loaded.

        Raises:
            ValueError: the volume kept no stain source.
        """
        from medseg.augment.stain import jitter_stains

        if self.stain_source is None:
            raise ValueError(
                f"case {self.case!r} must keep its stain source to be restained "
                "(a brightfield colour image loaded with keep_stain_source), got none"
            )
        source, options = self.stain_source
        image = _model_input(jitter_stains(source, alpha, beta), options, self.slice_axis)
        self.image.copy_(torch.from_numpy(image))

    @property
    def channels(self) -> int:
        """Image channels C (before the slice neighbours are stacked)."""
        return int(self.image.shape[0])

    def unpadded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image (C, Z, Y, X), label (Z, Y, X))`` without the padding, on the device."""
        p = self.pad
        ny, nx = self.image.shape[-2:]
        return self.image[..., p : ny - p, p : nx - p], self.label[:, p : ny - p, p : nx - p]


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
    image_path: PathLike,
    label_path: PathLike,
    *,
    case: str,
    spec: PatchSpec,
    options: VolumeOptions,
    device: str | torch.device = "cpu",
) -> TrainingVolume:
    """Read, check, normalise and lay out one case for sampling (module docstring).

    Args:
        image_path: Image file (any :mod:`medseg.io` format); 2D only when
            ``spec.num_slices == 1``.
        label_path: Label file, in ``options.label_format``.
        case: Case id (for messages).
        spec: The output patch spec (its in-plane size must fit the slices).
        options: See :class:`VolumeOptions`.
        device: Where the tensors live.

    Raises:
        ValueError: image/label grids differ, the image is 2D for a 2.5D spec, the
            slices are smaller than a patch, or labels hold values >= ``num_classes``.
    """
    o = options
    image = read_image(image_path)
    target = read_target(
        label_path, label_format=o.label_format, foreground_value=o.foreground_value
    )
    check_same_grid(image, Volume(target.classes, target.geometry, target.path))
    if image.array.shape[1] == 1 and spec.num_slices > 1:
        raise ValueError(
            f"image {str(image_path)!r} must be 3D for {spec.num_slices}-slice 2.5D patches, "
            f"got a 2D image; use patches.num_slices=1 for 2D data"
        )
    classes, instances = target.classes, target.instances
    if o.targets == "boundary" and instances is not None:
        from medseg.boundary import boundary_classes

        classes = boundary_classes(instances, width=o.boundary_width)
    elif o.separate_touching and instances is not None:
        from medseg.instances import carve_touching

        instances = carve_touching(instances)
        classes = (instances > 0).astype(np.uint8)
    if int(classes.max()) >= o.num_classes:
        raise ValueError(
            f"label values must be < num_classes={o.num_classes}, got {int(classes.max())} "
            f"(in {label_path})"
        )
    axis = 0 if image.array.shape[1] == 1 else resolve_slice_axis(o.slice_axis, image.geometry)
    weight = None
    if o.weight_map is not None and instances is not None:
        weight = _weight_map(instances, o, label_path)
        weight = np.moveaxis(weight, axis, 0)
    lab = np.moveaxis(classes, axis, 0)
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
        if o.skip_background
        else np.argwhere(np.ones((shape[0], shape[1] - py + 1, shape[2] - px + 1), bool))
    )
    class_starts = [window_starts(lab, window, classes=[c]) for c in range(1, o.num_classes)]
    img = _model_input(image.array, o, axis)
    stain_source = None
    if o.keep_stain_source:
        from medseg.augment.stain import is_stained_colour

        if is_stained_colour(image.array):
            stain_source = (np.asarray(image.array, np.float32), o)
    p = o.margin + o.context
    pad = ((0, 0), (p, p), (p, p))
    lab = np.pad(lab, pad, mode="reflect" if p else "constant")
    dev = torch.device(device)
    weight_t = None
    if weight is not None:
        weight = np.pad(weight, pad, mode="reflect" if p else "constant")
        weight_t = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)).to(dev)
    return TrainingVolume(
        case=case,
        image=torch.from_numpy(np.ascontiguousarray(img)).to(dev),
        label=torch.from_numpy(np.ascontiguousarray(lab)).to(dev),
        starts=torch.from_numpy(starts).to(dev),
        class_starts=[torch.from_numpy(s).to(dev) for s in class_starts],
        slice_axis=axis,
        geometry=image.geometry,
        shape=shape,  # type: ignore[arg-type]
        pad=p,
        weight=weight_t,
        instances=None if instances is None else np.moveaxis(instances, axis, 0),
        stain_source=stain_source,
    )


def _model_input(array: np.ndarray, options: VolumeOptions, axis: int) -> np.ndarray:
    """A case's intensities ``(C, Z, Y, X)`` as the model takes them: colour conversion,
    normalisation, slice axis first, the in-plane margin plus context mirrored."""
    o = options
    mask = np.ones(array.shape[1:], bool) if o.normalize_mask == "all" else None
    if o.colour != "keep":
        from medseg.normalize import model_input_channels

        array = model_input_channels(array, o.colour)
    normed, _ = normalize_intensity(
        array, method=o.normalization, percentiles=o.percentiles, mask=mask
    )
    img = np.moveaxis(normed, 1 + axis, 1)
    p = o.margin + o.context
    pad = ((0, 0), (0, 0), (p, p), (p, p))
    return np.ascontiguousarray(np.pad(img, pad, mode="reflect" if p else "constant"))


def _weight_map(instances: np.ndarray, options: VolumeOptions, label_path: PathLike) -> np.ndarray:
    """The U-Net weight map of a target, from the disk cache when it holds it."""
    from medseg.weightmap import unet_weight_map

    assert options.weight_map is not None
    w0, sigma = options.weight_map
    class_weights = None
    if options.targets == "boundary":
        # Three classes: the paper's border term marks the contacts between touching
        # objects (the gap of the carved map, boundary class in the target); its two-class
        # balance w_c does not apply, so w = 1 + border term.
        from medseg.instances import carve_touching

        instances = carve_touching(instances)
        class_weights = (1.0, 1.0)
    cache = None
    if options.cache_dir is not None:
        path = Path(label_path)
        stat = path.stat()
        key = json.dumps(
            {
                "label": str(path.resolve()),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "options": {k: v for k, v in asdict(options).items() if k != "keep_stain_source"}
                | {"margin": 0, "context": 0, "cache_dir": None},
            },
            sort_keys=True,
        )
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        cache = Path(options.cache_dir) / f"weightmap_{path.stem}_{digest}.npy"
        if cache.is_file():
            cached = np.load(cache)
            if cached.shape == instances.shape:
                return cached
    weight = unet_weight_map(instances, w0=w0, sigma=sigma, class_weights=class_weights)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(cache, overwrite=True) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, weight)
    return weight


class PatchSampler:
    """Draws random 2.5D training patches (with margin) from volumes on one device.

    Args:
        volumes: Prepared volumes (all on the same device).
        spec: The patch spec (output window ``(1, py, px)``, ``num_slices`` inputs).
        margin: In-plane context around each window (as the volumes were padded).
        class_balanced: Pick a foreground class uniformly first (module docstring).
        sample_by: ``"window"``: every valid window of all volumes equally likely, so a
            volume is drawn in proportion to its windows; ``"case"``: a volume with
            windows uniformly, then one of its windows.
        generator: torch generator (on the volumes' device) for reproducible draws.
    """

    def __init__(
        self,
        volumes: Sequence[TrainingVolume],
        spec: PatchSpec,
        *,
        margin: int,
        class_balanced: bool = False,
        sample_by: str = "window",
        generator: torch.Generator | None = None,
    ) -> None:
        if sample_by not in ("window", "case"):
            raise ValueError(f"sample_by must be 'window' or 'case', got {sample_by!r}")
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
        weighted = {v.weight is not None for v in self.volumes}
        if len(weighted) > 1:
            names = [v.case for v in self.volumes if v.weight is None]
            raise ValueError(
                f"volumes must all have weight maps or none, got a mix (without: {names[:5]})"
            )
        counts = [len(v.starts) for v in self.volumes]
        if sum(counts) == 0:
            raise ValueError("volumes must contain foreground to sample from, got none")
        if sample_by == "case":
            counts = [min(c, 1) for c in counts]
        self._volume_weights = torch.tensor(counts, dtype=torch.float64, device=self.device)
        # strided views of every window, built once (padding along z copies the volume once
        # here rather than at every batch); indexed with device tensors, with no host sync
        self._views = [self._view(v) for v in self.volumes]

    def _view(self, v: TrainingVolume) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return (
            window_view(v.image, self.input_spec),
            window_view(v.label[None], self.label_spec),
            None if v.weight is None else window_view(v.weight[None], self.label_spec),
        )

    def restain(self, rng: np.random.Generator, sigma: float) -> int:
        """Give every volume with a stain source a new stain (module
        :mod:`medseg.augment.stain`): six draws from ``rng`` per such volume, in order;
        returns how many were restained."""
        from medseg.augment.stain import draw_stain_jitter

        count = 0
        for index, vol in enumerate(self.volumes):
            if vol.stain_source is None:
                continue
            vol.restain(*draw_stain_jitter(rng, sigma))
            self._views[index] = self._view(vol)  # a view over slice padding is a copy
            count += 1
        return count

    def _randint(self, high: int | torch.Tensor, n: int) -> torch.Tensor:
        u = torch.rand(n, generator=self.generator, device=self.device, dtype=torch.float64)
        return (u * high).long().clamp_max(torch.as_tensor(high, device=self.device) - 1)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``n`` patches with their margin (crop it with :func:`crop_margin`).

        Returns:
            inputs float32 ``(n, C * S, py + 2m, px + 2m)``, labels int64
            ``(n, py + 2m, px + 2m)`` and weights float32 of the labels' shape (None when
            the volumes have no weight map).
        """
        which = torch.multinomial(
            self._volume_weights, n, replacement=True, generator=self.generator
        )
        inputs, labels, weights = [], [], []
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
            image_view, label_view, weight_view = self._views[v_index]
            zi, yi, xi = starts.unbind(1)  # drawn from the volume's valid starts
            inputs.append(patches_from_view(image_view, zi, yi, xi, self.input_spec))
            lab = patches_from_view(label_view, zi, yi, xi, self.label_spec)
            labels.append(lab[:, 0].long())
            if weight_view is not None:
                weights.append(patches_from_view(weight_view, zi, yi, xi, self.label_spec)[:, 0])
            order.append(idx)
        perm = torch.cat(order)
        out_x = torch.empty((n, *inputs[0].shape[1:]), dtype=torch.float32, device=self.device)
        out_y = torch.empty((n, *labels[0].shape[1:]), dtype=torch.long, device=self.device)
        out_x[perm] = torch.cat(inputs)
        out_y[perm] = torch.cat(labels)
        if not weights:
            return out_x, out_y, None
        out_w = torch.empty(out_y.shape, dtype=torch.float32, device=self.device)
        out_w[perm] = torch.cat(weights)
        return out_x, out_y, out_w


def crop_margin(x: torch.Tensor, margin: int) -> torch.Tensor:
    """Drop ``margin`` pixels from each side of the last two axes."""
    if margin == 0:
        return x
    return x[..., margin:-margin, margin:-margin]


def training_object_size(
    label_paths: Sequence[PathLike], *, label_format: str, foreground_value: int | None = None
) -> dict[str, float | int] | None:
    """The sizes of a 2D object model's training objects, as a checkpoint records them
    (``extra["object_size"]``), so that ``medseg predict --diameter D`` can scale an
    image of objects ``D`` pixels across to them (:mod:`medseg.object_size`).

    Objects are the instance ids of ``instances`` labels, else the 8-connected
    components of the foreground (:func:`medseg.object_size.object_diameters`).

    Args:
        label_paths: The training split's 2D label files.
        label_format: The manifest's label format (:func:`medseg.manifest.read_target`).
        foreground_value: For ``"binary"`` labels.

    Returns:
        ``median_diameter``, ``p5_diameter`` and ``p95_diameter`` (pixels, over all
        objects of all images) and ``objects`` (their number), or None when the labels
        hold no object or are 3D.
    """
    from medseg.object_size import object_diameters

    diameters = []
    for path in label_paths:
        target = read_target(path, label_format=label_format, foreground_value=foreground_value)
        if target.classes.shape[0] != 1:
            return None
        if target.instances is not None:
            diameters.append(object_diameters(target.instances, instances=True))
        else:
            diameters.append(object_diameters(target.classes, instances=False))
    every = np.concatenate(diameters) if diameters else np.zeros(0)
    if every.size == 0:
        return None
    p5, median, p95 = np.percentile(every, [5, 50, 95])
    return {
        "median_diameter": round(float(median), 2),
        "p5_diameter": round(float(p5), 2),
        "p95_diameter": round(float(p95), 2),
        "objects": int(every.size),
    }
