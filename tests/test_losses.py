"""Tests for medseg.losses: hand values, loop references, torch/MONAI agreement, every raise.

The slow loop references live here (tests/reference.py belongs to another module's tests).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss as MonaiDiceLoss

from medseg.losses import (
    CrossEntropyLoss,
    DeepSupervisionLoss,
    DiceCELoss,
    SoftDiceLoss,
    WeightedCrossEntropyLoss,
    create_loss,
    list_losses,
    soft_dice_loss,
    weighted_cross_entropy,
)

LN3 = math.log(3.0)

# Hand fixture: N=1, K=2, (Y, X) = (2, 2). Class 0 logits are 0, so p1 = sigmoid(logit1):
#   pixel      (0,0)  (0,1)  (1,0)  (1,1)
#   p1          3/4    1/4    1/2    3/4
#   target       1      0      1      0
#   -log p_t  ln 4/3 ln 4/3   ln 2   ln 4
HAND_LOGITS = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[LN3, -LN3], [0.0, LN3]]]])
HAND_TARGET = torch.tensor([[[1, 0], [1, 0]]])
HAND_PIXEL_CE = [math.log(4 / 3), math.log(4 / 3), math.log(2), math.log(4)]
HAND_CE = (2 * math.log(4 / 3) + math.log(2) + math.log(4)) / 4  # 0.6637014216
# Class 1: sum p1 y1 = 3/4 + 1/2 = 5/4, sum p1 = 9/4, sum y1 = 2 -> Dice 2.5 / 4.25 = 10/17.
# Class 0: sum p0 y0 = 3/4 + 1/4 = 1, sum p0 = 7/4, sum y0 = 2 -> Dice 2 / 3.75 = 8/15.
HAND_DICE_LOSS = 1 - (10 / 17 + 8 / 15) / 2  # 0.4392156863
HAND_DICE_LOSS_FG = 1 - 10 / 17  # 0.4117647059
SMOOTH = 1e-5  # the default smooth_nr = smooth_dr


def _random_case(
    spatial: tuple[int, ...], num_classes: int = 3, num_images: int = 2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float32 logits (N, K, *spatial) and int64 target (N, *spatial); seed-dependent."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_images, num_classes, *spatial, generator=gen)
    target = torch.randint(0, num_classes, (num_images, *spatial), generator=gen)
    return logits, target


SPATIAL = [(5, 6), (3, 5, 4)]  # 2D and 3D, a different length on each axis


# ---------------------------------------------------------------------------------------------
# Slow loop references
# ---------------------------------------------------------------------------------------------


def _ref_cross_entropy(logits, target, weight=None, class_weight=None, ignore_index=-100):
    """Weighted mean CE, pixel by pixel in float64: sum a(x) l(x) / sum a(x)."""
    lg = logits.double().reshape(logits.shape[0], logits.shape[1], -1)
    tg = target.reshape(target.shape[0], -1)
    wt = None if weight is None else weight.double().reshape(weight.shape[0], -1)
    num = den = 0.0
    for n in range(lg.shape[0]):
        for i in range(lg.shape[2]):
            t = int(tg[n, i])
            if t == ignore_index:
                continue
            scores = [float(s) for s in lg[n, :, i]]
            top = max(scores)
            log_z = top + math.log(sum(math.exp(s - top) for s in scores))
            a = 1.0 if class_weight is None else float(class_weight[t])
            a *= 1.0 if wt is None else float(wt[n, i])
            num += a * (log_z - scores[t])
            den += a
    return num / den


def _ref_soft_dice(
    logits, target, include_background=True, ignore_index=-100, smooth=SMOOTH, batch=False
):
    """Soft Dice loss with explicit sums over pixels, per (image, class) or per class."""
    probs = torch.softmax(logits.double(), dim=1).reshape(logits.shape[0], logits.shape[1], -1)
    tg = target.reshape(target.shape[0], -1)
    num_images, num_classes, num_pixels = probs.shape
    classes = range(0 if include_background else 1, num_classes)
    groups = [list(range(num_images))] if batch else [[n] for n in range(num_images)]
    losses = []
    for images in groups:
        for k in classes:
            inter = sum_p = sum_y = 0.0
            for n in images:
                for i in range(num_pixels):
                    if int(tg[n, i]) == ignore_index:
                        continue
                    p, y = float(probs[n, k, i]), float(int(tg[n, i]) == k)
                    inter += p * y
                    sum_p += p
                    sum_y += y
            losses.append(1 - (2 * inter + smooth) / (sum_p + sum_y + smooth))
    return sum(losses) / len(losses)


# ---------------------------------------------------------------------------------------------
# Hand values
# ---------------------------------------------------------------------------------------------


def test_cross_entropy_hand_values():
    assert weighted_cross_entropy(HAND_LOGITS, HAND_TARGET).item() == pytest.approx(
        0.6637014216, abs=1e-7
    )
    assert HAND_CE == pytest.approx(0.6637014216, abs=1e-10)
    per_pixel = weighted_cross_entropy(HAND_LOGITS, HAND_TARGET, reduction="none")
    assert per_pixel.shape == (1, 2, 2)
    assert per_pixel.flatten().tolist() == pytest.approx(HAND_PIXEL_CE, abs=1e-6)
    total = weighted_cross_entropy(HAND_LOGITS, HAND_TARGET, reduction="sum")
    assert total.item() == pytest.approx(sum(HAND_PIXEL_CE), abs=1e-6)


def test_dice_hand_values():
    assert HAND_DICE_LOSS == pytest.approx(0.4392156863, abs=1e-10)
    with_smooth = 1 - ((2.5 + SMOOTH) / (4.25 + SMOOTH) + (2 + SMOOTH) / (3.75 + SMOOTH)) / 2
    assert soft_dice_loss(HAND_LOGITS, HAND_TARGET).item() == pytest.approx(with_smooth, abs=1e-7)
    tiny = soft_dice_loss(HAND_LOGITS, HAND_TARGET, smooth_nr=0.0, smooth_dr=1e-12)
    assert tiny.item() == pytest.approx(HAND_DICE_LOSS, abs=1e-7)
    fg = soft_dice_loss(
        HAND_LOGITS, HAND_TARGET, include_background=False, smooth_nr=0.0, smooth_dr=1e-12
    )
    assert fg.item() == pytest.approx(HAND_DICE_LOSS_FG, abs=1e-7)  # 7/17
    module = SoftDiceLoss(include_background=False, smooth_nr=0.0, smooth_dr=1e-12)
    assert module(HAND_LOGITS, HAND_TARGET).item() == pytest.approx(7 / 17, abs=1e-7)


def test_dice_ce_and_unetpp_hand_values():
    dice_ce = DiceCELoss(smooth_nr=0.0, smooth_dr=1e-12)(HAND_LOGITS, HAND_TARGET)
    assert dice_ce.item() == pytest.approx(HAND_CE + HAND_DICE_LOSS, abs=1e-6)
    unetpp = create_loss("unetpp", smooth_nr=0.0, smooth_dr=1e-12)
    # Two identical heads: their mean is the single-head value 0.5 * CE + (1 - 10/17).
    value = unetpp([HAND_LOGITS, HAND_LOGITS.clone()], HAND_TARGET)
    assert value.item() == pytest.approx(0.5 * HAND_CE + 7 / 17, abs=1e-6)
    assert 0.5 * HAND_CE + 7 / 17 == pytest.approx(0.7436154167, abs=1e-10)


@pytest.mark.parametrize("spatial", SPATIAL)
def test_unetpp_binary_case_is_the_paper_formula(spatial):
    """K = 2 logits (0, z): 0.5 * BCE(sigmoid z) + mean_b (1 - foreground Dice_b) (eq. 2 + 1)."""
    gen = torch.Generator().manual_seed(3)  # values depend on this seed only through z, y
    z = torch.randn(3, 1, *spatial, generator=gen)
    y = torch.randint(0, 2, (3, *spatial), generator=gen)
    logits = torch.cat([torch.zeros_like(z), z], dim=1)
    yhat, yf = torch.sigmoid(z[:, 0]).double(), y.double()
    bce = F.binary_cross_entropy(yhat, yf)  # mean over all pixels of the batch
    dims = tuple(range(1, yhat.ndim))
    dice_b = (2 * (yf * yhat).sum(dims) + SMOOTH) / (yf.sum(dims) + yhat.sum(dims) + SMOOTH)
    paper = -(-0.5 * bce + dice_b.mean())  # -(1/N) sum_b (1/2 Y.log Yhat + Dice_b), BCE form
    value = create_loss("unetpp")([logits], y)
    assert value.item() == pytest.approx(float(paper) + 1.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Weight maps and class weights
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial", SPATIAL)
def test_all_ones_weight_map_equals_plain_cross_entropy(spatial):
    logits, target = _random_case(spatial)
    target[0, 0] = -100  # an ignored row changes nothing in the argument
    ones = torch.ones(target.shape)
    weighted = WeightedCrossEntropyLoss()(logits, target, ones)
    assert torch.equal(weighted, weighted_cross_entropy(logits, target))
    assert torch.equal(weighted, CrossEntropyLoss()(logits, target))
    torch.testing.assert_close(weighted, F.cross_entropy(logits, target), rtol=0, atol=1e-7)
    for reduction in ("sum", "none"):
        torch.testing.assert_close(
            weighted_cross_entropy(logits, target, ones, reduction=reduction),
            F.cross_entropy(logits, target, reduction=reduction),
            rtol=0,
            atol=1e-6,
        )


def test_weight_map_scaling_by_hand():
    ones = torch.ones(1, 2, 2)
    doubled = ones.clone()
    doubled[0, 1, 1] = 2.0  # pixel (1, 1), loss ln 4, now counts twice
    expected = (2 * math.log(4 / 3) + math.log(2) + 2 * math.log(4)) / 5  # 0.8082200095
    assert expected == pytest.approx(0.8082200095, abs=1e-10)
    value = weighted_cross_entropy(HAND_LOGITS, HAND_TARGET, doubled)
    assert value.item() == pytest.approx(expected, abs=1e-6)
    total = weighted_cross_entropy(HAND_LOGITS, HAND_TARGET, doubled, reduction="sum")
    assert total.item() == pytest.approx(sum(HAND_PIXEL_CE) + math.log(4), abs=1e-6)
    per_pixel = weighted_cross_entropy(HAND_LOGITS, HAND_TARGET, doubled, reduction="none")
    assert per_pixel[0, 1, 1].item() == pytest.approx(2 * math.log(4), abs=1e-6)
    # Only relative weights matter for "mean": scaling the whole map changes nothing.
    scaled = weighted_cross_entropy(HAND_LOGITS, HAND_TARGET, 7.5 * doubled)
    assert scaled.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("spatial", SPATIAL)
def test_weight_map_matches_loop_reference(spatial):
    logits, target = _random_case(spatial, seed=1)
    target[1, 0] = 255
    gen = torch.Generator().manual_seed(2)
    weight = torch.rand(target.shape, generator=gen) * 10
    class_weight = [0.5, 2.0, 1.0]
    value = weighted_cross_entropy(
        logits, target, weight, class_weight=class_weight, ignore_index=255
    )
    expected = _ref_cross_entropy(logits, target, weight, class_weight, ignore_index=255)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_zero_weight_equals_ignored_pixel():
    logits, target = _random_case((4, 5), seed=4)
    weight = torch.ones(target.shape)
    weight[0, 1, 2] = 0.0
    ignored = target.clone()
    ignored[0, 1, 2] = -100
    torch.testing.assert_close(
        weighted_cross_entropy(logits, target, weight), weighted_cross_entropy(logits, ignored)
    )


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("ignore_index", [-100, 255])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_weighted_ce_matches_torch(spatial, ignore_index, reduction):
    logits, target = _random_case(spatial, num_classes=4, seed=5)
    target[0, 1] = ignore_index
    class_weight = [0.1, 1.0, 3.0, 0.7]  # e.g. median-frequency balancing weights
    expected = F.cross_entropy(
        logits,
        target,
        weight=torch.tensor(class_weight),
        ignore_index=ignore_index,
        reduction=reduction,
    )
    module = CrossEntropyLoss(
        class_weight=class_weight, ignore_index=ignore_index, reduction=reduction
    )
    torch.testing.assert_close(module(logits, target), expected, rtol=1e-6, atol=1e-7)
    function = weighted_cross_entropy(
        logits,
        target,
        class_weight=torch.tensor(class_weight),
        ignore_index=ignore_index,
        reduction=reduction,
    )
    torch.testing.assert_close(function, expected, rtol=1e-6, atol=1e-7)


def test_class_weight_accepts_list_ndarray_and_tensor():
    logits, target = _random_case((4, 5), seed=18)
    expected = F.cross_entropy(logits, target, weight=torch.tensor([0.5, 2.0, 1.0]))
    for class_weight in ([0.5, 2.0, 1.0], np.array([0.5, 2.0, 1.0]), torch.tensor([0.5, 2, 1])):
        value = CrossEntropyLoss(class_weight=class_weight)(logits, target)
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)


def test_class_weight_buffer_moves_with_module():
    module = CrossEntropyLoss(class_weight=[1.0, 2.0])
    assert "class_weight" in dict(module.named_buffers())
    assert module.double().class_weight.dtype == torch.float64


def test_all_ignored_gives_zero_and_zero_gradient():
    """Deviation from torch (NaN): an all-ignored or all-zero-weight batch gives 0."""
    logits = torch.randn(1, 3, 2, 3, requires_grad=True)
    target = torch.full((1, 2, 3), -100)
    assert torch.isnan(F.cross_entropy(logits, target))
    loss = weighted_cross_entropy(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    zero_map = weighted_cross_entropy(logits, target.clamp(min=0), torch.zeros(1, 2, 3))
    assert zero_map.item() == 0.0


# ---------------------------------------------------------------------------------------------
# ignore_index: ignored pixels contribute neither value nor gradient
# ---------------------------------------------------------------------------------------------


def _loss_call(name: str, ignore_index: int):
    """A callable (logits, target, weight) -> loss for every registered loss."""
    loss = create_loss(name, ignore_index=ignore_index)
    if name == "unetpp":
        return lambda logits, target, weight: loss([logits, 2 * logits], target)
    if name == "weighted_ce":
        return loss
    return lambda logits, target, weight: loss(logits, target)


@pytest.mark.parametrize("name", list_losses())
@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("ignore_index", [-100, 255])
def test_ignored_pixels_do_not_contribute(name, spatial, ignore_index):
    logits, target = _random_case(spatial, seed=6)
    ignored = torch.zeros(target.shape, dtype=torch.bool)
    ignored[0, 1] = True
    ignored[1, -1, ..., 0] = True
    target[ignored] = ignore_index
    weight = torch.rand(target.shape, generator=torch.Generator().manual_seed(7)) + 0.5
    loss_fn = _loss_call(name, ignore_index)

    def value_and_grad(lg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lg = lg.clone().requires_grad_(True)
        value = loss_fn(lg, target, weight)
        value.backward()
        return value.detach(), lg.grad

    changed = logits.clone()
    mask = ignored[:, None].expand_as(logits)
    changed[mask] = torch.randn(int(mask.sum()), generator=torch.Generator().manual_seed(8)) * 50
    value_a, grad_a = value_and_grad(logits)
    value_b, grad_b = value_and_grad(changed)
    torch.testing.assert_close(value_a, value_b, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad_a, grad_b, rtol=0, atol=1e-7)
    assert torch.equal(grad_a[mask], torch.zeros(int(mask.sum())))
    assert bool(grad_a[~mask].abs().sum() > 0)


# ---------------------------------------------------------------------------------------------
# Dice against the loop reference and MONAI
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
def test_dice_matches_loop_reference(spatial, include_background, batch):
    logits, target = _random_case(spatial, num_classes=4, seed=9)
    target[1, 0] = -100
    value = soft_dice_loss(logits, target, include_background=include_background, batch=batch)
    expected = _ref_soft_dice(logits, target, include_background=include_background, batch=batch)
    assert value.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("spatial", SPATIAL)
def test_dice_matches_monai(spatial):
    logits, target = _random_case(spatial, num_classes=3, seed=10)
    monai = MonaiDiceLoss(include_background=False, to_onehot_y=True, softmax=True)
    expected = monai(logits, target[:, None])
    value = SoftDiceLoss(include_background=False)(logits, target[:, None])
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("spatial", SPATIAL)
def test_dice_ce_is_weighted_sum_of_parts(spatial):
    logits, target = _random_case(spatial, seed=11)
    class_weight = [1.0, 2.0, 0.5]
    loss = DiceCELoss(lambda_ce=0.25, lambda_dice=3.0, class_weight=class_weight)
    expected = 0.25 * weighted_cross_entropy(
        logits, target, class_weight=class_weight
    ) + 3.0 * soft_dice_loss(logits, target)
    torch.testing.assert_close(loss(logits, target), expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Deep supervision
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial", SPATIAL)
def test_deep_supervision_is_mean_of_head_losses(spatial):
    logits, target = _random_case(spatial, seed=12)
    heads = [logits, logits * 0.5, logits.flip(0)]
    base = DiceCELoss(lambda_ce=0.5, include_background=False)
    expected = torch.stack([base(h, target) for h in heads]).mean()
    torch.testing.assert_close(DeepSupervisionLoss(base)(heads, target), expected)
    weighted = DeepSupervisionLoss(base, weights=[1.0, 0.0, 3.0])(heads, target)
    torch.testing.assert_close(weighted, (base(heads[0], target) + 3 * base(heads[2], target)) / 4)
    unetpp = create_loss("unetpp")(heads, target)
    torch.testing.assert_close(unetpp, expected)


def test_deep_supervision_with_weight_map_and_foreign_base():
    logits, target = _random_case((4, 6), seed=13)
    heads = [logits, logits + 1.0, -logits]
    weight = torch.rand(target.shape, generator=torch.Generator().manual_seed(14))
    base = WeightedCrossEntropyLoss()
    expected = torch.stack([base(h, target, weight) for h in heads]).mean()
    torch.testing.assert_close(DeepSupervisionLoss(base)(heads, target, weight), expected)
    # A loss from outside this module is called once per head.
    foreign = DeepSupervisionLoss(torch.nn.CrossEntropyLoss())
    expected = torch.stack([F.cross_entropy(h, target) for h in heads]).mean()
    torch.testing.assert_close(foreign(heads, target), expected)
    with_map = DeepSupervisionLoss(_MapLoss())(heads, target, weight)
    torch.testing.assert_close(with_map, torch.tensor(float(weight.sum())))


class _MapLoss(torch.nn.Module):
    """A foreign loss that takes a weight map: returns its sum."""

    def forward(self, logits, target, weight):
        return weight.sum()


# ---------------------------------------------------------------------------------------------
# Gradients, target forms, factory
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_losses())
@pytest.mark.parametrize("spatial", SPATIAL)
def test_gradients_are_finite(name, spatial):
    logits, target = _random_case(spatial, seed=15)
    logits = (logits * 1e3).requires_grad_(True)  # saturated softmax
    weight = torch.rand(target.shape, generator=torch.Generator().manual_seed(16)) * 20
    value = _loss_call(name, -100)(logits, target, weight)
    value.backward()
    assert value.ndim == 0 and bool(torch.isfinite(value))
    assert bool(torch.isfinite(logits.grad).all())


@pytest.mark.parametrize("spatial", SPATIAL)
def test_target_forms_are_equivalent(spatial):
    logits, target = _random_case(spatial, seed=17)
    expected = DiceCELoss()(logits, target)
    torch.testing.assert_close(DiceCELoss()(logits, target[:, None]), expected)
    torch.testing.assert_close(DiceCELoss()(logits, target.to(torch.uint8)), expected)


def test_create_loss_builds_every_name():
    assert list_losses() == ["ce", "dice", "dice_ce", "unetpp", "weighted_ce"]
    assert type(create_loss("ce", class_weight=[1.0, 2.0])) is CrossEntropyLoss
    assert type(create_loss("weighted_ce")) is WeightedCrossEntropyLoss
    assert type(create_loss("dice", include_background=False)) is SoftDiceLoss
    assert type(create_loss("dice_ce")) is DiceCELoss
    unetpp = create_loss("unetpp", weights=[1, 1, 2])
    assert type(unetpp) is DeepSupervisionLoss
    assert unetpp.weights == (1.0, 1.0, 2.0)
    assert unetpp.base_loss.lambda_ce == 0.5 and unetpp.base_loss.lambda_dice == 1.0


# ---------------------------------------------------------------------------------------------
# Every raise
# ---------------------------------------------------------------------------------------------


def test_create_loss_unknown_name_lists_names_and_closest():
    with pytest.raises(ValueError, match=r"loss name must be one of \['ce', .*'dise'.*'dice'"):
        create_loss("dise")
    with pytest.raises(ValueError, match=r"got 'zzz'$"):
        create_loss("zzz")


def test_logits_errors():
    target = torch.zeros(1, 2, 2, dtype=torch.int64)
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        weighted_cross_entropy([[0.0]], target)
    with pytest.raises(TypeError, match="logits must be a float tensor.*torch.int64"):
        weighted_cross_entropy(torch.zeros(1, 2, 2, 2, dtype=torch.int64), target)
    with pytest.raises(ValueError, match=r"logits must be \(N, K, Y, X\).*\(2, 2, 2\)"):
        soft_dice_loss(torch.zeros(2, 2, 2), target)
    with pytest.raises(ValueError, match=r"K >= 2.*\(1, 1, 2, 2\)"):
        soft_dice_loss(torch.zeros(1, 1, 2, 2), target)


def test_target_errors():
    logits = torch.zeros(1, 3, 2, 4)
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        weighted_cross_entropy(logits, [[0, 1]])
    with pytest.raises(TypeError, match="target must be an integer tensor.*torch.float32"):
        weighted_cross_entropy(logits, torch.zeros(1, 2, 4))
    with pytest.raises(TypeError, match="target must be an integer tensor.*torch.bool"):
        weighted_cross_entropy(logits, torch.zeros(1, 2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(1, 2, 4\).*logits shape \(1, 3, 2, 4\).*\(1, 2, 5\)"):
        weighted_cross_entropy(logits, torch.zeros(1, 2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"target shape \(1, 3, 2, 4\); .*one-hot"):
        soft_dice_loss(logits, torch.zeros(1, 3, 2, 4, dtype=torch.int64))
    bad = torch.zeros(1, 2, 4, dtype=torch.int64)
    bad[0, 1, 2] = 3
    with pytest.raises(ValueError, match=r"in \[0, 2\] or ignore_index -100, got value 3 \(1 pix"):
        weighted_cross_entropy(logits, bad)
    with pytest.raises(ValueError, match="got value -1"):
        soft_dice_loss(logits, bad - 1)
    with pytest.raises(ValueError, match="got value 3"):
        DeepSupervisionLoss(CrossEntropyLoss())([logits], bad)
    with pytest.raises(ValueError, match=r"class_weight must have one weight per class \(3"):
        CrossEntropyLoss(class_weight=[1.0, 2.0])(logits, bad.clamp(max=2))


def test_weight_errors():
    logits, target = torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 3, dtype=torch.int64)
    loss = WeightedCrossEntropyLoss()
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        weighted_cross_entropy(logits, target, [[1.0]])
    with pytest.raises(TypeError, match="weight must be a float32 weight map.*torch.int64"):
        loss(logits, target, torch.ones(1, 2, 3, dtype=torch.int64))
    with pytest.raises(
        ValueError, match=r"weight must have shape \(1, 2, 3\).*got .*\(1, 1, 2, 3\)"
    ):
        loss(logits, target, torch.ones(1, 1, 2, 3))
    with pytest.raises(ValueError, match="weight must be finite"):
        loss(logits, target, torch.full((1, 2, 3), math.nan))
    with pytest.raises(ValueError, match=r"weight must be >= 0, got minimum -2\.0"):
        loss(logits, target, torch.tensor([[[1.0, -2.0, 1.0], [1.0, 1.0, 1.0]]]))
    with pytest.raises(ValueError, match="weight must be a float32 weight map .* got None"):
        loss(logits, target)
    with pytest.raises(ValueError, match=r"weight must be None for SoftDiceLoss.*\(1, 2, 3\)"):
        SoftDiceLoss()(logits, target, torch.ones(1, 2, 3))


def test_option_errors():
    with pytest.raises(TypeError, match="ignore_index must be an int, got 1.5"):
        weighted_cross_entropy(torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1), ignore_index=1.5)
    with pytest.raises(TypeError, match="ignore_index must be an int, got True"):
        SoftDiceLoss(ignore_index=True)
    with pytest.raises(ValueError, match=r"reduction must be one of \['mean', 'sum', 'none'\]"):
        CrossEntropyLoss(reduction="avg")
    with pytest.raises(TypeError, match="smooth_nr must be a number, got str '1'"):
        SoftDiceLoss(smooth_nr="1")
    with pytest.raises(ValueError, match="smooth_dr must be a finite number > 0, got 0"):
        soft_dice_loss(torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1), smooth_dr=0)
    with pytest.raises(ValueError, match="lambda_ce must be a finite number >= 0, got -1"):
        DiceCELoss(lambda_ce=-1)
    with pytest.raises(ValueError, match="lambda_dice must be a finite number >= 0, got inf"):
        DiceCELoss(lambda_dice=math.inf)


def test_class_weight_errors():
    with pytest.raises(TypeError, match="class_weight must be a sequence of K floats, got"):
        CrossEntropyLoss(class_weight=["a", "b"])
    with pytest.raises(
        TypeError, match="class_weight must be a sequence, ndarray or tensor of K floats, got 2.0"
    ):
        CrossEntropyLoss(class_weight=2.0)
    with pytest.raises(ValueError, match=r"class_weight must be 1-D .*got shape \(1,\)"):
        CrossEntropyLoss(class_weight=[1.0])
    with pytest.raises(ValueError, match=r"class_weight must be 1-D .*got shape \(2, 2\)"):
        CrossEntropyLoss(class_weight=torch.ones(2, 2))
    with pytest.raises(
        ValueError, match=r"class_weight must be finite and >= 0, got \[1.0, -1.0\]"
    ):
        DiceCELoss(class_weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="class_weight must be finite"):
        weighted_cross_entropy(
            torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1), class_weight=[1.0, math.nan]
        )


def test_deep_supervision_errors():
    logits, target = torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 3, dtype=torch.int64)
    with pytest.raises(TypeError, match="base_loss must be a torch.nn.Module, got function"):
        DeepSupervisionLoss(F.cross_entropy)
    with pytest.raises(TypeError, match="weights must be a sequence of floats"):
        DeepSupervisionLoss(CrossEntropyLoss(), weights=torch.ones(2))
    with pytest.raises(ValueError, match="weights must hold at least one weight > 0"):
        DeepSupervisionLoss(CrossEntropyLoss(), weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="weights must hold at least one weight > 0, got \\[\\]"):
        DeepSupervisionLoss(CrossEntropyLoss(), weights=[])
    with pytest.raises(ValueError, match=r"weights\[1\] must be a finite number >= 0, got -1"):
        DeepSupervisionLoss(CrossEntropyLoss(), weights=[1.0, -1.0])
    loss = DeepSupervisionLoss(CrossEntropyLoss(), weights=[1.0, 1.0])
    with pytest.raises(TypeError, match="head_logits must be a list .* got Tensor"):
        loss(logits, target)
    with pytest.raises(ValueError, match="head_logits must hold at least one head"):
        DeepSupervisionLoss(CrossEntropyLoss())([], target)
    with pytest.raises(ValueError, match=r"one head per weight \(2\), got 3 heads"):
        loss([logits, logits, logits], target)
    with pytest.raises(ValueError, match=r"head_logits\[1\] must have the shape .*\(1, 2, 2, 4\)"):
        loss([logits, torch.zeros(1, 2, 2, 4)], target)
    with pytest.raises(TypeError, match=r"head_logits\[1\] must be a float tensor"):
        loss([logits, logits.long()], target)
