"""Checks for the exercises of notebooks/02_soft_labels.ipynb."""
from __future__ import annotations

import math

import torch

from . import not_a_function, register


def _tensor_result(name: str, got, shape) -> str | None:
    """A message if `got` is not a finite float tensor of `shape`, else None."""
    if got is None:
        return f"{name} returned None: did you forget `return`?"
    if not isinstance(got, torch.Tensor):
        return f"{name} should return a torch.Tensor, got {type(got).__name__}"
    if tuple(got.shape) != tuple(shape):
        return f"{name} returned shape {tuple(got.shape)}, expected {tuple(shape)}"
    if not got.is_floating_point():
        return f"{name} should return floating-point values, got dtype {got.dtype}"
    if not torch.isfinite(got).all():
        return f"{name} returned NaN or inf"
    return None


@register("02.1")
def softmax_T(fn) -> str | None:
    """fn(z (B, K), T) -> (B, K) softmax of z / T, stable for large logits."""
    if problem := not_a_function(fn, "softmax_T"):
        return problem
    g = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(5, 7, generator=g)
    for T in (1.0, 0.5, 4.0, 20.0):
        got = fn(z.clone(), T)
        problem = _tensor_result(f"softmax_T(z, {T})", got, z.shape)
        if problem:
            return problem
        if not torch.allclose(got, torch.softmax(z / T, dim=-1), atol=1e-5):
            if torch.allclose(got, torch.softmax(z, dim=-1), atol=1e-5):
                return f"at T = {T} your result equals the plain softmax: divide the logits by T first"
            if torch.allclose(got.sum(-1), torch.ones(z.shape[0]), atol=1e-4):
                return f"at T = {T} the rows sum to 1 but the values differ from softmax(z / T)"
            return f"at T = {T} the rows should sum to 1 (softmax along the last dimension)"
    big = torch.tensor([[1000.0, 999.0, 990.0]])
    got = fn(big, 1.0)
    problem = _tensor_result("softmax_T on logits near 1000", got, big.shape)
    if problem:
        return problem + ": subtract the largest logit of each row before exp"
    if not torch.allclose(got, torch.softmax(big, dim=-1), atol=1e-5):
        return "logits near 1000 give the wrong answer: subtract each row's largest logit before exp"
    return None


@register("02.2")
def entropy(fn) -> str | None:
    """fn(p (B, K)) -> (B,) entropy in nats, 0 log 0 = 0."""
    if problem := not_a_function(fn, "entropy"):
        return problem
    K = 6
    uniform = torch.full((2, K), 1 / K)
    got = fn(uniform)
    problem = _tensor_result("entropy(uniform)", got, (2,))
    if problem:
        return problem
    if not torch.allclose(got, torch.full((2,), math.log(K)), atol=1e-5):
        if torch.allclose(got, torch.full((2,), math.log2(K)), atol=1e-5):
            return "that is the entropy in bits: use the natural log (torch.log) for nats"
        return f"the uniform distribution over {K} classes should have entropy log {K} = {math.log(K):.4f}"
    one_hot = torch.eye(K)[:3]
    got = fn(one_hot)
    problem = _tensor_result("entropy(one-hot rows)", got, (3,))
    if problem:
        return problem + " (0 log 0 should count as 0)"
    if not torch.allclose(got, torch.zeros(3), atol=1e-6):
        return "a one-hot row should have entropy 0"
    p = torch.softmax(torch.randn(4, K, generator=torch.Generator().manual_seed(1)), dim=-1)
    got = fn(p)
    problem = _tensor_result("entropy(p)", got, (4,))
    if problem:
        return problem
    expected = torch.distributions.Categorical(probs=p).entropy()
    if not torch.allclose(got, expected, atol=1e-5):
        if torch.allclose(got, -expected, atol=1e-5):
            return "the sign is flipped: entropy is -sum p log p, which is never negative"
        return "the values differ from -sum_i p_i log p_i for each row"
    return None


@register("02.3")
def temperature_for(fn) -> str | None:
    """fn(z (K,), target) -> T with max softmax(z / T) == target (within 0.001)."""
    if problem := not_a_function(fn, "temperature_for"):
        return problem
    cases = [(torch.tensor([3.0, 1.0, 0.2]), 0.5), (torch.tensor([12.0, 2.0, 1.0, 0.0, -3.0]), 0.3),
             (torch.tensor([2.0, 1.9, -1.0]), 0.45), (torch.tensor([20.0, 0.0]), 0.99)]
    for z, target in cases:
        got = fn(z.clone(), target)
        if got is None:
            return "temperature_for returned None: did you forget `return`?"
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got) or got <= 0:
            return f"temperature_for should return a positive number, got {got!r}"
        top = torch.softmax(z / got, dim=-1).max().item()
        if abs(top - target) > 1e-3:
            return (f"for z = {z.tolist()} and target {target} you returned T = {got:.4g}, where the top "
                    f"class gets {top:.4f}: it should get {target}")
    return None
