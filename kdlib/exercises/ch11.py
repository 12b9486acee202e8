"""Checks for the exercises of notebooks/11_microcontroller.ipynb."""
from __future__ import annotations

import numbers
import random

import numpy as np

from . import not_a_function, register


def _as_int(value, what: str) -> tuple[int | None, str | None]:
    """An integer answer (Python or NumPy, or a float that is a whole number), or feedback."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, numbers.Real)):
        return None, f"{what} should be an integer, got {type(value).__name__}"
    if isinstance(value, numbers.Real) and not float(value).is_integer():
        return None, f"{what} should be a whole number, got {value!r}"
    return int(value), None


@register("11.1")
def quantize_multiplier(fn) -> str | None:
    """fn(real) -> (M0, e) with M0 in [2^30, 2^31) and real ~= M0 * 2^(e - 31), as TFLite does."""
    from ..mcu import quantize_multiplier as reference

    if problem := not_a_function(fn, "quantize_multiplier"):
        return problem
    rng = random.Random(11)
    for real in [0.5, 0.75, 0.0047, 1.5, 1 - 2**-40] + [10 ** rng.uniform(-6, 0.5) for _ in range(200)]:
        got = fn(real)
        if got is None:
            return "quantize_multiplier returned None: did you forget `return`?"
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return f"quantize_multiplier should return a pair (M0, e), got {got!r:.60}"
        (m0, problem), (e, problem_e) = _as_int(got[0], "M0"), _as_int(got[1], "e")
        if problem or problem_e:
            return problem or problem_e
        want = reference(real)
        if (m0, e) != want:
            if m0 == 2**31:
                return (f"for {real!r} you returned M0 = 2^31, which does not fit an int32: when the mantissa "
                        "rounds up to 1.0, halve M0 and add one to e")
            if not 2**30 <= m0 < 2**31:
                return f"for {real!r} M0 = {m0} is outside [2^30, 2^31): scale frexp's mantissa (in [0.5, 1)) by 2^31"
            return f"for {real!r} you returned {(m0, e)}, expected {want}: real = mantissa * 2^e, M0 = round(mantissa * 2^31)"
    return None


@register("11.2")
def requantize(fn) -> str | None:
    """fn(acc, m0, e, zero_point) -> int8 array: gemmlowp's two roundings, + zero point, clamped."""
    from ..mcu import multiply_by_quantized_multiplier, quantize_multiplier

    if problem := not_a_function(fn, "requantize"):
        return problem
    rng = np.random.default_rng(11)
    for real, zp in [(0.0047, -128), (0.0031, 12), (0.02, 0), (0.3, -5)]:
        m0, e = quantize_multiplier(real)
        acc = np.concatenate([rng.integers(-60_000, 60_000, 2000),
                              (np.arange(-20, 21) + 0.5) / real]).astype(np.int64)   # values near ties too
        got = fn(acc, m0, e, zp)
        if got is None:
            return "requantize returned None: did you forget `return`?"
        got = np.asarray(got)
        if got.shape != acc.shape:
            return f"requantize should return one value per accumulator, shape {acc.shape}, got {got.shape}"
        want = np.clip(multiply_by_quantized_multiplier(acc, m0, e) + zp, -128, 127)
        if not np.array_equal(got.astype(np.int64), want):
            bad = int(np.argmax(got.astype(np.int64) != want))
            exact = acc[bad] * m0 / 2.0 ** (31 - e)
            return (f"with M = {real} and zero point {zp}: acc = {acc[bad]} (acc * M = {exact:.6f}) gave {got[bad]}, "
                    f"expected {want[bad]}. First (acc * M0 + 2^30) >> 31, then divide by 2^{-e} rounding to nearest "
                    f"with ties away from zero, add the zero point, clamp to [-128, 127]")
        if got.dtype != np.int8:
            return f"the values are right; return them as int8 (got dtype {got.dtype})"
    return None


@register("11.3")
def ping_pong(fn) -> str | None:
    """fn(sizes) -> (arena_bytes, [(in_offset, out_offset) per layer]) for activations of `sizes` bytes."""
    if problem := not_a_function(fn, "ping_pong"):
        return problem
    for sizes in ([784, 1568, 784, 10], [100, 10], [5, 300, 40, 7, 2], [64, 64, 64, 64]):
        got = fn(list(sizes))
        if got is None:
            return "ping_pong returned None: did you forget `return`?"
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return f"ping_pong should return (arena_bytes, offsets), got {got!r:.60}"
        arena, offsets = got
        want = max(a + b for a, b in zip(sizes, sizes[1:]))
        if arena != want:
            return (f"for sizes {sizes} the arena should be {want} bytes (the largest input + output of one layer), "
                    f"got {arena}")
        if len(offsets) != len(sizes) - 1:
            return f"for {len(sizes) - 1} layers give {len(sizes) - 1} (in_offset, out_offset) pairs, got {len(offsets)}"
        for i, (pair, n_in, n_out) in enumerate(zip(offsets, sizes, sizes[1:])):
            a, b = pair
            if not (0 <= a and a + n_in <= arena and 0 <= b and b + n_out <= arena):
                return f"for sizes {sizes}, layer {i}'s input or output does not fit inside the arena"
            if a < b + n_out and b < a + n_in:
                return f"for sizes {sizes}, layer {i}'s input [{a}, {a + n_in}) and output [{b}, {b + n_out}) overlap"
            if i and a != offsets[i - 1][1]:
                return f"for sizes {sizes}, layer {i} should read where layer {i - 1} wrote (offset {offsets[i - 1][1]})"
    return None
