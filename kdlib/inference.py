"""Running a model over data: predictions, evaluation, and a teacher's outputs computed once.

`predict_logits` and `evaluate` run a model in eval mode (every submodule's mode restored
afterwards); `cache_teacher_outputs` runs a teacher once over a training set and returns a
loader of (X, y, teacher_logits, *features) that `kdlib.train.distill` uses as it is, so that
every epoch of every run that shares it skips the teacher. On a CPU, CNNs run in the
channels-last memory layout (`fast_layout`), and large batches in chunks.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from .data import as_tensors
from .guards import run_model
from .hooks import capture, check_layer_names, collect
from .utils import eval_mode, get_device
from .validation import check_int, check_list, check_loader, check_model, check_tensor


def channels_last(model: nn.Module, device) -> bool:
    """Whether to run `model` in channels-last memory format: CNNs on a CPU.

    Same numbers up to rounding, laid out (N, H, W, C) in memory: oneDNN's CPU kernels for
    convolution, batch norm and max-pooling run about a third faster that way on the book's
    models, in training and in inference (measured in the commit that added this).
    """
    return torch.device(device).type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())


INFERENCE_CHUNK = 128  # images per forward pass in predict_logits (CNNs on a CPU)


@contextlib.contextmanager
def fast_layout(model: nn.Module | None, device):
    """Within the block, a CNN on a CPU keeps its 4-D weights channels-last; afterwards they
    are back in the usual layout (a model that was channels-last already is left alone).
    The parameters stay the same objects, so an optimizer built on them keeps working."""
    weights = [p for p in model.parameters() if p.dim() == 4] if model is not None else []
    already = any(not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    if model is None or already or not channels_last(model, device):
        yield torch.channels_last if already else torch.contiguous_format
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield torch.channels_last
    finally:
        model.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` in eval mode over `loader`; return (logits (N, K), labels (N,)) on the CPU.

    Introduced in: notebooks/04_teacher.ipynb
    """
    check_model(model)
    check_loader(loader, "loader")
    device = get_device(device)
    outs, ys = [], []
    with eval_mode(model.to(device)), fast_layout(model, device) as layout:
        # a CNN on a CPU runs large batches in chunks: 128 images' activations stay in the
        # processor's cache, 1,000 do not (the book's teacher: about twice as fast per image)
        chunk = INFERENCE_CHUNK if layout == torch.channels_last else None
        for batch in loader:
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise TypeError("the loader must yield (X, y) batches, e.g. make_loader(TensorDataset(X, y))")
            X = batch[0].to(device)
            parts = X.split(chunk) if chunk and len(X) > chunk else (X,)
            outs.extend(run_model(model, part).float().cpu() for part in parts)
            ys.append(batch[1].cpu())
    return torch.cat(outs), torch.cat(ys)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, teacher: nn.Module | None = None, device=None) -> dict:
    """Accuracy and mean cross-entropy of `model` on `loader`, and, given a teacher, the
    fraction of examples where both predict the same class.

    Returns:
        {"accuracy": float, "loss": float} plus "agreement" with a teacher.

    Introduced in: notebooks/06_teaching.ipynb
    """
    check_model(model)
    check_loader(loader, "loader")
    logits, y = predict_logits(model, loader, device=device)
    if not torch.isfinite(logits).all():
        raise ValueError("the model's logits contain NaN or inf: check the loader's images for NaN/inf, "
                         "and the model's weights (did training diverge?)")
    if y.is_floating_point() or bool(((y < 0) | (y >= logits.shape[1])).any()):
        raise ValueError(f"the loader's labels must be class indices in 0..{logits.shape[1] - 1}; "
                         "does the model have the data set's number of classes?")
    out = {"accuracy": (logits.argmax(1) == y).float().mean().item(),
           "loss": F.cross_entropy(logits, y).item()}
    if teacher is not None:
        t_logits, _ = predict_logits(teacher, loader, device=device)
        if t_logits.shape != logits.shape:
            raise ValueError(f"teacher predicts {t_logits.shape[1]} classes, the model {logits.shape[1]}")
        out["agreement"] = (t_logits.argmax(1) == logits.argmax(1)).float().mean().item()
    return out


def _fidelity_of(logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor) -> dict:
    """Agreement, KL(teacher || model) and accuracy (labelled rows only) from (N, K) logits."""
    log_p_t, log_p = F.log_softmax(teacher_logits.double(), 1), F.log_softmax(logits.double(), 1)
    out = {"agreement": (logits.argmax(1) == teacher_logits.argmax(1)).double().mean().item(),
           "kl": (log_p_t.exp() * (log_p_t - log_p)).sum(1).mean().item()}
    labelled = y >= 0  # UNLABELLED (-1) rows have no accuracy
    if labelled.any():
        out["accuracy"] = (logits.argmax(1)[labelled] == y[labelled]).double().mean().item()
    return out


@torch.no_grad()
def fidelity(model: nn.Module, loader: DataLoader, teacher_logits: torch.Tensor, *, device=None) -> dict:
    """How closely `model` matches a teacher on `loader` (Stanton et al. 2021's fidelity):

        agreement = mean_i [argmax z_i = argmax t_i],   kl = mean_i KL(softmax(t_i) || softmax(z_i))

    with z the model's and t the teacher's logits (T = 1), and the accuracy on the labelled
    examples (labels >= 0; left out when there are none).

    Args:
        model: the student, run in eval mode (its modes are restored).
        loader: yields (X, y) batches of N examples, in a fixed order (no shuffle).
        teacher_logits: (N, K) the teacher's logits on the same examples, in the same order.
    Returns:
        {"agreement": float, "kl": float (nats), "accuracy": float}.

    Introduced in: notebooks/06_teaching.ipynb
    """
    check_tensor(teacher_logits, "teacher_logits", ndim=2, floating=True, shape_hint="(N, K)")
    check_loader(loader, "loader")
    if isinstance(loader.sampler, RandomSampler):
        raise ValueError("loader shuffles its examples, so they cannot be matched with teacher_logits row by row; "
                         "pass a loader without shuffle, e.g. make_loader(dataset, 500)")
    logits, y = predict_logits(model, loader, device=device)
    if logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher_logits must be (N, K) = {tuple(logits.shape)} for this loader and model, "
                         f"got {tuple(teacher_logits.shape)}: compute them with predict_logits(teacher, loader)")
    return _fidelity_of(logits, teacher_logits.cpu(), y)


def track_fidelity(teacher: nn.Module, loaders: dict, *, every: int = 1, device=None):
    """A `callback` for `kdlib.train.train` / `distill` that records, every `every` epochs,
    the student's agreement, KL and accuracy (see `fidelity`) on each loader, as
    `History.metrics["<name>_agreement"]`, `["<name>_kl"]`, `["<name>_accuracy"]`, and the
    number of epochs done so far as `["epoch"]`. The teacher runs once per loader, here.

    Args:
        teacher: the teacher (eval mode, no gradients).
        loaders: {name: loader of (X, y), not shuffled}, e.g. {"train": ..., "test": ...}.
        every: record after epochs every, 2 * every, ... (1: after each).
    Returns:
        a function (epoch, student) -> dict, or None on the epochs it skips.

    Introduced in: notebooks/06_teaching.ipynb
    """
    check_model(teacher, "teacher")
    check_int(every, "every", low=1)
    if not isinstance(loaders, dict) or not loaders:
        raise TypeError("loaders must be a non-empty dict {name: DataLoader}, e.g. {'test': make_loader(ds.test, 500)}")
    for name, loader in loaders.items():
        check_loader(loader, f"loaders[{name!r}]")
    targets = {name: predict_logits(teacher, loader, device=device)[0] for name, loader in loaders.items()}

    def callback(epoch: int, student: nn.Module) -> dict | None:
        if (epoch + 1) % every:
            return None
        out = {"epoch": epoch + 1}
        for name, loader in loaders.items():
            out.update({f"{name}_{k}": v for k, v in fidelity(student, loader, targets[name], device=device).items()})
        return out

    return callback


# ----------------------------------------------------------------------------- the teacher's outputs, once


class TeacherOutputs(TensorDataset):
    """A training set with a teacher's outputs cached beside each example: items are
    (X, y, teacher_logits, *features), one feature per name in `.layers`. Made by
    `cache_teacher_outputs`; `.teacher` is the teacher it came from (held weakly, None once
    that teacher is gone).
    """

    def __init__(self, X, y, teacher_logits, features, layers, teacher: nn.Module):
        check_model(teacher, "teacher")
        features = check_list(features, "features", nonempty=False, hint="one tensor per cached layer")
        layers = check_list(layers, "layers", of=str, nonempty=False, hint="one name per cached feature tensor")
        if len(features) != len(layers):
            raise ValueError(f"need one layer name per feature tensor, got {len(layers)} names "
                             f"for {len(features)} tensors")
        tensors = {"X": X, "y": y, "teacher_logits": teacher_logits,
                   **{f"features[{i}]": f for i, f in enumerate(features)}}
        for name, t in tensors.items():
            check_tensor(t, name, finite=False, nonempty=False)
            if t.ndim == 0:
                raise TypeError(f"{name} must be a tensor with one row per example, got a 0-d tensor")
        check_tensor(teacher_logits, "teacher_logits", ndim=2, finite=False, nonempty=False,
                     shape_hint="(N, num_classes)")
        sizes = {name: t.shape[0] for name, t in tensors.items()}
        if len(set(sizes.values())) != 1 or X.shape[0] == 0:
            raise ValueError(f"every tensor needs the same number of rows (examples), at least one; got {sizes}")
        super().__init__(X, y, teacher_logits, *features)
        self.layers = tuple(layers)
        self._teacher = weakref.ref(teacher)

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher()

    def __getitems__(self, indices: list) -> list[torch.Tensor]:
        """A whole batch in one indexing per tensor (the DataLoader's fast path); `_stacked`
        then passes it through instead of collating item by item."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return [t[index] for t in self.tensors]

    def __repr__(self) -> str:
        return f"TeacherOutputs(n={len(self)}, layers={list(self.layers)})"


def _stacked(batch: list) -> list:
    """The collate function of a `TeacherOutputs` loader: its batches come already stacked."""
    return batch


def loader_like(dataset, train_loader: DataLoader, **kwargs) -> DataLoader:
    """A loader over `dataset` with the batch size and shuffle (and its generator) of `train_loader`."""
    shuffle = isinstance(train_loader.sampler, RandomSampler)
    return DataLoader(dataset, batch_size=train_loader.batch_size, shuffle=shuffle,
                      generator=train_loader.generator if shuffle else None, **kwargs)


@torch.no_grad()
def _run_teacher(teacher: nn.Module, X: torch.Tensor, layers: list[str], device) -> list[torch.Tensor]:
    """[logits (N, K), *features] of the teacher on X, in chunks (as `predict_logits`), on the CPU."""
    outs: list[list[torch.Tensor]] = [[] for _ in range(1 + len(layers))]
    hooks = capture(teacher, layers, detach=True) if layers else contextlib.nullcontext({})
    with eval_mode(teacher.to(device)), fast_layout(teacher, device) as layout, hooks as feats:
        chunk = INFERENCE_CHUNK if layout == torch.channels_last else 256
        for start in range(0, len(X), chunk):
            logits = run_model(teacher, X[start:start + chunk].to(device), "teacher")
            for lst, t in zip(outs, [logits, *collect(feats, layers)]):
                lst.append(t.float().cpu())
    return [torch.cat(o) for o in outs]


def cache_teacher_outputs(teacher: nn.Module, train_loader: DataLoader, layers: Sequence[str] = (), *,
                          logits: torch.Tensor | None = None, device=None) -> DataLoader:
    """Run the teacher once over the training set and return a loader that yields
    (X, y, teacher_logits, *teacher_features) with the same batch size and shuffle.

    Pass that loader to `distill` (for any subset of `layers`) to skip the teacher's forward
    pass in every epoch of every run: several students (a sweep, several seeds) share one
    pass of the teacher. Valid only without data augmentation: the cached outputs belong to
    the original images, not to augmented ones (a fixed set of augmented copies,
    `kdlib.data.augmented_copies`, can be cached). Memory: N times the size of each cached
    feature map.

    Args:
        teacher: the teacher (run in eval mode, without gradients; its modes are restored).
        train_loader: yields (X, y) batches from a data set of N examples.
        layers: names of the teacher layers whose outputs to cache.
        logits: (N, K) teacher logits already computed for that data set, in its order (e.g.
            rows of a larger cache); the teacher is then not run at all (no `layers` then).
    Returns:
        a DataLoader over a `TeacherOutputs` data set: X (B, C, H, W), y (B,),
        teacher_logits (B, K), then one tensor per layer.

    Introduced in: notebooks/05_distillation.ipynb
    """
    check_model(teacher, "teacher")
    check_loader(train_loader)
    if isinstance(train_loader.dataset, TeacherOutputs):
        raise ValueError("train_loader already holds cached teacher outputs; pass the original (X, y) loader")
    layers = check_list(layers, "layers", of=str, nonempty=False, hint="['3', '7'] (names in teacher.named_modules())")
    if layers:
        check_layer_names(teacher, layers, "layers")
    X, y = as_tensors(train_loader.dataset)
    if logits is None:
        outs = _run_teacher(teacher, X, layers, get_device(device))
    else:
        check_tensor(logits, "logits", ndim=2, floating=True, shape_hint="(N, K)")
        if len(logits) != len(X) or layers:
            raise ValueError(f"logits must hold one row per example of the loader's data set (N = {len(X)}), got "
                             f"{len(logits)}, and can stand in for the teacher only when no layers are cached")
        outs = [logits]
    return loader_like(TeacherOutputs(X, y, outs[0], outs[1:], layers, teacher), train_loader, collate_fn=_stacked)
