"""Structured pruning of any convolutional network, through Torch-Pruning's dependency graph.

`kdlib.prune.channel_prune` is the from-scratch version for a flat `nn.Sequential`: it walks
the layers in order and slices each convolution, the BatchNorm after it and the layer that
reads it. A network of one's own is rarely flat: a `features` and a `classifier` block,
residual blocks whose skip connection adds two tensors that must keep the same channels,
depthwise convolutions whose input and output channels are one and the same. Which layers
must lose the same channels is then a property of the whole graph: Fang et al. (2023,
"DepGraph: Towards Any Structural Pruning") trace the model once and group every coupled
slice of every layer; Torch-Pruning (`pip install torch-pruning`) implements it.

`graph_channel_prune` uses that graph and the same rule as `channel_prune`: in each group,
the channels whose output filters have the smallest L1 norm go (summed over the group's
convolutions whose outputs are pruned), `round(amount * C)` of them, with the number kept
rounded to a multiple of `multiple_of`. On the book's flat student it removes the same
channels and computes the same outputs as `channel_prune` (tests/test_prune_graph.py).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .prune import check_amount, keep_count
from .utils import eval_mode
from .validation import check_choice, check_int, check_model, check_tensor

CRITERIA = ("l1", "l2")


@dataclass
class PruneResult:
    """What `graph_channel_prune` did: the smaller model and, per coupled group, its channels.

    `groups` holds one dict per group that was pruned: `layers` (the names of the layers
    whose output channels it cut), `before` and `after` (channel counts); `left_whole`
    maps a layer name to the reason its channels were kept (the output layer, a group that
    cannot be cut evenly, ...); `problem` is set when nothing could be pruned at all.
    """

    model: nn.Module
    groups: list = field(default_factory=list)
    left_whole: dict = field(default_factory=dict)
    problem: str | None = None

    @property
    def pruned(self) -> bool:
        return bool(self.groups)


def torch_pruning_available() -> bool:
    """True when the optional `torch-pruning` package can be imported."""
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return False
    return True


def _names(model: nn.Module) -> dict:
    return {m: name for name, m in model.named_modules()}


def _filter_norm(module: nn.Module, criterion: str) -> torch.Tensor:
    w = module.weight.detach().flatten(1)  # (C_out, everything else)
    return w.abs().sum(1) if criterion == "l1" else w.pow(2).sum(1)


def _channel_groups(group) -> int:
    """The number of blocks a group's channels fall into: a grouped convolution (1 < groups <
    channels) must lose the same positions in each of its blocks to stay grouped."""
    blocks = 1
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels:
            blocks = max(blocks, m.groups)
    return blocks


def group_importance(group, criterion: str = "l1") -> torch.Tensor:
    """(C,) score of each channel of a Torch-Pruning group: the norm of its output filter,
    summed over the group's Conv2d and Linear layers whose output channels are cut
    (for a single convolution: exactly `kdlib.prune.filter_norms`)."""
    import torch_pruning as tp

    n = len(group[0].idxs)
    score = torch.zeros(n)
    for item in group:
        m, fn = item.dep.target.module, item.dep.handler
        if isinstance(m, (nn.Conv2d, nn.Linear)) and fn in (tp.prune_conv_out_channels, tp.prune_linear_out_channels,
                                                            tp.prune_depthwise_conv_out_channels):
            norms = _filter_norm(m, criterion)[torch.as_tensor(item.idxs)]
            score.index_add_(0, torch.as_tensor(item.root_idxs), norms.cpu().float())
    return score


def _to_remove(score: torch.Tensor, amount: float, multiple_of: int, blocks: int) -> list[int]:
    """Root indices of the channels to cut: the lowest scores, the same positions in each block."""
    n = score.numel()
    if blocks > 1:
        if n % blocks:
            return []
        per_block = score.view(blocks, n // blocks).sum(0)  # (C / blocks,)
        k = max(1, round(keep_count(n, amount, multiple_of) / blocks))
        drop = torch.topk(per_block, n // blocks - k, largest=False).indices
        return sorted(int(d) + b * (n // blocks) for b in range(blocks) for d in drop)
    keep = torch.topk(score, keep_count(n, amount, multiple_of)).indices
    return sorted(set(range(n)) - set(keep.tolist()))


def _check_args(model, amount, example_input, criterion, multiple_of):
    check_model(model)
    check_tensor(example_input, "example_input", floating=True, shape_hint="(1, C, H, W)")
    check_choice(criterion, "criterion", CRITERIA)
    check_int(multiple_of, "multiple_of", low=1, hint="1: no rounding, 8: the fp32 kernels' block on x86")
    return check_amount(amount)


def _build_graph(model, example_input):
    import torch_pruning as tp

    with eval_mode(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)


def _execution_order(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """The Conv2d and Linear layers of `model` in the order its forward pass runs them."""
    order = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod) if mod not in order else None)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return order


def _group_of(graph, module: nn.Module):
    """Torch-Pruning's group of every channel slice coupled to `module`'s output channels."""
    pruner = graph.get_pruner_of_module(module)
    return graph.get_pruning_group(module, pruner.prune_out_channels, list(range(pruner.get_out_channels(module))))


def _removed_inputs(graph, group, names: dict) -> dict[str, list[int]]:
    """Layer name -> the input channels (or features) of that Conv2d / Linear the group cuts."""
    return {names[item.dep.target.module]: list(item.idxs) for item in group
            if graph.is_in_channel_pruning_fn(item.dep.handler)
            and isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))}


def _masked_outputs(model: nn.Module, removed: dict, inputs: torch.Tensor) -> torch.Tensor:
    """`model(inputs)` with the `removed` input channels of the named layers set to zero."""
    def zero(idxs):
        def hook(module, args):
            x = args[0].clone()
            x[:, idxs] = 0
            return (x, *args[1:])
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(zero(i)) for n, i in removed.items()]
    try:
        with eval_mode(model), torch.no_grad():
            return model(inputs)
    finally:
        for h in handles:
            h.remove()


def _step_problem(before: nn.Module, after: nn.Module, removed: dict, inputs: torch.Tensor) -> str | None:
    """None if `after` computes what `before` computes with the removed channels zeroed, else why not.

    A layer that reads channels by position (a fixed index, a hard-coded reshape) breaks this."""
    try:
        with eval_mode(after), torch.no_grad():
            got = after(inputs)
    except Exception as err:
        return f"the pruned model fails to run ({(str(err).splitlines() or [type(err).__name__])[0][:120]})"
    expected = _masked_outputs(before, removed, inputs)
    if got.shape != expected.shape or (got - expected).abs().max() > 1e-4 * (1 + expected.abs().max()):
        return "cutting these channels changes what the rest of the model computes (forward() uses them by position)"
    return None


def _try_group(current: nn.Module, name: str, amount, multiple_of, criterion, example) -> tuple:
    """Prune the group of layer `name` in a copy of `current`; returns (copy or None, cut names, record or reason)."""
    trial = copy.deepcopy(current)
    graph = _build_graph(trial, example[:1])
    names = _names(trial)
    group = _group_of(graph, trial.get_submodule(name))
    cut = [names[i.dep.target.module] for i in group if graph.is_out_channel_pruning_fn(i.dep.handler)
           and isinstance(i.dep.target.module, (nn.Conv2d, nn.Linear))]
    score, blocks = group_importance(group, criterion), _channel_groups(group)
    remove = _to_remove(score, amount, multiple_of, blocks)
    if not remove:
        return None, cut, (f"its {score.numel()} channels do not split into {blocks} equal blocks"
                           if blocks > 1 and score.numel() % blocks else "nothing to remove at this amount")
    removed = _removed_inputs(graph, graph.get_pruning_group(group[0].dep.target.module, group[0].dep.handler,
                                                             remove), names)
    group.prune(idxs=remove)
    problem = _step_problem(current, trial, removed, example)
    if problem:
        return None, cut, problem
    return trial, cut, {"layers": cut, "before": score.numel(), "after": score.numel() - len(remove)}


def graph_channel_prune(model: nn.Module, amount: float, example_input: torch.Tensor, *,
                        criterion: str = "l1", multiple_of: int = 1) -> PruneResult:
    """Remove output channels of the convolutions (and hidden Linear units) of any network,
    keeping every coupled layer consistent (Fang et al. 2023, through Torch-Pruning).

    Each group of coupled channels (a convolution, its BatchNorm and the layers that read it;
    all the layers a residual addition ties together; a depthwise convolution and the layer
    before it) loses the `round(amount * C)` channels of smallest filter norm, the number
    kept rounded to a multiple of `multiple_of` (as `kdlib.prune.channels_to_keep`). The layer
    that produces the logits keeps its outputs.

    Args:
        model: any nn.Module made of standard layers; never modified (a copy is pruned).
        amount: fraction of each group's channels to remove, in [0, 1).
        example_input: (1, C, H, W), to trace the graph and check the result.
        criterion: "l1" or "l2" filter norm.
        multiple_of: round the channels kept to a multiple of this (1: no rounding).
    Returns:
        a `PruneResult`: `.model` (the smaller model, or an unpruned copy with `.problem`
        saying why nothing could be pruned), `.groups`, `.left_whole`.
    """
    amount = _check_args(model, amount, example_input, criterion, multiple_of)
    current = copy.deepcopy(model)
    if not torch_pruning_available():
        return PruneResult(current, problem="the torch-pruning package is not installed (pip install torch-pruning)")
    names = _names(current)
    layers = [names[m] for m in _execution_order(current, example_input)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer that runs on the example input: "
                         "nothing to prune")
    output = layers[-1]  # the last Conv2d or Linear makes the logits: its outputs are the classes
    result = PruneResult(current, left_whole={output: "it produces the model's outputs"})
    g = torch.Generator().manual_seed(0)
    inputs = torch.cat([example_input[:1], torch.randn(example_input[:1].shape, generator=g)])  # (2, C, H, W)
    done = {output}
    for name in layers:
        if name in done:
            continue
        try:
            trial, cut, outcome = _try_group(result.model, name, amount, multiple_of, criterion, inputs)
        except Exception as err:  # Torch-Pruning meets an operation it cannot follow
            trial, cut = None, [name]
            outcome = f"Torch-Pruning cannot follow it ({(str(err).strip().splitlines() or [type(err).__name__])[0][:120]})"
        done.update(cut)
        if output in cut:
            continue  # coupled to the logits: leave the whole group
        if trial is None:
            result.left_whole.update({n: outcome for n in cut})
        else:
            result.model = trial
            result.groups.append(outcome)
    if not result.groups:
        result.problem = "no group of channels could be pruned: " + "; ".join(
            f"{n}: {why}" for n, why in result.left_whole.items())
    return result
