"""U-SegNet: SegNet plus U-Net-style skip connections at the uppermost level(s).

Kumar, Nagar, Arora, Gupta, "U-SegNet: Fully Convolutional Neural Network based Automated
Brain tissue segmentation Tool", ICIP 2018 (arXiv:1806.04429).

The network is the reduced SegNet of :mod:`medseg.models.segnet` (three VGG16 blocks for
40x40 patches), with one change at the top level: after unpooling and the 64 -> 64
conv + BN + ReLU, the decoder features are concatenated with the top encoder block's
output (before pooling), a 1x1 conv with ReLU brings the 128 channels back to 64, and
the 3x3 classifier follows. ``skips=2`` (the paper's U-SegNet-2) adds the same kind of
skip at the second level, after that decoder block's first conv (1x1 conv 256 -> 128).
"""

from __future__ import annotations

import torch
from torch import nn

from medseg.models.blocks import ConvNormAct, check_int, he_init
from medseg.models.segnet import SegNet


class USegNet(SegNet):
    """U-SegNet (Kumar et al., ICIP 2018): SegNet with skip connections at the top levels.

    Everything except the skips is :class:`~medseg.models.segnet.SegNet`, so the two share
    parameter names and a SegNet state dict loads into a U-SegNet with only the ``fuse.*``
    keys missing. For ``in_channels=3, num_classes=4`` in 2D, U-SegNet has 3,483,652
    parameters (the paper's count): SegNet's 3,475,396 plus 8,256 for the 1x1 conv
    128 -> 64 with bias.

    Args:
        in_channels: Input channels (modalities, or neighbouring slices for 2.5D input).
        num_classes: Output channels K, background included.
        spatial_dims: 2 (inputs ``(N, C, Y, X)``) or 3 (inputs ``(N, C, Z, Y, X)``).
        config: ``"reduced"`` (the paper's network, divisor 8) or ``"full"`` (VGG16
            SegNet, divisor 32), see :class:`~medseg.models.segnet.SegNet`.
        skips: Number of levels with a skip, counted from the top: 1 is U-SegNet, 2 is
            U-SegNet-2; at most the number of encoder blocks (3 or 5).
        base_features: Width of the top block; the others scale with it (64 = paper).
        norm: Batch norm after every SegNet conv except the classifier (the skip's 1x1
            conv has none, as in the paper's count).
        classifier_kernel_size: Kernel size of the classifier conv, odd (3 = paper).

    Attributes:
        fuse: ``fuse[i]`` is the 1x1 conv + ReLU at level i (0 = top) that maps the
            concatenation ``[decoder, encoder]`` (2 * width channels) to width channels.

    Example:
        >>> from medseg.models.blocks import count_parameters
        >>> model = USegNet(in_channels=3, num_classes=4)
        >>> count_parameters(model)
        3483652
        >>> model(torch.zeros(1, 3, 40, 40)).shape
        torch.Size([1, 4, 40, 40])
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        config: str = "reduced",
        skips: int = 1,
        base_features: int = 64,
        norm: bool = True,
        classifier_kernel_size: int = 3,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            num_classes=num_classes,
            spatial_dims=spatial_dims,
            config=config,
            base_features=base_features,
            norm=norm,
            classifier_kernel_size=classifier_kernel_size,
        )
        check_int("skips", skips)
        if skips > len(self.widths):
            raise ValueError(
                f"skips must be at most the number of encoder blocks ({len(self.widths)} for "
                f"config={config!r}), got {skips}; use 1 (U-SegNet) or 2 (U-SegNet-2)"
            )
        self.fuse = nn.ModuleList(
            ConvNormAct(2 * w, w, spatial_dims=spatial_dims, kernel_size=1, norm=False)
            for w in self.widths[:skips]
        )
        he_init(self.fuse)

    def _merge_skip(self, level: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Concatenate ``[x, skip]`` and fuse with a 1x1 conv + ReLU at the top ``skips`` levels.

        Args:
            level: Block index, 0 = top (full resolution).
            x: Decoder features after the block's first conv, float32,
                ``(N, widths[level], *spatial_level)``.
            skip: Encoder block ``level`` output before pooling, same shape as ``x``.

        Returns:
            ``(N, widths[level], *spatial_level)``; ``x`` unchanged at levels without a skip.
        """
        if level >= len(self.fuse):
            return x
        return self.fuse[level](torch.cat([x, skip], dim=1))  # (N, 2C, *s) -> (N, C, *s)
