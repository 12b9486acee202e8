"""Integer-only inference of an int8 model, from scratch in NumPy (Jacob et al. 2018).

A real value x is stored as an 8-bit integer q with a scale s and a zero point z,
x = s (q - z). A layer y = W x + b then needs only integers (Jacob et al. 2018, eq. 4-7):

    acc[c] = sum_k (q_x[k] - z_x) * q_W[c, k] + q_b[c]       int8 x int8 products, int32 sums
    q_y[c] = clamp(round(M[c] * acc[c]) + z_y, -128, 127)     requantization
    M[c]   = s_x * s_W[c] / s_y                               one real multiplier per channel

Weights are symmetric (z_W = 0) and per output channel; the bias is stored as int32 with
scale s_x * s_W[c], so it adds straight into the accumulator. A ReLU is the clamp at z_y
when z_y = -128 (the real value 0), and max-pooling commutes with the (monotone)
requantization, so it works on the int8 values directly.

Three ways to compute round(M * acc), all here (`requant=`):

    "float"     ONNX Runtime's x86 kernels (MLAS): float32(acc) * float32(M), rounded half to even.
    "fixed"     the same integers without floating point: M = m / 2^s with float32's 24-bit
                mantissa m, and the roundings float32 makes done in integers. Bit-exact with
                "float", so with ONNX Runtime; the default, and what the C code does.
    "gemmlowp"  what microcontroller runtimes do (TFLite Micro, CMSIS-NN): M = M0 * 2^(e - 31)
                with an int32 M0 in [2^30, 2^31), a rounding doubling high multiply, then a
                rounding right shift (gemmlowp). Rounding twice moves a result by one when
                M * acc lies within 2^-(r+1) of a half (r: the right shift).

The model comes from the book's int8 ONNX file through `kdlib.mcu_onnx.read_int8_onnx` (or
from a LiteRT file, `kdlib.mcu_tflite`); `run_int8` runs it; the C code generator
(`kdlib.mcu_c`) writes the same arithmetic in C for a Cortex-M.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .validation import check_choice, check_int, check_number

QMIN, QMAX = -128, 127          # int8
REQUANT = ("fixed", "float", "gemmlowp")  # three ways to round M * acc (see the module docstring)
INT32_MIN, INT32_MAX = -2**31, 2**31 - 1


# --------------------------------------------------------------------------- the model
@dataclass(frozen=True, eq=False)
class QLayer:
    """One integer layer: a 2-D convolution (with an optional 2x2 max-pool after it) or a
    fully connected layer, int8 in and int8 out.

    weight: int8, (C_out, C_in, kh, kw) for "conv", (C_out, C_in) for "linear".
    bias: int32 (C_out,), in units of in_scale * w_scale[c].
    w_scale: float32 (C_out,), the per-channel weight scales (zero points are 0).
    in_scale, in_zp / out_scale, out_zp: the activations' scales (float32) and zero points.
    pad: zero padding of a convolution (in real zeros, i.e. the value in_zp); pool: 0 or 2.
    relu: clamp the output at out_zp (the real 0) as well as at -128.
    """

    kind: str
    weight: np.ndarray
    bias: np.ndarray
    w_scale: np.ndarray
    in_scale: np.float32
    in_zp: int
    out_scale: np.float32
    out_zp: int
    pad: int = 0
    pool: int = 0
    relu: bool = False

    @property
    def float_multiplier(self) -> np.ndarray:
        """M[c] as ONNX Runtime computes it: float32 (s_x * s_W[c]) / s_y. (C_out,)"""
        return (np.float32(self.in_scale) * self.w_scale.astype(np.float32)) / np.float32(self.out_scale)

    @property
    def real_multiplier(self) -> np.ndarray:
        """M[c] in float64, as TFLite computes it before making it fixed-point. (C_out,)"""
        return float(self.in_scale) * self.w_scale.astype(np.float64) / float(self.out_scale)

    @property
    def float32_multiplier(self) -> tuple[np.ndarray, np.ndarray]:
        """(m, shift) per channel: float_multiplier[c] = m[c] / 2^shift[c] exactly, m < 2^24."""
        pairs = [float32_multiplier(m) for m in self.float_multiplier]
        return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)

    @property
    def fixed_multiplier(self) -> tuple[np.ndarray, np.ndarray]:
        """(M0, e) per channel (TFLite's): real_multiplier[c] ~= M0[c] * 2^(e[c] - 31), M0 < 2^31."""
        pairs = [quantize_multiplier(m) for m in self.real_multiplier]
        return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)

    @property
    def lowest(self) -> int:
        """The smallest output integer: the real 0 after a ReLU, else -128."""
        return max(QMIN, self.out_zp) if self.relu else QMIN


@dataclass(frozen=True, eq=False)
class QModel:
    """An int8 network: quantize the input with (input_scale, input_zp), run `layers` in
    order (a flatten, in C, H, W order, sits before the first "linear"), dequantize the
    output with the last layer's (out_scale, out_zp).
    """

    input_shape: tuple[int, int, int]
    input_scale: np.float32
    input_zp: int
    layers: tuple[QLayer, ...]

    @property
    def num_classes(self) -> int:
        return int(self.layers[-1].weight.shape[0])

    @property
    def weight_bytes(self) -> int:
        """Bytes of the int8 weights and int32 biases."""
        return sum(layer.weight.size + 4 * layer.bias.size for layer in self.layers)

    def shapes(self) -> list[tuple[int, ...]]:
        """The activation shape (per example) before the first layer and after each one."""
        shape, out = self.input_shape, [self.input_shape]
        for layer in self.layers:
            if layer.kind == "conv":
                c, h, w = shape
                h, w = h + 2 * layer.pad - layer.weight.shape[2] + 1, w + 2 * layer.pad - layer.weight.shape[3] + 1
                shape = (layer.weight.shape[0], h // 2, w // 2) if layer.pool else (layer.weight.shape[0], h, w)
            else:
                shape = (layer.weight.shape[0],)
            out.append(shape)
        return out


# --------------------------------------------------------------------------- rounding
def round_half_even(x: np.ndarray) -> np.ndarray:
    """Round floats to the nearest integer, ties to the even one (IEEE's default, `np.rint`)."""
    return np.rint(x)


def shift_round_half_even(x, shift) -> np.ndarray:
    """x / 2^shift rounded to the nearest integer, ties to even, in integers (int64 x, shift >= 0).

    The floor (an arithmetic right shift) and the remainder decide: above half rounds up, exactly
    half rounds up only when the floor is odd. Works for negative x too.
    """
    x, shift = np.asarray(x, np.int64), np.asarray(shift, np.int64)
    floor = x >> shift
    remainder = x - (floor << shift)
    half = np.where(shift > 0, np.int64(1) << np.maximum(shift - 1, 0), 1)  # never reached when shift = 0
    up = (shift > 0) & ((remainder > half) | ((remainder == half) & (floor & 1 == 1)))
    return floor + up


def bit_length(x) -> np.ndarray:
    """Number of bits of |x| (int64 array), like Python's int.bit_length: 0 -> 0, 1 -> 1, 255 -> 8."""
    a = np.abs(np.asarray(x, np.int64))
    n = np.frexp(a.astype(np.float64))[1].astype(np.int64)   # float64 may round a 54+-bit |x| up ...
    too_big = (n > 0) & ((a >> np.maximum(n - 1, 0)) == 0)    # ... across a power of two: correct it
    return n - too_big


def round_to_float32(x) -> np.ndarray:
    """Round integers (int64) to 24 significant bits, ties to even: the integer a float32 holds."""
    x = np.asarray(x, np.int64)
    if x.size and np.abs(x).max() < 2**24:   # every value already fits in 24 bits
        return x
    drop = np.maximum(bit_length(x) - 24, 0)
    return shift_round_half_even(x, drop) << drop


def quantize_input(X, scale, zero_point: int) -> np.ndarray:
    """q = clamp(round(x / s) + z, -128, 127), as ONNX Runtime's QuantizeLinear computes it
    (a float32 division, round half to even).

    Args:
        X: float array, any shape, e.g. (N, C, H, W).
    Returns:
        int8 array of X's shape.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    X = _float_array(X, "X")
    scale = np.float32(check_number(float(scale), "scale", low=0, low_open=True))
    zero_point = check_int(int(zero_point), "zero_point", low=QMIN, high=QMAX)
    q = np.clip(X / scale, np.float32(QMIN - zero_point), np.float32(QMAX - zero_point))
    return (round_half_even(q) + zero_point).astype(np.int8)


def dequantize(q, scale, zero_point: int) -> np.ndarray:
    """x = s (q - z) in float32 (ONNX Runtime's DequantizeLinear).

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    q = _int_array(q, "q")
    return (q.astype(np.int32) - int(zero_point)).astype(np.float32) * np.float32(scale)


def float32_multiplier(real) -> tuple[int, int]:
    """The float32 number nearest `real` > 0, as an integer mantissa and a shift: M = m / 2^shift
    with m in [2^23, 2^24). This is the multiplier ONNX Runtime uses, written in integers.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    real = np.float32(check_number(float(real), "real multiplier", low=2.0**-100, high=2.0**20))
    mantissa, exponent = np.frexp(real)                    # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    return int(mantissa * 2**24), int(24 - exponent)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Split a real multiplier M > 0 into an int32 M0 in [2^30, 2^31) and an exponent e
    with M ~= M0 * 2^(e - 31) (TFLite's QuantizeMultiplier: frexp, then round).

    Returns:
        (M0, e): M0 an int, e the power of two (negative e: a right shift by -e).

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    real = check_number(real, "real multiplier", low=0, low_open=True)
    mantissa, exponent = math.frexp(real)          # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = int(round(mantissa * 2**31))              # half-way cases cannot occur for a double mantissa
    if m0 == 2**31:                                # the mantissa rounded up to 1.0
        m0, exponent = m0 // 2, exponent + 1
    if exponent < -31:                             # too small to matter: TFLite flushes it to 0
        return 0, 0
    return m0, exponent


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul: a * b / 2^31 rounded to the nearest integer
    (ties upward: it equals (a * b + 2^30) >> 31) for int32 a, b; the one overflowing case
    (-2^31 * -2^31) saturates to 2^31 - 1.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    total = a * b + np.where(a * b >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(total >= 0, total >> 31, -((-total) >> 31))   # C's division truncates toward zero
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    x, exponent = np.asarray(x, np.int64), np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + ((x & mask) > threshold)


def multiply_by_quantized_multiplier(acc, m0, exponent) -> np.ndarray:
    """round(acc * M0 * 2^(exponent - 31)) in integers, as TFLite (Micro) and CMSIS-NN do it:
    a left shift for exponent > 0, the doubling high multiply (a first rounding), then a
    rounding right shift (a second one).

    Args:
        acc: int32 accumulators, any shape (broadcast against m0, exponent).
        m0, exponent: from `quantize_multiplier` (scalars or per channel).
    Returns:
        int64 array of acc's shape.
    """
    exponent = np.asarray(exponent, np.int64)
    left, right = np.maximum(exponent, 0), np.maximum(-exponent, 0)
    shifted = np.clip(np.asarray(acc, np.int64) << left, INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, m0), right)


def multiply_like_float32(acc, m, shift) -> np.ndarray:
    """round_half_even(float32(float32(acc) * M)) for M = m / 2^shift, in integers only.

    Three roundings, each the one float32 arithmetic makes: acc to 24 significant bits (exact
    below 2^24), the product acc * m to 24 significant bits, then to an integer.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    product = round_to_float32(round_to_float32(acc) * np.asarray(m, np.int64))
    shift = np.asarray(shift, np.int64)
    return np.where(shift >= 0, shift_round_half_even(product, np.maximum(shift, 0)),
                    product << np.maximum(-shift, 0))


def requantize(acc, layer: QLayer, requant: str = "fixed") -> np.ndarray:
    """int32 accumulators (N, C_out, ...) to the layer's int8 outputs: clamp(round(M acc) + z).

    "float": float32(acc) * float32(M[c]), rounded half to even (ONNX Runtime's
    MlasRequantizeOutput). "fixed": the same numbers in integers only (`multiply_like_float32`).
    "gemmlowp": TFLite Micro's and CMSIS-NN's `multiply_by_quantized_multiplier`.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    check_choice(requant, "requant", REQUANT)
    acc = np.asarray(acc)
    per_channel = (-1,) + (1,) * (acc.ndim - 2)      # broadcast (C_out,) along axis 1
    if requant == "float":
        f = acc.astype(np.float32) * layer.float_multiplier.reshape(per_channel)
        f = np.clip(f, np.float32(layer.lowest - layer.out_zp), np.float32(QMAX - layer.out_zp))
        return (round_half_even(f) + layer.out_zp).astype(np.int8)
    if requant == "fixed":
        m, shift = (a.reshape(per_channel) for a in layer.float32_multiplier)
        scaled = multiply_like_float32(acc, m, shift)
    else:
        m0, exponent = (a.reshape(per_channel) for a in layer.fixed_multiplier)
        scaled = multiply_by_quantized_multiplier(acc, m0, exponent)
    return np.clip(scaled + layer.out_zp, layer.lowest, QMAX).astype(np.int8)


# --------------------------------------------------------------------------- the layers
def conv_accumulate(xq: np.ndarray, layer: QLayer) -> np.ndarray:
    """int32 accumulators of an int8 convolution (stride 1): sum (q_x - z_x) q_W + q_b.

    The border is padded with z_x (the real value 0), so padded taps add nothing.

    Args:
        xq: int8 (N, C_in, H, W).
    Returns:
        int32 (N, C_out, H', W').

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    c_out, c_in, kh, kw = layer.weight.shape
    p = layer.pad
    x = np.pad(xq.astype(np.int32) - layer.in_zp, ((0, 0), (0, 0), (p, p), (p, p)))   # (N, C_in, H+2p, W+2p)
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))      # (N, C_in, H', W', kh, kw)
    n, _, h, w = windows.shape[:4]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c_in * kh * kw)     # (N H' W', C_in kh kw)
    acc = cols @ layer.weight.reshape(c_out, -1).T.astype(np.int32) + layer.bias      # (N H' W', C_out)
    return acc.reshape(n, h, w, c_out).transpose(0, 3, 1, 2)


def max_pool(q: np.ndarray, size: int = 2) -> np.ndarray:
    """Max over non-overlapping size x size windows of (N, C, H, W); odd edges are dropped."""
    n, c, h, w = q.shape
    h, w = h // size, w // size
    return q[:, :, :h * size, :w * size].reshape(n, c, h, size, w, size).max(axis=(3, 5))


def linear_accumulate(xq: np.ndarray, layer: QLayer) -> np.ndarray:
    """int32 accumulators of an int8 fully connected layer. xq: int8 (N, C_in) -> (N, C_out)."""
    return (xq.astype(np.int32) - layer.in_zp) @ layer.weight.T.astype(np.int32) + layer.bias


def run_layer(xq: np.ndarray, layer: QLayer, requant: str = "fixed") -> np.ndarray:
    """One int8 layer: accumulate, requantize (with the ReLU clamp), then max-pool if asked.
    """
    if layer.kind == "linear":
        return requantize(linear_accumulate(xq.reshape(len(xq), -1), layer), layer, requant)
    out = requantize(conv_accumulate(xq, layer), layer, requant)
    return max_pool(out, layer.pool) if layer.pool else out


def run_int8(model: QModel, Xq, *, requant: str = "fixed", trace: bool = False):
    """Run an int8 model on int8 inputs, integers only.

    Args:
        model: a `QModel` (see `kdlib.mcu_onnx.read_int8_onnx`).
        Xq: int8 (N, C, H, W), the quantized inputs (see `quantize_input`).
        requant: "fixed" (integers, ONNX Runtime's results), "float" (ONNX Runtime's float32
            arithmetic) or "gemmlowp" (TFLite Micro's and CMSIS-NN's integer rounding).
        trace: also return every layer's int8 output.
    Returns:
        int8 logits (N, K), or (logits, [outputs of each layer]) with trace=True.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    _check_model(model)
    check_choice(requant, "requant", REQUANT)
    Xq = _int_array(Xq, "Xq", dtype=np.int8)
    if Xq.ndim != 4 or tuple(Xq.shape[1:]) != tuple(model.input_shape):
        raise ValueError(f"Xq must have shape (N, {', '.join(map(str, model.input_shape))}), got {Xq.shape}")
    outputs, x = [], Xq
    for layer in model.layers:
        x = run_layer(x, layer, requant)
        outputs.append(x)
    return (x, outputs) if trace else x


def predict_int8(model: QModel, X, *, requant: str = "fixed") -> np.ndarray:
    """Float logits (N, K) of float inputs X (N, C, H, W): quantize, run in integers, dequantize.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    _check_model(model)
    Xq = quantize_input(X, model.input_scale, model.input_zp)
    last = model.layers[-1]
    return dequantize(run_int8(model, Xq, requant=requant), last.out_scale, last.out_zp)


def _double_rounding_tie(acc: int, m0: int, exponent: int) -> bool:
    """True when gemmlowp's first rounding (of acc * M0 to a multiple of 2^31) lands exactly on
    a half-way point of its second one (the right shift): a double-rounding case."""
    right = max(-exponent, 0)
    if right == 0:
        return False
    product = min(max(acc << max(exponent, 0), INT32_MIN), INT32_MAX) * m0
    denominator = 1 << (31 + right)
    return abs(product % denominator - denominator // 2) <= 1 << 30


def requant_differences(model: QModel, Xq, a: str = "fixed", b: str = "gemmlowp") -> list[dict]:
    """Where two requantizations disagree, layer by layer, on the same int32 accumulators.

    The network runs with `a`; at every layer the same accumulators are requantized with `b`
    too and compared.

    Returns:
        one dict per layer: "values" (outputs requantized), "differ" (how many of them the two
        roundings put on different integers), "max_step" (largest |q_a - q_b|) and, when one of
        the two is "gemmlowp", "double_rounding" (how many of the differences are cases where
        gemmlowp's first rounding landed exactly half-way: see `_double_rounding_tie`).

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    _check_model(model)
    check_choice(a, "a", REQUANT)
    check_choice(b, "b", REQUANT)
    x, rows = _int_array(Xq, "Xq", dtype=np.int8), []
    for layer in model.layers:
        acc = (conv_accumulate(x, layer) if layer.kind == "conv"
               else linear_accumulate(x.reshape(len(x), -1), layer))
        qa, qb = requantize(acc, layer, a), requantize(acc, layer, b)
        where = np.argwhere(qa != qb)
        row = {"values": int(qa.size), "differ": len(where),
               "max_step": int(np.abs(qa.astype(int) - qb).max()) if len(where) else 0}
        if "gemmlowp" in (a, b):
            m0, e = layer.fixed_multiplier
            row["double_rounding"] = sum(_double_rounding_tie(int(acc[tuple(i)]), int(m0[i[1]]), int(e[i[1]]))
                                         for i in where)
        rows.append(row)
        x = max_pool(qa, layer.pool) if layer.pool else qa
    return rows


# --------------------------------------------------------------------------- memory plan
def plan_arena(model: QModel) -> dict:
    """A static activation arena for running the layers one after the other.

    While a layer runs, its input and its output must both be in memory; everything before
    can be overwritten. So inputs and outputs alternate between the two ends of one buffer:
    layer i reads at one end and writes at the other, and the arena is the largest
    input + output of any layer (a conv with its max-pool fused writes the pooled output).

    Returns:
        {"arena_bytes": int, "steps": [{"layer": i, "in_offset", "in_bytes", "out_offset",
        "out_bytes"}]}, offsets in bytes from the start of the arena.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    _check_model(model)
    sizes = [int(np.prod(s)) for s in model.shapes()]
    arena = max(a + b for a, b in zip(sizes[:-1], sizes[1:]))
    steps, at_start = [], True
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        in_offset = 0 if at_start else arena - n_in
        out_offset = arena - n_out if at_start else 0
        steps.append({"layer": i, "in_offset": in_offset, "in_bytes": n_in, "out_offset": out_offset,
                      "out_bytes": n_out})
        at_start = not at_start
    return {"arena_bytes": arena, "steps": steps}


# --------------------------------------------------------------------------- checks
def _check_model(model) -> QModel:
    if not isinstance(model, QModel):
        raise TypeError(f"model must be a kdlib.mcu.QModel (see kdlib.mcu_onnx.read_int8_onnx), got {type(model).__name__}")
    return model


def _float_array(X, name: str) -> np.ndarray:
    if hasattr(X, "detach"):  # a torch tensor
        X = X.detach().cpu().numpy()
    if not isinstance(X, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(X).__name__}")
    if not np.issubdtype(X.dtype, np.floating):
        raise TypeError(f"{name} must hold floats, got dtype {X.dtype}")
    if X.size == 0 or not np.isfinite(X).all():
        raise ValueError(f"{name} must be non-empty and finite (no NaN or inf), got shape {X.shape}")
    return X.astype(np.float32, copy=False)


def _int_array(q, name: str, dtype=None) -> np.ndarray:
    if hasattr(q, "detach"):
        q = q.detach().cpu().numpy()
    if not isinstance(q, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array of integers, got {type(q).__name__}")
    if not np.issubdtype(q.dtype, np.integer) or (dtype is not None and q.dtype != dtype):
        want = np.dtype(dtype).name if dtype is not None else "an integer dtype"
        raise TypeError(f"{name} must have dtype {want}, got {q.dtype}; quantize floats with quantize_input")
    if q.size == 0:
        raise ValueError(f"{name} is empty, got shape {q.shape}")
    return q
