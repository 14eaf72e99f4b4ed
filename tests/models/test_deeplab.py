"""Tests for medseg.models.deeplab: DeepLab v2 (VGG16) with LargeFOV and ASPP heads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medseg.models import create_model
from medseg.models.blocks import count_parameters
from medseg.models.deeplab import AtrousBranch, DeepLab
from tests.models.checks import assert_eval_deterministic_train_random, assert_forward_backward

SMALL = {"base_features": 4, "head_channels": 8}
SMALL_RATES = [1, 2, 3, 4]


pytestmark = pytest.mark.usefixtures("native_cpu_convolutions")


def _input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _small(head: str = "largefov", **kwargs) -> DeepLab:
    options = {"in_channels": 3, "num_classes": 4, "head": head, **SMALL}
    if head == "aspp":
        options["rates"] = SMALL_RATES
    else:
        options["largefov_rate"] = 2
    return DeepLab(**{**options, **kwargs})


def _convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]


def test_registry_builds_deeplab():
    model = create_model("deeplab", in_channels=3, num_classes=4, head="aspp", **SMALL)
    assert type(model) is DeepLab
    assert model.model_kwargs["rates"] == [6, 12, 18, 24]


@pytest.mark.parametrize("head", ["largefov", "aspp"])
@pytest.mark.parametrize(
    "spatial_dims, shape", [(2, (40, 40)), (2, (37, 45)), (2, (8, 70)), (3, (16, 24, 32))]
)
def test_shape_finite_and_backward(head, spatial_dims, shape):
    model = _small(head, spatial_dims=spatial_dims)
    assert_forward_backward(model, _input((2, 3, *shape)), (2, 4, *shape))
    assert model.block1.conv1_1[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "spatial_dims, shape", [(2, (40, 40)), (2, (37, 45)), (2, (8, 9)), (3, (16, 24, 33))]
)
def test_output_stride_is_8_before_upsampling(spatial_dims, shape):
    model = _small("aspp", spatial_dims=spatial_dims).eval()
    x = _input((1, 3, *shape))
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
    cells = tuple(math.ceil(s / 8) for s in shape)  # ceil-mode pooling keeps every voxel
    assert features.shape == (1, 8 * SMALL["base_features"], *cells)
    assert logits.shape == (1, 4, *cells)


def test_eval_is_deterministic_and_train_uses_dropout():
    model = _small("aspp")
    assert_eval_deterministic_train_random(model, _input((2, 3, 37, 45)))
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 2 * len(SMALL_RATES) and all(m.p == 0.5 for m in dropouts)


def test_backbone_poolings_and_dilations():
    model = DeepLab(in_channels=3, num_classes=4, **SMALL)
    for index in (1, 2, 3):
        pool = getattr(model.get_submodule(f"block{index}"), f"pool{index}")
        assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (2, 2, 0, True)
    for index in (4, 5):
        pool = getattr(model.get_submodule(f"block{index}"), f"pool{index}")
        assert (pool.kernel_size, pool.stride, pool.padding) == (3, 1, 1)
    for index, num_convs in zip(range(1, 6), (2, 2, 3, 3, 3), strict=True):
        convs = _convs(model.get_submodule(f"block{index}"))
        assert len(convs) == num_convs
        for conv in convs:
            dilation = 2 if index == 5 else 1
            assert conv.kernel_size == (3, 3)
            assert conv.dilation == (dilation, dilation) and conv.padding == (dilation, dilation)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_largefov_head_defaults(spatial_dims):
    with torch.device("meta"):  # 1024-channel head, no need for real memory
        model = DeepLab(in_channels=3, num_classes=4, spatial_dims=spatial_dims)
    assert len(model.branches) == 1
    fc6, fc7, fc8 = _convs(model.branches[0])
    assert fc6.kernel_size == (3,) * spatial_dims
    assert fc6.dilation == (12,) * spatial_dims and fc6.padding == (12,) * spatial_dims
    assert (fc6.in_channels, fc6.out_channels) == (512, 1024)
    assert fc7.kernel_size == (1,) * spatial_dims and fc7.out_channels == 1024
    assert fc8.kernel_size == (1,) * spatial_dims and fc8.out_channels == 4


def test_aspp_head_defaults():
    with torch.device("meta"):
        model = DeepLab(in_channels=3, num_classes=4, head="aspp")
    assert len(model.branches) == 4
    assert all(isinstance(branch, AtrousBranch) for branch in model.branches)
    for branch, rate in zip(model.branches, (6, 12, 18, 24), strict=True):
        fc6, fc7, fc8 = _convs(branch)
        assert branch.rate == rate
        assert fc6.dilation == (rate, rate) and fc6.padding == (rate, rate)
        assert (fc6.out_channels, fc7.out_channels, fc8.out_channels) == (1024, 1024, 4)


def test_aspp_sums_its_branches():
    x = _input((2, 3, 40, 48))
    for keep in range(len(SMALL_RATES)):
        model = _small("aspp").eval()
        with torch.no_grad():
            for index, branch in enumerate(model.branches):
                if index != keep:
                    branch.fc8.weight.zero_()
                    branch.fc8.bias.zero_()
        # A LargeFOV net with the kept branch's rate and weights: the single-branch run.
        single = _small("largefov", largefov_rate=SMALL_RATES[keep]).eval()
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("branches.")}
        for key, value in model.branches[keep].state_dict().items():
            state[f"branches.0.{key}"] = value
        single.load_state_dict(state)
        with torch.no_grad():
            features = model.forward_features(x)
            torch.testing.assert_close(
                model.forward_head(features), model.branches[keep](features), rtol=0, atol=0
            )
            torch.testing.assert_close(model(x), single(x), rtol=1e-6, atol=1e-6)


def test_aspp_output_is_the_sum_of_branch_outputs():
    model = _small("aspp").eval()
    x = _input((1, 3, 24, 32))
    with torch.no_grad():
        features = model.forward_features(x)
        total = sum(branch(features) for branch in model.branches)
        torch.testing.assert_close(model.forward_head(features), total)


@pytest.mark.parametrize("shape", [(40, 48), (16, 16)])
def test_multiples_of_8_are_resized_as_align_corners_false(shape):
    model = _small("aspp").eval()
    x = _input((1, 3, *shape))
    with torch.no_grad():
        logits = model.forward_head(model.forward_features(x))
        ref = F.interpolate(logits, size=shape, mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x), ref, rtol=0, atol=0)


def test_3d_upsampling_is_trilinear():
    model = _small("largefov", spatial_dims=3).eval()
    x = _input((1, 3, 16, 8, 24))
    with torch.no_grad():
        logits = model.forward_head(model.forward_features(x))
        ref = F.interpolate(logits, size=(16, 8, 24), mode="trilinear", align_corners=False)
        torch.testing.assert_close(model(x), ref, rtol=0, atol=0)


def _identity_deeplab(**kwargs) -> DeepLab:
    """A 1-channel DeepLab whose every convolution passes channel 0 through (centre tap 1)."""
    model = DeepLab(
        in_channels=1, num_classes=1, base_features=1, head_channels=1, dropout=0.0, **kwargs
    )
    with torch.no_grad():
        for conv in _convs(model):
            conv.weight.zero_()
            conv.weight[(0, 0, *(k // 2 for k in conv.kernel_size))] = 1.0
            conv.bias.zero_()
    return model.eval()


@pytest.mark.parametrize("width", [72, 75, 77])
def test_output_pixel_i_is_input_pixel_i(width):
    # Identity convolutions: the output is the 8x upsampled max over 8x8 cells, widened by
    # the two stride-1 3x3 pools (2 cells each side). One bright cell, column cell 4 =
    # pixels 32-39 (centre 35.5), gives a profile symmetric about 35.5 for every width,
    # including widths that are not multiples of 8 (the grid is not stretched).
    model = _identity_deeplab(largefov_rate=1)
    x = torch.zeros(1, 1, 64, width)
    x[..., 24:32, 32:40] = 1.0
    with torch.no_grad():
        out = model(x)[0, 0, 27]  # the row through the bright cell's centre
    assert out.shape == (width,)
    for d in range(32):  # pixels 4-35 mirror 36-67, inside the interpolation's interior
        torch.testing.assert_close(out[35 - d], out[36 + d])
    # Cells 2-6 are 1: pixel i samples cell (i + 0.5) / 8 - 0.5, so 20 <= i <= 51 are 1,
    # 12-19 and 52-59 are ramps, the rest reads cells that are 0.
    torch.testing.assert_close(out[20:52], torch.ones(32))
    assert 0 < out[12] < out[19] < 1 and 0 < out[59] < out[52] < 1
    assert out[:12].max() == 0 and out[60:].max() == 0


def test_minimum_size_error():
    model = _small()
    assert model.min_size == 8
    assert model(_input((1, 3, 8, 8))).shape == (1, 4, 8, 8)
    with pytest.raises(
        ValueError, match=r"at least 8 .* got \(7, 40\); pad the input to \(8, 40\)"
    ):
        model(_input((1, 3, 7, 40)))
    model3d = _small(spatial_dims=3)
    with pytest.raises(ValueError, match=r"got \(16, 5, 16\); pad the input to \(16, 8, 16\)"):
        model3d(_input((1, 3, 16, 5, 16)))


def test_input_shape_errors():
    model = _small()
    with pytest.raises(ValueError, match=r"input of DeepLab must be \(N, C, y, x\)"):
        model(torch.zeros(3, 40, 40))
    with pytest.raises(ValueError, match="input of DeepLab must have 3 channels"):
        model(torch.zeros(1, 2, 40, 40))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"head": "deeplabv3"}, ValueError, r"head must be one of \['largefov', 'aspp'\]"),
        ({"spatial_dims": 1}, ValueError, "spatial_dims must be 2 or 3"),
        ({"rates": []}, ValueError, "rates must be a non-empty list of ints"),
        ({"rates": 6}, ValueError, "rates must be a non-empty list of ints"),
        ({"rates": [6, 0]}, ValueError, r"rates\[1\] must be >= 1, got 0"),
        ({"rates": [6, 1.5]}, TypeError, r"rates\[1\] must be an int"),
        ({"largefov_rate": 0}, ValueError, "largefov_rate must be >= 1"),
        ({"head_channels": 0}, ValueError, "head_channels must be >= 1"),
        ({"base_features": None}, TypeError, "base_features must be an int"),
        ({"dropout": -0.1}, ValueError, r"dropout must be in \[0, 1\)"),
        ({"norm": 1}, TypeError, "norm must be True or False, got int 1"),
    ],
)
def test_option_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        DeepLab(**{"in_channels": 3, "num_classes": 4, **kwargs})


def test_batch_norm_variant_runs():
    model = _small("aspp", norm=True)
    num_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert num_norms == 13 + 2 * len(SMALL_RATES)  # every conv but fc8
    out = model(_input((2, 3, 40, 40)))
    assert out.shape == (2, 4, 40, 40) and torch.isfinite(out).all()


def test_fc8_initialisation():
    model = DeepLab(in_channels=3, num_classes=4, base_features=4, head="aspp", rates=[1, 2])
    for branch in model.branches:
        weight = branch.fc8.weight  # (4, 1024, 1, 1): 4096 draws from N(0, 0.01^2)
        assert abs(weight.std().item() - 0.01) < 0.001
        assert torch.count_nonzero(branch.fc8.bias) == 0


def _vgg16_conv_parameters(in_channels: int, width: int, kernel_volume: int) -> int:
    """VGG16's 13 convolutions (weights + biases) with block widths width x (1, 2, 4, 8, 8)."""
    channels = [in_channels] + [width] * 2 + [2 * width] * 2 + [4 * width] * 3
    channels += [8 * width] * 6
    return sum(
        cin * cout * kernel_volume + cout
        for cin, cout in zip(channels[:-1], channels[1:], strict=True)
    )


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_default_parameter_counts(spatial_dims):
    c, k, d = 3, 4, spatial_dims
    backbone = _vgg16_conv_parameters(c, 64, 3**d)
    branch = (512 * 1024 * 3**d + 1024) + (1024 * 1024 + 1024) + (1024 * k + k)
    with torch.device("meta"):
        largefov = DeepLab(in_channels=c, num_classes=k, spatial_dims=d)
        aspp = DeepLab(in_channels=c, num_classes=k, spatial_dims=d, head="aspp")
    assert count_parameters(largefov) == backbone + branch
    assert count_parameters(aspp) == backbone + 4 * branch
    if spatial_dims == 2:
        assert backbone == 14_714_688  # torchvision's VGG16 "features"
        assert (count_parameters(largefov), count_parameters(aspp)) == (20_488_004, 37_807_952)
