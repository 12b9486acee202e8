"""Checks for the exercises of notebooks/04_teacher.ipynb."""
from __future__ import annotations

import math
import statistics

import torch

from . import not_a_function, register


def _number(name: str, got) -> str | None:
    """A message unless `got` is a finite real number (a float, int or 0-d tensor)."""
    if got is None:
        return f"{name} returned None: did you forget `return`?"
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            return f"{name} should return one number, got a tensor of shape {tuple(got.shape)}"
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"{name} should return a number, got {type(got).__name__}"
    if not math.isfinite(got):
        return f"{name} returned {got}"
    return None


def _as_float(got) -> float:
    return float(got.item() if isinstance(got, torch.Tensor) else got)


def _calibration_case():
    """Four predictions (two at confidence 0.95, one right; two at 0.65, both right): ECE = 0.40."""
    probs = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.35, 0.65], [0.65, 0.35]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 0])
    return probs, labels


@register("04.1")
def ece(fn) -> str | None:
    """fn(probs (N, K), labels (N,), n_bins) -> expected calibration error (a float)."""
    from ..metrics import expected_calibration_error

    if problem := not_a_function(fn, "ece"):
        return problem
    probs, labels = _calibration_case()
    got = fn(probs.clone(), labels.clone(), 10)
    problem = _number("ece(probs, labels, 10)", got)
    if problem:
        return problem
    if not math.isclose(_as_float(got), 0.40, abs_tol=1e-6):
        if math.isclose(_as_float(got), 0.5 * 0.45 + 0.5 * 0.35, abs_tol=1e-6):
            return "close, but check each bin's accuracy and mean confidence"
        return (f"on the worked example (two predictions at 0.95, one right; two at 0.65, both right) "
                f"ECE should be 2/4 * |0.5 - 0.95| + 2/4 * |1 - 0.65| = 0.40, got {_as_float(got):.4f}")
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(300, 10, generator=g), 1)
    labels = torch.randint(0, 10, (300,), generator=g)
    for n_bins in (1, 15):
        got = fn(probs.clone(), labels.clone(), n_bins)
        problem = _number(f"ece(probs, labels, {n_bins})", got)
        if problem:
            return problem
        expected = expected_calibration_error(probs, labels, n_bins)
        if not math.isclose(_as_float(got), expected, abs_tol=1e-5):
            return (f"on 300 random predictions with {n_bins} bins ECE should be {expected:.4f}, got "
                    f"{_as_float(got):.4f}: weight each bin's |accuracy - confidence| by its share of examples")
    return None


def _nll(logits, labels, T):
    return torch.nn.functional.cross_entropy(logits / T, labels).item()


@register("04.2")
def fit_temperature(fn) -> str | None:
    """fn(logits (N, K), labels (N,)) -> the temperature T > 0 that minimises the NLL on them."""
    if problem := not_a_function(fn, "fit_temperature"):
        return problem
    g = torch.Generator().manual_seed(0)
    true_logits = 2 * torch.randn(2000, 5, generator=g)
    labels = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=g).squeeze(1)
    for scale in (3.0, 0.5):  # over-confident, then under-confident logits
        logits = true_logits * scale
        got = fn(logits.clone(), labels.clone())
        problem = _number("fit_temperature(logits, labels)", got)
        if problem:
            return problem
        T = _as_float(got)
        if T <= 0:
            return f"a temperature must be positive, got {T}"
        grid = torch.linspace(0.05, 10, 2000)
        best = float(grid[torch.tensor([_nll(logits, labels, t) for t in grid.tolist()]).argmin()])
        if _nll(logits, labels, T) > _nll(logits, labels, best) + 1e-3:
            return (f"for logits {scale:g} times too {'large' if scale > 1 else 'small'}, the best T is about "
                    f"{best:.2f} (NLL {_nll(logits, labels, best):.4f}); yours, {T:.3f}, gives NLL "
                    f"{_nll(logits, labels, T):.4f}. Minimise cross_entropy(logits / T, labels) over T")
    return None


@register("04.3")
def mean_std(fn) -> str | None:
    """fn(values: list of floats) -> (mean, sample standard deviation)."""
    if problem := not_a_function(fn, "mean_std"):
        return problem
    for values in ([0.97, 0.98, 0.99], [0.951, 0.962, 0.958, 0.949, 0.960], [2.0, 4.0]):
        got = fn(list(values))
        if got is None:
            return "mean_std returned None: did you forget `return`?"
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return f"mean_std should return a pair (mean, std), got {got!r}"
        for name, v in zip(("mean", "std"), got):
            problem = _number(f"the {name} from mean_std", v)
            if problem:
                return problem
        m, s = (_as_float(v) for v in got)
        if not math.isclose(m, statistics.fmean(values), abs_tol=1e-9):
            return f"the mean of {values} is {statistics.fmean(values):.6g}, got {m:.6g}"
        if math.isclose(s, statistics.pstdev(values), abs_tol=1e-9):
            return ("that is the population standard deviation (divided by n): with a few seeds use the "
                    "sample standard deviation, divided by n - 1")
        if not math.isclose(s, statistics.stdev(values), abs_tol=1e-9):
            return f"the sample standard deviation of {values} is {statistics.stdev(values):.6g}, got {s:.6g}"
    return None
