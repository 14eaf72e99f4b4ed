"""Every registered model, automatically: shapes, finite outputs, backward, size errors.

Parametrised over list_models() x spatial_dims x sizes (odd and even, and the 40x40 patch).
Small widths keep this fast; the architecture-specific files test the full configurations.
"""

from __future__ import annotations

import pytest
import torch

from medseg.models import MODELS, create_model, list_models, load_weights, model_class

# Small but structurally complete configurations, per architecture
SMALL_KWARGS: dict[str, dict] = {
    "unet": {"base_features": 4},
    "unetpp": {"base_features": 4},
    "segnet": {"base_features": 4},
    "usegnet": {"base_features": 4},
    "fcn32s": {"base_features": 4, "fc_channels": 8, "fc_kernel_size": 3},
    "fcn16s": {"base_features": 4, "fc_channels": 8, "fc_kernel_size": 3},
    "fcn8s": {"base_features": 4, "fc_channels": 8, "fc_kernel_size": 3},
    "deeplab": {"base_features": 4, "head_channels": 8},
}
SIZES_2D = [40, 33, 34, 35, 48]
SIZES_3D = [16, 17, 24]


def _build(name: str, spatial_dims: int) -> torch.nn.Module:
    torch.manual_seed(0)  # fixed weights; nothing below depends on their values
    return create_model(
        name, in_channels=3, num_classes=4, spatial_dims=spatial_dims, **SMALL_KWARGS[name]
    )


def _accepts(model: torch.nn.Module, size: int) -> bool:
    divisor = int(getattr(model, "divisor", 1))
    min_size = int(getattr(model, "min_size", 1))
    return size % divisor == 0 and size >= min_size


def test_registry_lists_all_eight():
    assert list_models() == sorted(
        ["unet", "unetpp", "segnet", "usegnet", "fcn32s", "fcn16s", "fcn8s", "deeplab"]
    )
    assert set(SMALL_KWARGS) == set(MODELS)


def test_unknown_name_lists_names_and_closest():
    with pytest.raises(
        ValueError,
        match=r"must be one of \[.*'usegnet'.*\], got 'usegnett'; did you mean 'usegnet'",
    ):
        create_model("usegnett")


def test_unknown_kwarg_names_the_model():
    with pytest.raises(TypeError, match="model 'segnet'"):
        create_model("segnet", not_an_option=1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_has_one_name(name):
    cls = model_class(name)
    assert sum(model_class(other) is cls for other in MODELS) == 1


@pytest.mark.parametrize("size", SIZES_2D)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_2d_shapes_backward_and_size_errors(name, size):
    model = _build(name, 2)
    x = torch.randn(2, 3, size, size + 8 if size % 8 == 0 else size, requires_grad=False)
    sizes = tuple(x.shape[2:])
    if not all(_accepts(model, s) for s in sizes):
        with pytest.raises(ValueError, match=r"multiple of|at least"):
            model(x)
        return
    out = model(x)
    assert out.shape == (2, 4, *sizes)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("size", SIZES_3D)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_3d_shapes_and_backward(name, size):
    model = _build(name, 3)
    x = torch.randn(1, 3, size, size, size)
    if not _accepts(model, size):
        with pytest.raises(ValueError, match=r"multiple of|at least"):
            model(x)
        return
    out = model(x)
    assert out.shape == (1, 4, size, size, size)
    assert torch.isfinite(out).all()
    out.mean().backward()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_wrong_input_rank_is_a_clear_error(name):
    model = _build(name, 2)
    with pytest.raises(ValueError, match="input"):
        model(torch.randn(3, 40, 40))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_load_weights_round_trip(name, tmp_path):
    model = _build(name, 2).eval()
    other = _build(name, 2).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": other.state_dict()}, path)
    load_weights(model, path)
    x = torch.randn(1, 3, 48, 48)
    assert torch.equal(model(x), other(x))


def test_load_weights_errors(tmp_path):
    model = _build("segnet", 2)
    with pytest.raises(FileNotFoundError, match="weights file"):
        load_weights(model, tmp_path / "missing.pt")
    wrong = _build("unet", 2).state_dict()
    with pytest.raises(ValueError, match="weights must fit SegNet"):
        load_weights(model, wrong)


FOLD_CASES = [(name, 2) for name in list_models()]
FOLD_CASES += [(name, 3) for name in ("segnet", "unet", "unetpp", "usegnet")]  # FCN 3D is slow


@pytest.mark.parametrize("name, spatial_dims", FOLD_CASES)
def test_fold_batch_norm_keeps_the_outputs(name, spatial_dims):
    """Every registered model, with BatchNorm statistics moved away from the defaults:
    the folded copy gives the same logits (float rounding only), has no BatchNorm left
    inside an nn.Sequential, and the original is untouched."""
    import torch

    from medseg.models import fold_batch_norm

    torch.manual_seed(0)
    model = create_model(name, in_channels=2, num_classes=3, spatial_dims=spatial_dims)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:  # trained-looking statistics and affine parameters
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    size = 32 if spatial_dims == 2 else 16
    x = torch.randn(2, 2, *([size] * spatial_dims))
    folded = fold_batch_norm(model)
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    left = [
        m
        for seq in folded.modules()
        if isinstance(seq, torch.nn.Sequential)
        for m in seq.children()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    assert not left
    if norms:  # the original keeps its BatchNorm layers
        assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_fold_batch_norm_refuses_training_mode():
    from medseg.models import fold_batch_norm

    with pytest.raises(ValueError, match="model must be in eval mode .* got training"):
        fold_batch_norm(create_model("usegnet", in_channels=3, num_classes=4).train())
