"""Capture and conversion for :mod:`medseg.export`: one capture, then TorchScript or ONNX.

:func:`capture_program` captures a model's forward with dynamic batch and spatial sizes
(TorchDynamo); ``_to_torchscript`` compiles the captured graph behind a scripted input
check (``_CheckedGraph``) and ``_to_onnx`` translates it to an ONNX ``ModelProto`` with
readable dimension names. Why this route, and what the files hold, is in the docstring of
:mod:`medseg.export`, which re-exports :func:`capture_program` under its old import path
(ARCHITECTURE.md section 1).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from medseg._export_checks import (
    INPUT_NAME,
    OUTPUT_NAME,
    VERIFY_SEED,
    SizeRule,
    _check_example_shape,
    _check_model,
    input_size_rule,
)

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
