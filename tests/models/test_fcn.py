"""Tests for medseg.models.fcn: FCN-32s, FCN-16s, FCN-8s and the staged-training helpers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medseg.models import create_model, load_weights
from medseg.models.blocks import bilinear_kernel, count_parameters
from medseg.models.fcn import (
    FCN8s,
    FCN16s,
    FCN32s,
    init_fcn8s_from_fcn16s,
    init_fcn16s_from_fcn32s,
)
from tests.models.checks import assert_eval_deterministic_train_random, assert_forward_backward

CLASSES = (FCN32s, FCN16s, FCN8s)
SMALL = {"base_features": 4, "fc_channels": 8, "fc_kernel_size": 3}
# name -> upsampling factor of each transposed convolution
UPSAMPLERS = {
    FCN32s: {"upscore": 32},
    FCN16s: {"upscore2": 2, "upscore16": 16},
    FCN8s: {"upscore2": 2, "upscore_pool4": 2, "upscore8": 8},
}
SKIP_SCORES = {FCN32s: [], FCN16s: ["score_pool4"], FCN8s: ["score_pool4", "score_pool3"]}


pytestmark = pytest.mark.usefixtures("native_cpu_convolutions")


def _perturb(model: nn.Module, *, seed: int, keep: tuple[str, ...] = (), scale: float = 0.05):
    """Add N(0, scale^2) noise to every parameter not under ``keep``: a 'trained-ish' net.

    Every score layer starts at zero, so an untouched net outputs zeros; this makes the
    outputs depend on the input. The noise is seeded (the tests' numbers depend on it only
    through tolerances, not through expected values).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.startswith(keep):
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                parameter.add_(scale * noise)
    return model


def _input(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _shift_mean(t: torch.Tensor, shift: int) -> torch.Tensor:
    """Mean of ``t`` shifted by -shift and +shift along every spatial axis (wraps at borders)."""
    for dim in range(2, t.ndim):
        t = 0.5 * (t.roll(shift, dim) + t.roll(-shift, dim))
    return t


def _interior(t: torch.Tensor, margin: int) -> torch.Tensor:
    return t[(slice(None), slice(None), *[slice(margin, s - margin) for s in t.shape[2:]])]


def _set_identity(model: nn.Module) -> nn.Module:
    """Every convolution passes channel 0 through unchanged (centre tap 1), the rest is 0."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                module.weight.zero_()
                centre = tuple(k // 2 for k in module.kernel_size)
                module.weight[(0, 0, *centre)] = 1.0
                module.bias.zero_()
    return model


@pytest.mark.parametrize("name, cls", [("fcn32s", FCN32s), ("fcn16s", FCN16s), ("fcn8s", FCN8s)])
def test_registry_builds_each_variant(name, cls):
    model = create_model(name, in_channels=3, num_classes=4, **SMALL)
    assert type(model) is cls
    assert model.model_kwargs["fc_kernel_size"] == 3


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    "spatial_dims, shape", [(2, (40, 40)), (2, (37, 45)), (2, (1, 70)), (3, (16, 24, 32))]
)
def test_shape_finite_and_backward(cls, spatial_dims, shape):
    num_classes = 4 if spatial_dims == 2 else 2  # 3D: FCN-32s's upscore has K^2 64^3 weights
    torch.manual_seed(0)  # construction draws from the global RNG; fix it, whatever ran before
    model = cls(in_channels=3, num_classes=num_classes, spatial_dims=spatial_dims, **SMALL)
    _perturb(model, seed=1)
    assert_forward_backward(model, _input((2, 3, *shape)), (2, num_classes, *shape))
    assert model.block1.conv1_1[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", CLASSES)
def test_eval_is_deterministic_and_train_uses_dropout(cls):
    model = _perturb(cls(in_channels=3, num_classes=4, **SMALL), seed=2)
    assert_eval_deterministic_train_random(model, _input((2, 3, 37, 45)))


@pytest.mark.parametrize("cls", CLASSES)
def test_fresh_model_outputs_zero_logits(cls):
    # score_fr is zero-initialised as in the paper (Sec. 4.3), the skip scores too.
    model = cls(in_channels=3, num_classes=4, **SMALL).eval()
    assert torch.equal(model(_input((1, 3, 40, 40))), torch.zeros(1, 4, 40, 40))


@pytest.mark.parametrize("cls", [FCN16s, FCN8s])
def test_skip_score_layers_are_zero_at_construction(cls):
    model = cls(in_channels=3, num_classes=4, **SMALL)
    for name in SKIP_SCORES[cls]:
        layer = getattr(model, name)
        assert layer.kernel_size == (1, 1)
        assert torch.count_nonzero(layer.weight) == 0
        assert torch.count_nonzero(layer.bias) == 0
    assert model.score_pool4.in_channels == 8 * SMALL["base_features"]  # pool4 width
    if cls is FCN8s:
        assert model.score_pool3.in_channels == 4 * SMALL["base_features"]  # pool3 width


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_upsamplers_are_learnable_bilinear_at_construction(cls, spatial_dims):
    model = cls(in_channels=3, num_classes=2, spatial_dims=spatial_dims, **SMALL)
    for name, factor in UPSAMPLERS[cls].items():
        layer = getattr(model, name)
        assert isinstance(layer, (nn.ConvTranspose2d, nn.ConvTranspose3d)[spatial_dims - 2])
        assert layer.stride == (factor,) * spatial_dims
        assert layer.bias is None
        assert layer.weight.requires_grad
        torch.testing.assert_close(
            layer.weight, bilinear_kernel(2, 2 * factor, spatial_dims), rtol=0, atol=0
        )


@pytest.mark.parametrize(
    "cls, name, factor", [(cls, n, f) for cls in CLASSES for n, f in UPSAMPLERS[cls].items()]
)
def test_upsampler_is_bilinear_interpolation(cls, name, factor):
    layer = getattr(cls(in_channels=1, num_classes=2, **SMALL), name)
    # A constant image upsamples to the same constant away from the border (half a factor).
    constant = torch.full((1, 2, 3, 4), 2.5)
    with torch.no_grad():
        up = _interior(layer(constant), factor // 2)
    assert up.shape == (1, 2, 3 * factor - factor, 4 * factor - factor)
    torch.testing.assert_close(up, torch.full_like(up, 2.5))
    # Any image: the interior equals align_corners=False interpolation (half-pixel centres).
    x = _input((1, 2, 3, 4))
    with torch.no_grad():
        up = layer(x)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    torch.testing.assert_close(_interior(up, factor // 2), _interior(ref, factor // 2))


def _identity_fcn32s() -> FCN32s:
    """An FCN-32s computing bilinear_up32(max over 32x32 cells) of channel 0 (input >= 0)."""
    model = FCN32s(
        in_channels=1, num_classes=1, base_features=1, fc_channels=1, fc_kernel_size=1, dropout=0.0
    )
    return _set_identity(model).eval()


def test_output_pixel_i_is_input_pixel_i():
    # Columns 0-31 are 1, columns 32-63 are 0: cells (stride 32) centred at 15.5 and 47.5.
    x = torch.zeros(1, 1, 64, 64)
    x[..., :32] = 1.0
    with torch.no_grad():
        out = _identity_fcn32s()(x)[0, 0]
    # The transition is symmetric about 31.5, the boundary between the two cells.
    # (Rows 16-47 are inside both cells' vertical extent; the outer 16 fade to the border.)
    rows = slice(16, 48)
    for d in range(16):
        torch.testing.assert_close(out[rows, 31 - d] + out[rows, 32 + d], torch.ones(32))
    assert (out[rows, 31] > 0.5).all() and (out[rows, 32] < 0.5).all()
    # Cell 0's value peaks symmetrically about its centre 15.5: 1 - 0.5 / 32 at 15 and 16.
    torch.testing.assert_close(out[rows, 15], torch.full((32,), 63 / 64))
    torch.testing.assert_close(out[rows, 16], torch.full((32,), 63 / 64))


def test_odd_size_is_zero_padded_to_a_multiple_of_32_and_cropped():
    # 37 x 45 -> 64 x 64: 27 rows (13 before, 14 after), 19 columns (9 before, 10 after).
    model = _identity_fcn32s()
    x = _input((1, 1, 37, 45)).abs()
    padded = F.pad(x, (9, 10, 13, 14))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., 13:50, 9:54], rtol=0, atol=0)


def _double(model: nn.Module) -> nn.Module:
    return model.double().eval()


def test_fcn16s_from_fcn32s_reproduces_fcn32s_at_initialisation():
    fcn32s = FCN32s(in_channels=2, num_classes=3, **SMALL)
    _double(_perturb(fcn32s, seed=3, keep=("upscore",)))  # trained-ish, upscore bilinear
    fcn16s = FCN16s.from_fcn32s(fcn32s)
    assert type(fcn16s) is FCN16s and not fcn16s.training
    assert fcn16s.score_pool4.weight.dtype == torch.float64
    state16 = fcn16s.state_dict()
    for key, value in fcn32s.state_dict().items():
        if key != "upscore.weight":
            assert torch.equal(state16[key], value), key
    x = _input((2, 2, 96, 64), seed=4, dtype=torch.float64)  # multiples of 32: no padding
    with torch.no_grad():
        out32, out16 = fcn32s(x), fcn16s(x)
        # Same stride-32 scores, and the pool4 skip adds exactly nothing.
        score = fcn32s._encode(x)[2]
        torch.testing.assert_close(out16, fcn16s.upscore16(fcn16s.upscore2(score)))
    assert out32.abs().max() > 0.1
    # Bilinear 2x then 16x = bilinear 32x then the mean of the -8/+8 pixel shifts (exactly,
    # 8 pixels inside the border): FCN-16s reproduces FCN-32s up to that fixed filter.
    diff = _interior(out16 - _shift_mean(out32, 8), 8)
    assert diff.abs().max() < 1e-5
    assert (out16 - out32).abs().max() > 1e-3  # ...and it is not the identity


def test_fcn8s_from_fcn16s_reproduces_fcn16s_at_initialisation():
    fcn16s = FCN16s(in_channels=2, num_classes=3, **SMALL)
    # trained-ish: score_pool4 and upscore2 are copied too, upscore16 stays bilinear
    _double(_perturb(fcn16s, seed=5, keep=("upscore16",)))
    fcn8s = FCN8s.from_fcn16s(fcn16s)
    state8 = fcn8s.state_dict()
    for key, value in fcn16s.state_dict().items():
        if key != "upscore16.weight":
            assert torch.equal(state8[key], value), key
    assert torch.count_nonzero(fcn8s.score_pool3.weight) == 0
    x = _input((2, 2, 64, 96), seed=6, dtype=torch.float64)
    with torch.no_grad():
        out16, out8 = fcn16s(x), fcn8s(x)
    assert out16.abs().max() > 0.1
    diff = _interior(out8 - _shift_mean(out16, 4), 4)
    assert diff.abs().max() < 1e-5


def test_staged_helpers_in_3d_and_with_batch_norm():
    kwargs = {"in_channels": 1, "num_classes": 2, "spatial_dims": 3, "norm": True, **SMALL}
    fcn32s = _double(_perturb(FCN32s(**kwargs), seed=7, keep=("upscore",)))
    fcn32s.block1.conv1_1[1].running_mean.fill_(0.1)  # buffers are copied too
    fcn8s = FCN8s.from_fcn16s(FCN16s.from_fcn32s(fcn32s))
    assert torch.equal(fcn8s.block1.conv1_1[1].running_mean, fcn32s.block1.conv1_1[1].running_mean)
    x = _input((1, 1, 64, 64, 64), seed=8, dtype=torch.float64)
    with torch.no_grad():
        out32, out8 = fcn32s(x), fcn8s(x)
    # 32x = 16x after 2x, shifted by +-8; 16x = 8x after 2x, shifted by +-4 (8 shifts in 3D).
    diff = _interior(out8 - _shift_mean(_shift_mean(out32, 8), 4), 12)
    assert diff.abs().max() < 1e-5


def test_init_functions_work_in_place_and_check_their_arguments():
    fcn32s = _perturb(FCN32s(in_channels=3, num_classes=4, **SMALL), seed=9)
    fcn16s = FCN16s(in_channels=3, num_classes=4, **SMALL)
    assert init_fcn16s_from_fcn32s(fcn16s, fcn32s) is fcn16s
    assert torch.equal(fcn16s.fc6[0].weight, fcn32s.fc6[0].weight)
    fcn8s = FCN8s(in_channels=3, num_classes=4, **SMALL)
    assert init_fcn8s_from_fcn16s(fcn8s, fcn16s) is fcn8s
    assert torch.equal(fcn8s.score_fr.weight, fcn32s.score_fr.weight)
    other = FCN16s(in_channels=3, num_classes=5, **SMALL)
    with pytest.raises(ValueError, match=r"fcn16s must have the options of fcn32s.*num_classes"):
        init_fcn16s_from_fcn32s(other, fcn32s)
    with pytest.raises(TypeError, match="fcn32s must be an FCN32s, got FCN16s"):
        FCN16s.from_fcn32s(fcn16s)
    with pytest.raises(TypeError, match="fcn16s must be an FCN16s, got FCN32s"):
        FCN8s.from_fcn16s(fcn32s)
    with pytest.raises(TypeError, match="must be an FCN8s and an FCN16s"):
        init_fcn8s_from_fcn16s(fcn16s, fcn16s)


def _vgg16_conv_parameters(in_channels: int, width: int, kernel_volume: int) -> int:
    """VGG16's 13 convolutions (weights + biases) with block widths width x (1, 2, 4, 8, 8)."""
    layers = [(in_channels, width), (width, width)]
    layers += [(width, 2 * width), (2 * width, 2 * width)]
    layers += [(2 * width, 4 * width)] + [(4 * width, 4 * width)] * 2
    layers += [(4 * width, 8 * width)] + [(8 * width, 8 * width)] * 2
    layers += [(8 * width, 8 * width)] * 3
    return sum(cin * cout * kernel_volume + cout for cin, cout in layers)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_default_parameter_counts(spatial_dims):
    c, k, d = 3, 4, spatial_dims
    backbone = _vgg16_conv_parameters(c, 64, 3**d)
    assert spatial_dims == 3 or backbone == 14_714_688  # torchvision's VGG16 "features"
    fc = (512 * 7**d * 4096 + 4096) + (4096 * 4096 + 4096)
    score_fr = 4096 * k + k
    fcn32s = backbone + fc + score_fr + k * k * 64**d
    fcn16s = backbone + fc + score_fr + (512 * k + k) + k * k * (4**d + 32**d)
    fcn8s = fcn16s - k * k * 32**d + (256 * k + k) + k * k * (4**d + 16**d)
    with torch.device("meta"):  # no memory for ~10^8-10^9 weights
        counts = [
            count_parameters(cls(in_channels=c, num_classes=k, spatial_dims=d)) for cls in CLASSES
        ]
    assert counts == [fcn32s, fcn16s, fcn8s]
    if spatial_dims == 2:
        assert counts == [134_342_468, 134_295_624, 134_284_620]


@pytest.mark.parametrize("cls", CLASSES)
def test_batch_norm_variant_runs(cls):
    model = cls(in_channels=3, num_classes=4, norm=True, **SMALL)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13 + 2
    out = _perturb(model, seed=10)(_input((2, 3, 40, 40)))
    assert out.shape == (2, 4, 40, 40) and torch.isfinite(out).all()


def test_load_weights_round_trip():
    source = _perturb(FCN8s(in_channels=3, num_classes=4, **SMALL), seed=11).eval()
    target = load_weights(FCN8s(in_channels=3, num_classes=4, **SMALL), source.state_dict()).eval()
    x = _input((1, 3, 37, 45))
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_input_shape_errors():
    model = FCN8s(in_channels=3, num_classes=4, **SMALL)
    with pytest.raises(ValueError, match=r"input of FCN8s must be \(N, C, y, x\)"):
        model(torch.zeros(3, 40, 40))
    with pytest.raises(ValueError, match=r"input of FCN8s must have 3 channels"):
        model(torch.zeros(1, 1, 40, 40))
    with pytest.raises(ValueError, match=r"must be \(N, C, z, y, x\)"):
        FCN32s(in_channels=1, num_classes=2, spatial_dims=3, **SMALL)(torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"spatial_dims": 1}, ValueError, "spatial_dims must be 2 or 3"),
        ({"fc_kernel_size": 4}, ValueError, "fc_kernel_size must be odd"),
        ({"fc_kernel_size": 0}, ValueError, "fc_kernel_size must be >= 1"),
        ({"base_features": 0}, ValueError, "base_features must be >= 1"),
        ({"fc_channels": 2.0}, TypeError, "fc_channels must be an int"),
        ({"num_classes": 0}, ValueError, "num_classes must be >= 1"),
        ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\)"),
        ({"norm": "yes"}, TypeError, "norm must be True or False, got str 'yes'"),
    ],
)
def test_option_errors(kwargs, error, match):
    options = {"in_channels": 3, "num_classes": 4, **SMALL, **kwargs}
    with pytest.raises(error, match=match):
        FCN16s(**options)
