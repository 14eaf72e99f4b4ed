"""The built-in `nuclei` model end to end on one real image of each DSB2018 kind.

`medseg predict IMAGE -m nuclei`, then `medseg evaluate` of the written instance map
against the expert annotation, through the CLI entry point. The images: a fluorescence
and a colour image of the external test set (`dsb2018_stage1_test`, never trained or
tuned on) and a grey-on-light brightfield image of the training set's validation split
(the external test set has none of that kind). The floors sit below what the shipped
model scores (in brackets; docs/REPRODUCTION.md) and far above what a model given the
wrong polarity or stain handling scores (about 0 on the light-background kinds).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medseg.boundary import classes_from_probs, instances_from_boundary
from medseg.checkpoint import load_checkpoint
from medseg.cli import main
from medseg.io import read_image, read_instances

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

CASES = {  # kind: (manifest, case prefix, AP@0.5 floor [measured], AP floor [measured])
    "gray_dark_bg": ("dsb2018_stage1_test.csv", "4be73d68", 0.70, 0.40),  # [0.780, 0.520]
    "color": ("dsb2018_stage1_test.csv", "1d9eacb3", 0.30, 0.07),  # [0.415, 0.121]
    "gray_light_bg": ("dsb2018_stage1_train.csv", "8d05fb18", 0.60, 0.35),  # [0.822, 0.578]
}


def _cli(*args) -> tuple[int, str, str]:
    with CliRunner().isolation() as (out, err, _):
        code = main([str(a) for a in args])
        return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.mark.parametrize("kind", list(CASES))
def test_builtin_nuclei_on_a_real_image_of_each_kind(kind, tmp_path):
    manifest, prefix, floor_50, floor_ap = CASES[kind]
    with open(REPO / "data_manifests" / manifest, newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["case"].startswith(prefix))
    assert row["kind"] == kind
    image, label = DATA / row["image"], DATA / row["label"]
    code, out, err = _cli("predict", image, "-m", "nuclei", "--probs", "-o", f"{tmp_path}/")
    assert code == 0, err
    stem = image.stem
    with Image.open(tmp_path / f"{stem}_mask.png") as png:
        classes = np.array(png)
    assert set(np.unique(classes)) <= {0, 1, 2}  # background, interior, boundary
    probs = read_image(tmp_path / f"{stem}_probs.nii.gz").array
    np.testing.assert_array_equal(classes, probs.argmax(0)[0])  # the class map: argmax
    # the objects: decided foreground first (1 - p(background) > the threshold that
    # tune-postprocess stored, chosen on validation), then seeded growth
    threshold = load_checkpoint("nuclei").extra["postprocess"]["mask_threshold"]
    assert 0.0 < threshold < 1.0
    instances = read_instances(tmp_path / f"{stem}_instances.png").array
    classes_by_hand = classes_from_probs(probs, mask_threshold=threshold)
    by_hand = instances_from_boundary(classes_by_hand, min_size=8)
    np.testing.assert_array_equal(instances, by_hand)
    report = tmp_path / "report.csv"
    args = (tmp_path / f"{stem}_instances.png", label, "--label-format", "instances")
    code, _, err = _cli("evaluate", *args, "-o", report)
    assert code == 0, err
    with open(report, newline="") as f:
        scores = next(csv.DictReader(f))
    assert float(scores["ap_50"]) >= floor_50, scores
    assert float(scores["ap"]) >= floor_ap, scores
    assert abs(int(scores["num_pred"]) - int(row["n_nuclei"])) <= 0.3 * int(row["n_nuclei"])
