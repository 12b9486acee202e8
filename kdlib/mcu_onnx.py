"""The book's int8 ONNX file for integer-only inference, and reading it into a `kdlib.mcu.QModel`.

    quantize_onnx_int8(fp32_file, int8_file, calibration=X)   # int8 weights and activations (QDQ)
    model = read_int8_onnx(int8_file)                         # the integers, scales and zero points

`kdlib.export.quantize_onnx` makes uint8 activations by default (the fast pairing on x86); the
integer-only runtimes of microcontrollers (TFLite Micro, CMSIS-NN) take int8 activations, so
`quantize_onnx_int8` asks it for those, and `read_int8_onnx` reads the QuantizeLinear /
DequantizeLinear pairs back into integer layers.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .mcu import QLayer, QModel
from .validation import check_path


def quantize_onnx_int8(src, dst, *, calibration, overwrite: bool = False) -> Path:
    """Quantize an fp32 ONNX file to int8 for integer-only inference: int8 activations
    (asymmetric, min/max calibration) and symmetric per-channel int8 weights for every
    Conv and Gemm, int32 biases, in ONNX Runtime's QDQ format.

    Args:
        src: the fp32 `.onnx` file (`kdlib.export.to_onnx`).
        dst: the `.onnx` file to write (its folder must exist).
        calibration: (N, C, H, W) real inputs (a few hundred training images).
        overwrite: replace an existing `dst`.
    Returns:
        the path written.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    from .export import quantize_onnx

    return quantize_onnx(src, dst, calibration=calibration, mode="static", activation_type="int8",
                         overwrite=overwrite)


def read_int8_onnx(path) -> QModel:
    """Read an int8 QDQ ONNX file of the book's student family into a `QModel`.

    The family: Conv (3x3 or any odd kernel, stride 1, 'same' zero padding) with its ReLU
    and an optional 2x2 max-pool, repeated, then a flatten and one Gemm, every one between
    QuantizeLinear / DequantizeLinear pairs with int8 activations (`quantize_onnx_int8`).

    Raises:
        ValueError: an operator or a quantization this integer engine does not run.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    import onnx

    path = check_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; make it with quantize_onnx_int8")
    try:
        graph = onnx.load(str(path)).graph
    except Exception as err:
        raise ValueError(f"{path} is not an ONNX file ({type(err).__name__})") from None
    return _OnnxReader(graph).model()


class _OnnxReader:
    """Walks a QDQ graph from its input to its output, collecting the integer layers."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def fail(self, what: str):
        raise ValueError(f"not an int8 model of the student family: {what}. read_int8_onnx takes the output of "
                         "kdlib.mcu_onnx.quantize_onnx_int8 for Conv(+ReLU)(+MaxPool 2x2) blocks, a flatten and a Gemm")

    def only_consumer(self, name: str):
        users = self.consumers.get(name, [])
        if len(users) != 1:
            self.fail(f"tensor {name!r} feeds {len(users)} nodes, expected one")
        return users[0]

    def qparams(self, node) -> tuple[np.float32, int]:
        scale, zp = self.init.get(node.input[1]), self.init.get(node.input[2]) if len(node.input) > 2 else None
        if scale is None or scale.size != 1 or zp is None or zp.dtype != np.int8:
            self.fail(f"{node.op_type} {node.name!r} must have a constant scale and an int8 zero point")
        return np.float32(scale.item()), int(zp.item())

    def dequantized(self, name: str, dtype):
        """The integer constant, scale (C,) and zero point behind a DequantizeLinear output."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in self.init:
            self.fail(f"{name!r} is not a quantized constant")
        q, scale = self.init[node.input[0]], self.init[node.input[1]]
        zp = self.init.get(node.input[2]) if len(node.input) > 2 else None
        if q.dtype != dtype or (zp is not None and np.any(zp != 0)):
            self.fail(f"{name!r} must be {np.dtype(dtype).name} with zero point 0, got {q.dtype.name}")
        return q, np.atleast_1d(scale).astype(np.float32)

    def next_quantize(self, name: str):
        """Follow `name` through an optional Relu to its QuantizeLinear; (q node, relu?)."""
        node, relu = self.only_consumer(name), False
        if node.op_type == "Relu":
            node, relu = self.only_consumer(node.output[0]), True
        if node.op_type != "QuantizeLinear":
            self.fail(f"{name!r} goes to {node.op_type}, expected a QuantizeLinear")
        return node, relu

    def model(self) -> QModel:
        graph = self.graph
        dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:]
        if len(dims) != 3 or min(dims) < 1:
            self.fail(f"the input must be (N, C, H, W) with fixed C, H, W, got {dims}")
        q = self.only_consumer(graph.input[0].name)
        if q.op_type != "QuantizeLinear":
            self.fail("the input is not quantized first")
        in_scale, in_zp = self.qparams(q)
        layers, scale, zp = [], in_scale, in_zp
        while True:
            dq = self.only_consumer(q.output[0])
            if dq.op_type != "DequantizeLinear" or self.qparams(dq) != (scale, zp):
                self.fail(f"{q.name!r} is not followed by its DequantizeLinear")
            if dq.output[0] in {o.name for o in graph.output}:
                break
            op = self.only_consumer(dq.output[0])
            if op.op_type in ("Conv", "Gemm"):
                q, relu = self.next_quantize(op.output[0])
                out_scale, out_zp = self.qparams(q)
                layers.append(self.layer(op, scale, zp, out_scale, out_zp, relu))
                scale, zp = out_scale, out_zp
            elif op.op_type in ("MaxPool", "Reshape", "Flatten"):
                q, _ = self.next_quantize(op.output[0])
                if self.qparams(q) != (scale, zp):
                    self.fail(f"{op.op_type} {op.name!r} changes the quantization")
                if op.op_type == "MaxPool":
                    self.add_pool(layers, op)
            else:
                self.fail(f"operator {op.op_type} ({op.name!r}) is not supported")
        if not layers or layers[-1].kind != "linear" or any(l.kind == "linear" for l in layers[:-1]):
            self.fail("the network must end in exactly one Gemm")
        return QModel(tuple(dims), in_scale, in_zp, tuple(layers))

    def layer(self, op, scale, zp, out_scale, out_zp, relu) -> QLayer:
        from onnx import helper

        attrs = {a.name: helper.get_attribute_value(a) for a in op.attribute}
        w, w_scale = self.dequantized(op.input[1], np.int8)
        if len(op.input) < 3 or not op.input[2]:
            self.fail(f"{op.name!r} has no bias")
        b, _ = self.dequantized(op.input[2], np.int32)
        if op.op_type == "Gemm":
            if attrs.get("transB", 0) != 1 or attrs.get("transA", 0) != 0 or attrs.get("alpha", 1.0) != 1.0:
                self.fail(f"Gemm {op.name!r} must compute x W^T + b")
            kind, pad = "linear", 0
        else:
            kh, kw = w.shape[2:]
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            if (list(attrs.get("strides", [1, 1])) != [1, 1] or attrs.get("group", 1) != 1 or kh != kw
                    or kh % 2 == 0 or pads != [kh // 2] * 4):
                self.fail(f"Conv {op.name!r} must have stride 1, one group and 'same' padding")
            kind, pad = "conv", kh // 2
        if w_scale.size == 1:
            w_scale = np.repeat(w_scale, w.shape[0])
        k = int(np.prod(w.shape[1:]))
        if k * 255 * 128 + int(np.abs(b).max()) >= 2**31:
            self.fail(f"{op.name!r} sums {k} products, which could overflow an int32 accumulator")
        return QLayer(kind, w, b.astype(np.int32), w_scale, scale, zp, out_scale, out_zp, pad=pad, relu=relu)

    def add_pool(self, layers: list, op) -> None:
        from onnx import helper

        attrs = {a.name: helper.get_attribute_value(a) for a in op.attribute}
        if (not layers or layers[-1].kind != "conv" or layers[-1].pool or list(attrs.get("kernel_shape", [])) != [2, 2]
                or list(attrs.get("strides", [])) != [2, 2] or any(attrs.get("pads", [0])) or attrs.get("ceil_mode", 0)):
            self.fail(f"MaxPool {op.name!r} must be 2x2, stride 2, right after a Conv")
        layers[-1] = replace(layers[-1], pool=2)
