"""Tests for medseg.config: precedence, overrides, unknown keys, types, round trip."""

from __future__ import annotations

import json

import pytest

from medseg.config import (
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)


def test_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("schedule:\n  epochs: 7\n  batch_size: 32\nmodel:\n  name: segnet\n")
    config = load_config(path, ["schedule.epochs=9", "model.kwargs={base_features: 8}"])
    assert config.schedule.epochs == 9  # flag beats file
    assert config.schedule.batch_size == 32  # file beats default
    assert config.schedule.val_every == 1  # default
    assert config.model.name == "segnet" and config.model.kwargs == {"base_features": 8}


def test_round_trip_through_json(tmp_path):
    config = load_config(None, ["data.percentiles=[2, 98]", "patches.slice_axis=2"])
    out = save_config(config, tmp_path / "config.json")
    again = config_from_dict(json.loads(out.read_text(encoding="utf-8")))
    assert again == config
    assert again.data.percentiles == (2.0, 98.0)


def test_save_config_refuses_to_overwrite(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_config(TrainConfig(), path)
    assert path.read_text(encoding="utf-8") == "keep"


def test_apply_overrides_parses_yaml_values():
    out = apply_overrides({}, ["a.b=3", "a.c=[1, 2]", "d=true", "e=cosine"])
    assert out == {"a": {"b": 3, "c": [1, 2]}, "d": True, "e": "cosine"}


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        (["schedule.epochz=5"], ValueError, r"got unknown key 'schedule.epochz'"),
        (["nonsense=1"], ValueError, r"got unknown key 'nonsense'"),
        (["schedule.epochs=five"], TypeError, "schedule.epochs must be an integer, got 'five'"),
        (["schedule.epochs=2.5"], TypeError, "schedule.epochs must be an integer"),
        (["amp=1"], TypeError, "amp must be true or false"),
        (["data.percentiles=[1]"], TypeError, "data.percentiles must be a list of 2 values"),
        (["optim.lr=-1"], ValueError, r"optim.lr must be a finite number > 0, got -1.0"),
        (["model.name=usegnett"], ValueError, "model.name must be one of"),
        (["model.kwargs={num_classes: 3}"], ValueError, "must not set 'num_classes'"),
        (["patches.num_slices=2"], ValueError, "patches.num_slices must be a positive odd"),
        (["patches.stride=50"], ValueError, r"patches.stride must be in \[1, size=40\]"),
        (["patches.slice_axis=coronal"], ValueError, "patches.slice_axis must be"),
        (["patches.sample_by=image"], ValueError, "patches.sample_by must be one of"),
        (["inference.mode=median"], ValueError, "inference.mode must be one of"),
        (["device=tpu"], ValueError, "device must be one of"),
        (["schedule=3"], TypeError, "schedule must be a mapping"),
        (["schedule.epochs"], ValueError, "--set must be key=value"),
        (["a..b=1"], ValueError, "--set key must be dotted names"),
    ],
)
def test_bad_values_name_the_key(overrides, error, match):
    with pytest.raises(error, match=match):
        load_config(None, overrides)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="must be an existing file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: [unclosed\n")
    with pytest.raises(ValueError, match="must be valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must be a mapping at the top"):
        load_config(top)
    typo = tmp_path / "typo.yaml"
    typo.write_text("schedule:\n  epochz: 3\n")
    with pytest.raises(ValueError, match=r"epochz.*\(in .*typo.yaml\)"):
        load_config(typo)


@pytest.mark.parametrize(
    "path",
    sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_committed_configs_load(path):
    config = load_config(path)
    assert config.out_dir.startswith("runs/")


# ---------------------------------------------------------------------------
# Microscopy fields (U-Net): data, loss weight map, selection metric, tiles, objects
# ---------------------------------------------------------------------------

TILE = ["patches.num_slices=1", "patches.slice_axis=0", "inference.mode=tile"]


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        (["data.normalize_mask=brain"], ValueError, r"data.normalize_mask must be one of"),
        (["data.separate_touching=maybe"], TypeError, "data.separate_touching must be true or"),
        (["data.cache_dir=3"], TypeError, "data.cache_dir must be str or NoneType, got 3"),
        (
            ["loss.weight_map=true"],
            ValueError,
            "loss.name must be 'weighted_ce' with loss.weight_map true, got 'ce'",
        ),
        (
            ["loss.name=weighted_ce"],
            ValueError,
            "loss.weight_map must be true for loss.name 'weighted_ce', got false; use",
        ),
        (["loss.w0=0"], ValueError, r"loss.w0 must be a finite number > 0, got 0.0"),
        (["loss.sigma=-5"], ValueError, r"loss.sigma must be a finite number > 0, got -5.0"),
        (["schedule.select_metric=iou"], ValueError, r"schedule.select_metric must be one of"),
        (["inference.mode=tiles"], ValueError, r"inference.mode must be one of"),
        (["inference.tile_size=0"], ValueError, r"tile_size must be a finite number > 0, got 0"),
        (["inference.halo=-1"], ValueError, r"inference.halo must be a finite number >= 0, got -1"),
        (
            ["inference.diameter=big"],
            ValueError,
            r"inference.diameter must be 'auto', 'none' or a positive number of pixels, got 'big'",
        ),
        (["inference.diameter=-3"], ValueError, r"positive number of pixels, got -3.0"),
        (["postprocess.method=otsu"], ValueError, r"postprocess.method must be one of"),
        (["postprocess.min_size=-2"], ValueError, r"min_size must be a finite number >= 0, got -2"),
        (["postprocess.fill_gaps=1"], TypeError, "postprocess.fill_gaps must be true or false"),
        (
            ["augment.interpolation=nearest"],
            ValueError,
            "interpolation must be 'bicubic', 'bilinear' or 'bspline', got 'nearest'",
        ),
        (
            ["schedule.select_metric=ap"],
            ValueError,
            "schedule.select_metric 'ap' needs objects, so postprocess.method must be "
            "components, watershed or boundary, got 'none'",
        ),
        (["data.colour=rgb"], ValueError, r"data.colour must be one of"),
        (["data.targets=distance"], ValueError, r"data.targets must be one of"),
        (
            ["data.targets=boundary"],
            ValueError,
            "data.num_classes must be 3 for data.targets: boundary .*got 4",
        ),
        (
            ["data.targets=boundary", "data.num_classes=3", "data.separate_touching=true"],
            ValueError,
            "data.separate_touching must be false with data.targets: boundary",
        ),
        (["data.boundary_width=0"], ValueError, r"boundary_width must be a finite number > 0"),
        (
            [*TILE, "postprocess.method=boundary"],
            ValueError,
            "postprocess.method 'boundary' reads a three-class boundary model, so "
            "data.targets must be 'boundary', got 'classes'",
        ),
        (
            ["schedule.select_metric=rand_error", "postprocess.method=none"],
            ValueError,
            "schedule.select_metric 'rand_error' needs objects",
        ),
        (
            ["inference.mode=tile"],
            ValueError,
            "patches.num_slices must be 1 for inference.mode 'tile' \\(2D models\\), got 3",
        ),
        (
            ["inference.diameter=auto"],
            ValueError,
            "inference.diameter applies to 2D object models \\(inference.mode: tile\\), got "
            "'auto' with mode 'vote'; remove it",
        ),
    ],
)
def test_microscopy_config_errors_name_the_key(overrides, error, match):
    with pytest.raises(error, match=match):
        load_config(None, overrides)


def test_microscopy_config_values_that_are_accepted():
    config = load_config(
        None,
        [
            *TILE,
            "loss.name=weighted_ce",
            "loss.weight_map=true",
            "loss.w0=5",
            "data.separate_touching=true",
            "data.cache_dir=runs/cache",
            "data.normalize_mask=all",
            "schedule.select_metric=f1_at_05",
            "postprocess={method: watershed, min_size: 0, fill_gaps: true}",
            "inference.halo=0",
            "inference.diameter=30",
            "augment.interpolation=bilinear",
        ],
    )
    assert config.inference.diameter == 30.0
    assert config.loss.w0 == 5.0 and isinstance(config.loss.w0, float)
    assert config.data.cache_dir == "runs/cache" and config.inference.halo == 0
    assert config.postprocess.method == "watershed" and config.postprocess.fill_gaps
    assert config_from_dict(config.to_dict()) == config  # round trip keeps the new fields
    defaults = TrainConfig()
    assert defaults.data.normalize_mask == "nonzero" and not defaults.data.separate_touching
    assert defaults.loss.weight_map is False and defaults.postprocess.method == "none"
    assert defaults.inference.halo is None and defaults.schedule.select_metric == "mean_dice"


def test_boundary_config_is_the_three_class_recipe():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "unet_dsb2018_boundary.yaml"
    config = load_config(path)
    assert config.data.targets == "boundary" and config.data.num_classes == 3
    assert config.postprocess.method == "boundary" and config.data.colour == "grey-darkest"
    assert config.data.manifest.endswith("dsb2018_stage1_train.csv")  # never the test set
    assert config.cpu_amp and config.loss.weight_map and config.loss.name == "weighted_ce"
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", ["unet_dsb2018", "unet_isbi2012", "unet_miccai2015"])
def test_microscopy_configs_and_their_no_weight_map_ablation(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    config = load_config(path)
    assert config.inference.mode == "tile" and config.patches.num_slices == 1
    assert config.postprocess.method != "none" and config.data.normalize_mask == "all"
    assert config.loss.weight_map and config.loss.name == "weighted_ce"
    # what `medseg train --no-weight-map` sets on top
    ablation = load_config(path, ["loss.weight_map=false", "loss.name=ce"])
    assert not ablation.loss.weight_map and ablation.loss.name == "ce"
