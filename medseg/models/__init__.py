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


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm into the convolution right before it, for inference.

    A BatchNorm after a convolution is an affine map per channel, so in eval mode it can
    be merged into the convolution's weights and bias (as ONNX Runtime and TensorRT do):
    the same outputs up to float rounding, one pass over memory fewer (measured: U-SegNet
    1,267 -> 1,455 patches/s on a 2-core CPU, benchmarks/RESULTS.md). The folded model
    has other parameter names: use it for prediction, never save or train it.

    Args:
        model: A network in eval mode; it is copied, not changed.

    Returns:
        The folded copy (in eval mode).

    Raises:
        ValueError: if ``model`` is in training mode.
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("model must be in eval mode to fold its BatchNorm layers, got training")
    folded = copy.deepcopy(model)
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):  # only there does order mean data flow
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = module._modules[first], module._modules[second]
            if (
                isinstance(conv, convs)
                and isinstance(norm, norms)
                and norm.track_running_stats
                and conv.out_channels == norm.num_features
            ):
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
    return folded.eval()


__all__ = [
    "MODELS",
    "create_model",
    "fold_batch_norm",
    "list_models",
    "load_weights",
    "model_class",
]
