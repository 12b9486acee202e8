"""Checks for the exercises of notebooks/15_compress_your_own.ipynb."""
from __future__ import annotations

import torch

from . import not_a_function, register


@register("15.1")
def channel_mean_std(fn) -> str | None:
    """fn(X) -> (mean, std): per-channel statistics of a (N, C, H, W) batch, each a (C,) tensor."""
    if problem := not_a_function(fn, "channel_mean_std"):
        return problem
    g = torch.Generator().manual_seed(0)
    X = torch.rand(6, 3, 5, 4, generator=g) * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
    got = fn(X)
    if got is None:
        return "your function returned None: did you forget `return`?"
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"return a pair (mean, std), got {type(got).__name__}"
    mean, std = (torch.as_tensor(v, dtype=torch.float32).flatten() for v in got)
    want_mean, want_std = X.mean(dim=(0, 2, 3)), X.std(dim=(0, 2, 3))
    if mean.shape != (3,) or std.shape != (3,):
        return (f"mean and std need one value per channel (3 here), got shapes {tuple(mean.shape)} and "
                f"{tuple(std.shape)}: reduce over the images, rows and columns, dims (0, 2, 3)")
    if torch.allclose(mean, X.mean(dim=(1, 2, 3))[:3]) and not torch.allclose(mean, want_mean):
        return "you averaged over the wrong axes: each channel's mean is over dims (0, 2, 3)"
    if not torch.allclose(mean, want_mean, atol=1e-5):
        return f"the means should be {want_mean.tolist()}, got {mean.tolist()}"
    if not torch.allclose(std, want_std, atol=1e-4):
        if torch.allclose(std, X.std(dim=(0, 2, 3), unbiased=False), atol=1e-4):
            return "almost: kdlib (like torch.std) uses the sample standard deviation, dividing by n - 1"
        return f"the standard deviations should be {want_std.tolist()}, got {std.tolist()}"
    return None


@register("15.2")
def removed_fraction(fn) -> str | None:
    """fn(before, after) -> the fraction of channels removed, from two lists of per-layer counts."""
    if problem := not_a_function(fn, "removed_fraction"):
        return problem
    for before, after, want in (([12, 24], [8, 16], 1 / 3), ([12, 24], [9, 18], 0.25), ([16], [16], 0.0),
                                ([8, 32], [8, 16], 0.4)):
        got = fn(before, after)
        if got is None:
            return "your function returned None: did you forget `return`?"
        try:
            ok = abs(float(got) - want) < 1e-9
        except (TypeError, ValueError):
            return f"return a number, got {type(got).__name__}"
        if not ok:
            if abs(float(got) - (1 - want)) < 1e-9:
                return "that is the fraction kept; the question asks for the fraction removed"
            return (f"for {before} -> {after} the answer is {want:.4f}, you returned {float(got):.4f}: count all "
                    "the channels before and after, over every layer together")
    return None


@register("15.3")
def unwrap(fn) -> str | None:
    """fn(saved) -> the plain state dict inside what a training script saved."""
    if problem := not_a_function(fn, "unwrap"):
        return problem
    w, b = torch.ones(2, 2), torch.zeros(2)
    plain = {"fc.weight": w, "fc.bias": b}
    cases = [(plain, "a plain state dict"),
             ({"state_dict": plain, "epoch": 7}, "a dict with 'state_dict' and the epoch"),
             ({f"module.{k}": v for k, v in plain.items()}, "keys prefixed with 'module.'"),
             ({"state_dict": {f"module.{k}": v for k, v in plain.items()}, "optimizer": {}},
              "'state_dict' whose keys start with 'module.'")]
    for saved, what in cases:
        got = fn(saved)
        if got is None:
            return "your function returned None: did you forget `return`?"
        if not isinstance(got, dict) or sorted(got) != sorted(plain):
            keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            return f"for {what} the keys should be {sorted(plain)}, got {keys}"
        if not all(got[k] is plain[k] or torch.equal(got[k], plain[k]) for k in plain):
            return f"for {what} the tensors changed: keep the values, change only the keys"
    return None
