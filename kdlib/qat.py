"""Quantization-aware training: a model's Conv2d and Linear layers fake-quantized.

`prepare_qat` returns a copy of a model whose layers are wrapped (`QConv2d`, `QLinear`): the
weights go on a symmetric grid at every forward pass and, optionally, each layer's input on an
unsigned grid whose range `calibrate` sets from a few batches. The copy trains like any model
(the rounding passes gradients straight through, `kdlib.quant.FakeQuantSTE`), and
`integer_weights` / `weight_storage_bytes` tell what a deployed version would store.
BatchNorm is folded into the convolutions first (`fold_batchnorm`), as deployment runtimes do.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .quant import METHODS, Observer, check_bits, compute_qparams, fake_quantize, observe_range, quantize_with
from .utils import eval_mode
from .validation import check_choice, check_int, check_model, check_tensor


class _QuantWrapper(nn.Module):
    """Shared logic of QConv2d and QLinear: fake-quantized weights and (optionally) inputs."""

    def __init__(self, module: nn.Module, num_bits: int, *, act_num_bits: int | None = None,
                 quantize_activations: bool = True, per_channel: bool = True, weight_method: str = "minmax",
                 act_method: str = "minmax"):
        super().__init__()
        check_tensor(module.weight.detach(), "the layer's weight", floating=True)
        self.module = module
        self.num_bits = check_bits(num_bits)
        self.per_channel, self.weight_method = bool(per_channel), check_choice(weight_method, "weight_method", METHODS)
        act_bits = num_bits if act_num_bits is None else check_bits(act_num_bits, "act_num_bits")
        self.act_observer = Observer(act_bits, method=act_method) if quantize_activations else None

    def quantized_weight(self) -> torch.Tensor:
        """The weight on its symmetric grid (per output channel by default), with STE gradients."""
        w, axis = self.module.weight, 0 if self.per_channel else None
        with torch.no_grad():  # the range is a constant for the gradient
            lo, hi = observe_range(w.detach(), self.weight_method, self.num_bits, symmetric=True, axis=axis)
            scale, zp = compute_qparams(lo, hi, self.num_bits, symmetric=True)  # (C,) or scalars
        return fake_quantize(w, self.num_bits, symmetric=True, axis=axis, scale=scale, zero_point=zp)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Observe x while calibrating; otherwise put it on the observed activation grid."""
        obs = self.act_observer
        if obs is None:
            return x
        if obs.observing:
            obs.update(x)
            return x
        scale, zp = obs.qparams()
        return fake_quantize(x, obs.num_bits, scale=scale, zero_point=zp)

    def extra_repr(self) -> str:
        acts = f"act_num_bits={self.act_observer.num_bits}" if self.act_observer is not None else "float activations"
        grid = "per-channel" if self.per_channel else "per-tensor"
        return f"num_bits={self.num_bits} ({grid}, {self.weight_method}), {acts}"


class QConv2d(_QuantWrapper):
    """An `nn.Conv2d` whose weights (and inputs) are fake-quantized: (B, C_in, H, W) -> (B, C_out, H', W')."""

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
    """An `nn.Linear` whose weights (and inputs) are fake-quantized: (B, in) -> (B, out)."""

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
    """The fake-quantized layers of a prepared model, by name."""
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
