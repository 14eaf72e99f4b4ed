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
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.checkpoint import Checkpoint
from medseg.io import atomic_output, check_output_path
from medseg.typing import PathLike

FORMATS = ("torchscript", "onnx")
SUFFIXES: dict[str, str] = {
    ".pt": "torchscript",
    ".ts": "torchscript",
    ".torchscript": "torchscript",
    ".onnx": "onnx",
}
TOLERANCES: dict[str, float] = {"torchscript": 1e-5, "onnx": 1e-4}
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
METADATA_FILE = "medseg.json"  # the TorchScript extra file
EXPORT_FORMAT = "medseg-export"
EXPORT_FORMAT_VERSION = 1
VERIFY_SEED = 0  # seed of the random verification inputs
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
DEFAULT_SIZE = 64  # default example size (voxels per axis) when a checkpoint gives none
# Checkpoint extras that only resume training (large, not JSON): never embedded.
_RESUME_ONLY = frozenset({"optimizer", "scheduler", "rng"})
# How far past a size to look for the next size a model accepts.
_SIZE_SEARCH_LIMIT = 4096
# Loggers that warn on every export about things that do not concern medseg models:
# "torchvision is not installed" and "Attribute type is ambiguous ... empty sequence".
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration", "onnx_ir._convenience")
# torch 2.13 deprecates torch.jit (script, save, load still work): not the user's concern here.
_JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"
_ASSERT_TARGETS = (
    "aten._assert_scalar",
    "aten._assert_async",
    "aten._assert_tensor_metadata",
    "aten.sym_constrain_range",
    "aten.sym_constrain_range_for_size",
)


# --------------------------------------------------------------------------------------
# Sizes


@dataclass(frozen=True)
class SizeRule:
    """The spatial sizes (voxels, one axis) a model accepts: ``minimum + step * k``, k >= 0.

    Attributes:
        minimum: Smallest accepted size.
        step: Distance between accepted sizes (the model's ``divisor``).

    Example:
        >>> rule = SizeRule(minimum=8, step=8)
        >>> rule.accepts(40), rule.accepts(44), rule.next_size(41)
        (True, False, 48)
    """

    minimum: int
    step: int

    def accepts(self, size: int) -> bool:
        """True if ``size`` is ``minimum + step * k`` for some ``k >= 0``."""
        return size >= self.minimum and (size - self.minimum) % self.step == 0

    def next_size(self, size: int) -> int:
        """The smallest accepted size >= ``size``."""
        k = max(0, math.ceil((size - self.minimum) / self.step))
        return self.minimum + self.step * k

    def describe(self) -> str:
        """The rule in words, e.g. ``"a multiple of 8 (>= 8)"``."""
        if self.minimum % self.step == 0:
            if self.step == 1:
                return f"any size >= {self.minimum}"
            return f"a multiple of {self.step} (>= {self.minimum})"
        return f"{self.minimum} + {self.step} * k (k >= 0)"


def input_size_rule(model: nn.Module) -> SizeRule:
    """The spatial input sizes ``model`` accepts on every axis.

    Same-padding models accept multiples of ``model.divisor`` of at least ``min_size``
    (class attributes, defaults 1). Valid-padding models (``model.padding == "valid"``,
    like :class:`medseg.models.unet.UNet`) accept the sizes for which
    ``model.output_shape`` does not raise, which are ``divisor`` apart.

    Raises:
        ValueError: for a bad ``divisor``, or a valid-padding model without
            ``output_shape`` or whose accepted sizes are not evenly spaced.

    Example:
        >>> from medseg.models import create_model
        >>> input_size_rule(create_model("segnet", in_channels=1, num_classes=2))
        SizeRule(minimum=8, step=8)
        >>> net = create_model("unet", in_channels=1, num_classes=2, depth=2, padding="valid")
        >>> input_size_rule(net)
        SizeRule(minimum=44, step=4)
    """
    divisor = getattr(model, "divisor", 1)
    if isinstance(divisor, bool) or not isinstance(divisor, (int, np.integer)) or divisor < 1:
        raise ValueError(f"model.divisor must be an int >= 1, got {divisor!r}")
    step = int(divisor)
    if getattr(model, "padding", "same") != "valid":
        min_size = max(1, int(getattr(model, "min_size", 1)))
        return SizeRule(minimum=math.ceil(min_size / step) * step, step=step)

    output_shape = getattr(model, "output_shape", None)
    if output_shape is None:
        raise ValueError(
            f"a valid-padding model must have output_shape(), got {type(model).__name__} "
            "without it; add one so that its input sizes are known"
        )
    dims = int(getattr(model, "spatial_dims", 2))

    def ok(size: int) -> bool:
        try:
            output_shape((size,) * dims)
        except ValueError:
            return False
        return True

    minimum = next((s for s in range(1, _SIZE_SEARCH_LIMIT + 1) if ok(s)), None)
    if minimum is None:
        raise ValueError(
            f"a valid-padding model must accept some input size <= {_SIZE_SEARCH_LIMIT}, "
            f"got {type(model).__name__} accepting none"
        )
    rule = SizeRule(minimum=minimum, step=step)
    sizes = range(minimum, minimum + 3 * step + 1)
    if any(ok(s) != rule.accepts(s) for s in sizes):
        raise ValueError(
            f"the input sizes of {type(model).__name__} must be {rule.describe()}, got "
            f"{[s for s in sizes if ok(s)]} accepted; its divisor does not space them"
        )
    return rule


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
# Checks


def resolve_format(path: PathLike, format: str | None = None) -> str:
    """The export format: ``format`` if given, else the one ``path``'s suffix names.

    Suffixes: ``.pt``, ``.ts``, ``.torchscript`` -> ``"torchscript"``; ``.onnx`` ->
    ``"onnx"``.

    Raises:
        ValueError: for an unknown format, or an unknown suffix with ``format`` None.

    Example:
        >>> resolve_format("brain.onnx"), resolve_format("brain.bin", "torchscript")
        ('onnx', 'torchscript')
    """
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"output suffix must be one of {sorted(SUFFIXES)} to choose the format, got "
            f"{suffix or 'none'!r} ({str(path)!r}); rename it or pass --format (format=) "
            f"{' or '.join(FORMATS)}"
        )
    return SUFFIXES[suffix]


def check_onnx_available(packages: Sequence[str] = ONNX_PACKAGES) -> None:
    """Raise ValueError naming the first missing ONNX package and the fix.

    Args:
        packages: The packages needed: all of ``ONNX_PACKAGES`` to export, ``onnxruntime``
            to run a file, ``onnx`` to read its metadata.

    Raises:
        ValueError: if one of ``packages`` is not installed (one line, with the fix).
    """
    for package in packages:
        if importlib.util.find_spec(package) is None:
            raise ValueError(
                f"ONNX export must have the {package!r} package, got it missing; "
                "pip install 'medseg[export]'"
            )


def _check_opset(opset: object) -> int | None:
    if opset is None:
        return None
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 7:
        raise ValueError(f"opset must be None or an int >= 7, got {opset!r}")
    return opset


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError(
            "model must be in eval mode (dropout and batch norm frozen), got training mode; "
            "call model.eval() first"
        )
    devices = {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()}
    if devices - {"cpu"}:
        raise ValueError(f"model must be on the CPU, got {sorted(devices)}; call model.cpu()")
    return model


def _check_example_shape(
    example_shape: object, model: nn.Module, rule: SizeRule
) -> tuple[int, ...]:
    """``(N, C, *spatial)`` with N >= 2, C = in_channels and accepted sizes >= 2."""
    dims = int(getattr(model, "spatial_dims", 2))
    if (
        not isinstance(example_shape, (tuple, list))
        or len(example_shape) != dims + 2
        or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in example_shape
        )
    ):
        axes = ", ".join("zyx"[3 - dims :].upper())
        raise ValueError(
            f"example_shape must be (N, C, {axes}) ints for a model with spatial_dims={dims}, "
            f"got {example_shape!r}"
        )
    shape = tuple(int(s) for s in example_shape)
    if shape[0] < 2:
        raise ValueError(
            f"example_shape must have a batch size >= 2 (a batch of 1 would be frozen into "
            f"the graph), got {shape}; use {(2, *shape[1:])}"
        )
    in_channels = getattr(model, "in_channels", None)
    if in_channels is not None and shape[1] != int(in_channels):
        raise ValueError(f"example_shape must have in_channels={in_channels} channels, got {shape}")
    bad = [s for s in shape[2:] if s < 2 or not rule.accepts(s)]
    if bad:
        fixed = tuple(rule.next_size(max(s, 2)) for s in shape[2:])
        raise ValueError(
            f"example_shape spatial sizes must be {rule.describe()} and >= 2, got "
            f"{shape[2:]}; use {fixed}"
        )
    return shape


# --------------------------------------------------------------------------------------
# Capture and conversion


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' chatter (it is not ours to print)."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TorchScript type system.*")
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def capture_program(model: nn.Module, example_shape: Sequence[int]) -> torch.export.ExportedProgram:
    """Capture ``model.forward`` with dynamic batch and spatial sizes.

    The capture is TorchDynamo's (``torch.export.export(strict=True)``); see the module
    docstring for why. The result feeds :func:`export_module` (one capture serves both
    formats).

    Args:
        model: A CPU model in eval mode.
        example_shape: ``(N, C, *spatial)`` of the example input: N >= 2 and sizes >= 2
            that the model accepts (a size of 1 would be frozen into the graph).

    Returns:
        The exported program; its input is float32 ``(N, C, *spatial)``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: for a model in training mode or off the CPU, a bad ``example_shape``,
            or a model that torch.export cannot capture with dynamic sizes.
    """
    model = _check_model(model)
    shape = _check_example_shape(example_shape, model, input_size_rule(model))
    example = torch.randn(shape, generator=torch.Generator().manual_seed(VERIFY_SEED))
    dynamic = {axis: torch.export.Dim.DYNAMIC for axis in (0, *range(2, len(shape)))}
    try:
        with _quiet_exporter(), torch.no_grad():
            return torch.export.export(model, (example,), dynamic_shapes=(dynamic,), strict=True)
    except Exception as err:  # torch.export raises many types
        msg = " ".join(str(err).split())[:300]
        raise ValueError(
            f"model {type(model).__name__} must be exportable by torch.export with dynamic "
            f"batch and spatial sizes, got {type(err).__name__}: {msg}"
        ) from err


class _CheckedGraph(nn.Module):
    """The TorchScript entry point: checks ``image`` as the eager model does, then runs."""

    def __init__(
        self, graph: nn.Module, *, name: str, ndim: int, in_channels: int, rule: SizeRule
    ) -> None:
        super().__init__()
        self.graph = graph
        self.name = name
        self.ndim = ndim
        self.in_channels = in_channels
        self.minimum = rule.minimum
        self.step = rule.step

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != self.ndim:
            raise ValueError(
                f"input of {self.name} must have {self.ndim} dimensions (N, C, *spatial), "
                f"got shape {image.shape}"
            )
        if image.size(1) != self.in_channels:
            raise ValueError(
                f"input of {self.name} must have {self.in_channels} channels, got shape "
                f"{image.shape}"
            )
        for size in image.shape[2:]:
            if size < self.minimum or (size - self.minimum) % self.step != 0:
                raise ValueError(
                    f"spatial sizes of the {self.name} input must be {self.minimum} + "
                    f"{self.step} * k (k >= 0), got shape {image.shape}; pad the input"
                )
        return self.graph(image)


def _scriptable_graph(program: torch.export.ExportedProgram) -> torch.fx.GraphModule:
    """The program as an FX graph that ``torch.jit.script`` compiles.

    Drops the guards and assertion nodes (the input check of :class:`_CheckedGraph`
    replaces them), the pytree calling convention, and ATen overloads (``aten.conv2d.default``
    -> ``aten.conv2d``: TorchScript picks the overload by schema); ``aten.sym_size.int``
    becomes ``Tensor.size``.
    """
    unlifted = program.module()
    graph = unlifted.graph
    for node in list(graph.nodes):
        is_guard = node.op == "call_module" and node.target == "_guards_fn"
        is_assert = node.op == "call_function" and (
            str(node.target).startswith(_ASSERT_TARGETS) or node.target is torch._check
        )
        if is_guard or is_assert:
            graph.erase_node(node)
    graph._codegen = torch.fx.graph.CodeGen()  # plain positional calling convention
    for node in graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.sym_size.int:
            node.op, node.target = "call_method", "size"
        elif node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            node.target = node.target.overloadpacket
        elif node.op == "output":
            out = node.args[0]
            if isinstance(out, (tuple, list)) and len(out) == 1:
                node.args = (out[0],)  # one tensor, not a 1-tuple
    graph.eliminate_dead_code()
    graph.lint()
    return torch.fx.GraphModule(unlifted, graph)


def _to_torchscript(
    program: torch.export.ExportedProgram, *, name: str, in_channels: int, rule: SizeRule
) -> torch.jit.ScriptModule:
    ndim = len(_input_fake_shape(program))
    wrapper = _CheckedGraph(
        _scriptable_graph(program), name=name, ndim=ndim, in_channels=in_channels, rule=rule
    )
    try:
        with _quiet_exporter():
            return torch.jit.script(wrapper)
    except Exception as err:  # the TorchScript frontend raises many types
        msg = " ".join(str(err).split())[:300]
        raise ValueError(
            f"model {name} must compile to TorchScript from its captured graph, got "
            f"{type(err).__name__}: {msg}; export to ONNX instead"
        ) from err


def _input_fake_shape(program: torch.export.ExportedProgram) -> list[Any]:
    """The symbolic shape of the program's user input (ints and SymInts)."""
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    return list(node.meta["val"].shape)


def _dim_names(program: torch.export.ExportedProgram) -> dict[str, str]:
    """Symbol of each dynamic input axis -> readable name (``s6`` -> ``batch``)."""
    shape = _input_fake_shape(program)
    names = ["batch", "channels", *"zyx"[3 - (len(shape) - 2) :]]
    return {str(s): n for s, n in zip(shape, names, strict=True) if not isinstance(s, int)}


def _to_onnx(program: torch.export.ExportedProgram, *, name: str, opset: int | None) -> Any:
    """The ONNX ``ModelProto`` of ``program``: input ``image``, output ``logits``."""
    try:
        with _quiet_exporter():
            onnx_program = torch.onnx.export(
                program,
                (),
                None,
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many types
        msg = " ".join(str(err).split())[:300]
        raise ValueError(
            f"model {name} must be exportable to ONNX, got {type(err).__name__}: {msg}"
        ) from err
    assert onnx_program is not None  # dynamo=True always returns the program
    proto = onnx_program.model_proto
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and got != opset:
        raise ValueError(
            f"opset must be one the exporter can produce, got {opset} (it made {got}); "
            "use opset >= 18"
        )
    # readable dimension names: s6 -> batch, s37 -> y, '8*((s37//8))' -> '8*((y//8))'
    rename = _dim_names(program)
    if rename:
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, rename)) + r")\b")
        infos = [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]
        for info in infos:
            for dim in info.type.tensor_type.shape.dim:
                if dim.dim_param:
                    dim.dim_param = pattern.sub(lambda m: rename[m.group(1)], dim.dim_param)
    return proto


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
    num_slices = int(checkpoint.patch.get("num_slices", 1))
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
            f"slices taken along patch.slice_axis ({checkpoint.patch.get('slice_axis')!r})"
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
    size: Any = checkpoint.patch.get("size", DEFAULT_SIZE)
    sizes = [int(s) for s in size] if isinstance(size, (list, tuple)) else [int(size)] * dims
    if len(sizes) != dims:
        sizes = [max(sizes)] * dims
    if checkpoint.patch.get("num_slices", 1) > 1 and len(sizes) == 3:
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
