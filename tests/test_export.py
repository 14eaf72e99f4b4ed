"""Tests for medseg.export: TorchScript and ONNX files agree with the eager models.

The references are the eager PyTorch models themselves. Every registered model is
captured once (small widths) and exported to both formats; each file is then run on
inputs of three batch sizes and square and unequal spatial shapes and compared here, on
top of the exporter's own check (marked slow: ~90 s of CPU). The shipped brain-tissue
model (U-SegNet: batch norm, max-unpooling with indices, skips) is checked in ONNX on
real IBSR patches, the nuclei model (valid-padding U-Net) in TorchScript at a valid tile
size, and a one-pooling U-Net carries the failure cases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.checkpoint import Checkpoint, load_checkpoint
from medseg.export import (
    TOLERANCES,
    ExportResult,
    capture_program,
    export_model,
    export_module,
    input_size_rule,
    read_export_metadata,
    resolve_format,
    run_exported,
)
from medseg.models import create_model, list_models

# Small but structurally complete configurations; an unlisted model gets its defaults.
SMALL_KWARGS: dict[str, dict] = {
    "unet": {"base_features": 2, "depth": 2},
    "unetpp": {"base_features": 2, "depth": 2, "norm": False},
    "segnet": {"base_features": 2, "norm": False},
    "usegnet": {"base_features": 2},  # with batch norm
    "fcn32s": {"base_features": 2, "fc_channels": 4, "fc_kernel_size": 1},
    "fcn16s": {"base_features": 2, "fc_channels": 4, "fc_kernel_size": 1},
    "fcn8s": {"base_features": 2, "fc_channels": 4, "fc_kernel_size": 1},
    "deeplab": {"base_features": 2, "head_channels": 4, "head": "aspp", "rates": [1, 2]},
}
IN_CHANNELS, NUM_CLASSES = 3, 4
IBSR_T1 = "ibsr18/IBSR_04/IBSR_04_t1.nii.gz"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _eager(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(image)).numpy()


def _assert_agrees(model, path, fmt: str, shapes) -> list[float]:
    """Run the exported file on each shape; compare with the eager model; the diffs."""
    diffs = []
    for seed, shape in enumerate(shapes):
        image = _random(shape, seed)
        ref = _eager(model, image)
        out = run_exported(path, image)
        assert out.shape == ref.shape
        assert out.dtype == np.float32
        tolerance = TOLERANCES[fmt] * max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(out, ref, rtol=0, atol=tolerance)
        diffs.append(float(np.abs(out - ref).max()))
    return diffs


def _shapes(rule, first: int) -> list[tuple[int, ...]]:
    """Three inputs: batch sizes 2, 3 and 1; square, then unequal spatial sizes."""
    a = rule.next_size(first)
    b = rule.next_size(a + 1)
    c = rule.next_size(b + 1)
    return [
        (2, IN_CHANNELS, a, a),
        (3, IN_CHANNELS, b, c),
        (1, IN_CHANNELS, c, a),
    ]


def _build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)  # fixed weights; nothing below depends on their values
    model = create_model(name, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, **kwargs)
    with torch.no_grad():  # FCN's score layers start at zero: make every logit non-trivial
        generator = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module", params=list_models())
def captured(request):
    """(name, model, program, example shape): one capture serves both formats."""
    name = request.param
    model = _build(name, **SMALL_KWARGS.get(name, {}))
    rule = input_size_rule(model)
    shape = _shapes(rule, max(20, rule.minimum + rule.step))[0]
    return name, model, capture_program(model, shape), shape


def _check_every_model(captured, fmt: str, suffix: str, tmp_path) -> None:
    name, model, program, shape = captured
    path = tmp_path / f"{name}{suffix}"
    result = export_module(model, path, example_shape=shape, program=program)
    assert isinstance(result, ExportResult)
    assert result.path == path and path.is_file()
    assert result.format == fmt
    assert result.max_abs_diff <= result.tolerance
    assert len({s[0] for s in result.checked_shapes}) == 2  # two batch sizes
    assert len({s[2:] for s in result.checked_shapes}) == 2  # two spatial shapes
    assert fmt in result.summary() and str(path) in result.summary()
    # independently of the exporter's own check: three batch sizes, square and unequal sizes
    diffs = _assert_agrees(model, path, fmt, _shapes(result.size_rule, shape[2] + 1))
    print(f"{name} {fmt}: max abs diff {max([result.max_abs_diff, *diffs]):.2e}")
    meta = read_export_metadata(path)
    rule = {"minimum": result.size_rule.minimum, "step": result.size_rule.step}
    assert meta["input"]["size_rule"] == rule
    assert meta["export_format"] == fmt
    if fmt == "onnx":
        import onnx

        dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["batch", IN_CHANNELS, "y", "x"]


# The matrix is slow: a capture costs ~3-9 s of CPU per model (torch.export reasons about
# every symbolic size) and an ONNX conversion another ~5 s; ~90 s of CPU for all 16.
@pytest.mark.slow
def test_every_model_torchscript_agrees_with_pytorch(captured, tmp_path):
    _check_every_model(captured, "torchscript", ".pt", tmp_path)


@pytest.mark.slow
def test_every_model_onnx_agrees_with_pytorch(captured, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    _check_every_model(captured, "onnx", ".onnx", tmp_path)


@pytest.fixture(scope="module")
def tiny():
    """A one-pooling U-Net, captured: the cheapest export."""
    model = _build("unet", base_features=2, depth=1)
    return model, capture_program(model, (2, IN_CHANNELS, 8, 10))


def test_disagreement_is_an_error_and_writes_nothing(tiny, tmp_path, monkeypatch):
    model, program = tiny
    monkeypatch.setitem(TOLERANCES, "torchscript", -1.0)  # nothing can agree now
    path = tmp_path / "model.pt"
    with pytest.raises(ValueError, match="must agree with PyTorch.*nothing was written"):
        export_module(model, path, example_shape=(2, IN_CHANNELS, 8, 10), program=program)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_checks_its_input(tiny, tmp_path):
    model, program = tiny
    path = tmp_path / "model.ts"
    export_module(model, path, example_shape=(2, IN_CHANNELS, 8, 10), program=program)
    scripted = torch.jit.load(str(path))
    assert scripted(torch.zeros(1, IN_CHANNELS, 4, 6)).shape == (1, NUM_CLASSES, 4, 6)
    with pytest.raises(torch.jit.Error, match="spatial sizes of the UNet input must be 2 \\+ 2"):
        scripted(torch.zeros(1, IN_CHANNELS, 4, 5))
    with pytest.raises(torch.jit.Error, match="must have 3 channels"):
        scripted(torch.zeros(1, 2, 4, 4))
    with pytest.raises(torch.jit.Error, match="must have 4 dimensions"):
        scripted(torch.zeros(IN_CHANNELS, 4, 4))


def test_builtin_brain_tissue_onnx_on_real_ibsr_patches(shared_data, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from medseg.data import resolve_slice_axis
    from medseg.io import read_image
    from medseg.normalize import normalize_intensity

    t1 = shared_data / IBSR_T1
    if not t1.is_file():
        pytest.skip(f"{t1} is absent")
    checkpoint = load_checkpoint("brain-tissue")
    path = tmp_path / "brain.onnx"
    result = export_model(checkpoint, path)
    assert result.format == "onnx" and result.max_abs_diff <= result.tolerance

    volume = read_image(t1)
    norm = checkpoint.normalization
    image, _ = normalize_intensity(
        volume.array, method=norm["method"], percentiles=tuple(norm["percentiles"])
    )
    axis = resolve_slice_axis(checkpoint.patch["slice_axis"], volume.geometry)
    slices = np.moveaxis(image[0], axis, 0)  # (S, A, B), slices first
    size, half = checkpoint.patch["size"], checkpoint.patch["num_slices"] // 2
    centre = np.array(slices.shape) // 2
    patches = [
        slices[z - half : z + half + 1, a : a + size, b : b + size]  # (3, 40, 40)
        for z in (centre[0] - 10, centre[0], centre[0] + 10)
        for a in (centre[1] - size, centre[1] - size // 2)
        for b in (centre[2] - size, centre[2])
    ]
    batch = np.ascontiguousarray(np.stack(patches), dtype=np.float32)  # (12, 3, 40, 40)
    assert batch.shape == (12, 3, size, size)

    logits = run_exported(path, batch)
    ref = _eager(checkpoint.build_model(), batch)
    tolerance = TOLERANCES["onnx"] * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(logits, ref, rtol=0, atol=tolerance)
    np.testing.assert_array_equal(logits.argmax(1), ref.argmax(1))
    assert len(np.unique(ref.argmax(1))) > 1  # real tissue, not one class everywhere
    print(f"brain-tissue onnx on IBSR_04: max abs diff {np.abs(logits - ref).max():.2e}")

    meta = read_export_metadata(path)
    assert meta["model_name"] == checkpoint.model_name
    assert meta["model_kwargs"] == checkpoint.model_kwargs
    assert meta["num_classes"] == checkpoint.num_classes
    assert {int(k): v for k, v in meta["label_names"].items()} == checkpoint.label_names
    assert meta["normalization"] == checkpoint.normalization
    assert meta["patch"] == checkpoint.patch
    assert meta["inference"] == checkpoint.inference
    assert meta["input"]["shape"] == "(N, 3, Y, X)"
    from medseg import __version__

    assert meta["medseg_version"] == __version__


def test_builtin_nuclei_torchscript_at_a_valid_tile_size(tmp_path):
    from medseg.models.unet import UNet

    checkpoint = load_checkpoint("nuclei")
    model = checkpoint.build_model()
    depth = checkpoint.model_kwargs["depth"]
    tile = UNet.input_size_for(36, depth=depth, padding="valid")  # a valid input tile
    path = tmp_path / "nuclei.pt"
    path.write_bytes(b"old")
    c, k = checkpoint.in_channels, checkpoint.num_classes  # 1 grey channel, 3 classes
    result = export_model(checkpoint, path, overwrite=True, example_shape=(2, c, tile, tile))
    assert result.checked_shapes[0] == (2, c, tile, tile)
    assert result.output_shape == f"(N, {k}, Y', X')"
    assert result.size_rule.accepts(tile)

    image = _random((1, c, tile, tile + 2**depth), seed=3)  # unequal axes, batch 1
    out = run_exported(path, image)
    ref = _eager(model, image)
    assert out.shape == ref.shape == (1, k, *model.output_shape(image.shape[2:]))
    assert ref.shape[2] < tile  # valid padding: a smaller output
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOLERANCES["torchscript"])
    print(f"nuclei torchscript: max abs diff {np.abs(out - ref).max():.2e}")

    meta = read_export_metadata(path)
    assert meta["model_kwargs"] == checkpoint.model_kwargs
    assert {int(k): v for k, v in meta["label_names"].items()} == checkpoint.label_names
    assert meta["postprocess"] == checkpoint.extra["postprocess"]
    assert meta["inference"]["mode"] == "tile"


# --------------------------------------------------------------------------------------
# Errors (all raised before anything is captured)


def test_format_from_suffix():
    assert [resolve_format(f"m{s}") for s in (".pt", ".ts", ".torchscript", ".ONNX")] == [
        "torchscript",
        "torchscript",
        "torchscript",
        "onnx",
    ]
    assert resolve_format("model.bin", "onnx") == "onnx"


@pytest.fixture(scope="module")
def brain() -> Checkpoint:
    return load_checkpoint("brain-tissue")


def test_unknown_suffix_or_format(brain, tmp_path):
    with pytest.raises(ValueError, match=r"output suffix must be one of .*'\.onnx'.*got '\.bin'"):
        export_model(brain, tmp_path / "model.bin")
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(brain, tmp_path / "model.pt", format="tflite")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite_and_is_left_alone(brain, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="must not exist.*overwrite"):
        export_model(brain, path)
    assert path.read_bytes() == b"keep me"
    assert list(tmp_path.iterdir()) == [path]


def test_missing_output_folder(brain, tmp_path):
    with pytest.raises(FileNotFoundError, match="output folder .* must exist"):
        export_model(brain, tmp_path / "nope" / "model.pt")


def test_bad_arguments(brain, tmp_path):
    with pytest.raises(TypeError, match="checkpoint must be a medseg.checkpoint.Checkpoint"):
        export_model("brain-tissue", tmp_path / "model.pt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="opset must be None or an int >= 7, got 'x'"):
        export_model(brain, tmp_path / "model.onnx", opset="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"example_shape must have a batch size >= 2"):
        export_model(brain, tmp_path / "model.pt", example_shape=(1, 3, 40, 40))
    with pytest.raises(ValueError, match=r"spatial sizes must be a multiple of 8.*use \(40, 48\)"):
        export_model(brain, tmp_path / "model.pt", example_shape=(2, 3, 36, 44))
    with pytest.raises(ValueError, match="must have in_channels=3 channels"):
        export_model(brain, tmp_path / "model.pt", example_shape=(2, 1, 40, 40))
    with pytest.raises(ValueError, match=r"example_shape must be \(N, C, Y, X\)"):
        export_model(brain, tmp_path / "model.pt", example_shape=(2, 3, 40))
    model = brain.build_model().train()
    with pytest.raises(ValueError, match="model must be in eval mode"):
        export_module(model, tmp_path / "model.pt", example_shape=(2, 3, 40, 40))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        export_module(object(), tmp_path / "model.pt", example_shape=(2, 3, 40, 40))  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_package_is_one_clear_line(brain, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a),
    )
    with pytest.raises(ValueError, match=r"'onnxruntime'.*pip install 'medseg\[export\]'") as err:
        export_model(brain, tmp_path / "model.onnx")
    assert "\n" not in str(err.value)


def test_run_and_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="must exist"):
        run_exported(tmp_path / "missing.onnx", np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="output suffix must be one of"):
        read_export_metadata(tmp_path / "model.txt")


def test_cli_export_writes_a_checked_file_and_refuses_to_overwrite(tmp_path):
    """`medseg export` on the tiny golden checkpoint: the file runs and matches PyTorch."""
    from pathlib import Path

    from typer.testing import CliRunner

    from medseg.cli import main

    golden = Path(__file__).resolve().parent / "data" / "golden" / "brain_tiny.pt"
    out = tmp_path / "tiny.onnx"

    def cli(*args):
        with CliRunner().isolation() as (stdout, stderr, _):
            code = main([str(a) for a in args])
            return code, stdout.getvalue().decode(), stderr.getvalue().decode()

    code, stdout, err = cli("export", out, "-m", golden)
    assert code == 0, err
    assert "wrote onnx model" in stdout and "max abs diff" in stdout
    ckpt = load_checkpoint(golden)
    net = ckpt.build_model()
    x = np.random.default_rng(0).normal(size=(2, ckpt.in_channels, 16, 24)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_exported(out, x), expected, atol=1e-4)
    before = out.read_bytes()
    code, _, err = cli("export", out, "-m", golden)
    assert code == 1 and "must not exist" in err and "--overwrite" in err
    assert out.read_bytes() == before
    code, _, err = cli("export", tmp_path / "m.xyz", "-m", golden)
    assert code == 1 and "'.xyz'" in err and not (tmp_path / "m.xyz").exists()
