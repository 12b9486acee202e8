"""Checks for the exercises of notebooks/06_teaching.ipynb."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import not_a_function, register
from .ch04 import _as_float, _number


def _logits(seed: int, B: int = 50, K: int = 10, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(B, K, generator=torch.Generator().manual_seed(seed))


@register("06.1")
def agreement(fn) -> str | None:
    """fn(student_logits (N, K), teacher_logits (N, K)) -> fraction of rows with the same top class."""
    if problem := not_a_function(fn, "agreement"):
        return problem
    t = _logits(0)
    cases = [(t.clone(), 1.0), (-t, 0.0)]
    s = t.clone()
    s[:10] = -s[:10]  # the first 10 of 50 rows now disagree
    cases.append((s, 40 / 50))
    noisy = t + 2.0 * _logits(1, scale=1.0)
    cases.append((noisy, float((noisy.argmax(1) == t.argmax(1)).double().mean())))
    for student, expected in cases:
        got = fn(student.clone(), t.clone())
        if problem := _number("agreement(student_logits, teacher_logits)", got):
            return problem
        if not math.isclose(_as_float(got), expected, abs_tol=1e-6):
            if math.isclose(_as_float(got), expected * len(t), abs_tol=1e-6):
                return "you counted the rows that agree: divide by the number of rows for a fraction"
            return (f"expected agreement {expected:.3f}, got {_as_float(got):.4f}: compare the argmax of each row "
                    "(dim=1), not the whole tensor")
    return None


@register("06.2")
def kl_to_teacher(fn) -> str | None:
    """fn(student_logits, teacher_logits, T) -> mean over rows of KL(softmax(t/T) || softmax(s/T))."""
    if problem := not_a_function(fn, "kl_to_teacher"):
        return problem
    s, t = _logits(2), _logits(3)
    for T in (1.0, 2.0):
        got = fn(s.clone(), t.clone(), T)
        if problem := _number(f"kl_to_teacher(s, t, {T:g})", got):
            return problem
        expected = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), log_target=True,
                            reduction="batchmean").item()
        value = _as_float(got)
        if math.isclose(value, expected, rel_tol=1e-4):
            continue
        reverse = F.kl_div(F.log_softmax(t / T, 1), F.log_softmax(s / T, 1), log_target=True,
                           reduction="batchmean").item()
        if math.isclose(value, reverse, rel_tol=1e-4):
            return "that is KL(student || teacher): the teacher's probabilities weight the sum"
        if math.isclose(value, expected / s.shape[1], rel_tol=1e-4):
            return "you averaged over the classes too: sum over classes, then average over rows"
        if math.isclose(value, expected * s.shape[0], rel_tol=1e-4):
            return "you summed over the rows: average over them"
        if math.isclose(value, expected * T * T, rel_tol=1e-4) and T != 1:
            return "no T^2 factor here: this measures fidelity, it is not the training loss"
        return f"at T = {T:g} expected {expected:.5f}, got {value:.5f}"
    if not math.isclose(_as_float(fn(t.clone(), t.clone(), 1.0)), 0.0, abs_tol=1e-6):
        return "a student identical to its teacher must have a KL of 0"
    return None


def _tiny_models():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    return student.eval(), teacher.eval()


@register("06.3")
def function_matching_loss(fn) -> str | None:
    """fn(student, teacher, X (B, ...), lam, perm, T) -> T^2 KL(teacher || student) on lam X + (1 - lam) X[perm]."""
    if problem := not_a_function(fn, "function_matching_loss"):
        return problem
    student, teacher = _tiny_models()
    X = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    perm = torch.tensor([3, 0, 1, 2, 7, 4, 5, 6])
    for lam, T in ((0.3, 1.0), (0.8, 2.0)):
        mixed = lam * X + (1 - lam) * X[perm]
        with torch.no_grad():
            z_t = teacher(mixed)
        z_s = student(mixed)
        expected = T * T * F.kl_div(F.log_softmax(z_s / T, 1), F.log_softmax(z_t / T, 1), log_target=True,
                                    reduction="batchmean")
        got = fn(student, teacher, X.clone(), lam, perm.clone(), T)
        if not isinstance(got, torch.Tensor) or got.ndim != 0:
            return "return the loss as a scalar tensor (so that it can be back-propagated)"
        if not got.requires_grad:
            return "the loss has no gradient: run the student outside torch.no_grad() (only the teacher inside it)"
        if torch.allclose(got.detach(), expected.detach(), rtol=1e-4, atol=1e-7):
            continue
        unmixed = T * T * F.kl_div(F.log_softmax(student(X) / T, 1), F.log_softmax(teacher(X) / T, 1),
                                   log_target=True, reduction="batchmean")
        if torch.allclose(got.detach(), unmixed.detach(), rtol=1e-4):
            return "the models must see the mixed batch lam * X + (1 - lam) * X[perm], not X"
        if T != 1 and torch.allclose(got.detach(), expected.detach() / (T * T), rtol=1e-4):
            return "multiply the KL by T^2, as kd_loss does"
        return (f"with lam = {lam}, T = {T:g} expected {expected.item():.5f}, got {got.item():.5f}: mix the images, "
                "run both models on the same mixed batch, and compare their softened outputs")
    return None


@register("06.4")
def paired_verdict(fn) -> str | None:
    """fn(a, b) -> 'better' | 'worse' | 'no clear difference' from a 95 % t-interval of a - b."""
    from ..metrics import compare_paired

    if problem := not_a_function(fn, "paired_verdict"):
        return problem
    cases = [([0.98, 0.97, 0.985, 0.975, 0.98], [0.96, 0.955, 0.97, 0.96, 0.962]),   # clearly better
             ([0.95, 0.96, 0.955, 0.95, 0.958], [0.97, 0.975, 0.972, 0.969, 0.971]),  # clearly worse
             ([0.97, 0.98, 0.96, 0.985, 0.975], [0.975, 0.97, 0.972, 0.98, 0.978]),   # noise
             ([0.971, 0.972, 0.973], [0.970, 0.9705, 0.9715])]                        # small but consistent
    for a, b in cases:
        expected = compare_paired(a, b).verdict
        got = fn(list(a), list(b))
        if got != expected:
            mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
            hint = ""
            if expected == "no clear difference":
                hint = (f": the means differ ({mean_a:.4f} vs {mean_b:.4f}) but the 95 % interval of the paired "
                        "differences contains 0")
            elif got == "no clear difference":
                hint = (": the paired differences are consistent enough for their 95 % interval to exclude 0; use "
                        "the t quantile with n - 1 degrees of freedom and the standard error s / sqrt(n)")
            return f"for a = {a}, b = {b} the verdict is {expected!r}, you said {got!r}{hint}"
    return None
