"""Checks for the exercises of notebooks/09_quantization.ipynb."""
from __future__ import annotations

import torch

from . import not_a_function, register


def _cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(8)
    return [torch.tensor([-1.0, 0.25, 0.5, 2.0]), torch.randn(50, generator=g) * 3,
            torch.rand(4, 6, generator=g) + 0.1, torch.tensor([-0.7, -0.2])]


def _is_tensor(name: str, got, shape) -> str | None:
    if got is None:
        return "your function returned None: did you forget `return`?"
    if not isinstance(got, torch.Tensor):
        return f"{name} should be a torch.Tensor, got {type(got).__name__}"
    if tuple(got.shape) != tuple(shape):
        return f"{name} should have shape {tuple(shape)}, got {tuple(got.shape)}"
    return None


@register("09.1")
def quantize_symmetric(fn) -> str | None:
    """fn(x, num_bits) -> (q, scale): the symmetric per-tensor grid, zero point 0."""
    from ..quant import quantize

    if problem := not_a_function(fn, "quantize_symmetric"):
        return problem
    for x in _cases():
        for bits in (8, 4, 2):
            out = fn(x.clone(), bits)
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                return f"quantize_symmetric should return a pair (q, scale), got {type(out).__name__}"
            q, scale = out
            problem = _is_tensor("q", q, x.shape)
            if problem:
                return problem
            try:
                scale = float(scale)
            except (TypeError, ValueError, RuntimeError):
                return f"scale should be one number (per-tensor), got {type(scale).__name__}"
            q_ref, s_ref, _ = quantize(x, bits, symmetric=True)
            if abs(scale - s_ref.item()) > 1e-6 * max(1.0, s_ref.item()):
                return (f"for {bits} bits and max|x| = {x.abs().max().item():.3g} the scale should be "
                        f"max|x| / qmax = {s_ref.item():.5g}, got {float(scale):.5g} "
                        f"(qmax = 2**(num_bits - 1) - 1 = {2 ** (bits - 1) - 1})")
            if not torch.equal(q.detach().double().round().long(), q_ref.long()):
                return (f"q differs from round(x / scale) clamped to [-qmax, qmax] for {bits} bits: "
                        f"expected {q_ref.flatten()[:6].tolist()}..., got {q.flatten()[:6].tolist()}...")
    return None


@register("09.2")
def fake_quant_ste(fn) -> str | None:
    """fn(x, scale, qmin, qmax) -> fake-quantized x with the straight-through gradient."""
    from ..quant import fake_quantize

    if problem := not_a_function(fn, "fake_quant_ste"):
        return problem
    x = torch.linspace(-2.0, 2.0, 41, requires_grad=True)
    y = fn(x, 0.25, -3, 3)
    problem = _is_tensor("the output", y, x.shape)
    if problem:
        return problem
    ref = fake_quantize(x.detach(), 3, symmetric=True, scale=torch.tensor(0.25), zero_point=torch.tensor(0))
    if not torch.allclose(y.detach().float(), ref, atol=1e-6):
        return ("the forward pass should be (clamp(round(x / scale), qmin, qmax)) * scale: "
                f"at x = 1.0 expected {ref[30].item():.3g}, got {y[30].item():.3g}")
    if not y.requires_grad:
        return "no gradient flows through your output: keep x in the graph (e.g. x + (x_q - x).detach())"
    y.sum().backward()
    inside = (torch.round(x.detach() / 0.25) >= -3) & (torch.round(x.detach() / 0.25) <= 3)
    if x.grad is None or not torch.allclose(x.grad, inside.float()):
        return ("the gradient should be 1 where x is inside the grid and 0 where it was clipped "
                "(here |x| > 0.875); multiply the pass-through by that mask")
    return None


@register("09.3")
def per_channel_scales(fn) -> str | None:
    """fn(w, num_bits) -> (C_out,) symmetric scales, one per output channel (axis 0)."""
    from ..quant import compute_qparams, minmax_range

    if problem := not_a_function(fn, "per_channel_scales"):
        return problem
    g = torch.Generator().manual_seed(3)
    for w in (torch.randn(4, 2, 3, 3, generator=g) * torch.tensor([0.1, 1.0, 3.0, 0.5]).view(4, 1, 1, 1),
              torch.randn(10, 7, generator=g)):
        for bits in (8, 4):
            got = fn(w.clone(), bits)
            problem = _is_tensor("the scales", got, (w.shape[0],))
            if problem:
                return problem + " (one scale per output channel)"
            ref, _ = compute_qparams(*minmax_range(w, axis=0), bits, symmetric=True)
            if not torch.allclose(got.float(), ref, rtol=1e-5):
                return (f"channel 0 of a weight with max|w| = {w[0].abs().max().item():.3g} should get "
                        f"scale {ref[0].item():.4g} at {bits} bits, got {got[0].item():.4g}: "
                        "take max|w| over every axis except 0, then divide by qmax")
    return None


@register("09.4")
def mse_clip(fn) -> str | None:
    """fn(x, num_bits, candidates) -> the clipping value c (from candidates) whose
    symmetric grid [-c, c] gives the smallest mean squared error."""
    from ..quant import compute_qparams, fake_quantize

    if problem := not_a_function(fn, "mse_clip"):
        return problem
    g = torch.Generator().manual_seed(4)
    x = torch.cat([torch.randn(500, generator=g), torch.tensor([9.0])])
    candidates = [1.0, 2.0, 3.0, 4.5, 6.0, 9.0]
    for bits in (4, 3, 8):
        got = fn(x.clone(), bits, list(candidates))
        if got is None:
            return "mse_clip returned None: did you forget `return`?"
        try:
            got = float(got)
        except (TypeError, ValueError):
            return f"mse_clip should return one of the candidates (a number), got {type(got).__name__}"
        errs = []
        for c in candidates:
            s, z = compute_qparams(-c, c, bits, symmetric=True)
            errs.append((fake_quantize(x, bits, symmetric=True, scale=s, zero_point=z) - x).pow(2).mean().item())
        best = candidates[min(range(len(errs)), key=errs.__getitem__)]
        if got not in candidates:
            return f"mse_clip should return one of the candidates {candidates}, got {got}"
        if got != best:
            return (f"at {bits} bits clipping at {got} gives MSE {errs[candidates.index(got)]:.4f}, but {best} "
                    f"gives {min(errs):.4f}: try every candidate and keep the smallest error")
    return None
