"""FCN-32s, FCN-16s and FCN-8s: fully convolutional networks (Long, Shelhamer, Darrell, CVPR 2015).

A VGG16 classifier made convolutional: five blocks of 3x3 convolutions (2, 2, 3, 3, 3 convs of
``base_features`` x (1, 2, 4, 8, 8) channels, ReLU, 2x2 max-pool after each block), then fc6
(``fc_kernel_size`` conv to ``fc_channels``), fc7 (1x1 conv to ``fc_channels``), each followed
by ReLU and dropout, and ``score_fr``, a 1x1 conv to ``num_classes``. The coarse stride-32
scores are upsampled in the network by transposed convolutions initialised to bilinear
(trilinear in 3D) interpolation and learnable (paper Sec. 3.3):

- FCN-32s: one 32x upsampling (``upscore``, kernel 64, stride 32).
- FCN-16s: 2x upsampling (``upscore2``), plus the pool4 scores (``score_pool4``), then 16x
  (``upscore16``, kernel 32).
- FCN-8s: as FCN-16s up to the fusion, then 2x (``upscore_pool4``), plus the pool3 scores
  (``score_pool3``), then 8x (``upscore8``, kernel 16).

The skip score layers start at zero, so a finer net starts from the coarser net's scores
(paper Sec. 4.2); :meth:`FCN16s.from_fcn32s` and :meth:`FCN8s.from_fcn16s` copy the coarser
net's weights for the paper's staged training.

Input sizes. The reference nets pad conv1_1 by 100 pixels, use an unpadded fc6 and crop the
upsampled scores (offsets 19, 27 and 31 for 32s, 16s and 8s). Here every convolution is
"same"-padded instead, and ``forward`` zero-pads the input to the next multiple of 32 on
every axis (``extra // 2`` voxels before, the rest after), runs the net and crops the output
back to the input's place. A 1D example, input size 37, padded size 64 (13 before, 14 after)::

    padded  |0 ..12|13 ............. 49|50 .. 63|
    input          |0 .............. 36|
    cell j of the stride-32 map covers padded [32 j, 32 j + 32), centre 32 j + 15.5

Each transposed convolution (kernel ``2 f``, stride ``f``, padding ``f / 2``) gives exactly
``f`` times its input's size, and spreads input cell ``j``, which covers output pixels
``[f j, f j + f)``, with a peak at their centre ``f j + (f - 1) / 2``: every map, skip scores
included, stays aligned with the padded input to the pixel, and after the crop output pixel
``i`` is input pixel ``i``. Away from the padded borders (``f / 2`` pixels) the upsampling is
exactly ``F.interpolate(..., mode="bilinear", align_corners=False)``. Any size >= 1 works,
with no divisor constraint. The parameters have the reference nets' shapes, so converted
weights (renamed to these keys) load with :func:`medseg.models.load_weights`; nothing
pretrained is downloaded.

Initialisation: He normal for the VGG convolutions and fc6/fc7 (no ImageNet weights here),
zero for every score layer (``score_fr`` as in the paper, Sec. 4.3, and the skip scores),
bilinear for every upsampling layer. A freshly built net therefore outputs zeros; the scores
become non-zero after the first optimiser step.

Tensors are ``(N, C, *spatial)``, spatial ``(y, x)`` for ``spatial_dims=2`` and ``(z, y, x)``
for ``spatial_dims=3`` (ARCHITECTURE.md section 2). Logits are float32
``(N, num_classes, *spatial)``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.blocks import (
    VGG16_NUM_CONVS,
    VGG16_WIDTHS,
    ConvNormAct,
    bilinear_kernel,
    check_bool,
    check_dropout,
    check_input_shape,
    check_int,
    check_spatial_dims,
    conv_layer,
    conv_transpose_layer,
    he_init,
    max_pool_layer,
)

OUTPUT_STRIDE = 32


def _vgg_block(
    in_channels: int, out_channels: int, index: int, *, spatial_dims: int, norm: bool
) -> nn.Sequential:
    """``conv{index}_1 .. conv{index}_n`` (3x3, same padding, ReLU) and ``pool{index}`` (2x2)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(VGG16_NUM_CONVS[index - 1]):
        layers[f"conv{index}_{i + 1}"] = ConvNormAct(
            in_channels if i == 0 else out_channels,
            out_channels,
            spatial_dims=spatial_dims,
            norm=norm,
        )
    layers[f"pool{index}"] = max_pool_layer(spatial_dims)(2, stride=2)
    return nn.Sequential(layers)


def _upsampler(channels: int, factor: int, spatial_dims: int) -> nn.Module:
    """Transposed conv (kernel ``2 factor``, stride ``factor``): exactly ``factor`` x the size.

    Initialised to bilinear (trilinear) interpolation, learnable, no bias (as the reference nets).
    """
    layer = conv_transpose_layer(spatial_dims)(
        channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False
    )
    _set_bilinear(layer, factor, spatial_dims)
    return layer


def _set_bilinear(layer: nn.Module, factor: int, spatial_dims: int) -> None:
    """Set an upsampling layer's ``(K, K, 2 factor, ...)`` weight to bilinear interpolation."""
    weight = layer.get_parameter("weight")
    with torch.no_grad():
        weight.copy_(bilinear_kernel(weight.shape[0], 2 * factor, spatial_dims))


def _zero(layer: nn.Module) -> None:
    """Set every parameter of ``layer`` (a score layer's weight and bias) to zero."""
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.zero_()


def _score_layer(in_channels: int, num_classes: int, spatial_dims: int) -> nn.Module:
    """1x1 convolution to class scores, zero weight and bias."""
    layer = conv_layer(spatial_dims)(in_channels, num_classes, 1)
    _zero(layer)
    return layer


class _FCN(nn.Module):
    """Backbone, fc6/fc7 and ``score_fr`` shared by FCN-32s/16s/8s; see the module docstring."""

    block1: nn.Sequential
    block2: nn.Sequential
    block3: nn.Sequential
    block4: nn.Sequential
    block5: nn.Sequential
    divisor = 1  # no divisibility constraint: forward pads to OUTPUT_STRIDE itself
    min_size = 1
    output_stride = OUTPUT_STRIDE

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        base_features: int = 64,
        fc_channels: int = 4096,
        fc_kernel_size: int = 7,
        norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("num_classes", num_classes)
        check_spatial_dims(spatial_dims)
        check_int("base_features", base_features)
        check_int("fc_channels", fc_channels)
        check_int("fc_kernel_size", fc_kernel_size)
        if fc_kernel_size % 2 == 0:
            raise ValueError(
                f"fc_kernel_size must be odd (symmetric same padding), got {fc_kernel_size}; "
                f"use {fc_kernel_size + 1} or {fc_kernel_size - 1}"
            )
        check_bool("norm", norm)
        dropout = check_dropout(dropout)

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.model_kwargs: dict[str, Any] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "spatial_dims": spatial_dims,
            "base_features": base_features,
            "fc_channels": fc_channels,
            "fc_kernel_size": fc_kernel_size,
            "norm": norm,
            "dropout": dropout,
        }
        widths = [base_features * w for w in VGG16_WIDTHS]
        self.pool3_channels = widths[2]
        self.pool4_channels = widths[3]
        previous = in_channels
        for index, width in enumerate(widths, start=1):
            self.add_module(
                f"block{index}",
                _vgg_block(previous, width, index, spatial_dims=spatial_dims, norm=norm),
            )
            previous = width
        # Caffe's Dropout is element-wise: nn.Dropout, not the channel-wise Dropout2d/3d.
        self.fc6 = ConvNormAct(
            widths[4], fc_channels, spatial_dims=spatial_dims, kernel_size=fc_kernel_size, norm=norm
        )
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = ConvNormAct(
            fc_channels, fc_channels, spatial_dims=spatial_dims, kernel_size=1, norm=norm
        )
        self.drop7 = nn.Dropout(dropout)
        self.score_fr = conv_layer(spatial_dims)(fc_channels, num_classes, 1)
        he_init(self)
        _zero(self.score_fr)
        self._build_head()

    def _build_head(self) -> None:
        """Add the skip score and upsampling layers (one set per subclass)."""
        raise NotImplementedError

    def _pad_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
        """Check ``x``; zero-pad it to multiples of 32; return it and the crop back to ``x``."""
        check_input_shape(x, spatial_dims=self.spatial_dims, divisor=1, model=type(self).__name__)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"input of {type(self).__name__} must have {self.in_channels} channels "
                f"(in_channels), got shape {tuple(x.shape)}"
            )
        pads: list[tuple[int, int]] = []
        crop: list[slice] = [slice(None), slice(None)]
        for size in x.shape[2:]:
            extra = -int(size) % OUTPUT_STRIDE
            before = extra // 2
            pads.append((before, extra - before))
            crop.append(slice(before, before + int(size)))
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last axis first
        return (F.pad(x, flat) if any(flat) else x), tuple(crop)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded input ``(N, C, *S)``, S multiples of 32 -> pool3 ``(N, 4 b, *S/8)``,
        pool4 ``(N, 8 b, *S/16)`` and the coarse scores ``(N, num_classes, *S/32)``."""
        h = self.block2(self.block1(x))
        pool3 = self.block3(h)
        pool4 = self.block4(pool3)
        h = self.drop6(self.fc6(self.block5(pool4)))
        score = self.score_fr(self.drop7(self.fc7(h)))
        return pool3, pool4, score


class FCN32s(_FCN):
    """FCN-32s: coarse stride-32 scores, one learnable 32x bilinear upsampling.

    Args:
        in_channels: Input channels (slices of a 2.5D patch, or MRI contrasts).
        num_classes: Output classes K, background included.
        spatial_dims: 2 (``(N, C, Y, X)``) or 3 (``(N, C, Z, Y, X)``; trilinear upsampling).
        base_features: Width of block 1; blocks 1-5 have (1, 2, 4, 8, 8) x this (VGG16: 64).
        fc_channels: Width of fc6 and fc7 (VGG16: 4096).
        fc_kernel_size: Odd kernel size of fc6 (VGG16: 7). Small patches and 3D models want
            1 or 3: a 40x40 patch gives a 2x2 stride-32 map, and a 7x7x7 fc6 alone has
            7^3 x 512 x 4096 = 719M weights.
        norm: Batch norm after every convolution except the score and upsampling layers
            (VGG16 had none). With ``norm=True``, training needs more than one value per
            channel at fc6: batch size > 1 or an input larger than 32 on some axis.
        dropout: Element-wise dropout probability after fc6 and fc7 (paper: 0.5).

    Shapes: ``forward`` takes float32 ``(N, in_channels, *spatial)`` of any size >= 1 and
    returns raw logits float32 ``(N, num_classes, *spatial)``, same spatial size.

    Example:
        >>> model = FCN32s(in_channels=3, num_classes=4, base_features=4, fc_channels=8)
        >>> model(torch.zeros(2, 3, 37, 45)).shape
        torch.Size([2, 4, 37, 45])
    """

    def _build_head(self) -> None:
        self.upscore = _upsampler(self.num_classes, 32, self.spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image float32 ``(N, in_channels, *spatial)`` -> logits ``(N, K, *spatial)``."""
        x, crop = self._pad_input(x)
        _, _, score = self._encode(x)
        return self.upscore(score)[crop]


class FCN16s(_FCN):
    """FCN-16s: stride-32 scores upsampled 2x, plus pool4 scores, upsampled 16x.

    Arguments, shapes and input sizes as :class:`FCN32s`. ``score_pool4`` (1x1 conv on
    pool4) starts at zero, ``upscore2`` and ``upscore16`` at bilinear interpolation.

    Example:
        >>> model = FCN16s(in_channels=3, num_classes=4, base_features=4, fc_channels=8)
        >>> model(torch.zeros(1, 3, 40, 40)).shape
        torch.Size([1, 4, 40, 40])
    """

    def _build_head(self) -> None:
        k, d = self.num_classes, self.spatial_dims
        self.score_pool4 = _score_layer(self.pool4_channels, k, d)
        self.upscore2 = _upsampler(k, 2, d)
        self.upscore16 = _upsampler(k, 16, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image float32 ``(N, in_channels, *spatial)`` -> logits ``(N, K, *spatial)``."""
        x, crop = self._pad_input(x)
        _, pool4, score = self._encode(x)
        fuse_pool4 = self.upscore2(score) + self.score_pool4(pool4)  # (N, K, *S/16)
        return self.upscore16(fuse_pool4)[crop]

    @classmethod
    def from_fcn32s(cls, fcn32s: FCN32s) -> FCN16s:
        """A new FCN-16s with ``fcn32s``'s options, weights, device, dtype and mode.

        See :func:`init_fcn16s_from_fcn32s`.
        """
        if not isinstance(fcn32s, FCN32s):
            raise TypeError(f"fcn32s must be an FCN32s, got {type(fcn32s).__name__}")
        return init_fcn16s_from_fcn32s(_like(cls(**fcn32s.model_kwargs), fcn32s), fcn32s)


class FCN8s(_FCN):
    """FCN-8s: FCN-16s's stride-16 fusion upsampled 2x, plus pool3 scores, upsampled 8x.

    Arguments, shapes and input sizes as :class:`FCN32s`. ``score_pool4`` and
    ``score_pool3`` start at zero, ``upscore2``, ``upscore_pool4`` and ``upscore8`` at
    bilinear interpolation.

    Example:
        >>> model = FCN8s(in_channels=1, num_classes=2, spatial_dims=3, base_features=2,
        ...               fc_channels=4, fc_kernel_size=1)
        >>> model(torch.zeros(1, 1, 5, 6, 7)).shape
        torch.Size([1, 2, 5, 6, 7])
    """

    def _build_head(self) -> None:
        k, d = self.num_classes, self.spatial_dims
        self.score_pool4 = _score_layer(self.pool4_channels, k, d)
        self.score_pool3 = _score_layer(self.pool3_channels, k, d)
        self.upscore2 = _upsampler(k, 2, d)
        self.upscore_pool4 = _upsampler(k, 2, d)
        self.upscore8 = _upsampler(k, 8, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image float32 ``(N, in_channels, *spatial)`` -> logits ``(N, K, *spatial)``."""
        x, crop = self._pad_input(x)
        pool3, pool4, score = self._encode(x)
        fuse_pool4 = self.upscore2(score) + self.score_pool4(pool4)  # (N, K, *S/16)
        fuse_pool3 = self.upscore_pool4(fuse_pool4) + self.score_pool3(pool3)  # (N, K, *S/8)
        return self.upscore8(fuse_pool3)[crop]

    @classmethod
    def from_fcn16s(cls, fcn16s: FCN16s) -> FCN8s:
        """A new FCN-8s with ``fcn16s``'s options, weights, device, dtype and mode.

        See :func:`init_fcn8s_from_fcn16s`.
        """
        if not isinstance(fcn16s, FCN16s):
            raise TypeError(f"fcn16s must be an FCN16s, got {type(fcn16s).__name__}")
        return init_fcn8s_from_fcn16s(_like(cls(**fcn16s.model_kwargs), fcn16s), fcn16s)


_FCNType = TypeVar("_FCNType", bound=_FCN)


def _like(model: _FCNType, reference: _FCN) -> _FCNType:
    """``model`` moved to ``reference``'s device and dtype, in its train/eval mode."""
    weight = reference.score_fr.get_parameter("weight")
    return model.to(device=weight.device, dtype=weight.dtype).train(reference.training)


def _copy_shared_weights(fine: _FCN, coarse: _FCN, *, fine_name: str, coarse_name: str) -> None:
    """Copy every parameter and buffer of ``coarse`` whose name and shape exist in ``fine``."""
    if fine.model_kwargs != coarse.model_kwargs:
        diff = {
            key: (coarse.model_kwargs.get(key), fine.model_kwargs.get(key))
            for key in sorted(set(fine.model_kwargs) | set(coarse.model_kwargs))
            if fine.model_kwargs.get(key) != coarse.model_kwargs.get(key)
        }
        raise ValueError(
            f"{fine_name} must have the options of {coarse_name}, got ({coarse_name}, {fine_name}) "
            f"values {diff}; build it with {type(fine).__name__}(**{coarse_name}.model_kwargs)"
        )
    target = fine.state_dict()
    with torch.no_grad():
        for key, value in coarse.state_dict().items():
            if key in target and target[key].shape == value.shape:
                target[key].copy_(value)


def init_fcn16s_from_fcn32s(fcn16s: FCN16s, fcn32s: FCN32s) -> FCN16s:
    """Initialise ``fcn16s`` in place from a trained ``fcn32s`` (paper Sec. 4.2); return it.

    Copies the backbone, fc6/fc7 and ``score_fr`` (batch-norm statistics included); the
    32x ``upscore`` has no counterpart. ``score_pool4`` is set to zero and ``upscore2``,
    ``upscore16`` to bilinear, so FCN-16s starts from FCN-32s's stride-32 scores exactly
    and the pool4 skip adds nothing.

    The outputs are not identical, and cannot be with the paper's layers: bilinear 2x then
    bilinear 16x is not bilinear 32x (the 2x kernel, 1D ``[1, 3, 3, 1] / 4``, is the 32x
    kernel's ``[1, 2, 1] / 2`` convolved with ``[1, 1] / 2``). Exactly, while ``fcn32s``'s
    ``upscore`` is still bilinear: FCN-16s's logits are the mean of FCN-32s's logits shifted
    by -8 and +8 pixels along each axis (2, or 8 in 3D, shifted copies), at every pixel at
    least 8 pixels inside the padded input (see the module docstring). A learned ``upscore``
    is not reproduced, only the scores it upsampled.

    Raises:
        TypeError: if the arguments are not an FCN16s and an FCN32s.
        ValueError: if their options (``model_kwargs``) differ.
    """
    if not isinstance(fcn16s, FCN16s) or not isinstance(fcn32s, FCN32s):
        raise TypeError(
            f"fcn16s and fcn32s must be an FCN16s and an FCN32s, got "
            f"{type(fcn16s).__name__} and {type(fcn32s).__name__}"
        )
    _copy_shared_weights(fcn16s, fcn32s, fine_name="fcn16s", coarse_name="fcn32s")
    _zero(fcn16s.score_pool4)
    _set_bilinear(fcn16s.upscore2, 2, fcn16s.spatial_dims)
    _set_bilinear(fcn16s.upscore16, 16, fcn16s.spatial_dims)
    return fcn16s


def init_fcn8s_from_fcn16s(fcn8s: FCN8s, fcn16s: FCN16s) -> FCN8s:
    """Initialise ``fcn8s`` in place from a trained ``fcn16s`` (paper Sec. 4.2); return it.

    Copies the backbone, fc6/fc7, ``score_fr``, ``score_pool4`` and the 2x ``upscore2``
    (same names and shapes); ``upscore16`` has no counterpart. ``score_pool3`` is set to
    zero and ``upscore_pool4``, ``upscore8`` to bilinear, so FCN-8s starts from FCN-16s's
    stride-16 fused scores exactly and the pool3 skip adds nothing. As explained in
    :func:`init_fcn16s_from_fcn32s`: while ``fcn16s``'s ``upscore16`` is still bilinear,
    FCN-8s's logits are exactly the mean of FCN-16s's logits shifted by -4 and +4 pixels
    along each axis, at every pixel at least 4 pixels inside the padded input.

    Raises:
        TypeError: if the arguments are not an FCN8s and an FCN16s.
        ValueError: if their options (``model_kwargs``) differ.
    """
    if not isinstance(fcn8s, FCN8s) or not isinstance(fcn16s, FCN16s):
        raise TypeError(
            f"fcn8s and fcn16s must be an FCN8s and an FCN16s, got "
            f"{type(fcn8s).__name__} and {type(fcn16s).__name__}"
        )
    _copy_shared_weights(fcn8s, fcn16s, fine_name="fcn8s", coarse_name="fcn16s")
    _zero(fcn8s.score_pool3)
    _set_bilinear(fcn8s.upscore_pool4, 2, fcn8s.spatial_dims)
    _set_bilinear(fcn8s.upscore8, 8, fcn8s.spatial_dims)
    return fcn8s


__all__ = ["FCN8s", "FCN16s", "FCN32s", "init_fcn8s_from_fcn16s", "init_fcn16s_from_fcn32s"]
