"""Tests for medseg.models.usegnet (U-SegNet, Kumar et al., ICIP 2018)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg.models import create_model
from medseg.models.blocks import count_parameters
from medseg.models.segnet import SegNet
from medseg.models.usegnet import USegNet
from tests.models.checks import assert_forward_backward

# Kumar et al. 2018, in_channels=3, num_classes=4, 2D 40x40x3 patches.
PAPER_SEGNET = 3_475_396
PAPER_USEGNET = 3_483_652
CONV1X1_128_TO_64 = 128 * 64 + 64
CONV1X1_256_TO_128 = 256 * 128 + 128


def _with_segnet_weights(model: USegNet, segnet: SegNet) -> USegNet:
    """Load ``segnet``'s weights; only the skip fusions (``fuse.*``) stay as they are."""
    result = model.load_state_dict(segnet.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith("fuse.") for k in result.missing_keys)
    return model


def _set_fuse(model: USegNet, level: int, *, decoder_half: float, skip_half: float) -> None:
    """Set fuse[level]'s 1x1 conv to ``decoder_half * I`` on [x] and ``skip_half * I`` on [skip]."""
    conv = model.fuse[level][0]
    width = conv.out_channels
    eye = torch.eye(width).reshape(width, width, *[1] * model.spatial_dims)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([decoder_half * eye, skip_half * eye], dim=1))
        conv.bias.zero_()


def test_parameter_count_matches_paper():
    usegnet = USegNet(in_channels=3, num_classes=4)
    segnet = SegNet(in_channels=3, num_classes=4)
    assert count_parameters(usegnet) == PAPER_USEGNET
    assert count_parameters(usegnet) - count_parameters(segnet) == CONV1X1_128_TO_64 == 8_256
    assert count_parameters(segnet) == PAPER_SEGNET


def test_two_skips_add_a_1x1_conv_256_to_128():
    one = count_parameters(USegNet(in_channels=3, num_classes=4, skips=1))
    two = count_parameters(USegNet(in_channels=3, num_classes=4, skips=2))
    assert two - one == CONV1X1_256_TO_128
    assert two == 3_516_548  # medseg/models/README.md


def test_skip_layer_shapes():
    model = USegNet(in_channels=3, num_classes=4, skips=2)
    convs = [m[0] for m in model.fuse]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (128, 64, (1, 1)),
        (256, 128, (1, 1)),
    ]
    assert all(isinstance(m[-1], nn.ReLU) and len(m) == 2 for m in model.fuse)  # no BN
    assert all(torch.all(c.bias == 0) for c in convs)  # He init, zero bias


def test_registry_builds_usegnet():
    model = create_model("usegnet", in_channels=3, num_classes=4)
    assert type(model) is USegNet
    assert count_parameters(model) == PAPER_USEGNET


@pytest.mark.parametrize(
    "shape, skips, base_features", [((40, 40), 1, 64), ((40, 40), 2, 16), ((48, 56), 1, 16)]
)
def test_forward_backward_2d(shape, skips, base_features):
    """The paper's network on its 40x40 patches; narrower nets for the rest (speed)."""
    torch.manual_seed(0)
    model = USegNet(in_channels=3, num_classes=4, skips=skips, base_features=base_features)
    assert_forward_backward(model, torch.randn(1, 3, *shape), (1, 4, *shape))
    assert all(m[0].weight.grad.abs().sum() > 0 for m in model.fuse)


def test_forward_backward_3d():
    torch.manual_seed(0)
    model = USegNet(in_channels=1, num_classes=3, spatial_dims=3, base_features=8, skips=2)
    assert_forward_backward(model, torch.randn(1, 1, 16, 24, 32), (1, 3, 16, 24, 32))


def test_full_config_skips_at_top_levels():
    torch.manual_seed(0)
    model = USegNet(in_channels=1, num_classes=2, config="full", base_features=8, skips=5)
    assert [m[0].in_channels for m in model.fuse] == [16, 32, 64, 128, 128]
    assert model.eval()(torch.randn(1, 1, 32, 64)).shape == (1, 2, 32, 64)


@pytest.mark.parametrize("skips", [1, 2])
@pytest.mark.parametrize("spatial_dims, shape", [(2, (40, 40)), (3, (8, 16, 24))])
def test_identity_fusion_reproduces_segnet(spatial_dims, shape, skips):
    """With fuse = [I | 0] (and ReLU on ReLU outputs), U-SegNet is SegNet with the same weights.

    This checks that the skip sits after the decoder block's first conv + BN + ReLU and
    that U-SegNet otherwise is SegNet, layer for layer.
    """
    torch.manual_seed(0)
    kwargs = {"in_channels": 2, "num_classes": 3, "spatial_dims": spatial_dims, "base_features": 8}
    segnet = SegNet(**kwargs).eval()
    usegnet = _with_segnet_weights(USegNet(**kwargs, skips=skips), segnet).eval()
    for level in range(skips):
        _set_fuse(usegnet, level, decoder_half=1.0, skip_half=0.0)
    x = torch.randn(2, 2, *shape)
    with torch.no_grad():
        expected = segnet(x)
        torch.testing.assert_close(usegnet(x), expected, rtol=0, atol=1e-5)
        # The skip half is really used: giving it weight changes the output.
        _set_fuse(usegnet, 0, decoder_half=1.0, skip_half=0.5)
        assert (usegnet(x) - expected).abs().max() > 1e-3


def test_top_skip_alone_carries_encoder_features():
    """With the decoder half of the top 1x1 conv at zero, the logits are the classifier
    applied to the fused top encoder features: the skip path is [decoder, encoder]."""
    torch.manual_seed(0)
    model = USegNet(in_channels=3, num_classes=4, base_features=16).eval()
    with torch.no_grad():
        model.fuse[0][0].weight[:, :16] = 0
        x = torch.randn(2, 3, 40, 48)
        encoder_top = model.encoder[0](x)
        zeros = torch.zeros_like(encoder_top)
        expected = model.classifier(model.fuse[0](torch.cat([zeros, encoder_top], dim=1)))
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)


def test_eval_mode_is_deterministic():
    torch.manual_seed(0)
    model = USegNet(in_channels=3, num_classes=4, skips=2, base_features=16).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_divisor_error_gives_padded_shape():
    model = USegNet(in_channels=3, num_classes=4)
    with pytest.raises(ValueError, match=r"USegNet input must be a multiple of 8.*\(48, 40\)"):
        model(torch.zeros(1, 3, 42, 40))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"skips": 0}, ValueError, "skips must be >= 1, got 0"),
        ({"skips": 4}, ValueError, r"skips must be at most the number of encoder blocks \(3"),
        ({"skips": "2"}, TypeError, "skips must be an int"),
        ({"config": "tiny"}, ValueError, "config must be one of"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        USegNet(**{"in_channels": 1, "num_classes": 2, **kwargs})
