"""Unstructured and structured pruning, and prune-then-fine-tune schedules.

Unstructured (magnitude) pruning zeroes individual weights through
`torch.nn.utils.prune`: the tensor keeps its shape, so a dense file and a
dense kernel see no change. Structured (channel) pruning removes whole
output channels of convolutions and returns a genuinely smaller dense
model. Either can be followed by fine-tuning with labels (`kdlib.train.train`)
or with a teacher (`kdlib.train.distill`).

Introduced in: notebooks/08_pruning.ipynb
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.utils.prune as tprune
from torch import nn
from torch.utils.data import DataLoader

from .inference import evaluate
from .train import distill, train
from .utils import eval_mode
from .validation import check_choice, check_int, check_model, check_number

PRUNABLE = (nn.Conv2d, nn.Linear)
SCOPES = ("global", "layer")
CRITERIA = ("l1", "l2")

# Layers that channel_prune may step over between a convolution and the next
# conv or Linear: they act on each channel separately (or flatten), so
# dropping a channel before them drops it after them too.
_CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardtanh,
                nn.Tanh, nn.Sigmoid, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d)


# ---------------------------------------------------------------- checks

def check_amount(amount, name: str = "amount") -> float:
    """Raise a clear error unless `amount` is a fraction in [0, 1); return it as a float."""
    return check_number(amount, name, low=0.0, high=1.0, high_open=True,
                        hint="the fraction of weights or channels to remove (0.9 removes 90%)")


# ---------------------------------------------------------------- unstructured

def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The conv and Linear layers of `model` whose `.weight` pruning acts on, by name."""
    check_model(model)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
    return layers


def is_pruned(model: nn.Module) -> bool:
    """True while some layer carries a pruning mask (`weight_orig` and `weight_mask`)."""
    return tprune.is_pruned(check_model(model))


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight a layer computes with: `weight_orig * weight_mask` while a mask
    is attached (fresh, even after an optimiser step), else `weight`. Detached.
    """
    if hasattr(layer, "weight_mask"):
        return (layer.weight_orig * layer.weight_mask).detach()
    if not isinstance(layer, nn.Module) or not isinstance(getattr(layer, "weight", None), torch.Tensor):
        raise TypeError(f"layer must be a layer with a weight (Conv2d, Linear), got {type(layer).__name__}")
    return layer.weight.detach()


def magnitude_masks(model: nn.Module, amount: float, *, scope: str = "global") -> dict[str, torch.Tensor]:
    """The keep-masks of magnitude pruning: 1 for weights that stay, 0 for the pruned.

    The `k = round(amount * n)` weights of smallest |w| are pruned, where n
    counts all prunable weights together (scope="global") or each layer's
    weights on its own (scope="layer"). Weights that are already masked count
    as the smallest, so masks only ever grow.

    Args:
        model: its Conv2d and Linear `.weight` tensors are ranked.
        amount: target fraction of zeros, in [0, 1).
        scope: "global" (one threshold for the whole model) or "layer".
    Returns:
        layer name -> mask with the shape of that layer's weight.
    """
    amount = check_amount(amount)
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    layers = prunable_layers(model)
    scores = {}
    for name, m in layers.items():
        s = effective_weight(m).abs().flatten()
        if hasattr(m, "weight_mask"):
            s[m.weight_mask.flatten() == 0] = -1.0  # already pruned: below every magnitude
        scores[name] = s
    groups = [list(layers)] if scope == "global" else [[name] for name in layers]
    masks = {}
    for names in groups:
        flat = torch.cat([scores[n] for n in names])
        k = round(amount * flat.numel())
        already = int((flat < 0).sum())
        if k < already:
            raise ValueError(f"the model is already {already / flat.numel():.1%} sparse in "
                             f"{'the whole model' if scope == 'global' else names[0]}, more than "
                             f"amount={amount}; pruning cannot regrow weights: start from an unpruned copy")
        keep = torch.ones_like(flat)
        keep[torch.topk(flat, k, largest=False).indices] = 0.0
        for n, part in zip(names, keep.split([scores[n].numel() for n in names])):
            masks[n] = part.view_as(layers[n].weight)
    return masks


def magnitude_prune(model: nn.Module, amount: float, *, scope: str = "global") -> nn.Module:
    """Zero the smallest-magnitude weights of every Conv2d and Linear, in place
    (Han et al. 2015, "Learning both weights and connections").

    Uses `torch.nn.utils.prune`: each layer's `weight` becomes
    `weight_orig * weight_mask`, so the zeros stay zero while the model is
    fine-tuned. Calling it again with a larger `amount` prunes further
    (amount is the target total, not an increment). Biases and BatchNorm
    are left alone. Call `make_permanent` to bake the masks in.

    Args:
        model: pruned in place.
        amount: fraction of prunable weights to zero, in [0, 1).
        scope: "global" ranks all weights together, so layers with many small
            weights lose more; "layer" prunes `amount` of each layer.
    Returns:
        the same model, for chaining.

    Introduced in: notebooks/08_pruning.ipynb
    """
    layers = prunable_layers(model)
    for name, mask in magnitude_masks(model, amount, scope=scope).items():
        tprune.custom_from_mask(layers[name], "weight", mask)  # ANDed with any earlier mask
    return model


def sparsity(model: nn.Module) -> dict:
    """Fraction of zero weights among the Conv2d and Linear weights.

    Counts exact zeros of each layer's (effective) `.weight`, so it works
    with masks attached, after `make_permanent`, or on a model never pruned.

    Returns:
        {"global": zeros / all prunable weights, "layers": {name: fraction}}.

    Introduced in: notebooks/08_pruning.ipynb
    """
    layers = prunable_layers(model)
    zeros = {n: int((effective_weight(m) == 0).sum()) for n, m in layers.items()}
    total = sum(m.weight.numel() for m in layers.values())
    return {"global": sum(zeros.values()) / total,
            "layers": {n: zeros[n] / m.weight.numel() for n, m in layers.items()}}


def make_permanent(model: nn.Module) -> nn.Module:
    """Remove the pruning reparametrisation in place: each masked `weight`
    becomes a plain parameter holding `weight_orig * weight_mask`.

    Afterwards the state dict holds one `weight` per layer again (not
    `weight_orig` and `weight_mask`), and further training may regrow the
    zeros. Layers without a mask are left alone.

    Returns:
        the same model, for chaining.

    Introduced in: notebooks/08_pruning.ipynb
    """
    for m in check_model(model).modules():
        for name, _ in list(m.named_parameters(recurse=False)):
            if name.endswith("_orig") and hasattr(m, name[:-5] + "_mask"):
                tprune.remove(m, name[:-5])
    return model


# ---------------------------------------------------------------- structured

def filter_norms(conv: nn.Conv2d, criterion: str = "l1") -> torch.Tensor:
    """The norm of each output filter of a convolution: (C_out,).

    "l1" sums |w| over a filter's (C_in, kH, kW) weights, as in Li et al.
    (2017), "Pruning filters for efficient ConvNets"; "l2" takes the square
    root of the sum of squares.

    Introduced in: notebooks/08_pruning.ipynb
    """
    check_choice(criterion, "criterion", CRITERIA)
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    w = conv.weight.detach().flatten(1)  # (C_out, C_in * kH * kW)
    return w.abs().sum(1) if criterion == "l1" else w.pow(2).sum(1).sqrt()


def _check_multiple(multiple_of) -> int:
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int):
        raise TypeError(f"multiple_of must be a positive int, got {type(multiple_of).__name__}")
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be a positive int (1: no rounding, 8: the SIMD width of fp32 "
                         f"kernels on x86), got {multiple_of!r}")
    return multiple_of


def channels_to_keep(conv: nn.Conv2d, amount: float, criterion: str = "l1", *,
                     multiple_of: int = 1) -> torch.Tensor:
    """Sorted indices of the output channels that survive: the
    `C_out - round(amount * C_out)` filters of largest norm (at least one).

    With `multiple_of=m`, that count is rounded to the nearest multiple of m
    (at least m, at most C_out; a layer with fewer than m channels is left
    whole). Runtimes vectorise over channels in blocks (8 fp32 values for
    AVX2), so 8 or 16 channels run faster than 9 or 18: chapter 13 measures it.
    """
    amount = check_amount(amount)
    m = _check_multiple(multiple_of)
    norms = filter_norms(conv, criterion)
    return torch.topk(norms, keep_count(norms.numel(), amount, m)).indices.sort().values


def keep_count(channels: int, amount: float, multiple_of: int = 1) -> int:
    """How many of `channels` stay when `amount` of them go: `channels - round(amount * channels)`
    (at least one), rounded to the nearest multiple of `multiple_of` (at least one multiple,
    at most `channels`; fewer channels than `multiple_of` stay whole).

    For example 12 channels at amount 0.25 keep 9, or 8 with multiple_of=8: a third removed.
    """
    check_int(channels, "channels", low=1)
    amount, m = check_amount(amount), _check_multiple(multiple_of)
    n_keep = max(1, channels - round(amount * channels))
    if m > 1:
        n_keep = channels if channels < m else min(channels, m * max(1, round(n_keep / m)))
    return n_keep


def _why_not_flat(model: nn.Module) -> str | None:
    """None when channel_prune can follow `model`, else the reason it cannot."""
    if not isinstance(model, nn.Sequential):
        blocks = sorted({type(m).__name__ for m in model.modules()
                         if "Block" in type(m).__name__ or "Bottleneck" in type(m).__name__})
        hint = (f" (it has residual blocks, {', '.join(blocks)}, whose skip connections add two tensors "
                "that must keep the same channels)" if blocks else "")
        return (f"{type(model).__name__} is not a flat nn.Sequential, so channel_prune cannot see how its "
                f"forward() connects the layers{hint}")
    if is_pruned(model):
        return "the model still carries pruning masks; call make_permanent(model) first"
    for i, m in enumerate(model):
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            return (f"layer {i} is a grouped convolution (groups={m.groups}): its input and output "
                    "channels are tied, and channel_prune only handles groups=1")
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.Flatten, *_CHANNELWISE)):
            continue
        if len(list(m.children())):
            return (f"layer {i} ({type(m).__name__}) is a block with sub-layers (for example a residual "
                    "block); channel_prune walks a flat nn.Sequential of plain layers only")
        return (f"layer {i} ({type(m).__name__}) is not one channel_prune knows how to slice; "
                "it handles Conv2d, BatchNorm2d, Linear, Flatten, pooling, dropout and activations")
    return None


def _slice_conv(conv: nn.Conv2d, out_idx=None, in_idx=None) -> nn.Conv2d:
    w = conv.weight.detach()  # (C_out, C_in, kH, kW)
    w = w if out_idx is None else w[out_idx]
    w = w if in_idx is None else w[:, in_idx]
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    new.weight.data.copy_(w)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach() if out_idx is None else conv.bias.detach()[out_idx])
    return new.to(w.device)


def _device(m: nn.Module) -> torch.device:
    return next((t.device for t in [*m.parameters(), *m.buffers()]), torch.device("cpu"))


def _slice_bn(bn: nn.BatchNorm2d, idx) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[idx])
            new.bias.copy_(bn.bias[idx])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[idx])
            new.running_var.copy_(bn.running_var[idx])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.to(_device(bn))


def _slice_linear_inputs(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(idx), lin.out_features, bias=lin.bias is not None)
    with torch.no_grad():
        new.weight.copy_(lin.weight[:, idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return new.to(lin.weight.device)


def _shapes_before(model: nn.Sequential, example_input: torch.Tensor) -> list[tuple]:
    """The input shape of every layer of a Sequential, run once on `example_input`."""
    shapes, x = [], example_input
    try:
        with eval_mode(model), torch.no_grad():
            for m in model:
                shapes.append(tuple(x.shape))
                x = m(x)
    except RuntimeError as err:
        raise ValueError(f"the model could not run on an input of shape {tuple(example_input.shape)}: "
                         f"{str(err).splitlines()[0]}") from None
    shapes.append(tuple(x.shape))
    return shapes


def _consumer(model: nn.Sequential, i: int) -> int | None:
    """Index of the conv or Linear that reads the output of conv `i` (None if none does)."""
    for j in range(i + 1, len(model)):
        if isinstance(model[j], PRUNABLE):
            return j
    return None


def channel_prune(model: nn.Module, amount: float, example_input: torch.Tensor, *,
                  criterion: str = "l1", multiple_of: int = 1) -> nn.Sequential:
    """Remove output channels of every convolution and return a smaller dense model
    (filter pruning, Li et al. 2017, "Pruning filters for efficient ConvNets").

    Walks a flat `nn.Sequential` (conv, BatchNorm, activation, pool, ...,
    Flatten, Linear). In each Conv2d that feeds another layer, the
    `round(amount * C_out)` filters of smallest L1 (or L2) norm go; the
    BatchNorm after it keeps the matching entries of its weight, bias and
    running statistics; the next conv loses the matching input channels, and
    a Linear after a Flatten loses the matching blocks of H*W input features.
    Parameters, MACs, file size and latency all fall. A conv whose output is
    the model's output is left whole.

    Args:
        model: a flat nn.Sequential; never modified.
        amount: fraction of each conv's output channels to remove, in [0, 1);
            at least one channel always stays.
        example_input: (1, C, H, W) input, used to find the spatial size at the
            Flatten and to check the result runs.
        criterion: "l1" or "l2", the filter norm that ranks channels.
        multiple_of: round each conv's kept channels to a multiple of this
            (see `channels_to_keep`); 1 keeps exactly `amount`.
    Returns:
        a new nn.Sequential in the same train/eval mode as `model`; with
        amount=0 it computes exactly what `model` computes.
    Raises:
        ValueError: for an architecture it cannot follow (residual blocks,
            grouped convolutions, layers it does not know, masks still attached).

    Introduced in: notebooks/08_pruning.ipynb
    """
    check_model(model)
    amount = check_amount(amount)
    _check_multiple(multiple_of)
    check_choice(criterion, "criterion", CRITERIA)
    if not isinstance(example_input, torch.Tensor):
        raise TypeError("example_input must be a tensor, e.g. torch.zeros(1, *input_shape)")
    problem = _why_not_flat(model)
    if problem:
        raise ValueError(f"channel_prune cannot prune this model: {problem}. "
                         "Use magnitude_prune, or build the smaller model by hand.")
    shapes = _shapes_before(model, example_input)
    layers = [copy.deepcopy(m) for m in model]
    for i, m in enumerate(model):
        if not isinstance(m, nn.Conv2d) or (j := _consumer(model, i)) is None:
            continue
        keep = channels_to_keep(layers[i], amount, criterion, multiple_of=multiple_of)  # ranks the weights that remain
        layers[i] = _slice_conv(layers[i], out_idx=keep)
        for k in range(i + 1, j):
            if isinstance(model[k], nn.BatchNorm2d):
                layers[k] = _slice_bn(model[k], keep)
        if isinstance(model[j], nn.Conv2d):
            layers[j] = _slice_conv(layers[j], in_idx=keep)
        else:
            layers[j] = _slice_linear_inputs(layers[j], _linear_columns(model, i, j, keep, shapes))
    return _assemble(model, layers, example_input, shapes)


def _linear_columns(model, i, j, keep, shapes) -> torch.Tensor:
    """Input features of Linear `j` that come from the kept channels of conv `i`."""
    flat = [k for k in range(i + 1, j) if isinstance(model[k], nn.Flatten)]
    if not flat or len(shapes[flat[0]]) != 4:
        raise ValueError(f"channel_prune cannot prune this model: conv layer {i} feeds Linear layer {j} "
                         "without a Flatten of a (B, C, H, W) tensor between them")
    _, C, H, W = shapes[flat[0]]
    hw = torch.arange(H * W)
    return (keep.to("cpu")[:, None] * (H * W) + hw[None, :]).flatten()  # channel-major, as Flatten orders


def _assemble(model, layers, example_input, shapes) -> nn.Sequential:
    new = nn.Sequential(*layers).train(model.training)
    for attr in ("input_shape", "num_classes"):
        if hasattr(model, attr):
            setattr(new, attr, getattr(model, attr))
    out = _shapes_before(new, example_input)[-1]
    if out != shapes[-1]:
        raise ValueError(f"channel pruning changed the output shape from {shapes[-1]} to {out}; "
                         "the model mixes channels in a way channel_prune cannot follow")
    return new


# ---------------------------------------------------------------- schedules

def gradual_schedule(final: float, num_steps: int, *, initial: float = 0.0) -> list[float]:
    """Sparsity targets that rise quickly, then level off (Zhu & Gupta 2017):

        s_t = s_f + (s_i - s_f) * (1 - t / n)^3,   t = 1..n

    Args:
        final: the last target s_f, in [0, 1).
        num_steps: n, the number of prune steps.
        initial: s_i, the sparsity before the first step.
    Returns:
        n increasing targets ending exactly at `final`.
    """
    final, initial = check_amount(final, "final"), check_amount(initial, "initial")
    check_int(num_steps, "num_steps", low=1)
    if initial > final:
        raise ValueError(f"initial ({initial}) must not exceed final ({final})")
    return [final + (initial - final) * (1 - t / num_steps) ** 3 for t in range(1, num_steps + 1)]


def _finetune(model, train_loader, teacher, *, T, alpha, num_epochs, lr, seed) -> None:
    if teacher is None:
        train(model, train_loader, num_epochs=num_epochs, lr=lr, progress=False, seed=seed)
    else:
        distill(model, teacher, train_loader, T=T, alpha=alpha, num_epochs=num_epochs, lr=lr,
                progress=False, seed=seed)


def prune_and_finetune(model: nn.Module, amounts, train_loader: DataLoader, *, structured: bool = False,
                       example_input: torch.Tensor | None = None, scope: str = "global",
                       teacher: nn.Module | None = None, T: float = 4.0, alpha: float = 0.9,
                       num_epochs: int = 1, lr: float = 1e-3, val_loader: DataLoader | None = None,
                       seed: int = 0, callback: Callable | None = None) -> tuple[nn.Module, list[dict]]:
    """Iterative pruning: prune to each target in `amounts`, then fine-tune, in turn.

    The fine-tune is plain cross-entropy (`kdlib.train.train`) when `teacher`
    is None, else distillation from `teacher` (`kdlib.train.distill`, e.g.
    the unpruned model). Unstructured masks stay attached during the run, so
    pruned weights stay zero, and are baked in at the end.

    Args:
        model: the starting model; never modified (a copy is pruned).
        amounts: increasing targets in [0, 1), each a fraction of the
            original weights (or, with structured=True, of each conv's
            original channels); see `gradual_schedule`.
        train_loader: yields (X, y) batches for the fine-tune.
        structured: False for `magnitude_prune`, True for `channel_prune`
            (which then needs `example_input`).
        teacher, T, alpha: distil from `teacher` instead of training on labels.
        num_epochs, lr: the fine-tune after each step.
        val_loader: if given, accuracy before and after each fine-tune is recorded.
        callback: optional `callback(step, model)` after each step.
    Returns:
        (the pruned, fine-tuned model, one dict per step with "target",
        "sparsity", "params" and, with val_loader, "acc_pruned" and "acc_tuned").

    Introduced in: notebooks/08_pruning.ipynb
    """
    if not isinstance(amounts, (list, tuple)):
        raise TypeError(f"amounts must be a list of fractions, e.g. [0.5, 0.75], got {amounts!r}")
    amounts = [check_amount(a, "each amount") for a in amounts]
    if not amounts or any(b < a for a, b in zip(amounts, amounts[1:])):
        raise ValueError(f"amounts must be a non-empty increasing list of targets, got {amounts}")
    if structured and example_input is None:
        raise ValueError("structured=True needs example_input, e.g. torch.zeros(1, *input_shape)")
    model, log, done = copy.deepcopy(check_model(model)), [], 0.0
    for step, target in enumerate(amounts):
        if structured:
            model = channel_prune(model, 1 - (1 - target) / (1 - done), example_input)
        else:
            magnitude_prune(model, target, scope=scope)
        done = target
        row = {"target": target, "sparsity": sparsity(model)["global"],
               "params": sum(p.numel() for p in model.parameters())}
        if val_loader is not None:
            row["acc_pruned"] = evaluate(model, val_loader)["accuracy"]
        _finetune(model, train_loader, teacher, T=T, alpha=alpha, num_epochs=num_epochs, lr=lr, seed=seed + step)
        if val_loader is not None:
            row["acc_tuned"] = evaluate(model, val_loader)["accuracy"]
        log.append(row)
        if callback is not None:
            callback(step, model)
    return make_permanent(model), log
