"""Checkpoints: everything ``medseg predict`` needs, loaded safely.

A checkpoint is a dict saved with ``torch.save`` and loaded with
``torch.load(weights_only=True)``, so loading never runs code. It holds plain values
and tensors only:

* ``format`` / ``format_version`` / ``medseg_version``;
* ``model_name`` and ``model_kwargs`` (with ``in_channels`` and ``num_classes``), so
  ``create_model(model_name, **model_kwargs)`` rebuilds the network;
* ``state_dict`` (float32, or float16 for shipped models: converted back on load);
* ``label_names`` (``{value: name}``), ``normalization`` (method, percentiles, mask,
  colour), ``patch`` (size, stride, num_slices, slice_axis, pad_mode) and ``inference``
  (reassembly mode, batch size, tile size, halo, a 2D model's default ``diameter``): how
  the model expects its input;
* ``config``: the resolved training configuration; ``epoch``, ``metrics``;
* ``postprocess`` (objects, tuned CRF and clean-up), ``label_format``,
  ``foreground_value``, ``input`` (``brain_extraction``, ``labels_note``), ``grid`` and,
  for 2D object models, ``object_size`` (the training objects' diameters,
  :func:`medseg.data.training_object_size`);
* for resuming only: ``optimizer``, ``scheduler``, ``rng``.

The stored settings dicts are read through typed views with their defaults in one place
(:class:`NormalizationSettings`, :class:`PatchSettings`, :class:`InferenceSettings`,
:class:`PostprocessSettings`; the properties of :class:`Checkpoint`).

Built-in models shipped inside the package are addressed by name (``brain-tissue``, the
default, and the more accurate but slower ``brain-tissue-unetpp`` for 3D T1 brain MRI,
``nuclei`` and ``em-membrane`` for 2D microscopy); see
:data:`BUILTIN_MODELS` and the model cards beside the weights.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg._checkpoint_settings import (  # noqa: F401 (re-exported: the settings' front module)
    BATCH_SIZE_DEFAULTS,
    TILE_MODE,
    InferenceSettings,
    NormalizationSettings,
    PatchSettings,
    PostprocessSettings,
)
from medseg.io import atomic_output
from medseg.typing import PathLike

FORMAT = "medseg-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format",
    "model_name",
    "model_kwargs",
    "state_dict",
    "label_names",
    "normalization",
    "patch",
    "inference",
)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUILTIN_MODELS: dict[str, str] = {
    "brain-tissue": "brain-tissue.pt",
    "brain-tissue-unetpp": "brain-tissue-unetpp.pt",
    "nuclei": "nuclei.pt",
    "em-membrane": "em-membrane.pt",
}


@dataclass
class Checkpoint:
    """A loaded checkpoint; :meth:`build_model` gives the network with its weights."""

    path: Path | None
    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    label_names: dict[int, str]
    normalization: dict[str, Any]
    patch: dict[str, Any]
    inference: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return int(self.model_kwargs["in_channels"])

    @property
    def num_classes(self) -> int:
        return int(self.model_kwargs["num_classes"])

    @property
    def image_channels(self) -> int:
        """Channels of the input image: model channels / slices per 2.5D patch."""
        return self.in_channels // self.num_slices

    @property
    def normalization_settings(self) -> NormalizationSettings:
        """:attr:`normalization`, typed, with the defaults for keys it lacks."""
        return NormalizationSettings.from_dict(self.normalization)

    @property
    def patch_settings(self) -> PatchSettings:
        """:attr:`patch`, typed, with the defaults for keys it lacks."""
        return PatchSettings.from_dict(self.patch)

    @property
    def inference_settings(self) -> InferenceSettings:
        """:attr:`inference`, typed, with the defaults for keys it lacks."""
        return InferenceSettings.from_dict(self.inference)

    @property
    def postprocess_settings(self) -> PostprocessSettings:
        """``extra["postprocess"]``, typed, with the defaults for keys it lacks."""
        return PostprocessSettings.from_dict(self.extra.get("postprocess"))

    @property
    def is_tile_model(self) -> bool:
        """Whether this is a 2D object model, predicting by overlap-tile (inference mode
        ``"tile"``), rather than a 2.5D volume model predicting by patches."""
        return self.inference_settings.is_tile

    @property
    def num_slices(self) -> int:
        """Slices per 2.5D patch (1 for a 2D model)."""
        return self.patch_settings.num_slices

    @property
    def uses_brain_extraction(self) -> bool:
        """Whether the model was trained on skull-stripped T1 (``extra["input"]``)."""
        return bool(self._input.get("brain_extraction", False))

    @property
    def labels_note(self) -> str | None:
        """How the training labels were defined, in words (``extra["input"]``), or None."""
        note = self._input.get("labels_note")
        return None if note is None else str(note)

    @property
    def _input(self) -> dict[str, Any]:
        return dict(self.extra.get("input") or {})

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The network with these weights, in eval mode, on ``device``."""
        from medseg.models import create_model, load_weights

        where = f"checkpoint {str(self.path)!r}" if self.path else "checkpoint"
        try:  # first without memory: model_kwargs could describe any size of network
            with torch.device("meta"):
                probe = create_model(self.model_name, **self.model_kwargs)
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"{where}: {' '.join(str(err).split())}") from None
        declared = sum(t.numel() for t in probe.state_dict().values())
        stored = sum(v.numel() for v in self.state_dict.values())
        if declared != stored:
            raise ValueError(
                f"{where} must hold the {declared:,} weights that its model {self.model_name!r} "
                f"with model_kwargs {self.model_kwargs} has, got {stored:,}; the checkpoint "
                "is damaged or was edited"
            )
        bad = [
            k
            for k, v in self.state_dict.items()
            if v.is_floating_point() and not v.isfinite().all()
        ]
        if bad:
            raise ValueError(
                f"{where} must hold finite weights, got NaN or Inf in {len(bad)} tensor(s), "
                f"first {bad[0]!r}; the training that wrote it diverged"
            )
        model = create_model(self.model_name, **self.model_kwargs)
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()}
        try:
            load_weights(model, state)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        return model.to(device).eval()


def resolve_checkpoint(name_or_path: PathLike) -> Path:
    """A built-in model name (``brain-tissue``) or a checkpoint file -> its path.

    Raises:
        FileNotFoundError: if it is neither a built-in name nor an existing file.
    """
    text = str(name_or_path)
    if text in BUILTIN_MODELS:
        path = WEIGHTS_DIR / BUILTIN_MODELS[text]
        if not path.is_file():
            raise FileNotFoundError(
                f"built-in model {text!r} must be installed at {str(path)!r}, got nothing there"
            )
        return path
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {text!r} must be an existing file or a built-in model name "
            f"({', '.join(sorted(BUILTIN_MODELS))}), got neither"
        )
    return path


def save_checkpoint(
    path: PathLike,
    *,
    model_name: str,
    model_kwargs: dict[str, Any],
    model: nn.Module,
    label_names: dict[int, str],
    normalization: dict[str, Any],
    patch: dict[str, Any],
    inference: dict[str, Any],
    config: dict[str, Any] | None = None,
    epoch: int = 0,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    half: bool = False,
    overwrite: bool = True,
) -> Path:
    """Write a checkpoint atomically (temporary file, then rename).

    Args:
        half: Store floating-point weights as float16 (shipped models: half the size).
        extra: Additional plain values (e.g. ``optimizer``/``scheduler`` state dicts and
            ``rng`` states for resuming).
    """
    from medseg import __version__

    module: Any = model.module if hasattr(model, "module") else model  # unwrap DDP / compile
    module = getattr(module, "_orig_mod", module)
    state = {
        k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
        for k, v in module.state_dict().items()
    }
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medseg_version": __version__,
        "model_name": model_name,
        "model_kwargs": dict(model_kwargs),
        "state_dict": state,
        "label_names": {int(k): str(v) for k, v in label_names.items()},
        "normalization": dict(normalization),
        "patch": dict(patch),
        "inference": dict(inference),
        "config": dict(config or {}),
        "epoch": int(epoch),
        "metrics": dict(metrics or {}),
        **(extra or {}),
    }
    # through memory: torch.save names the zip records after a file name, and the
    # temporary file's random name would make equal checkpoints differ byte for byte
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def resave_checkpoint(
    checkpoint: Checkpoint,
    path: PathLike,
    *,
    model: nn.Module,
    extra: dict[str, Any],
    half: bool,
    overwrite: bool = False,
) -> Path:
    """Write a loaded checkpoint again, with ``model``'s weights and new ``extra`` values.

    Everything else (model name and kwargs, label names, normalisation, patch and inference
    settings, config, epoch, metrics) is copied from ``checkpoint``. Used to ship a model
    (float16, optimiser state dropped) and to store tuned post-processing.
    """
    return save_checkpoint(
        path,
        model_name=checkpoint.model_name,
        model_kwargs=checkpoint.model_kwargs,
        model=model,
        label_names=checkpoint.label_names,
        normalization=checkpoint.normalization,
        patch=checkpoint.patch,
        inference=checkpoint.inference,
        config=checkpoint.config,
        epoch=checkpoint.epoch,
        metrics=checkpoint.metrics,
        extra=extra,
        half=half,
        overwrite=overwrite,
    )


def _check_settings(data: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose stored settings cannot work, naming it (they would fail
    later, deep in prediction, with a message about a patch size or a mode but no file).
    Every settings dict must give its typed view; a 2.5D / 3D model (any mode but tile)
    must store its patch size, stride and slices, and they must make a patch spec."""
    where = f"checkpoint {str(path)!r}"
    try:
        patch = dict(data["patch"])
        inference = InferenceSettings.from_dict(data["inference"])  # mode, batch_size
        patch_settings = PatchSettings.from_dict(patch)
        if not inference.is_tile:
            missing = [k for k in ("size", "stride", "num_slices") if k not in patch]
            if missing:
                raise KeyError(missing[0])
            patch_settings.spec()
        NormalizationSettings.from_dict(data["normalization"])  # method
        PostprocessSettings.from_dict(data.get("postprocess"))
        if not isinstance(data["model_kwargs"], dict) or not isinstance(data["state_dict"], dict):
            raise ValueError("model_kwargs and state_dict must be mappings")
    except (KeyError, TypeError, ValueError) as err:
        text = " ".join(str(err).split())
        raise ValueError(f"{where} must hold usable settings, got {text}") from None


def load_checkpoint(name_or_path: PathLike, *, map_location: str = "cpu") -> Checkpoint:
    """Load and validate a checkpoint (file path or built-in model name).

    Raises:
        FileNotFoundError: no such file or built-in name.
        ValueError: not a medseg checkpoint, corrupt or truncated, or missing keys.
    """
    path = resolve_checkpoint(name_or_path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        msg = " ".join(str(err).split())[:200]
        raise ValueError(
            f"checkpoint {str(path)!r} must be a readable medseg checkpoint, got an unreadable "
            f"file ({type(err).__name__}: {msg})"
        ) from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"checkpoint {str(path)!r} must be a medseg checkpoint (format {FORMAT!r}), got {got}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} must contain {missing}, got {sorted(data)}")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} must have format version <= {FORMAT_VERSION}, got "
            f"{data['format_version']}; upgrade medseg"
        )
    _check_settings(data, path)
    known = set(REQUIRED_KEYS) | {"format_version", "medseg_version", "config", "epoch", "metrics"}
    return Checkpoint(
        path=path,
        model_name=str(data["model_name"]),
        model_kwargs=dict(data["model_kwargs"]),
        state_dict=dict(data["state_dict"]),
        label_names={int(k): str(v) for k, v in data["label_names"].items()},
        normalization=dict(data["normalization"]),
        patch=dict(data["patch"]),
        inference=dict(data["inference"]),
        config=dict(data.get("config", {})),
        epoch=int(data.get("epoch", 0)),
        metrics=dict(data.get("metrics", {})),
        extra={k: v for k, v in data.items() if k not in known},
    )
