"""The vocabulary, input size rule and argument checks of :mod:`medseg.export`.

The names, suffixes, tolerances and seeds that describe an exported file, the spatial sizes
a model accepts (:class:`SizeRule`, :func:`input_size_rule`), the format resolution
(:func:`resolve_format`) and the checks of a model, an example shape, an opset and the ONNX
packages. The file format itself is described in :mod:`medseg.export`, which re-exports
these names under their old import path (ARCHITECTURE.md section 1).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from medseg.typing import PathLike

FORMATS = ("torchscript", "onnx")
SUFFIXES: dict[str, str] = {
    ".pt": "torchscript",
    ".ts": "torchscript",
    ".torchscript": "torchscript",
    ".onnx": "onnx",
}
TOLERANCES: dict[str, float] = {"torchscript": 1e-5, "onnx": 1e-4}
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
METADATA_FILE = "medseg.json"  # the TorchScript extra file
EXPORT_FORMAT = "medseg-export"
EXPORT_FORMAT_VERSION = 1
VERIFY_SEED = 0  # seed of the random verification inputs
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
DEFAULT_SIZE = 64  # default example size (voxels per axis) when a checkpoint gives none
# Checkpoint extras that only resume training (large, not JSON): never embedded.
_RESUME_ONLY = frozenset({"optimizer", "scheduler", "rng"})
# How far past a size to look for the next size a model accepts.
_SIZE_SEARCH_LIMIT = 4096


# --------------------------------------------------------------------------------------
# Sizes


@dataclass(frozen=True)
class SizeRule:
    """The spatial sizes (voxels, one axis) a model accepts: ``minimum + step * k``, k >= 0.

    Attributes:
        minimum: Smallest accepted size.
        step: Distance between accepted sizes (the model's ``divisor``).

    Example:
        >>> rule = SizeRule(minimum=8, step=8)
        >>> rule.accepts(40), rule.accepts(44), rule.next_size(41)
        (True, False, 48)
    """

    minimum: int
    step: int

    def accepts(self, size: int) -> bool:
        """True if ``size`` is ``minimum + step * k`` for some ``k >= 0``."""
        return size >= self.minimum and (size - self.minimum) % self.step == 0

    def next_size(self, size: int) -> int:
        """The smallest accepted size >= ``size``."""
        k = max(0, math.ceil((size - self.minimum) / self.step))
        return self.minimum + self.step * k

    def describe(self) -> str:
        """The rule in words, e.g. ``"a multiple of 8 (>= 8)"``."""
        if self.minimum % self.step == 0:
            if self.step == 1:
                return f"any size >= {self.minimum}"
            return f"a multiple of {self.step} (>= {self.minimum})"
        return f"{self.minimum} + {self.step} * k (k >= 0)"


def input_size_rule(model: nn.Module) -> SizeRule:
    """The spatial input sizes ``model`` accepts on every axis.

    Same-padding models accept multiples of ``model.divisor`` of at least ``min_size``
    (class attributes, defaults 1). Valid-padding models (``model.padding == "valid"``,
    like :class:`medseg.models.unet.UNet`) accept the sizes for which
    ``model.output_shape`` does not raise, which are ``divisor`` apart.

    Raises:
        ValueError: for a bad ``divisor``, or a valid-padding model without
            ``output_shape`` or whose accepted sizes are not evenly spaced.

    Example:
        >>> from medseg.models import create_model
        >>> input_size_rule(create_model("segnet", in_channels=1, num_classes=2))
        SizeRule(minimum=8, step=8)
        >>> net = create_model("unet", in_channels=1, num_classes=2, depth=2, padding="valid")
        >>> input_size_rule(net)
        SizeRule(minimum=44, step=4)
    """
    divisor = getattr(model, "divisor", 1)
    if isinstance(divisor, bool) or not isinstance(divisor, (int, np.integer)) or divisor < 1:
        raise ValueError(f"model.divisor must be an int >= 1, got {divisor!r}")
    step = int(divisor)
    if getattr(model, "padding", "same") != "valid":
        min_size = max(1, int(getattr(model, "min_size", 1)))
        return SizeRule(minimum=math.ceil(min_size / step) * step, step=step)

    output_shape = getattr(model, "output_shape", None)
    if output_shape is None:
        raise ValueError(
            f"a valid-padding model must have output_shape(), got {type(model).__name__} "
            "without it; add one so that its input sizes are known"
        )
    dims = int(getattr(model, "spatial_dims", 2))

    def ok(size: int) -> bool:
        try:
            output_shape((size,) * dims)
        except ValueError:
            return False
        return True

    minimum = next((s for s in range(1, _SIZE_SEARCH_LIMIT + 1) if ok(s)), None)
    if minimum is None:
        raise ValueError(
            f"a valid-padding model must accept some input size <= {_SIZE_SEARCH_LIMIT}, "
            f"got {type(model).__name__} accepting none"
        )
    rule = SizeRule(minimum=minimum, step=step)
    sizes = range(minimum, minimum + 3 * step + 1)
    if any(ok(s) != rule.accepts(s) for s in sizes):
        raise ValueError(
            f"the input sizes of {type(model).__name__} must be {rule.describe()}, got "
            f"{[s for s in sizes if ok(s)]} accepted; its divisor does not space them"
        )
    return rule


# --------------------------------------------------------------------------------------
# Checks


def resolve_format(path: PathLike, format: str | None = None) -> str:
    """The export format: ``format`` if given, else the one ``path``'s suffix names.

    Suffixes: ``.pt``, ``.ts``, ``.torchscript`` -> ``"torchscript"``; ``.onnx`` ->
    ``"onnx"``.

    Raises:
        ValueError: for an unknown format, or an unknown suffix with ``format`` None.

    Example:
        >>> resolve_format("brain.onnx"), resolve_format("brain.bin", "torchscript")
        ('onnx', 'torchscript')
    """
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"output suffix must be one of {sorted(SUFFIXES)} to choose the format, got "
            f"{suffix or 'none'!r} ({str(path)!r}); rename it or pass --format (format=) "
            f"{' or '.join(FORMATS)}"
        )
    return SUFFIXES[suffix]


def check_onnx_available(packages: Sequence[str] = ONNX_PACKAGES) -> None:
    """Raise ValueError naming the first missing ONNX package and the fix.

    Args:
        packages: The packages needed: all of ``ONNX_PACKAGES`` to export, ``onnxruntime``
            to run a file, ``onnx`` to read its metadata.

    Raises:
        ValueError: if one of ``packages`` is not installed (one line, with the fix).
    """
    for package in packages:
        if importlib.util.find_spec(package) is None:
            raise ValueError(
                f"ONNX export must have the {package!r} package, got it missing; "
                "pip install 'medseg[export]'"
            )


def _check_opset(opset: object) -> int | None:
    if opset is None:
        return None
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 7:
        raise ValueError(f"opset must be None or an int >= 7, got {opset!r}")
    return opset


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError(
            "model must be in eval mode (dropout and batch norm frozen), got training mode; "
            "call model.eval() first"
        )
    devices = {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()}
    if devices - {"cpu"}:
        raise ValueError(f"model must be on the CPU, got {sorted(devices)}; call model.cpu()")
    return model


def _check_example_shape(
    example_shape: object, model: nn.Module, rule: SizeRule
) -> tuple[int, ...]:
    """``(N, C, *spatial)`` with N >= 2, C = in_channels and accepted sizes >= 2."""
    dims = int(getattr(model, "spatial_dims", 2))
    if (
        not isinstance(example_shape, (tuple, list))
        or len(example_shape) != dims + 2
        or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in example_shape
        )
    ):
        axes = ", ".join("zyx"[3 - dims :].upper())
        raise ValueError(
            f"example_shape must be (N, C, {axes}) ints for a model with spatial_dims={dims}, "
            f"got {example_shape!r}"
        )
    shape = tuple(int(s) for s in example_shape)
    if shape[0] < 2:
        raise ValueError(
            f"example_shape must have a batch size >= 2 (a batch of 1 would be frozen into "
            f"the graph), got {shape}; use {(2, *shape[1:])}"
        )
    in_channels = getattr(model, "in_channels", None)
    if in_channels is not None and shape[1] != int(in_channels):
        raise ValueError(f"example_shape must have in_channels={in_channels} channels, got {shape}")
    bad = [s for s in shape[2:] if s < 2 or not rule.accepts(s)]
    if bad:
        fixed = tuple(rule.next_size(max(s, 2)) for s in shape[2:])
        raise ValueError(
            f"example_shape spatial sizes must be {rule.describe()} and >= 2, got "
            f"{shape[2:]}; use {fixed}"
        )
    return shape
