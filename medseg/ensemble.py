"""Several networks and mirrored views combined into one predictor (ensembles and TTA).

:class:`CombinedPredictor` wraps one or more networks that take the same input (the same
checkpoint geometry: patch size, slices, channels, normalisation and classes) and, for
test-time augmentation (TTA), a set of in-plane mirrorings. For every batch it runs each
network on each mirrored view, mirrors the logits back and combines them per pixel:

* ``"mean"`` (default): the mean of the softmax probabilities over all networks and views,
  as nnU-Net ensembles folds and mirrorings.
* ``"vote"``: each network and view casts one vote per pixel for its argmax class; the
  class with the most votes wins, ties going to the higher mean probability. The
  probabilities it returns are ``(votes + mean_prob / 2) / (M + 1/2)`` for ``M`` voters,
  so their argmax is the vote winner and they still sum to 1.

It returns log-probabilities, which behave as logits downstream: the patch engine's
softmax of them gives back the combined probabilities exactly, and their argmax is the
combined label. Because the wrapper sits where a single network would, the overlapping
2.5D patches are still reassembled by majority vote over patches (or mean/Gaussian), the
``--fast`` whole-slice mode and the 2D overlap-tile mode work unchanged, and memory stays
bounded by the batch size.

Mirroring is exact for these networks: they are convolutional, and for valid-padding
U-Nets the output is the input's centred crop (the border lost is even on each axis), so
mirroring the output back aligns it with the unmirrored output pixel for pixel. Only
in-plane axes are mirrored (:func:`tta_flips`): ``"flip"`` along the axes mirrored in
training, ``"flip-all"`` along both; the 2.5D slice channels are not reversed, since the
networks were trained with slices in order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from medseg.options import COMBINE_MODES, TTA_MODES


def tta_flips(tta: str, trained_axes: Sequence[int] = (1, 2)) -> tuple[tuple[int, ...], ...]:
    """The mirrored views of a TTA mode, as tuples of tensor dims to flip on (N, C, Y, X).

    ``"flip"`` mirrors along the in-plane axes the network saw mirrored in training (as
    nnU-Net does: a brain model trained with left-right flips only is not asked to read
    upside-down anatomy), every combination of them; ``"flip-all"`` along both in-plane
    axes whatever the training did; ``"none"`` is the identity alone.

    Args:
        tta: ``"none"``, ``"flip"`` or ``"flip-all"``.
        trained_axes: The training augmentation's ``flip_axes`` (0, 1, 2 = z, y, x of the
            patch); z is ignored (the 2.5D slice channels are not reversed).

    Example:
        >>> tta_flips("flip", trained_axes=[2])
        ((), (-1,))
        >>> tta_flips("flip-all")
        ((), (-1,), (-2,), (-2, -1))
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    if tta == "none":
        return ((),)
    axes = {1, 2} if tta == "flip-all" else {int(a) for a in trained_axes} & {1, 2}
    views: list[tuple[int, ...]] = [()]
    if 2 in axes:
        views.append((-1,))
    if 1 in axes:
        views.append((-2,))
    if axes == {1, 2}:
        views.append((-2, -1))
    return tuple(views)


class CombinedPredictor(nn.Module):
    """One predictor made of several networks and mirrored views (module docstring).

    Args:
        models: Networks mapping ``(N, C_in, Y, X)`` float32 inputs to logits
            ``(N, K, Y', X')``; all take the same input and give the same output shape.
        flips: Mirrorings, each a tuple of dims to flip (see :func:`tta_flips`).
        combine: ``"mean"`` or ``"vote"``.

    The wrapper exposes the attributes medseg's inference code reads from a network:
    ``divisor`` (the least common multiple of the members'), and ``padding``,
    ``output_shape`` and ``depth`` of the first member (the members must agree on
    ``padding``).

    Example:
        >>> class Net(nn.Module):
        ...     def forward(self, x):  # class 1 on the right half of the image
        ...         ramp = torch.linspace(-1, 1, x.shape[-1]).expand_as(x[:, :1])
        ...         return torch.cat([-ramp, ramp], 1)
        >>> p = CombinedPredictor([Net()], flips=tta_flips("flip-all"))
        >>> out = p(torch.zeros(1, 1, 2, 4)).exp()  # mirrored views disagree in x
        >>> [round(v, 3) for v in out[0, 1, 0].tolist()]
        [0.5, 0.5, 0.5, 0.5]
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        *,
        flips: Sequence[tuple[int, ...]] = ((),),
        combine: str = "mean",
    ) -> None:
        super().__init__()
        if len(models) == 0:
            raise ValueError("models must hold at least one network, got none")
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
        flips = tuple(tuple(int(d) for d in f) for f in flips)
        if not flips:
            raise ValueError("flips must hold at least one view (() is the identity), got none")
        for f in flips:
            if any(d not in (-1, -2) for d in f):
                raise ValueError(f"flips must only mirror the in-plane dims -1 and -2, got {f}")
        paddings = {str(getattr(m, "padding", "same")) for m in models}
        if len(paddings) > 1:
            raise ValueError(
                f"models must share one padding to be combined, got {sorted(paddings)}"
            )
        self.members = nn.ModuleList(models)
        self.flips = flips
        self.combine = combine
        self.divisor = math.lcm(*(int(getattr(m, "divisor", 1)) for m in models))
        self.padding = paddings.pop()
        first = models[0]
        if hasattr(first, "depth"):
            self.depth = first.depth
        if callable(getattr(first, "output_shape", None)):
            self.output_shape = first.output_shape

    @property
    def num_views(self) -> int:
        """Networks x mirrored views: forward passes per batch."""
        return len(self.members) * len(self.flips)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Combined log-probabilities, float32 ``(N, K, Y', X')`` (module docstring)."""
        prob_sum: torch.Tensor | None = None
        votes: torch.Tensor | None = None
        for member in self.members:
            for dims in self.flips:
                view = x.flip(dims) if dims else x
                logits = member(view)
                if dims:
                    logits = logits.flip(dims)
                probs = logits.float().softmax(1)
                prob_sum = probs if prob_sum is None else prob_sum + probs
                if self.combine == "vote":
                    onehot = torch.zeros_like(probs).scatter_(1, probs.argmax(1, keepdim=True), 1)
                    votes = onehot if votes is None else votes + onehot
        assert prob_sum is not None  # at least one member and one view
        mean = prob_sum / self.num_views
        if self.combine == "vote":
            assert votes is not None
            mean = (votes + 0.5 * mean) / (self.num_views + 0.5)
        return mean.clamp_min(1e-12).log()


def check_compatible(checkpoints: Sequence[object], names: Sequence[str]) -> None:
    """Refuse to combine checkpoints that do not take and give the same arrays.

    Args:
        checkpoints: :class:`medseg.checkpoint.Checkpoint` objects.
        names: How the user named each one (for the error message).

    Raises:
        ValueError: they differ in image channels, classes, label names, normalisation,
            patch geometry or inference mode; the message names both models and the field.
    """
    fields = {
        "image channels": lambda c: c.image_channels,
        "classes": lambda c: c.num_classes,
        "label names": lambda c: dict(c.label_names),
        # a key a checkpoint lacks takes its default (checkpoints written before the "mask"
        # key existed normalised inside the head mask: "nonzero")
        "normalisation": lambda c: c.normalization_settings.to_dict(),
        "patch geometry": lambda c: {
            k: v
            for k, v in c.patch_settings.to_dict().items()
            if k in ("size", "stride", "num_slices", "slice_axis")
        },
        "inference mode": lambda c: c.inference_settings.mode,
    }
    first = checkpoints[0]
    for other, name in zip(checkpoints[1:], names[1:], strict=True):
        for what, get in fields.items():
            if get(other) != get(first):
                raise ValueError(
                    f"-m/--model {name!r} must have the same {what} as {names[0]!r} to be "
                    f"ensembled, got {get(other)!r} against {get(first)!r}"
                )
