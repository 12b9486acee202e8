"""Export a trained model for an edge runtime: ONNX / ONNX Runtime and ExecuTorch.

Both routes start from the same graph capture, `torch.export.export`, which
turns a model into a flat graph of ATen operators (no Python left). Then:

    ONNX        to_onnx -> onnx_session / run_onnx, quantize_onnx (int8)
    ExecuTorch  quantize_xnnpack (int8, optional) -> to_executorch -> executorch_method

Every file is written atomically (a temporary file in the same folder,
then a rename), an existing file is replaced only with `overwrite=True`,
and intermediate files live in a temporary folder that is removed.
`check_parity` compares any exported file with the eager model;
`make_runner` builds the zero-argument batch-1 call that
`kdlib.measure.compare_latency` times.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .quiet import held_diagnostics, native_stderr_silenced, quiet_import  # noqa: F401 (re-exported)
from .utils import check_existing_file, check_new_file, eval_mode, write_file
from .validation import (check_bool, check_choice, check_int, check_list, check_model, check_number, check_path,
                         check_tensor)

MAX_BATCH = 4096  # upper bound of the dynamic batch axis of an ONNX export


# ---------------------------------------------------------------- checks
def example_batch(example_input) -> torch.Tensor:
    """`example_input` checked to be one float batch (B, ...), on the CPU, without gradients."""
    if not isinstance(example_input, torch.Tensor):
        raise TypeError("example_input must be a tensor of one batch, e.g. torch.zeros(1, 1, 28, 28), "
                        f"got {type(example_input).__name__}")
    check_tensor(example_input, "example_input", floating=True, finite=False, nonempty=False)
    if example_input.ndim < 1 or example_input.shape[0] < 1:
        raise ValueError("example_input must be a float tensor with a batch axis first, e.g. (1, C, H, W); "
                         f"got shape {tuple(example_input.shape)}")
    return example_input.detach().cpu()


# ---------------------------------------------------------------- capture
def capture(model: nn.Module, example_input: torch.Tensor, *, dynamic_batch: bool = True):
    """Capture `model` (in eval mode) as a `torch.export.ExportedProgram`.

    With `dynamic_batch=True` the first axis of the input is symbolic, so the
    exported graph accepts any batch size from 1 to `MAX_BATCH`. (The trace
    itself runs on two copies of the first example, because torch.export
    treats a batch of 1 as a constant.)

    Args:
        model: the model; its training/eval mode is restored afterwards.
        example_input: one batch `(B, C, H, W)` of the right shape and dtype.
    Returns:
        the ExportedProgram.
    Raises:
        ValueError: the model cannot be captured (Python control flow that
            depends on tensor values, unsupported operations, wrong input shape).

    Introduced in: notebooks/10_edge_export.ipynb
    """
    check_model(model)
    x = example_batch(example_input)
    shapes = None
    if dynamic_batch:
        x = x[:1].expand(2, *x.shape[1:]).contiguous()
        shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    with eval_mode(model):
        # On failure torch.export prints the partial graph to stderr and logs warnings
        # about its symbols; the one clear error below replaces them.
        with held_diagnostics("torch.fx.experimental.symbolic_shapes") as held:
            try:
                return torch.export.export(model, (x,), dynamic_shapes=shapes, strict=False)
            except Exception as err:  # torch.export raises many types; report the first line only
                held.replay = False
                first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
                raise ValueError(
                    f"{type(model).__name__} cannot be exported on an input of shape "
                    f"{tuple(example_input.shape)}: {first.strip()[:300]} ({type(err).__name__}). An exportable "
                    "model runs the same operations for every input: no Python `if` on tensor values, "
                    "no .item()/.numpy(), outputs that are tensors."
                ) from None


# ---------------------------------------------------------------- ONNX
def to_onnx(model: nn.Module, example_input: torch.Tensor, path, *, overwrite: bool = False) -> Path:
    """Export `model` to one self-contained ONNX file with a dynamic batch axis.

    Uses the `torch.export`-based exporter (`dynamo=True`): the TorchScript
    exporter is deprecated and warns on every call. The weights are stored
    inside the file (`external_data=False`), so one file is the whole model.
    BatchNorm is folded into the convolutions by the exporter's optimiser.
    The input is named "input" `(B, C, H, W)`, the output "logits" `(B, K)`.

    Args:
        model: the trained model (exported in eval mode).
        example_input: a batch `(B, C, H, W)` fixing every axis but the first.
        path: the `.onnx` file to write (its folder must exist).
        overwrite: replace an existing file.
    Returns:
        the path written.

    Introduced in: notebooks/10_edge_export.ipynb
    """
    path = check_new_file(path, ".onnx", overwrite=overwrite)
    program = capture(model, example_input, dynamic_batch=True)
    try:
        onnx_program = torch.onnx.export(program, input_names=["input"], output_names=["logits"],
                                         dynamo=True, external_data=False, verbose=False, optimize=True)
    except Exception as err:
        raise ValueError(f"{type(model).__name__} was captured but has an operation ONNX cannot express: "
                         f"{str(err).strip().splitlines()[0][:300]}") from None
    return write_file(path, onnx_program.model_proto.SerializeToString())


def onnx_session(path, threads: int = 1):
    """An `onnxruntime.InferenceSession` on the CPU with a fixed number of threads.

    Introduced in: notebooks/10_edge_export.ipynb
    """
    import onnxruntime as ort

    path = check_existing_file(path, ".onnx")
    check_int(threads, "threads", low=1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ValueError(f"ONNX Runtime cannot load {path}: {str(err).strip()[:300]}") from None


def _fixed_batch(shape) -> int | None:
    """The batch size a runtime input insists on, or None if the axis is dynamic."""
    first = shape[0] if len(shape) else None
    return first if isinstance(first, int) and first > 0 else None


def run_onnx(session, X, *, batch_size: int = 256) -> torch.Tensor:
    """Run an ONNX file (or session) on `X` `(N, C, H, W)`; returns logits `(N, K)`.

    The inputs go through in chunks of `batch_size` (or one by one if the
    file has a fixed batch of 1).

    Introduced in: notebooks/10_edge_export.ipynb
    """
    if isinstance(session, (str, os.PathLike)):
        session = onnx_session(session)
    if not (callable(getattr(session, "run", None)) and callable(getattr(session, "get_inputs", None))):
        raise TypeError("session must be an onnxruntime.InferenceSession (see onnx_session) or an .onnx path, "
                        f"got {type(session).__name__}")
    check_int(batch_size, "batch_size", low=1)
    X = as_batch(X)
    spec = session.get_inputs()[0]
    _check_shape(X, spec.shape)
    step = _fixed_batch(spec.shape) or batch_size
    outs = [session.run(None, {spec.name: X[i:i + step]})[0] for i in range(0, len(X), step)]
    return torch.from_numpy(np.concatenate(outs))


def as_batch(X, name: str = "X") -> np.ndarray:
    """`X` as a float32 NumPy batch, after checking it is one: floats, (N, ...), N > 0, finite."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    if not isinstance(X, np.ndarray):
        raise TypeError(f"{name} must be a tensor or NumPy array (N, C, H, W), got {type(X).__name__}")
    if not np.issubdtype(X.dtype, np.floating):
        raise TypeError(f"{name} must hold floats, got dtype {X.dtype}; convert it with .float()")
    if X.ndim < 1 or len(X) == 0:
        raise ValueError(f"{name} must be a non-empty batch (N, C, H, W), got shape {tuple(X.shape)}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(X, dtype=np.float32)


def _check_shape(X: np.ndarray, expected, name: str = "X") -> None:
    """Check `X` (N, ...) against a runtime's input shape, whose first axis is the batch."""
    want = list(expected)
    if X.ndim != len(want) or any(isinstance(w, int) and w != got for w, got in zip(want[1:], X.shape[1:])):
        per_example = ", ".join(str(w) for w in want[1:])
        raise ValueError(f"{name} has shape {tuple(X.shape)}; the model takes (N, {per_example})")


class _Batches:
    """ONNX Runtime calibration reader: hands out `X` in batches of `batch_size`."""

    def __init__(self, name: str, X: np.ndarray, batch_size: int):
        self.batches = iter([{name: X[i:i + batch_size]} for i in range(0, len(X), batch_size)])

    def get_next(self):
        return next(self.batches, None)

    def rewind(self):  # ONNX Runtime calls it between calibration passes
        raise RuntimeError("calibration data can be read once")


def quantize_onnx(src, dst, *, calibration=None, mode: str = "static", reduce_range: bool = False,
                  keep_first_conv: bool = False, op_types=None, activation_type: str = "uint8",
                  overwrite: bool = False) -> Path:
    """Quantize an fp32 ONNX file to int8 with ONNX Runtime's quantization tools.

    First `quant_pre_process` (shape inference and graph optimisation), then:

    - mode="static": `quantize_static` in QDQ format with per-channel int8
      weights and uint8 activations (the fast pairing on x86 CPUs without
      VNNI); activation ranges come from running `calibration` through the
      model (min/max calibration).
    - mode="dynamic": `quantize_dynamic`: int8 weights, activation ranges
      computed on the fly at every call (no calibration data needed).

    Args:
        src: the fp32 `.onnx` file.
        dst: the `.onnx` file to write.
        calibration: `(N, C, H, W)` real inputs (a few hundred), for mode="static".
        mode: "static" or "dynamic".
        reduce_range: store weights in 7 bits instead of 8. ONNX Runtime
            recommends it for uint8 x int8 models on x86 CPUs without VNNI
            (AVX2, AVX-512 without VNNI): there the int8 dot product adds pairs of
            products into a saturating 16-bit sum, which full-range weights can
            overflow, costing accuracy. Not needed with VNNI or on Arm.
        keep_first_conv: leave the model's first `Conv` in fp32 (its input is quantized after
            it). A first convolution over one or three input channels holds few weights, so
            int8 saves almost no bytes there, and its int8 kernel can be slower than the fp32
            one: chapter 13 measures it. Keeping the first (and last) layer in higher
            precision is common practice.
        op_types: the ONNX operator types to quantize, e.g. `("Gemm", "MatMul")` for the
            fully connected layers alone, which hold most of a small CNN's weights; every
            other layer stays fp32 (mixed precision). None: every type ONNX Runtime can
            quantize. Where int8 kernels are slower than fp32 ones for small convolutions
            (x86 without VNNI), this keeps most of the size saving without the slowdown:
            chapter 13 measures it.
        activation_type: "uint8" (the default: the fast pairing with int8 weights on x86 CPUs)
            or "int8" (what the integer-only runtimes of microcontrollers take, TFLite Micro and
            CMSIS-NN; chapter 11), for mode="static".
        overwrite: replace an existing `dst`.
    Returns:
        the path written.

    Introduced in: notebooks/10_edge_export.ipynb
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_choice(mode, "mode", ("static", "dynamic"))
    check_choice(activation_type, "activation_type", ("uint8", "int8"))
    check_bool(keep_first_conv, "keep_first_conv")
    if op_types is not None:
        op_types = check_list(op_types, "op_types", of=str, hint='ONNX operator names such as ("Gemm", "MatMul")')
        if not all(op_types):
            raise ValueError(f"op_types must be ONNX operator names such as ('Gemm', 'MatMul'), got {op_types!r}")
    src = check_existing_file(src, ".onnx")
    dst = check_new_file(dst, ".onnx", overwrite=overwrite)
    if mode == "static":
        if calibration is None:
            raise ValueError('mode="static" needs calibration data: pass calibration=X with a few hundred '
                             'real inputs (N, C, H, W), or use mode="dynamic"')
        spec = onnx_session(src).get_inputs()[0]
        calib = as_batch(calibration, "calibration")
        if calib.shape[1:] != tuple(spec.shape[1:]):
            raise ValueError(f"calibration inputs have shape {calib.shape[1:]} per example, "
                             f"the model expects {tuple(spec.shape[1:])}")
    with tempfile.TemporaryDirectory(prefix="kdlib-quant-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(pre))
        exclude = _first_conv(pre) if keep_first_conv else []
        if mode == "static":
            reader = _Batches(spec.name, calib, _fixed_batch(spec.shape) or 64)
            quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8 if activation_type == "int8" else QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            reduce_range=reduce_range, nodes_to_exclude=exclude, op_types_to_quantize=op_types)
        else:
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, reduce_range=reduce_range,
                             nodes_to_exclude=exclude, op_types_to_quantize=op_types)
        return write_file(dst, out.read_bytes())


def _first_conv(path) -> list[str]:
    """The name of the first Conv node of an ONNX file, in a list (empty if there is none)."""
    import onnx

    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "Conv":
            return [node.name]
    return []


# ---------------------------------------------------------------- ExecuTorch
def quantize_xnnpack(model: nn.Module, example_input: torch.Tensor, calibration) -> nn.Module:
    """Quantize `model` to int8 for ExecuTorch's XNNPACK back end (PT2E flow).

    `torch.export` captures the model; `prepare_pt2e` with the
    `XNNPACKQuantizer` (symmetric, per-channel int8 weights, int8 activations)
    inserts observers; `calibration` runs through it one example at a time to
    record activation ranges; `convert_pt2e` replaces the observers with
    quantize/dequantize pairs that XNNPACK fuses into int8 kernels.

    Args:
        model: the fp32 model.
        example_input: one example `(1, C, H, W)`.
        calibration: `(N, C, H, W)` real inputs (a few hundred).
    Returns:
        the quantized graph module; it runs in PyTorch (simulating int8) and
        goes to `to_executorch` to be lowered.
    """
    xnnpack_quantizer = quiet_import("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
    XNNPACKQuantizer = xnnpack_quantizer.XNNPACKQuantizer
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    x = example_batch(example_input)[:1]
    calib = torch.from_numpy(as_batch(calibration, "calibration"))
    if calib.shape[1:] != x.shape[1:]:
        raise ValueError(f"calibration inputs have shape {tuple(calib.shape[1:])} per example, "
                         f"example_input has {tuple(x.shape[1:])}")
    class PostTrainingXNNPACKQuantizer(XNNPACKQuantizer):
        # prepare_pt2e folds BatchNorm into the convolutions before annotating, so
        # the QAT-only conv+BN patterns match nothing here; tracing them costs seconds.
        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if not p.is_qat]

    config = xnnpack_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    quantizer = PostTrainingXNNPACKQuantizer().set_global(config)
    prepared = prepare_pt2e(capture(model, x, dynamic_batch=False).module(), quantizer)
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(calib[i:i + 1])
    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)  # so that .eval() works on it like on any model
    return converted


def to_executorch(model: nn.Module, example_input: torch.Tensor, path, *, overwrite: bool = False) -> Path:
    """Lower `model` to an ExecuTorch program (`.pte`) delegated to XNNPACK.

    The batch is fixed to `example_input`'s (use one example, as a device
    would): ExecuTorch plans every buffer ahead of time for that shape.
    `to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`
    hands every supported subgraph to XNNPACK; the rest runs on ExecuTorch's
    portable kernels. Pass a model from `quantize_xnnpack` for int8.

    Args:
        model: fp32 model, or the output of `quantize_xnnpack`.
        example_input: `(1, C, H, W)`.
        path: the `.pte` file to write (its folder must exist).
        overwrite: replace an existing file.
    Returns:
        the path written.

    Introduced in: notebooks/10_edge_export.ipynb
    """
    XnnpackPartitioner = quiet_import("executorch.backends.xnnpack.partition.xnnpack_partitioner").XnnpackPartitioner
    to_edge_transform_and_lower = quiet_import("executorch.exir").to_edge_transform_and_lower

    path = check_new_file(path, ".pte", overwrite=overwrite)
    program = capture(model, example_input, dynamic_batch=False)
    try:
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    except Exception as err:
        raise ValueError(f"{type(model).__name__} was captured but ExecuTorch cannot lower it: "
                         f"{str(err).strip().splitlines()[0][:300]}") from None
    return write_file(path, lowered.buffer)


def executorch_method(path, threads: int = 1):
    """Load a `.pte` file with ExecuTorch's Python runtime; returns its `forward` method.

    `threads` sets the size of the runtime's thread pool (used by XNNPACK).

    Introduced in: notebooks/10_edge_export.ipynb
    """
    path = check_existing_file(path, ".pte")
    check_int(threads, "threads", low=1)
    Runtime = quiet_import("executorch.runtime").Runtime
    pool = quiet_import("executorch.extension.pybindings.portable_lib")
    # The runtime logs its CPU detection and thread-pool size from C++; keep that out of the output.
    with native_stderr_silenced():
        if pool._threadpool_get_thread_count() != threads:
            pool._unsafe_reset_threadpool(threads)  # "unsafe" only while another thread runs a model
        try:
            program = Runtime.get().load_program(path)
            return program.load_method("forward")
        except Exception as err:
            raise ValueError(f"ExecuTorch cannot load {path}: {str(err).strip()[:300]}") from None


def run_executorch(method, X) -> torch.Tensor:
    """Run an ExecuTorch method (or `.pte` path) on `X` `(N, C, H, W)`; returns `(N, K)`.

    A program exported for batch B is fed B examples at a time.
    """
    if isinstance(method, (str, os.PathLike)):
        method = executorch_method(method)
    if not (callable(getattr(method, "execute", None)) and hasattr(method, "metadata")):
        raise TypeError("method must be an ExecuTorch method (see executorch_method) or a .pte path, "
                        f"got {type(method).__name__}")
    X = as_batch(X)
    sizes = list(method.metadata.input_tensor_meta(0).sizes())
    _check_shape(X, sizes)
    X = torch.from_numpy(X)
    step = _fixed_batch(sizes) or len(X)
    if len(X) % step:
        raise ValueError(f"this program takes batches of {step}; got {len(X)} inputs")
    return torch.cat([method.execute((X[i:i + step],))[0] for i in range(0, len(X), step)])


# ---------------------------------------------------------------- any file
def predict(path, X, *, threads: int = 1) -> torch.Tensor:
    """Logits `(N, K)` of an `.onnx` or `.pte` file on `X` `(N, C, H, W)`.

    Introduced in: notebooks/10_edge_export.ipynb
    """
    suffix = Path(path).suffix if isinstance(path, (str, os.PathLike)) else None
    if suffix == ".onnx":
        return run_onnx(onnx_session(path, threads), X)
    if suffix == ".pte":
        return run_executorch(executorch_method(path, threads), X)
    raise ValueError(f"{path!r} is neither an .onnx nor a .pte file")


def check_parity(path, model: nn.Module, inputs: torch.Tensor, *, atol: float = 1e-4) -> float:
    """Largest absolute difference between a file's logits and the eager model's.

    Run on real inputs (not random noise: a bug can hide where the data never go).

    Args:
        path: an `.onnx` or `.pte` file exported from `model`.
        model: the eager PyTorch model.
        inputs: `(N, C, H, W)`.
        atol: the largest difference accepted (fp32 files: 1e-4).
    Returns:
        max |file(inputs) - model(inputs)| over all logits.
    Raises:
        ValueError: the difference is larger than `atol`.

    Introduced in: notebooks/10_edge_export.ipynb
    """
    check_model(model)
    inputs = torch.from_numpy(as_batch(inputs, "inputs"))
    check_number(atol, "atol", low=0.0)
    try:
        with eval_mode(model), torch.no_grad():
            expected = model(inputs)
    except RuntimeError as err:
        raise ValueError(f"{type(model).__name__} cannot run on inputs of shape {tuple(inputs.shape)}: "
                         f"{str(err).strip().splitlines()[0][:200]}") from None
    got = predict(path, inputs)
    if got.shape != expected.shape:
        raise ValueError(f"{Path(path).name} returns shape {tuple(got.shape)}, the model {tuple(expected.shape)}")
    diff = (got - expected).abs().max().item()
    if not diff <= atol:
        raise ValueError(f"{Path(path).name} differs from the eager model by up to {diff:.3g} "
                         f"(> atol={atol:g}): was it exported from this model, in eval mode?")
    return diff


def make_runner(path, example_input: torch.Tensor, *, threads: int = 1) -> Callable[[], object]:
    """A zero-argument function running one inference of a file on `example_input`.

    This is what `kdlib.measure.compare_latency` times: the runtime call alone,
    with the input already in the runtime's format.

    Introduced in: notebooks/10_edge_export.ipynb
    """
    x = example_batch(example_input)
    suffix = Path(path).suffix if isinstance(path, (str, os.PathLike)) else None
    if suffix == ".onnx":
        session = onnx_session(path, threads)
        spec = session.get_inputs()[0]
        feed = {spec.name: as_batch(x, "example_input")}
        _check_shape(feed[spec.name], spec.shape, "example_input")
        return lambda: session.run(None, feed)
    if suffix == ".pte":
        method, args = executorch_method(path, threads), (x,)
        _check_shape(x.numpy(), method.metadata.input_tensor_meta(0).sizes(), "example_input")
        return lambda: method.execute(args)
    raise ValueError(f"{path!r} is neither an .onnx nor a .pte file")


# ---------------------------------------------------------------- all at once
BACKENDS = ("onnx_fp32", "onnx_int8_static", "onnx_int8_dynamic", "executorch_fp32", "executorch_int8")


def export_all(model: nn.Module, example_input: torch.Tensor, folder, name: str, *, calibration,
               backends=BACKENDS, overwrite: bool = False) -> dict[str, Path]:
    """Export `model` to the back ends of the book, in `folder`, checking fp32 parity.

    Files: `<name>.onnx`, `<name>_int8_static.onnx`, `<name>_int8_dynamic.onnx`,
    `<name>.pte` and `<name>_int8.pte` (those of the chosen `backends`). The
    int8 ONNX files need the fp32 one, which is then written too.

    Args:
        model: the trained model.
        example_input: one example `(1, C, H, W)`.
        folder: an existing folder.
        name: the stem of the file names, e.g. "teacher".
        calibration: `(N, C, H, W)` real inputs for the int8 files; the fp32
            files are checked against the model on the first 32 of them.
        backends: which files to make, a subset of `BACKENDS` (default: all).
    Returns:
        back end -> path, in the order of `BACKENDS`.

    Introduced in: notebooks/10_edge_export.ipynb
    """
    folder = check_path(folder, "folder")
    if not isinstance(name, str) or not name or os.sep in name:
        raise ValueError(f"name must be a plain file stem such as 'teacher', got {name!r}")
    unknown = set(backends) - set(BACKENDS)
    if unknown or not backends:
        raise ValueError(f"backends must be a non-empty subset of {BACKENDS}, got {tuple(backends)!r}")
    x = example_batch(example_input)[:1]
    real = torch.from_numpy(as_batch(calibration, "calibration"))[:32]
    paths = {}
    if {"onnx_fp32", "onnx_int8_static", "onnx_int8_dynamic"} & set(backends):
        paths["onnx_fp32"] = to_onnx(model, x, folder / f"{name}.onnx", overwrite=overwrite)
        check_parity(paths["onnx_fp32"], model, real)
    for backend, mode in (("onnx_int8_static", "static"), ("onnx_int8_dynamic", "dynamic")):
        if backend in backends:
            paths[backend] = quantize_onnx(paths["onnx_fp32"], folder / f"{name}_{backend[5:]}.onnx",
                                           calibration=calibration, mode=mode, overwrite=overwrite)
    if "executorch_fp32" in backends:
        paths["executorch_fp32"] = to_executorch(model, x, folder / f"{name}.pte", overwrite=overwrite)
        check_parity(paths["executorch_fp32"], model, real)
    if "executorch_int8" in backends:
        paths["executorch_int8"] = to_executorch(quantize_xnnpack(model, x, calibration),
                                                 x, folder / f"{name}_int8.pte", overwrite=overwrite)
    return paths
