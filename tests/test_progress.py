"""Progress and logging: the library's callbacks count every patch and tile and change no
result; ``medseg predict`` on a terminal draws live bars (checked in a real pseudo-terminal),
and draws none with ``-q`` or into a pipe."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg._progress import Bars
from medseg.cli import main
from medseg.models.unet import UNet
from medseg.patches import PatchSpec, make_grid, predict_sliding_window
from medseg.tiling import predict_tiled

REPO = Path(__file__).resolve().parents[1]


def _predictor(x: torch.Tensor) -> torch.Tensor:
    centre = x[:, 1:2]
    return torch.cat([0.5 - centre, centre - 0.5], dim=1)


def _recorder():
    calls: list[tuple[int, int]] = []
    return calls, lambda done, total: calls.append((done, total))


def test_sliding_window_progress_counts_every_patch_and_changes_nothing():
    image = np.random.default_rng(0).random((1, 9, 30, 26), dtype=np.float32)
    spec = PatchSpec.two_and_half_d(8, 4)
    total = make_grid((9, 30, 26), spec).num_patches
    roi = np.zeros((9, 30, 26), bool)
    roi[3:5, 10:14, 8:12] = True
    for kwargs in ({}, {"roi": roi}):
        calls, record = _recorder()
        out = predict_sliding_window(
            image, _predictor, spec, patches_per_slab=50, progress=record, **kwargs
        )
        plain = predict_sliding_window(image, _predictor, spec, patches_per_slab=50, **kwargs)
        np.testing.assert_array_equal(out.labels, plain.labels)
        assert len(calls) > 2  # slab by slab, not once at the end
        done = [d for d, _ in calls]
        assert done == sorted(done) and len(set(done)) == len(done)
        assert {t for _, t in calls} == {total} and done[-1] == total  # skipped ROI patches too


def test_tiled_progress_counts_every_tile():
    torch.manual_seed(0)
    net = UNet(in_channels=1, num_classes=3, base_features=2, depth=2, padding="valid")
    image = np.random.default_rng(1).random((1, 2, 30, 50), dtype=np.float32)
    calls: list[tuple[int, int]] = []
    out = predict_tiled(
        image, net, tile_size=20, batch_size=4, device="cpu",
        progress=lambda d, t: calls.append((d, t)),
    )  # fmt: skip
    plain = predict_tiled(image, net, tile_size=20, batch_size=4, device="cpu")
    np.testing.assert_array_equal(out.labels, plain.labels)
    # 2 slices x 2 x 3 tiles, 4 per batch: 4, 8, 12
    assert calls == [(4, 12), (8, 12), (12, 12)]


def test_bars_draw_an_overall_and_an_item_bar_with_eta():
    stream = io.StringIO()
    with Bars(2, "predict", unit="images", file=stream) as bars:
        step = bars.item("a.nii.gz")
        step(5, 10)
        bars.advance()
        bars.print("a.nii.gz: done")
    text = stream.getvalue()
    assert "predict" in text and "a.nii.gz" in text and "5/10" in text
    assert re.search(r"eta \d+:\d\d", text)  # an estimate as soon as there is progress
    assert "a.nii.gz: done" in text and bars.completed == 1
    # disabled: callbacks do nothing, lines go to stdout
    quiet = Bars(2, "predict", enabled=False)
    with quiet:
        quiet.item("x")(1, 2)
        quiet.advance()
    assert quiet.completed == 1


def _run_in_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``medseg ARGS`` with stdout and stderr on a pseudo-terminal; all it drew."""
    exe = Path(sys.executable).with_name("medseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "medseg.cli"]
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    env.pop("MEDSEG_DATA_ROOT", None)
    proc = subprocess.Popen(
        [*cmd, *args], stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, cwd=cwd, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_predict_on_a_terminal_draws_live_bars_and_quiet_draws_none(
    tiny_ibsr, tiny_usegnet, tmp_path
):
    model = tiny_usegnet(tmp_path / "tiny.pt", size=16, stride=4)
    scans = tmp_path / "scans"
    scans.mkdir()
    for case in ("IBSR_01", "IBSR_04"):
        shutil.copy(tiny_ibsr / f"{case}_t1.nii.gz", scans)
    args = ["predict", str(scans), "-o", str(tmp_path / "out"), "-m", str(model)]
    args += ["--skull-strip", "never", "--device", "cpu"]
    code, drawn = _run_in_terminal(args, tmp_path)
    assert code == 0, drawn
    assert "predict" in drawn and "images" in drawn and "eta" in drawn
    assert "IBSR_01_t1.nii.gz" in drawn and "patches" in drawn
    assert "\x1b[" in drawn  # cursor movement: a live display, redrawn in place
    assert "IBSR_04_t1.nii.gz:" in drawn  # the per-image line, printed above the bars
    code, drawn = _run_in_terminal(["-q", *args, "--overwrite"], tmp_path)
    assert code == 0 and "eta" not in drawn and "IBSR_04_t1.nii.gz:" in drawn


def test_no_bars_into_a_pipe_and_the_library_logs_through_medseg(
    tiny_ibsr, tiny_usegnet, tmp_path, capsys, caplog
):
    model = tiny_usegnet(tmp_path / "tiny.pt", size=16, stride=8)
    args = ["predict", str(tiny_ibsr / "IBSR_04_t1.nii.gz"), "-o", str(tmp_path / "o.nii.gz")]
    assert main([*args, "-m", str(model), "--skull-strip", "never"]) == 0
    out, err = capsys.readouterr()
    assert "eta" not in out + err and "IBSR_04_t1.nii.gz:" in out
    # -v turns on debug messages of the medseg logger; -q keeps warnings only
    main(["-v", "version"])
    assert logging.getLogger("medseg").level == logging.DEBUG
    main(["-q", "version"])
    assert logging.getLogger("medseg").level == logging.WARNING
    logging.getLogger("medseg.crossval").warning("disk almost full")
    assert capsys.readouterr().err.strip() == "Warning: disk almost full"
    logging.getLogger("medseg.crossval").info("fold 0: kept")
    assert capsys.readouterr().err == ""
    main(["version"])  # the default: info
    logging.getLogger("medseg.crossval").info("fold 0: kept")
    assert capsys.readouterr().err.strip() == "fold 0: kept"
