"""UNet++: shapes, nested nodes of eq. (1), pruned inference, modes, errors, parameter counts."""

from __future__ import annotations

import math
import time

import pytest
import torch

from medseg.models import create_model
from medseg.models.unetpp import UNetPlusPlus
from tests.models.checks import assert_divisor_error


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def unetpp_params_by_hand(
    *,
    in_channels: int,
    num_classes: int,
    base: int,
    depth: int,
    norm: bool,
    dims: int = 2,
    deep_supervision: bool = True,
) -> int:
    """UNet++ parameters from eq. (1): H = two 3x3 convs (+ BN), U = 2x2 up-conv, 1x1 heads."""
    k3, k2 = 3**dims, 2**dims
    f = [base * 2**i for i in range(depth + 1)]
    bn = 2 if norm else 0

    def h(c_in: int, c_out: int) -> int:
        return k3 * c_in * c_out + c_out + k3 * c_out * c_out + c_out + 2 * bn * c_out

    total = sum(h(in_channels if i == 0 else f[i - 1], f[i]) for i in range(depth + 1))
    for j in range(1, depth + 1):
        for i in range(depth - j + 1):  # node x^{i,j}: U from level i+1, H on (j+1) f[i]
            total += k2 * f[i + 1] * f[i] + f[i] + h((j + 1) * f[i], f[i])
    num_heads = depth if deep_supervision else 1
    return total + num_heads * (f[0] * num_classes + num_classes)


# (kwargs, documented count): the rows of README_unet.md
DOCUMENTED = [
    (dict(in_channels=3, num_classes=4), 2_209_228),  # default: base 32, depth 3, BN
    (dict(in_channels=3, num_classes=4, norm=False), 2_205_900),
    (dict(in_channels=3, num_classes=4, deep_supervision=False), 2_208_964),
    (dict(in_channels=3, num_classes=4, depth=4), 9_049_968),  # the paper's 32..512
    (dict(in_channels=1, num_classes=4, spatial_dims=3), 6_393_292),
]


@pytest.mark.parametrize(("kwargs", "expected"), DOCUMENTED)
def test_parameter_count_matches_hand_formula(kwargs, expected):
    by_hand = unetpp_params_by_hand(
        in_channels=kwargs["in_channels"],
        num_classes=kwargs["num_classes"],
        base=32,
        depth=kwargs.get("depth", 3),
        norm=kwargs.get("norm", True),
        dims=kwargs.get("spatial_dims", 2),
        deep_supervision=kwargs.get("deep_supervision", True),
    )
    assert by_hand == expected
    assert _num_params(UNetPlusPlus(**kwargs)) == expected


@pytest.mark.parametrize(
    ("spatial_dims", "shape", "depth"),
    [(2, (40, 40), 3), (2, (48, 56), 3), (2, (48, 48), 4), (2, (24, 8), 3), (3, (16, 24, 32), 3)],
)
def test_shapes_and_finite(spatial_dims, shape, depth):
    torch.manual_seed(0)  # He init draws from the global RNG
    model = UNetPlusPlus(
        in_channels=3, num_classes=4, spatial_dims=spatial_dims, base_features=2, depth=depth
    ).eval()
    x = _x(2, 3, *shape)
    heads = model.forward_heads(x)
    assert len(heads) == depth
    for logits in heads:
        assert logits.shape == (2, 4, *shape)
        assert torch.isfinite(logits).all()
    assert model(x).shape == (2, 4, *shape)


def test_accurate_mode_averages_heads_and_fast_mode_returns_pruned_head():
    torch.manual_seed(0)
    model = UNetPlusPlus(in_channels=3, num_classes=4, base_features=4).eval()
    x = _x(2, 3, 40, 40)
    heads = model.forward_heads(x)
    torch.testing.assert_close(model(x), (heads[0] + heads[1] + heads[2]) / 3)
    model.set_mode("fast", prune_level=2)
    assert torch.equal(model(x), model.forward_pruned(x, 2))
    built_fast = UNetPlusPlus(
        in_channels=3, num_classes=4, base_features=4, mode="fast", prune_level=2
    )
    built_fast.load_state_dict(model.state_dict())
    assert torch.equal(built_fast.eval()(x), model(x))


@pytest.mark.parametrize(
    ("spatial_dims", "shape", "depth"),
    [(2, (40, 40), 3), (2, (48, 32), 4), (3, (16, 24, 32), 3)],
)
def test_pruned_output_equals_head_of_full_network(spatial_dims, shape, depth):
    torch.manual_seed(0)
    model = UNetPlusPlus(
        in_channels=3, num_classes=4, spatial_dims=spatial_dims, base_features=4, depth=depth
    ).eval()
    x = _x(2, 3, *shape)
    with torch.no_grad():
        heads = model.forward_heads(x)
        for level in range(1, depth + 1):
            pruned = model.forward_pruned(x, level)
            # same kernels on the same tensors: bitwise equal on CPU
            torch.testing.assert_close(pruned, heads[level - 1], rtol=0, atol=1e-6)


def _count_node_calls(model: UNetPlusPlus) -> list[str]:
    calls: list[str] = []
    for name, node in model.nodes.items():
        node.register_forward_hook(lambda m, inp, out, name=name: calls.append(name))
    return calls


@pytest.mark.parametrize("depth", [3, 4])
def test_pruned_inference_evaluates_only_nodes_with_i_plus_j_at_most_l(depth):
    model = UNetPlusPlus(in_channels=3, num_classes=4, base_features=2, depth=depth).eval()
    calls = _count_node_calls(model)
    x = _x(1, 3, 16, 16)
    model.forward_heads(x)
    assert len(calls) == (depth + 1) * (depth + 2) // 2  # every x^{i,j} with i + j <= L
    assert len(set(calls)) == len(calls)
    for level in range(1, depth + 1):
        calls.clear()
        model.forward_pruned(x, level)
        expected = {f"x{i}_{j}" for i in range(level + 1) for j in range(level + 1 - i)}
        assert sorted(calls) == sorted(expected)
        assert len(calls) == (level + 1) * (level + 2) // 2


def test_pruned_inference_is_faster_on_a_40x40_batch(capsys):
    """Times are printed, not asserted (machine-dependent)."""
    torch.manual_seed(0)
    model = UNetPlusPlus(in_channels=3, num_classes=4).eval()  # base 32, depth 3
    x = _x(64, 3, 40, 40)
    times = {}
    with torch.no_grad():
        model.forward_pruned(x[:2], 1)  # warm-up
        for label, run in [
            ("full (all heads)", lambda: model.forward_heads(x)),
            ("pruned l=1", lambda: model.forward_pruned(x, 1)),
            ("pruned l=2", lambda: model.forward_pruned(x, 2)),
        ]:
            start = time.perf_counter()
            run()
            times[label] = time.perf_counter() - start
    with capsys.disabled():
        print(
            "\nUNet++ 64x3x40x40 CPU forward (1 thread): "
            + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in times.items())
        )
    assert all(math.isfinite(v) for v in times.values())


def test_backward_gives_finite_gradients_everywhere():
    torch.manual_seed(0)
    model = UNetPlusPlus(in_channels=3, num_classes=4, base_features=2).train()
    heads = model.forward_heads(_x(2, 3, 40, 40))
    sum(h.square().mean() for h in heads).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_without_deep_supervision_one_head_still_trains_every_node():
    model = UNetPlusPlus(
        in_channels=3, num_classes=4, base_features=2, deep_supervision=False
    ).train()
    heads = model.forward_heads(_x(2, 3, 16, 16))
    assert len(heads) == 1
    heads[0].square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_eval_mode_is_deterministic_and_no_stochastic_layers():
    model = UNetPlusPlus(in_channels=3, num_classes=4, base_features=2, norm=False)
    x = _x(2, 3, 40, 40)
    assert torch.equal(model.eval()(x), model.eval()(x))
    # no dropout: without batch norm, train and eval mode give the same logits
    assert torch.equal(model.train()(x), model.eval()(x))


def test_he_initialisation_statistics():
    torch.manual_seed(0)
    model = UNetPlusPlus(in_channels=3, num_classes=4, base_features=16)
    conv = model.nodes["x0_3"][0][0]  # 4 * 16 -> 16 channels, 3x3: fan-in 576
    big = model.nodes["x3_0"][1][0]  # 128 -> 128, 3x3: 147,456 weights
    for layer, fan_in in [(conv, 64 * 9), (big, 128 * 9)]:
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0
    up = model.up["x2_1"]  # 128 -> 64, 2x2 stride 2: each output voxel sees 128 inputs
    assert up.weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.1)


def test_divisor_error_gives_padded_shape():
    model = UNetPlusPlus(in_channels=3, num_classes=4, base_features=2, depth=3)
    assert model.divisor == 8
    assert_divisor_error(model, _x(1, 3, 40, 44), padded=(40, 48))
    with pytest.raises(ValueError, match=r"multiple of 8"):
        model.forward_pruned(_x(1, 3, 20, 20), 1)
    with pytest.raises(ValueError, match=r"in_channels=3, got 2"):
        model.forward_heads(_x(1, 2, 40, 40))
    with pytest.raises(ValueError, match=r"must be \(N, C, z, y, x\)"):
        UNetPlusPlus(in_channels=3, num_classes=4, spatial_dims=3, base_features=2)(
            _x(1, 3, 40, 40)
        )


def test_mode_errors():
    model = UNetPlusPlus(in_channels=3, num_classes=4, base_features=2, depth=3)
    with pytest.raises(ValueError, match="mode must be one of"):
        model.set_mode("quick")
    with pytest.raises(ValueError, match=r"prune_level must be an int in 1\.\.3.*got 4"):
        model.set_mode("fast", prune_level=4)
    with pytest.raises(ValueError, match=r"prune_level must be an int in 1\.\.3.*got None"):
        model.set_mode("fast")
    with pytest.raises(ValueError, match=r"prune_level must be an int in 1\.\.3.*got 0"):
        model.forward_pruned(_x(1, 3, 8, 8), 0)
    with pytest.raises(ValueError, match="prune_level must be None for mode='accurate'"):
        model.set_mode("accurate", prune_level=2)
    with pytest.raises(ValueError, match="mode must be 'accurate' for deep_supervision=False"):
        UNetPlusPlus(
            in_channels=3, num_classes=4, deep_supervision=False, mode="fast", prune_level=1
        )
    single = UNetPlusPlus(in_channels=3, num_classes=4, base_features=2, deep_supervision=False)
    with pytest.raises(ValueError, match="deep_supervision must be True for pruned inference"):
        single.forward_pruned(_x(1, 3, 8, 8), 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(depth=0), ValueError, "depth must be >= 1, got 0"),
        (dict(base_features=-1), ValueError, "base_features must be >= 1, got -1"),
        (dict(in_channels=None), TypeError, "in_channels must be an int, got NoneType None"),
        (dict(num_classes=True), TypeError, "num_classes must be an int, got bool True"),
        (dict(spatial_dims=4), ValueError, "spatial_dims must be 2 or 3, got 4"),
        (dict(norm=1), TypeError, "norm must be True or False, got int 1"),
        (dict(deep_supervision="yes"), TypeError, "deep_supervision must be True or False"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    args = dict(in_channels=3, num_classes=4, base_features=2) | kwargs
    with pytest.raises(error, match=match):
        UNetPlusPlus(**args)


def test_registry_builds_unetpp():
    model = create_model("unetpp", in_channels=3, num_classes=4, base_features=2)
    assert isinstance(model, UNetPlusPlus)


def test_same_order_of_magnitude_and_shapes_as_monai_basic_unetplusplus(capsys):
    """Sanity check against MONAI's BasicUNetPlusPlus, which always has 4 poolings."""
    nets = pytest.importorskip("monai.networks.nets")
    monai_model = nets.BasicUNetPlusPlus(
        spatial_dims=2,
        in_channels=3,
        out_channels=4,
        features=(32, 64, 128, 256, 512, 32),
        deep_supervision=True,
        norm="batch",
        act="relu",
        upsample="deconv",
    ).eval()
    ours = UNetPlusPlus(in_channels=3, num_classes=4, base_features=32, depth=4).eval()
    n_monai, n_ours = _num_params(monai_model), _num_params(ours)
    with capsys.disabled():
        print(f"\nUNet++ parameters (depth 4, 32..512, BN): medseg {n_ours}, MONAI {n_monai}")
    assert n_ours == 9_049_968
    assert 0.5 < n_ours / n_monai < 2
    x = _x(2, 3, 48, 48)
    with torch.no_grad():
        monai_shapes = [tuple(t.shape) for t in monai_model(x)]
        our_shapes = [tuple(t.shape) for t in ours.forward_heads(x)]
    assert our_shapes == monai_shapes == [(2, 4, 48, 48)] * 4
