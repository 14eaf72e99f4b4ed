"""Ensembles and test-time mirroring (:mod:`medseg.ensemble`), and their CLI.

The combined predictor is compared with a plain loop over networks and mirrored views in
numpy; mirroring is checked to be exact for a valid-padding U-Net under overlap-tile, and
``medseg predict -m A -m B --tta flip`` is run end to end on the tiny golden inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.cli import main
from medseg.ensemble import CombinedPredictor, check_compatible, tta_flips
from medseg.io import read_image, read_label
from medseg.models import create_model
from medseg.tiling import predict_tiled

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"


def _nets(num: int, seed: int = 0) -> list[torch.nn.Module]:
    torch.manual_seed(seed)
    return [
        create_model("unet", in_channels=2, num_classes=3, base_features=4, depth=2).eval()
        for _ in range(num)
    ]


def _reference(nets, x: np.ndarray, flips, combine: str) -> np.ndarray:
    """Loop over networks and views in numpy float64; returns the combined probabilities."""
    probs, votes = [], []
    for net in nets:
        for dims in flips:
            view = np.flip(x, dims) if dims else x
            with torch.no_grad():
                logits = net(torch.from_numpy(view.copy())).double().numpy()
            if dims:
                logits = np.flip(logits, dims)
            e = np.exp(logits - logits.max(1, keepdims=True))
            p = e / e.sum(1, keepdims=True)
            probs.append(p)
            votes.append(np.eye(p.shape[1])[p.argmax(1)].transpose(0, 3, 1, 2))
    mean = np.mean(probs, axis=0)
    if combine == "mean":
        return mean
    m = len(probs)
    return (np.sum(votes, axis=0) + 0.5 * mean) / (m + 0.5)


@pytest.mark.parametrize("combine", ["mean", "vote"])
@pytest.mark.parametrize("num_nets,tta", [(1, "flip"), (2, "none"), (3, "flip")])
def test_combined_matches_loop(combine: str, num_nets: int, tta: str) -> None:
    nets = _nets(num_nets)
    x = np.random.default_rng(1).normal(size=(2, 2, 12, 20)).astype(np.float32)
    flips = tta_flips(tta)
    with torch.no_grad():
        got = CombinedPredictor(nets, flips=flips, combine=combine)(torch.from_numpy(x))
    expected = _reference(nets, x, flips, combine)
    np.testing.assert_allclose(got.exp().numpy(), expected, atol=2e-6)
    np.testing.assert_allclose(got.exp().sum(1).numpy(), 1.0, atol=1e-5)


def test_vote_hand_case() -> None:
    """Three voters on one pixel: votes (2, 1, 0) for classes (0, 1, 2) -> class 0."""

    class Fixed(torch.nn.Module):
        def __init__(self, probs):
            super().__init__()
            self.logits = torch.tensor(probs).log().view(1, 3, 1, 1)

        def forward(self, x):
            return self.logits.expand(x.shape[0], 3, *x.shape[2:])

    nets = [Fixed([0.5, 0.4, 0.1]), Fixed([0.6, 0.3, 0.1]), Fixed([0.2, 0.7, 0.1])]
    vote = CombinedPredictor(nets, combine="vote")(torch.zeros(1, 1, 1, 1)).exp().flatten()
    mean = CombinedPredictor(nets, combine="mean")(torch.zeros(1, 1, 1, 1)).exp().flatten()
    np.testing.assert_allclose(mean.numpy(), [1.3 / 3, 1.4 / 3, 0.1], atol=1e-6)
    # (votes + mean / 2) / 3.5: class 0 wins by votes although class 1 has the higher mean
    expected = (np.array([2, 1, 0]) + 0.5 * mean.numpy()) / 3.5
    np.testing.assert_allclose(vote.numpy(), expected, atol=1e-6)
    assert int(vote.argmax()) == 0 and int(mean.argmax()) == 1


def test_mirroring_is_exact_for_valid_unet_tiles() -> None:
    """Mirrored views line up pixel for pixel under overlap-tile (valid U-Net).

    With every kernel made mirror-symmetric the network commutes with mirroring, so the
    TTA prediction must equal the plain one; a view misaligned by even one pixel would not.
    """
    torch.manual_seed(0)
    net = create_model(
        "unet", in_channels=1, num_classes=2, base_features=4, depth=2, padding="valid"
    ).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                w = module.weight
                w.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-2, -1)) / 4)
    image = np.random.default_rng(2).normal(size=(1, 1, 45, 53)).astype(np.float32)
    tta = CombinedPredictor([net], flips=tta_flips("flip-all"))
    got = predict_tiled(image, tta, tile_size=24, batch_size=4, return_probs=True).probs
    plain = predict_tiled(image, net, tile_size=24, batch_size=4, return_probs=True).probs
    np.testing.assert_allclose(got, plain, atol=1e-5)
    # and the four views are averaged: equal to the mean of one-view predictors
    torch.manual_seed(1)
    net = create_model(
        "unet", in_channels=1, num_classes=2, base_features=4, depth=2, padding="valid"
    ).eval()
    tta = CombinedPredictor([net], flips=tta_flips("flip-all"))
    got = predict_tiled(image, tta, tile_size=24, batch_size=4, return_probs=True).probs
    views = [
        predict_tiled(
            image, CombinedPredictor([net], flips=[d]), tile_size=24, return_probs=True
        ).probs
        for d in tta_flips("flip-all")
    ]
    np.testing.assert_allclose(got, np.mean(views, axis=0), atol=1e-5)
    assert np.abs(views[0] - views[1]).max() > 1e-3  # the views do differ


def test_wrapper_exposes_network_attributes() -> None:
    a = create_model("unet", in_channels=1, num_classes=2, base_features=4, depth=2)
    b = create_model("unet", in_channels=1, num_classes=2, base_features=4, depth=3)
    p = CombinedPredictor([a, b])
    assert p.divisor == 8 and p.padding == "same" and p.num_views == 2
    v = create_model("unet", in_channels=1, num_classes=2, base_features=4, padding="valid")
    with pytest.raises(ValueError, match="share one padding"):
        CombinedPredictor([a, v])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"models": []}, "at least one network"),
        ({"combine": "median"}, "combine must be one of"),
        ({"flips": [(1,)]}, "in-plane dims"),
        ({"flips": []}, "at least one view"),
    ],
)
def test_combined_errors(kwargs: dict, match: str) -> None:
    args = {"models": _nets(1), **kwargs}
    with pytest.raises(ValueError, match=match):
        CombinedPredictor(args.pop("models"), **args)


def test_tta_flips_follow_training_axes() -> None:
    assert tta_flips("flip", trained_axes=[2]) == ((), (-1,))
    assert tta_flips("flip", trained_axes=[0, 1]) == ((), (-2,))  # z is not mirrored
    assert tta_flips("flip", trained_axes=[1, 2]) == tta_flips("flip-all")
    assert tta_flips("flip", trained_axes=[]) == tta_flips("none") == ((),)
    with pytest.raises(ValueError, match="tta must be one of"):
        tta_flips("rotate")


def _cli(*args) -> tuple[int, str, str]:
    with CliRunner().isolation() as (out, err, _):
        code = main([str(a) for a in args])
        return code, out.getvalue().decode(), err.getvalue().decode()


def _copy_checkpoint(src: Path, dst: Path, seed: int, **changes) -> Path:
    """The golden brain checkpoint with re-seeded weights (a second ensemble member)."""
    ckpt = load_checkpoint(src)
    torch.manual_seed(seed)
    from medseg.models import create_model as make

    fields = {
        "label_names": ckpt.label_names,
        "normalization": ckpt.normalization,
        "patch": ckpt.patch,
        "inference": ckpt.inference,
    }
    fields.update(changes)
    return save_checkpoint(
        dst,
        model_name=ckpt.model_name,
        model_kwargs=ckpt.model_kwargs,
        model=make(ckpt.model_name, **ckpt.model_kwargs),
        **fields,
    )


def test_cli_ensemble_and_tta_on_golden_volume(tmp_path: Path) -> None:
    """-m A -m B --tta flip equals averaging the four calls' probabilities by hand."""
    a = GOLDEN / "brain_tiny.pt"
    b = _copy_checkpoint(a, tmp_path / "b.pt", seed=5)
    volume = GOLDEN / "brain_volume.nii.gz"
    out = tmp_path / "ens"
    code, _, err = _cli(
        "predict", volume, "-m", a, "-m", b, "--tta", "flip-all", "--mode", "mean",
        "--probs", "-o", f"{out}/", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    got = read_image(out / "brain_volume_probs.nii.gz").array
    singles = []
    for i, ckpt in enumerate((a, b)):
        code, _, err = _cli(
            "predict", volume, "-m", ckpt, "--mode", "mean", "--probs",
            "-o", f"{tmp_path}/single{i}/", "--device", "cpu",
        )  # fmt: skip
        assert code == 0, err
        singles.append(read_image(tmp_path / f"single{i}" / "brain_volume_probs.nii.gz").array)
    # the ensemble differs from each member, and TTA makes it differ from their plain mean
    assert np.abs(got - singles[0]).max() > 1e-3 and np.abs(got - singles[1]).max() > 1e-3
    assert np.abs(got - np.mean(singles, axis=0)).max() > 1e-4
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-4)
    labels = read_label(out / "brain_volume_seg.nii.gz").array
    np.testing.assert_array_equal(labels, got.argmax(0))


def test_cli_ensemble_refuses_mismatched_models(tmp_path: Path) -> None:
    a = GOLDEN / "brain_tiny.pt"
    ckpt = load_checkpoint(a)
    b = _copy_checkpoint(a, tmp_path / "b.pt", seed=5, patch={**ckpt.patch, "stride": 7})
    code, _, err = _cli(
        "predict", GOLDEN / "brain_volume.nii.gz", "-m", a, "-m", b, "-o", f"{tmp_path}/o/",
    )  # fmt: skip
    assert code == 1
    assert "must have the same patch geometry" in err and "b.pt" in err
    assert not (tmp_path / "o" / "brain_volume_seg.nii.gz").exists()
    with pytest.raises(ValueError, match="same classes"):
        check_compatible([ckpt, _fake(ckpt, num_classes=3)], ["a", "b"])


def _fake(ckpt, num_classes: int):
    from dataclasses import replace

    return replace(ckpt, model_kwargs={**ckpt.model_kwargs, "num_classes": num_classes})


@pytest.mark.parametrize(
    "flag,value,match",
    [
        ("--tta", "rot", "Invalid value for '--tta': Value error, 'rot' is not one of"),
        ("--ensemble", "max", "Invalid value for '--ensemble': Value error, 'max' is not one of"),
    ],
)
def test_cli_tta_ensemble_errors(tmp_path: Path, flag: str, value: str, match: str) -> None:
    code, _, err = _cli("predict", GOLDEN / "brain_volume.nii.gz", flag, value, "-o", tmp_path)
    assert code == 1 and match in err and value in err


def test_normalisation_without_mask_key_means_the_head_mask() -> None:
    """Old checkpoints have no "mask" key: they normalised inside the non-zero mask."""
    from dataclasses import replace

    ckpt = load_checkpoint(GOLDEN / "brain_tiny.pt")
    old = replace(ckpt, normalization={k: v for k, v in ckpt.normalization.items() if k != "mask"})
    new = replace(ckpt, normalization={**old.normalization, "mask": "nonzero"})
    check_compatible([old, new], ["old", "new"])
    with pytest.raises(ValueError, match="same normalisation"):
        check_compatible([old, replace(new, normalization={**new.normalization, "mask": "all"})],
                         ["old", "all"])  # fmt: skip
