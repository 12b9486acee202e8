"""Checks for the exercises of notebooks/12_language_model.ipynb."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import not_a_function, register
from .ch04 import _as_float, _number


def _seq_case(seed: int = 0, shape=(3, 5, 7)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.randn(*shape, generator=g) * 2


@register("12.1")
def bits_per_char(fn) -> str | None:
    """fn(logits (B, T, V), targets (B, T)) -> mean cross-entropy in bits."""
    if problem := not_a_function(fn, "bits_per_char"):
        return problem
    uniform = fn(torch.zeros(2, 3, 65), torch.zeros(2, 3, dtype=torch.long))
    if problem := _number("bits_per_char(uniform logits over 65 characters)", uniform):
        return problem
    if math.isclose(_as_float(uniform), math.log(65), rel_tol=1e-4):
        return "that is the cross-entropy in nats (ln 65 for uniform logits): divide by ln 2 to get bits"
    if not math.isclose(_as_float(uniform), math.log2(65), rel_tol=1e-4):
        return f"uniform logits over 65 characters cost log2(65) = {math.log2(65):.4f} bits each, got {_as_float(uniform):.4f}"
    z, _ = _seq_case()
    y = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(1))
    expected = F.cross_entropy(z.flatten(0, 1), y.flatten()).item() / math.log(2)
    got = fn(z.clone(), y.clone())
    if problem := _number("bits_per_char(z, y)", got):
        return problem
    if math.isclose(_as_float(got), expected * 15, rel_tol=1e-4):
        return "you summed over the 15 positions: take the mean per character"
    if not math.isclose(_as_float(got), expected, rel_tol=1e-4):
        return (f"on a (3, 5, 7) test batch the answer is {expected:.4f} bits per character, got {_as_float(got):.4f}: "
                "flatten (B, T, V) to (B*T, V), take the cross-entropy, divide by ln 2")
    return None


@register("12.2")
def token_kd(fn) -> str | None:
    """fn(student_logits (B, T, V), teacher_logits (B, T, V), T) -> chapter 3's KD loss (soft term) per position, averaged."""
    if problem := not_a_function(fn, "token_kd"):
        return problem
    from ..lm_losses import token_kd_loss

    s, t = _seq_case()
    for T in (1.0, 2.0, 4.0):
        got = fn(s.clone(), t.clone(), T)
        if problem := _number(f"token_kd(s, t, T={T:g})", got):
            return problem
        expected = token_kd_loss(s, t, T=T).item()
        g = _as_float(got)
        if math.isclose(g, expected, rel_tol=1e-4):
            continue
        if math.isclose(g, expected / (T * T), rel_tol=1e-4):
            return f"at T = {T:g} you are off by a factor T^2 = {T * T:g}: multiply the KL by T^2"
        if math.isclose(g, expected * 5, rel_tol=1e-4):
            return "you summed over the 5 positions: average over all B * T positions"
        if math.isclose(g, expected * 15, rel_tol=1e-4):
            return "you summed over the positions: average over all B * T positions"
        return (f"token_kd(s, t, T={T:g}) should be {expected:.4f}, got {g:.4f}: KL(p_T || q_T) summed over the "
                "vocabulary, averaged over positions, times T^2")
    return None


@register("12.3")
def distinct_ngrams(fn) -> str | None:
    """fn(text: str, n: int) -> the share of distinct n-grams among the len(text) - n + 1 n-grams."""
    if problem := not_a_function(fn, "distinct_ngrams"):
        return problem
    cases = [(("abab", 2), 2 / 3), (("aaaa", 1), 1 / 4), (("abcd", 2), 1.0), (("the cat the cat", 4), 8 / 12),
             (("to be or not to be", 3), 13 / 16)]
    for (text, n), expected in cases:
        got = fn(text, n)
        if problem := _number(f"distinct_ngrams({text!r}, {n})", got):
            return problem
        if not math.isclose(_as_float(got), expected, abs_tol=1e-9):
            total = len(text) - n + 1
            return (f"distinct_ngrams({text!r}, {n}) should be {expected:.4f} ({round(expected * total)} distinct "
                    f"of the {total} overlapping {n}-grams), got {_as_float(got):.4f}")
    return None
