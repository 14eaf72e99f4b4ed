"""Property-based fuzzing (Hypothesis) of the header readers and the manifest parser.

Whatever a header declares, a reader either returns a usable volume (finite positive
spacing, the declared shape) or refuses in one line that names the file; it never raises
anything else (MemoryError, struct.error, IndexError, ...) and never allocates what a
forged header asks for. The manifest parser does the same for any CSV text. Bounded,
derandomised examples keep it deterministic and a few seconds long.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medseg.io import read_image, read_label  # noqa: E402
from medseg.manifest import load_manifest  # noqa: E402

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -1.0, 1.0, 0.5, 1e-30, 1e30]),
)
DIMS = st.one_of(st.integers(-2, 8), st.integers(0, 70000), st.just(32767))


@pytest.fixture()
def library_logs_to_stderr():
    """nibabel's logger writing to the *current* stderr (its own handler holds the stream
    of the moment nibabel was imported, which pytest's capture does not see)."""
    import logging
    import sys

    logger = logging.getLogger("nibabel.global")
    saved = list(logger.handlers)
    logger.handlers = [logging.StreamHandler(sys.stderr)]
    yield
    logger.handlers = saved


def _refused_in_one_line(path: Path, read) -> None:
    """``read(path)`` returns a sane volume or raises ValueError/OSError naming the file."""
    try:
        volume = read(path)
    except (ValueError, OSError) as err:
        message = str(err)
        assert str(path) in message or path.name in message, message
        assert "\n" not in message.strip(), message
        return
    assert all(np.isfinite(s) and s > 0 for s in volume.geometry.spacing_mm)
    assert volume.array.size > 0 and 0 not in volume.array.shape


@FUZZ
@given(
    dims=st.lists(DIMS, min_size=3, max_size=5),
    ndim=st.integers(-1, 8),
    datatype=st.sampled_from([2, 4, 8, 16, 64, 256, 512, 768, 0, 1, 128, 2304, 9999]),
    pixdim=st.lists(FLOATS, min_size=3, max_size=3),
    vox_offset=st.sampled_from([0.0, 352.0, 348.0, 1e9, -5.0, float("nan")]),
    srow=st.lists(FLOATS, min_size=12, max_size=12),
    sform_code=st.integers(0, 5),
    payload=st.integers(0, 4096),
    gz=st.booleans(),
    flips=st.lists(st.tuples(st.integers(0, 347), st.integers(0, 255)), max_size=4),
)
def test_forged_nifti_headers(dims, ndim, datatype, pixdim, vox_offset, srow, sform_code,
                              payload, gz, flips, capsys, library_logs_to_stderr):  # fmt: skip
    header = bytearray(nib.Nifti1Header().binaryblock)
    dim = [ndim, *dims, *([1] * (7 - len(dims)))][:8]
    struct.pack_into("<8h", header, 40, *[max(-32768, min(32767, d)) for d in dim])
    struct.pack_into("<h", header, 70, datatype)
    struct.pack_into("<3f", header, 80, *pixdim)
    struct.pack_into("<f", header, 108, vox_offset)
    struct.pack_into("<h", header, 254, sform_code)
    struct.pack_into("<12f", header, 280, *srow)
    for offset, value in flips:
        header[offset] = value
    data = bytes(header) + b"\0" * 4 + bytes(payload)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("x.nii.gz" if gz else "x.nii")
        path.write_bytes(gzip.compress(data) if gz else data)
        _refused_in_one_line(path, read_image)
        _refused_in_one_line(path, read_label)
    assert capsys.readouterr().err == ""  # nibabel's fix-up lines stay out of stderr


@FUZZ
@given(
    dims=st.lists(st.one_of(st.integers(-1, 9), st.integers(0, 100000)), min_size=1, max_size=4),
    spacing=st.lists(FLOATS, min_size=1, max_size=4),
    element=st.sampled_from(["MET_FLOAT", "MET_UCHAR", "MET_SHORT", "MET_DOUBLE", "MET_NONE"]),
    channels=st.integers(0, 5),
    compressed=st.booleans(),
    payload=st.integers(0, 2048),
)
def test_forged_metaimage_headers(dims, spacing, element, channels, compressed, payload, capfd):
    lines = [
        "ObjectType = Image",
        f"NDims = {len(dims)}",
        f"DimSize = {' '.join(map(str, dims))}",
        f"ElementSpacing = {' '.join(repr(float(s)) for s in spacing)}",
        f"ElementNumberOfChannels = {channels}",
        f"ElementType = {element}",
        f"CompressedData = {'True' if compressed else 'False'}",
        "ElementDataFile = LOCAL",
    ]
    body = zlib.compress(bytes(payload)) if compressed else bytes(payload)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.mha"
        path.write_bytes(("\n".join(lines) + "\n").encode() + body)
        _refused_in_one_line(path, read_image)
    assert capfd.readouterr().err == ""  # nor ITK's warnings


def _png(width: int, height: int, depth: int, colour: int, data: bytes) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data))
        + chunk(b"IEND", b"")
    )  # fmt: skip


@FUZZ
@given(
    width=st.one_of(st.integers(0, 64), st.integers(0, 2**31 - 1)),
    height=st.one_of(st.integers(0, 64), st.integers(0, 2**31 - 1)),
    depth=st.sampled_from([1, 2, 4, 8, 16, 3]),
    colour=st.sampled_from([0, 2, 3, 4, 6, 1]),
    data=st.binary(max_size=512),
)
def test_forged_png_headers(width, height, depth, colour, data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.png"
        path.write_bytes(_png(width, height, depth, colour, data))
        _refused_in_one_line(path, read_image)


CELL = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.sampled_from(["../x.nii.gz", "/abs/x.nii", "C:\\x.nii", "~/x.nii", "", "a.nii.gz"]),
)


@FUZZ
@given(
    header=st.lists(st.sampled_from(["case", "image", "label", "split", "site", "", "case"]),
                    min_size=0, max_size=6),
    rows=st.lists(st.lists(CELL, min_size=0, max_size=6), max_size=6),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)  # fmt: skip
def test_manifest_parser_on_any_text(header, rows, raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.csv"
        if raw is not None:
            path.write_bytes(raw)
        else:
            text = "\n".join(",".join(f'"{c}"' if "," in c else c for c in row)
                             for row in [header, *rows])  # fmt: skip
            path.write_text(text, encoding="utf-8", errors="replace")
        try:
            manifest = load_manifest(path, data_root=folder)
        except (ValueError, OSError) as err:
            assert "m.csv" in str(err) or "data root" in str(err) or "data_root" in str(err)
            return
        for case in manifest.cases:  # what it accepts is usable
            assert case.case and "/" not in case.case and not case.case.startswith(".")
            assert case.image.is_absolute() and case.split in ("train", "val", "test")
