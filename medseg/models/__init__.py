"""Model registry: every architecture is built by name.

>>> from medseg.models import create_model, list_models
>>> "usegnet" in list_models()
True
>>> model = create_model("segnet", in_channels=3, num_classes=4)

All constructors take the same core keyword arguments, named the same everywhere:
``in_channels``, ``num_classes``, ``spatial_dims`` (2 or 3), plus the architecture's
own options. ``forward`` returns raw logits ``(N, num_classes, *spatial)``; softmax and
argmax happen in prediction code.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

# name -> "module:Class". Plain data, resolved on first use, so that importing one
# architecture does not import the others.
MODELS: dict[str, str] = {
    "unet": "medseg.models.unet:UNet",
    "unetpp": "medseg.models.unetpp:UNetPlusPlus",
    "segnet": "medseg.models.segnet:SegNet",
    "usegnet": "medseg.models.usegnet:USegNet",
    "fcn32s": "medseg.models.fcn:FCN32s",
    "fcn16s": "medseg.models.fcn:FCN16s",
    "fcn8s": "medseg.models.fcn:FCN8s",
    "deeplab": "medseg.models.deeplab:DeepLab",
}


def model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name`` (see :func:`create_model` for errors)."""
    if name not in MODELS:
        close = difflib.get_close_matches(str(name), list(MODELS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"model name must be one of {list_models()}, got {name!r}{hint}")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: One of :func:`list_models`.
        **kwargs: Constructor arguments (``in_channels``, ``num_classes``, ``spatial_dims``,
            and the architecture's own options). JSON-able values only, so that
            ``(name, kwargs)`` fully describes a model in a checkpoint.

    Raises:
        ValueError: for an unknown name (the message lists the valid names and the closest).
        TypeError: for an argument the architecture does not take.
    """
    cls = model_class(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"model {name!r}: {err}") from err


def load_weights(model: nn.Module, source: str | Path | dict, *, strict: bool = True) -> nn.Module:
    """Load a state dict (a dict, or a file saved with ``torch.save``) into ``model``.

    The hook for pretrained weights: nothing is downloaded; pass a file you have. Files
    are loaded with ``weights_only=True`` (no code execution). A medseg checkpoint (a dict
    with a ``state_dict`` key) is accepted as well.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the keys or shapes do not fit the model (with ``strict=True``).
    """
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"weights file {str(path)!r} must exist, got nothing there")
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        msg = " ".join(str(err).split())[:400]
        raise ValueError(
            f"weights must fit {type(model).__name__}, got mismatching keys/shapes: {msg}"
        ) from err
    return model


__all__ = ["MODELS", "create_model", "list_models", "load_weights", "model_class"]
