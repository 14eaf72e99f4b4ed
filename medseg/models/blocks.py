"""Building blocks shared by at least two architectures.

Every block takes ``spatial_dims`` (2 or 3) and picks the matching torch layers, so
one architecture file serves 2D (2.5D patches: slices as channels) and 3D inputs.
Tensors are ``(N, C, *spatial)`` with spatial ``(y, x)`` or ``(z, y, x)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

SPATIAL_DIMS = (2, 3)
VGG16_NUM_CONVS = (2, 2, 3, 3, 3)  # VGG16 convolutions per block (FCN, DeepLab, full SegNet)
VGG16_WIDTHS = (1, 2, 4, 8, 8)  # VGG16 block widths in multiples of base_features


def check_spatial_dims(spatial_dims: int) -> int:
    """Validate ``spatial_dims``; return it."""
    if spatial_dims not in SPATIAL_DIMS:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """An int argument ``>= minimum``: TypeError for a non-int (bools too), ValueError below.

    Example:
        >>> check_int("depth", 3)
        3
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """A True/False argument: TypeError for anything else (1 and "yes" too).

    Example:
        >>> check_bool("norm", False)
        False
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_dropout(dropout: Any) -> float:
    """A dropout probability in [0, 1): TypeError for a non-number (bools too), else
    ValueError outside the range.

    Example:
        >>> check_dropout(0.5)
        0.5
    """
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool):
        raise TypeError(f"dropout must be a float, got {type(dropout).__name__} {dropout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return float(dropout)


def conv_layer(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return (nn.Conv2d, nn.Conv3d)[check_spatial_dims(spatial_dims) - 2]


def conv_transpose_layer(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return (nn.ConvTranspose2d, nn.ConvTranspose3d)[check_spatial_dims(spatial_dims) - 2]


def batch_norm_layer(spatial_dims: int) -> type[nn.Module]:
    """``nn.BatchNorm2d`` or ``nn.BatchNorm3d``."""
    return (nn.BatchNorm2d, nn.BatchNorm3d)[check_spatial_dims(spatial_dims) - 2]


def max_pool_layer(spatial_dims: int) -> type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return (nn.MaxPool2d, nn.MaxPool3d)[check_spatial_dims(spatial_dims) - 2]


def max_unpool_layer(spatial_dims: int) -> type[nn.Module]:
    """``nn.MaxUnpool2d`` or ``nn.MaxUnpool3d``."""
    return (nn.MaxUnpool2d, nn.MaxUnpool3d)[check_spatial_dims(spatial_dims) - 2]


def dropout_layer(spatial_dims: int) -> type[nn.Module]:
    """``nn.Dropout2d`` or ``nn.Dropout3d`` (drops whole feature maps)."""
    return (nn.Dropout2d, nn.Dropout3d)[check_spatial_dims(spatial_dims) - 2]


class ConvNormAct(nn.Sequential):
    """Convolution, optional batch norm, ReLU.

    Args:
        in_channels: Input feature channels.
        out_channels: Output feature channels.
        spatial_dims: 2 or 3.
        kernel_size: Convolution size (default 3).
        padding: ``"same"`` (output size = input size) or ``"valid"`` (no padding).
        dilation: Atrous rate (DeepLab).
        norm: Add ``BatchNorm`` after the convolution.
        bias: Convolution bias (default True, also with batch norm, as in the Caffe
            SegNet and the parameter counts of the U-SegNet paper).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 2,
        kernel_size: int = 3,
        padding: str = "same",
        dilation: int = 1,
        norm: bool = True,
        bias: bool = True,
    ) -> None:
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        pad = dilation * (kernel_size - 1) // 2 if padding == "same" else 0
        layers: list[nn.Module] = [
            conv_layer(spatial_dims)(
                in_channels, out_channels, kernel_size, padding=pad, dilation=dilation, bias=bias
            )
        ]
        if norm:
            layers.append(batch_norm_layer(spatial_dims)(out_channels))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def he_init(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation of every convolution, zero biases.

    The U-Net paper draws weights from N(0, sqrt(2/N)), N = fan-in (kernel volume x input
    channels): that is ``kaiming_normal_(mode="fan_in", nonlinearity="relu")``. Batch-norm
    layers start at weight 1, bias 0.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def he_init_up_convs(module: nn.Module) -> None:
    """He initialisation N(0, sqrt(2/N)) of every transposed convolution, zero biases.

    N is the number of incoming connections of one output voxel: ``in_channels`` times
    the kernel taps that reach it, ``prod(kernel / stride)`` (1 for the U-Net's 2x2,
    stride-2 up-convolution, whose taps do not overlap). PyTorch's fan-in of a transposed
    weight would be ``out_channels * prod(kernel)``, which is not that. Use it only for
    learnable up-convolutions; FCN's bilinear upsamplers keep their bilinear weights.
    """
    for m in module.modules():
        if isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            taps = math.prod(k / s for k, s in zip(m.kernel_size, m.stride, strict=True))
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / (m.in_channels * max(taps, 1.0))))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def check_input_shape(
    x: torch.Tensor, *, spatial_dims: int, divisor: int, model: str, min_size: int = 1
) -> None:
    """Raise ValueError unless ``x`` is ``(N, C, *spatial)`` with sizes divisible by ``divisor``.

    The message gives the padded shape to use (ARCHITECTURE.md section 4).
    """
    if x.ndim != spatial_dims + 2:
        raise ValueError(
            f"input of {model} must be (N, C, {', '.join('zyx'[3 - spatial_dims :])}) "
            f"for spatial_dims={spatial_dims}, got shape {tuple(x.shape)}"
        )
    sizes = tuple(int(s) for s in x.shape[2:])
    if any(s % divisor for s in sizes) or any(s < min_size for s in sizes):
        padded = tuple(max(min_size, math.ceil(s / divisor) * divisor) for s in sizes)
        raise ValueError(
            f"spatial size of the {model} input must be a multiple of {divisor} and at least "
            f"{min_size}, got {sizes}; pad the input to {padded}"
        )


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; batch-norm running statistics are buffers, not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def bilinear_kernel(channels: int, kernel_size: int, spatial_dims: int = 2) -> torch.Tensor:
    """Weights that make a stride-``k/2`` transposed convolution a bilinear upsampler.

    Returns a ``(channels, channels, *[kernel_size] * spatial_dims)`` tensor that maps each
    channel to itself (FCN's in-network upsampling initialisation, Long et al. 2015).
    """
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - torch.abs(og - centre) / factor
    filt = filt1d
    for _ in range(spatial_dims - 1):
        filt = filt[..., None] * filt1d
    weight = torch.zeros((channels, channels, *[kernel_size] * spatial_dims), dtype=torch.float64)
    for c in range(channels):
        weight[c, c] = filt
    return weight.float()


def as_tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    """Broadcast an int to an ``n``-tuple."""
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(v) for v in value)
