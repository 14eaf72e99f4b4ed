"""PNG files (Pillow): planes ``(y, x)`` or ``(y, x, samples)`` in the file, ``(C, 1, Y, X)``
in memory (ARCHITECTURE.md section 2)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from medseg import _limits
from medseg.io._checks import _check_opaque
from medseg.io._formats import _unreadable
from medseg.io.geometry import Geometry, _Raw

_PNG_GRAY_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F")
_PNG_CHANNELS = {**{mode: 1 for mode in _PNG_GRAY_MODES}, "LA": 1, "RGB": 3, "RGBA": 3}


def _read_png(path: Path, what: str, *, load_data: bool, indexed: bool) -> _Raw:
    from PIL import Image

    array = None
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: the size is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil = Image.open(path)
        with pil:
            file_format, mode = pil.format, pil.mode
            num_frames = getattr(pil, "n_frames", 1)
            width, height = pil.size
            if load_data and file_format == "PNG" and num_frames == 1:
                bands = len(pil.getbands())
                _limits.check_declared_size(path, what, (height, width, bands), 1, compressed=True)
                pil.load()
                if mode == "P" and not indexed:  # an image shows its palette colours
                    mode = "RGBA" if "transparency" in pil.info else "RGB"
                    array = np.array(pil.convert(mode))
                else:
                    array = np.array(pil)
    except _limits.DeclaredSizeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, what, "PNG", err) from err
    if file_format != "PNG":
        raise ValueError(f"{what} {str(path)!r} must hold PNG data, got {file_format} data")
    if num_frames != 1:
        raise ValueError(
            f"{what} {str(path)!r} must be a single-frame PNG, got {num_frames} frames"
        )
    if mode == "P" and not indexed and not load_data:
        mode = "RGB"
    if mode not in _PNG_CHANNELS:
        raise ValueError(
            f"{what} {str(path)!r} must be a grayscale, RGB or RGBA PNG, got Pillow mode {mode!r}"
        )
    shape = (_PNG_CHANNELS[mode], 1, height, width)
    geometry = Geometry.from_spacing((1.0, 1.0, 1.0))
    if array is None:
        return _Raw(None, shape, geometry)
    if mode in ("LA", "RGBA"):
        _check_opaque(array[..., -1], 255, path, what)
        array = array[..., :-1]
    if array.ndim == 3:
        array = np.moveaxis(array, -1, 0)  # (Y, X, C) -> (C, Y, X)
    return _Raw(array.reshape(shape), shape, geometry)


def _write_png(tmp: Path, data: np.ndarray, geometry: Geometry) -> None:
    from PIL import Image

    plane = data[:, 0]  # (C, 1, Y, X) -> (C, Y, X)
    pixels = plane[0] if plane.shape[0] == 1 else np.moveaxis(plane, 0, -1)  # RGB: (Y, X, 3)
    Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="PNG")
