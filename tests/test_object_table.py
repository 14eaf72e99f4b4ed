"""Tests for medseg.object_table and ``medseg predict --table``."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from reference import object_table_loop

from medseg.cli import main
from medseg.object_table import object_table, write_object_table


@pytest.mark.parametrize(
    "shape, channels, spacing",
    [
        ((1, 17, 23), 1, (1.0, 1.0, 1.0)),  # PNG: pixel size unknown
        ((1, 17, 23), 3, (1.0, 0.00025, 0.0003)),  # TIFF with a pixel size (0.25 x 0.3 µm)
        ((4, 9, 11), 2, (0.002, 0.0005, 0.0005)),  # a stack
    ],
)
def test_object_table_matches_the_loop(shape, channels, spacing):
    rng = np.random.default_rng(sum(shape) + channels)
    instances = rng.choice([0, 0, 3, 7, 8, 20], size=shape).astype(np.int32)
    image = rng.normal(100, 30, (channels, *shape)).astype(np.float32)
    table = object_table(instances, image, spacing_mm=spacing)
    expected = object_table_loop(instances, image, spacing)
    assert list(table.columns) == list(expected[0])
    assert len(table) == len(expected)
    for got, want in zip(table.to_dict("records"), expected, strict=True):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def test_object_table_by_hand_and_errors(tmp_path):
    inst = np.zeros((1, 4, 5), np.uint16)
    inst[0, 1:3, 1:3] = 4  # a 2 x 2 square: area 4, centroid (1.5, 1.5)
    img = np.ones((1, 1, 4, 5), np.float32) * 10
    img[0, 0, 1, 1] = 50  # mean (50 + 3 * 10) / 4 = 20
    table = object_table(inst, img, spacing_mm=(1.0, 0.0005, 0.0005))  # 0.5 µm pixels
    assert table.to_dict("records") == [
        {"id": 4, "area_px": 4, "area_um2": 1.0, "centroid_y": 1.5, "centroid_x": 1.5,
         "mean_intensity": 20.0}
    ]  # fmt: skip
    empty = object_table(np.zeros((1, 3, 3), np.int32), img[:, :, :3, :3], spacing_mm=(1, 1, 1))
    assert len(empty) == 0 and "area_px" in empty.columns
    with pytest.raises(ValueError, match="instances must be an integer map, got dtype float32"):
        object_table(inst.astype(np.float32), img, spacing_mm=(1, 1, 1))
    with pytest.raises(ValueError, match=r"image must be \(C, Z, Y, X\) with spatial shape"):
        object_table(inst, img[:, :, :3], spacing_mm=(1, 1, 1))
    path = write_object_table(tmp_path / "t.csv", table)
    with pytest.raises(FileExistsError):
        write_object_table(path, table)
    assert path.read_text().splitlines()[1] == "4,4,1,1.5,1.5,20"


def test_predict_table_on_a_real_dsb2018_image(shared_data, tmp_path, capsys):
    """`medseg predict -m nuclei --table` on a real fluorescence image: one row per object of
    the written instance map, areas that add up to its foreground, centroids inside it."""
    from PIL import Image

    case = "0114f484a16c152baa2d82fdd43740880a762c93f436c8988ac461c5c9dbe7d5"
    image = shared_data / "dsb2018_stage1_test" / "images" / f"{case}.png"
    code = main(["predict", str(image), "-m", "nuclei", "-o", str(tmp_path), "--table"])
    out = capsys.readouterr()
    assert code == 0, out.err
    instances = np.array(Image.open(tmp_path / f"{case}_instances.png"))
    with open(tmp_path / f"{case}_objects.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ids = [int(v) for v in np.unique(instances) if v]
    assert [int(r["id"]) for r in rows] == ids and len(ids) > 3
    assert "area_um2" not in rows[0]  # PNG records no pixel size
    assert sum(int(r["area_px"]) for r in rows) == np.count_nonzero(instances)
    for r in rows:
        y, x = round(float(r["centroid_y"])), round(float(r["centroid_x"]))
        assert 0 <= y < instances.shape[0] and 0 <= x < instances.shape[1]


def test_table_needs_an_object_model(shared_data, tmp_path, capsys):
    image = shared_data / "ibsr18" / "IBSR_04" / "IBSR_04_t1.nii.gz"
    code = main(["predict", str(image), "-o", str(tmp_path), "--table"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("Error: --table needs a 2D object model")
    assert len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
