"""The typed checkpoint settings (medseg/_checkpoint_settings.py, re-exported by
medseg.checkpoint): defaults for missing keys, round trips, the shipped and golden
checkpoints read unchanged, and what training writes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medseg.checkpoint import (
    BUILTIN_MODELS,
    WEIGHTS_DIR,
    InferenceSettings,
    NormalizationSettings,
    PatchSettings,
    PostprocessSettings,
    load_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
CHECKPOINTS = sorted(
    [WEIGHTS_DIR / name for name in BUILTIN_MODELS.values()] + list(GOLDEN.glob("*.pt")),
    key=lambda p: p.name,
)
TILE_MODELS = {"nuclei.pt", "em-membrane.pt", "cells_tiny.pt"}
SETTINGS = {
    "normalization": NormalizationSettings,
    "patch": PatchSettings,
    "inference": InferenceSettings,
}


# -- defaults: what every reader took for a missing key ------------------------------------


def test_missing_keys_take_the_defaults():
    norm = NormalizationSettings.from_dict({})
    assert (norm.method, norm.percentiles, norm.mask, norm.colour) == (
        "zscore",
        (1.0, 99.0),
        "nonzero",
        "keep",
    )
    patch = PatchSettings.from_dict({})
    assert (patch.size, patch.stride, patch.num_slices, patch.slice_axis, patch.pad_mode) == (
        None,
        None,
        1,
        "axial",
        "reflect",
    )
    inference = InferenceSettings.from_dict({})
    assert (inference.mode, inference.batch_size, inference.tile_size, inference.halo) == (
        "vote",
        512,
        256,
        None,
    )
    pp = PostprocessSettings.from_dict({})
    assert (pp.method, pp.min_size, pp.fill_gaps, pp.crf, pp.cleanup) == (
        "components",
        0,
        False,
        None,
        None,
    )
    assert pp.seeded_parameters() == {
        "seed_threshold": 0.8,
        "seed_distance": 1.0,
        "sigma": 1.0,
        "mask_threshold": 0.5,
        "merge_threshold": 0.0,
    }
    assert PostprocessSettings.from_dict(None) == pp


def test_the_batch_size_default_depends_on_the_mode():
    """4 tiles for the overlap-tile predictor, 512 patches for the 2.5D predictors."""
    assert InferenceSettings.from_dict({"mode": "tile"}).batch_size == 4
    assert InferenceSettings(mode="tile").batch_size == 4
    for mode in ("vote", "mean", "gaussian"):
        assert InferenceSettings.from_dict({"mode": mode}).batch_size == 512
    assert InferenceSettings.from_dict({"mode": "tile", "batch_size": 8}).batch_size == 8


def test_a_partial_dict_keeps_its_values_and_fills_the_rest():
    """The shape of tests/conftest.py's tiny checkpoint: no pad_mode, mask, colour, tile_size."""
    patch = PatchSettings.from_dict({"size": 16, "stride": 8, "num_slices": 3, "slice_axis": 1})
    assert (patch.size, patch.stride, patch.num_slices, patch.slice_axis) == (16, 8, 3, 1)
    assert patch.pad_mode == "reflect"
    assert patch.spec(2).patch_size == (1, 16, 16) and patch.spec(2).slice_axis == 2
    norm = NormalizationSettings.from_dict({"method": "zscore", "percentiles": [2, 98]})
    assert norm.percentiles == (2.0, 98.0) and norm.mask == "nonzero"
    inference = InferenceSettings.from_dict({"mode": "vote", "batch_size": 64})
    assert (inference.batch_size, inference.tile_size, inference.halo) == (64, 256, None)


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        NormalizationSettings(),
        NormalizationSettings("percentile", (1.0, 99.8), "all", "grey", {"future": 1}),
        PatchSettings(),
        PatchSettings(40, 10, 3, "axial", "replicate"),
        PatchSettings(100, 100, 1, 0, "reflect", {"future": [1, 2]}),
        InferenceSettings(),
        InferenceSettings("gaussian", 64, 128, 8),
        InferenceSettings(mode="tile", tile_size=196),
        PostprocessSettings(),
        PostprocessSettings("seeded", 10, False, 0.9, 1.0, 1.0, 0.15, 0.3),
        PostprocessSettings("boundary", 8, True, crf={"sigma_beta": 3.0}, cleanup={"classes": [1]}),
        PostprocessSettings("components", sigma=2.0, other={"tuning": {"split": "val"}}),
    ],
    ids=lambda s: type(s).__name__,
)
def test_from_dict_of_to_dict_is_the_identity(settings):
    assert type(settings).from_dict(settings.to_dict()) == settings


def test_unknown_keys_are_kept_and_written_back():
    raw = {"mode": "vote", "batch_size": 64, "tile_size": 256, "halo": None, "future": "x"}
    settings = InferenceSettings.from_dict(raw)
    assert settings.other == {"future": "x"}
    assert settings.to_dict() == raw


def test_seeded_parameters_are_written_for_the_seeded_method_only():
    assert PostprocessSettings(method="components").to_dict() == {
        "method": "components",
        "min_size": 0,
        "fill_gaps": False,
    }
    seeded = dict(seed_threshold=0.8, seed_distance=1.0, sigma=1.0, mask_threshold=0.5)
    assert PostprocessSettings(method="seeded", min_size=10).to_dict() == dict(
        method="seeded", min_size=10, fill_gaps=False, **seeded, merge_threshold=0.0
    )


def test_boundary_writes_its_foreground_threshold_alone():
    """A tuned boundary threshold (the built-in nuclei's 0.4) is written as itself, not as
    a full set of seeded-watershed parameters; a changed seeded parameter still brings
    them all."""
    base = {"method": "boundary", "min_size": 8, "fill_gaps": False}
    for threshold in (0.5, 0.4):
        pp = PostprocessSettings(method="boundary", min_size=8, mask_threshold=threshold)
        assert pp.to_dict() == {**base, "mask_threshold": threshold}
        assert PostprocessSettings.from_dict(pp.to_dict()) == pp
    pp = PostprocessSettings(method="boundary", min_size=8, mask_threshold=0.4, sigma=2.0)
    seeded = dict(seed_threshold=0.8, seed_distance=1.0, sigma=2.0, mask_threshold=0.4)
    assert pp.to_dict() == {**base, **seeded, "merge_threshold": 0.0}


def test_overrides_go_on_top_of_the_stored_postprocessing():
    stored = PostprocessSettings.from_dict({"method": "seeded", "min_size": 10, "sigma": 2.0})
    assert stored.updated(None) is stored
    other = stored.updated({"method": "components"})
    assert (other.method, other.min_size, other.sigma) == ("components", 10, 2.0)
    assert other.updated({"method": "seeded"}).seeded_parameters()["sigma"] == 2.0


# -- the checkpoints in the repository ------------------------------------------------------


@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.name)
def test_stored_checkpoints_give_typed_settings_equal_to_their_dicts(path):
    raw = torch.load(path, map_location="cpu", weights_only=True)  # the file, unchanged
    ckpt = load_checkpoint(path)
    for key, cls in SETTINGS.items():
        typed = getattr(ckpt, f"{key}_settings")
        assert ckpt.__dict__[key] == raw[key]  # the dict attributes stay as stored
        assert typed == cls.from_dict(raw[key])
        assert typed.to_dict() == {**cls().to_dict(), **raw[key]}
    pp = ckpt.postprocess_settings
    assert pp.to_dict() == {**PostprocessSettings().to_dict(), **raw["postprocess"]}
    assert ckpt.num_slices == raw["patch"]["num_slices"]
    assert ckpt.uses_brain_extraction == bool(raw.get("input", {}).get("brain_extraction"))
    assert ckpt.labels_note == raw.get("input", {}).get("labels_note")


@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.name)
def test_is_tile_model(path):
    ckpt = load_checkpoint(path)
    assert ckpt.is_tile_model == (path.name in TILE_MODELS)
    assert ckpt.is_tile_model == (ckpt.inference["mode"] == "tile")


def test_the_shipped_values_read_through_the_views():
    em = load_checkpoint("em-membrane")
    assert em.inference_settings == InferenceSettings("tile", 4, 196, None)
    assert em.postprocess_settings.method == "seeded"
    assert em.postprocess_settings.seeded_parameters() == {
        "seed_threshold": 0.9,
        "seed_distance": 1.0,
        "sigma": 1.0,
        "mask_threshold": 0.15,
        "merge_threshold": 0.3,
    }
    assert "tuning" in em.postprocess_settings.other
    nuclei = load_checkpoint("nuclei")
    assert nuclei.inference_settings.diameter == "auto"
    assert nuclei.inference["diameter"] == "auto"
    assert nuclei.extra["object_size"]["median_diameter"] == pytest.approx(19.8)
    assert em.inference_settings.diameter is None and "diameter" not in em.inference
    brain = load_checkpoint("brain-tissue")
    assert brain.normalization_settings.colour == "keep"  # not stored: the default
    assert brain.patch_settings.spec(0).patch_size == (1, 40, 40)
    assert brain.uses_brain_extraction and brain.labels_note.startswith("IBSR-18 protocol")


def test_the_views_follow_edits_of_the_dicts():
    ckpt = load_checkpoint(GOLDEN / "brain_tiny.pt")
    assert not ckpt.is_tile_model
    edited = replace(ckpt, inference={**ckpt.inference, "mode": "tile"})
    assert edited.is_tile_model and not ckpt.is_tile_model


# -- bad values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: InferenceSettings.from_dict({"mode": "median"}),
            "inference mode must be one of vote, mean, gaussian or tile, got 'median'",
        ),
        (
            lambda: InferenceSettings.from_dict({"batch_size": 0}),
            "inference batch_size must be >= 1, got 0",
        ),
        (
            lambda: NormalizationSettings.from_dict({"method": "magic"}),
            "normalization method must be one of ('zscore', 'percentile'), got 'magic'",
        ),
        (
            lambda: PatchSettings.from_dict({"stride": 4}).spec(),
            "patch size must be stored for a 2.5D model, got none",
        ),
        (
            lambda: InferenceSettings.from_dict({"mode": "tile", "diameter": "large"}),
            "inference diameter must be 'auto', 'none' or a positive number of pixels, got 'large'",
        ),
    ],
    ids=["mode", "batch-size", "method", "no-size", "diameter"],
)
def test_bad_values_are_refused_naming_the_setting(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message


def test_a_settings_value_that_is_no_mapping_is_refused():
    with pytest.raises((TypeError, ValueError)):
        PatchSettings.from_dict([1, 2])  # type: ignore[arg-type]


# -- what training writes ---------------------------------------------------------------------


def _meta(config_name: str, label_format: str = "classes", foreground_value=None) -> dict:
    from medseg.config import load_config
    from medseg.train import _checkpoint_meta

    manifest = SimpleNamespace(
        label_format=label_format,
        foreground_value=foreground_value,
        label_names={},
        split=lambda split: [],  # no training images: no grid is measured
    )
    config = load_config(ROOT / "configs" / config_name)
    return _checkpoint_meta(config, {"in_channels": 1, "num_classes": 4}, manifest)


def test_training_writes_the_settings_of_the_ibsr_config():
    meta = _meta("usegnet_ibsr18.yaml")
    assert meta["normalization"] == dict(
        method="zscore", percentiles=[1.0, 99.0], mask="nonzero", colour="keep"
    )
    assert meta["patch"] == dict(
        size=40, stride=10, num_slices=3, slice_axis="axial", pad_mode="reflect"
    )
    assert meta["inference"] == {"mode": "vote", "batch_size": 4096, "tile_size": 256, "halo": None}
    assert meta["extra"]["postprocess"] == {"method": "none", "min_size": 0, "fill_gaps": False}
    assert meta["extra"]["input"] == {"brain_extraction": True}


def test_training_writes_the_settings_of_the_dsb_and_isbi_configs():
    dsb = _meta("unet_dsb2018_boundary.yaml")
    assert dsb["normalization"] == dict(
        method="percentile", percentiles=[1.0, 99.8], mask="all", colour="grey-darkest"
    )
    patch = dict(size=100, stride=100, num_slices=1, slice_axis=0, pad_mode="reflect")
    assert dsb["patch"] == patch
    assert dsb["inference"] == {
        "mode": "tile",
        "batch_size": 4,
        "tile_size": 196,
        "halo": None,
        "diameter": "auto",
    }
    boundary = {"method": "boundary", "min_size": 8, "fill_gaps": False, "mask_threshold": 0.5}
    assert dsb["extra"]["postprocess"] == boundary
    isbi = _meta("unet_isbi2012.yaml", "binary", 255)
    seeded_keys = "seed_threshold seed_distance sigma mask_threshold merge_threshold".split()
    assert list(isbi["extra"]["postprocess"]) == ["method", "min_size", "fill_gaps", *seeded_keys]
    assert isbi["extra"]["foreground_value"] == 255
