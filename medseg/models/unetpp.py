"""UNet++ (Zhou, Rahman Siddiquee, Tajbakhsh, Liang, DLMIA 2018), 2D and 3D.

Nodes ``x^{i,j}`` sit at level ``i`` (resolution ``1 / 2**i``, ``base_features * 2**i``
channels) and column ``j``. Eq. (1) of the paper::

    x^{i,0} = H(D(x^{i-1,0}))                                     backbone, x^{0,0} = H(x)
    x^{i,j} = H([x^{i,0}, ..., x^{i,j-1}, U(x^{i+1,j-1})])        j > 0, i + j <= L

with H two 3x3 convolutions, each followed by (batch norm and) ReLU, D a 2x2 max-pooling
and U a 2x2 transposed convolution with stride 2 that maps level ``i + 1`` to the
channels of level ``i`` (the up-convolution of U-Net; every node has its own). Deep
supervision puts a 1x1 convolution head on each of ``x^{0,1}, ..., x^{0,L}``.

Inference modes (the paper's deep-supervision section): ``"accurate"`` averages the logits
of all heads; ``"fast"`` with ``prune_level=l`` computes only the nodes with ``i + j <= l``
(the levels below ``l`` and the columns right of ``l`` are never evaluated) and returns
head ``l``.

>>> import torch
>>> model = UNetPlusPlus(in_channels=3, num_classes=4, base_features=4).eval()
>>> [tuple(h.shape) for h in model.forward_heads(torch.zeros(1, 3, 40, 40))]
[(1, 4, 40, 40), (1, 4, 40, 40), (1, 4, 40, 40)]
>>> model.set_mode("fast", prune_level=1)(torch.zeros(1, 3, 40, 40)).shape
torch.Size([1, 4, 40, 40])
"""

from __future__ import annotations

import torch
from torch import nn

from medseg.models.blocks import (
    ConvNormAct,
    check_bool,
    check_input_shape,
    check_int,
    check_spatial_dims,
    conv_layer,
    conv_transpose_layer,
    he_init,
    he_init_up_convs,
    max_pool_layer,
)

MODES = ("accurate", "fast")
DEFAULT_DEPTH = 3


def _node_name(i: int, j: int) -> str:
    return f"x{i}_{j}"


def _conv_unit(
    in_channels: int, out_channels: int, *, spatial_dims: int, norm: bool
) -> nn.Sequential:
    """H: two 3x3 convolutions with "same" padding, each followed by (batch norm and) ReLU."""
    return nn.Sequential(
        ConvNormAct(in_channels, out_channels, spatial_dims=spatial_dims, norm=norm),
        ConvNormAct(out_channels, out_channels, spatial_dims=spatial_dims, norm=norm),
    )


class UNetPlusPlus(nn.Module):
    """UNet++ with nested dense skip pathways, deep supervision and pruned inference.

    Args:
        in_channels: Input channels (e.g. 3 neighbouring slices of a 2.5D patch).
        num_classes: Output classes K, background included.
        spatial_dims: 2 (``(N, C, Y, X)`` inputs) or 3 (``(N, C, Z, Y, X)``; 2x2x2 pooling
            and up-convolutions).
        base_features: Channels of level 0; level ``i`` has ``base_features * 2**i`` (the
            paper: 32, 64, 128, 256, 512).
        depth: L, the number of 2x2 poolings (the paper: 4). The default 3 is the most a
            40 x 40 patch allows; the top row then holds ``x^{0,1..3}``.
        norm: Batch norm after every 3x3 convolution of H (on by default; False gives the
            plain convolution + ReLU units of eq. (1)).
        deep_supervision: One 1x1 head on each of ``x^{0,1..L}``; if False, a single head
            on ``x^{0,L}`` (then only ``mode="accurate"`` exists).
        mode: ``"accurate"`` (average of all heads) or ``"fast"`` (pruned; needs
            ``prune_level``). Switch later with :meth:`set_mode`.
        prune_level: l in ``1..depth`` for ``mode="fast"``; None otherwise.

    Attributes:
        divisor: Every spatial input size must be a multiple of this (``2**depth``); the
            class value is the one of the default depth.

    Example:
        >>> import torch
        >>> net = UNetPlusPlus(in_channels=1, num_classes=2, spatial_dims=3, base_features=2)
        >>> net.eval()(torch.zeros(1, 1, 16, 24, 32)).shape
        torch.Size([1, 2, 16, 24, 32])
    """

    divisor: int = 2**DEFAULT_DEPTH

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        base_features: int = 32,
        depth: int = DEFAULT_DEPTH,
        norm: bool = True,
        deep_supervision: bool = True,
        mode: str = "accurate",
        prune_level: int | None = None,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("num_classes", num_classes)
        check_spatial_dims(spatial_dims)
        check_int("base_features", base_features)
        check_int("depth", depth)
        check_bool("norm", norm)
        check_bool("deep_supervision", deep_supervision)

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.depth = depth
        self.deep_supervision = deep_supervision
        self.divisor = 2**depth
        self.set_mode(mode, prune_level)
        features = [base_features * 2**i for i in range(depth + 1)]

        # nodes["x{i}_{j}"] is H of x^{i,j}; up["x{i}_{j}"] is the U feeding it (j > 0).
        self.pool = max_pool_layer(spatial_dims)(kernel_size=2, stride=2)
        self.nodes = nn.ModuleDict()
        self.up = nn.ModuleDict()
        up_conv = conv_transpose_layer(spatial_dims)
        for i in range(depth + 1):
            self.nodes[_node_name(i, 0)] = _conv_unit(
                in_channels if i == 0 else features[i - 1],
                features[i],
                spatial_dims=spatial_dims,
                norm=norm,
            )
        for j in range(1, depth + 1):
            for i in range(depth - j + 1):
                self.up[_node_name(i, j)] = up_conv(
                    features[i + 1], features[i], kernel_size=2, stride=2
                )
                # input: j same-level nodes + the up-sampled node, features[i] channels each
                self.nodes[_node_name(i, j)] = _conv_unit(
                    (j + 1) * features[i], features[i], spatial_dims=spatial_dims, norm=norm
                )
        head_columns = range(1, depth + 1) if deep_supervision else [depth]
        self.heads = nn.ModuleList(
            [
                conv_layer(spatial_dims)(features[0], num_classes, kernel_size=1)
                for _ in head_columns
            ]
        )
        he_init(self)
        he_init_up_convs(self)

    def set_mode(self, mode: str, prune_level: int | None = None) -> UNetPlusPlus:
        """Choose what :meth:`forward` returns; the weights are untouched.

        Args:
            mode: ``"accurate"`` (average of all heads' logits) or ``"fast"`` (pruned
                network, head ``prune_level``).
            prune_level: l in ``1..depth`` for ``"fast"``; must be None for ``"accurate"``.

        Returns:
            The model itself, for chaining.

        Raises:
            ValueError: for an unknown mode, a missing or out-of-range ``prune_level``, or
                ``"fast"`` without deep supervision.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "accurate" and prune_level is not None:
            raise ValueError(
                f"prune_level must be None for mode='accurate', got {prune_level!r}; "
                "use mode='fast' for pruned inference"
            )
        if mode == "fast":
            if not self.deep_supervision:
                raise ValueError(
                    "mode must be 'accurate' for deep_supervision=False, got 'fast'; pruned "
                    "inference needs the heads of deep supervision"
                )
            self._check_prune_level(prune_level)
        self.mode = mode
        self.prune_level = prune_level
        return self

    def _check_prune_level(self, prune_level: object) -> int:
        if (
            isinstance(prune_level, bool)
            or not isinstance(prune_level, int)
            or not 1 <= prune_level <= self.depth
        ):
            raise ValueError(
                f"prune_level must be an int in 1..{self.depth} (depth) for mode='fast', "
                f"got {prune_level!r}"
            )
        return prune_level

    def _check_input(self, x: torch.Tensor) -> None:
        check_input_shape(
            x, spatial_dims=self.spatial_dims, divisor=self.divisor, model="UNetPlusPlus"
        )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"input channels of UNetPlusPlus must be in_channels={self.in_channels}, got "
                f"{x.shape[1]} (input shape {tuple(x.shape)})"
            )

    def _top_row(self, x: torch.Tensor, level: int) -> list[torch.Tensor]:
        """``[x^{0,1}, ..., x^{0,level}]``, evaluating only the nodes with ``i + j <= level``."""
        nodes: dict[tuple[int, int], torch.Tensor] = {}
        h = x
        for i in range(level + 1):  # backbone x^{i,0} = H(D(x^{i-1,0}))
            h = self.nodes[_node_name(i, 0)](h if i == 0 else self.pool(h))
            nodes[i, 0] = h
        for j in range(1, level + 1):
            for i in range(level - j + 1):
                below = self.up[_node_name(i, j)](nodes[i + 1, j - 1])
                same_level = [nodes[i, k] for k in range(j)]
                # (N, (j + 1) * features[i], *spatial / 2**i) -> (N, features[i], ...)
                nodes[i, j] = self.nodes[_node_name(i, j)](torch.cat([*same_level, below], dim=1))
        return [nodes[0, j] for j in range(1, level + 1)]

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head, for the deep-supervision loss.

        Args:
            x: Images, float32, ``(N, in_channels, *spatial)``, spatial ``(Y, X)`` or
                ``(Z, Y, X)`` with sizes multiples of ``divisor``.

        Returns:
            ``depth`` tensors (heads on ``x^{0,1}, ..., x^{0,L}``, in that order), each
            float32 logits ``(N, num_classes, *spatial)``; a single one without deep
            supervision.

        Raises:
            ValueError: for a wrong number of dimensions or channels, or sizes that are not
                multiples of ``divisor`` (the message gives the padded shape).
        """
        self._check_input(x)
        top = self._top_row(x, self.depth)
        if not self.deep_supervision:
            return [self.heads[0](top[-1])]
        return [head(node) for head, node in zip(self.heads, top, strict=True)]

    def forward_pruned(self, x: torch.Tensor, prune_level: int) -> torch.Tensor:
        """Logits of head ``prune_level`` of the network pruned at that level.

        Only the ``(l + 1) * (l + 2) / 2`` nodes with ``i + j <= l`` are evaluated; in eval
        mode the result equals ``forward_heads(x)[l - 1]``.

        Args:
            x: Images, float32, ``(N, in_channels, *spatial)`` (as :meth:`forward_heads`).
            prune_level: l in ``1..depth``.

        Returns:
            Logits, float32, ``(N, num_classes, *spatial)``.
        """
        if not self.deep_supervision:
            raise ValueError(
                "deep_supervision must be True for pruned inference, got False; "
                "use forward() or forward_heads()"
            )
        level = self._check_prune_level(prune_level)
        self._check_input(x)
        return self.heads[level - 1](self._top_row(x, level)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits of the configured mode (see :meth:`set_mode`).

        Args:
            x: Images, float32, ``(N, in_channels, *spatial)``, spatial ``(Y, X)`` or
                ``(Z, Y, X)`` with sizes multiples of ``divisor``.

        Returns:
            Logits, float32, ``(N, num_classes, *spatial)``: the mean of all heads
            (``"accurate"``) or head ``prune_level`` of the pruned net (``"fast"``).

        Raises:
            ValueError: for a wrong number of dimensions or channels, or sizes that are not
                multiples of ``divisor`` (the message gives the padded shape).
        """
        if self.mode == "fast":
            return self.forward_pruned(x, self._check_prune_level(self.prune_level))
        heads = self.forward_heads(x)
        if len(heads) == 1:
            return heads[0]
        return torch.stack(heads).mean(dim=0)
