"""Checks for the exercises of notebooks/01_edge_budgets.ipynb."""
from __future__ import annotations

import math

from . import not_a_function, register

# (num_params, bits, bytes)
_BYTES_CASES = [(9122, 32, 36488), (9122, 8, 9122), (3, 4, 2), (870826, 8, 870826), (5, 1, 1), (0, 32, 0),
                (7, 3, 3)]


@register("01.1")
def weight_bytes(fn) -> str | None:
    """fn(num_params, bits) -> bytes, rounded up to whole bytes."""
    if problem := not_a_function(fn, "weight_bytes"):
        return problem
    for n, bits, expected in _BYTES_CASES:
        got = fn(n, bits)
        if got is None:
            return "weight_bytes returned None: did you forget `return`?"
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return f"weight_bytes({n}, {bits}) should be a number of bytes, got {type(got).__name__}"
        if got != expected:
            hint = " Round up: a partly used byte still takes a whole byte." if n * bits % 8 else ""
            return f"weight_bytes({n}, {bits}) returned {got}, expected {expected}.{hint}"
    return None


def _student_weight_bytes(width: int) -> int:
    from ..measure import count_params
    from ..models import StudentCNN

    return 4 * count_params(StudentCNN(width=width))


@register("01.2")
def widest_student(answer) -> str | None:
    """The largest StudentCNN width whose fp32 weights fit in 128 KiB (131,072 bytes)."""
    budget = 128 * 1024
    if isinstance(answer, bool) or not isinstance(answer, int):
        return f"widest should be an integer width, got {type(answer).__name__}"
    if answer < 1:
        return f"a width must be at least 1, got {answer}"
    if answer > 64:  # never build a huge model: width 64 is already far over the budget
        return f"width {answer} is far too wide: even width 64 needs {_student_weight_bytes(64):,} bytes"
    size = _student_weight_bytes(answer)
    if size > budget:
        return f"StudentCNN(width={answer}) needs {size:,} bytes of fp32 weights, more than {budget:,}"
    bigger = _student_weight_bytes(answer + 1)
    if bigger <= budget:
        return f"width {answer} fits, but so does width {answer + 1} ({bigger:,} bytes): look for the largest"
    return None


@register("01.3")
def max_fps(fn) -> str | None:
    """fn(macs, clock_hz, macs_per_cycle) -> inferences per second."""
    if problem := not_a_function(fn, "max_fps"):
        return problem
    for macs, clock, per_cycle in [(290_080, 64e6, 1.0), (19_094_528, 216e6, 2.0), (1e6, 1e6, 0.5)]:
        got = fn(macs, clock, per_cycle)
        if got is None:
            return "max_fps returned None: did you forget `return`?"
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return f"max_fps should return a number, got {type(got).__name__}"
        expected = clock * per_cycle / macs
        if not math.isclose(got, expected, rel_tol=1e-6):
            return (f"max_fps({macs:,}, {clock:g}, {per_cycle}) returned {got:.4g}, expected {expected:.4g}: "
                    "one inference takes macs / macs_per_cycle cycles")
    return None
