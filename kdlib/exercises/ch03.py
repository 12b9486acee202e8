"""Checks for the exercises of notebooks/03_kd_loss_math.ipynb."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import not_a_function, register
from .ch02 import _tensor_result


def _logits(seed: int, B: int = 6, K: int = 5, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(B, K, generator=torch.Generator().manual_seed(seed))


def _scalar(name: str, got, batch_size: int) -> str | None:
    """A message unless `got` is a finite scalar tensor."""
    problem = _tensor_result(name, got, ())
    if problem and isinstance(got, torch.Tensor) and tuple(got.shape) == (batch_size,):
        return f"{name} returned one value per example (shape {tuple(got.shape)}): average over the batch"
    return problem


@register("03.1")
def kl_divergence(fn) -> str | None:
    """fn(p (B, K), q (B, K)) -> scalar batch-mean KL(p || q)."""
    if problem := not_a_function(fn, "kl_divergence"):
        return problem
    p = torch.softmax(_logits(0), dim=1)
    q = torch.softmax(_logits(1), dim=1)
    p_zero = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])  # zeros in p: 0 log 0 = 0
    q_pos = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    for name, a, b in [("kl_divergence(p, q)", p, q), ("kl_divergence with zeros in p", p_zero, q_pos)]:
        got = fn(a.clone(), b.clone())
        problem = _scalar(name, got, a.shape[0])
        if problem:
            return problem + (" (let 0 log 0 count as 0)" if "zeros" in name else "")
        expected = F.kl_div(b.log(), a, reduction="batchmean")
        if torch.allclose(got, expected, atol=1e-5):
            continue
        if torch.allclose(got, F.kl_div(a.log(), b, reduction="batchmean"), atol=1e-5):
            return "you computed KL(q || p): the weights of the sum are p, the first argument"
        if torch.allclose(got, expected / a.shape[1], atol=1e-6):
            return "you averaged over classes too: sum over the classes, then average over the batch"
        if torch.allclose(got, expected * a.shape[0], atol=1e-4):
            return "you summed over the batch: average over the examples instead"
        return f"{name} = {got.item():.5f}, expected {expected.item():.5f} (sum p log(p / q) over classes)"
    return None


@register("03.2")
def soft_term(fn) -> str | None:
    """fn(student_logits, teacher_logits, T) -> scalar T^2 KL(p^T || q^T), batch mean."""
    from ..losses import kd_loss

    if problem := not_a_function(fn, "soft_term"):
        return problem
    z, v = _logits(2), _logits(3)
    for T in (1.0, 4.0, 10.0):
        got = fn(z.clone(), v.clone(), T)
        problem = _scalar(f"soft_term(z, v, {T})", got, z.shape[0])
        if problem:
            return problem
        expected = kd_loss(z, v, None, T=T, alpha=1.0)
        if torch.allclose(got, expected, rtol=1e-4, atol=1e-6):
            continue
        if T != 1 and torch.allclose(got, expected / T**2, rtol=1e-4):
            return f"at T = {T} the value is T^2 = {T**2:g} times too small: multiply by T**2"
        if torch.allclose(got, expected / z.shape[1], rtol=1e-4):
            return "the value is K times too small: use reduction='batchmean', not 'mean'"
        reversed_kl = T**2 * F.kl_div(F.log_softmax(v / T, 1), F.softmax(z / T, 1), reduction="batchmean")
        if torch.allclose(got, reversed_kl, rtol=1e-4):
            return "that is KL(q || p): the teacher's probabilities are the target, the student's log-probabilities the input"
        return f"soft_term at T = {T} gave {got.item():.5f}, expected {expected.item():.5f}"
    big_z, big_v = 1000 * _logits(4, scale=1.0), 1000 * _logits(5, scale=1.0)
    got = fn(big_z, big_v, 2.0)
    problem = _scalar("soft_term on logits in the thousands", got, big_z.shape[0])
    if problem:
        return problem + ": use F.log_softmax rather than the log of a softmax"
    if not torch.allclose(got, kd_loss(big_z, big_v, None, T=2.0, alpha=1.0), rtol=1e-4):
        return "logits in the thousands give a wrong value: use F.log_softmax rather than the log of a softmax"
    return None


@register("03.3")
def soft_term_gradient(fn) -> str | None:
    """fn(student_logits, teacher_logits, T) -> (B, K) gradient of the batch-mean T^2 KL."""
    if problem := not_a_function(fn, "soft_term_gradient"):
        return problem
    v = _logits(7)
    for T in (1.0, 3.0, 8.0):
        z = _logits(6)
        got = fn(z.clone(), v.clone(), T)
        problem = _tensor_result(f"soft_term_gradient(z, v, {T})", got, z.shape)
        if problem:
            return problem
        if got.requires_grad:
            got = got.detach()
        z.requires_grad_(True)
        loss = F.kl_div(F.log_softmax(z / T, 1), F.softmax(v / T, 1), reduction="batchmean") * T**2
        (expected,) = torch.autograd.grad(loss, z)
        if torch.allclose(got, expected, atol=1e-6, rtol=1e-4):
            continue
        B = z.shape[0]
        if torch.allclose(got, expected * B, atol=1e-5, rtol=1e-4):
            return "the gradient is B times too large: the batch mean divides each row by B"
        if T != 1 and torch.allclose(got, expected / T**2, atol=1e-6, rtol=1e-4):
            return "that is the gradient without the T^2 factor: multiply by T**2"
        if torch.allclose(got, -expected, atol=1e-6, rtol=1e-4):
            return "the sign is flipped: the gradient is proportional to q - p (student minus teacher)"
        return (f"at T = {T} your gradient differs from autograd's by up to "
                f"{(got - expected).abs().max().item():.3g}")
    return None
