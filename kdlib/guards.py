"""Run-time guards against the mistakes distillation code commonly has.

Small detectors (`looks_like_probabilities`, `better_than_chance`, ...) and the
checks that `kdlib.losses.kd_loss` and `kdlib.train.distill` run with them. A
mistake that is certain raises a `ValueError`/`TypeError`; one that is only
likely warns with a subclass of `KDWarning`, so that a reader who knows what
they are doing can silence exactly that one:

    import warnings
    from kdlib.guards import WeakTeacherWarning
    warnings.filterwarnings("ignore", category=WeakTeacherWarning)

This module imports nothing from the rest of kdlib except `utils` and `validation`, so that
`losses` and `train` can both use it.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from .utils import eval_mode
from .validation import check_int, check_labels, check_model, check_number, check_tensor


class KDWarning(UserWarning):
    """Base class of kdlib's warnings about a likely distillation mistake.

    Introduced in: notebooks/14_pitfalls.ipynb
    """


class TeacherModeWarning(KDWarning):
    """The teacher was in train mode: dropout on, BatchNorm statistics drifting.

    Introduced in: notebooks/14_pitfalls.ipynb
    """


class TeacherGradWarning(KDWarning):
    """The teacher's logits carry an autograd graph: memory and time spent for nothing.

    Introduced in: notebooks/14_pitfalls.ipynb
    """


class ProbabilitiesWarning(KDWarning):
    """Numbers that should be logits look like probabilities (a softmax too many).

    Introduced in: notebooks/14_pitfalls.ipynb
    """


class WeakTeacherWarning(KDWarning):
    """The teacher is no better than chance: there is nothing to transfer.

    Introduced in: notebooks/14_pitfalls.ipynb
    """


def looks_like_probabilities(x: torch.Tensor, *, atol: float = 1e-4) -> bool:
    """True when every row of `x` lies in [0, 1] and sums to 1 (within `atol`).

    Raw logits almost never do; the output of a softmax always does. Used to
    catch a softmax applied where logits are expected.

    Args:
        x: (B, K) floating-point tensor.
    Returns:
        a bool (False for an empty batch or a single class).
    """
    check_tensor(x, "x", floating=True, finite=False, nonempty=False)
    if x.ndim != 2 or x.numel() == 0 or x.shape[1] < 2:
        return False
    x = x.detach()
    if bool(x.min() < 0) or bool(x.max() > 1):
        return False
    return bool(((x.double().sum(dim=1) - 1).abs() <= atol).all())


def warn_if_probabilities(name: str, x: torch.Tensor, *, stacklevel: int = 3) -> None:
    """Warn with `ProbabilitiesWarning` when `x`, meant to be logits, looks like probabilities."""
    if looks_like_probabilities(x):
        warnings.warn(
            f"{name} look like probabilities (every row in [0, 1] and summing to 1), but raw logits "
            "are expected: remove the softmax at the end of the model, or pass its input instead",
            ProbabilitiesWarning, stacklevel=stacklevel)


def warn_if_teacher_grad(teacher_logits: torch.Tensor, *, stacklevel: int = 3) -> None:
    """Warn with `TeacherGradWarning` when `teacher_logits` were computed with autograd on."""
    check_tensor(teacher_logits, "teacher_logits", finite=False, nonempty=False)
    if teacher_logits.requires_grad:
        warnings.warn(
            "teacher_logits require grad: the teacher's forward pass was recorded for backpropagation, "
            "which costs memory and time although the teacher is never updated; compute them under "
            "`with torch.no_grad():` (kdlib.train.distill does)", TeacherGradWarning, stacklevel=stacklevel)


def warn_if_train_mode(teacher: nn.Module, *, stacklevel: int = 3) -> None:
    """Warn with `TeacherModeWarning` when `teacher` is in train mode."""
    if check_model(teacher, "teacher").training:
        warnings.warn("the teacher was in train mode (dropout on, BatchNorm statistics drifting); "
                      "distill put it in eval mode", TeacherModeWarning, stacklevel=stacklevel)


def chance_accuracy(labels: torch.Tensor, num_classes: int) -> float:
    """The accuracy of the best constant guess: the larger of 1/K and the share
    of the most frequent label in `labels` (B,).
    """
    check_int(num_classes, "num_classes", low=1)
    labels = check_labels(labels, num_classes=num_classes)
    if labels.numel() == 0:
        return 1.0 / num_classes
    majority = torch.bincount(labels, minlength=num_classes).max().item() / labels.numel()
    return max(1.0 / num_classes, majority)


def better_than_chance(logits: torch.Tensor, labels: torch.Tensor, *, z: float = 3.0) -> bool | None:
    """Is the accuracy of `logits` (B, K) on `labels` (B,) clearly above chance?

    Clearly means more than `z` binomial standard deviations above
    `chance_accuracy`. Labels of -1 (unlabelled) are ignored. Returns None when
    the batch is too small to tell (fewer than 16 labelled examples).
    """
    check_tensor(logits, "logits", ndim=2, floating=True, finite=False, nonempty=False,
                 shape_hint="(batch, num_classes)")
    labels = check_labels(labels, n=logits.shape[0])
    check_number(z, "z", low=0.0)
    if logits.shape[1] < 1:
        raise ValueError("logits need at least one class")
    keep = labels >= 0
    logits, labels = logits[keep], labels[keep]
    n, K = labels.numel(), logits.shape[1]
    p = chance_accuracy(labels, K)
    threshold = p + z * math.sqrt(p * (1 - p) / max(n, 1))
    if n < 16 or threshold >= 1:
        return None
    acc = (logits.argmax(1) == labels).float().mean().item()
    return acc > threshold


def probe_batch(dataset: Dataset, n: int = 64) -> list:
    """Up to `n` examples spread evenly over `dataset`, collated like a DataLoader
    batch ([X (n, ...), y (n,), ...]). Touches no random number generator, so a
    run that probes repeats exactly.

    Introduced in: notebooks/14_pitfalls.ipynb
    """
    if not isinstance(dataset, Dataset) or not hasattr(dataset, "__len__"):
        raise TypeError(f"dataset must be a torch Dataset with a length, got {type(dataset).__name__}")
    check_int(n, "n", low=1)
    N = len(dataset)
    if N == 0:
        raise ValueError("the data set holds no examples")
    m = min(n, N)
    idx = sorted({round(i * (N - 1) / max(m - 1, 1)) for i in range(m)})
    items = [dataset[i] for i in idx]
    if not all(isinstance(item, (tuple, list)) and len(item) >= 2 for item in items):
        raise TypeError("the data set must yield (X, y) pairs, e.g. a TensorDataset(X, y)")
    try:
        batch = default_collate(items)
    except (TypeError, RuntimeError) as err:
        raise TypeError(f"the data set's examples cannot be stacked into a batch ({str(err).splitlines()[0]}); "
                        "each must be (X tensor of one shape, y int)") from None
    if not all(isinstance(t, torch.Tensor) for t in batch):
        raise TypeError("the data set must yield (X, y) pairs of tensors, e.g. a TensorDataset(X, y)")
    return list(batch)


def run_model(model: nn.Module, X: torch.Tensor, name: str = "model") -> torch.Tensor:
    """`model(X)`, turning a shape error from deep inside PyTorch into a clear ValueError,
    and checking that the output is a (B, K) logits tensor.
    """
    check_model(model, f"the {name}")
    check_tensor(X, f"the {name}'s input", finite=False, nonempty=False)
    if X.is_floating_point() and not torch.isfinite(X).all():
        raise ValueError(f"the {name}'s input contains NaN or inf; clean the data before running the model")
    try:
        out = model(X)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, IndexError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        msg = f"the {name} cannot run on a batch of shape {tuple(X.shape)} and dtype {X.dtype}: {first}."
        if any(w in first for w in ("shape", "size", "channels")):
            expected = getattr(model, "input_shape", None)
            built = f" It was built for inputs {tuple(expected)}." if expected is not None else ""
            msg += (f"{built} Is the layer after Flatten sized for another resolution? kdlib.models "
                    "computes the flatten size: build the model with input_shape=X.shape[1:]")
        raise ValueError(msg) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the {name} must return logits of shape (batch, num_classes), got {shape}")
    return out


def _check_probe(X: torch.Tensor, y: torch.Tensor) -> None:
    """The probe batch's images must be finite floats and its labels integers."""
    if X.shape[:1] != y.shape[:1] or y.ndim != 1 or X.shape[0] == 0:
        raise ValueError(f"the images {tuple(X.shape)} and labels {tuple(y.shape)} must form a non-empty batch "
                         "(X (B, ...), y (B,))")
    if not X.is_floating_point():
        raise TypeError(f"the images must be a floating-point tensor, got dtype {X.dtype}; "
                        "convert them with X.float() (and standardise them)")
    if not torch.isfinite(X).all():
        raise ValueError("the training images contain NaN or inf; clean the data set before training")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"the labels must be integer class indices, got dtype {y.dtype}; use y.long()")


def _check_probe_labels(y: torch.Tensor, K: int, distilling: bool) -> None:
    lowest = -1 if distilling else 0  # -1: unlabelled, allowed when distilling
    bad = (y < lowest) | (y >= K)
    if bool(bad.any()):
        extra = " (or -1 for unlabelled)" if distilling else ""
        raise ValueError(f"labels must lie in 0..{K - 1}{extra}, got {int(y[bad][0])}; "
                         "does the model have the data set's number of classes?")


def _check_teacher_logits(t_logits: torch.Tensor, y: torch.Tensor, K: int) -> None:
    if not torch.isfinite(t_logits).all():
        raise ValueError("the teacher's logits contain NaN or inf on the first examples; "
                         "check the teacher's checkpoint and the inputs' scale")
    if better_than_chance(t_logits.float(), y) is False:
        acc = (t_logits.argmax(1) == y)[y >= 0].float().mean().item()
        warnings.warn(
            f"the teacher gets {acc:.0%} right on {int((y >= 0).sum())} training examples, no better than "
            f"chance ({chance_accuracy(y[y >= 0], K):.0%}): there is nothing to transfer. Is it trained, "
            "and trained on these classes? Load it with kdlib.zoo.load_teacher or train it first",
            WeakTeacherWarning, stacklevel=4)


def preflight(student: nn.Module, teacher: nn.Module | None, batch: list) -> None:
    """Run `student` (and `teacher`) once on a probe batch before training, in eval
    mode and without gradients, and stop the mistakes that would otherwise show
    up deep inside the loop or not at all:

    - inputs with NaN or inf, or labels that are not integer class indices;
    - a model that cannot run on the input resolution (flatten size);
    - teacher and student predicting a different number of classes;
    - labels outside 0..K-1 (-1, unlabelled, is allowed with a teacher);
    - a teacher with NaN/inf logits;
    - a teacher no better than chance (warns `WeakTeacherWarning`);
    - without a teacher, a model whose outputs are probabilities (warns
      `ProbabilitiesWarning`: cross-entropy applies its own softmax).

    Both models are left in the mode they were in.

    Args:
        batch: [X (B, ...), y (B,), ...], e.g. from `probe_batch`.

    Introduced in: notebooks/14_pitfalls.ipynb
    """
    if not isinstance(batch, (list, tuple)) or len(batch) < 2 or not all(isinstance(t, torch.Tensor) for t in batch[:2]):
        raise TypeError("batch must be [X, y, ...] tensors, e.g. from kdlib.guards.probe_batch")
    check_model(student, "student")
    if teacher is not None:
        check_model(teacher, "teacher")
    X, y = batch[0], batch[1]
    _check_probe(X, y)
    first = "student" if teacher is not None else "model"
    with eval_mode(student), torch.no_grad():
        s_logits = run_model(student, X, first)
    if teacher is None:
        _check_probe_labels(y, s_logits.shape[1], distilling=False)
        warn_if_probabilities("the model's outputs", s_logits, stacklevel=4)  # cross-entropy wants logits
        return
    with eval_mode(teacher), torch.no_grad():
        t_logits = run_model(teacher, X, "teacher")
    if t_logits.shape[1] != s_logits.shape[1]:
        raise ValueError(f"the teacher predicts {t_logits.shape[1]} classes and the student {s_logits.shape[1]}; "
                         "build the student with the teacher's num_classes")
    _check_probe_labels(y, s_logits.shape[1], distilling=True)
    _check_teacher_logits(t_logits, y, s_logits.shape[1])
