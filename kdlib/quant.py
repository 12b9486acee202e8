"""Affine quantization from scratch: the mapping, range choices, fake-quant and observers.

A real number x is stored as an integer q on a grid of 2^b levels:

    q = clamp(round(x / scale) + zero_point, qmin, qmax)      (quantize)
    x_hat = (q - zero_point) * scale                          (dequantize)

with, for a range [min, max] that always contains 0 (Jacob et al. 2018;
Krishnamoorthi 2018; Nagel et al. 2021):

    asymmetric (unsigned, q in 0 .. 2^b - 1):
        scale = (max - min) / (qmax - qmin)
        zero_point = clamp(round(qmin - min / scale), qmin, qmax)
    symmetric (signed, "narrow" range q in -(2^(b-1) - 1) .. 2^(b-1) - 1):
        scale = max|x| / qmax,  zero_point = 0

Everything here simulates integers in float32 ("fake quantization"), which is
what quantization-aware training needs (`kdlib.qat` wraps a model's layers with it). Deployment-grade int8 kernels are the
export chapter's job (ONNX Runtime); this module deliberately does not build
on the deprecated `torch.ao.quantization` workflow.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .validation import check_int, check_number

MIN_BITS, MAX_BITS = 2, 16
METHODS = ("minmax", "percentile", "mse")
_EPS = torch.finfo(torch.float32).eps  # smallest scale we allow (as PyTorch's observers do)


# --------------------------------------------------------------------------- checks

def check_bits(num_bits, name: str = "num_bits") -> int:
    """Raise a clear error unless `num_bits` is an int between 2 and 16; return it."""
    return check_int(num_bits, name, low=MIN_BITS, high=MAX_BITS,
                     hint="1 bit is binarization (a different technique) and more than 16 bits is no longer "
                          "worth quantizing")


def _check_tensor(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; "
                        "convert it with .float()")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); there is nothing to quantize")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; a quantization grid needs finite values, "
                         "so find where they come from first")
    return x


def _check_axis(axis, ndim: int) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be None (per-tensor) or an int (per-channel), got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for a tensor with {ndim} dimension(s); "
                         f"use an axis between {-ndim} and {ndim - 1}, or None for per-tensor")
    return axis % ndim


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


# --------------------------------------------------------------------------- the mapping

def qrange(num_bits: int = 8, *, symmetric: bool = False) -> tuple[int, int]:
    """The integer range (qmin, qmax) of a `num_bits` grid.

    Asymmetric grids are unsigned, 0 .. 2^b - 1. Symmetric grids are signed
    and "narrow", -(2^(b-1) - 1) .. 2^(b-1) - 1, so that 0 sits in the middle
    (at 2 bits that is the ternary grid -1, 0, 1).

    Introduced in: notebooks/09_quantization.ipynb
    """
    check_bits(num_bits)
    if symmetric:
        qmax = 2 ** (num_bits - 1) - 1
        return -qmax, qmax
    return 0, 2 ** num_bits - 1


def _per_channel(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """View x as (C, N) with channels along `axis`, or (1, N) for per-tensor."""
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def _broadcast(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Shape a per-channel parameter (C,) so it broadcasts against x along `axis`."""
    if axis is None or p.ndim == 0:
        return p.reshape(())
    shape = [1] * x.ndim
    shape[axis] = -1
    return p.reshape(shape)


def minmax_range(x: torch.Tensor, *, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The observed range of x: (min, max), scalars or (C,) along `axis`."""
    _check_tensor(x)
    rows = _per_channel(x.detach(), _check_axis(axis, x.ndim))
    lo, hi = rows.amin(1), rows.amax(1)
    return (lo[0], hi[0]) if axis is None else (lo, hi)


def percentile_range(x: torch.Tensor, percentile: float = 99.99, *,
                     axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip the range to the (100 - p)-th and p-th percentiles of x, ignoring rare outliers.

    Args:
        x: any shape.
        percentile: p in (50, 100]; 100 gives the min-max range.
    Returns:
        (low, high), scalars or (C,) along `axis`.

    Introduced in: notebooks/09_quantization.ipynb
    """
    _check_tensor(x)
    check_number(percentile, "percentile", low=50.0, high=100.0, low_open=True, hint="e.g. 99.9")
    rows = _per_channel(x.detach(), _check_axis(axis, x.ndim))
    n = rows.shape[1]
    k_hi = min(n, max(1, math.ceil(n * percentile / 100)))
    k_lo = n + 1 - k_hi
    lo, hi = rows.kthvalue(k_lo, dim=1).values, rows.kthvalue(k_hi, dim=1).values
    return (lo[0], hi[0]) if axis is None else (lo, hi)


def mse_range(x: torch.Tensor, num_bits: int = 8, *, symmetric: bool = False, axis: int | None = None,
              grid: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipping range that minimises the mean squared quantization error of x.

    Tries the ranges a * [min, max] for a = 1/grid, 2/grid, ..., 1 (the
    min-max range shrunk towards 0) and keeps, for each channel, the one with
    the smallest mean((fake_quantize(x) - x)^2) (Nagel et al. 2021, sec. 3.3).

    Returns:
        (low, high), scalars or (C,) along `axis`.

    Introduced in: notebooks/09_quantization.ipynb
    """
    _check_tensor(x)
    check_bits(num_bits)
    check_int(grid, "grid", low=1)
    axis = _check_axis(axis, x.ndim)
    lo, hi = _mse_rows(_per_channel(x.detach().float(), axis), num_bits, symmetric, grid)
    return (lo[0], hi[0]) if axis is None else (lo, hi)


def _mse_rows(rows: torch.Tensor, num_bits: int, symmetric: bool, grid: int = 100):
    """mse_range on rows (C, N) that are already checked: returns (low, high), each (C,)."""
    lo, hi = rows.amin(1).clamp(max=0), rows.amax(1).clamp(min=0)    # (C,)
    qmin, qmax = qrange(num_bits, symmetric=symmetric)
    ratios = torch.arange(1, grid + 1, dtype=torch.float32) / grid        # (G,)
    errs = []
    # candidates per chunk: about 2**20 values (4 MB), which bounds memory and stays in cache
    step = max(1, 2**20 // rows.numel())
    for a in ratios.split(step):
        scale, zp = compute_qparams(a[:, None] * lo, a[:, None] * hi, num_bits, symmetric=symmetric)  # (g, C)
        scale, zp = scale[..., None], zp[..., None].float()                                         # (g, C, 1)
        # clamp(round(rows / scale) + zp) - zp) * scale - rows, in place in one (g, C, N) buffer:
        # the same arithmetic in the same order as out-of-place ops, about 5 times faster
        err = rows / scale
        err.round_().add_(zp).clamp_(qmin, qmax).sub_(zp).mul_(scale).sub_(rows)
        errs.append(err.square_().mean(-1))                                                         # (g, C)
    best = ratios[torch.cat(errs).argmin(0)]   # (C,) the first (smallest) ratio wins ties
    return best * lo, best * hi

def compute_qparams(min_val, max_val, num_bits: int = 8, *,
                    symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of the grid that covers [min_val, max_val].

    The range is first widened to contain 0, so that 0 is exactly
    representable (zero padding, ReLU outputs; Jacob et al. 2018). Then

        asymmetric: scale = (max - min) / (qmax - qmin),
                    zero_point = clamp(round(qmin - min / scale), qmin, qmax)
        symmetric:  scale = max(|min|, |max|) / qmax,  zero_point = 0

    A zero range (an all-zero tensor) gets the smallest scale, float32's eps.

    Args:
        min_val, max_val: floats or tensors of the same shape (scalar or (C,)).
    Returns:
        (scale, zero_point): float32 and int32 tensors of that shape.

    Introduced in: notebooks/09_quantization.ipynb
    """
    qmin, qmax = qrange(num_bits, symmetric=symmetric)
    lo = _as_tensor(min_val, "min_val", torch.float32)
    hi = _as_tensor(max_val, "max_val", torch.float32)
    if lo.shape != hi.shape:
        raise ValueError(f"min_val {tuple(lo.shape)} and max_val {tuple(hi.shape)} must have the same shape")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("min_val and max_val must be finite")
    if (lo > hi).any():
        raise ValueError("min_val must be <= max_val (did you swap them?)")
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if symmetric:
        scale = (torch.maximum(-lo, hi) / qmax).clamp(min=_EPS)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    scale = ((hi - lo) / (qmax - qmin)).clamp(min=_EPS)
    zero_point = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def _as_tensor(x, name: str, dtype=None) -> torch.Tensor:
    """torch.as_tensor(x), with a clear error for something that is not a number or a tensor."""
    try:
        return torch.as_tensor(x, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number or a tensor, got {type(x).__name__}") from None


def _check_qparams(x, scale, zero_point, axis):
    scale = _as_tensor(scale, "scale", torch.float32)
    zero_point = _as_tensor(zero_point, "zero_point")
    if scale.shape != zero_point.shape:
        raise ValueError(f"scale {tuple(scale.shape)} and zero_point {tuple(zero_point.shape)} "
                         "must have the same shape")
    if not (torch.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("scale must be finite and > 0")
    if axis is None and scale.numel() != 1:
        raise ValueError(f"per-tensor quantization needs one scale, got {scale.numel()}; "
                         "pass the channel axis for per-channel scales")
    if axis is not None and scale.ndim == 1 and scale.numel() != x.shape[axis]:
        raise ValueError(f"{scale.numel()} scales for {x.shape[axis]} channels along axis {axis}")
    return _broadcast(scale, x, axis), _broadcast(zero_point.to(torch.float32), x, axis)


def quantize_with(x: torch.Tensor, scale, zero_point, num_bits: int = 8, *, symmetric: bool = False,
                  axis: int | None = None) -> torch.Tensor:
    """Quantize x on a given grid: q = clamp(round(x / scale) + zero_point, qmin, qmax).

    Values outside the grid's range are clipped to qmin or qmax. Rounding is
    to the nearest integer, ties to even (as `torch.round`).

    Args:
        x: float tensor, any shape.
        scale, zero_point: scalars, or (C,) for per-channel along `axis`.
    Returns:
        q: int32 tensor, same shape as x.
    """
    _check_tensor(x)
    qmin, qmax = qrange(num_bits, symmetric=symmetric)
    s, zp = _check_qparams(x, scale, zero_point, _check_axis(axis, x.ndim))
    return torch.clamp(torch.round(x / s) + zp, qmin, qmax).to(torch.int32)


def quantize(x: torch.Tensor, num_bits: int = 8, *, symmetric: bool = False,
             axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize x on the min-max grid of its own range (per-tensor, or per-channel along `axis`).

    Args:
        x: float tensor, any shape (e.g. conv weights (C_out, C_in, kH, kW), axis=0).
        num_bits: 2 .. 16.
        symmetric: signed grid with zero_point 0 (weights), else unsigned (activations).
        axis: None for one scale, or the channel axis for one scale per channel.
    Returns:
        (q, scale, zero_point): q int32 with x's shape; scale float32 and
        zero_point int32, scalars or (C,).

    Introduced in: notebooks/09_quantization.ipynb
    """
    _check_tensor(x)
    check_bits(num_bits)
    lo, hi = minmax_range(x, axis=axis)
    scale, zero_point = compute_qparams(lo, hi, num_bits, symmetric=symmetric)
    return quantize_with(x, scale, zero_point, num_bits, symmetric=symmetric, axis=axis), scale, zero_point


def dequantize(q: torch.Tensor, scale, zero_point, *, axis: int | None = None) -> torch.Tensor:
    """Map integers back to reals: x_hat = (q - zero_point) * scale.

    Args:
        q: integer tensor, any shape.
        scale, zero_point: scalars, or (C,) for per-channel along `axis`.
    Returns:
        float32 tensor with q's shape.

    Introduced in: notebooks/09_quantization.ipynb
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor of integers, got {type(q).__name__}")
    if q.is_floating_point() or q.dtype == torch.bool:
        raise TypeError(f"q must hold integers (from quantize), got dtype {q.dtype}")
    if q.numel() == 0:
        raise ValueError("q is empty; there is nothing to dequantize")
    s, zp = _check_qparams(q, scale, zero_point, _check_axis(axis, q.ndim))
    return (q.to(torch.float32) - zp) * s


class FakeQuantSTE(torch.autograd.Function):
    """Quantize-dequantize in the forward pass; the straight-through estimator backward.

    Rounding has zero gradient almost everywhere, so training through it
    would stop. The straight-through estimator (Bengio et al. 2013) passes
    the gradient through unchanged where x falls inside the grid, and sets
    it to zero where x was clipped (nothing changes there if x moves a bit).
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        q = torch.round(x / scale) + zero_point
        inside = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(inside)
        return (torch.clamp(q, qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad_out):
        (inside,) = ctx.saved_tensors
        return grad_out * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, num_bits: int = 8, *, symmetric: bool = False, axis: int | None = None,
                  scale=None, zero_point=None) -> torch.Tensor:
    """dequantize(quantize(x)) in float, differentiable with the straight-through estimator.

    The grid is x's own min-max range unless `scale` and `zero_point` are
    given (e.g. from an observer). The gradient with respect to x is 1 inside
    the grid and 0 where x is clipped (Bengio et al. 2013).

    Args:
        x: float tensor, any shape.
        scale, zero_point: optional scalars, or (C,) for per-channel along `axis`.
    Returns:
        float tensor with x's shape, taking at most 2^num_bits distinct values
        (per channel).

    Introduced in: notebooks/09_quantization.ipynb
    """
    _check_tensor(x)
    qmin, qmax = qrange(num_bits, symmetric=symmetric)
    axis = _check_axis(axis, x.ndim)
    if (scale is None) != (zero_point is None):
        raise ValueError("pass both scale and zero_point, or neither (to use x's own range)")
    if scale is None:
        scale, zero_point = compute_qparams(*minmax_range(x, axis=axis), num_bits, symmetric=symmetric)
    s, zp = _check_qparams(x, scale, zero_point, axis)
    return FakeQuantSTE.apply(x, s.to(x.dtype), zp.to(x.dtype), qmin, qmax)


def quantization_error(x: torch.Tensor, num_bits: int = 8, *, symmetric: bool = False,
                       axis: int | None = None, method: str = "minmax", percentile: float = 99.99) -> float:
    """Root-mean-square error of fake-quantizing x with a range chosen by `method`.

    Introduced in: notebooks/09_quantization.ipynb
    """
    lo, hi = observe_range(x, method, num_bits, symmetric=symmetric, axis=axis, percentile=percentile)
    scale, zp = compute_qparams(lo, hi, num_bits, symmetric=symmetric)
    x_hat = fake_quantize(x.detach(), num_bits, symmetric=symmetric, axis=axis, scale=scale, zero_point=zp)
    return (x_hat - x.detach()).pow(2).mean().sqrt().item()


def observe_range(x: torch.Tensor, method: str = "minmax", num_bits: int = 8, *, symmetric: bool = False,
                  axis: int | None = None, percentile: float = 99.99) -> tuple[torch.Tensor, torch.Tensor]:
    """The range of x chosen by `method`: "minmax", "percentile" or "mse".
    """
    _check_method(method)
    if method == "minmax":
        return minmax_range(x, axis=axis)
    if method == "percentile":
        return percentile_range(x, percentile, axis=axis)
    return mse_range(x, num_bits, symmetric=symmetric, axis=axis)


# --------------------------------------------------------------------------- observers

class Observer(nn.Module):
    """Records the range of the tensors it sees, to set an activation grid.

    While `observing` is True, each call to `update(x)` folds the batch's
    range into the running one: "minmax" keeps the extremes over all
    batches; "percentile" and "mse" average the per-batch ranges.
    """

    def __init__(self, num_bits: int = 8, *, symmetric: bool = False, method: str = "minmax",
                 percentile: float = 99.99):
        super().__init__()
        self.num_bits, self.symmetric = check_bits(num_bits), bool(symmetric)
        self.method, self.percentile = _check_method(method), percentile
        self.observing = False
        self.register_buffer("min_val", torch.tensor(float("nan")))
        self.register_buffer("max_val", torch.tensor(float("nan")))
        self.register_buffer("num_batches", torch.tensor(0))

    @property
    def ready(self) -> bool:
        """True once at least one batch has been observed."""
        return int(self.num_batches) > 0

    def reset(self) -> None:
        """Forget every range seen so far."""
        self.min_val.fill_(float("nan"))
        self.max_val.fill_(float("nan"))
        self.num_batches.zero_()

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold the range of one batch x into the running range."""
        lo, hi = observe_range(x, self.method, self.num_bits, symmetric=self.symmetric,
                               percentile=self.percentile)
        n = int(self.num_batches)
        if n == 0:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        elif self.method == "minmax":
            self.min_val.copy_(torch.minimum(self.min_val, lo))
            self.max_val.copy_(torch.maximum(self.max_val, hi))
        else:  # running mean of the per-batch ranges
            self.min_val.add_((lo - self.min_val) / (n + 1))
            self.max_val.add_((hi - self.max_val) / (n + 1))
        self.num_batches += 1

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) of the observed range."""
        if not self.ready:
            raise ValueError("this observer has seen no data yet: run kdlib.qat.calibrate(model, loader) "
                             "first, so that every activation range is set")
        return compute_qparams(self.min_val, self.max_val, self.num_bits, symmetric=self.symmetric)

    def extra_repr(self) -> str:
        rng = f"[{self.min_val.item():.3g}, {self.max_val.item():.3g}]" if self.ready else "not calibrated"
        return f"num_bits={self.num_bits}, method={self.method!r}, range={rng}"
