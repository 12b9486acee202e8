"""The one set of input checks that every kdlib module uses.

One rule throughout: an argument of the wrong *type* raises `TypeError`, one of the
right type with a wrong *value* raises `ValueError`, and the message says what was
expected, what came, and (through `hint`) what to do. Each helper returns the checked
value (converted where that is harmless, e.g. an int to a float), so that a function's
first lines read `T = check_positive(T, "temperature T", hint=...)` and the maths follows.

This module imports nothing from the rest of kdlib.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

UNLABELLED = -1  # the label of a transfer-set example whose label the student may not see


def _hint(hint: str) -> str:
    return f"; {hint}" if hint else ""


def _type_name(x) -> str:
    return type(x).__name__


def is_number(x) -> bool:
    """True for an int or a float (a bool is not a number here, nor is a tensor)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_number(x, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """`x` as a float; TypeError unless it is a number, ValueError unless finite and within
    [low, high] (an open end with `low_open` / `high_open`)."""
    if not is_number(x):
        raise TypeError(f"{name} must be a number, got {_type_name(x)}{_hint(hint)}")
    x = float(x)
    below = low is not None and (x <= low if low_open else x < low)
    above = high is not None and (x >= high if high_open else x > high)
    if not math.isfinite(x) or below or above:
        raise ValueError(f"{name} must be {_describe_range(low, high, low_open, high_open)}, got {x:g}{_hint(hint)}")
    return x


def _describe_range(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"a finite number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def check_positive(x, name: str, *, hint: str = "") -> float:
    """`x` as a float; it must be a finite number > 0."""
    return check_number(x, name, low=0.0, low_open=True, hint=hint)


def check_fraction(x, name: str, *, hint: str = "") -> float:
    """`x` as a float; it must be a number in [0, 1] (a weight such as alpha, a share, an amount)."""
    return check_number(x, name, low=0.0, high=1.0, hint=hint)


def check_int(x, name: str, *, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """`x` itself; TypeError unless it is an int (not a bool), ValueError unless within [low, high]."""
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name} must be an int, got {_type_name(x)}{_hint(hint)}")
    if (low is not None and x < low) or (high is not None and x > high):
        where = (f"an int between {low} and {high}" if low is not None and high is not None
                 else "a positive int" if low == 1 else f"an int >= {low}" if low is not None else f"an int <= {high}")
        raise ValueError(f"{name} must be {where}, got {x}{_hint(hint)}")
    return x


def check_bool(x, name: str) -> bool:
    """`x` itself; TypeError unless it is True or False."""
    if not isinstance(x, bool):
        raise TypeError(f"{name} must be True or False, got {x!r:.40}")
    return x


def check_choice(x, name: str, choices) -> str:
    """`x` itself; ValueError unless it is one of `choices` (strings)."""
    if not isinstance(x, str):
        raise TypeError(f"{name} must be a string, one of {', '.join(map(repr, choices))}; got {_type_name(x)}")
    if x not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {x!r}")
    return x


def check_model(model, name: str = "model") -> nn.Module:
    """`model` itself; TypeError unless it is a torch.nn.Module (an instance, not the class)."""
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise TypeError(f"{name} must be a model instance, got the class {model.__name__}: call it first, "
                        f"e.g. {model.__name__}(...)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {_type_name(model)}")
    return model


def check_callable(fn, name: str, *, allow_module: bool = False, hint: str = "") -> object:
    """`fn` itself; TypeError unless it is a function (or other callable). A class is refused,
    and so is a model unless `allow_module` (a loss with parameters, such as FitNetsHint)."""
    if isinstance(fn, type) or (isinstance(fn, nn.Module) and not allow_module) or not callable(fn):
        got = fn.__name__ if isinstance(fn, type) else _type_name(fn)
        raise TypeError(f"{name} must be a function, got {got}{_hint(hint)}")
    return fn


def check_loader(loader, name: str = "train_loader") -> DataLoader:
    """`loader` itself; TypeError unless a DataLoader, ValueError if it holds no examples."""
    if not isinstance(loader, DataLoader):
        raise TypeError(f"{name} must be a torch DataLoader (see kdlib.data.make_loader), got {_type_name(loader)}")
    if len(loader.dataset) == 0:
        raise ValueError(f"{name} holds no examples")
    return loader


def check_tensor(x, name: str, *, ndim: int | tuple[int, ...] | None = None, floating: bool | None = None,
                 finite: bool = True, nonempty: bool = True, shape_hint: str = "") -> torch.Tensor:
    """`x` itself; TypeError unless a tensor (of a floating or integer dtype if `floating` is
    True or False); ValueError on the wrong number of dimensions, no elements, NaN or inf."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_type_name(x)}")
    if floating is True and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if floating is False and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got dtype {x.dtype}")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if dims is not None and x.ndim not in dims:
        shape = shape_hint or " or ".join(f"{d} dimensions" for d in dims)
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} is empty, got shape {tuple(x.shape)}; pass at least one example")
    if finite and x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; check the model's inputs and learning rate")
    return x


def check_logits(name: str, logits, *, ndim: int = 2) -> torch.Tensor:
    """`logits` itself; it must be a finite floating tensor of shape (batch, num_classes), K >= 2."""
    check_tensor(logits, name, ndim=ndim, floating=True, shape_hint="(batch, num_classes)")
    if logits.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 classes, got {logits.shape[-1]}")
    return logits


def check_labels(labels, name: str = "labels", *, n: int | None = None, num_classes: int | None = None,
                 allow_unlabelled: bool = False) -> torch.Tensor:
    """`labels` as an int64 tensor of shape (N,); each in 0..num_classes-1 (or -1 when
    `allow_unlabelled`: the mark of an image without a label in a transfer set)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be an integer tensor of class indices (N,), got {_type_name(labels)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices (N,), got dtype {labels.dtype}")
    if labels.ndim != 1 or (n is not None and labels.shape[0] != n):
        want = f"({n},)" if n is not None else "(N,)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(labels.shape)}")
    lowest = UNLABELLED if allow_unlabelled else 0
    if num_classes is not None and labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < lowest or hi >= num_classes:
            extra = " (or -1 for an image without a label)" if allow_unlabelled else ""
            raise ValueError(f"{name} must lie in 0..{num_classes - 1}{extra}, got values from {lo} to {hi}")
    return labels.long()


def check_same_shape(a: torch.Tensor, b: torch.Tensor, names: str, *, hint: str = "") -> None:
    """ValueError unless the two tensors have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}{_hint(hint)}")


def check_list(x, name: str, *, of: type | tuple[type, ...] | None = None, nonempty: bool = True,
               hint: str = "") -> list:
    """`x` as a list; TypeError unless a list or tuple (of `of` items), ValueError if empty."""
    if not isinstance(x, (list, tuple)):
        raise TypeError(f"{name} must be a list, got {_type_name(x)}{_hint(hint)}")
    if of is not None and not all(isinstance(v, of) and not isinstance(v, bool) for v in x):
        kinds = of.__name__ if isinstance(of, type) else " or ".join(t.__name__ for t in of)
        raise TypeError(f"{name} must be a list of {kinds}, got {[_type_name(v) for v in x]}{_hint(hint)}")
    if nonempty and not x:
        raise ValueError(f"{name} is empty{_hint(hint)}")
    return list(x)


def check_path(path, name: str = "path") -> Path:
    """`path` as a Path; TypeError unless a str or os.PathLike."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or a pathlib.Path, got {_type_name(path)}")
    return Path(path)
