"""End-to-end microscopy (U-Net paper path) on real data, tiny and on CPU.

DSB2018: three real images (two train, one val) from data_manifests/dsb2018_stage1_test.csv
with its sidecar (label_format instances), trained from configs/unet_dsb2018.yaml with a
tiny valid-padding U-Net (base 4, depth 2: 56 px input -> 16 px output, 20 px context)
for one epoch of 8 patches, with and without the weight map. ISBI 2012: two 160 x 160
crops of real slices (binary labels, 255 = cell). Then `medseg predict` writes the mask,
instance map and overlay, and refuses bad input with a one-line error and nothing written.

The CLI runs through `medseg.cli.main` (the entry point, with its one-line error handler)
inside `typer.testing.CliRunner().isolation()`, which captures stdout and stderr.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from medseg.checkpoint import load_checkpoint
from medseg.cli import main
from medseg.instances import instances_from_prediction
from medseg.io import read_image, read_instances

REPO = Path(__file__).resolve().parents[1]
DSB = {  # case id prefix -> split: 50 nuclei (16 touching pairs), 21 (12), 6 (0)
    "0a849e0eb15f": "train",
    "0ed3555a4bd4": "train",
    "e17b7aedd251": "val",
}
ISBI = {"slice_00": "train", "slice_11": "val"}
TINY = [
    "model.kwargs={base_features: 4, depth: 2, padding: valid, dropout: 0.0}",
    "patches.size=16",
    "patches.stride=16",
    "patches.patches_per_epoch=8",
    "schedule.epochs=1",
    "schedule.val_every=1",
    "schedule.batch_size=8",
    "device=cpu",
]


def _cli(*args: str | Path) -> tuple[int, str, str]:
    """Run `medseg ARGS`; return (exit status, stdout, stderr)."""
    with CliRunner().isolation() as (out, err, _):
        code = main([str(a) for a in args])
        return code, out.getvalue().decode(), err.getvalue().decode()


def _train_args(config: str, manifest: Path, data_root: Path, out: Path, cache: Path) -> list:
    sets = [
        *TINY,
        f"data.manifest={manifest}",
        f"data.data_root={data_root}",
        f"data.cache_dir={cache}",
        f"out_dir={out}",
    ]
    return ["train", "-c", REPO / "configs" / config, "--quiet", *_sets(sets)]


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _one_error_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


def _empty_or_absent(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


@pytest.fixture(scope="module")
def dsb(shared_data, tmp_path_factory) -> dict:
    """The tiny DSB manifest (rows of the real one) and a run trained with the weight map."""
    root = tmp_path_factory.mktemp("dsb")
    source = REPO / "data_manifests" / "dsb2018_stage1_test.csv"
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    picked = [r | {"split": DSB[r["case"][:12]]} for r in rows if r["case"][:12] in DSB]
    assert len(picked) == 3
    manifest = root / "tiny_dsb.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(picked)
    shutil.copyfile(source.with_suffix(".labels.json"), root / "tiny_dsb.labels.json")
    run, cache = root / "run", root / "cache"
    code, out, err = _cli(*_train_args("unet_dsb2018.yaml", manifest, shared_data, run, cache))
    assert code == 0, err
    val = next(r for r in picked if r["split"] == "val")
    return {
        "root": root,
        "manifest": manifest,
        "run": run,
        "cache": cache,
        "stdout": out,
        "val_image": shared_data / val["image"],
        "val_shape": (int(val["height"]), int(val["width"])),
    }


@pytest.fixture(scope="module")
def isbi(shared_data, tmp_path_factory) -> dict:
    """Two 160 x 160 crops of real ISBI slices (binary 0 / 255 labels) and a trained run."""
    root = tmp_path_factory.mktemp("isbi")
    source = REPO / "data_manifests" / "isbi2012_em.csv"
    rows = []
    for case, split in ISBI.items():
        for kind in ("images", "labels"):
            with Image.open(shared_data / "isbi2012_em" / kind / f"{case}.png") as png:
                pixels = np.array(png)[200:360, 180:340]
            Image.fromarray(pixels).save(root / f"{case}_{kind}.png")
        rows.append([case, f"{case}_images.png", f"{case}_labels.png", split])
    manifest = root / "tiny_isbi.csv"
    pd.DataFrame(rows, columns=["case", "image", "label", "split"]).to_csv(manifest, index=False)
    shutil.copyfile(source.with_suffix(".labels.json"), root / "tiny_isbi.labels.json")
    run = root / "run"
    code, out, err = _cli(*_train_args("unet_isbi2012.yaml", manifest, root, run, root / "cache"))
    assert code == 0, err
    return {"root": root, "run": run, "val_image": root / "slice_11_images.png"}


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def test_tiny_unet_context_is_20_px():
    from medseg.config import load_config
    from medseg.train import model_context

    # depth 2, valid: input 4b + 28 -> output 4b - 12; output 16 needs b = 7, input 56
    config = load_config(REPO / "configs" / "unet_dsb2018.yaml", TINY)
    assert model_context(config) == 20
    sizes = ["patches.size=15", "patches.stride=15"]
    bad = load_config(REPO / "configs" / "unet_dsb2018.yaml", [*TINY, *sizes])
    with pytest.raises(ValueError, match=r"patches.size must be an output size .* got 15"):
        model_context(bad)


def test_dsb_train_with_weight_map_logs_object_metrics(dsb):
    run = dsb["run"]
    assert f"best checkpoint: {run / 'best.pt'}" in dsb["stdout"]
    for name in ("best.pt", "last.pt", "log.csv", "config.json", "manifest.csv", "report.json"):
        assert (run / name).is_file(), name
    log = pd.read_csv(run / "log.csv")
    assert log["epoch"].tolist() == [1] and np.isfinite(log["train_loss"]).all()
    objects = json.loads(log["val_objects"][0])  # NaN (no touching pairs) is allowed
    assert set(objects) == {"ap", "f1_at_05", "pixel_iou", "rand_error", "split_rate"}
    assert log["val_select"][0] == pytest.approx(objects["ap"], abs=1e-5)  # select_metric ap
    assert 0.0 <= log["val_select"][0] <= 1.0
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt.extra["postprocess"] == {"method": "components", "min_size": 8, "fill_gaps": True}
    assert ckpt.extra["label_format"] == "instances" and ckpt.extra["foreground_value"] is None
    assert ckpt.inference["mode"] == "tile" and ckpt.image_channels == 3
    assert ckpt.model_kwargs["padding"] == "valid" and ckpt.model_kwargs["depth"] == 2
    assert ckpt.config["loss"]["weight_map"] and ckpt.config["loss"]["name"] == "weighted_ce"
    assert ckpt.normalization["mask"] == "all"
    # one cached weight map per training image (validation uses the real, uncarved target)
    cached = sorted(p.name for p in dsb["cache"].iterdir())
    assert len(cached) == 2 and all(name.startswith("weightmap_") for name in cached)


def test_dsb_train_without_weight_map(dsb, shared_data, tmp_path):
    run, cache = tmp_path / "nowm", tmp_path / "cache"
    args = _train_args("unet_dsb2018.yaml", dsb["manifest"], shared_data, run, cache)
    code, out, err = _cli(*args, "--no-weight-map")
    assert code == 0, err
    assert "best checkpoint" in out
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["loss"]["name"] == "ce" and config["loss"]["weight_map"] is False
    assert config["data"]["separate_touching"] is True  # only the loss changes
    log = pd.read_csv(run / "log.csv")
    assert log["val_select"].notna().all() and log["val_objects"].notna().all()
    assert not cache.exists()  # no weight map, nothing cached
    assert load_checkpoint(run / "best.pt").extra["postprocess"]["method"] == "components"


def test_dsb_boundary_head_trains_and_predicts_three_classes(dsb, shared_data, tmp_path):
    """configs/unet_dsb2018_boundary.yaml, tiny: the checkpoint records the grey input (a
    light-background image's darkest channel, as the recipe says), the three classes and
    the boundary post-processing; `medseg predict` then writes the class map (0 / 1 / 2, the
    argmax) and the objects that the seeded watershed makes of the classes decided
    foreground first from the probabilities, for a colour and a grey image alike."""
    from medseg.boundary import classes_from_probs, instances_from_boundary

    run, cache = tmp_path / "boundary", tmp_path / "cache"
    args = _train_args("unet_dsb2018_boundary.yaml", dsb["manifest"], shared_data, run, cache)
    code, out, err = _cli(*args)
    assert code == 0, err
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt.label_names == {0: "background", 1: "interior", 2: "boundary"}
    assert ckpt.normalization["colour"] == "grey-darkest" and ckpt.image_channels == 1
    assert ckpt.extra["postprocess"]["method"] == "boundary" and ckpt.num_classes == 3
    log = pd.read_csv(run / "log.csv")
    assert np.isfinite(log["train_loss"]).all() and log["val_objects"].notna().all()
    with Image.open(dsb["val_image"]) as png:
        grey = np.array(png.convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    for image in (dsb["val_image"], tmp_path / "grey.png"):
        out_dir = tmp_path / "pred"
        args = ("predict", image, "-m", run / "best.pt", "--probs", "-o", f"{out_dir}/")
        code, _, err = _cli(*args)
        assert code == 0, err
        paths = _outputs(out_dir, image.stem)
        with Image.open(paths["mask"]) as png:
            classes = np.array(png)
        assert classes.shape == dsb["val_shape"] and set(np.unique(classes)) <= {0, 1, 2}
        probs = read_image(out_dir / f"{image.stem}_probs.nii.gz").array
        np.testing.assert_array_equal(classes, probs.argmax(0)[0])
        instances = read_instances(paths["instances"]).array
        expected = instances_from_boundary(classes_from_probs(probs), min_size=8)
        np.testing.assert_array_equal(instances, expected)


def test_colour_setting_reaches_training_and_prediction(dsb, shared_data, tmp_path):
    """data.colour end to end, both conversions: the recipe's grey-darkest and, set on the
    command line, grey (the channel mean). The checkpoint records which, and medseg predict
    gives a colour (H&E-like) image to the network as that conversion, inverted and
    percentile-normalised; the two inputs differ."""
    from medseg.normalize import model_input_channels, normalize_intensity
    from medseg.predict import prepare_image

    colour = next((shared_data / "dsb2018_stage1_test" / "images").glob("1d9eacb3*.png"))
    volume = read_image(colour, allow_2d=True)
    expected = {
        name: normalize_intensity(
            model_input_channels(volume.array, name), method="percentile",
            percentiles=(1.0, 99.8), mask=np.ones(volume.array.shape[1:], bool),
        )[0]
        for name in ("grey", "grey-darkest")
    }  # fmt: skip
    assert np.abs(expected["grey"] - expected["grey-darkest"]).mean() > 0.01
    run, cache = tmp_path / "mean", tmp_path / "cache"
    args = _train_args("unet_dsb2018_boundary.yaml", dsb["manifest"], shared_data, run, cache)
    code, _, err = _cli(*args, "--set", "data.colour=grey")
    assert code == 0, err
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt.normalization["colour"] == "grey" and ckpt.image_channels == 1
    np.testing.assert_allclose(
        prepare_image(volume, ckpt, what="colour"), expected["grey"], rtol=1e-6
    )
    # the recipe's setting on the same checkpoint
    darkest = dataclasses.replace(
        ckpt, normalization=ckpt.normalization | {"colour": "grey-darkest"}
    )
    given = prepare_image(volume, darkest, what="colour")
    np.testing.assert_allclose(given, expected["grey-darkest"], rtol=1e-6)
    out = tmp_path / "pred"
    code, stdout, err = _cli("predict", colour, "-m", run / "best.pt", "-o", f"{out}/")
    assert code == 0, err
    assert (out / f"{colour.stem}_instances.png").is_file()


def test_isbi_binary_labels_train(isbi):
    log = pd.read_csv(isbi["run"] / "log.csv")
    assert log["val_objects"].notna().all()
    rand_error = json.loads(log["val_objects"][0])["rand_error"]
    assert log["val_select"][0] == pytest.approx(rand_error, abs=1e-5)  # select rand_error
    ckpt = load_checkpoint(isbi["run"] / "best.pt")
    assert ckpt.extra["label_format"] == "binary" and ckpt.extra["foreground_value"] == 255
    assert ckpt.image_channels == 1 and ckpt.label_names == {0: "membrane", 1: "cell"}
    assert ckpt.extra["postprocess"] == {
        "method": "seeded",  # the config's: the seeded watershed's default settings
        "min_size": 10,
        "fill_gaps": False,
        "seed_threshold": 0.8,
        "seed_distance": 1.0,
        "sigma": 1.0,
        "mask_threshold": 0.5,
        "merge_threshold": 0.0,
    }


def test_isbi_seeded_objects_are_what_validation_scores_and_predict_writes(isbi, tmp_path):
    """postprocess.method seeded: the checkpoint stores the parameters, the training log's
    validation Rand error is that of instances_from_probability on the model's own
    probabilities, and predict writes those instances."""
    from medseg.io import read_image
    from medseg.manifest import read_target
    from medseg.membranes import instances_from_probability
    from medseg.metrics import rand_error
    from medseg.predict import segment_objects

    manifest, root = isbi["root"] / "tiny_isbi.csv", isbi["root"]
    run = tmp_path / "run"
    args = _train_args("unet_isbi2012.yaml", manifest, root, run, root / "cache")
    args += _sets(
        [
            "postprocess.method=seeded",
            "postprocess.seed_threshold=0.6",
            "postprocess.sigma=0.5",
            "postprocess.merge_threshold=0.2",
            "cpu_amp=false",
        ]
    )  # fmt: skip  (validation in float32, as predict)
    code, _, err = _cli(*args)
    assert code == 0, err
    ckpt = load_checkpoint(run / "best.pt")
    pp = ckpt.extra["postprocess"]
    assert pp["method"] == "seeded" and pp["seed_threshold"] == 0.6 and pp["sigma"] == 0.5
    assert pp["merge_threshold"] == 0.2 and pp["mask_threshold"] == 0.5
    image = read_image(isbi["val_image"], allow_2d=True)
    result, written = segment_objects(
        image, ckpt, ckpt.build_model("cpu"), what="v", return_probs=True
    )
    params = {k: pp[k] for k in ("seed_threshold", "seed_distance", "sigma", "merge_threshold")}
    by_hand = instances_from_probability(1 - result.probs[0], min_size=pp["min_size"], **params)
    assert (written == by_hand).all()
    target_ids = read_target(
        root / "slice_11_labels.png", label_format="binary", foreground_value=255
    ).instances
    logged = json.loads(pd.read_csv(run / "log.csv")["val_objects"][0])["rand_error"]
    assert logged == pytest.approx(rand_error(by_hand, target_ids)["rand_error"], abs=1e-4)
    out = tmp_path / "pred"
    code, _, err = _cli("predict", isbi["val_image"], "-m", run / "best.pt", "-o", out)
    assert code == 0, err
    assert (np.array(Image.open(out / "slice_11_images_instances.png")) == by_hand[0]).all()


def test_bad_patch_size_for_the_valid_unet_writes_nothing(dsb, shared_data, tmp_path):
    run = tmp_path / "bad"
    args = _train_args("unet_dsb2018.yaml", dsb["manifest"], shared_data, run, tmp_path / "c")
    code, _, err = _cli(*args, *_sets(["patches.size=15", "patches.stride=15"]))
    assert code == 1
    _one_error_line(err, "patches.size must be an output size", "got 15", "the nearest is")
    assert not run.exists()


# ---------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------


def _outputs(folder: Path, stem: str) -> dict[str, Path]:
    return {k: folder / f"{stem}_{k}.png" for k in ("mask", "instances", "overlay")}


def _check_outputs(
    paths: dict[str, Path], shape: tuple[int, int], model: Path, image: Path | None = None
) -> np.ndarray:
    """Mask in {0, 1}; uint16 instance PNG read back as int32, the objects of the mask by
    the checkpoint's post-processing (for ``seeded``, of the model's probabilities of
    ``image``, by hand); RGB overlay of the image size. Returns the mask."""
    with Image.open(paths["mask"]) as png:
        mask = np.array(png)
    assert mask.shape == shape and set(np.unique(mask)) <= {0, 1}
    with Image.open(paths["instances"]) as png:
        assert png.mode.startswith("I;16")  # uint16 on disk
    instances = read_instances(paths["instances"]).array
    assert instances.dtype == np.int32 and instances.shape == (1, *shape)
    ckpt = load_checkpoint(model)
    pp = ckpt.extra["postprocess"]
    if pp["method"] == "seeded":
        from medseg.io import read_image
        from medseg.membranes import instances_from_probability, seeded_parameters
        from medseg.predict import segment_objects

        assert image is not None
        volume = read_image(image, allow_2d=True)
        net = ckpt.build_model("cpu")
        result, _ = segment_objects(volume, ckpt, net, what="i", return_probs=True)
        np.testing.assert_array_equal(result.labels[0], mask)
        expected = instances_from_probability(
            1 - result.probs[0], min_size=pp["min_size"], **seeded_parameters(pp)
        )
    else:
        expected = instances_from_prediction(
            mask[None], method=pp["method"], min_size=pp["min_size"], fill=pp["fill_gaps"]
        )
    np.testing.assert_array_equal(instances, expected)
    with Image.open(paths["overlay"]) as png:
        assert png.mode == "RGB" and png.size == (shape[1], shape[0])
    return mask


def test_predict_dsb_writes_mask_instances_and_overlay(dsb, tmp_path):
    out = tmp_path / "out"
    image = dsb["val_image"]
    code, stdout, err = _cli("predict", image, "-m", dsb["run"] / "best.pt", "-o", f"{out}/")
    assert code == 0, err
    assert "objects" in stdout and stdout.count("wrote") == 3
    paths = _outputs(out, image.stem)
    assert sorted(out.iterdir()) == sorted(paths.values())
    _check_outputs(paths, dsb["val_shape"], dsb["run"] / "best.pt")
    # existing outputs: refused without --overwrite, untouched; replaced with it
    before = {k: p.read_bytes() for k, p in paths.items()}
    code, _, err = _cli("predict", image, "-m", dsb["run"] / "best.pt", "-o", f"{out}/")
    assert code == 1
    _one_error_line(err, f"{image.stem}_mask.png", "--overwrite")
    assert {k: p.read_bytes() for k, p in paths.items()} == before
    args = ("predict", image, "-m", dsb["run"] / "best.pt", "-o", f"{out}/", "--overwrite")
    code, _, err = _cli(*args)
    assert code == 0, err
    assert {k: p.read_bytes() for k, p in paths.items()} == before  # deterministic


def test_grey_and_16_bit_input_to_the_rgb_model(dsb, tmp_path):
    with Image.open(dsb["val_image"]) as png:
        grey = np.array(png.convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    out = tmp_path / "out"
    for name in ("grey8", "grey16"):
        args = ("predict", tmp_path / f"{name}.png", "-m", dsb["run"] / "best.pt", "-o", f"{out}/")
        code, _, err = _cli(*args)
        assert code == 0, err
    model = dsb["run"] / "best.pt"
    mask8 = _check_outputs(_outputs(out, "grey8"), grey.shape, model)
    mask16 = _check_outputs(_outputs(out, "grey16"), grey.shape, model)
    # x * 257 has the same z-scores up to float rounding: (almost) the same prediction
    assert np.mean(mask8 != mask16) < 1e-3


def test_predict_isbi_crop(isbi, tmp_path):
    out = tmp_path / "out"
    code, _, err = _cli("predict", isbi["val_image"], "-m", isbi["run"] / "best.pt", "-o", out)
    assert code == 0, err
    model = isbi["run"] / "best.pt"
    _check_outputs(_outputs(out, "slice_11_images"), (160, 160), model, isbi["val_image"])


def _bad_inputs(dsb: dict, folder: Path) -> dict[str, Path]:
    folder.mkdir()
    with Image.open(dsb["val_image"]) as png:
        rgba = np.array(png.convert("RGBA"))
    rgba[10, 20, 3] = 0
    Image.fromarray(rgba).save(folder / "transparent.png")
    Image.fromarray(rgba[..., :3]).save(folder / "colour.png")
    Image.fromarray(np.full((64, 80), 37, np.uint8)).save(folder / "constant.png")
    return {p.stem: p for p in folder.iterdir()}


def test_bad_inputs_exit_1_with_one_line_and_write_nothing(dsb, isbi, tmp_path):
    bad = _bad_inputs(dsb, tmp_path / "in")
    dsb_model, isbi_model = dsb["run"] / "best.pt", isbi["run"] / "best.pt"
    cases = [
        (bad["transparent"], dsb_model, ["must be opaque", "1 transparent"]),
        (bad["colour"], isbi_model, ["must have 1 channel(s)", "got 3", "greyscale"]),
        (bad["constant"], dsb_model, ["must vary", "constant value 37"]),
        (bad["constant"], None, ["-m/--model must name a 2D model", "-m nuclei"]),
    ]
    for i, (image, model, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        model_args = ["-m", model] if model is not None else []
        code, stdout, err = _cli("predict", image, *model_args, "-o", f"{out}/")
        assert code == 1, (image, stdout)
        _one_error_line(err, str(image), *words)
        assert _empty_or_absent(out), sorted(out.iterdir())


def test_folder_with_one_bad_image_predicts_the_others(dsb, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(dsb["val_image"], folder / "good.png")
    with Image.open(dsb["val_image"]) as png:
        rgba = np.array(png.convert("RGBA"))
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba).save(folder / "seethrough.png")
    out = tmp_path / "out"
    code, stdout, err = _cli("predict", folder, "-m", dsb["run"] / "best.pt", "-o", out)
    assert code == 1
    assert "1 of 2 input(s) failed" in err and "seethrough.png" in err and "opaque" in err
    assert sorted(p.name for p in out.iterdir()) == [
        "good_instances.png",
        "good_mask.png",
        "good_overlay.png",
    ]


# ---------------------------------------------------------------------------
# Training helpers of the object path
# ---------------------------------------------------------------------------


def test_volume_options_follow_config_and_manifest(dsb, shared_data):
    from medseg.config import load_config
    from medseg.manifest import load_manifest
    from medseg.train import volume_options

    path = REPO / "configs" / "unet_dsb2018.yaml"
    manifest = load_manifest(dsb["manifest"], data_root=shared_data)
    options = volume_options(load_config(path), manifest, margin=30, context=20)
    assert (options.margin, options.context, options.num_classes) == (30, 20, 2)
    assert options.label_format == "instances" and options.foreground_value is None
    assert options.weight_map == (10.0, 5.0) and options.separate_touching
    assert options.normalize_mask == "all" and options.cache_dir == "runs/cache"
    ablation = load_config(path, ["loss.weight_map=false", "loss.name=ce"])
    assert volume_options(ablation, manifest, margin=0, context=0).weight_map is None


def test_object_metrics_and_selection_score_hand_cases():
    from medseg.train import object_metrics, selection_score

    target = np.array([[[1, 1, 0, 2, 2], [1, 1, 0, 2, 2]]], dtype=np.int32)
    perfect = object_metrics(target * 3, target)  # ids need not match, only objects
    assert perfect["ap"] == perfect["f1_at_05"] == perfect["pixel_iou"] == 1.0
    assert perfect["rand_error"] == 0.0
    merged = object_metrics((target > 0).astype(np.int32), target)  # one object for two
    assert merged["pixel_iou"] == 1.0 and merged["ap"] < 1.0 and merged["rand_error"] > 0
    assert selection_score({"ap": 0.25}, "ap") == 0.25
    assert selection_score({"rand_error": 0.25}, "rand_error") == -0.25  # lower is better
    assert selection_score({"ap": float("nan")}, "ap") == -np.inf
    assert selection_score({"mean_dice": 0.5}, "ap") == -np.inf  # missing


def _resolved_train_config(monkeypatch, *args: str | Path):
    """The config `medseg train ARGS` would train (medseg.train.train replaced)."""
    import medseg.train

    seen = []
    monkeypatch.setattr(medseg.train, "train", lambda config, **kw: seen.append(config) or "x")
    code, _, err = _cli("train", *args)
    assert code == 0, err
    return seen[0]


def test_no_weight_map_flag_turns_the_weight_map_off(monkeypatch):
    config = _resolved_train_config(
        monkeypatch, "-c", REPO / "configs" / "unet_isbi2012.yaml", "--no-weight-map"
    )
    assert config.loss.name == "ce" and not config.loss.weight_map
    assert config.loss.w0 == 10.0 and config.postprocess.method == "seeded"


def test_no_weight_map_flag_is_refused_without_a_weight_map(monkeypatch):
    # a config without a weight map (UNet++ deep supervision) must not lose its loss
    import medseg.train

    seen = []
    monkeypatch.setattr(medseg.train, "train", lambda config, **kw: seen.append(config) or "x")
    code, _, err = _cli("train", "-c", REPO / "configs" / "unetpp_ibsr18.yaml", "--no-weight-map")
    assert code == 1 and not seen
    assert "--no-weight-map needs a config that trains with a weight map" in err
    assert "'unetpp'" in err and "Traceback" not in err


def test_predict_without_model_in_a_mixed_batch_fails_only_the_2d_image(tmp_path):
    # a folder of one T1-like volume and one PNG, no -m: the PNG is reported, the volume runs
    from medseg.io import Geometry, write_image

    inputs = tmp_path / "in"
    inputs.mkdir()
    zz, yy, xx = np.indices((6, 48, 44))
    head = ((yy - 24) ** 2 + (xx - 22) ** 2 < 400).astype(np.float32)
    volume = (head * (50 + 10 * np.sin(xx / 3.0) + zz)).astype(np.float32)[None]
    write_image(inputs / "t1.nii.gz", volume, Geometry.from_spacing((1.0, 1.0, 1.0)))
    Image.fromarray(np.full((20, 30), 7, np.uint8)).save(inputs / "cells.png")
    out = tmp_path / "out"
    code, stdout, err = _cli("predict", inputs, "-o", out, "--device", "cpu")
    assert code == 1
    assert "1 of 2 input(s) failed" in err and "cells.png" in err
    assert (out / "t1_seg.nii.gz").is_file() and "t1.nii.gz" in stdout
    assert not any(p.name.startswith("cells") for p in out.iterdir())
