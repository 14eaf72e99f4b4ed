"""Tests for medseg.tiling: overlap-tile prediction against one whole-image pass."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

from medseg.models.unet import UNet
from medseg.tiling import TilePlan, plan_tiles, predict_tiled
from tests.reference import mirror_pad_loop, pad_index_loop, predict_whole_image_loop

# ---------------------------------------------------------------------------
# Tiny models
# ---------------------------------------------------------------------------


class PointwiseNet(nn.Module):
    """Same-padding net of 1x1 convolutions only: every output pixel sees one input pixel."""

    padding = "same"

    def __init__(self, in_channels: int, num_classes: int, divisor: int = 1) -> None:
        super().__init__()
        self.divisor = divisor
        gen = torch.Generator().manual_seed(3)  # fixed weights
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 8, kernel_size=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1)
        )
        for p in self.net.parameters():
            p.data = torch.randn(p.shape, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SignNet(nn.Module):
    """Logits (x, -x) of the first channel: class 0 where x > 0, confidence sigmoid(2|x|)."""

    padding = "same"
    divisor = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], -x[:, :1]], dim=1)


class CropNet(nn.Module):
    """Valid-padding net that returns a corner crop of its input channel as class-0 logits.

    The output is ``2 * halo`` smaller per axis. ``far=True`` keeps the bottom-right crop, so
    output pixel j shows input pixel j + 2 * halo (image pixel j + halo); ``far=False``
    the top-left one (image pixel j - halo). Class 1 has logit 0, so probs[0] = sigmoid(x).
    No ``depth``/``input_size_for``: plan_tiles searches the input size via output_shape.
    """

    padding = "valid"
    divisor = 1

    def __init__(self, halo: int, *, far: bool) -> None:
        super().__init__()
        self.halo, self.far = halo, far

    def output_shape(self, input_shape):
        return tuple(s - 2 * self.halo for s in input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h2 = 2 * self.halo
        ny, nx = x.shape[2:]
        crop = x[:, :1, h2:, h2:] if self.far else x[:, :1, : ny - h2, : nx - h2]
        return torch.cat([crop, torch.zeros_like(crop)], dim=1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def valid_unet() -> UNet:
    torch.manual_seed(0)  # the weights; the test compares two passes of the same net
    return UNet(
        in_channels=2, num_classes=3, base_features=4, depth=2, padding="valid", dropout=0.0
    ).eval()


def _rng_image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _check_against_probs(out, probs_ref: np.ndarray, atol: float) -> float:
    """Compare a Reassembled result to reference probs; return the max abs probs diff."""
    assert out.probs.shape == probs_ref.shape and out.probs.dtype == np.float32
    diff = float(np.abs(out.probs - probs_ref).max())
    np.testing.assert_allclose(out.probs, probs_ref, atol=atol, rtol=0)
    top2 = np.sort(probs_ref, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4  # argmax is only defined where the top two differ
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(out.labels[clear], probs_ref.argmax(axis=0)[clear])
    np.testing.assert_allclose(out.confidence, probs_ref.max(axis=0), atol=atol, rtol=0)
    assert out.labels.dtype == np.uint8 and out.confidence.dtype == np.float32
    return diff


# ---------------------------------------------------------------------------
# 1. Tiling equivalence (acceptance test)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, tile_size",
    [((2, 1, 75, 90), 12), ((2, 1, 75, 90), 20), ((2, 3, 40, 53), (12, 20))],
)
def test_valid_unet_tiled_equals_one_whole_image_pass(valid_unet, shape, tile_size) -> None:
    image = _rng_image(shape)
    out = predict_tiled(
        image, valid_unet, tile_size=tile_size, batch_size=16, device="cpu", return_probs=True
    )
    plan = plan_tiles(valid_unet, tile_size=tile_size)
    assert min(plan.num_tiles(shape[2:])) >= 2  # several tiles per axis
    # one pass over the image mirrored by halo on the near side and, on the far side, as
    # much as makes the smallest valid input covering the image: starts at -halo, like
    # every tile, so the pooling phase is the same
    ny, nx = shape[2:]
    halo = plan.halo[0]
    in_y = UNet.input_size_for(ny, depth=2, padding="valid")
    in_x = UNet.input_size_for(nx, depth=2, padding="valid")
    pads = ((halo, in_y - halo - ny), (halo, in_x - halo - nx))
    ref = predict_whole_image_loop(image, valid_unet, pads=pads, crop_start=(0, 0))
    diff = _check_against_probs(out, ref, atol=1e-5)
    print(f"max abs probs diff, tiled vs whole-image pass, {shape} tile {tile_size}: {diff:.2e}")


def test_tiled_result_does_not_depend_on_batch_size(valid_unet) -> None:
    image = _rng_image((2, 2, 33, 47), seed=1)
    outs = [
        predict_tiled(image, valid_unet, tile_size=12, batch_size=b, device="cpu")
        for b in (1, 5, 100)
    ]
    for out in outs[1:]:
        np.testing.assert_array_equal(out.labels, outs[0].labels)
        np.testing.assert_allclose(out.confidence, outs[0].confidence, atol=1e-5, rtol=0)
        assert out.probs is None


@pytest.mark.parametrize("divisor, tile_size, halo", [(1, 7, 2), (4, 13, 3), (1, (9, 30), 0)])
def test_pointwise_same_net_tiled_equals_direct(divisor, tile_size, halo) -> None:
    model = PointwiseNet(in_channels=2, num_classes=3, divisor=divisor).eval()
    image = _rng_image((2, 3, 19, 26), seed=2)
    out = predict_tiled(
        image, model, tile_size=tile_size, halo=halo, batch_size=3, device="cpu", return_probs=True
    )
    with torch.no_grad():  # direct: the whole stack as a batch of slices, no padding needed
        logits = model(torch.from_numpy(np.ascontiguousarray(image.transpose(1, 0, 2, 3))))
    direct = torch.softmax(logits, dim=1).numpy().transpose(1, 0, 2, 3)
    _check_against_probs(out, direct, atol=1e-6)


def test_same_unet_with_halo_beyond_its_receptive_field_equals_whole_pass() -> None:
    # A same-padding net's zero padding only reaches pixels within its receptive field
    # (about 30 pixels for depth 2), so with halo 32 and a 32-aligned phase the tiles
    # agree with one pass over the image mirrored by at least the halo on every side.
    torch.manual_seed(1)  # the weights
    net = UNet(in_channels=1, num_classes=2, base_features=4, depth=2, dropout=0.0).eval()
    image = _rng_image((1, 1, 50, 61), seed=3)
    out = predict_tiled(image, net, tile_size=96, halo=32, device="cpu", return_probs=True)
    assert plan_tiles(net, tile_size=96, halo=32).step == (32, 32)
    pads = ((32, 160 - 32 - 50), (32, 160 - 32 - 61))  # 160: multiple of 4, >= 61 + 2 * 32
    ref = predict_whole_image_loop(image, net, pads=pads, crop_start=(32, 32))
    _check_against_probs(out, ref, atol=1e-5)


# ---------------------------------------------------------------------------
# 2. Mirror padding
# ---------------------------------------------------------------------------


def test_numpy_reflect_pad_repeats_the_reflection_for_wide_pads() -> None:
    # predict_tiled relies on np.pad(mode="reflect") for pads wider than the image
    for n in (2, 3, 5):
        padded = np.pad(np.arange(n), (3 * n, 2 * n + 1), mode="reflect")
        expected = [pad_index_loop(i, n, "reflect") for i in range(-3 * n, 3 * n + 1)]
        assert padded.tolist() == expected


def test_one_row_image_is_mirrored_along_x_and_repeated_along_y() -> None:
    a = np.array([0.1, 0.2, 0.3, 0.4, 0.5], dtype=np.float32)
    image = a.reshape(1, 1, 1, 5)
    far = predict_tiled(image, CropNet(2, far=True), tile_size=2, device="cpu", return_probs=True)
    near = predict_tiled(image, CropNet(2, far=False), tile_size=2, device="cpu", return_probs=True)
    # far: pixel x shows x + 2 -> a[2], a[3], a[4], a[3], a[2]; near: x - 2 -> a[2], a[1], ...
    np.testing.assert_allclose(far.probs[0, 0, 0], _sigmoid(a[[2, 3, 4, 3, 2]]), atol=1e-6)
    np.testing.assert_allclose(near.probs[0, 0, 0], _sigmoid(a[[2, 1, 0, 1, 2]]), atol=1e-6)
    np.testing.assert_array_equal(far.labels, np.zeros((1, 1, 5), np.uint8))  # x > 0 -> class 0


@pytest.mark.parametrize("far", [True, False])
@pytest.mark.parametrize("shape, halo, tile_size", [((2, 2, 9, 14), 3, 4), ((1, 1, 3, 4), 7, 2)])
def test_border_context_is_the_mirrored_image(far, shape, halo, tile_size) -> None:
    # the second case has a halo wider than the image: the mirror is reflected again
    image = (np.arange(np.prod(shape)).reshape(shape) / 50 - 1).astype(np.float32)
    out = predict_tiled(
        image, CropNet(halo, far=far), tile_size=tile_size, device="cpu", return_probs=True
    )
    _, nz, ny, nx = shape
    shift = halo if far else -halo
    for z in range(nz):
        padded = mirror_pad_loop(image[:1, z], ((halo, halo), (halo, halo)))
        expected = padded[0, halo + shift : halo + shift + ny, halo + shift : halo + shift + nx]
        np.testing.assert_allclose(out.probs[0, z], _sigmoid(expected), atol=1e-6)


# ---------------------------------------------------------------------------
# 3. Tile plans
# ---------------------------------------------------------------------------


def test_plan_of_the_paper_unet() -> None:
    net = UNet(in_channels=1, num_classes=2, base_features=1, depth=4, padding="valid")
    plan = plan_tiles(net, tile_size=388)
    # Fig. 1/2 of the paper: 572 -> 388, (572 - 388) / 2 = 92; 384 = 24 * 16 <= 388
    assert plan == TilePlan((572, 572), (388, 388), (92, 92), (384, 384))
    assert plan.kept_size == (388, 388)
    assert plan.num_tiles((512, 769)) == (2, 3)  # ceil(512 / 384), ceil(769 / 384)
    # 389 does not fit 572 -> next valid input 588 (+16) -> output 404, step 400
    # tile 1 -> output >= divisor 16 -> input 204, output 20, step 16
    assert plan_tiles(net, tile_size=(389, 1)).input_size == (588, 204)
    assert plan_tiles(net, tile_size=(389, 1)).step == (400, 16)
    # small images get one tile just large enough
    assert plan_tiles(net, tile_size=388, image_shape=(30, 1000)).output_size == (36, 388)


def test_plan_of_same_padding_nets() -> None:
    net = UNet(in_channels=1, num_classes=2, base_features=1, depth=4)
    plan = plan_tiles(net)  # default tile 512, halo max(2 * 16, 16) = 32
    assert plan == TilePlan((512, 512), (512, 512), (32, 32), (448, 448))
    plan = plan_tiles(net, tile_size=(100, 70), halo=10)  # rounded up to 16: 112, 80
    assert plan == TilePlan((112, 80), (112, 80), (10, 10), (80, 48))  # kept 92, 60
    assert plan_tiles(PointwiseNet(1, 2), tile_size=40).halo == (16, 16)  # at least 16
    assert plan_tiles(PointwiseNet(1, 2), tile_size=40, image_shape=(3, 90)).input_size == (35, 40)


# ---------------------------------------------------------------------------
# 4. Bounded memory
# ---------------------------------------------------------------------------


def test_memory_is_bounded_by_the_image_not_by_the_tiles() -> None:
    image = _rng_image((1, 1, 4096, 4096), seed=4)  # 64 MiB of float32
    image_bytes = image.nbytes
    # tile 96 with halo 24 keeps 48 x 48 per tile: 86**2 tiles whose inputs alone would
    # take 4x the image if they were all built at once. What predict_tiled needs: the
    # outputs (labels 0.25x + confidence 1x the image's float32 size) plus one batch of
    # tiles (128 * 96**2 * 4 bytes = 4.5 MiB) and small per-batch arrays: about 1.3x.
    # tracemalloc traces numpy allocations (the image is made before it starts, so it is
    # not counted), but not torch's own CPU allocator, so the model's input and output
    # tensors are not counted; they are batch-sized too. Bound: 2x the image, well below
    # the 1.25x + 4x that building all tiles would take.
    tracemalloc.start()
    try:
        out = predict_tiled(image, SignNet(), tile_size=96, halo=24, batch_size=128, device="cpu")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan_tiles(SignNet(), tile_size=96, halo=24).num_tiles((4096, 4096)) == (86, 86)
    assert peak < 2 * image_bytes, f"peak {peak / 2**20:.0f} MiB"
    x = image[0, 0]
    np.testing.assert_array_equal(out.labels[0], (x < 0).astype(np.uint8))
    expected = np.float32(1) / (np.float32(1) + np.exp(np.float32(-2) * np.abs(x)))
    assert np.abs(out.confidence[0] - expected).max() < 1e-6


# ---------------------------------------------------------------------------
# 5. Errors
# ---------------------------------------------------------------------------


class _WrongSizeNet(SignNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[..., :-1]


class _ClassChangingNet(SignNet):
    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.cat([x] * (2 if self.calls == 1 else 3), dim=1)


class _ManyClassNet(SignNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, 257, 1, 1)


class _NoOutputShapeNet(SignNet):
    padding = "valid"


class _OddShrinkNet(CropNet):
    def output_shape(self, input_shape):
        return tuple(s - 3 for s in input_shape)


class _OneAxisNet(CropNet):
    def output_shape(self, input_shape):
        return (input_shape[0] - 2,)


class _NoValidSizeNet(CropNet):
    def output_shape(self, input_shape):
        raise ValueError("no size works")


IMAGE = np.zeros((1, 1, 8, 9), dtype=np.float32)


@pytest.mark.parametrize(
    "image, match",
    [
        (torch.zeros(1, 1, 8, 9), "image must be a numpy array"),
        (
            np.zeros((1, 8, 9), np.float32),
            r"image must be 4D \(C, Z, Y, X\), got shape \(1, 8, 9\)",
        ),
        (np.zeros((1, 1, 8, 9), np.uint8), "image must be a float array.*uint8"),
        (np.zeros((1, 0, 8, 9), np.float32), "image must not be empty"),
    ],
)
def test_bad_image_raises(image, match) -> None:
    with pytest.raises(ValueError, match=match):
        predict_tiled(image, SignNet(), device="cpu")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ({"batch_size": True}, "batch_size must be an int >= 1, got True"),
        ({"tile_size": 0}, "tile_size must be >= 1 on every axis, got 0"),
        ({"tile_size": (4, 4, 4)}, r"tile_size must be an int or a \(y, x\) pair"),
        ({"tile_size": 2.5}, r"tile_size must be an int or a \(y, x\) pair of ints, got 2.5"),
        ({"halo": -1}, "halo must be None or an int >= 0, got -1"),
        ({"tile_size": 32, "halo": 16}, "halo must be at most 15 .* got 16"),
    ],
)
def test_bad_options_raise(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        predict_tiled(np.zeros((1, 1, 80, 90), np.float32), SignNet(), device="cpu", **kwargs)


def test_halo_of_a_valid_net_is_fixed(valid_unet) -> None:
    assert plan_tiles(valid_unet, tile_size=12, halo=20).halo == (20, 20)
    with pytest.raises(ValueError, match="halo must be None or 20 .* got 5"):
        plan_tiles(valid_unet, tile_size=12, halo=5)


def test_bad_image_shape_raises() -> None:
    with pytest.raises(ValueError, match="image_shape must be >= 1 on every axis"):
        plan_tiles(SignNet(), image_shape=(0, 5))


@pytest.mark.parametrize(
    "model, match",
    [
        (_NoOutputShapeNet(), "model must have output_shape.* got _NoOutputShapeNet"),
        (_OddShrinkNet(1, far=True), "must shrink each axis by an even number"),
        (_OneAxisNet(1, far=True), r"must be 2 sizes >= \(4, 4\), got \(4,\)"),
        (_NoValidSizeNet(1, far=True), "tile_size must have a valid input size"),
    ],
)
def test_inconsistent_valid_models_raise(model, match) -> None:
    with pytest.raises(ValueError, match=match):
        plan_tiles(model, tile_size=4)


@pytest.mark.parametrize(
    "attr, value, match", [("divisor", 0, "model.divisor"), ("padding", "full", "model.padding")]
)
def test_bad_model_attributes_raise(attr, value, match) -> None:
    model = SignNet()
    setattr(model, attr, value)
    with pytest.raises(ValueError, match=match):
        plan_tiles(model)


@pytest.mark.parametrize(
    "model, match",
    [
        (_WrongSizeNet(), r"model output must have shape \(4, K, 8, 9\) .* got \(4, 2, 8, 8\)"),
        (_ClassChangingNet(), "model output must keep 2 classes for every batch"),
        (_ManyClassNet(), "model output must have at most 256 classes"),
    ],
)
def test_inconsistent_model_outputs_raise(model, match) -> None:
    image = np.zeros((1, 8, 8, 9), np.float32)  # 8 slices of one tile each: 2 batches of 4
    with pytest.raises(ValueError, match=match):
        predict_tiled(image, model, tile_size=(8, 9), halo=0, batch_size=4, device="cpu")
