"""Checks for the exercises of notebooks/10_edge_export.ipynb."""
from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

from . import not_a_function, register


def _instance(answer, name: str):
    """The reader's module: an instance, or an instance built from a class. Returns (module, problem)."""
    if isinstance(answer, type) and issubclass(answer, nn.Module):
        try:
            answer = answer()
        except TypeError as err:
            return None, f"{name}() should need no arguments ({err})"
    if not isinstance(answer, nn.Module):
        return None, f"pass your class {name} (an nn.Module), got a {type(answer).__name__}"
    return answer, None


@register("10.1")
def gate_exportable(answer) -> str | None:
    """answer: an nn.Module class (or instance) computing 2x if x.mean() > 0 else x, exportably."""
    from ..export import capture

    model, problem = _instance(answer, "GateExportable")
    if problem:
        return problem
    torch.manual_seed(0)
    cases = [("a batch with a positive mean", torch.rand(2, 1, 4, 4) + 0.5),
             ("a batch with a negative mean", -torch.rand(3, 1, 4, 4) - 0.5),
             ("one image with a positive mean", torch.rand(1, 1, 4, 4))]
    for what, x in cases:
        want = 2 * x if x.mean() > 0 else x
        with torch.no_grad():
            got = model(x)
        if got is None:
            return "forward returned None: did you forget `return`?"
        if not isinstance(got, torch.Tensor) or got.shape != x.shape:
            return (f"for {what} of shape {tuple(x.shape)} forward should return a tensor of the same shape, "
                    f"got {type(got).__name__}{'' if not isinstance(got, torch.Tensor) else tuple(got.shape)}")
        if not torch.allclose(got, want):
            return (f"for {what} forward should return {'2 * x' if x.mean() > 0 else 'x unchanged'}; "
                    "it does not")
    try:
        capture(model, cases[0][1])
    except ValueError:
        return ("the results are right, but torch.export still refuses the model: replace the Python `if` "
                "by a tensor operation such as torch.where(x.mean() > 0, 2 * x, x)")
    return None


@register("10.2")
def batch_reader(answer) -> str | None:
    """answer: class BatchReader(name, X, batch_size) with get_next() -> {name: batch} or None."""
    if not isinstance(answer, type):
        return f"pass your class BatchReader itself, got a {type(answer).__name__}"
    X = np.arange(7 * 2 * 3 * 3, dtype=np.float64).reshape(7, 2, 3, 3)
    for batch_size in (3, 7, 10):
        reader = answer("input", X, batch_size)
        if not callable(getattr(reader, "get_next", None)):
            return "BatchReader needs a method get_next(self)"
        batches = []
        for _ in range(len(X) + 2):  # never loop forever on a reader that does not stop
            batch = reader.get_next()
            if batch is None:
                break
            if not isinstance(batch, dict) or list(batch) != ["input"]:
                return (f"get_next should return a dict with one key, the input name 'input', "
                        f"got {batch!r:.80}")
            batches.append(batch["input"])
        else:
            return f"with {len(X)} examples and batch_size={batch_size}, get_next never returned None"
        want = -(-len(X) // batch_size)
        if len(batches) != want:
            return (f"with {len(X)} examples and batch_size={batch_size} there should be {want} batches, "
                    f"got {len(batches)}")
        if not all(isinstance(b, np.ndarray) and b.dtype == np.float32 for b in batches):
            return "each batch should be a NumPy array of dtype float32 (use X.astype('float32'))"
        if not np.array_equal(np.concatenate(batches), X.astype(np.float32)):
            return "the batches, put end to end, should give back X in order"
        if reader.get_next() is not None:
            return "once the data are used up, get_next should keep returning None"
    return None


def _arena_reference(model: nn.Sequential, x: torch.Tensor, bytes_per_value: int) -> int:
    largest = 0
    with torch.no_grad():
        for layer in model:
            y = layer(x)
            largest = max(largest, (x.numel() + y.numel()) * bytes_per_value)
            x = y
    return largest


@register("10.3")
def arena_bytes(fn) -> str | None:
    """fn(model, example_input, bytes_per_value=4) -> largest input + output bytes of one layer."""
    from ..models import StudentCNN, TeacherCNN

    if problem := not_a_function(fn, "arena_bytes"):
        return problem
    torch.manual_seed(0)
    cases = [("a StudentCNN on one 1x8x8 image", StudentCNN((1, 8, 8), width=4).eval(), torch.zeros(1, 1, 8, 8), 4),
             ("the same in int8 (1 byte per value)", StudentCNN((1, 8, 8), width=4).eval(),
              torch.zeros(1, 1, 8, 8), 1),
             ("a StudentCNN on a batch of 3", StudentCNN((1, 8, 8), width=4).eval(), torch.zeros(3, 1, 8, 8), 4),
             ("a small TeacherCNN", TeacherCNN((1, 8, 8), width=4, hidden=8).eval(), torch.zeros(1, 1, 8, 8), 4)]
    for what, model, x, nbytes in cases:
        got = fn(model, x, nbytes)
        if got is None:
            return "arena_bytes returned None: did you forget `return`?"
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            return f"arena_bytes should return a number of bytes, got {type(got).__name__}"
        want = _arena_reference(model, x, nbytes)
        if got != want:
            hint = ("multiply the number of values by bytes_per_value" if got * nbytes == want and nbytes > 1
                    else "for each layer add the numel() of its input and of its output, times "
                    "bytes_per_value, and keep the largest")
            return f"for {what} you returned {got}, expected {want}: {hint}"
    return None
