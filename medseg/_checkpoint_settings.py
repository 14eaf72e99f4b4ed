"""Typed views of a checkpoint's settings dicts, with their defaults in one place.

A checkpoint file keeps plain dicts (``normalization``, ``patch``, ``inference`` and
``postprocess``), so that ``torch.load(weights_only=True)`` reads it and files written by
any version of medseg load unchanged. These frozen dataclasses are how the code reads them:
``from_dict`` takes a stored dict (a missing key takes the default below; a key medseg does
not know is kept in ``other`` and written back by ``to_dict``), and ``to_dict`` gives the
plain dict that ``medseg train`` writes. Front module: :mod:`medseg.checkpoint`, which
re-exports these names.

The defaults are those every reader used before the settings were typed. The one setting
whose default depends on another is ``inference.batch_size`` (see
:data:`BATCH_SIZE_DEFAULTS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Union

from medseg._validate import check_diameter
from medseg.membranes import SEEDED_DEFAULTS
from medseg.normalize import METHODS
from medseg.options import REASSEMBLY_MODES, TILE_MODE
from medseg.patches import PatchSpec

BATCH_SIZE_DEFAULTS: dict[str, int] = {"tile": 4, "patches": 512}
"""A checkpoint's batch size when it stores none: 4 output tiles for the overlap-tile
predictor (mode ``"tile"``) and 512 patches for the 2.5D predictors (``vote``, ``mean``,
``gaussian``); those are the defaults of :func:`medseg.tiling.predict_tiled` and
:func:`medseg.predict.predict_array`, which the two predictors used."""

SliceAxis = Union[str, int]
"""``"axial"`` (found from the image geometry) or an array axis 0, 1, 2 of ``(Z, Y, X)``."""


def _known_and_other(cls: Any, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``data`` (a stored settings mapping) split into the fields of ``cls`` and the rest."""
    data = dict(data)  # a stored value that is no mapping fails here, as it always did
    names = {f.name for f in fields(cls)} - {"other"}
    return {k: v for k, v in data.items() if k in names}, {
        k: v for k, v in data.items() if k not in names
    }


@dataclass(frozen=True)
class NormalizationSettings:
    """How a model's input intensities are normalised (the checkpoint's ``normalization``).

    Attributes:
        method: ``"zscore"`` or ``"percentile"`` (:func:`medseg.normalize.normalize_intensity`).
        percentiles: ``(low, high)`` percentiles for ``"percentile"``.
        mask: ``"nonzero"`` (statistics inside the non-zero head of a skull-stripped brain;
            checkpoints written before the key existed did this) or ``"all"`` (every pixel).
        colour: ``"keep"`` (the image's channels), ``"grey"`` or ``"grey-darkest"`` (any
            stain made one grey channel with a dark background,
            :func:`medseg.normalize.model_input_channels`).
        other: Stored keys medseg does not know, kept so that they are written back.

    Raises:
        ValueError: ``method`` is not one of :data:`medseg.normalize.METHODS`.

    Example:
        >>> s = NormalizationSettings.from_dict({"method": "percentile"})
        >>> s.percentiles, s.mask, s.colour
        ((1.0, 99.0), 'nonzero', 'keep')
        >>> s.to_dict()
        {'method': 'percentile', 'percentiles': [1.0, 99.0], 'mask': 'nonzero', 'colour': 'keep'}
    """

    method: str = "zscore"
    percentiles: tuple[float, float] = (1.0, 99.0)
    mask: str = "nonzero"
    colour: str = "keep"
    other: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"normalization method must be one of {METHODS}, got {self.method!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormalizationSettings:
        """The settings a stored ``normalization`` dict gives (missing keys: the defaults)."""
        known, other = _known_and_other(cls, data)
        if "percentiles" in known:
            known["percentiles"] = tuple(float(p) for p in known["percentiles"])
        for key in ("mask", "colour"):
            if key in known:
                known[key] = str(known[key])
        return cls(**known, other=other)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict stored in a checkpoint."""
        return {
            "method": self.method,
            "percentiles": list(self.percentiles),
            "mask": self.mask,
            "colour": self.colour,
            **self.other,
        }


@dataclass(frozen=True)
class PatchSettings:
    """The 2.5D patches a model was trained on (the checkpoint's ``patch``).

    Attributes:
        size: In-plane patch size in pixels; None when not stored (a 2D tile model needs
            none; a 2.5D model without one is refused when it is loaded).
        stride: In-plane stride between patches in pixels; None when not stored.
        num_slices: Slices per patch (the model's input channels per image channel).
        slice_axis: The axis the slices are taken along (:data:`SliceAxis`).
        pad_mode: How a volume is padded to whole patches (``reflect``, ``replicate``,
            ``constant``).
        other: Stored keys medseg does not know, kept so that they are written back.

    Example:
        >>> s = PatchSettings.from_dict({"size": 40, "stride": 10, "num_slices": 3})
        >>> s.slice_axis, s.pad_mode, s.spec().patch_size
        ('axial', 'reflect', (1, 40, 40))
        >>> PatchSettings.from_dict({}).num_slices
        1
    """

    size: int | None = None
    stride: int | None = None
    num_slices: int = 1
    slice_axis: SliceAxis = "axial"
    pad_mode: str = "reflect"
    other: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PatchSettings:
        """The settings a stored ``patch`` dict gives (missing keys: the defaults)."""
        known, other = _known_and_other(cls, data)
        for key in ("size", "stride", "num_slices"):
            if key in known:
                known[key] = int(known[key])
        if "pad_mode" in known:
            known["pad_mode"] = str(known["pad_mode"])
        return cls(**known, other=other)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict stored in a checkpoint (``size`` and ``stride`` when known)."""
        known = {"size": self.size, "stride": self.stride}
        return {
            **{k: v for k, v in known.items() if v is not None},
            "num_slices": self.num_slices,
            "slice_axis": self.slice_axis,
            "pad_mode": self.pad_mode,
            **self.other,
        }

    def spec(self, slice_axis: int = 0) -> PatchSpec:
        """The :class:`medseg.patches.PatchSpec` of these patches, slices along ``slice_axis``
        (an array axis of ``(Z, Y, X)``, found with :func:`medseg.io.resolve_slice_axis`).

        Raises:
            ValueError: no size or stride is stored, or the spec refuses them.
        """
        if self.size is None or self.stride is None:
            missing = "size" if self.size is None else "stride"
            raise ValueError(f"patch {missing} must be stored for a 2.5D model, got none")
        return PatchSpec.two_and_half_d(
            self.size,
            self.stride,
            num_slices=self.num_slices,
            slice_axis=slice_axis,
            pad_mode=self.pad_mode,
        )


@dataclass(frozen=True)
class InferenceSettings:
    """How a model predicts a whole image (the checkpoint's ``inference``).

    Attributes:
        mode: ``vote``, ``mean`` or ``gaussian`` reassembly of overlapping 2.5D patches
            (:data:`medseg.options.REASSEMBLY_MODES`), or ``"tile"``: overlap-tile
            prediction of 2D images (:mod:`medseg.tiling`).
        batch_size: Windows per forward pass; not given (None): the mode's default,
            :data:`BATCH_SIZE_DEFAULTS` (always an int after construction).
        tile_size: Output tile size in pixels (mode ``"tile"``).
        halo: Discarded context pixels per tile side for same-padding networks (mode
            ``"tile"``); None: the predictor's default.
        diameter: The scale a 2D object model predicts at when ``medseg predict`` is
            given no ``--diameter``: ``"auto"`` (chosen per image), ``"none"`` or None
            (the image as it is), or the objects' diameter in pixels
            (:mod:`medseg.object_size`).
        other: Stored keys medseg does not know, kept so that they are written back.

    Raises:
        ValueError: an unknown ``mode``, or ``batch_size`` below 1.

    Example:
        >>> InferenceSettings.from_dict({"mode": "tile"}).batch_size
        4
        >>> s = InferenceSettings.from_dict({})
        >>> s.mode, s.batch_size, s.is_tile
        ('vote', 512, False)
    """

    mode: str = "vote"
    batch_size: int = None  # type: ignore[assignment]  # None: the mode's default
    tile_size: int = 256
    halo: int | None = None
    diameter: float | str | None = None
    other: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "diameter", check_diameter(self.diameter, "inference diameter"))
        if self.mode != TILE_MODE and self.mode not in REASSEMBLY_MODES:
            raise ValueError(
                f"inference mode must be one of {', '.join(REASSEMBLY_MODES)} or tile, "
                f"got {self.mode!r}"
            )
        if self.batch_size is None:
            default = BATCH_SIZE_DEFAULTS["tile" if self.is_tile else "patches"]
            object.__setattr__(self, "batch_size", default)
        if self.batch_size < 1:
            raise ValueError(f"inference batch_size must be >= 1, got {self.batch_size}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceSettings:
        """The settings a stored ``inference`` dict gives (missing keys: the defaults)."""
        known, other = _known_and_other(cls, data)
        if "batch_size" in known:
            known["batch_size"] = int(known["batch_size"])
        if "tile_size" in known:
            known["tile_size"] = int(known["tile_size"])
        if known.get("halo") is not None:
            known["halo"] = int(known["halo"])
        return cls(**known, other=other)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict stored in a checkpoint."""
        return {
            "mode": self.mode,
            "batch_size": self.batch_size,
            "tile_size": self.tile_size,
            "halo": self.halo,
            **({} if self.diameter is None else {"diameter": self.diameter}),
            **self.other,
        }

    @property
    def is_tile(self) -> bool:
        """Whether the model predicts 2D images by overlap-tile (a 2D object model)."""
        return self.mode == TILE_MODE


@dataclass(frozen=True)
class PostprocessSettings:
    """What follows the network (the checkpoint's ``extra["postprocess"]``).

    Attributes:
        method: How a 2D object model's class map becomes objects: ``none`` (taken as
            ``components``), ``components``, ``watershed``, ``boundary`` or ``seeded``
            (:func:`medseg.instances.instances_from_prediction`,
            :func:`medseg.membranes.instances_from_probability`).
        min_size: Smaller objects are dropped (pixels).
        fill_gaps: Give the one-pixel gaps of a ``separate_touching`` model back to its
            objects.
        seed_threshold, seed_distance, sigma, mask_threshold, merge_threshold: The seeded
            watershed's parameters (:data:`medseg.membranes.SEEDED_DEFAULTS`).
            ``mask_threshold`` is also the ``boundary`` method's foreground threshold
            (:func:`medseg.boundary.classes_from_probs`).
        crf: Tuned :func:`medseg.postprocess.dense_crf` keyword arguments
            (``medseg tune-postprocess``), or None.
        cleanup: The tuned clean-up decision (:func:`medseg.postprocess.cleanup_to_dict`),
            or None.
        other: Other stored keys (e.g. ``tuning``, the record of a tuning run), kept so
            that they are written back.

    Example:
        >>> s = PostprocessSettings.from_dict({"method": "seeded", "sigma": 2})
        >>> s.min_size, s.seeded_parameters()["sigma"], s.seeded_parameters()["seed_threshold"]
        (0, 2.0, 0.8)
        >>> PostprocessSettings.from_dict({}).to_dict()
        {'method': 'components', 'min_size': 0, 'fill_gaps': False}
    """

    method: str = "components"
    min_size: int = 0
    fill_gaps: bool = False
    seed_threshold: float = SEEDED_DEFAULTS["seed_threshold"]
    seed_distance: float = SEEDED_DEFAULTS["seed_distance"]
    sigma: float = SEEDED_DEFAULTS["sigma"]
    mask_threshold: float = SEEDED_DEFAULTS["mask_threshold"]
    merge_threshold: float = SEEDED_DEFAULTS["merge_threshold"]
    crf: dict[str, Any] | None = None
    cleanup: dict[str, Any] | None = None
    other: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PostprocessSettings:
        """The settings a stored ``postprocess`` dict gives (None or missing keys: the
        defaults)."""
        known, other = _known_and_other(cls, data or {})
        if "method" in known:
            known["method"] = str(known["method"])
        if "min_size" in known:
            known["min_size"] = int(known["min_size"])
        if "fill_gaps" in known:
            known["fill_gaps"] = bool(known["fill_gaps"])
        for key in SEEDED_DEFAULTS:
            if key in known:
                known[key] = float(known[key])
        for key in ("crf", "cleanup"):
            if known.get(key) is not None:
                known[key] = dict(known[key])
        return cls(**known, other=other)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict stored in a checkpoint: the seeded watershed's parameters for the
        ``seeded`` method (or when they differ from the defaults), ``mask_threshold`` for
        ``boundary``, ``crf`` and ``cleanup`` when tuned."""
        out: dict[str, Any] = {
            "method": self.method,
            "min_size": self.min_size,
            "fill_gaps": self.fill_gaps,
        }
        seeded = self.seeded_parameters()
        if self.method == "boundary":  # its foreground threshold, tuned or not
            out["mask_threshold"] = self.mask_threshold
            seeded = {**seeded, "mask_threshold": SEEDED_DEFAULTS["mask_threshold"]}
        if self.method == "seeded" or seeded != SEEDED_DEFAULTS:
            out.update(self.seeded_parameters())
        if self.crf is not None:
            out["crf"] = self.crf
        if self.cleanup is not None:
            out["cleanup"] = self.cleanup
        return {**out, **self.other}

    def seeded_parameters(self) -> dict[str, float]:
        """The :func:`medseg.membranes.instances_from_probability` keyword arguments."""
        return {k: float(getattr(self, k)) for k in SEEDED_DEFAULTS}

    def updated(self, overrides: Mapping[str, Any] | None) -> PostprocessSettings:
        """These settings with ``overrides`` (stored keys, e.g. ``{"method": "seeded"}``)
        on top."""
        if not overrides:
            return self
        current = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "other"}
        return PostprocessSettings.from_dict({**self.other, **current, **overrides})
