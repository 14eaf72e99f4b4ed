"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015), 2D and 3D.

The contracting path repeats two 3x3 convolutions + ReLU and a 2x2 max-pooling that halves
the resolution; the number of feature channels doubles at each downsampling
(``base_features * 2**level``). The expansive path repeats a 2x2 up-convolution (transposed
convolution, stride 2) that halves the channels, the concatenation with the encoder features
of the same level (centre-cropped for ``padding="valid"``) and two 3x3 convolutions + ReLU.
A final 1x1 convolution maps to ``num_classes`` logits. Dropout acts on the bottleneck
("drop-out layers at the end of the contracting path", section 3.1) and weights are drawn
from N(0, sqrt(2/N)), N = incoming connections of one neuron (section 3).

``padding="same"`` keeps the input size (divisor ``2**depth``); ``padding="valid"`` is the
paper's unpadded variant, whose output is smaller by a fixed border (the overlap-tile
strategy): for ``depth=4`` a 572 x 572 tile gives a 388 x 388 output, as in Fig. 1.

>>> import torch
>>> model = UNet(in_channels=3, num_classes=4, base_features=8).eval()
>>> model(torch.zeros(2, 3, 40, 40)).shape
torch.Size([2, 4, 40, 40])
>>> UNet.input_size_for(388, depth=4, padding="valid")
572
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import nn

from medseg.models.blocks import (
    ConvNormAct,
    check_bool,
    check_dropout,
    check_input_shape,
    check_int,
    check_spatial_dims,
    conv_layer,
    conv_transpose_layer,
    he_init,
    he_init_up_convs,
    max_pool_layer,
)

PADDINGS = ("same", "valid")
DEFAULT_DEPTH = 3
# Each 3x3 "valid" convolution loses 1 voxel per side; a level has two of them.
_VALID_LOSS_PER_LEVEL = 4
# Smallest bottleneck size (after its convolutions) for which every decoder level of the
# valid-padding net stays >= 1 voxel: b -> 2b - 4 must not shrink, so b >= 4.
_MIN_VALID_BOTTLENECK = 4


def _check_depth(depth: object) -> int:
    return check_int("depth", depth)


def _check_padding(padding: object) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    return str(padding)


def _valid_input_size(bottleneck: int, depth: int) -> int:
    """Input size of the valid-padding net whose bottleneck is ``bottleneck`` voxels.

    Inverting the contracting path (+4 per level, x2 per pooling) gives
    ``2**depth * bottleneck + 4 * (2**(depth + 1) - 1)``; depth 4, bottleneck 28 -> 572.
    """
    return 2**depth * bottleneck + _VALID_LOSS_PER_LEVEL * (2 ** (depth + 1) - 1)


def _valid_output_size(bottleneck: int, depth: int) -> int:
    """Output size of the valid-padding net: each decoder level maps ``s`` to ``2s - 4``.

    Closed form ``2**depth * bottleneck - 4 * (2**depth - 1)``; depth 4, bottleneck 28 -> 388.
    """
    return 2**depth * bottleneck - _VALID_LOSS_PER_LEVEL * (2**depth - 1)


def _valid_bottleneck(size: int, depth: int) -> int | None:
    """Bottleneck size for a valid-padding input ``size``, or None if ``size`` does not work."""
    rest = size - _valid_input_size(0, depth)
    if rest % 2**depth or rest // 2**depth < _MIN_VALID_BOTTLENECK:
        return None
    return rest // 2**depth


def _nearest_valid_sizes(size: int, depth: int) -> list[int]:
    """The valid-padding input sizes just below (if any) and just above an invalid ``size``."""
    step = 2**depth
    b = max(_MIN_VALID_BOTTLENECK, math.ceil((size - _valid_input_size(0, depth)) / step))
    above = _valid_input_size(b, depth)
    if b - 1 < _MIN_VALID_BOTTLENECK:
        return [above]
    return [_valid_input_size(b - 1, depth), above]


def _centre_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Crop the spatial axes of ``x`` (N, C, *spatial) to ``shape`` around the centre."""
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], shape, strict=True):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


def _double_conv(
    in_channels: int, out_channels: int, *, spatial_dims: int, padding: str, norm: bool
) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by (batch norm and) ReLU."""
    return nn.Sequential(
        ConvNormAct(
            in_channels, out_channels, spatial_dims=spatial_dims, padding=padding, norm=norm
        ),
        ConvNormAct(
            out_channels, out_channels, spatial_dims=spatial_dims, padding=padding, norm=norm
        ),
    )


class UNet(nn.Module):
    """U-Net with ``depth`` 2x2 poolings, for 2D (2.5D patches) or 3D inputs.

    Args:
        in_channels: Input channels (e.g. 3 neighbouring slices of a 2.5D patch).
        num_classes: Output classes K, background included.
        spatial_dims: 2 (``(N, C, Y, X)`` inputs) or 3 (``(N, C, Z, Y, X)``; 2x2x2 pooling
            and up-convolutions).
        base_features: Feature channels of the first level; level ``i`` has
            ``base_features * 2**i`` (the paper: 64, depth 4, 1024 at the bottleneck).
        depth: Number of 2x2 max-poolings (the paper: 4). The default 3 is the most a
            40 x 40 patch allows with ``padding="same"`` (bottleneck 5 x 5).
        norm: Batch norm after every 3x3 convolution (not in the paper, hence off).
        dropout: Element-wise dropout probability on the bottleneck output, active in
            training mode only (0 disables it). Element-wise as Caffe's ``Dropout`` layer.
        padding: ``"same"`` (output size = input size; sizes must be multiples of
            ``2**depth``) or ``"valid"`` (the paper: unpadded convolutions, centre-cropped
            skips, output smaller by ``4 * (3 * 2**depth - 2)`` voxels per axis; see
            :meth:`output_shape` and :meth:`input_size_for`).

    Attributes:
        divisor: Every spatial input size must be a multiple of this (``2**depth``) for
            ``padding="same"``; valid-padding sizes are spaced by it. The class value is
            the one of the default depth.

    Example:
        >>> import torch
        >>> net = UNet(in_channels=1, num_classes=2, spatial_dims=3, base_features=4, depth=2)
        >>> net.eval()(torch.zeros(1, 1, 8, 12, 16)).shape
        torch.Size([1, 2, 8, 12, 16])
    """

    divisor: int = 2**DEFAULT_DEPTH

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        base_features: int = 64,
        depth: int = DEFAULT_DEPTH,
        norm: bool = False,
        dropout: float = 0.5,
        padding: str = "same",
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("num_classes", num_classes)
        check_spatial_dims(spatial_dims)
        check_int("base_features", base_features)
        _check_depth(depth)
        check_bool("norm", norm)
        check_dropout(dropout)
        _check_padding(padding)

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.depth = depth
        self.padding = padding
        self.divisor = 2**depth
        features = [base_features * 2**level for level in range(depth + 1)]
        double_conv = functools.partial(
            _double_conv, spatial_dims=spatial_dims, padding=padding, norm=norm
        )

        # encoder[level], level = 0 .. depth (the last one is the bottleneck)
        self.encoder = nn.ModuleList(
            [double_conv(in_channels, features[0])]
            + [double_conv(features[i - 1], features[i]) for i in range(1, depth + 1)]
        )
        self.pool = max_pool_layer(spatial_dims)(kernel_size=2, stride=2)
        self.dropout = nn.Dropout(p=float(dropout))
        # up[level] maps level + 1 to level and halves the channels; decoder[level] follows it.
        up_conv = conv_transpose_layer(spatial_dims)
        self.up = nn.ModuleList(
            [up_conv(features[i + 1], features[i], kernel_size=2, stride=2) for i in range(depth)]
        )
        self.decoder = nn.ModuleList(
            [double_conv(2 * features[i], features[i]) for i in range(depth)]
        )
        self.head = conv_layer(spatial_dims)(features[0], num_classes, kernel_size=1)
        he_init(self)
        he_init_up_convs(self)

    @staticmethod
    def input_size_for(
        output_size: int, *, depth: int = DEFAULT_DEPTH, padding: str = "valid"
    ) -> int:
        """Smallest input size (one axis) whose output is at least ``output_size``.

        For ``padding="valid"`` the input is ``2**depth * b + 4 * (2**(depth + 1) - 1)``
        and the output ``2**depth * b - 4 * (2**depth - 1)``, ``b >= 4`` being the bottleneck
        size. For ``padding="same"`` it is ``output_size`` rounded up to ``2**depth``.

        Args:
            output_size: Wanted output size in voxels (>= 1).
            depth: Number of poolings of the network.
            padding: ``"valid"`` or ``"same"``.

        Returns:
            The input size in voxels; apply it to every axis (tiles can differ per axis).

        Example:
            >>> UNet.input_size_for(388, depth=4), UNet.input_size_for(40, depth=3)
            (572, 132)
            >>> UNet.input_size_for(40, depth=3, padding="same")
            40
        """
        check_int("output_size", output_size)
        _check_depth(depth)
        _check_padding(padding)
        step = 2**depth
        if padding == "same":
            return math.ceil(output_size / step) * step
        b = math.ceil((output_size + _VALID_LOSS_PER_LEVEL * (step - 1)) / step)
        return _valid_input_size(max(b, _MIN_VALID_BOTTLENECK), depth)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial output shape for a spatial input shape, e.g. ``(572, 572) -> (388, 388)``.

        Args:
            input_shape: Spatial input sizes in voxels, ``(Y, X)`` or ``(Z, Y, X)``.

        Returns:
            Spatial output sizes in voxels (equal to the input for ``padding="same"``).

        Raises:
            ValueError: if the shape does not fit ``spatial_dims`` or some size does not
                work for this depth and padding (the message names the nearest sizes).
        """
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != self.spatial_dims:
            raise ValueError(
                f"input_shape must have {self.spatial_dims} spatial sizes, got {shape}"
            )
        self._check_sizes(shape)
        if self.padding == "same":
            return shape
        return tuple(
            _valid_output_size(_valid_bottleneck(s, self.depth) or 0, self.depth) for s in shape
        )

    def _check_sizes(self, shape: tuple[int, ...]) -> None:
        if self.padding == "same":
            # check_input_shape builds the message with the padded shape to use.
            check_input_shape(
                torch.empty((1, 1, *shape), device="meta"),
                spatial_dims=self.spatial_dims,
                divisor=self.divisor,
                model="UNet",
            )
            return
        bad = [s for s in shape if _valid_bottleneck(s, self.depth) is None]
        if bad:
            nearest = {s: _nearest_valid_sizes(s, self.depth) for s in bad}
            hints = "; ".join(
                f"for {s} use {' or '.join(str(n) for n in near)}" for s, near in nearest.items()
            )
            smallest = _valid_input_size(_MIN_VALID_BOTTLENECK, self.depth)
            raise ValueError(
                f"spatial size of the UNet input (padding='valid', depth={self.depth}) must be "
                f"{2**self.depth}*k + {_valid_input_size(0, self.depth)} with k >= "
                f"{_MIN_VALID_BOTTLENECK} (smallest {smallest}), got {shape}; {hints}, "
                f"or get a size with UNet.input_size_for(output_size, depth={self.depth})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits.

        Args:
            x: Images, float32, ``(N, in_channels, *spatial)`` with spatial ``(Y, X)`` or
                ``(Z, Y, X)``; sizes multiples of ``divisor`` (``padding="same"``) or valid
                tile sizes (``padding="valid"``, see :meth:`input_size_for`).

        Returns:
            Logits, float32, ``(N, num_classes, *spatial_out)``; ``spatial_out`` is
            ``spatial`` for ``padding="same"`` and :meth:`output_shape` otherwise.

        Raises:
            ValueError: for a wrong number of dimensions or channels, or sizes that do not
                work (the message gives the padded shape or the nearest valid sizes).
        """
        check_input_shape(x, spatial_dims=self.spatial_dims, divisor=1, model="UNet")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"input channels of UNet must be in_channels={self.in_channels}, got "
                f"{x.shape[1]} (input shape {tuple(x.shape)})"
            )
        self._check_sizes(tuple(int(s) for s in x.shape[2:]))

        skips = []
        h = x
        for level in range(self.depth):
            h = self.encoder[level](h)  # (N, base * 2**level, *spatial / 2**level)
            skips.append(h)
            h = self.pool(h)
        h = self.dropout(self.encoder[self.depth](h))  # bottleneck
        for level in reversed(range(self.depth)):
            h = self.up[level](h)
            skip = _centre_crop(skips[level], h.shape[2:])
            h = self.decoder[level](torch.cat([skip, h], dim=1))
        return self.head(h)
