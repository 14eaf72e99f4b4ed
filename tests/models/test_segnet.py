"""Tests for medseg.models.segnet (SegNet, Badrinarayanan et al., TPAMI 2017)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from medseg.models import create_model
from medseg.models.blocks import count_parameters
from medseg.models.segnet import SegNet
from tests.models.checks import assert_forward_backward

# U-SegNet paper (Kumar et al. 2018), SegNet for in_channels=3, num_classes=4, 2D.
PAPER_SEGNET_REDUCED = 3_475_396
# Ours for the 13+13-conv VGG16 SegNet, in_channels=3, num_classes=4, 2D (medseg/models/README.md).
SEGNET_FULL = 29_445_316


def max_pool_unpool_loop(x: np.ndarray) -> np.ndarray:
    """2x2(x2) stride-2 max-pooling followed by unpooling, with explicit loops.

    Each non-overlapping window keeps only its maximum, at the position where it was
    (the first one in C order if tied); every other voxel becomes 0.

    Args:
        x: ``(N, C, *spatial)`` with 2 or 3 even spatial sizes.

    Returns:
        Same shape and dtype as ``x``.
    """
    out = np.zeros_like(x)
    spatial = x.shape[2:]
    offsets = list(itertools.product(*[range(2)] * len(spatial)))
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for start in itertools.product(*[range(0, s, 2) for s in spatial]):
                best_pos, best_val = None, None
                for off in offsets:
                    pos = tuple(s + o for s, o in zip(start, off, strict=True))
                    val = x[(n, c, *pos)]
                    if best_val is None or val > best_val:
                        best_pos, best_val = pos, val
                out[(n, c, *best_pos)] = best_val
    return out


def window_max_mask(x: torch.Tensor) -> torch.Tensor:
    """True where a voxel equals the maximum of its 2x2(x2) window (all tied maxima)."""
    spatial_dims = x.ndim - 2
    pool = (nn.functional.max_pool2d, nn.functional.max_pool3d)[spatial_dims - 2]
    window_max = pool(x, 2, 2)
    for axis in range(2, x.ndim):
        window_max = window_max.repeat_interleave(2, dim=axis)
    return x == window_max


@pytest.fixture(scope="module")
def segnet_2d() -> SegNet:
    torch.manual_seed(0)
    return SegNet(in_channels=3, num_classes=4, spatial_dims=2).eval()


def test_parameter_count_reduced_matches_u_segnet_paper(segnet_2d):
    assert count_parameters(segnet_2d) == PAPER_SEGNET_REDUCED


def test_parameter_count_full_vgg16():
    model = SegNet(in_channels=3, num_classes=4, config="full")
    assert count_parameters(model) == SEGNET_FULL
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 26  # 13 encoder + 13 decoder convs, the last is the classifier
    assert model.divisor == 32
    # The classes only change the classifier: 64 * 9 + 1 parameters per class.
    eleven = SegNet(in_channels=3, num_classes=11, config="full")
    assert count_parameters(eleven) == SEGNET_FULL + 7 * (64 * 9 + 1) == 29_449_355


def test_parameter_count_3d():
    model = SegNet(in_channels=3, num_classes=4, spatial_dims=3)
    assert count_parameters(model) == 10_413_892  # medseg/models/README.md


def test_layer_widths_reduced(segnet_2d):
    encoder = [
        (m.in_channels, m.out_channels)
        for m in segnet_2d.encoder.modules()
        if isinstance(m, nn.Conv2d)
    ]
    decoder = [
        (m.in_channels, m.out_channels)
        for m in segnet_2d.decoder[::-1].modules()
        if isinstance(m, nn.Conv2d)
    ]
    assert encoder == [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    assert decoder == [(256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64)]
    assert segnet_2d.classifier.kernel_size == (3, 3)
    assert (segnet_2d.classifier.in_channels, segnet_2d.classifier.out_channels) == (64, 4)
    assert segnet_2d.divisor == 8


def test_registry_builds_segnet():
    model = create_model("segnet", in_channels=3, num_classes=4)
    assert type(model) is SegNet
    assert count_parameters(model) == PAPER_SEGNET_REDUCED


def test_options_change_counts_as_expected():
    base = count_parameters(SegNet(in_channels=3, num_classes=4))
    k1 = count_parameters(SegNet(in_channels=3, num_classes=4, classifier_kernel_size=1))
    assert base - k1 == 64 * 4 * (9 - 1)
    no_norm = SegNet(in_channels=3, num_classes=4, norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_norm.modules())
    bn_widths = [64, 64, 128, 128, 256, 256, 256] + [256, 256, 128, 128, 64, 64]
    assert base - count_parameters(no_norm) == 2 * sum(bn_widths)
    assert count_parameters(SegNet(in_channels=3, num_classes=4, base_features=64)) == base


def test_he_init():
    torch.manual_seed(0)
    model = SegNet(in_channels=3, num_classes=4)
    conv = model.encoder[2][1][0]  # 256 -> 256, fan_in = 256 * 9
    assert isinstance(conv, nn.Conv2d)
    assert conv.weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    assert torch.all(conv.bias == 0)
    assert torch.all(model.classifier.bias == 0)


@pytest.mark.parametrize("shape, base_features", [((40, 40), 64), ((48, 56), 16)])
def test_forward_backward_2d(shape, base_features):
    """The paper's widths on its 40x40 patches; a narrower net for the other shape (speed)."""
    torch.manual_seed(0)
    model = SegNet(in_channels=3, num_classes=4, base_features=base_features)
    assert_forward_backward(model, torch.randn(1, 3, *shape), (1, 4, *shape))
    assert model.encoder[0][0][0].weight.grad.abs().sum() > 0


def test_forward_backward_3d():
    torch.manual_seed(0)
    model = SegNet(in_channels=2, num_classes=3, spatial_dims=3, base_features=8)
    assert_forward_backward(model, torch.randn(1, 2, 16, 24, 32), (1, 3, 16, 24, 32))


def test_forward_full_config():
    torch.manual_seed(0)
    model = SegNet(in_channels=1, num_classes=2, config="full", base_features=8).eval()
    assert model(torch.randn(1, 1, 64, 32)).shape == (1, 2, 64, 32)


def test_eval_mode_is_deterministic():
    torch.manual_seed(0)
    model = SegNet(in_channels=3, num_classes=4, base_features=16).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (2, 2, 4, 6, 8)])
def test_pool_unpool_matches_loop_reference(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    model = SegNet(in_channels=1, num_classes=2, spatial_dims=len(shape) - 2, base_features=4)
    pooled, indices = model.pool(x)
    unpooled = model.unpool(pooled, indices, output_size=x.shape[2:])
    np.testing.assert_array_equal(unpooled.numpy(), max_pool_unpool_loop(x.numpy()))


@pytest.mark.parametrize("spatial_dims, shape", [(2, (16, 24)), (3, (8, 16, 8))])
def test_decoder_unpools_with_the_matching_encoder_indices(spatial_dims, shape):
    """Each unpooled map is non-zero only at maxima of the matching encoder block's output."""
    torch.manual_seed(3)
    model = SegNet(in_channels=1, num_classes=2, spatial_dims=spatial_dims, base_features=4)
    model.eval()
    encoder_out, unpool_out = [], []
    for block in model.encoder:
        block.register_forward_hook(lambda m, i, o: encoder_out.append(o.detach().clone()))
    model.unpool.register_forward_hook(lambda m, i, o: unpool_out.append(o.detach().clone()))
    with torch.no_grad():
        model(torch.randn(2, 1, *shape))
    assert len(unpool_out) == len(encoder_out) == 3
    for level, unpooled in zip([2, 1, 0], unpool_out, strict=True):
        allowed = window_max_mask(encoder_out[level])
        assert unpooled.shape == encoder_out[level].shape
        assert (unpooled != 0).sum() > 0
        assert not torch.any((unpooled != 0) & ~allowed)


def test_divisor_error_gives_padded_shape(segnet_2d):
    with pytest.raises(ValueError, match=r"multiple of 8.*pad the input to \(48, 40\)"):
        segnet_2d(torch.zeros(1, 3, 42, 40))
    full = SegNet(in_channels=1, num_classes=2, config="full", base_features=4)
    with pytest.raises(ValueError, match=r"SegNet input must be a multiple of 32"):
        full(torch.zeros(1, 1, 40, 40))


def test_wrong_ndim_error(segnet_2d):
    with pytest.raises(ValueError, match=r"input of SegNet must be \(N, C, y, x\)"):
        segnet_2d(torch.zeros(3, 40, 40))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"config": "vgg"}, ValueError, "config must be one of"),
        ({"classifier_kernel_size": 2}, ValueError, "classifier_kernel_size must be odd"),
        ({"classifier_kernel_size": 0}, ValueError, "classifier_kernel_size must be >= 1, got 0"),
        ({"in_channels": 0}, ValueError, "in_channels must be >= 1, got 0"),
        ({"num_classes": 2.0}, TypeError, "num_classes must be an int"),
        ({"base_features": True}, TypeError, "base_features must be an int"),
        ({"spatial_dims": 1}, ValueError, "spatial_dims must be 2 or 3"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        SegNet(**{"in_channels": 1, "num_classes": 2, **kwargs})
