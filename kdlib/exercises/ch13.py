"""Checks for the exercises of notebooks/13_capstone.ipynb."""
from __future__ import annotations

import random

from . import not_a_function, register

_ROWS = [
    {"stage": "teacher", "bytes": 3_493_327, "accuracy": 0.987, "median_us": 2300.0},
    {"stage": "student", "bytes": 41_465, "accuracy": 0.980, "median_us": 150.0},
    {"stage": "pruned", "bytes": 31_417, "accuracy": 0.979, "median_us": 120.0},
    {"stage": "onnx fp32", "bytes": 36_663, "accuracy": 0.979, "median_us": 20.0},
    {"stage": "onnx int8", "bytes": 18_919, "accuracy": 0.975, "median_us": 30.0},
    {"stage": "tiny", "bytes": 4_000, "accuracy": 0.940, "median_us": 10.0},
]


def _reference_front(points):
    front = []
    for i, (x, y) in enumerate(points):
        if not any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return front


@register("13.1")
def ratios(fn) -> str | None:
    """fn(teacher_row, edge_row) -> (size_ratio, latency_ratio)."""
    if problem := not_a_function(fn, "ratios"):
        return problem
    got = fn(_ROWS[0], _ROWS[4])
    if got is None:
        return "your function returned None: did you forget `return`?"
    if not isinstance(got, tuple) or len(got) != 2:
        return f"return a pair (size_ratio, latency_ratio), got {got!r}"
    size, lat = got
    if abs(size - 3_493_327 / 18_919) > 1e-6:
        if abs(size - 18_919 / 3_493_327) < 1e-6:
            return "the size ratio is upside down: teacher bytes divided by edge bytes, so bigger is better"
        return f"size_ratio should be {3_493_327 / 18_919:.2f}, got {size}"
    if abs(lat - 2300.0 / 30.0) > 1e-6:
        return f"latency_ratio should be teacher latency / edge latency = {2300 / 30:.2f}, got {lat}"
    return None


@register("13.2")
def pareto(fn) -> str | None:
    """fn(points) -> sorted indices of the points on the Pareto front (smaller x, larger y)."""
    if problem := not_a_function(fn, "my_pareto_front"):
        return problem
    rng = random.Random(0)
    cases = [[(1, 0.9), (10, 0.95), (100, 0.99), (50, 0.94)], [(5, 0.5)], [(1, 0.5), (1, 0.5)]]
    cases += [[(rng.randint(1, 20), rng.randint(0, 10) / 10) for _ in range(8)] for _ in range(20)]
    for pts in cases:
        got = fn(pts)
        if got is None:
            return "your function returned None: did you forget `return`?"
        expected = _reference_front(pts)
        if sorted(got) != expected:
            return (f"for points {pts} the front is {expected}, you returned {sorted(got)}. A point is on the "
                    "front unless another point is at least as small AND at least as accurate, and strictly "
                    "better in one of the two.")
    return None


@register("13.3")
def choose(fn) -> str | None:
    """fn(rows, max_drop_points) -> the stage name of the smallest file within max_drop_points of the teacher."""
    if problem := not_a_function(fn, "choose"):
        return problem
    for drop, expected in ((1.5, "onnx int8"), (1.0, "pruned"), (0.5, "teacher"), (5.0, "tiny"), (0.0, "teacher")):
        got = fn(_ROWS, drop)
        if got is None:
            return "your function returned None: did you forget `return`?"
        if got != expected:
            return (f"with max_drop_points={drop} the answer is {expected!r}, you returned {got!r}: among the "
                    "rows whose accuracy is at least the teacher's minus max_drop_points/100, take the one "
                    "with the fewest bytes.")
    return None
