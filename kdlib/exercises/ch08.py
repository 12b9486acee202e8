"""Checks for the exercises of notebooks/08_pruning.ipynb."""
from __future__ import annotations

import copy
import numbers

import torch
from torch import nn

from . import not_a_function, register


def _models() -> list[tuple[str, nn.Module]]:
    """Small models with known sparsity: (description, model)."""
    from ..models import StudentCNN
    from ..prune import magnitude_prune, make_permanent

    torch.manual_seed(0)
    base = StudentCNN((1, 8, 8), width=4)
    out = [("an unpruned model", copy.deepcopy(base))]
    out.append(("a model pruned 60% globally (masks attached)", magnitude_prune(copy.deepcopy(base), 0.6)))
    out.append(("a model pruned 30% per layer, masks made permanent",
                make_permanent(magnitude_prune(copy.deepcopy(base), 0.3, scope="layer"))))
    with_bn = copy.deepcopy(base)
    with torch.no_grad():
        with_bn[1].weight.zero_()  # zeros in BatchNorm do not count: it is not a conv or Linear
    out.append(("a model whose BatchNorm weights are zero", with_bn))
    return out


@register("08.1")
def sparsity_of(fn) -> str | None:
    """fn(model) -> fraction of zeros among all Conv2d and Linear weights."""
    from ..prune import sparsity

    problem = not_a_function(fn, "sparsity_of")
    if problem:
        return problem
    for what, model in _models():
        got = fn(model)
        if got is None:
            return "sparsity_of returned None: did you forget `return`?"
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            return f"sparsity_of should return a number between 0 and 1, got {type(got).__name__}"
        want = sparsity(model)["global"]
        if abs(float(got) - want) > 1e-6:
            if not 0 <= got <= 1:
                return f"for {what} you returned {got}: a fraction must lie between 0 and 1"
            return (f"for {what} you returned {float(got):.4f}, expected {want:.4f}. Count the zeros of "
                    "every Conv2d and Linear `.weight` together (no biases, no BatchNorm), then divide "
                    "by the number of those weights")
    return None


@register("08.2")
def conv_macs(fn) -> str | None:
    """fn(c_in, c_out, kernel, h_out, w_out) -> MACs of a groups=1 conv on one image."""
    from ..measure import count_macs

    problem = not_a_function(fn, "conv_macs")
    if problem:
        return problem
    for c_in, c_out, k, size in ((1, 8, 3, 28), (8, 16, 3, 14), (4, 8, 3, 14), (3, 5, 1, 7), (6, 2, 5, 9)):
        got = fn(c_in, c_out, k, size, size)
        if got is None:
            return "conv_macs returned None: did you forget `return`?"
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            return f"conv_macs should return a number, got {type(got).__name__}"
        conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
        want = count_macs(conv, torch.zeros(1, c_in, size, size))
        if got != want:
            hint = ""
            if got == 2 * want:
                hint = ": that counts FLOPs (a MAC is one multiply and one add, counted once)"
            elif got == want // (k * k):
                hint = ": each output value needs c_in * k * k multiplications, not c_in"
            return f"conv_macs({c_in}, {c_out}, {k}, {size}, {size}) returned {got}, expected {want}{hint}"
    return None


@register("08.3")
def keep_channels(fn) -> str | None:
    """fn(conv, n_keep) -> sorted indices of the n_keep filters with the largest L1 norm."""
    problem = not_a_function(fn, "keep_channels")
    if problem:
        return problem
    g = torch.Generator().manual_seed(7)
    for c_in, c_out, n_keep in ((1, 8, 4), (8, 16, 5), (3, 6, 6), (4, 5, 1)):
        conv = nn.Conv2d(c_in, c_out, 3, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
            conv.weight[0] *= 3  # the first filter has the largest L1 norm but not the largest max |w|
        before = conv.weight.detach().clone()
        got = fn(conv, n_keep)
        if got is None:
            return "keep_channels returned None: did you forget `return`?"
        try:
            got = torch.as_tensor(got).flatten().tolist()
        except (TypeError, ValueError, RuntimeError):
            return f"keep_channels should return a tensor or list of indices, got {type(got).__name__}"
        if not torch.equal(conv.weight.detach(), before):
            return "keep_channels changed the convolution's weights; it should only read them"
        norms = before.abs().sum(dim=(1, 2, 3))
        want = sorted(torch.topk(norms, n_keep).indices.tolist())
        if got != want:
            if sorted(got) == want:
                return f"right channels, wrong order: return them sorted ascending, e.g. {want}"
            if len(got) != n_keep:
                return f"asked to keep {n_keep} of {c_out} channels, you returned {len(got)} indices"
            l2 = sorted(torch.topk(before.pow(2).sum(dim=(1, 2, 3)), n_keep).indices.tolist())
            if got == l2 and l2 != want:
                return "that ranks filters by the L2 norm; use the L1 norm, the sum of |w| over each filter"
            return (f"for a conv with {c_out} filters, keeping {n_keep}, expected {want}, got {got}: rank each "
                    "output filter weight[c] by the sum of its absolute values and keep the largest")
    return None
