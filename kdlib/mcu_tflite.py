"""The industry's route to a microcontroller: an int8 LiteRT (TFLite) file, run by TFLite Micro.

    path = to_tflite_int8(model, x1, calibration, folder / "student_int8.tflite")   # litert-torch
    interpreter = tflm_interpreter(path)              # the TFLite Micro kernels (tflite-micro package)
    Yq = run_tflm(interpreter, Xq)                    # (N, K) int8
    arena = tflm_arena(interpreter)                   # the bytes TFLM's arena planner used
    model = read_tflite(path)                         # the same integers as a kdlib.mcu.QModel

The conversion quantizes in PyTorch with litert-torch's PT2E quantizer (symmetric per-channel
int8 weights, int8 activations calibrated with a histogram observer), then lowers to a
`.tflite` flatbuffer with int8 input and output. The packages are an optional extra:
`pip install "kdlib[mcu]"` (litert-torch, tflite-micro).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from .mcu import QLayer, QModel, _int_array
from .validation import check_model, check_path

EXTRA = 'pip install "kdlib[mcu]"  (litert-torch and tflite-micro)'


def _require(module: str):
    """Import an optional package, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module.split('.')[0]} is not installed: {EXTRA}") from None


@contextlib.contextmanager
def _quiet():
    """Keep the converters' progress lines and TensorFlow's C++ log out of the output."""
    from .quiet import native_stderr_silenced

    with native_stderr_silenced(), contextlib.redirect_stdout(io.StringIO()):
        yield


# --------------------------------------------------------------------------- convert
def to_tflite_int8(model: torch.nn.Module, example_input: torch.Tensor, calibration, path, *,
                   overwrite: bool = False) -> Path:
    """Convert `model` to a fully int8 LiteRT file with litert-torch (PT2E quantization).

    Args:
        model: the fp32 model (captured in eval mode).
        example_input: one example `(1, C, H, W)`: the file takes batches of 1, as a device does.
        calibration: `(N, C, H, W)` real inputs for the activation ranges (a few hundred).
        path: the `.tflite` file to write (its folder must exist).
        overwrite: replace an existing file.
    Returns:
        the path written.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    from .export import as_batch, example_batch
    from .utils import check_new_file, write_file

    with _quiet():   # importing it starts TensorFlow's and absl's logging
        litert_torch = _require("litert_torch")
        pt2e = _require("litert_torch.quantize.pt2e_quantizer")
        quant_config = _require("litert_torch.quantize.quant_config")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    check_model(model)
    x = example_batch(example_input)[:1]
    calib = torch.from_numpy(as_batch(calibration, "calibration"))
    if calib.shape[1:] != x.shape[1:]:
        raise ValueError(f"calibration inputs have shape {tuple(calib.shape[1:])} per example, "
                         f"example_input has {tuple(x.shape[1:])}")
    path = check_new_file(path, ".tflite", overwrite=overwrite)
    quantizer = pt2e.PT2EQuantizer().set_global(pt2e.get_symmetric_quantization_config(is_per_channel=True))
    litert_torch.config.show_progress = False
    with _quiet(), tempfile.TemporaryDirectory(prefix="kdlib-tflite-") as tmp:
        prepared = prepare_pt2e(torch.export.export(model.eval(), (x,)).module(), quantizer)
        with torch.no_grad():
            for i in range(len(calib)):   # the captured graph has a batch of 1
                prepared(calib[i:i + 1])
        converted = convert_pt2e(prepared, fold_quantize=False)
        edge = litert_torch.convert(converted, (x,), quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
        edge.export(str(Path(tmp) / "model.tflite"))
        return write_file(path, (Path(tmp) / "model.tflite").read_bytes())


# --------------------------------------------------------------------------- TFLite Micro
def tflm_interpreter(path, *, arena_size: int | None = None):
    """A TFLite Micro interpreter (the `tflite-micro` package's Python wrapper around the
    TFLM C++ runtime and its reference kernels) for a `.tflite` file.

    Args:
        arena_size: bytes of the tensor arena to give it (default: ten times the file).

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    runtime = _require("tflite_micro.python.tflite_micro.runtime")
    path = check_path(path)
    if not path.is_file() or path.suffix != ".tflite":
        raise FileNotFoundError(f"{path} is not a .tflite file; make one with to_tflite_int8")
    try:
        with _quiet():
            return runtime.Interpreter.from_file(str(path), arena_size=arena_size)
    except RuntimeError as err:
        raise ValueError(f"TFLite Micro cannot run {path.name} with an arena of {arena_size} bytes: "
                         f"{str(err).strip()[:200]}") from None


def run_tflm(interpreter, Xq) -> np.ndarray:
    """Run a TFLM interpreter on int8 inputs Xq (N, C, H, W), one at a time; returns int8 (N, K).

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    if not (callable(getattr(interpreter, "set_input", None)) and callable(getattr(interpreter, "invoke", None))):
        raise TypeError(f"interpreter must come from tflm_interpreter, got {type(interpreter).__name__}")
    Xq = _int_array(Xq, "Xq", dtype=np.int8)
    shape = tuple(interpreter.get_input_details(0)["shape"])
    if tuple(Xq.shape[1:]) != shape[1:]:
        raise ValueError(f"Xq has shape {Xq.shape}; the model takes (N, {', '.join(map(str, shape[1:]))})")
    outputs = []
    for x in Xq:
        interpreter.set_input(x[None], 0)
        interpreter.invoke()
        outputs.append(interpreter.get_output(0)[0].copy())
    return np.stack(outputs)


def tflm_arena(interpreter) -> dict:
    """Bytes of TFLM's tensor arena in use after an inference, from its recording allocator:
    {"total", "head" (the planned activation buffers), "tail" (persistent structures)}.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    saved, held = os.dup(2), tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)            # the allocator prints from C++ to file descriptor 2
    try:
        interpreter.print_allocations()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    held.seek(0)
    text = held.read().decode("utf-8", "replace")
    found = dict(re.findall(r"Arena allocation (total|head|tail) (\d+) bytes", text))
    if set(found) != {"total", "head", "tail"}:
        raise RuntimeError(f"TFLite Micro did not report its arena (run an inference first): {text[:200]!r}")
    return {k: int(v) for k, v in found.items()}


# --------------------------------------------------------------------------- the file as integers
def read_tflite(path) -> QModel:
    """Read an int8 `.tflite` file of the student family into a `kdlib.mcu.QModel`, so that
    kdlib's engine and C code run the very integers TFLite Micro runs.

    The family as litert-torch writes it: a RESHAPE or TRANSPOSE from NCHW to NHWC, CONV_2D
    (or DEPTHWISE_CONV_2D of a one-channel input), each with a fused ReLU and an optional
    MAX_POOL_2D, a TRANSPOSE back to NCHW, a RESHAPE (the flatten) and a FULLY_CONNECTED.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    runtime = _require("tflite_micro.python.tflite_micro.runtime")
    path = check_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; make it with to_tflite_int8")
    return _TfliteReader(runtime, path.read_bytes()).model()


class _TfliteReader:
    """Walks the operators of a TFLite flatbuffer, collecting integer layers in NCHW order."""

    def __init__(self, runtime, data: bytes):
        self.schema = _require("tflite_micro.tensorflow.lite.micro.python.schema_py_generated")
        try:
            self.fb = runtime.convert_bytearray_to_object(bytearray(data))
        except Exception as err:
            raise ValueError(f"not a TFLite flatbuffer ({type(err).__name__})") from None
        self.graph = self.fb.subgraphs[0]
        codes = {v: k for k, v in vars(self.schema.BuiltinOperator).items() if not k.startswith("_")}
        self.ops = [(codes[runtime.get_builtin_code_from_operator_code(self.fb.operatorCodes[op.opcodeIndex])], op)
                    for op in self.graph.operators]

    def fail(self, what: str):
        raise ValueError(f"not an int8 TFLite model of the student family: {what}")

    def tensor(self, i: int):
        return self.graph.tensors[i]

    def qparams(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        q = self.tensor(i).quantization
        if q is None or q.scale is None:
            self.fail(f"tensor {i} is not quantized")
        return np.asarray(q.scale, np.float32), np.asarray(q.zeroPoint, np.int64)

    def constant(self, i: int, dtype) -> np.ndarray:
        t = self.tensor(i)
        data = self.fb.buffers[t.buffer].data
        if data is None:
            self.fail(f"tensor {i} is not a constant")
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype=dtype).reshape(t.shape)

    def activation(self, i: int) -> tuple[np.float32, int]:
        scale, zp = self.qparams(i)
        if self.tensor(i).type != self.schema.TensorType.INT8 or scale.size != 1:
            self.fail(f"activation {i} must be int8 with one scale")
        return np.float32(scale[0]), int(zp[0])

    def model(self) -> QModel:
        shape = list(self.tensor(self.graph.inputs[0]).shape)
        if len(shape) != 4 or shape[0] != 1:
            self.fail(f"the input must be (1, C, H, W), got {shape}")
        in_scale, in_zp = self.activation(self.graph.inputs[0])
        layers, nhwc = [], False
        for name, op in self.ops:
            if name in ("RESHAPE", "TRANSPOSE"):
                nhwc = self.layout(name, op, nhwc)
            elif name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                layers.append(self.conv(name, op))
            elif name == "MAX_POOL_2D":
                self.pool(op, layers)
            elif name == "FULLY_CONNECTED":
                if nhwc:
                    self.fail("the flatten must come after a transpose back to (C, H, W)")
                layers.append(self.linear(op))
            else:
                self.fail(f"operator {name} is not supported")
        if not layers or layers[-1].kind != "linear":
            self.fail("the network must end in a FULLY_CONNECTED layer")
        return QModel(tuple(shape[1:]), in_scale, in_zp, tuple(layers))

    def layout(self, name: str, op, nhwc: bool) -> bool:
        """Follow NCHW <-> NHWC moves (and the flatten); return whether the data is now NHWC."""
        src, dst = list(self.tensor(op.inputs[0]).shape), list(self.tensor(op.outputs[0]).shape)
        if name == "TRANSPOSE":
            perm = self.constant(op.inputs[1], np.int32).tolist()
            if perm not in ([0, 2, 3, 1], [0, 3, 1, 2]):
                self.fail(f"a TRANSPOSE with permutation {perm}")
            return perm == [0, 2, 3, 1]
        if len(src) == 4 and len(dst) == 4 and src[1] == 1 and dst == [src[0], src[2], src[3], 1]:
            return True   # (N, 1, H, W) -> (N, H, W, 1): the same bytes
        if len(dst) == 2 and not nhwc:
            return False  # the flatten, in (C, H, W) order
        self.fail(f"a RESHAPE from {src} to {dst}")

    def _relu(self, op) -> bool:
        act = op.builtinOptions.fusedActivationFunction
        if act not in (self.schema.ActivationFunctionType.NONE, self.schema.ActivationFunctionType.RELU):
            self.fail(f"fused activation {act} (only none or ReLU)")
        return act == self.schema.ActivationFunctionType.RELU

    def _layer(self, kind: str, op, weight: np.ndarray, pad: int) -> QLayer:
        w_scale, w_zp = self.qparams(op.inputs[1])
        if np.any(w_zp != 0) or len(op.inputs) < 3 or op.inputs[2] < 0:
            self.fail("weights must be symmetric (zero point 0) and every layer must have a bias")
        in_scale, in_zp = self.activation(op.inputs[0])
        out_scale, out_zp = self.activation(op.outputs[0])
        if w_scale.size == 1:
            w_scale = np.repeat(w_scale, weight.shape[0])
        bias = self.constant(op.inputs[2], np.int32).astype(np.int32)
        return QLayer(kind, np.ascontiguousarray(weight), bias, w_scale, in_scale, in_zp, out_scale, out_zp,
                      pad=pad, relu=self._relu(op))

    def conv(self, name: str, op) -> QLayer:
        options = op.builtinOptions
        w = self.constant(op.inputs[1], np.int8)                       # (O, kh, kw, I) or (1, kh, kw, O)
        if name == "DEPTHWISE_CONV_2D":
            if self.tensor(op.inputs[0]).shape[3] != 1:
                self.fail("a depthwise convolution of more than one input channel")
            weight = w[0].transpose(2, 0, 1)[:, None]                   # (O, 1, kh, kw)
        else:
            weight = w.transpose(0, 3, 1, 2)                            # (O, I, kh, kw)
        k = weight.shape[2]
        if (options.strideH, options.strideW) != (1, 1) or options.padding != self.schema.Padding.SAME or k % 2 == 0:
            self.fail("convolutions must have stride 1, SAME padding and an odd kernel")
        return self._layer("conv", op, weight, k // 2)

    def pool(self, op, layers: list) -> None:
        from dataclasses import replace

        o = op.builtinOptions
        if (not layers or layers[-1].kind != "conv" or layers[-1].pool or (o.filterHeight, o.filterWidth) != (2, 2)
                or (o.strideH, o.strideW) != (2, 2) or o.padding != self.schema.Padding.VALID
                or self.activation(op.inputs[0]) != self.activation(op.outputs[0])):
            self.fail("MAX_POOL_2D must be 2x2, stride 2, right after a convolution, without requantizing")
        layers[-1] = replace(layers[-1], pool=2)

    def linear(self, op) -> QLayer:
        return self._layer("linear", op, self.constant(op.inputs[1], np.int8), 0)
