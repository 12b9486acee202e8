"""Reading the outputs of a model's inner layers with forward hooks.

`capture` records named layers' outputs while a block of code runs; `feature_shapes` tells
their shapes. The feature losses of `kdlib.losses` take what they record, and
`kdlib.train.distill` uses them for its optional feature term.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .utils import eval_mode
from .validation import check_list, check_model


def check_layer_names(model: nn.Module, names, what: str = "names") -> list[str]:
    """`names` (one name or a list) as a list of distinct layer names of `model`, each a name
    from `model.named_modules()`; a clear error listing the model's layers otherwise."""
    check_model(model)
    if isinstance(names, str):
        names = [names]
    names = check_list(names, what, of=str, hint="the layers' names in model.named_modules(), e.g. ['3', '7']")
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be distinct, got {names}")
    known = dict(model.named_modules())
    for n in names:
        if n not in known or n == "":
            shown = [k for k in known if k][:30]
            more = ", ..." if len(known) > 31 else ""
            raise ValueError(f"{type(model).__name__} has no layer named {n!r}; its layers are: "
                             f"{', '.join(shown)}{more}")
    return names


@contextlib.contextmanager
def capture(model: nn.Module, names, *, detach: bool = False) -> Iterator[dict]:
    """Record the outputs of the named layers of `model` while the block runs.

        with capture(student, ["3", "7"]) as feats:
            logits = student(X)
        feats["3"].shape  # (B, 8, 14, 14)

    A forward hook on each named module (a name from `model.named_modules()`) stores its
    output in the dict at every forward pass, replacing the previous one (a module called
    twice in one pass keeps its last output). The hooks are removed when the block ends,
    also when it raises, so the model is left exactly as it was. The stored tensors keep
    their autograd graph unless `detach=True`. A layer whose output is later changed in
    place (e.g. followed by `ReLU(inplace=True)`) would be recorded after that change:
    hook the in-place layer itself instead.

    Args:
        model: any `nn.Module`.
        names: a layer name or a sequence of distinct names.
        detach: store `output.detach()` (for a teacher's features).
    Yields:
        dict name -> output of that layer in the latest forward pass.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    names = check_layer_names(model, names)
    modules = dict(model.named_modules())
    feats: dict = {}

    def make_hook(name):
        def hook(module, inputs, output):
            feats[name] = output.detach() if detach and isinstance(output, torch.Tensor) else output
        return hook

    handles = []
    try:
        for n in names:
            handles.append(modules[n].register_forward_hook(make_hook(n)))
        yield feats
    finally:
        for h in handles:
            h.remove()


def collect(feats: dict, names: list[str]) -> list:
    """The recorded outputs of `names`, in order; a clear error for a layer that did not run."""
    missing = [n for n in names if n not in feats]
    if missing:
        raise ValueError(f"layers {missing} did not run in the forward pass, so their outputs could not "
                         "be read; choose layers that the model's forward actually calls")
    return [feats[n] for n in names]


@torch.no_grad()
def feature_shapes(model: nn.Module, names, input_shape) -> dict[str, tuple]:
    """The output shape (without the batch dimension) of each named layer for one input of
    `input_shape` (C, H, W); the model runs in eval mode and every module is left in the
    mode it was in.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    names = check_layer_names(model, names)
    input_shape = tuple(check_list(input_shape, "input_shape", of=int, hint="e.g. (1, 28, 28)"))
    if min(input_shape) < 1:
        raise ValueError(f"input_shape must be a tuple of positive ints such as (1, 28, 28), got {input_shape!r}")
    device = next(iter(model.parameters()), torch.zeros(())).device
    with eval_mode(model), capture(model, names) as feats:
        try:
            model(torch.zeros(1, *input_shape, device=device))
        except (RuntimeError, ValueError, IndexError) as err:
            raise ValueError(f"{type(model).__name__} cannot run on an input of input_shape {input_shape} "
                             f"({str(err).splitlines()[0]}); pass the (C, H, W) shape the model was built for") from None
    return {n: tuple(f.shape[1:]) for n, f in zip(names, collect(feats, names))}
