"""SegNet: VGG16 encoder, decoder that upsamples with the encoder's max-pooling indices.

Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", IEEE TPAMI 39(12), 2481-2495, 2017.

Each encoder block is a run of 3x3 conv + BN + ReLU layers followed by a 2x2 stride-2
max-pooling that returns its argmax indices. The decoder mirrors the encoder: for every
encoder block, deepest first, a max-unpooling places each value back at the position of
the maximum it came from (all other positions are zero), and trainable conv + BN + ReLU
layers densify the sparse map. The last conv of a decoder block reduces to the width of
the next shallower block; at the top, the last decoder conv is the classifier (Caffe
SegNet's ``conv1_1_D``: 3x3, no BN/ReLU) and outputs the per-voxel logits.

Tensors are ``(N, C, *spatial)`` with spatial ``(Y, X)`` (``spatial_dims=2``) or
``(Z, Y, X)`` (``spatial_dims=3``); see ARCHITECTURE.md section 2.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from medseg.models.blocks import (
    ConvNormAct,
    check_input_shape,
    check_int,
    check_spatial_dims,
    conv_layer,
    he_init,
    max_pool_layer,
    max_unpool_layer,
)

# config -> (convs per block, width of each block in units of base_features).
# "full" is the 13-conv VGG16 encoder of the SegNet paper; "reduced" keeps its first
# three blocks, the SegNet used by the U-SegNet paper for 40x40 patches.
CONFIGS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "reduced": ((2, 2, 3), (1, 2, 4)),
    "full": ((2, 2, 3, 3, 3), (1, 2, 4, 8, 8)),
}


class SegNet(nn.Module):
    """SegNet (Badrinarayanan et al., TPAMI 2017) for 2D or 3D inputs.

    Layer widths for ``base_features=64`` (the paper's VGG16 widths):

    - ``config="reduced"`` (default): encoder blocks of 2, 2, 3 convs with 64, 128, 256
      channels and 3 poolings; decoder 256->256, 256->256, 256->128 | 128->128, 128->64 |
      64->64, 64->``num_classes``. 3,475,396 parameters for ``in_channels=3,
      num_classes=4`` in 2D, the SegNet count of the U-SegNet paper (Kumar et al. 2018).
    - ``config="full"``: the 13 + 13 conv VGG16 SegNet, blocks of 2, 2, 3, 3, 3 convs with
      64, 128, 256, 512, 512 channels and 5 poolings.

    Every conv has a bias (as in Caffe SegNet), also when followed by batch norm.
    Convolutions are He-initialised (:func:`~medseg.models.blocks.he_init`).

    Args:
        in_channels: Input channels (modalities, or neighbouring slices for 2.5D input).
        num_classes: Output channels K, background included.
        spatial_dims: 2 (inputs ``(N, C, Y, X)``) or 3 (inputs ``(N, C, Z, Y, X)``).
        config: ``"reduced"`` or ``"full"``, see above.
        base_features: Width of the top block; the others scale with it (64 gives the
            paper's widths).
        norm: Batch norm after every conv except the classifier.
        classifier_kernel_size: Kernel size of the classifier conv, odd (3 as in Caffe
            SegNet; 1 gives a per-voxel linear classifier).

    Attributes:
        divisor: Each spatial input size must be a multiple of this, ``2 ** num_pools``
            (8 for ``"reduced"``, 32 for ``"full"``; the class attribute is the default's).
        encoder: ``encoder[i]`` is block i (0 = top, full resolution), without its pooling.
        decoder: ``decoder[i]`` mirrors ``encoder[i]``; it runs after the unpooling with
            block i's indices. ``decoder[0]`` holds the top block's convs before the
            classifier.
        classifier: The last decoder conv, ``base_features -> num_classes``.

    Example:
        >>> from medseg.models.blocks import count_parameters
        >>> model = SegNet(in_channels=3, num_classes=4)
        >>> count_parameters(model)
        3475396
        >>> model(torch.zeros(1, 3, 40, 48)).shape
        torch.Size([1, 4, 40, 48])
    """

    divisor: int = 2 ** len(CONFIGS["reduced"][0])

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        config: str = "reduced",
        base_features: int = 64,
        norm: bool = True,
        classifier_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("num_classes", num_classes)
        check_int("base_features", base_features)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if config not in CONFIGS:
            raise ValueError(
                f"config must be one of {sorted(CONFIGS)}, got {config!r}; use 'reduced' for "
                "small patches (divisor 8) or 'full' for the VGG16 SegNet (divisor 32)"
            )
        check_int("classifier_kernel_size", classifier_kernel_size)
        if classifier_kernel_size % 2 == 0:
            raise ValueError(
                f"classifier_kernel_size must be odd, got {classifier_kernel_size}; use 3 or 1"
            )

        num_convs, multipliers = CONFIGS[config]
        widths = [base_features * m for m in multipliers]
        self.widths = tuple(widths)
        self.divisor = 2 ** len(num_convs)

        def conv(c_in: int, c_out: int) -> ConvNormAct:
            return ConvNormAct(c_in, c_out, spatial_dims=spatial_dims, norm=norm)

        self.encoder = nn.ModuleList()
        c_in = in_channels
        for n, width in zip(num_convs, widths, strict=True):
            self.encoder.append(
                nn.Sequential(*[conv(c, width) for c in [c_in] + [width] * (n - 1)])
            )
            c_in = width

        # decoder[i]: n_i - 1 convs width -> width, then one to the next shallower width
        # (for i = 0 that last conv is the classifier, kept separate below).
        self.decoder = nn.ModuleList()
        for i, (n, width) in enumerate(zip(num_convs, widths, strict=True)):
            layers = [conv(width, width) for _ in range(n - 1)]
            if i > 0:
                layers.append(conv(width, widths[i - 1]))
            self.decoder.append(nn.Sequential(*layers))
        self.classifier = conv_layer(spatial_dims)(
            widths[0],
            num_classes,
            classifier_kernel_size,
            padding=classifier_kernel_size // 2,
        )

        # One pooling and one unpooling module serve every level (they have no weights).
        self.pool = max_pool_layer(spatial_dims)(kernel_size=2, stride=2, return_indices=True)
        self.unpool = max_unpool_layer(spatial_dims)(kernel_size=2, stride=2)
        he_init(self)

    def _merge_skip(self, level: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Combine decoder features with encoder features of the same level.

        SegNet has no skip connections, so this returns ``x``; :class:`USegNet` overrides it.
        Called after the first conv of every decoder block.

        Args:
            level: Block index, 0 = top (full resolution).
            x: Decoder features, float32, ``(N, widths[level], *spatial_level)``.
            skip: Encoder block ``level`` output before pooling, same shape as ``x``.

        Returns:
            Features for the rest of the decoder block, ``(N, widths[level], *spatial_level)``.
        """
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-voxel class logits.

        Args:
            x: Intensities, float32, ``(N, in_channels, *spatial)`` with spatial ``(Y, X)``
                or ``(Z, Y, X)``; every spatial size a multiple of :attr:`divisor`.

        Returns:
            Raw logits (no softmax), float32, ``(N, num_classes, *spatial)``.

        Raises:
            ValueError: for a wrong number of dimensions, or spatial sizes that are not
                multiples of :attr:`divisor` (the message gives the padded shape).
        """
        check_input_shape(
            x,
            spatial_dims=self.spatial_dims,
            divisor=self.divisor,
            model=type(self).__name__,
            min_size=self.divisor,
        )
        skips: list[torch.Tensor] = []  # encoder outputs before pooling, top first
        indices: list[torch.Tensor] = []  # argmax positions of each pooling
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x, idx = self.pool(x)  # (N, C, *s) -> (N, C, *s / 2)
            indices.append(idx)
        for level in reversed(range(len(self.decoder))):
            skip = skips[level]
            # (N, C, *s / 2) -> (N, C, *s): sparse, non-zero only at the pooled maxima
            x = self.unpool(x, indices[level], output_size=skip.shape[2:])
            block = cast(nn.Sequential, self.decoder[level])
            x = block[0](x)
            x = self._merge_skip(level, x, skip)
            x = block[1:](x)
        return self.classifier(x)
