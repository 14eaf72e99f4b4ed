"""Run configuration: frozen dataclasses, YAML/JSON loading, ``--set`` overrides.

Precedence: dataclass defaults, then the ``--config`` file, then ``--set key=value``
flags (dotted keys, values parsed as YAML: ``--set schedule.epochs=5``,
``--set model.kwargs={depth: 2}``). An unknown key or a value of the wrong type is an
error naming the key. The resolved configuration is saved next to every run and into
every checkpoint, so nothing is implicit (ARCHITECTURE.md section 5).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from medseg._validate import check_diameter, check_positive, is_real
from medseg.augment import AugmentConfig
from medseg.instances import OBJECT_METHODS
from medseg.io import atomic_output
from medseg.options import INFERENCE_MODES, INPUT_COLOURS, TILE_MODE
from medseg.typing import PathLike


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Which network: a registered name and its constructor arguments.

    ``in_channels`` and ``num_classes`` are filled in from the data and patch settings.
    """

    name: str = "usegnet"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from medseg.models import MODELS

        _check_choice("model.name", self.name, tuple(sorted(MODELS)))
        for key in ("in_channels", "num_classes"):
            if key in self.kwargs:
                raise ValueError(
                    f"model.kwargs must not set {key!r}, got {self.kwargs[key]!r}; it follows "
                    "from data.num_classes and patches.num_slices"
                )


@dataclass(frozen=True)
class DataConfig:
    """Where the training data are and how intensities are normalised.

    ``normalize_mask`` is ``"nonzero"`` (statistics inside the head of a skull-stripped
    MRI, 0 outside) or ``"all"`` (microscopy). ``separate_touching`` carves a one-pixel
    gap between touching objects of instance targets (:func:`medseg.instances.carve_touching`);
    ``cache_dir`` keeps computed weight maps between runs. ``brain_extraction`` says the
    training images are skull-stripped T1s: the checkpoint then asks prediction to strip
    raw heads first (``medseg predict --skull-strip auto``).

    ``colour`` is ``"keep"`` (the image's channels, as read), ``"grey"`` or
    ``"grey-darkest"``: microscopy images of any stain become one grey channel with dark
    background and bright objects (light-background images are inverted;
    :func:`medseg.normalize.grey_dark_background`), both in training and at prediction;
    ``grey`` takes the mean of the channels, ``grey-darkest`` the darkest channel of a
    light-background image (where its stain absorbs most). ``targets`` is ``"classes"``
    (the labels as read, carved with ``separate_touching``) or ``"boundary"``: the
    three-class target of an instance map (0 background, 1 interior, 2 boundary
    ``boundary_width`` pixels wide;
    :func:`medseg.boundary.boundary_classes`), with ``num_classes: 3``.
    """

    manifest: str = "data_manifests/ibsr18.csv"
    data_root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int = 4
    normalization: str = "zscore"
    percentiles: tuple[float, float] = (1.0, 99.0)
    normalize_mask: str = "nonzero"
    separate_touching: bool = False
    cache_dir: str | None = None
    brain_extraction: bool = False
    colour: str = "keep"
    targets: str = "classes"
    boundary_width: int = 1

    def __post_init__(self) -> None:
        _check_choice("data.normalization", self.normalization, ("zscore", "percentile"))
        _check_choice("data.normalize_mask", self.normalize_mask, ("nonzero", "all"))
        _check_choice("data.colour", self.colour, INPUT_COLOURS)
        _check_choice("data.targets", self.targets, ("classes", "boundary"))
        if self.targets == "boundary" and self.num_classes != 3:
            raise ValueError(
                f"data.num_classes must be 3 for data.targets: boundary (background, "
                f"interior, boundary), got {self.num_classes}"
            )
        if self.targets == "boundary" and self.separate_touching:
            raise ValueError(
                "data.separate_touching must be false with data.targets: boundary (the "
                "boundary class already separates touching objects), got true"
            )
        check_positive(self.boundary_width, "data.boundary_width")
        if self.num_classes < 2:
            raise ValueError(f"data.num_classes must be >= 2, got {self.num_classes}")


@dataclass(frozen=True)
class PatchConfig:
    """2.5D patches (U-SegNet): ``size`` x ``size`` windows on ``num_slices`` slices.

    ``slice_axis`` is ``"axial"`` (the axis closest to superior-inferior, from the
    image geometry) or an array axis 0, 1, 2 of ``(Z, Y, X)``.

    ``sample_by`` says how a draw picks its case: ``"window"`` makes every valid window
    of the training set equally likely (a large image is drawn more often than a small
    one); ``"case"`` picks a case uniformly, then a window in it, so that every image
    counts alike in training as it does in a per-image mean metric.
    """

    size: int = 40
    stride: int = 10
    num_slices: int = 3
    slice_axis: Union[str, int] = "axial"
    pad_mode: str = "reflect"
    patches_per_epoch: int = 20000
    skip_background: bool = True
    class_balanced: bool = False
    sample_by: str = "window"

    def __post_init__(self) -> None:
        check_positive(self.size, "patches.size")
        if not 1 <= self.stride <= self.size:
            raise ValueError(f"patches.stride must be in [1, size={self.size}], got {self.stride}")
        if self.num_slices < 1 or self.num_slices % 2 == 0:
            raise ValueError(
                f"patches.num_slices must be a positive odd number, got {self.num_slices}"
            )
        if self.slice_axis not in ("axial", 0, 1, 2):
            raise ValueError(
                f"patches.slice_axis must be 'axial', 0, 1 or 2, got {self.slice_axis!r}"
            )
        _check_choice("patches.pad_mode", self.pad_mode, ("reflect", "replicate", "constant"))
        _check_choice("patches.sample_by", self.sample_by, ("window", "case"))
        check_positive(self.patches_per_epoch, "patches.patches_per_epoch")


@dataclass(frozen=True)
class LossConfig:
    """Loss name (``medseg.losses.create_loss``), its options and class balancing.

    ``weight_map`` trains with the U-Net touching-cell weight map (eq. 2, ``w0`` and
    ``sigma`` in pixels) on instance targets, with ``name: weighted_ce``. Turning it off
    (``--no-weight-map``) trains the same run with plain cross-entropy.
    """

    name: str = "ce"
    class_weights: str = "none"
    kwargs: dict[str, Any] = field(default_factory=dict)
    weight_map: bool = False
    w0: float = 10.0
    sigma: float = 5.0

    def __post_init__(self) -> None:
        _check_choice("loss.class_weights", self.class_weights, ("none", "median", "natural"))
        check_positive(self.w0, "loss.w0")
        check_positive(self.sigma, "loss.sigma")
        if self.weight_map and self.name != "weighted_ce":
            raise ValueError(
                f"loss.name must be 'weighted_ce' with loss.weight_map true, got {self.name!r}"
            )
        if self.name == "weighted_ce" and not self.weight_map:
            raise ValueError(
                "loss.weight_map must be true for loss.name 'weighted_ce', got false; "
                "use loss.name 'ce' to train without a weight map"
            )


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        _check_choice("optim.name", self.name, ("adam", "adamw", "sgd"))
        _check_choice("optim.schedule", self.schedule, ("cosine", "constant", "poly"))
        check_positive(self.lr, "optim.lr")
        check_positive(self.weight_decay, "optim.weight_decay", allow_zero=True)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"optim.momentum must be in [0, 1), got {self.momentum!r}")


@dataclass(frozen=True)
class ScheduleConfig:
    """How long, how often to validate, and which validation metric picks ``best.pt``.

    ``select_metric``: ``mean_dice`` (foreground classes), or for object data ``ap``
    (DSB2018 mean AP), ``f1_at_05``, ``pixel_iou`` or ``rand_error`` (lower is better).
    """

    epochs: int = 30
    batch_size: int = 128
    val_every: int = 1
    select_metric: str = "mean_dice"
    extended_from: tuple[int, ...] = ()
    """The epoch counts the run was planned for before ``--extend-epochs`` lengthened it."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "val_every"):
            check_positive(getattr(self, name), f"schedule.{name}")
        _check_choice("schedule.select_metric", self.select_metric, SELECT_METRICS)


SELECT_METRICS = ("mean_dice", "ap", "f1_at_05", "pixel_iou", "rand_error")


@dataclass(frozen=True)
class InferenceConfig:
    """How a trained model predicts a volume (stored in its checkpoint).

    ``mode``: ``vote``, ``mean`` or ``gaussian`` reassembly of overlapping 2.5D patches,
    or ``tile``: the U-Net overlap-tile strategy for 2D images (:mod:`medseg.tiling`),
    with output tiles of ``tile_size`` pixels, mirrored context and, for same-padding
    networks, ``halo`` discarded context pixels per side (None: the default).
    ``diameter`` (tile mode only): the scale ``medseg predict`` uses without
    ``--diameter``: ``auto``, ``none`` or a diameter in pixels (:mod:`medseg.object_size`).
    """

    mode: str = "vote"
    batch_size: int = 512
    tile_size: int = 256
    halo: int | None = None
    diameter: float | str | None = None

    @property
    def is_tile(self) -> bool:
        """An object model's 2D overlap-tile prediction (``mode: tile``)."""
        return self.mode == TILE_MODE

    def __post_init__(self) -> None:
        _check_choice("inference.mode", self.mode, INFERENCE_MODES)
        check_positive(self.batch_size, "inference.batch_size")
        check_positive(self.tile_size, "inference.tile_size")
        if self.halo is not None:
            check_positive(self.halo, "inference.halo", allow_zero=True)
        d = check_diameter(self.diameter, "inference.diameter")
        object.__setattr__(self, "diameter", d)
        if d is not None and not self.is_tile:
            raise ValueError(
                f"inference.diameter applies to 2D object models (inference.mode: tile), got "
                f"{d!r} with mode {self.mode!r}; remove it"
            )


@dataclass(frozen=True)
class PostprocessConfig:
    """Objects from the predicted foreground (microscopy; stored in the checkpoint).

    ``method``: ``none`` (class maps only), ``components`` or ``watershed``
    (:func:`medseg.instances.instances_from_foreground`), ``boundary`` for a
    three-class boundary model (``data.targets: boundary``;
    :func:`medseg.boundary.instances_from_boundary`, on the classes decided foreground
    first: object pixels where ``1 - p(background)`` is above ``mask_threshold``,
    :func:`medseg.boundary.classes_from_probs`), or ``seeded``, the seeded watershed
    on the foreground probability with ``seed_threshold``, ``seed_distance``, ``sigma``,
    ``mask_threshold`` and ``merge_threshold``
    (:func:`medseg.membranes.instances_from_probability`); ``min_size`` drops smaller
    objects (pixels); ``fill_gaps`` gives the one-pixel gaps of a model trained with
    ``data.separate_touching`` back to their objects (:func:`medseg.instances.fill_gaps`).
    """

    method: str = "none"
    min_size: int = 0
    fill_gaps: bool = False
    seed_threshold: float = 0.8
    seed_distance: float = 1.0
    sigma: float = 1.0
    mask_threshold: float = 0.5
    merge_threshold: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("postprocess.method", self.method, ("none", *OBJECT_METHODS))
        check_positive(self.min_size, "postprocess.min_size", allow_zero=True)
        if self.method == "seeded":
            import numpy as np

            from medseg.membranes import instances_from_probability

            try:  # the parameters' own checks, on a one-pixel map
                instances_from_probability(
                    np.zeros((1, 1, 1), dtype=np.float32),
                    seed_threshold=self.seed_threshold,
                    seed_distance=self.seed_distance,
                    sigma=self.sigma,
                    mask_threshold=self.mask_threshold,
                    merge_threshold=self.merge_threshold,
                )
            except ValueError as err:
                raise ValueError(f"postprocess.{err}") from None
        if self.method == "boundary" and not (
            is_real(self.mask_threshold) and 0 < self.mask_threshold < 1
        ):
            raise ValueError(
                f"postprocess.mask_threshold must be a number in (0, 1), got "
                f"{self.mask_threshold!r}"
            )

    def seeded_parameters(self) -> dict[str, float]:
        """The :func:`medseg.membranes.instances_from_probability` parameters."""
        return {
            "seed_threshold": self.seed_threshold,
            "seed_distance": self.seed_distance,
            "sigma": self.sigma,
            "mask_threshold": self.mask_threshold,
            "merge_threshold": self.merge_threshold,
        }


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; see ``configs/*.yaml`` for examples."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    cpu_amp: bool = False
    compile: bool = False
    tensorboard: bool = False
    out_dir: str = "runs/run"

    def __post_init__(self) -> None:
        _check_choice("device", self.device.split(":")[0], ("auto", "cpu", "mps", "cuda"))
        objects = self.postprocess.method != "none"
        if self.schedule.select_metric != "mean_dice" and not objects:
            raise ValueError(
                f"schedule.select_metric {self.schedule.select_metric!r} needs objects, so "
                f"postprocess.method must be components, watershed or boundary, got 'none'"
            )
        if self.augment.object_contrast_prob > 0 and not objects:
            raise ValueError(
                "augment.object_contrast_prob scales the objects of an object model (class 1 "
                "of its targets), so postprocess.method must be components, watershed or "
                f"boundary, got 'none' (object_contrast_prob {self.augment.object_contrast_prob})"
            )
        if self.postprocess.method == "boundary" and self.data.targets != "boundary":
            raise ValueError(
                "postprocess.method 'boundary' reads a three-class boundary model, so "
                f"data.targets must be 'boundary', got {self.data.targets!r}"
            )
        if self.inference.is_tile and self.patches.num_slices != 1:
            raise ValueError(
                f"patches.num_slices must be 1 for inference.mode 'tile' (2D models), got "
                f"{self.patches.num_slices}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able nested dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


# ---------------------------------------------------------------------------
# Loading, overrides, saving
# ---------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int/float/str/bool/tuple/dict/Union)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, key)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise TypeError(
            f"{key} must be {' or '.join(_type_name(a) for a in typing.get_args(tp))}, "
            f"got {value!r}"
        )
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(
                f"{key} must be a mapping of {getattr(tp, '__name__', tp)} fields, got {value!r}"
            )
        return _from_dict(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]: any length
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"{key} must be a list, got {value!r}")
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TypeError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(
            _coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):  # .inf / .nan in YAML: never a usable setting
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{key} must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"{key} has an unsupported type {tp!r}")  # pragma: no cover


def _from_dict(cls: Any, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ValueError(
            f"config key must be one of {[where + n for n in names]}, "
            f"got unknown key {where + unknown[0]!r}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` without anchors and aliases: a config never needs them, and
    nested aliases (a "billion laughs" file of a few hundred bytes) expand exponentially."""
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text)):
            raise ValueError(f"{where} must not use YAML aliases (*name), got at least one")
        return yaml.safe_load(text)
    except RecursionError:
        raise ValueError(f"{where} must be a YAML mapping, got one nested too deeply") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested dict (values parsed as YAML).

    Example:
        >>> apply_overrides({"schedule": {"epochs": 3}}, ["schedule.epochs=5", "seed=2"])
        {'schedule': {'epochs': 5}, 'seed': 2}
    """
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set must be key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ValueError(f"--set key must be dotted names like schedule.epochs, got {key!r}")
        try:
            value = _safe_yaml(raw, f"--set {key}") if raw.strip() else ""
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or " ".join(str(err).split())
            raise ValueError(
                f"--set {key} must be a YAML value (a number, true/false, a string, [a, b]), "
                f"got {raw!r} ({problem})"
            ) from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part!r} is not a section")
        node[parts[-1]] = value
    return out


def load_config(path: PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML/JSON file at ``path``, then ``overrides``.

    Raises:
        FileNotFoundError: missing file. ValueError: unknown key, bad value, bad YAML.
        TypeError: a value of the wrong type.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"config {str(path)!r} must be an existing file, got nothing there"
            )
        try:
            loaded = _safe_yaml(path.read_text(encoding="utf-8"), f"config {str(path)!r}")
        except yaml.YAMLError as err:
            msg = " ".join(str(err).split())
            raise ValueError(f"config {str(path)!r} must be valid YAML, got: {msg}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(
                f"config {str(path)!r} must be a mapping at the top, got {type(loaded).__name__}"
            )
        data = loaded
    data = apply_overrides(data, overrides or [])
    try:
        return _from_dict(TrainConfig, data)
    except (TypeError, ValueError) as err:
        where = f" (in {path})" if path is not None else ""
        raise type(err)(f"{err}{where}") from err


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from :meth:`TrainConfig.to_dict` output (checkpoints)."""
    return _from_dict(TrainConfig, data)


RESUME_FREE_KEYS: tuple[str, ...] = (
    "device",
    "tensorboard",
    "compile",
    "out_dir",
    "data.data_root",
    "inference.batch_size",
)
"""Settings that ``--resume`` may change: where and how fast the run goes, not what it is."""


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "kwargs":
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_changes(
    stored: dict[str, Any], requested: TrainConfig, *, ignore: tuple[str, ...] = ()
) -> list[tuple[str, Any, Any]]:
    """What ``requested`` changes in a run's stored config: ``(key, stored, requested)``.

    ``stored`` is the config dict a run recorded (its checkpoint's ``config``); keys it
    lacks (written by an older medseg) take their defaults. :data:`RESUME_FREE_KEYS` and
    ``ignore`` are not compared.

    Raises:
        ValueError: the stored config is not a valid config any more.

    Example:
        >>> old = TrainConfig().to_dict()
        >>> config_changes(old, load_config(None, ["optim.lr=0.01", "device=cpu"]))
        [('optim.lr', 0.001, 0.01)]
    """
    try:
        before = _flatten(_from_dict(TrainConfig, json.loads(json.dumps(stored))).to_dict())
    except (TypeError, ValueError) as err:
        raise ValueError(f"the run's stored config must still be valid, got: {err}") from err
    after = _flatten(requested.to_dict())
    skip = set(RESUME_FREE_KEYS) | set(ignore)
    keys = [k for k in dict.fromkeys([*before, *after]) if k not in skip]
    return [(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]


def save_config(config: TrainConfig, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write the resolved configuration as JSON, atomically."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return Path(path)
