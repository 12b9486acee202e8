"""Checks for the exercises of notebooks/14_pitfalls.ipynb."""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import not_a_function, register


def _bool_result(name: str, got) -> str | None:
    if got is None:
        return f"{name} returned None: did you forget `return`?"
    if isinstance(got, torch.Tensor) and got.numel() == 1 and got.dtype == torch.bool:
        got = bool(got)
    if not isinstance(got, bool):
        return f"{name} should return True or False, got {type(got).__name__}"
    return None


@register("14.1")
def looks_like_probs(fn) -> str | None:
    """fn(x (B, K)) -> True when every row is in [0, 1] and sums to 1 (within 1e-4)."""
    if problem := not_a_function(fn, "looks_like_probs"):
        return problem
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(6, 10, generator=g)
    cases = [
        ("softmax outputs", torch.softmax(z, 1), True, "a softmax's output must be recognised"),
        ("raw logits", z, False, "raw logits have negative entries and rows that do not sum to 1"),
        ("log-probabilities", torch.log_softmax(z, 1), False,
         "log-probabilities are all <= 0, so they are not in [0, 1]: check both bounds"),
        ("rows in [0, 1] summing to 0.5", torch.softmax(z, 1) / 2, False,
         "every value is in [0, 1] but the rows sum to 0.5: check the row sums too"),
        ("rows summing to 1 with a negative entry", torch.tensor([[1.5, -0.5], [0.5, 0.5]]), False,
         "the rows sum to 1 but one entry is negative: check that every value is in [0, 1]"),
        ("a softmax with float32 rounding", torch.softmax(50 * torch.randn(4, 100, generator=g), 1), True,
         "rows of a float32 softmax sum to 1 only up to rounding: compare with a tolerance such as 1e-4"),
        ("one row of logits that sums to 1", torch.tensor([[3.0, -2.0]]), False,
         "logits [3, -2] sum to 1 but are not probabilities: check the range as well"),
    ]
    for name, x, expected, hint in cases:
        got = fn(x.clone())
        problem = _bool_result(f"looks_like_probs on {name}", got)
        if problem:
            return problem
        if bool(got) != expected:
            return f"looks_like_probs on {name} returned {bool(got)}, expected {expected}: {hint}"
    return None


def _has_dropout_and_bn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.5), nn.Linear(4 * 6 * 6, 3)).train()


@register("14.2")
def freeze_teacher(fn) -> str | None:
    """fn(teacher) -> the same teacher, in eval mode, with no parameter requiring grad."""
    if problem := not_a_function(fn, "freeze_teacher"):
        return problem
    teacher = _has_dropout_and_bn()
    before = copy.deepcopy(teacher.state_dict())
    got = fn(teacher)
    if got is None:
        return "freeze_teacher returned None: return the teacher (e.g. `return teacher`)"
    if got is not teacher:
        return "return the same teacher object you were given (modules change in place), not a copy"
    if teacher.training or any(m.training for m in teacher.modules()):
        return "the teacher is still in train mode: call teacher.eval() (it switches every submodule)"
    if any(p.requires_grad for p in teacher.parameters()):
        return "some parameters still require grad: call teacher.requires_grad_(False)"
    X = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out1, out2 = teacher(X), teacher(X)
    if not torch.equal(out1, out2):
        return "two forward passes gave different outputs: dropout is still on"
    if out1.requires_grad:
        return "the teacher's output still requires grad"
    for k, v in teacher.state_dict().items():
        if not torch.equal(v, before[k]):
            return f"{k} changed: freeze_teacher must not change any weight or BatchNorm statistic"
    return None


def _features() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())


@register("14.3")
def head_for(fn) -> str | None:
    """fn(features, input_shape, num_classes) -> nn.Linear sized for features' output at input_shape."""
    if problem := not_a_function(fn, "head_for"):
        return problem
    features = _features()
    for shape, K in [((1, 28, 28), 10), ((1, 32, 32), 10), ((1, 24, 24), 5), ((1, 64, 48), 3)]:
        got = fn(features, shape, K)
        if got is None:
            return "head_for returned None: did you forget `return`?"
        if not isinstance(got, nn.Linear):
            return f"head_for should return an nn.Linear, got {type(got).__name__}"
        with torch.no_grad():
            n = features(torch.zeros(1, *shape)).shape[1]
        if got.in_features != n:
            return (f"for input {shape} the features give {n} numbers per image, but your Linear takes "
                    f"{got.in_features}: run the features on torch.zeros(1, *input_shape) and count")
        if got.out_features != K:
            return f"the Linear should output num_classes = {K} logits, got {got.out_features}"
    if any(p.grad is not None for p in features.parameters()):
        return "head_for changed the features' gradients: measure the size under torch.no_grad()"
    return None
