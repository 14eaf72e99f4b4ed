"""DeepLab v2, VGG16 variant (Chen, Papandreou, Kokkinos, Murphy, Yuille, TPAMI 2017).

Backbone: VGG16's convolutions (2, 2, 3, 3, 3 convs of ``base_features`` x (1, 2, 4, 8, 8)
channels, 3x3, ReLU), with output stride 8 instead of 32: pool1-pool3 are 2x2 stride-2
max-pools, pool4 and pool5 are 3x3 max-pools with stride 1 and padding 1, and the conv5
layers, which follow the first stride-1 pool, are atrous (dilation 2) so that their field of
view is that of the strided net (paper Sec. 3.1).

Head (``head``):

- ``"largefov"`` (DeepLab-LargeFOV): fc6 3x3 conv with dilation ``largefov_rate`` (12) to
  ``head_channels`` (1024), fc7 1x1 to ``head_channels``, fc8 1x1 to ``num_classes``.
- ``"aspp"`` (DeepLab-ASPP-L): one such fc6-fc7-fc8 branch per rate in ``rates``
  (6, 12, 18, 24), applied in parallel to the pool5 features; the branch scores are summed.

fc6 and fc7 are followed by ReLU and element-wise dropout (0.5), as in the paper's nets. The
stride-8 scores are upsampled by bilinear (trilinear in 3D) interpolation with
``align_corners=False``. The paper's fully connected CRF post-processing is not part of the
model (it is a separate step on the softmax output); this module returns the CNN's logits.

Input sizes. pool1-pool3 use ``ceil_mode=True``, so every input voxel falls in a pooling
window and an axis of size ``S`` gives ``ceil(S / 8)`` stride-8 cells; cell ``v`` covers input
``[8 v, 8 v + 8)``, centre ``8 v + 3.5``. ``forward`` upsamples the scores by exactly 8
(``align_corners=False`` puts source cell ``v`` at output ``8 v + 3.5``, its centre) and crops
the ``8 ceil(S / 8)`` result to ``S``, so output pixel ``i`` is input pixel ``i`` for every
size. (Resizing straight to ``S`` would stretch the grid by ``S / (8 ceil(S / 8))`` whenever
``S`` is not a multiple of 8; for multiples of 8 both are the same.) The released DeepLab nets
pool 3x3 with stride 2 and padding 1 instead (cells centred on ``8 v``) and resize with
corner-aligned interpolation, exact on crops of size ``8 k + 1``; VGG16's 2x2 pools put the
centres where ``align_corners=False`` expects them, for every size. Every spatial size must
be at least ``min_size = 8``, one full stride-8 cell (a smaller axis is a single partial
cell, predicted as a constant); smaller inputs raise ``ValueError``.

Receptive field and small patches: a 40x40 patch gives a 5x5 stride-8 map, smaller than
every default rate (6-24), so each 3x3 atrous fc6 sees only its centre tap inside the map
(the others read the zero padding). For small patches, lower ``rates`` / ``largefov_rate``
(e.g. 1, 2, 3, 4).

Initialisation: He normal for every convolution except fc8, which draws from N(0, 0.01^2)
with zero bias as in the released DeepLab nets; no ImageNet weights are downloaded (load
converted ones with :func:`medseg.models.load_weights`).

Tensors are ``(N, C, *spatial)``, spatial ``(y, x)`` for ``spatial_dims=2`` and ``(z, y, x)``
for ``spatial_dims=3`` (ARCHITECTURE.md section 2). Logits are float32
``(N, num_classes, *spatial)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.blocks import (
    VGG16_NUM_CONVS,
    VGG16_WIDTHS,
    ConvNormAct,
    check_bool,
    check_dropout,
    check_input_shape,
    check_int,
    check_spatial_dims,
    conv_layer,
    he_init,
    max_pool_layer,
)

OUTPUT_STRIDE = 8
HEADS = ("largefov", "aspp")
FC8_INIT_STD = 0.01


def _vgg_block(
    in_channels: int, out_channels: int, index: int, *, spatial_dims: int, norm: bool
) -> nn.Sequential:
    """Block ``index`` (1-5): its 3x3 convolutions, then its pooling (see module docstring)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    dilation = 2 if index == 5 else 1  # conv5 follows pool4, whose stride 2 became 1
    for i in range(VGG16_NUM_CONVS[index - 1]):
        layers[f"conv{index}_{i + 1}"] = ConvNormAct(
            in_channels if i == 0 else out_channels,
            out_channels,
            spatial_dims=spatial_dims,
            dilation=dilation,
            norm=norm,
        )
    pool = max_pool_layer(spatial_dims)
    if index <= 3:
        layers[f"pool{index}"] = pool(2, stride=2, ceil_mode=True)
    else:
        layers[f"pool{index}"] = pool(3, stride=1, padding=1)
    return nn.Sequential(layers)


class AtrousBranch(nn.Sequential):
    """fc6 (3x3, dilation ``rate``), fc7 (1x1), each + ReLU + dropout, fc8 (1x1) to classes.

    Maps features ``(N, in_channels, *s)`` to scores ``(N, num_classes, *s)``.
    """

    def __init__(
        self,
        in_channels: int,
        head_channels: int,
        num_classes: int,
        *,
        rate: int,
        spatial_dims: int,
        norm: bool,
        dropout: float,
    ) -> None:
        fc8 = conv_layer(spatial_dims)(head_channels, num_classes, 1)
        super().__init__(
            OrderedDict(
                fc6=ConvNormAct(
                    in_channels, head_channels, spatial_dims=spatial_dims, dilation=rate, norm=norm
                ),
                drop6=nn.Dropout(dropout),
                fc7=ConvNormAct(
                    head_channels,
                    head_channels,
                    spatial_dims=spatial_dims,
                    kernel_size=1,
                    norm=norm,
                ),
                drop7=nn.Dropout(dropout),
                fc8=fc8,
            )
        )
        self.rate = rate


class DeepLab(nn.Module):
    """DeepLab v2 (VGG16): atrous backbone at output stride 8, LargeFOV or ASPP head.

    Args:
        in_channels: Input channels (slices of a 2.5D patch, or MRI contrasts).
        num_classes: Output classes K, background included.
        spatial_dims: 2 (``(N, C, Y, X)``) or 3 (``(N, C, Z, Y, X)``; trilinear upsampling).
        head: ``"largefov"`` (one branch, dilation ``largefov_rate``) or ``"aspp"`` (one
            branch per rate in ``rates``, scores summed: ASPP-L).
        base_features: Width of block 1; blocks 1-5 have (1, 2, 4, 8, 8) x this (VGG16: 64).
        head_channels: Width of fc6 and fc7 in each branch (paper: 1024).
        rates: Atrous rates of the ASPP branches (paper: 6, 12, 18, 24). Validated, but
            unused by the LargeFOV head.
        largefov_rate: Atrous rate of the LargeFOV fc6 (paper: 12). Unused by ASPP.
        norm: Batch norm after every convolution except fc8 (the paper's VGG had none).
            Training then needs more than one value per channel: batch size > 1 or an
            input larger than 8 on some axis.
        dropout: Element-wise dropout probability after fc6 and fc7 (paper: 0.5).

    Shapes: ``forward`` takes float32 ``(N, in_channels, *spatial)``, every spatial size
    >= 8 (``min_size``), and returns raw logits float32 ``(N, num_classes, *spatial)``, same
    spatial size. :meth:`forward_features` and :meth:`forward_head` give the stride-8 maps.

    Example:
        >>> model = DeepLab(in_channels=3, num_classes=4, head="aspp", base_features=4,
        ...                 head_channels=8, rates=[1, 2, 3, 4])
        >>> model(torch.zeros(2, 3, 37, 45)).shape
        torch.Size([2, 4, 37, 45])
        >>> model.forward_head(model.forward_features(torch.zeros(2, 3, 37, 45))).shape
        torch.Size([2, 4, 5, 6])
    """

    block1: nn.Sequential
    block2: nn.Sequential
    block3: nn.Sequential
    block4: nn.Sequential
    block5: nn.Sequential
    divisor = 1  # no divisibility constraint: forward crops the 8x upsampled scores itself
    min_size = OUTPUT_STRIDE
    output_stride = OUTPUT_STRIDE

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        head: str = "largefov",
        base_features: int = 64,
        head_channels: int = 1024,
        rates: Sequence[int] = (6, 12, 18, 24),
        largefov_rate: int = 12,
        norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("num_classes", num_classes)
        check_spatial_dims(spatial_dims)
        if head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")
        check_int("base_features", base_features)
        check_int("head_channels", head_channels)
        if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence) or not rates:
            raise ValueError(f"rates must be a non-empty list of ints, got {rates!r}")
        rates = [check_int(f"rates[{i}]", rate) for i, rate in enumerate(rates)]
        check_int("largefov_rate", largefov_rate)
        check_bool("norm", norm)
        check_dropout(dropout)

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.head = head
        self.model_kwargs: dict[str, Any] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "spatial_dims": spatial_dims,
            "head": head,
            "base_features": base_features,
            "head_channels": head_channels,
            "rates": list(rates),
            "largefov_rate": largefov_rate,
            "norm": norm,
            "dropout": float(dropout),
        }
        widths = [base_features * w for w in VGG16_WIDTHS]
        previous = in_channels
        for index, width in enumerate(widths, start=1):
            self.add_module(
                f"block{index}",
                _vgg_block(previous, width, index, spatial_dims=spatial_dims, norm=norm),
            )
            previous = width
        branch_rates = rates if head == "aspp" else [largefov_rate]
        self.branches = nn.ModuleList(
            AtrousBranch(
                widths[4],
                head_channels,
                num_classes,
                rate=rate,
                spatial_dims=spatial_dims,
                norm=norm,
                dropout=float(dropout),
            )
            for rate in branch_rates
        )
        he_init(self)
        for branch in self.branches:
            fc8 = branch.get_submodule("fc8")
            nn.init.normal_(fc8.get_parameter("weight"), std=FC8_INIT_STD)
            nn.init.zeros_(fc8.get_parameter("bias"))

    def _check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        check_input_shape(x, spatial_dims=self.spatial_dims, divisor=1, model=name)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"input of {name} must have {self.in_channels} channels (in_channels), "
                f"got shape {tuple(x.shape)}"
            )
        sizes = tuple(int(s) for s in x.shape[2:])
        if min(sizes) < self.min_size:
            padded = tuple(max(s, self.min_size) for s in sizes)
            raise ValueError(
                f"spatial size of the {name} input must be at least {self.min_size} (one "
                f"stride-{OUTPUT_STRIDE} cell) on every axis, got {sizes}; pad the input to "
                f"{padded}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(N, in_channels, *S)`` -> pool5 features ``(N, 8 base_features, *ceil(S/8))``."""
        self._check_input(x)
        for block in (self.block1, self.block2, self.block3, self.block4, self.block5):
            x = block(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pool5 features ``(N, C, *s)`` -> stride-8 logits ``(N, num_classes, *s)``.

        The sum of the branches' fc8 scores (one branch for LargeFOV).
        """
        logits = self.branches[0](features)
        for branch in self.branches[1:]:
            logits = logits + branch(features)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image float32 ``(N, in_channels, *S)`` -> logits ``(N, num_classes, *S)``."""
        logits = self.forward_head(self.forward_features(x))  # (N, K, *ceil(S / 8))
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        size = [OUTPUT_STRIDE * int(s) for s in logits.shape[2:]]
        logits = F.interpolate(logits, size=size, mode=mode, align_corners=False)
        crop = (slice(None), slice(None), *(slice(0, int(s)) for s in x.shape[2:]))
        return logits[crop]


__all__ = ["AtrousBranch", "DeepLab"]
