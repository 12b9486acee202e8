"""Checks for the exercises of notebooks/05_distillation.ipynb."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import not_a_function, register
from .ch04 import _as_float, _number


@register("05.1")
def gap_closed(fn) -> str | None:
    """fn(kd, alone, teacher) -> (kd - alone) / (teacher - alone)."""
    if problem := not_a_function(fn, "gap_closed"):
        return problem
    acc = lambda errors: 1 - errors / 10_000  # Hinton et al.'s MNIST test errors, as accuracies
    cases = [((acc(74), acc(146), acc(67)), 72 / 79), ((0.95, 0.90, 0.95), 1.0), ((0.90, 0.90, 0.95), 0.0),
             ((0.85, 0.90, 0.95), -1.0), ((0.981, 0.952, 0.987), 29 / 35)]
    for args, expected in cases:
        got = fn(*args)
        problem = _number(f"gap_closed{args}", got)
        if problem:
            return problem
        if not math.isclose(_as_float(got), expected, abs_tol=1e-6):
            if math.isclose(_as_float(got), 100 * expected, abs_tol=1e-4):
                return "return a fraction (0.91), not a percentage (91)"
            return (f"gap_closed(kd={args[0]:.4f}, alone={args[1]:.4f}, teacher={args[2]:.4f}) should be "
                    f"{expected:.4f}, got {_as_float(got):.4f}: the gain of distillation over the gap "
                    "between teacher and student alone")
    return None


def _toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5))


@register("05.2")
def raise_bias(fn) -> str | None:
    """fn(model, cls, delta) -> a copy of model whose last Linear layer's bias[cls] is raised by delta."""
    if problem := not_a_function(fn, "raise_bias"):
        return problem
    model = _toy_model().eval()
    before = copy.deepcopy(model.state_dict())
    X = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(X)
    got = fn(model, 3, 2.5)
    if got is None:
        return "raise_bias returned None: did you forget `return`?"
    if not isinstance(got, nn.Module):
        return f"raise_bias should return a model (nn.Module), got {type(got).__name__}"
    if any(not torch.equal(before[k], v) for k, v in model.state_dict().items()):
        return "raise_bias changed the original model: copy it first (copy.deepcopy) and change the copy"
    if got is model:
        return "raise_bias returned the original model: return a changed copy"
    with torch.no_grad():
        out = got(X)
    if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
        return "the returned model should map the same inputs to (B, K) logits"
    expected = ref.clone()
    expected[:, 3] += 2.5
    if not torch.allclose(out, expected, atol=1e-5):
        changed = (out - ref).abs().amax(0) > 1e-5
        if changed.sum() == 1 and changed[3]:
            return "only class 3 changed, as it should, but not by delta: add delta to bias[3]"
        return "the logits should change only for class `cls`, each by exactly `delta`: edit the last Linear's bias"
    return None


@register("05.3")
def masked_cross_entropy(fn) -> str | None:
    """fn(student_logits (B, K), labels (B,) with -1 = no label) -> mean CE over the labelled examples."""
    if problem := not_a_function(fn, "masked_cross_entropy"):
        return problem
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=g)
    y = torch.tensor([2, -1, 0, -1, -1, 4, 1, -1])
    got = fn(z.clone(), y.clone())
    problem = _number("masked_cross_entropy(z, y)", got)
    if problem:
        return problem
    expected = F.cross_entropy(z, y, ignore_index=-1).item()
    if not math.isclose(_as_float(got), expected, rel_tol=1e-5):
        if math.isclose(_as_float(got), expected * 4 / 8, rel_tol=1e-5):
            return "you averaged over all 8 examples: average over the 4 labelled ones"
        return f"on the test batch the mean cross-entropy over the labelled examples is {expected:.4f}, got {_as_float(got):.4f}"
    got = fn(z.clone(), torch.full((8,), -1))
    problem = _number("masked_cross_entropy with no labels", got)
    if problem:
        return problem + " (with no labelled example, return 0.0)"
    if _as_float(got) != 0.0:
        return f"with no labelled example in the batch the hard term should be 0.0, got {_as_float(got)}"
    return None
