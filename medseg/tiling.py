"""U-Net overlap-tile prediction of 2D images (Ronneberger, Fischer, Brox 2015, Fig. 2).

A large image is predicted tile by tile. Each input tile carries ``halo`` pixels of context
on every side beyond the output region it keeps; where that context lies outside the image
it is filled by **mirroring** the image (``np.pad(mode="reflect")`` semantics: the edge pixel
is not repeated, and context wider than the image is reflected again and again; an axis of
length 1 is repeated instead). Arrays follow ARCHITECTURE.md section 2: an image is float32
``(C, Z, Y, X)`` and every z-slice is predicted on its own by a 2D model that maps
``(N, C, y, x)`` to logits ``(N, K, y', x')``.

* **Valid-padding nets** (``model.padding == "valid"``, the paper's U-Net): ``tile_size`` is
  the wanted *output* tile; the input tile is the smallest valid one whose output is at
  least that large (572 -> 388 for depth 4), and ``halo = (input - output) / 2`` (92).
* **Same-padding nets**: ``tile_size`` is the *input* tile, rounded up to ``model.divisor``;
  ``halo`` pixels on each side of the output are discarded (the convolutions' zero padding
  makes them unreliable), so a tile keeps ``input - 2 * halo`` pixels per axis.

**Seamless tiling.** Tile ``t`` starts at ``t * step`` (image coordinates of its first kept
output pixel; its input starts ``halo`` earlier), where ``step`` is the largest multiple of
the model's pooling ``divisor`` that is <= the kept size. Starting every tile on a multiple
of the divisor gives every tile the pooling phase of one whole-image pass, so for a
valid-padding net the tiled result equals a single pass over the mirrored image up to float
round-off. The last tile is *not* moved flush with the border (that would change the
phase); the far side gets extra mirrored context instead. Tile ``t`` writes only the pixels
it owns, ``[t * step, (t + 1) * step)`` (the last tile: up to the image end), so there is no
blending and the result is deterministic. 1D picture, kept size 5, step 4 (divisor 2)::

    image     |0 1 2 3 4 5 6 7 8 9|
    tile 0    [0 1 2 3]4               owns 0..3 (kept 0..4, pixel 4 discarded)
    tile 1            [4 5 6 7]8       owns 4..7
    tile 2                    [8 9]x x x   owns 8..9; x = mirrored context, discarded

**Memory.** Tiles are gathered straight from the image (no padded copy of a slice is made)
``batch_size`` at a time, and only the outputs are kept: peak memory is O(image) +
O(``batch_size`` tiles), never O(number of tiles x tile).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.patches import Reassembled

DEFAULT_TILE_SIZE = 512
MIN_DEFAULT_HALO = 16
MAX_LABEL_CLASSES = 256  # labels are uint8
# How far past tile_size to look for a valid input size of a valid-padding model that has
# output_shape() but no input_size_for(); UNet's valid sizes are 2**depth apart.
_VALID_SEARCH_LIMIT = 4096


@dataclass(frozen=True)
class TilePlan:
    """How an image is cut into tiles; all sizes in pixels, ``(y, x)`` order.

    Attributes:
        input_size: Model input tile ``(y, x)``.
        output_size: Model output for that input (equal to ``input_size`` for same-padding
            nets).
        halo: Context on each side of the kept output ``(y, x)``: the kept output of a tile
            is ``input_size - 2 * halo`` and starts ``halo`` pixels into the input tile.
        step: Distance between tile starts ``(y, x)``, a multiple of the model's divisor and
            at most the kept size.
    """

    input_size: tuple[int, int]
    output_size: tuple[int, int]
    halo: tuple[int, int]
    step: tuple[int, int]

    @property
    def kept_size(self) -> tuple[int, int]:
        """Output pixels of one tile that are usable, ``input_size - 2 * halo`` per axis."""
        return (
            self.input_size[0] - 2 * self.halo[0],
            self.input_size[1] - 2 * self.halo[1],
        )

    def num_tiles(self, image_shape: Sequence[int]) -> tuple[int, int]:
        """Tiles per axis ``(ny, nx)`` for an image of spatial shape ``(Y, X)``.

        Example:
            >>> TilePlan((572, 572), (388, 388), (92, 92), (384, 384)).num_tiles((1000, 384))
            (3, 1)
        """
        ny, nx = (int(s) for s in image_shape)
        return (math.ceil(ny / self.step[0]), math.ceil(nx / self.step[1]))


def _as_pair(value: object, name: str) -> tuple[int, int]:
    """An int or a ``(y, x)`` pair of ints >= 1 as a pair."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a (y, x) pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1 on every axis, got {value!r}")
    return pair


def _divisor(model: nn.Module) -> int:
    divisor = getattr(model, "divisor", 1)
    if isinstance(divisor, bool) or not isinstance(divisor, (int, np.integer)) or divisor < 1:
        raise ValueError(f"model.divisor must be an int >= 1, got {divisor!r}")
    return int(divisor)


def _valid_input_size(model: nn.Module, output_size: int) -> int:
    """Smallest input size (one axis) of a valid-padding model whose output >= output_size."""
    input_size_for = getattr(type(model), "input_size_for", None)
    depth = getattr(model, "depth", None)
    if input_size_for is not None and depth is not None:
        return int(input_size_for(output_size, depth=depth, padding="valid"))
    for size in range(output_size, output_size + _VALID_SEARCH_LIMIT + 1):
        try:
            out = model.output_shape((size, size))  # type: ignore[operator]
        except ValueError:
            continue
        if int(out[0]) >= output_size:
            return size
    raise ValueError(
        f"tile_size must have a valid input size for this valid-padding model within "
        f"{_VALID_SEARCH_LIMIT} pixels of it, got {output_size}; give the model "
        "input_size_for() or lower tile_size"
    )


def plan_tiles(
    model: nn.Module,
    *,
    tile_size: int | tuple[int, int] = DEFAULT_TILE_SIZE,
    halo: int | None = None,
    image_shape: Sequence[int] | None = None,
) -> TilePlan:
    """Tile geometry for a 2D model (module docstring: valid vs same padding).

    Args:
        model: 2D segmentation net. Read attributes: ``padding`` (``"valid"`` or
            ``"same"``, default ``"same"``), ``divisor`` (pooling factor, default 1);
            valid-padding nets also need ``output_shape((y, x))`` and, optionally,
            ``depth`` and a static ``input_size_for(size, depth=, padding=)`` (as
            :class:`medseg.models.unet.UNet`).
        tile_size: Pixels per tile, an int or ``(y, x)``: the wanted *output* tile for
            valid-padding nets (rounded up to a size the net accepts and to at least
            ``divisor``), the *input* tile for same-padding nets (rounded up to
            ``divisor``).
        halo: Same-padding nets only: context pixels discarded on each side of a tile
            (default ``max(2 * divisor, 16)``). Valid-padding nets fix it themselves
            (``(input - output) / 2``); pass None or that value.
        image_shape: Optional ``(Y, X)`` of the image: tiles larger than needed to cover
            it in one tile are shrunk to the smallest that does (saves work on small
            images; the result of a valid-padding net does not change).

    Returns:
        The :class:`TilePlan`.

    Raises:
        ValueError: for a bad ``tile_size`` or ``halo``, a halo that leaves less than one
            ``divisor`` of kept output, or a valid-padding model without ``output_shape``
            or whose output shape is inconsistent.

    Example:
        The paper's U-Net (depth 4, valid padding): 572 -> 388, 92 pixels of context, tiles
        every 384 pixels (the largest multiple of 2**4 <= 388).

        >>> from medseg.models.unet import UNet
        >>> net = UNet(in_channels=1, num_classes=2, base_features=1, depth=4, padding="valid")
        >>> plan_tiles(net, tile_size=388)
        TilePlan(input_size=(572, 572), output_size=(388, 388), halo=(92, 92), step=(384, 384))
        >>> plan_tiles(net, tile_size=(388, 100)).input_size
        (572, 284)
    """
    tile = _as_pair(tile_size, "tile_size")
    divisor = _divisor(model)
    padding = getattr(model, "padding", "same")
    if padding not in ("same", "valid"):
        raise ValueError(f"model.padding must be 'same' or 'valid', got {padding!r}")
    if halo is not None and (
        isinstance(halo, bool) or not isinstance(halo, (int, np.integer)) or halo < 0
    ):
        raise ValueError(f"halo must be None or an int >= 0, got {halo!r}")
    shape = None if image_shape is None else _as_pair(tuple(image_shape), "image_shape")

    if padding == "valid":
        if not callable(getattr(model, "output_shape", None)):
            raise ValueError(
                f"model must have output_shape(input_shape) for padding='valid', got "
                f"{type(model).__name__} without it"
            )
        if shape is not None:  # one output tile as large as the image is enough
            tile = (min(tile[0], shape[0]), min(tile[1], shape[1]))
        wanted = (max(tile[0], divisor), max(tile[1], divisor))
        input_size = (_valid_input_size(model, wanted[0]), _valid_input_size(model, wanted[1]))
        out = tuple(int(s) for s in model.output_shape(input_size))  # type: ignore[operator]
        if len(out) != 2 or any(o < w for o, w in zip(out, wanted, strict=True)):
            raise ValueError(
                f"model.output_shape({input_size}) must be 2 sizes >= {wanted}, got {out}"
            )
        if any((i - o) % 2 for i, o in zip(input_size, out, strict=True)):
            raise ValueError(
                f"model.output_shape({input_size}) must shrink each axis by an even number of "
                f"pixels (a symmetric halo), got {out}"
            )
        output_size = (out[0], out[1])
        halos = ((input_size[0] - out[0]) // 2, (input_size[1] - out[1]) // 2)
        if halo is not None and (halo, halo) != halos:
            raise ValueError(
                f"halo must be None or {halos[0]} for this valid-padding model (its context "
                f"is fixed, halo {halos}), got {halo}"
            )
    else:
        h = max(2 * divisor, MIN_DEFAULT_HALO) if halo is None else int(halo)
        halos = (h, h)
        if shape is not None:  # one tile whose kept output covers the image is enough
            tile = (
                min(tile[0], max(shape[0], divisor) + 2 * h),
                min(tile[1], max(shape[1], divisor) + 2 * h),
            )
        input_size = (
            math.ceil(tile[0] / divisor) * divisor,
            math.ceil(tile[1] / divisor) * divisor,
        )
        output_size = input_size
        for size in input_size:
            if size - 2 * h < divisor:
                raise ValueError(
                    f"halo must be at most {(size - divisor) // 2} so that an input tile of "
                    f"{size} keeps at least divisor={divisor} pixels (input - 2 * halo), got "
                    f"{h}; raise tile_size or lower halo"
                )
    kept = (input_size[0] - 2 * halos[0], input_size[1] - 2 * halos[1])
    step = ((kept[0] // divisor) * divisor, (kept[1] // divisor) * divisor)
    return TilePlan(input_size, output_size, halos, step)


def _axis_sources(size: int, halo: int, step: int, input_size: int) -> list[slice | np.ndarray]:
    """Where each tile's input comes from along one image axis of ``size`` pixels.

    Tile ``t`` reads mirrored image pixels ``t * step - halo .. t * step - halo + input_size``:
    a slice when they all lie inside the image, else an int64 index array built with
    ``np.pad(mode="reflect")`` (``"edge"`` for a 1-pixel axis). 1D example, size 3, halo 2:
    padded indices ``[2 1 | 0 1 2 | 1 0 1 ...]``.
    """
    n = math.ceil(size / step)
    far = (n - 1) * step + input_size - halo - size  # >= halo since kept >= step
    index = np.arange(size, dtype=np.int64)
    if size > 1:
        source = np.pad(index, (halo, far), mode="reflect")
    else:  # reflecting needs 2 pixels; a 1-pixel axis is repeated
        source = np.pad(index, (halo, far), mode="edge")
    out: list[slice | np.ndarray] = []
    for t in range(n):
        first = t * step - halo
        if first >= 0 and first + input_size <= size:
            out.append(slice(first, first + input_size))
        else:
            out.append(source[t * step : t * step + input_size])
    return out


def _gather_tile(plane: np.ndarray, ys: slice | np.ndarray, xs: slice | np.ndarray) -> Any:
    """``plane[:, ys, xs]`` of a (C, Y, X) plane, with index arrays broadcast as a grid."""
    if isinstance(ys, np.ndarray) and isinstance(xs, np.ndarray):
        return plane[:, ys[:, None], xs[None, :]]
    return plane[:, ys, xs]


def _check_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"image must be a numpy array (C, Z, Y, X), got {type(image).__name__}; "
            "convert tensors with .cpu().numpy()"
        )
    if image.ndim != 4:
        raise ValueError(f"image must be 4D (C, Z, Y, X), got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"image must be a float array (normalised intensities), got dtype {image.dtype}"
        )
    if min(image.shape) < 1:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    return image


def predict_tiled(
    image: np.ndarray,
    model: nn.Module,
    *,
    tile_size: int | tuple[int, int] = DEFAULT_TILE_SIZE,
    halo: int | None = None,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    return_probs: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Reassembled:
    """Segment every z-slice of an image with a 2D net by overlap-tiling (module docstring).

    Args:
        image: Normalised intensities, float (float32 expected), ``(C, Z, Y, X)``; 2D
            images have ``Z == 1``. Not modified.
        model: 2D net mapping float32 ``(N, C, y, x)`` to logits ``(N, K, y', x')``; put in
            eval mode on ``device``. See :func:`plan_tiles` for the attributes read.
        tile_size: Pixels per tile, an int or ``(y, x)`` (:func:`plan_tiles`); shrunk to the
            smallest tile that covers an axis when the image is smaller.
        halo: Context for same-padding nets (:func:`plan_tiles`).
        batch_size: Tiles per forward pass (>= 1); bounds the memory of the tiles.
        device: Where the model runs (``"auto"``/None: CUDA if available). On CUDA the
            forward pass runs under bfloat16 autocast, as :func:`medseg.predict.predict_array`.
        return_probs: Also return the class probabilities.
        progress: Called as ``progress(done, total)`` with the number of tiles finished after
            every batch; None (default): silent.

    Returns:
        :class:`medseg.patches.Reassembled` of numpy arrays: labels uint8 ``(Z, Y, X)``
        (argmax over K; ties go to the lowest class), confidence float32 ``(Z, Y, X)`` (the
        winner's softmax probability, in [0, 1]) and probs float32 ``(K, Z, Y, X)`` or None.

    Raises:
        ValueError: for an image that is not a 4D float numpy array, a bad ``batch_size``,
            ``tile_size`` or ``halo`` (:func:`plan_tiles`), more than 256 classes, or a
            model whose output shape differs from the plan's.

    Example:
        >>> from medseg.models.unet import UNet
        >>> net = UNet(in_channels=1, num_classes=3, base_features=2, depth=2, padding="valid")
        >>> image = np.zeros((1, 2, 30, 50), dtype=np.float32)  # 2 slices, 2 x 3 tiles each
        >>> out = predict_tiled(image, net, tile_size=20, batch_size=6, device="cpu")
        >>> out.labels.shape, out.labels.dtype, out.confidence.dtype, out.probs
        ((2, 30, 50), dtype('uint8'), dtype('float32'), None)
    """
    from medseg._device import resolve_device

    _check_image(image)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    channels, nz, ny, nx = image.shape
    plan = plan_tiles(model, tile_size=tile_size, halo=halo, image_shape=(ny, nx))
    (iy, ix), (oy, ox) = plan.input_size, plan.output_size
    (sy, sx), (ky, kx) = plan.step, plan.kept_size
    # the kept output starts this far into the model output (0 for valid, halo for same nets)
    off_y = plan.halo[0] - (iy - oy) // 2
    off_x = plan.halo[1] - (ix - ox) // 2
    y_sources = _axis_sources(ny, plan.halo[0], sy, iy)
    x_sources = _axis_sources(nx, plan.halo[1], sx, ix)
    tiles_y, tiles_x = len(y_sources), len(x_sources)

    def owned(t: int, step: int, n_tiles: int, size: int) -> tuple[int, int]:
        """Image pixels ``[start, stop)`` written by tile ``t``."""
        return t * step, size if t == n_tiles - 1 else (t + 1) * step

    def tile_indices() -> Iterator[tuple[int, int, int]]:
        for z in range(nz):
            for ty in range(tiles_y):
                for tx in range(tiles_x):
                    yield z, ty, tx

    dev = resolve_device(device)
    model = model.to(dev).eval()
    autocast = torch.autocast(dev.type, torch.bfloat16, enabled=dev.type == "cuda")

    labels = np.empty((nz, ny, nx), dtype=np.uint8)
    confidence = np.empty((nz, ny, nx), dtype=np.float32)
    probs_out: np.ndarray | None = None
    num_classes: int | None = None
    buffer = np.empty((min(batch_size, nz * tiles_y * tiles_x), channels, iy, ix), np.float32)
    indices = tile_indices()
    finished = 0
    with torch.inference_mode():
        while True:
            batch_index: list[tuple[int, int, int]] = []
            for z, ty, tx in indices:
                # the float32 buffer is where other float dtypes are cast
                buffer[len(batch_index)] = _gather_tile(image[:, z], y_sources[ty], x_sources[tx])
                batch_index.append((z, ty, tx))
                if len(batch_index) == len(buffer):
                    break
            if not batch_index:
                break
            n = len(batch_index)
            batch = torch.from_numpy(buffer[:n]).to(dev)
            with autocast:
                logits = model(batch)
            shape = tuple(logits.shape)
            if len(shape) != 4 or shape[0] != n or shape[2:] != (oy, ox):
                raise ValueError(
                    f"model output must have shape ({n}, K, {oy}, {ox}) for input tiles of "
                    f"shape {tuple(batch.shape)} ({plan}), got {shape}"
                )
            if num_classes is None:
                num_classes = shape[1]
                if num_classes > MAX_LABEL_CLASSES:
                    raise ValueError(
                        f"model output must have at most {MAX_LABEL_CLASSES} classes for uint8 "
                        f"labels, got {num_classes} (output shape {shape})"
                    )
                if return_probs:
                    probs_out = np.empty((num_classes, nz, ny, nx), dtype=np.float32)
            elif shape[1] != num_classes:
                raise ValueError(
                    f"model output must keep {num_classes} classes for every batch, got "
                    f"output shape {shape}"
                )
            kept = logits[:, :, off_y : off_y + ky, off_x : off_x + kx].float()
            p = torch.softmax(kept, dim=1)  # (n, K, ky, kx)
            conf_t, lab_t = p.max(dim=1)  # (n, ky, kx); first maximum on ties
            lab_np = lab_t.to(torch.uint8).cpu().numpy()
            conf_np = conf_t.cpu().numpy()
            p_np = p.cpu().numpy() if probs_out is not None else None
            for i, (z, ty, tx) in enumerate(batch_index):
                y0, y1 = owned(ty, sy, tiles_y, ny)
                x0, x1 = owned(tx, sx, tiles_x, nx)
                labels[z, y0:y1, x0:x1] = lab_np[i, : y1 - y0, : x1 - x0]
                confidence[z, y0:y1, x0:x1] = conf_np[i, : y1 - y0, : x1 - x0]
                if probs_out is not None and p_np is not None:
                    probs_out[:, z, y0:y1, x0:x1] = p_np[i, :, : y1 - y0, : x1 - x0]
            finished += n
            if progress is not None:
                progress(finished, nz * tiles_y * tiles_x)
    return Reassembled(labels, confidence, probs_out)
