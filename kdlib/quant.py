"""Affine quantization from scratch: the mapping, observers, fake-quant and QAT wrappers.

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
what quantization-aware training needs. Deployment-grade int8 kernels are the
export chapter's job (ONNX Runtime); this module deliberately does not build
on the deprecated `torch.ao.quantization` workflow.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .utils import eval_mode
from .validation import check_int, check_model, check_number

MIN_BITS, MAX_BITS = 2, 16
METHODS = ("minmax", "percentile", "mse")
_EPS = torch.finfo(torch.float32).eps  # smallest scale we allow (as PyTorch's observers do)


# --------------------------------------------------------------------------- checks

def check_bits(num_bits, name: str = "num_bits") -> int:
    """Raise a clear error unless `num_bits` is an int between 2 and 16; return it.

    Introduced in: notebooks/09_quantization.ipynb
    """
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
    """The observed range of x: (min, max), scalars or (C,) along `axis`.

    Introduced in: notebooks/09_quantization.ipynb
    """
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

    Introduced in: notebooks/09_quantization.ipynb
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

    Introduced in: notebooks/09_quantization.ipynb
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

    Introduced in: notebooks/09_quantization.ipynb
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

    Introduced in: notebooks/09_quantization.ipynb
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
            raise ValueError("this observer has seen no data yet: run kdlib.quant.calibrate(model, loader) "
                             "first, so that every activation range is set")
        return compute_qparams(self.min_val, self.max_val, self.num_bits, symmetric=self.symmetric)

    def extra_repr(self) -> str:
        rng = f"[{self.min_val.item():.3g}, {self.max_val.item():.3g}]" if self.ready else "not calibrated"
        return f"num_bits={self.num_bits}, method={self.method!r}, range={rng}"


# --------------------------------------------------------------------------- QAT wrappers

class _QuantWrapper(nn.Module):
    """Shared logic of QConv2d and QLinear: fake-quantized weights and (optionally) inputs."""

    def __init__(self, module: nn.Module, num_bits: int, *, act_num_bits: int | None = None,
                 quantize_activations: bool = True, per_channel: bool = True, weight_method: str = "minmax",
                 act_method: str = "minmax"):
        super().__init__()
        _check_tensor(module.weight.detach(), "the layer's weight")
        self.module = module
        self.num_bits = check_bits(num_bits)
        self.per_channel, self.weight_method = bool(per_channel), _check_method(weight_method)
        act_bits = num_bits if act_num_bits is None else check_bits(act_num_bits, "act_num_bits")
        self.act_observer = Observer(act_bits, method=act_method) if quantize_activations else None

    def quantized_weight(self) -> torch.Tensor:
        """The weight on its symmetric grid (per output channel by default), with STE gradients."""
        w = self.module.weight
        axis = 0 if self.per_channel else None
        with torch.no_grad():  # the range is a constant for the gradient; the weights were checked at wrap time
            rows = _per_channel(w.detach(), axis)                                   # (C, N) or (1, N)
            if self.weight_method == "mse":
                lo, hi = _mse_rows(rows, self.num_bits, True)
            elif self.weight_method == "minmax":
                lo, hi = rows.amin(1), rows.amax(1)
            else:
                lo, hi = percentile_range(rows, axis=0)
            scale, zp = compute_qparams(lo, hi, self.num_bits, symmetric=True)     # (C,) or (1,)
        qmin, qmax = qrange(self.num_bits, symmetric=True)
        s_b, zp_b = (_broadcast(scale, w, axis), _broadcast(zp.float(), w, axis))
        return FakeQuantSTE.apply(w, s_b.to(w.dtype), zp_b.to(w.dtype), qmin, qmax)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Observe x while calibrating; otherwise put it on the observed activation grid."""
        obs = self.act_observer
        if obs is None:
            return x
        if obs.observing:
            obs.update(x)
            return x
        scale, zp = obs.qparams()
        qmin, qmax = qrange(obs.num_bits)
        return FakeQuantSTE.apply(x, scale.to(x.dtype), zp.to(x.dtype), qmin, qmax)

    def extra_repr(self) -> str:
        acts = f"act_num_bits={self.act_observer.num_bits}" if self.act_observer is not None else "float activations"
        grid = "per-channel" if self.per_channel else "per-tensor"
        return f"num_bits={self.num_bits} ({grid}, {self.weight_method}), {acts}"


class QConv2d(_QuantWrapper):
    """An `nn.Conv2d` whose weights (and inputs) are fake-quantized: (B, C_in, H, W) -> (B, C_out, H', W').

    Introduced in: notebooks/09_quantization.ipynb
    """

    def __init__(self, conv: nn.Conv2d, num_bits: int = 8, **kwargs):
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"QConv2d wraps an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"QConv2d supports padding_mode='zeros' only, got {conv.padding_mode!r}")
        super().__init__(conv, num_bits, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.module
        return F.conv2d(self.quantize_input(x), self.quantized_weight(), c.bias, c.stride, c.padding,
                        c.dilation, c.groups)


class QLinear(_QuantWrapper):
    """An `nn.Linear` whose weights (and inputs) are fake-quantized: (B, in) -> (B, out).

    Introduced in: notebooks/09_quantization.ipynb
    """

    def __init__(self, linear: nn.Linear, num_bits: int = 8, **kwargs):
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QLinear wraps an nn.Linear, got {type(linear).__name__}")
        super().__init__(linear, num_bits, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.quantized_weight(), self.module.bias)


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv equal to bn(conv(x)) in eval mode: W' = W * g, b' = (b - mu) * g + beta,
    with g = gamma / sqrt(var + eps) per output channel."""
    g = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)                        # (C_out,)
    b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    with torch.no_grad():
        folded.weight.copy_(conv.weight.detach() * g.view(-1, 1, 1, 1))
        folded.bias.copy_((b - bn.running_mean) * g + bn.bias.detach())
    return folded.to(conv.weight.device)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` with each BatchNorm2d folded into the Conv2d just before it.

    Deployment runtimes do this before quantizing, so the folded weights are
    the ones that get quantized. Works on `nn.Sequential` containers (at any
    depth) where a BatchNorm2d directly follows a Conv2d; the BatchNorm
    becomes `nn.Identity()` so layer indices stay the same. Other BatchNorms
    are left alone. The copy computes the same function as `model.eval()`.

    Introduced in: notebooks/09_quantization.ipynb
    """
    check_model(model)
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                seq._modules[a], seq._modules[b] = _fold_pair(conv, bn), nn.Identity()
    return model


def prepare_qat(model: nn.Module, num_bits: int = 8, *, quantize_activations: bool = True,
                act_num_bits: int | None = None, per_channel: bool = True, weight_method: str = "minmax",
                act_method: str = "minmax", fold_bn: bool = True) -> nn.Module:
    """A copy of `model` whose Conv2d and Linear layers are fake-quantized (QConv2d, QLinear).

    Weights go on a symmetric `num_bits` grid (per output channel by default),
    recomputed from the current weights at every forward pass, so the copy
    can be trained (quantization-aware training, Jacob et al. 2018) or just
    evaluated (post-training quantization). With `quantize_activations`, the
    input of each wrapped layer goes on an unsigned `act_num_bits` grid whose
    range is set by `calibrate`. The original model is never changed.

    Args:
        model: e.g. the book's StudentCNN.
        num_bits: weight bits, 2 .. 16; act_num_bits defaults to the same.
        per_channel: one weight scale per output channel (else one per layer).
        weight_method, act_method: how ranges are chosen: "minmax", "percentile" or "mse".
        fold_bn: fold BatchNorm into the preceding conv first (see `fold_batchnorm`).
    Returns:
        the fake-quantized copy, in the same train/eval mode as `model`.

    Introduced in: notebooks/09_quantization.ipynb
    """
    check_model(model)
    if any(isinstance(m, _QuantWrapper) for m in model.modules()):
        raise ValueError("model is already prepared for quantization; call prepare_qat on the float model")
    kwargs = dict(act_num_bits=act_num_bits, quantize_activations=quantize_activations, per_channel=per_channel,
                  weight_method=weight_method, act_method=act_method)
    check_bits(num_bits)
    modes = {name: m.training for name, m in model.named_modules()}
    qmodel = fold_batchnorm(model) if fold_bn else copy.deepcopy(model)
    _swap_layers(qmodel, num_bits, kwargs)
    for name, m in qmodel.named_modules():  # each layer (a wrapper and what it wraps) in its own mode
        m.training = modes.get(name, modes.get(name.rpartition(".")[0], model.training))
    return qmodel


def _swap_layers(module: nn.Module, num_bits: int, kwargs: dict) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(module, name, QConv2d(child, num_bits, **kwargs))
        elif isinstance(child, nn.Linear):
            setattr(module, name, QLinear(child, num_bits, **kwargs))
        else:
            _swap_layers(child, num_bits, kwargs)


def quant_layers(model: nn.Module) -> dict[str, _QuantWrapper]:
    """The fake-quantized layers of a prepared model, by name.

    Introduced in: notebooks/09_quantization.ipynb
    """
    check_model(model)
    return {n: m for n, m in model.named_modules() if isinstance(m, _QuantWrapper)}


@torch.no_grad()
def calibrate(model: nn.Module, loader, *, num_batches: int = 8, device=None) -> nn.Module:
    """Post-training calibration: set every activation range from a few batches, then freeze.

    Runs `model` in eval mode on up to `num_batches` batches of `loader`
    with every observer recording (activations stay in float meanwhile),
    then stops the observers so that the ranges stay fixed from then on,
    in evaluation and in quantization-aware training alike.

    Args:
        model: a model returned by `prepare_qat`.
        loader: yields (X, ...) batches with X (B, C, H, W).
    Returns:
        the same model, calibrated (and in its original train/eval mode).

    Introduced in: notebooks/09_quantization.ipynb
    """
    layers = quant_layers(model)
    if not layers:
        raise ValueError("model has no fake-quantized layers; pass the copy returned by prepare_qat")
    check_int(num_batches, "num_batches", low=1)
    observers = [m.act_observer for m in layers.values() if m.act_observer is not None]
    device = device or next(model.parameters()).device
    for obs in observers:
        obs.reset()
        obs.observing = True
    if not hasattr(loader, "__iter__") or isinstance(loader, (str, bytes, dict)):
        raise TypeError(f"loader must yield (X, ...) batches, e.g. a DataLoader, got {type(loader).__name__}")
    try:
        with eval_mode(model):
            _observe(model, loader, num_batches, device)
    finally:
        for obs in observers:
            obs.observing = False
    if observers and not all(obs.ready for obs in observers):
        raise ValueError("the loader yielded no batches; calibrate needs at least one")
    return model


def _observe(model: nn.Module, loader, num_batches: int, device) -> None:
    """Run `model` on up to `num_batches` batches of `loader` (its observers record)."""
    for i, batch in enumerate(loader):
        if i == num_batches:
            break
        if not isinstance(batch, (list, tuple)) or not batch or not isinstance(batch[0], torch.Tensor):
            raise TypeError("loader must yield (X, ...) batches with X a (B, C, H, W) tensor")
        try:
            model(batch[0].to(device))
        except (RuntimeError, ValueError, IndexError) as err:
            raise ValueError(f"the model cannot run on a batch of shape {tuple(batch[0].shape)}: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def integer_weights(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The integer weights a deployed prepared model would store, by layer name.

    Returns:
        {name: (q, scale, zero_point)}: q int32 with the weight's shape; scale
        and zero_point per output channel (C_out,) or scalars.

    Introduced in: notebooks/09_quantization.ipynb
    """
    out = {}
    for name, m in quant_layers(model).items():
        w = m.module.weight.detach()
        axis = 0 if m.per_channel else None
        lo, hi = observe_range(w, m.weight_method, m.num_bits, symmetric=True, axis=axis)
        scale, zp = compute_qparams(lo, hi, m.num_bits, symmetric=True)
        out[name] = (quantize_with(w, scale, zp, m.num_bits, symmetric=True, axis=axis), scale, zp)
    return out


def weight_storage_bytes(model: nn.Module, num_bits: int = 32) -> int:
    """Bytes to store the weights of every Conv2d and Linear at `num_bits` each,
    plus one float32 scale per output channel when num_bits < 32 and the
    biases in float32 (integer kernels keep them as int32: the same size).

    Introduced in: notebooks/09_quantization.ipynb
    """
    if num_bits != 32:
        check_bits(num_bits)
    check_model(model)
    total = 0.0
    for layer in model.modules():  # a wrapper's own layer is visited here too
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            scales = 0 if num_bits == 32 else 4 * layer.weight.shape[0]
            biases = 4 * layer.bias.numel() if layer.bias is not None else 0
            total += layer.weight.numel() * num_bits / 8 + scales + biases
    return math.ceil(total)
