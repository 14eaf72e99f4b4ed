"""TorchScript and ONNX export of any registered model, verified against PyTorch.

``export_model(checkpoint, "brain.onnx")`` writes one self-contained file that runs
without medseg: TorchScript (``torch.jit.load``) or ONNX (onnxruntime, TensorRT, ...).

**The graph.** It takes one input, ``image``, and returns one output, ``logits``:

* 2.5D models (brain MRI; ``patch["num_slices"] > 1``): ``image`` float32
  ``(N, C * num_slices, Y, X)``, intensities normalised as the checkpoint's
  ``normalization`` says; channel ``c * num_slices + s`` holds slice
  ``z - num_slices // 2 + s`` of image channel ``c`` (the layout of
  :func:`medseg.patches.extract_patches`). ``logits`` float32 ``(N, K, Y, X)``.
* 2D tile models (microscopy; ``inference["mode"] == "tile"``): ``image`` float32
  ``(N, C, Y, X)`` and ``logits`` ``(N, K, Y', X')``; valid-padding nets return a smaller
  ``Y', X'`` (the overlap-tile strategy of :mod:`medseg.tiling`).
* 3D models (``spatial_dims=3``) take ``(N, C, Z, Y, X)``.

``K`` is ``num_classes``; softmax/argmax are left to the caller. Batch size and every
spatial size are dynamic: any size the model accepts, i.e. ``minimum + step * k`` for
``k >= 0`` on every spatial axis (:class:`SizeRule`: multiples of the model's ``divisor``,
or the valid tile sizes of a valid-padding net). The TorchScript graph checks this and
the channel count and raises with the sizes to use; ONNX graphs carry no checks, so read
the rule from the metadata.

**Metadata.** Everything needed to run the model outside medseg (model name and
kwargs, ``num_classes``, ``label_names``, ``normalization``, ``patch``, ``inference``,
the input/output description and size rule, medseg and torch versions) is embedded as
JSON: in a TorchScript file as the extra file ``medseg.json``
(``torch.jit.load(path, _extra_files={"medseg.json": ""})``), in an ONNX file as
``metadata_props``, one entry per top-level key with a JSON value. Read either back with
:func:`read_export_metadata`.

**How it is captured.** ``torch.export.export(strict=True)`` (TorchDynamo) captures the
forward once with symbolic batch and spatial sizes; every shape computation (FCN's
padding to a multiple of 32 and crop, DeepLab's upsampling size and crop, U-Net's
centre crops, SegNet's max-unpooling output size) stays symbolic. The non-strict mode,
``torch.jit.trace`` (and hence the legacy ``torch.onnx.export(dynamo=False)``) all freeze
the sizes, because the models' input checks call ``int()`` on shapes, and
``torch.jit.script`` cannot compile the models' Python. From the one captured program:

* TorchScript: the graph with its guards removed, its ATen overloads turned into the
  operator packets TorchScript resolves, compiled with ``torch.jit.script`` behind a
  small scripted input check. torch 2.13 deprecates ``torch.jit`` (``script``, ``save``
  and ``load`` warn but work; the warnings are silenced here); the files load with
  ``torch.jit.load`` in Python and ``torch::jit::load`` in C++;
* ONNX: ``torch.onnx.export(program, dynamo=True)`` (needs ``onnx`` and ``onnxscript``),
  which translates every op of every registered model, SegNet's max-pooling indices and
  ``MaxUnpool`` included; dimension names are ``batch``, (``z``,) ``y``, ``x``.

**Verification.** The file is written to a temporary name, run (``torch.jit.load``, or
an onnxruntime CPU session) on seeded random inputs of two batch sizes and two spatial
shapes, compared with the eager model, and only then renamed into place: a file that
disagrees is never left behind. The allowed max abs difference is
``tolerance * max(1, max |eager logits|)`` with ``tolerance`` 1e-5 for TorchScript (the
same kernels run; differences are round-off of kernel choice) and 1e-4 for ONNX
(onnxruntime fuses and reorders float32 arithmetic).

The code lives in three modules, and every name keeps its import path here
(ARCHITECTURE.md section 1): the constants, :class:`SizeRule`, :func:`input_size_rule`,
:func:`resolve_format` and the argument checks in :mod:`medseg._export_checks`;
:func:`capture_program` and the TorchScript and ONNX conversion in
:mod:`medseg._export_convert`. This module holds :class:`ExportResult`, running and reading
exported files (:func:`run_exported`, :func:`read_export_metadata`) and the export itself
(:func:`export_module`, :func:`export_model`, :func:`export_metadata`).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg._export_checks import (  # noqa: F401  (re-exported: their home is _export_checks)
    _RESUME_ONLY,
    DEFAULT_SIZE,
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    FORMATS,
    INPUT_NAME,
    METADATA_FILE,
    ONNX_PACKAGES,
    OUTPUT_NAME,
    SUFFIXES,
    TOLERANCES,
    VERIFY_SEED,
    SizeRule,
    _check_example_shape,
    _check_model,
    _check_opset,
    check_onnx_available,
    input_size_rule,
    resolve_format,
)
from medseg._export_convert import (  # noqa: F401  (re-exported: their home is _export_convert)
    _JIT_DEPRECATED,
    _quiet_exporter,
    _to_onnx,
    _to_torchscript,
    capture_program,
)
from medseg.checkpoint import Checkpoint
from medseg.io import atomic_output, check_output_path
from medseg.typing import PathLike

# --------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` / :func:`export_module` wrote and how well it agrees.

    Attributes:
        path: The exported file.
        format: ``"torchscript"`` or ``"onnx"``.
        input_name: Name of the graph input (``"image"``).
        output_name: Name of the graph output (``"logits"``).
        input_shape: The input layout, e.g. ``"(N, 3, Y, X)"``: float32, dynamic N and
            spatial sizes (:attr:`size_rule`).
        output_shape: The output layout, e.g. ``"(N, 4, Y, X)"`` (``Y', X'`` when smaller).
        size_rule: Spatial sizes the graph accepts, per axis.
        checked_shapes: Input shapes on which the file was run and compared with PyTorch.
        max_abs_diff: Largest abs difference of the logits over those inputs.
        tolerance: The largest difference allowed
            (``TOLERANCES[format] * max(1, max |eager logits|)``).
    """

    path: Path
    format: str
    input_name: str
    output_name: str
    input_shape: str
    output_shape: str
    size_rule: SizeRule
    checked_shapes: tuple[tuple[int, ...], ...]
    max_abs_diff: float
    tolerance: float

    def summary(self) -> str:
        """One line for the CLI: what was written, its input and the check."""
        shapes = " and ".join(str(s) for s in self.checked_shapes)
        return (
            f"wrote {self.format} model {str(self.path)!r}: {self.input_name} float32 "
            f"{self.input_shape} (spatial sizes {self.size_rule.describe()}) -> "
            f"{self.output_name} {self.output_shape}; max abs diff to PyTorch "
            f"{self.max_abs_diff:.2e} <= {self.tolerance:.2e} on {shapes}"
        )


# --------------------------------------------------------------------------------------
# Running exported files


def _run_file(path: Path, fmt: str, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run an exported file (loaded once) on each image; float32 logits."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _JIT_DEPRECATED, DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return [module(torch.from_numpy(image)).numpy() for image in images]
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return [np.asarray(session.run(None, {INPUT_NAME: image})[0]) for image in images]


def run_exported(path: PathLike, image: np.ndarray) -> np.ndarray:
    """Run an exported model (format from the suffix) on the CPU.

    Args:
        path: A file written by :func:`export_model` (``.pt``/``.ts``/``.torchscript`` or
            ``.onnx``).
        image: float32 ``(N, C, *spatial)`` as documented in the file's metadata.

    Returns:
        Logits, float32 ``(N, K, *spatial_out)``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unknown suffix, a missing ONNX package, or a bad ``image``.
    """
    path = Path(path)
    fmt = resolve_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {str(path)!r} must exist, got nothing there")
    if not isinstance(image, np.ndarray) or image.dtype != np.float32:
        got = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be a float32 numpy array, got {got}")
    if fmt == "onnx":
        check_onnx_available(["onnxruntime"])
    return _run_file(path, fmt, [np.ascontiguousarray(image)])[0]


def read_export_metadata(path: PathLike) -> dict[str, Any]:
    """The medseg metadata embedded in an exported file (format from the suffix).

    Returns:
        The JSON dict written by :func:`export_module` (``label_names`` keys are strings,
        as in JSON).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unknown suffix, a missing ONNX package, or a file without
            medseg metadata.
    """
    path = Path(path)
    fmt = resolve_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {str(path)!r} must exist, got nothing there")
    if fmt == "torchscript":
        files = {METADATA_FILE: ""}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _JIT_DEPRECATED, DeprecationWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        text = files[METADATA_FILE]
        data = json.loads(text) if text else {}
    else:
        check_onnx_available(["onnx"])
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        data = {p.key: json.loads(p.value) for p in proto.metadata_props}
    if data.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"exported model {str(path)!r} must carry medseg metadata (format "
            f"{EXPORT_FORMAT!r}), got {data.get('format')!r}"
        )
    return data


# --------------------------------------------------------------------------------------
# Export


def _check_shapes(shape: tuple[int, ...], rule: SizeRule) -> list[tuple[int, ...]]:
    """The example shape and a second one: one more in the batch, larger sizes that
    differ per axis (``(2, 3, 40, 40)`` -> ``(3, 3, 48, 56)`` for a step of 8)."""
    spatial = []
    size = max(shape[2:])
    for _ in shape[2:]:
        size = rule.next_size(size + 1)
        spatial.append(size)
    return [shape, (shape[0] + 1, shape[1], *spatial)]


def _layout(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _compare_with_eager(
    path: Path, fmt: str, images: Sequence[torch.Tensor], references: Sequence[np.ndarray]
) -> tuple[float, float]:
    """Run the file on ``images``; ``(max abs diff, tolerance)`` against ``references``.

    Raises:
        ValueError: for a wrong output shape or a difference beyond the tolerance.
    """
    outputs = _run_file(path, fmt, [image.numpy() for image in images])
    diffs, scale = [], 1.0
    for out, ref, image in zip(outputs, references, images, strict=True):
        if out.shape != ref.shape:
            raise ValueError(
                f"exported {fmt} model must give logits of shape {ref.shape} for input "
                f"{tuple(image.shape)}, got {out.shape}; nothing was written"
            )
        diffs.append(float(np.abs(out - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    max_abs_diff, tolerance = max(diffs), TOLERANCES[fmt] * scale
    if not max_abs_diff <= tolerance:  # NaN fails too
        shapes = [tuple(image.shape) for image in images]
        raise ValueError(
            f"exported {fmt} model must agree with PyTorch within {tolerance:.2e}, got a "
            f"max abs diff of {max_abs_diff:.2e} on inputs {shapes}; nothing was written"
        )
    return max_abs_diff, tolerance


def export_module(
    model: nn.Module,
    path: PathLike,
    *,
    example_shape: Sequence[int],
    format: str | None = None,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    opset: int | None = None,
    program: torch.export.ExportedProgram | None = None,
) -> ExportResult:
    """Export a model to TorchScript or ONNX, verify it, and write it atomically.

    Args:
        model: A CPU model in eval mode mapping float32 ``(N, C, *spatial)`` to logits
            ``(N, K, *spatial_out)``.
        path: Output file; its suffix gives the format when ``format`` is None.
        example_shape: ``(N, C, *spatial)`` of the example input (N >= 2, sizes >= 2 that
            the model accepts); the file is verified on it and on a second shape with a
            larger batch and larger, unequal sizes.
        format: ``"torchscript"`` or ``"onnx"`` (default: from the suffix).
        metadata: JSON-able values embedded in the file (see the module docstring);
            ``format``, ``input``, ``output``, ``medseg_version`` and ``torch_version``
            are added.
        overwrite: Replace an existing file.
        opset: ONNX opset (default: the exporter's, 20 for torch 2.13); ignored for
            TorchScript.
        program: A capture of ``model`` from :func:`capture_program` with this
            ``example_shape``, to reuse it for a second format (default: capture now).

    Returns:
        The :class:`ExportResult`.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: for a bad format, suffix, opset, ``example_shape`` or ``metadata``,
            missing ONNX packages, a model that cannot be exported, or an exported file
            that disagrees with the model beyond the tolerance (nothing is written then).
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
        FileNotFoundError: if the folder of ``path`` does not exist.
    """
    from medseg import __version__

    fmt = resolve_format(path, format)
    opset = _check_opset(opset)
    if fmt == "onnx":
        check_onnx_available()
    path = check_output_path(path, overwrite=overwrite)
    model = _check_model(model)
    rule = input_size_rule(model)
    shape = _check_example_shape(example_shape, model, rule)
    name = type(model).__name__
    try:
        meta_text = json.dumps(metadata or {})
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata must be JSON-able, got {err}") from err

    # eager references first: a bad size fails here with the model's own message
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    shapes = _check_shapes(shape, rule)
    images = [torch.randn(s, generator=generator) for s in shapes]
    with torch.no_grad():
        try:
            references = [model(image).numpy() for image in images]
        except (ValueError, RuntimeError) as err:  # the model's check, or a torch op's
            msg = " ".join(str(err).split())[:300]
            raise ValueError(
                f"example_shape {shape} must be a valid model input, got: {msg}"
            ) from err

    if program is None:
        program = capture_program(model, shape)
    elif not isinstance(program, torch.export.ExportedProgram):
        raise TypeError(
            f"program must be a torch.export.ExportedProgram, got {type(program).__name__}"
        )
    out_channels = references[0].shape[1]
    dims = len(shape) - 2
    axes = list("ZYX"[3 - dims :])
    same_size = all(r.shape[2:] == i.shape[2:] for r, i in zip(references, images, strict=True))
    input_shape = _layout(["N", shape[1], *axes])
    output_shape = _layout(["N", out_channels, *(axes if same_size else [a + "'" for a in axes])])
    info = {
        **json.loads(meta_text),
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "medseg_version": __version__,
        "torch_version": torch.__version__,
        "export_format": fmt,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": input_shape,
            "size_rule": {"minimum": rule.minimum, "step": rule.step},
            "sizes": f"every spatial size {rule.describe()}; batch size any",
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": output_shape,
            "meaning": "raw logits (softmax over axis 1 gives class probabilities)",
        },
    }

    in_channels = int(getattr(model, "in_channels", shape[1]))
    with atomic_output(path, overwrite=overwrite) as tmp:
        if fmt == "torchscript":
            scripted = _to_torchscript(program, name=name, in_channels=in_channels, rule=rule)
            buffer = io.BytesIO()  # through memory: record names must not depend on tmp's
            with _quiet_exporter():
                torch.jit.save(scripted, buffer, _extra_files={METADATA_FILE: json.dumps(info)})
            tmp.write_bytes(buffer.getvalue())
        else:
            proto = _to_onnx(program, name=name, opset=opset)
            proto.doc_string = (
                f"medseg {name}: {INPUT_NAME} {input_shape} -> {OUTPUT_NAME} {output_shape}"
            )
            del proto.metadata_props[:]
            for key, value in info.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, json.dumps(value)
            tmp.write_bytes(proto.SerializeToString())
        max_abs_diff, tolerance = _compare_with_eager(tmp, fmt, images, references)
    return ExportResult(
        path=path,
        format=fmt,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        input_shape=input_shape,
        output_shape=output_shape,
        size_rule=rule,
        checked_shapes=tuple(shapes),
        max_abs_diff=max_abs_diff,
        tolerance=tolerance,
    )


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def export_metadata(checkpoint: Checkpoint) -> dict[str, Any]:
    """What a user needs to run a checkpoint's model outside medseg, as JSON-able values.

    Returns:
        ``model_name``, ``model_kwargs``, ``in_channels``, ``num_classes``,
        ``label_names`` (``{"0": "background", ...}``), ``normalization``, ``patch``,
        ``inference``, ``input_layout`` (words), ``epoch`` and the checkpoint's other
        JSON-able extras (e.g. ``postprocess``); resume-only state is left out.
    """
    num_slices = checkpoint.num_slices
    spatial_dims = int(checkpoint.model_kwargs.get("spatial_dims", 2))
    if spatial_dims == 3:
        layout = (
            f"(N, C, Z, Y, X) with C = {checkpoint.in_channels}: float32 intensities "
            "normalised as 'normalization' says"
        )
    elif num_slices > 1:
        layout = (
            f"(N, C * num_slices, Y, X) with C * num_slices = {checkpoint.image_channels} * "
            f"{num_slices}: float32 intensities normalised as 'normalization' says; channel "
            f"c * {num_slices} + s holds slice z - {num_slices // 2} + s of image channel c, "
            f"slices taken along patch.slice_axis ({checkpoint.patch_settings.slice_axis!r})"
        )
    else:
        layout = (
            f"(N, C, Y, X) with C = {checkpoint.in_channels}: float32 intensities normalised "
            "as 'normalization' says"
        )
    extras = {k: v for k, v in checkpoint.extra.items() if k not in _RESUME_ONLY and _jsonable(v)}
    fields = {
        "model_name": checkpoint.model_name,
        "model_kwargs": dict(checkpoint.model_kwargs),
        "in_channels": checkpoint.in_channels,
        "num_classes": checkpoint.num_classes,
        "label_names": {str(k): v for k, v in sorted(checkpoint.label_names.items())},
        "normalization": dict(checkpoint.normalization),
        "patch": dict(checkpoint.patch),
        "inference": dict(checkpoint.inference),
        "input_layout": layout,
        "epoch": checkpoint.epoch,
    }
    return {**extras, **{k: v for k, v in fields.items() if _jsonable(v)}}


def _default_example_shape(checkpoint: Checkpoint, model: nn.Module, rule: SizeRule) -> tuple:
    """Batch 2 and the training patch size (or the inference tile), rounded up to an
    accepted size of at least ``minimum + step`` (so no feature map shrinks to 1)."""
    dims = int(getattr(model, "spatial_dims", 2))
    size = checkpoint.patch_settings.size
    sizes = [DEFAULT_SIZE if size is None else size] * dims
    if checkpoint.num_slices > 1 and len(sizes) == 3:
        sizes = sizes[1:]
    floor = max(2, rule.minimum + rule.step)
    return (2, checkpoint.in_channels, *(rule.next_size(max(s, floor)) for s in sizes))


def export_model(
    checkpoint: Checkpoint,
    path: PathLike,
    *,
    format: str | None = None,
    overwrite: bool = False,
    opset: int | None = None,
    example_shape: Sequence[int] | None = None,
) -> ExportResult:
    """Export a checkpoint's model to TorchScript or ONNX with its metadata, verified.

    Args:
        checkpoint: A loaded :class:`medseg.checkpoint.Checkpoint` (e.g.
            ``load_checkpoint("brain-tissue")``).
        path: Output file. The suffix gives the format when ``format`` is None:
            ``.pt``/``.ts``/``.torchscript`` -> TorchScript, ``.onnx`` -> ONNX.
        format: ``"torchscript"`` or ``"onnx"``.
        overwrite: Replace an existing file (never half-written either way).
        opset: ONNX opset (default: the exporter's).
        example_shape: ``(N, C, *spatial)`` of the capture and verification input
            (default: batch 2, ``C = in_channels``, the training patch size rounded up to a
            size the model accepts; ``(2, 3, 40, 40)`` for brain-tissue, ``(2, 3, 100, 100)``
            for nuclei).

    Returns:
        The :class:`ExportResult`; ``result.summary()`` is one line for the CLI.

    Raises:
        TypeError: if ``checkpoint`` is not a Checkpoint.
        ValueError: as :func:`export_module` (bad format or suffix, missing ONNX packages,
            disagreement beyond the tolerance, ...).
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
        FileNotFoundError: if the folder of ``path`` does not exist.

    Example:
        >>> from medseg.checkpoint import load_checkpoint
        >>> result = export_model(load_checkpoint("brain-tissue"), "brain.onnx")  # doctest: +SKIP
        >>> result.max_abs_diff <= result.tolerance  # doctest: +SKIP
        True
    """
    if not isinstance(checkpoint, Checkpoint):
        raise TypeError(
            f"checkpoint must be a medseg.checkpoint.Checkpoint, got {type(checkpoint).__name__}; "
            "load it with medseg.checkpoint.load_checkpoint(name_or_path)"
        )
    # cheap checks before building anything
    fmt = resolve_format(path, format)
    _check_opset(opset)
    if fmt == "onnx":
        check_onnx_available()
    check_output_path(path, overwrite=overwrite)

    model = checkpoint.build_model("cpu")
    rule = input_size_rule(model)
    if example_shape is None:
        shape: Sequence[int] = _default_example_shape(checkpoint, model, rule)
    else:
        shape = example_shape
        channels = shape[1] if isinstance(shape, (tuple, list)) and len(shape) > 1 else None
        if channels is not None and channels != checkpoint.in_channels:
            raise ValueError(
                f"example_shape must have in_channels={checkpoint.in_channels} channels "
                f"(C * num_slices), got {tuple(shape)}"
            )
    return export_module(
        model,
        path,
        example_shape=shape,
        format=fmt,
        metadata=export_metadata(checkpoint),
        overwrite=overwrite,
        opset=opset,
    )


__all__ = [
    "EXPORT_FORMAT",
    "FORMATS",
    "SUFFIXES",
    "TOLERANCES",
    "ExportResult",
    "SizeRule",
    "capture_program",
    "check_onnx_available",
    "export_metadata",
    "export_model",
    "export_module",
    "input_size_rule",
    "read_export_metadata",
    "resolve_format",
    "run_exported",
]
