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
    again = config_from_dict(json.loads(out.read_text()))
    assert again == config
    assert again.data.percentiles == (2.0, 98.0)


def test_save_config_refuses_to_overwrite(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_config(TrainConfig(), path)
    assert path.read_text() == "keep"


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
        (["optim.lr=-1"], ValueError, r"optim.lr must be > 0, got -1.0"),
        (["model.name=usegnett"], ValueError, "model.name must be one of"),
        (["model.kwargs={num_classes: 3}"], ValueError, "must not set 'num_classes'"),
        (["patches.num_slices=2"], ValueError, "patches.num_slices must be a positive odd"),
        (["patches.stride=50"], ValueError, r"patches.stride must be in \[1, size=40\]"),
        (["patches.slice_axis=coronal"], ValueError, "patches.slice_axis must be"),
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
