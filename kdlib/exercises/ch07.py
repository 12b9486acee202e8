"""Checks for the exercises of notebooks/07_beyond_logits.ipynb."""
from __future__ import annotations

import torch

from . import not_a_function, register
from .ch02 import _tensor_result


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@register("07.1")
def layer_output(fn) -> str | None:
    """fn(model, name, X) -> the output of layer `name` for input X, read with a forward hook
    that is removed afterwards."""
    from ..models import StudentCNN

    problem = not_a_function(fn, "layer_output")
    if problem:
        return problem
    torch.manual_seed(0)
    model = StudentCNN(width=4).eval()
    X = torch.randn(3, 1, 28, 28, generator=_gen(1))
    layers = list(model)
    for name, upto in (("3", 4), ("7", 8)):
        with torch.no_grad():
            expected = torch.nn.Sequential(*layers[:upto])(X)
            got = fn(model, name, X)
        problem = _tensor_result(f"layer_output(model, {name!r}, X)", got, expected.shape)
        if problem:
            return problem
        if any(m._forward_hooks for m in model.modules()):
            return "a hook is still attached after your function returned: call handle.remove() (in a finally: block)"
        if not torch.allclose(got, expected, atol=1e-6):
            return (f"layer_output(model, {name!r}, X) is not the output of layer {name}: register the hook on "
                    "dict(model.named_modules())[name] and store the `output` argument")
    return None


@register("07.2")
def attention_map(fn) -> str | None:
    """fn(feat (B, C, H, W)) -> (B, H*W) map mean_c |A|^2, each row of unit L2 norm."""
    from ..losses import attention_map as reference

    problem = not_a_function(fn, "attention_map")
    if problem:
        return problem
    feat = torch.randn(2, 5, 4, 3, generator=_gen(2))
    expected = reference(feat)
    got = fn(feat.clone())
    problem = _tensor_result("attention_map(feat)", got, expected.shape)
    if problem:
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (2, 4, 3):
            return "your map has shape (B, H, W): flatten it to (B, H*W) with .flatten(1)"
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (2, 5, 12):
            return "your map still has the channel dimension: average |A|^2 over dim=1 (the channels)"
        return problem
    if torch.allclose(got, expected, atol=1e-5):
        if not torch.allclose(fn(-3.0 * feat), expected, atol=1e-5):
            return "the map changes when the features are scaled by -3: take |A|^2 and normalise each row"
        return None
    norms = got.norm(dim=1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
        return f"each row should have L2 norm 1 (got norms {[round(v, 3) for v in norms.tolist()]}): divide by its norm"
    unsquared = torch.nn.functional.normalize(feat.abs().mean(1).flatten(1))
    if torch.allclose(got, unsquared, atol=1e-5):
        return "you used |A|, the paper uses |A|^p with p = 2: square the absolute values first"
    return "the map differs from mean over channels of |A|^2, flattened and divided by its L2 norm"


@register("07.3")
def distance_potentials(fn) -> str | None:
    """fn(e (B, D)) -> (B*(B-1)/2,) ||e_i - e_j|| / mean distance, pairs i < j row by row."""
    problem = not_a_function(fn, "distance_potentials")
    if problem:
        return problem
    e = torch.randn(6, 4, generator=_gen(3), dtype=torch.float64)
    i, j = torch.triu_indices(6, 6, 1)
    d = (e[i] - e[j]).norm(dim=1)
    expected = d / d.mean()
    got = fn(e.clone())
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (6, 6):
        return ("you returned the full (B, B) matrix: keep the pairs i < j "
                "(e.g. D[i, j] with i, j = torch.triu_indices(B, B, 1))")
    problem = _tensor_result("distance_potentials(e)", got, expected.shape)
    if problem:
        return problem
    got = got.to(expected.dtype)
    if torch.allclose(got, expected, atol=1e-5):
        return None
    if torch.allclose(got, d, atol=1e-5):
        return "these are the raw distances: divide them by their mean, mu"
    if torch.allclose(got, d**2 / (d**2).mean(), atol=1e-5):
        return "you used squared distances: take the square root (the Euclidean distance itself)"
    if torch.allclose(got.sort().values, expected.sort().values, atol=1e-5):
        return ("the values are right but in another order: list the pairs i < j row by row "
                "(torch.triu_indices(B, B, 1))")
    return "the potentials differ from ||e_i - e_j|| / mu over the pairs i < j, with mu the mean of those distances"


@register("07.4")
def dkd_parts(fn) -> str | None:
    """fn(student_logits, teacher_logits, labels, T) -> (tckd (B,), nckd (B,)), each with the T^2 factor."""
    from ..losses import dkd_terms

    problem = not_a_function(fn, "dkd_parts")
    if problem:
        return problem
    g = _gen(4)
    z, v = 3 * torch.randn(5, 6, generator=g), 3 * torch.randn(5, 6, generator=g)
    y = torch.tensor([0, 5, 2, 2, 3])
    T = 4.0
    tckd, nckd, _ = dkd_terms(z, v, y, T)
    got = fn(z.clone(), v.clone(), y.clone(), T)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"return a pair (tckd, nckd), got {type(got).__name__}"
    for name, g_, e_ in (("tckd", got[0], tckd), ("nckd", got[1], nckd)):
        if isinstance(g_, torch.Tensor) and g_.ndim == 0:
            return f"{name} is a single number: return one value per example, shape (B,)"
        problem = _tensor_result(name, g_, e_.shape)
        if problem:
            return problem
        if torch.allclose(g_, e_ / T**2, atol=1e-5) and not torch.allclose(g_, e_, atol=1e-5):
            return f"{name} is T^2 = {T**2:g} times too small: multiply by T**2"
        if not torch.allclose(g_, e_, atol=1e-4):
            if torch.allclose(got[0], nckd, atol=1e-4) and torch.allclose(got[1], tckd, atol=1e-4):
                return "tckd and nckd are swapped: the first is the binary (target vs rest) KL"
            hint = ("the KL between (p_t, 1 - p_t) of teacher and student" if name == "tckd" else
                    "the KL between the softmaxes over the non-target classes only")
            return f"{name} differs from {hint}, at temperature T and times T^2"
    return None
