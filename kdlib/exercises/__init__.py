"""Automatic checks for the book's exercises: friendly feedback, never a crash.

    from kdlib.exercises import check
    check("02.1", my_answer)   # prints feedback, returns True or False

Each chapter's checks live in `kdlib/exercises/chNN.py` and are registered with
`@register("NN.k")`. A check function takes the reader's answer and returns
None when it is right, or a string saying what is wrong.

Introduced in: notebooks/01_edge_budgets.ipynb
"""
from __future__ import annotations

import importlib
import pkgutil
import traceback
from typing import Callable

CHECKS: dict[str, Callable] = {}


def register(exercise_id: str):
    """Decorator: register `fn(answer) -> None | str` as the check of `exercise_id`."""
    def wrap(fn):
        if exercise_id in CHECKS:
            raise ValueError(f"exercise {exercise_id!r} has two checks")
        CHECKS[exercise_id] = fn
        return fn
    return wrap


def not_a_function(fn, name: str) -> str | None:
    """The feedback when the reader passed something other than their function `name` (a value
    it returned, a model, a class), else None."""
    import torch

    if not callable(fn) or isinstance(fn, (type, torch.nn.Module)):
        return f"pass your function {name} itself (got a {type(fn).__name__})"
    return None


def _load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("ch"):
            importlib.import_module(f"{__name__}.{mod.name}")


def run_check(exercise_id: str, answer) -> str | None:
    """Run a check quietly: None when the answer is right, else the feedback."""
    _load_all()
    if exercise_id not in CHECKS:
        raise KeyError(f"no check for exercise {exercise_id!r}; known: {', '.join(sorted(CHECKS))}")
    if answer is None or answer is Ellipsis:
        return "no answer yet: replace the `...` with your code and run the cell again"
    try:
        return CHECKS[exercise_id](answer)
    except Exception as err:  # the reader's code raised: show where, kindly
        frame = traceback.extract_tb(err.__traceback__)[-1]
        return f"your code raised {type(err).__name__}: {err} (line {frame.lineno}: {frame.line})"


def check(exercise_id: str, answer) -> bool:
    """Check the reader's `answer` to exercise `exercise_id`; print feedback.

    Returns:
        True when the answer passes.
    """
    problem = run_check(exercise_id, answer)
    if problem is None:
        print(f"Exercise {exercise_id}: correct. Well done!")
        return True
    print(f"Exercise {exercise_id}: not yet. {problem}")
    return False
