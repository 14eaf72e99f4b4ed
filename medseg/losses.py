"""Segmentation losses: weighted cross-entropy, soft Dice, Dice + CE and deep supervision.

Array conventions (ARCHITECTURE.md section 2): ``logits`` are raw network outputs, float32
``(N, K, *spatial)`` with ``K = num_classes >= 2`` (background included) and ``*spatial`` either
``(Y, X)`` or ``(Z, Y, X)``; ``target`` holds class indices, any integer dtype (converted
explicitly to int64 here, the only place labels become int64), ``(N, *spatial)`` or
``(N, 1, *spatial)`` (the singleton channel is squeezed); a pixel weight map ``weight`` is
float32 ``(N, *spatial)``, finite and ``>= 0``. Every loss validates its inputs once, at the
public entry point, and raises ``ValueError`` for bad shapes or values, ``TypeError`` for bad
types. Pixels whose target equals ``ignore_index`` (default -100, as torch) contribute nothing
to any loss: neither value nor gradient (FCN, Long et al. 2015: unlabelled pixels are masked
out of the loss).

Cross-entropy (U-Net, Ronneberger et al. 2015, eq. 1: ``E = sum_x w(x) log p_l(x)(x)``, with the
sign flipped so that the loss is minimised). With ``l(x) = -log softmax(logits)[target(x)]``,
the per-pixel weight ``w(x)`` (1 without a weight map), the class weight ``c_k`` (1 without
``class_weight``) and ``v(x) = 0`` for ignored pixels, 1 otherwise, the effective weight is
``a(x) = v(x) * c_target(x) * w(x)`` and

- ``reduction="mean"`` (default): ``sum_x a(x) l(x) / sum_x a(x)``, a weighted average;
- ``reduction="sum"``: ``sum_x a(x) l(x)``;
- ``reduction="none"``: ``a(x) l(x)``, float ``(N, *spatial)``.

Why the weighted average: (1) it is exactly torch's normalisation for class weights
(``F.cross_entropy(weight=c)`` divides by the sum of the target classes' weights), so a class
weight vector is the special case ``w(x) = c_target(x)`` of a weight map and both give the same
numbers as torch; (2) the loss scale does not depend on the overall magnitude of the map (U-Net's
border weights with ``w0 = 10`` would otherwise scale the effective learning rate by a factor
that changes from batch to batch); (3) an all-ones map gives exactly the plain mean
cross-entropy over the non-ignored pixels. Only relative weights matter: multiplying the whole
map by a constant leaves the loss unchanged, and doubling one pixel's weight counts it twice in
both sums. When every pixel is ignored or has weight 0 the denominator is 0 and the loss is 0
with zero gradients (torch returns NaN there); one empty patch cannot poison a training run.

Soft Dice wraps ``monai.losses.DiceLoss(softmax=True, to_onehot_y=True)``: per image ``n`` and
class ``k``, ``1 - (2 sum_x p_k y_k + smooth_nr) / (sum_x p_k + sum_x y_k + smooth_dr)`` with
``p = softmax(logits)`` and ``y`` the one-hot target (both zeroed at ignored pixels), averaged
over images and classes (``batch=True`` sums over the batch first, giving one Dice per class).

UNet++ (Zhou et al. 2018, eq. 2) is ``L = -(1/N) sum_b (1/2 Y_b . log Yhat_b + 2 Y_b . Yhat_b /
(Y_b + Yhat_b))`` for binary maps, applied to every deep-supervision head. Its multi-class form
here is ``0.5 * CE + 1.0 * (1 - soft Dice)`` per head (:class:`DiceCELoss` with ``lambda_ce=0.5``),
averaged over heads (:class:`DeepSupervisionLoss`). The mapping, exactly: with ``K = 2`` logits
``(0, z)``, ``softmax`` gives ``Yhat = sigmoid(z)`` for the foreground and the two-class CE is
the binary cross-entropy ``-(y log Yhat + (1 - y) log(1 - Yhat))``, averaged over pixels as the
authors' Keras code does (the printed dot product ``Y_b . log Yhat_b`` is a sum over pixels and
omits the ``(1 - y)`` term); with ``include_background=False`` the Dice term is the paper's
foreground Dice per image, averaged over the batch. So ``create_loss("unetpp")`` equals the
paper's loss plus the constant 1 (we use ``1 - Dice``, which is >= 0, instead of ``-Dice``; the
gradients are identical). For ``K > 2`` the CE is the softmax categorical cross-entropy and the
Dice term is the mean over the foreground classes. With ignored pixels the CE is a mean over the
non-ignored pixels of the whole batch rather than a mean of per-image means (the same when no
pixel is ignored, since all images of a batch have the same size).

>>> import torch
>>> logits = torch.zeros(1, 2, 2, 3)  # p = 0.5 for both classes everywhere
>>> target = torch.tensor([[[0, 1, 1], [0, 0, 1]]])
>>> round(create_loss("ce")(logits, target).item(), 4)  # ln 2
0.6931
"""

from __future__ import annotations

import abc
import difflib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss as MonaiDiceLoss
from torch import nn

from medseg._validate import check_positive

REDUCTIONS = ("mean", "sum", "none")
DEFAULT_IGNORE_INDEX = -100
"""Target value of pixels that contribute nothing (torch's default ``ignore_index``)."""


# ---------------------------------------------------------------------------------------------
# Validation (once, at public entry points)
# ---------------------------------------------------------------------------------------------


def _check_ignore_index(ignore_index: object) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    return ignore_index


def _check_reduction(reduction: object) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    return str(reduction)


def _check_class_weight(class_weight: object) -> torch.Tensor | None:
    """Class weights as a float32 ``(K,)`` tensor (or None), finite and ``>= 0``."""
    if class_weight is None:
        return None
    if isinstance(class_weight, torch.Tensor):
        weights = class_weight.detach().to(dtype=torch.float32)
    elif isinstance(class_weight, np.ndarray):  # e.g. weightmap.median_frequency_weights
        weights = torch.from_numpy(class_weight.astype(np.float32, copy=True))
    elif isinstance(class_weight, Sequence) and not isinstance(class_weight, str):
        try:
            weights = torch.tensor([float(c) for c in class_weight], dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"class_weight must be a sequence of K floats, got {class_weight!r}"
            ) from err
    else:
        raise TypeError(
            f"class_weight must be a sequence, ndarray or tensor of K floats, got {class_weight!r}"
        )
    if weights.ndim != 1 or weights.numel() < 2:
        raise ValueError(
            f"class_weight must be 1-D with one weight per class (K >= 2), "
            f"got shape {tuple(weights.shape)}"
        )
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(
            f"class_weight must be finite and >= 0, got {weights.tolist()}; "
            "use 0 to switch a class off"
        )
    return weights


def _check_logits(logits: object, name: str = "logits") -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor (N, K, *spatial), got {type(logits).__name__}"
        )
    if not logits.is_floating_point():
        raise TypeError(
            f"{name} must be a float tensor (N, K, *spatial), got dtype {logits.dtype}; "
            "pass raw network outputs"
        )
    if logits.ndim not in (4, 5):
        raise ValueError(
            f"{name} must be (N, K, Y, X) or (N, K, Z, Y, X), got shape {tuple(logits.shape)}"
        )
    if logits.shape[1] < 2:
        raise ValueError(
            f"{name} must have K >= 2 class channels (background included), got shape "
            f"{tuple(logits.shape)}; for binary segmentation use K = 2"
        )
    return logits


def _check_target(
    target: object, logits: torch.Tensor, *, ignore_index: int, class_weight: torch.Tensor | None
) -> torch.Tensor:
    """The target as int64 ``(N, *spatial)``, after all shape and value checks."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor (N, *spatial), got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must be an integer tensor of class indices, got dtype {target.dtype}; "
            "pass the label map, not probabilities or one-hot masks"
        )
    logits_shape = tuple(logits.shape)
    expected = (logits_shape[0], *logits_shape[2:])
    shape = tuple(target.shape)
    if shape == (logits_shape[0], 1, *logits_shape[2:]):
        target = target[:, 0]  # (N, 1, *spatial) -> (N, *spatial)
    elif shape != expected:
        raise ValueError(
            f"target must have shape {expected} or {(logits_shape[0], 1, *logits_shape[2:])} "
            f"to match logits shape {logits_shape}, got target shape {shape}; "
            "crop or resample one of them (one-hot targets are not accepted: pass class indices)"
        )
    target = target.to(torch.int64)
    num_classes = logits_shape[1]
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        value = int(target[bad][0])
        raise ValueError(
            f"target values must be class indices in [0, {num_classes - 1}] or ignore_index "
            f"{ignore_index}, got value {value} ({int(bad.sum())} pixels); "
            "check num_classes or set ignore_index"
        )
    if class_weight is not None and class_weight.numel() != num_classes:
        raise ValueError(
            f"class_weight must have one weight per class ({num_classes}, from logits shape "
            f"{logits_shape}), got {class_weight.numel()}"
        )
    return target


def _check_weight(weight: object, target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor (N, *spatial), got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(
            f"weight must be a float32 weight map (N, *spatial), got dtype {weight.dtype}"
        )
    if weight.shape != target.shape:
        raise ValueError(
            f"weight must have shape {tuple(target.shape)} to match logits shape "
            f"{tuple(logits.shape)}, got weight shape {tuple(weight.shape)}; "
            "a weight map has no class axis"
        )
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight must be finite, got NaN or inf values; recompute the weight map")
    if bool((weight < 0).any()):
        raise ValueError(
            f"weight must be >= 0, got minimum {float(weight.min())}; recompute the weight map"
        )
    return weight


# ---------------------------------------------------------------------------------------------
# Unchecked kernels (inputs already validated)
# ---------------------------------------------------------------------------------------------


def _cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    class_weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
) -> torch.Tensor:
    # (N, K, *spatial), (N, *spatial) -> (N, *spatial); 0 (and zero gradient) at ignored pixels
    nll = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    valid = target != ignore_index
    scale = valid.to(nll.dtype)  # a(x) = v(x) * c_target(x) * w(x)
    if class_weight is not None:
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        scale = scale * class_weight.to(device=nll.device, dtype=nll.dtype)[safe_target]
    if weight is not None:
        scale = scale * weight.to(dtype=nll.dtype)
    weighted = scale * nll
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "sum":
        return total
    # sum a = 0 means every term of the numerator is 0 too: 0 / tiny = 0 instead of NaN
    return total / scale.sum().clamp_min(torch.finfo(nll.dtype).tiny)


def _monai_dice(
    include_background: object,
    ignore_index: int,
    smooth_nr: object,
    smooth_dr: object,
    batch: object,
) -> MonaiDiceLoss:
    """MONAI's soft Dice on logits and labels, the smoothing terms checked first."""
    return MonaiDiceLoss(
        include_background=bool(include_background),
        to_onehot_y=True,
        softmax=True,
        reduction="mean",
        smooth_nr=check_positive(smooth_nr, "smooth_nr", allow_zero=True),
        smooth_dr=check_positive(smooth_dr, "smooth_dr"),
        batch=bool(batch),
        ignore_index=ignore_index,
    )


# ---------------------------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------------------------


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    class_weight: Sequence[float] | torch.Tensor | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> torch.Tensor:
    """Softmax cross-entropy with a per-pixel weight map and/or class weights (U-Net eq. 1).

    The normalisation is described in the module docstring: ``mean`` is
    ``sum a(x) l(x) / sum a(x)`` with ``a(x) = v(x) c_target(x) w(x)``, which equals
    ``F.cross_entropy(logits, target, weight=class_weight, ignore_index=ignore_index)`` when no
    map is given, and the plain mean cross-entropy for an all-ones map.

    Args:
        logits: Raw scores, float32, ``(N, K, Y, X)`` or ``(N, K, Z, Y, X)``.
        target: Class indices in ``[0, K)`` or ``ignore_index``, integer,
            ``(N, *spatial)`` or ``(N, 1, *spatial)``.
        weight: Pixel weight map ``w(x)``, float32 ``(N, *spatial)``, finite and ``>= 0``
            (e.g. U-Net's class-balance + border map); None for all ones.
        class_weight: Per-class weights ``c_k``, K floats ``>= 0`` (e.g. SegNet's
            median-frequency balancing ``median_freq / freq_k``, as returned by
            ``medseg.weightmap.median_frequency_weights``); list, ndarray or tensor, ``(K,)``;
            None for all ones.
        ignore_index: Target value whose pixels contribute nothing.
        reduction: ``"mean"`` (weighted average, scalar), ``"sum"`` (scalar) or ``"none"``
            (weighted per-pixel losses, float ``(N, *spatial)``, 0 at ignored pixels).

    Returns:
        The loss, float (dtype of ``logits``), a scalar tensor or ``(N, *spatial)``.

    Raises:
        TypeError: If an input is not a tensor or has the wrong dtype kind.
        ValueError: On mismatched shapes, target values outside ``[0, K)`` other than
            ``ignore_index``, negative or non-finite weights, or a bad ``reduction``.

    Example:
        >>> logits = torch.zeros(1, 2, 1, 2)  # p = 0.5 everywhere, so l(x) = ln 2
        >>> target = torch.tensor([[[0, 1]]])
        >>> weight = torch.tensor([[[1.0, 3.0]]])
        >>> round(weighted_cross_entropy(logits, target, weight).item(), 4)
        0.6931
        >>> per_pixel = weighted_cross_entropy(logits, target, weight, reduction="none")
        >>> [round(v, 4) for v in per_pixel.flatten().tolist()]  # w(x) * ln 2
        [0.6931, 2.0794]
    """
    ignore_index = _check_ignore_index(ignore_index)
    reduction = _check_reduction(reduction)
    class_weight_tensor = _check_class_weight(class_weight)
    logits = _check_logits(logits)
    target = _check_target(
        target, logits, ignore_index=ignore_index, class_weight=class_weight_tensor
    )
    if weight is not None:
        weight = _check_weight(weight, target, logits)
    return _cross_entropy(logits, target, weight, class_weight_tensor, ignore_index, reduction)


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    include_background: bool = True,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
) -> torch.Tensor:
    """Multi-class soft Dice loss on softmax probabilities (wraps MONAI's ``DiceLoss``).

    Per image ``n`` and class ``k`` (or per class over the batch with ``batch=True``):
    ``1 - (2 sum p y + smooth_nr) / (sum p + sum y + smooth_dr)``, then the mean over images and
    classes; ``p = softmax(logits)`` and the one-hot ``y`` are both 0 at ignored pixels.

    Args:
        logits: Raw scores, float32, ``(N, K, Y, X)`` or ``(N, K, Z, Y, X)``.
        target: Class indices in ``[0, K)`` or ``ignore_index``, integer,
            ``(N, *spatial)`` or ``(N, 1, *spatial)``.
        include_background: Whether class 0 is scored; False averages over classes 1..K-1.
        ignore_index: Target value whose pixels contribute nothing.
        smooth_nr: Added to the numerator, ``>= 0``.
        smooth_dr: Added to the denominator, ``> 0`` (keeps classes absent from both the
            prediction and the target finite: their Dice is ``smooth_nr / smooth_dr``).
        batch: Sum over the batch before the ratio (one Dice per class) instead of per image.

    Returns:
        The loss, a float scalar tensor in ``[0, 1]`` (for ``smooth_nr <= smooth_dr``).

    Raises:
        TypeError: If an input is not a tensor or has the wrong dtype kind.
        ValueError: On mismatched shapes, target values outside ``[0, K)`` other than
            ``ignore_index`` or bad smooth terms.

    Example:
        >>> logits = torch.zeros(1, 2, 1, 2)  # p = 0.5 everywhere
        >>> target = torch.tensor([[[0, 1]]])  # Dice of each class = 2 * 0.5 / (1 + 1)
        >>> round(soft_dice_loss(logits, target, smooth_nr=0.0).item(), 4)
        0.5
    """
    ignore_index = _check_ignore_index(ignore_index)
    smooth_nr = check_positive(smooth_nr, "smooth_nr", allow_zero=True)
    smooth_dr = check_positive(smooth_dr, "smooth_dr")
    logits = _check_logits(logits)
    target = _check_target(target, logits, ignore_index=ignore_index, class_weight=None)
    dice = _monai_dice(bool(include_background), ignore_index, smooth_nr, smooth_dr, bool(batch))
    return dice(logits, target[:, None])  # MONAI wants (N, 1, *spatial) labels


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class _SegmentationLoss(nn.Module, abc.ABC):
    """Shared entry point: validate ``(logits, target[, weight])`` once, then compute.

    Subclasses set ``uses_weight_map`` and implement ``_compute`` on validated tensors, so
    that :class:`DeepSupervisionLoss` can validate the target once for all heads.
    """

    uses_weight_map = False
    class_weight: torch.Tensor | None

    def __init__(self, *, ignore_index: int, class_weight: object = None) -> None:
        super().__init__()
        self.ignore_index = _check_ignore_index(ignore_index)
        self.register_buffer("class_weight", _check_class_weight(class_weight))

    def _validate(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        name = type(self).__name__
        if self.uses_weight_map and weight is None:
            raise ValueError(
                f"weight must be a float32 weight map (N, *spatial) for {name}, got None; "
                "use CrossEntropyLoss ('ce') to train without one"
            )
        if not self.uses_weight_map and weight is not None:
            raise ValueError(
                f"weight must be None for {name}, got a tensor of shape {tuple(weight.shape)}; "
                "use WeightedCrossEntropyLoss ('weighted_ce') for weight maps"
            )
        logits = _check_logits(logits)
        target = _check_target(
            target, logits, ignore_index=self.ignore_index, class_weight=self.class_weight
        )
        if weight is not None:
            weight = _check_weight(weight, target, logits)
        return logits, target, weight

    @abc.abstractmethod
    def _compute(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        """The loss of validated inputs: target int64 ``(N, *spatial)``."""

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of one prediction.

        Args:
            logits: Raw scores, float32, ``(N, K, Y, X)`` or ``(N, K, Z, Y, X)``.
            target: Class indices in ``[0, K)`` or ``ignore_index``, integer,
                ``(N, *spatial)`` or ``(N, 1, *spatial)``.
            weight: Pixel weight map, float32 ``(N, *spatial)``; required by
                :class:`WeightedCrossEntropyLoss`, must be None for the other losses.

        Returns:
            The loss, float; a scalar tensor unless ``reduction="none"``.
        """
        return self._compute(*self._validate(logits, target, weight))


class CrossEntropyLoss(_SegmentationLoss):
    """Softmax cross-entropy with optional class weights, matching ``F.cross_entropy``.

    ``mean`` divides by the sum of the target classes' weights over the non-ignored pixels,
    exactly as torch does (see the module docstring), except that an all-ignored batch gives 0
    instead of NaN. Class weights typically come from SegNet's median-frequency balancing,
    ``c_k = median_j(freq_j) / freq_k`` (``medseg.weightmap.median_frequency_weights``).

    Args:
        class_weight: Per-class weights, K floats ``>= 0`` (list, ndarray or tensor ``(K,)``);
            None for all ones.
        ignore_index: Target value whose pixels contribute nothing.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (float ``(N, *spatial)``).

    Example:
        >>> loss = CrossEntropyLoss(class_weight=[1.0, 3.0])
        >>> round(loss(torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 1]]])).item(), 4)
        0.6931
    """

    def __init__(
        self,
        *,
        class_weight: Sequence[float] | torch.Tensor | None = None,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        reduction: str = "mean",
    ) -> None:
        super().__init__(ignore_index=ignore_index, class_weight=class_weight)
        self.reduction = _check_reduction(reduction)

    def _compute(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        return _cross_entropy(
            logits, target, weight, self.class_weight, self.ignore_index, self.reduction
        )


class WeightedCrossEntropyLoss(CrossEntropyLoss):
    """Cross-entropy with a per-pixel weight map (U-Net eq. 1); ``forward`` needs ``weight``.

    ``mean`` is the weighted average ``sum a(x) l(x) / sum a(x)`` over the non-ignored pixels
    (module docstring), so an all-ones map gives the plain mean cross-entropy and scaling the
    whole map changes nothing. Class weights, if given, multiply the map. The arguments are
    those of :class:`CrossEntropyLoss`.

    Example:
        >>> loss = WeightedCrossEntropyLoss()
        >>> logits, target = torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 1]]])
        >>> round(loss(logits, target, torch.tensor([[[1.0, 3.0]]])).item(), 4)
        0.6931
    """

    uses_weight_map = True


class SoftDiceLoss(_SegmentationLoss):
    """Multi-class soft Dice loss on softmax probabilities (module form of :func:`soft_dice_loss`).

    Args:
        include_background: Whether class 0 is scored.
        ignore_index: Target value whose pixels contribute nothing.
        smooth_nr: Added to the numerator, ``>= 0``.
        smooth_dr: Added to the denominator, ``> 0``.
        batch: One Dice per class over the whole batch instead of one per image and class.

    Example:
        >>> loss = SoftDiceLoss(smooth_nr=0.0)
        >>> round(loss(torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 1]]])).item(), 4)
        0.5
    """

    def __init__(
        self,
        *,
        include_background: bool = True,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
    ) -> None:
        super().__init__(ignore_index=ignore_index)
        self.dice = _monai_dice(include_background, self.ignore_index, smooth_nr, smooth_dr, batch)

    def _compute(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        return self.dice(logits, target[:, None])  # MONAI wants (N, 1, *spatial) labels


class DiceCELoss(_SegmentationLoss):
    """``lambda_ce * CE + lambda_dice * soft Dice``, both with the same ``ignore_index``.

    MONAI's ``DiceCELoss`` is not wrapped because it has no ``ignore_index``. With
    ``lambda_ce=0.5, lambda_dice=1.0, include_background=False`` this is the UNet++ loss of one
    head (module docstring).

    Args:
        lambda_ce: Weight of the cross-entropy term, ``>= 0``.
        lambda_dice: Weight of the Dice term, ``>= 0``.
        class_weight: Per-class weights of the cross-entropy term (not of Dice); None for ones.
        include_background: Whether the Dice term scores class 0.
        ignore_index: Target value whose pixels contribute nothing.
        smooth_nr: Dice numerator smoothing, ``>= 0``.
        smooth_dr: Dice denominator smoothing, ``> 0``.
        batch: Dice over the whole batch per class instead of per image and class.

    Example:
        >>> loss = DiceCELoss(lambda_ce=0.5, smooth_nr=0.0)
        >>> logits, target = torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 1]]])
        >>> round(loss(logits, target).item(), 4)  # 0.5 * ln 2 + 0.5
        0.8466
    """

    def __init__(
        self,
        *,
        lambda_ce: float = 1.0,
        lambda_dice: float = 1.0,
        class_weight: Sequence[float] | torch.Tensor | None = None,
        include_background: bool = True,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
    ) -> None:
        super().__init__(ignore_index=ignore_index, class_weight=class_weight)
        self.lambda_ce = check_positive(lambda_ce, "lambda_ce", allow_zero=True)
        self.lambda_dice = check_positive(lambda_dice, "lambda_dice", allow_zero=True)
        self.dice = _monai_dice(include_background, self.ignore_index, smooth_nr, smooth_dr, batch)

    def _compute(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        ce = _cross_entropy(logits, target, None, self.class_weight, self.ignore_index, "mean")
        return self.lambda_ce * ce + self.lambda_dice * self.dice(logits, target[:, None])


class DeepSupervisionLoss(nn.Module):
    """Weighted mean of ``base_loss`` over the heads of a deeply supervised network.

    ``sum_i a_i base_loss(head_i, target) / sum_i a_i`` with ``a_i = weights[i]`` (all 1, i.e.
    the plain mean over heads, by default). Every head must have the same shape as the target
    (UNet++ heads are full resolution; nothing is resampled here). For the losses of this module
    the target is validated once for all heads; any other ``nn.Module`` taking
    ``(logits, target)`` also works and is called per head.

    Args:
        base_loss: Loss of one head, e.g. ``DiceCELoss(lambda_ce=0.5)`` for UNet++.
        weights: One float ``>= 0`` per head, not all 0; None for equal weights.

    Example:
        >>> loss = DeepSupervisionLoss(CrossEntropyLoss(), weights=[1.0, 3.0])
        >>> heads = [torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 1, 2)]
        >>> round(loss(heads, torch.tensor([[[0, 1]]])).item(), 4)
        0.6931
    """

    def __init__(self, base_loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not isinstance(base_loss, nn.Module):
            raise TypeError(f"base_loss must be a torch.nn.Module, got {type(base_loss).__name__}")
        self.base_loss = base_loss
        self.weights: tuple[float, ...] | None = None
        if weights is not None:
            if isinstance(weights, (str, torch.Tensor)) or not isinstance(weights, Sequence):
                raise TypeError(f"weights must be a sequence of floats, got {weights!r}")
            checked = tuple(
                check_positive(w, f"weights[{i}]", allow_zero=True) for i, w in enumerate(weights)
            )
            if not checked or sum(checked) <= 0:
                raise ValueError(f"weights must hold at least one weight > 0, got {list(weights)}")
            self.weights = checked

    def forward(
        self,
        head_logits: Sequence[torch.Tensor],
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weighted mean of the per-head losses.

        Args:
            head_logits: One float32 ``(N, K, *spatial)`` logits tensor per head, all the same
                shape (e.g. ``UNetPlusPlus.forward_heads(x)``).
            target: Class indices, integer, ``(N, *spatial)`` or ``(N, 1, *spatial)``.
            weight: Pixel weight map, float32 ``(N, *spatial)``, passed to every head; only
                for a base loss that takes one.

        Returns:
            The loss, a float scalar tensor.
        """
        if isinstance(head_logits, torch.Tensor) or not isinstance(head_logits, Sequence):
            raise TypeError(
                f"head_logits must be a list of (N, K, *spatial) tensors, one per head, got "
                f"{type(head_logits).__name__}; wrap a single head as [logits]"
            )
        if len(head_logits) == 0:
            raise ValueError("head_logits must hold at least one head, got an empty list")
        weights = self.weights if self.weights is not None else (1.0,) * len(head_logits)
        if len(weights) != len(head_logits):
            raise ValueError(
                f"head_logits must have one head per weight ({len(weights)}), "
                f"got {len(head_logits)} heads"
            )
        heads = [_check_logits(h, f"head_logits[{i}]") for i, h in enumerate(head_logits)]
        for i, head in enumerate(heads[1:], start=1):
            if head.shape != heads[0].shape:
                raise ValueError(
                    f"head_logits[{i}] must have the shape of head_logits[0] "
                    f"{tuple(heads[0].shape)}, got {tuple(head.shape)}"
                )
        if isinstance(self.base_loss, _SegmentationLoss):
            _, target, weight = self.base_loss._validate(heads[0], target, weight)
            losses = [self.base_loss._compute(head, target, weight) for head in heads]
        elif weight is None:
            losses = [self.base_loss(head, target) for head in heads]
        else:
            losses = [self.base_loss(head, target, weight) for head in heads]
        total = torch.stack([w * loss for w, loss in zip(weights, losses, strict=True)]).sum()
        return total / sum(weights)


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------


def _create_unetpp_loss(
    *,
    weights: Sequence[float] | None = None,
    lambda_ce: float = 0.5,
    lambda_dice: float = 1.0,
    include_background: bool = False,
    **kwargs: Any,
) -> DeepSupervisionLoss:
    """UNet++ eq. 2 on every head: ``0.5 CE + (1 - foreground soft Dice)``, mean over heads."""
    base = DiceCELoss(
        lambda_ce=lambda_ce,
        lambda_dice=lambda_dice,
        include_background=include_background,
        **kwargs,
    )
    return DeepSupervisionLoss(base, weights=weights)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": CrossEntropyLoss,
    "weighted_ce": WeightedCrossEntropyLoss,
    "dice": SoftDiceLoss,
    "dice_ce": DiceCELoss,
    "unetpp": _create_unetpp_loss,
}
"""Loss name -> constructor. ``"unetpp"`` builds ``DeepSupervisionLoss(DiceCELoss(lambda_ce=0.5,
include_background=False))`` and takes ``weights`` (per head) plus any DiceCELoss option."""


def list_losses() -> list[str]:
    """Registered loss names, sorted.

    >>> list_losses()
    ['ce', 'dice', 'dice_ce', 'unetpp', 'weighted_ce']
    """
    return sorted(LOSSES)


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered loss by name, for configs.

    ==============  ==========================================================================
    name            loss
    ==============  ==========================================================================
    ``ce``          :class:`CrossEntropyLoss` (optional ``class_weight``)
    ``weighted_ce`` :class:`WeightedCrossEntropyLoss` (``forward`` takes a weight map)
    ``dice``        :class:`SoftDiceLoss`
    ``dice_ce``     :class:`DiceCELoss`
    ``unetpp``      :class:`DeepSupervisionLoss` of ``DiceCELoss(lambda_ce=0.5,
                    include_background=False)``; ``forward`` takes a list of head logits
    ==============  ==========================================================================

    Args:
        name: One of :func:`list_losses`.
        **kwargs: Constructor options, JSON-able (``class_weight`` as a list of floats).

    Returns:
        The loss module.

    Raises:
        ValueError: If ``name`` is not registered (the message lists the names and the
            closest match).

    Example:
        >>> type(create_loss("dice_ce", lambda_ce=0.5)).__name__
        'DiceCELoss'
    """
    if name not in LOSSES:
        close = difflib.get_close_matches(str(name), list(LOSSES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"loss name must be one of {list_losses()}, got {name!r}{hint}")
    return LOSSES[name](**kwargs)
