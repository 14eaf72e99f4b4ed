"""pipelines/evaluate_run.py: the per-group tables, by a manifest column and by whether an
image type (kind, height x width) was in the training split; hand-computed means."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="module")
def evaluate_run(pipeline_script):
    return pipeline_script("evaluate_run")


def _cases(rows: list[tuple[str, str, str, int, int]]) -> list[SimpleNamespace]:
    """Manifest cases as load_manifest gives them (metadata read from the CSV as text)."""
    return [
        SimpleNamespace(case=c, split=s, metadata={"kind": k, "height": str(h), "width": str(w)})
        for c, s, k, h, w in rows
    ]


def test_seen_groups_and_grouped_table(evaluate_run, tmp_path):
    trained = _cases(
        [
            ("t1", "train", "fluo", 256, 256),
            ("t2", "train", "colour", 256, 320),
            # a validation case's type does not count as seen
            ("v1", "val", "fluo", 519, 161),
        ],
    )
    cases = _cases(
        [
            ("a", "all", "fluo", 256, 256),  # seen
            ("b", "all", "fluo", 519, 161),  # only in val: unseen
            ("c", "all", "colour", 256, 256),  # same size, other kind: unseen
            ("d", "all", "colour", 256, 320),  # seen
        ],
    )
    groups = evaluate_run.seen_groups(cases, trained)
    assert groups == {"a": "seen", "b": "unseen", "c": "unseen", "d": "seen"}

    report = tmp_path / "report.csv"
    report.write_text(
        "case,ap,ap_50,f1_at_05,pixel_iou,touching_pairs,touching_split\n"
        "a,0.6,0.8,0.9,0.8,4,1\n"
        "b,0.2,0.4,0.5,0.6,0,0\n"
        "c,0.1,0.3,0.4,0.5,2,2\n"
        "d,0.4,0.6,0.7,0.9,4,3\n"
        "zz,1.0,1.0,1.0,1.0,9,9\n",  # not a case of the manifest: left out
        encoding="utf-8",
    )
    table = evaluate_run._grouped(report, groups, "type").splitlines()
    # seen: a and d; AP (0.6 + 0.4) / 2, split rate pooled (1 + 3) / (4 + 4)
    assert table[2] == "| seen (2) | 0.500 | 0.700 | 0.800 | 0.850 | 0.500 |"
    # unseen: b and c; split rate 2 / 2
    assert table[3] == "| unseen (2) | 0.150 | 0.350 | 0.450 | 0.550 | 1.000 |"
    assert table[4] == "| all (4) | 0.325 | 0.525 | 0.625 | 0.700 | 0.600 |"


def test_grouped_by_column_without_pairs_is_nan(evaluate_run, tmp_path):
    report = tmp_path / "report.csv"
    report.write_text(
        "case,ap,ap_50,f1_at_05,pixel_iou,touching_pairs,touching_split\na,0.5,1.0,1.0,0.9,0,0\n",
        encoding="utf-8",
    )
    table = evaluate_run._grouped(report, {"a": "x"}, "kind").splitlines()
    assert table[0].startswith("| kind (images) |")
    assert table[2] == "| x (1) | 0.500 | 1.000 | 1.000 | 0.900 | nan |"
