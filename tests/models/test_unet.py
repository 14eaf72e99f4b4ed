"""U-Net: shapes (2D/3D, same/valid padding), size arithmetic, errors, init, parameter counts."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.models import create_model
from medseg.models.unet import UNet
from tests.models.checks import assert_divisor_error


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def unet_params_by_hand(
    *, in_channels: int, num_classes: int, base: int, depth: int, norm: bool, dims: int = 2
) -> int:
    """U-Net parameters from the paper's description: weights + biases (+ BN gamma, beta)."""
    k3, k2 = 3**dims, 2**dims  # kernel volumes of the 3x3 convs and the 2x2 up-convs
    f = [base * 2**i for i in range(depth + 1)]
    bn = 2 if norm else 0
    total = 0
    for i in range(depth + 1):  # contracting path + bottleneck: two 3x3 convs per level
        c_in = in_channels if i == 0 else f[i - 1]
        total += k3 * c_in * f[i] + f[i] + k3 * f[i] * f[i] + f[i] + 2 * bn * f[i]
    for i in range(depth):  # up-conv f[i+1] -> f[i], then 3x3 convs on 2 f[i] and f[i]
        total += k2 * f[i + 1] * f[i] + f[i]
        total += k3 * 2 * f[i] * f[i] + f[i] + k3 * f[i] * f[i] + f[i] + 2 * bn * f[i]
    return total + f[0] * num_classes + num_classes  # 1x1 classifier


# (kwargs, documented count): the rows of README_unet.md
DOCUMENTED = [
    (dict(in_channels=1, num_classes=2, base_features=64, depth=4), 31_030_658),  # Fig. 1
    (dict(in_channels=3, num_classes=4, base_features=64, depth=3), 7_697_540),  # default
    (dict(in_channels=3, num_classes=4, base_features=64, depth=3, norm=True), 7_703_172),
    (dict(in_channels=3, num_classes=4, base_features=48, depth=3), 4_330_852),
    (dict(in_channels=3, num_classes=4, base_features=46, depth=3), 3_977_624),  # recommended
    (dict(in_channels=3, num_classes=4, base_features=93, depth=2), 3_931_672),
    (dict(in_channels=3, num_classes=4, base_features=32, depth=3), 1_925_700),
    (dict(in_channels=1, num_classes=4, base_features=32, depth=3, spatial_dims=3), 5_599_812),
]


@pytest.mark.parametrize(("kwargs", "expected"), DOCUMENTED)
def test_parameter_count_matches_hand_formula(kwargs, expected):
    by_hand = unet_params_by_hand(
        in_channels=kwargs["in_channels"],
        num_classes=kwargs["num_classes"],
        base=kwargs["base_features"],
        depth=kwargs["depth"],
        norm=kwargs.get("norm", False),
        dims=kwargs.get("spatial_dims", 2),
    )
    assert by_hand == expected
    assert _num_params(UNet(**kwargs)) == expected


def test_usegnet_paper_count_is_not_reached_by_faithful_unets():
    """The U-SegNet paper's 3,900,996 (40x40x3 in, 4 classes) is matched by no faithful
    config: the closest depth-3 one (base 46) is 1.96% above it, base 45 2.4% below."""
    target = 3_900_996
    counts = {
        (base, depth, norm): unet_params_by_hand(
            in_channels=3, num_classes=4, base=base, depth=depth, norm=norm
        )
        for base in range(8, 129)
        for depth in (1, 2, 3)
        for norm in (False, True)
    }
    assert target not in counts.values()
    depth3 = {k: v for k, v in counts.items() if k[1] == 3}
    best = min(depth3, key=lambda k: abs(depth3[k] - target))
    assert best == (46, 3, False)
    assert round(100 * (depth3[best] - target) / target, 2) == 1.96


@pytest.mark.parametrize(
    ("spatial_dims", "shape", "depth"),
    [(2, (40, 40), 3), (2, (48, 56), 3), (2, (16, 24), 2), (3, (16, 24, 32), 3), (3, (8, 8, 8), 1)],
)
def test_same_padding_shapes_and_finite(spatial_dims, shape, depth):
    torch.manual_seed(0)  # He init draws from the global RNG
    model = UNet(
        in_channels=3, num_classes=4, spatial_dims=spatial_dims, base_features=4, depth=depth
    )
    model.eval()
    logits = model(_x(2, 3, *shape))
    assert logits.shape == (2, 4, *shape)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert model.output_shape(shape) == shape


def test_valid_padding_matches_paper_fig1():
    """Depth 4, 572 x 572 tile -> 388 x 388 output (Ronneberger et al., Fig. 1)."""
    assert UNet.input_size_for(388, depth=4, padding="valid") == 572
    model = UNet(in_channels=1, num_classes=2, base_features=2, depth=4, padding="valid").eval()
    assert model.output_shape((572, 572)) == (388, 388)
    assert model(_x(1, 1, 572, 572)).shape == (1, 2, 388, 388)


def test_valid_padding_3d_per_axis_sizes():
    # depth 2: input 4b + 28 -> output 4b - 12, b >= 4
    model = UNet(
        in_channels=1, num_classes=3, spatial_dims=3, base_features=2, depth=2, padding="valid"
    ).eval()
    assert model.output_shape((44, 48, 52)) == (4, 8, 12)
    assert model(_x(1, 1, 44, 48, 52)).shape == (1, 3, 4, 8, 12)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_input_size_for_is_the_smallest_valid_size(depth):
    model = UNet(in_channels=1, num_classes=2, base_features=1, depth=depth, padding="valid")
    valid = [s for s in range(1, 400) if _is_valid(model, s)]
    # valid sizes form an arithmetic sequence with step 2**depth
    assert all(b - a == 2**depth for a, b in zip(valid, valid[1:], strict=False))
    for out in range(1, 120):
        size = UNet.input_size_for(out, depth=depth, padding="valid")
        assert model.output_shape((size, size))[0] >= out
        smaller = [s for s in valid if s < size]
        assert all(model.output_shape((s, s))[0] < out for s in smaller)
        assert UNet.input_size_for(out, depth=depth, padding="same") == math.ceil(
            out / 2**depth
        ) * (2**depth)


def _is_valid(model: UNet, size: int) -> bool:
    try:
        model.output_shape((size, size))
    except ValueError:
        return False
    return True


def test_backward_gives_finite_gradients_everywhere():
    torch.manual_seed(0)
    model = UNet(in_channels=3, num_classes=4, base_features=4, norm=True, dropout=0.5)
    model.train()
    model(_x(2, 3, 40, 40)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert model.head.weight.grad.abs().sum() > 0


def test_eval_mode_is_deterministic():
    model = UNet(in_channels=3, num_classes=4, base_features=4, norm=True, dropout=0.5).eval()
    x = _x(2, 3, 40, 40)
    assert torch.equal(model(x), model(x))


def test_dropout_acts_on_bottleneck_in_training_only():
    torch.manual_seed(0)
    model = UNet(in_channels=3, num_classes=4, base_features=4, depth=3, dropout=0.5)
    seen = []
    model.dropout.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    x = _x(2, 3, 40, 40)
    model.train()
    assert not torch.equal(model(x), model(x))
    assert seen[0] == (2, 4 * 2**3, 5, 5)  # end of the contracting path
    model.eval()
    assert torch.equal(model(x), model(x))
    no_dropout = UNet(in_channels=3, num_classes=4, base_features=4, dropout=0.0).train()
    assert torch.equal(no_dropout(x), no_dropout(x))


def test_he_initialisation_statistics():
    torch.manual_seed(0)
    model = UNet(in_channels=3, num_classes=4, base_features=16, depth=3)
    conv = model.encoder[3][1][0]  # bottleneck conv 128 -> 128, 3x3: 147,456 weights
    fan_in = 128 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
    assert abs(conv.weight.mean().item()) < 0.1 * math.sqrt(2 / fan_in)
    assert torch.count_nonzero(conv.bias) == 0
    up = model.up[2]  # 128 -> 64, 2x2 stride 2: each output voxel sees 128 inputs
    assert up.weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.1)
    assert torch.count_nonzero(up.bias) == 0


def test_same_padding_divisor_error_gives_padded_shape():
    model = UNet(in_channels=3, num_classes=4, base_features=2, depth=3)
    assert model.divisor == 8
    assert_divisor_error(model, _x(1, 3, 41, 40), padded=(48, 40))
    with pytest.raises(ValueError, match=r"multiple of 8"):
        model.output_shape((40, 44))


def test_valid_padding_size_error_names_nearest_sizes():
    model = UNet(in_channels=1, num_classes=2, base_features=1, depth=4, padding="valid")
    with pytest.raises(ValueError, match=r"16\*k \+ 124.*got \(570, 572\); for 570 use 556 or 572"):
        model.output_shape((570, 572))
    with pytest.raises(ValueError, match=r"smallest 188.*for 100 use 188"):
        model(_x(1, 1, 100, 188))


def test_input_errors():
    model = UNet(in_channels=3, num_classes=4, base_features=2)
    with pytest.raises(ValueError, match=r"in_channels=3, got 1"):
        model(_x(1, 1, 40, 40))
    with pytest.raises(ValueError, match=r"must be \(N, C, y, x\)"):
        model(_x(3, 40, 40))
    with pytest.raises(ValueError, match="input_shape must have 2 spatial sizes"):
        model.output_shape((40, 40, 40))
    with pytest.raises(ValueError, match="output_size must be >= 1, got 0"):
        UNet.input_size_for(0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(depth=0), "depth must be >= 1, got 0"),
        (dict(base_features=0), "base_features must be >= 1, got 0"),
        (dict(num_classes=0), "num_classes must be"),
        (dict(spatial_dims=1), "spatial_dims must be 2 or 3, got 1"),
        (dict(padding="full"), "padding must be one of"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_constructor_errors(kwargs, match):
    args = dict(in_channels=3, num_classes=4, base_features=2) | kwargs
    with pytest.raises(ValueError, match=match):
        UNet(**args)


def test_a_non_integer_size_is_a_type_error():
    """ARCHITECTURE.md section 9: a bad type is a TypeError, a bad value a ValueError."""
    with pytest.raises(TypeError, match="in_channels must be an int, got float 2.5"):
        UNet(in_channels=2.5, num_classes=4, base_features=2)
    with pytest.raises(TypeError, match="depth must be an int, got bool True"):
        UNet.input_size_for(40, depth=True)
    with pytest.raises(TypeError, match="dropout must be a float, got str '0.5'"):
        UNet(in_channels=3, num_classes=4, dropout="0.5")
    with pytest.raises(TypeError, match="norm must be True or False, got str 'batch'"):
        UNet(in_channels=3, num_classes=4, norm="batch")


def test_registry_builds_unet():
    model = create_model("unet", in_channels=3, num_classes=4, base_features=2)
    assert isinstance(model, UNet)
