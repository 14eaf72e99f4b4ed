"""pipelines/recall_by_contrast.py: per-nucleus contrast and best IoU on hand-computed
cases, and the script end to end on a tiny folder."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def recall(pipeline_script):
    return pipeline_script("recall_by_contrast")


def _case():
    """A dark-background grey image: nucleus 1 (4 px) at 200, nucleus 2 (2 px) at 60,
    background 20; the prediction covers nucleus 1 and half of nucleus 2 plus one
    background pixel."""
    image = np.full((10, 10), 20, np.uint8)
    label = np.zeros((10, 10), np.uint16)
    label[1:3, 1:3] = 1
    label[6, 6:8] = 2
    image[label == 1] = 200
    image[label == 2] = 60
    pred = np.zeros((10, 10), np.uint16)
    pred[1:3, 1:3] = 5
    pred[6, 5:7] = 9
    return image, label, pred


def test_nucleus_table_hand_case(recall):
    image, label, pred = _case()
    rows = recall.nucleus_table(image, label, pred, "grey")
    # 99.8th percentile of the grey image: 200 (4 of 100 pixels); background median 20
    (c1, iou1, a1), (c2, iou2, a2) = rows
    assert (a1, a2) == (4, 2)
    assert c1 == pytest.approx(1.0) and c2 == pytest.approx(40 / 180)
    assert iou1 == pytest.approx(1.0)
    assert iou2 == pytest.approx(1 / 3)  # overlap 1, union 2 + 2 - 1


def test_script_end_to_end(recall, tmp_path, capsys):
    from PIL import Image

    image, label, pred = _case()
    (tmp_path / "data").mkdir()
    (tmp_path / "pred").mkdir()
    Image.fromarray(image).save(tmp_path / "data" / "a.png")
    Image.fromarray(label).save(tmp_path / "data" / "a_label.png")
    Image.fromarray(pred).save(tmp_path / "pred" / "a_instances.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("case,image,label,split,kind\na,a.png,a_label.png,val,gray_dark_bg\n")
    out = tmp_path / "nuclei.csv"
    args = ["--manifest", str(manifest), "--pred-dir", str(tmp_path / "pred")]
    args += ["--data-root", str(tmp_path / "data"), "--colour", "grey", "-o", str(out)]
    assert recall.main(args) == 0
    text = capsys.readouterr().out
    assert "gray_dark_bg" in text and out.is_file()
    assert recall.main(args) == 1  # no --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    (tmp_path / "pred" / "a_instances.png").unlink()
    assert recall.main([*args, "--overwrite"]) == 1
    assert "no prediction for case a" in capsys.readouterr().err
