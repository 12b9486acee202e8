"""Train, distil and evaluate: the one loop every chapter uses.

`train` fits a model to labels; `distill` fits a student to a teacher's soft targets (and
the labels), optionally with a feature term read from inner layers; `evaluate` reports
accuracy, loss and agreement with a teacher. Both training functions are the same plain
PyTorch loop (`_fit`: AdamW, a cosine schedule, a per-epoch `History`) around a different
loss of one batch. `cache_teacher_outputs` computes a teacher's outputs once, for every
epoch and every run that shares the loader.
"""
from __future__ import annotations

import contextlib
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from .data import as_tensors, mixup as mix_batch
from .distributed import all_reduce_sum, is_main_process, shard, wrap
from .guards import preflight, probe_batch, run_model, warn_if_train_mode
from .hooks import capture, check_layer_names, collect
from .losses import check_temperature, kd_loss
from .utils import eval_mode, get_device, seed_everything
from .validation import (check_callable, check_choice, check_fraction, check_int, check_list, check_loader,
                         check_model, check_number, check_tensor)


@dataclass
class History:
    """Per-epoch record of a run: one entry per epoch in each list.

    Introduced in: notebooks/04_teacher.ipynb
    """

    train_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)  # empty when no val_loader was given
    epoch_time_s: list = field(default_factory=list)

    @property
    def num_epochs(self) -> int:
        return len(self.train_loss)

    def __repr__(self) -> str:
        last = f", val_accuracy={self.val_accuracy[-1]:.4f}" if self.val_accuracy else ""
        loss = f", train_loss={self.train_loss[-1]:.4f}" if self.train_loss else ""
        return f"History(epochs={self.num_epochs}{loss}{last}, time={sum(self.epoch_time_s):.1f}s)"


# ----------------------------------------------------------------------------- the loop


def _check_run(model, num_epochs, lr, name="model") -> None:
    check_model(model, name)
    check_int(num_epochs, "num_epochs", low=1)
    check_number(lr, "lr", low=0.0, high=1e3, low_open=True, hint="usually 1e-4 to 1e-1")


def _make_optimizer(model: nn.Module, lr: float, weight_decay: float, num_epochs: int, schedule: str):
    check_number(weight_decay, "weight_decay", low=0.0, hint="e.g. 5e-4")
    check_choice(schedule, "schedule", ("cosine", "constant"))
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"{type(model).__name__} has no trainable parameters: nothing to train")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=num_epochs) if schedule == "cosine" else None
    return opt, sched


def _epochs(num_epochs: int, progress: bool, desc: str):
    if not progress:
        return range(num_epochs)
    from tqdm.auto import trange

    return trange(num_epochs, desc=desc, leave=False)


def _channels_last(model: nn.Module, device) -> bool:
    """Whether to run `model` in channels-last memory format: CNNs on a CPU.

    Same numbers up to rounding, laid out (N, H, W, C) in memory: oneDNN's CPU kernels for
    convolution, batch norm and max-pooling run about a third faster that way on the book's
    models, in training and in inference (measured in the commit that added this).
    """
    return torch.device(device).type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())


_INFERENCE_CHUNK = 128  # images per forward pass in predict_logits (CNNs on a CPU)


@contextlib.contextmanager
def _fast_layout(model: nn.Module | None, device):
    """Within the block, a CNN on a CPU keeps its 4-D weights channels-last; afterwards they
    are back in the usual layout (a model that was channels-last already is left alone).
    The parameters stay the same objects, so an optimizer built on them keeps working."""
    weights = [p for p in model.parameters() if p.dim() == 4] if model is not None else []
    already = any(not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    if model is None or already or not _channels_last(model, device):
        yield torch.channels_last if already else torch.contiguous_format
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield torch.channels_last
    finally:
        model.to(memory_format=torch.contiguous_format)


def _fit(model, loader, batch_loss: Callable, *, num_epochs, lr, weight_decay, schedule,
         val_loader, device, progress, desc, teacher: nn.Module | None = None) -> History:
    """The one training loop: `batch_loss(net, batch)` returns the loss of one batch."""
    opt, sched = _make_optimizer(model, lr, weight_decay, num_epochs, schedule)
    history = History()
    net, loader, sampler = model, *shard(loader)
    if sampler is not None:  # under torchrun: one shard of the data per process, gradients averaged
        net, progress = wrap(model, device), progress and is_main_process()
    bar = _epochs(num_epochs, progress, desc)
    with _fast_layout(model, device) as memory_format, _fast_layout(teacher, device):
        for epoch in bar:
            t0 = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)
            total, count = _run_epoch(model, net, loader, batch_loss, opt, device, memory_format)
            if sched is not None:
                sched.step()
            if sampler is not None:
                total, count = all_reduce_sum(total, count, device)
            _record(history, model, float(total) / count, t0, val_loader, device)
            if progress:
                bar.set_postfix({"loss": f"{history.train_loss[-1]:.3f}",
                                 **({"val_acc": f"{history.val_accuracy[-1]:.3f}"} if history.val_accuracy else {})})
    model.eval()
    return history


def _run_epoch(model, net, loader, batch_loss, opt, device, memory_format) -> tuple[torch.Tensor, int]:
    """One pass over `loader`; returns (sum of batch losses times batch sizes, examples)."""
    model.train()
    total, count = torch.zeros((), device=device), 0
    for batch in loader:
        batch = [t.to(device, non_blocking=True, memory_format=memory_format) if t.dim() == 4
                 else t.to(device, non_blocking=True) for t in batch]
        loss = _checked_loss(batch_loss(net, batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n = batch[0].shape[0]
        total += loss.detach() * n
        count += n
    return total, count


def _checked_loss(loss) -> torch.Tensor:
    """The loss of one batch, which must be a scalar tensor computed from the model's outputs."""
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0 or not loss.requires_grad:
        got = (f"a tensor of shape {tuple(loss.shape)}" + ("" if loss.requires_grad else " without a gradient")
               if isinstance(loss, torch.Tensor) else type(loss).__name__)
        raise TypeError(f"the loss of a batch must be a scalar tensor computed from the model's outputs, got {got}; "
                        "a logit_loss or feature_loss of your own must return such a tensor")
    return loss


def _record(history: History, model, train_loss: float, t0: float, val_loader, device) -> None:
    if not torch.isfinite(torch.tensor(train_loss)):
        raise FloatingPointError(f"the training loss became {train_loss} at epoch {history.num_epochs + 1}; "
                                 "lower the learning rate or check the inputs for NaN/inf")
    history.train_loss.append(train_loss)
    history.epoch_time_s.append(time.perf_counter() - t0)
    if val_loader is not None:
        history.val_accuracy.append(evaluate(model, val_loader, device=device)["accuracy"])


def _reseed(loader: DataLoader, seed: int | None) -> None:
    if seed is None:
        return
    seed_everything(seed)
    if loader.generator is not None:
        loader.generator.manual_seed(seed)


# ----------------------------------------------------------------------------- what each batch sees


def _check_transforms(augment, mixup) -> None:
    if augment is not None:
        check_callable(augment, "augment", hint="a function (B, C, H, W) -> (B, C, H, W), e.g. "
                                                 "kdlib.data.random_shift_rotate")
    if mixup is not None:
        check_number(mixup, "mixup", low=1e-3, high=1e3,
                     hint="the concentration a of Beta(a, a), e.g. 1.0; None turns mixup off")


def _augmented(augment: Callable, X: torch.Tensor) -> torch.Tensor:
    """augment(X), checked: a function that returns something else fails here, not inside the model."""
    out = augment(X)
    if not isinstance(out, torch.Tensor) or out.shape != X.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"augment must return a tensor of the batch's shape {tuple(X.shape)}, got {got}")
    return out


def _transformed(X: torch.Tensor, augment, mixup) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """The batch the models see: augmented, then mixed; returns (X, perm or None, lam)."""
    if augment is not None:
        X = _augmented(augment, X)
    if mixup is None:
        return X, None, 1.0
    return mix_batch(X, mixup)


def _mixed(loss_of: Callable, y: torch.Tensor, perm: torch.Tensor | None, lam: float) -> torch.Tensor:
    """loss_of(y), or on a mixed batch lam * loss_of(y) + (1 - lam) * loss_of(y[perm])."""
    if perm is None:
        return loss_of(y)
    return lam * loss_of(y) + (1 - lam) * loss_of(y[perm])


# ----------------------------------------------------------------------------- train


def train(model: nn.Module, train_loader: DataLoader, *, num_epochs: int = 10, lr: float = 1e-3,
          weight_decay: float = 0.0, schedule: str = "cosine", augment: Callable | None = None,
          mixup: float | None = None, val_loader: DataLoader | None = None, device=None,
          progress: bool = True, seed: int | None = None) -> History:
    """Train `model` with cross-entropy on the labels (AdamW, cosine schedule).

    Args:
        model: maps (B, C, H, W) to logits (B, K); trained in place.
        train_loader: yields (X, y) batches.
        num_epochs, lr, weight_decay: the optimiser's settings.
        schedule: "cosine" (decay to 0 over the run) or "constant".
        augment: optional function (B, C, H, W) -> (B, C, H, W) applied to each batch.
        mixup: None, or the concentration a of mixup's Beta(a, a) (`kdlib.data.mixup`):
            each batch is mixed with a shuffled copy of itself, and so are the labels' losses.
        val_loader: if given, validation accuracy is recorded after each epoch.
        device: defaults to CUDA when available, else the CPU.
        progress: show a progress bar over epochs.
        seed: re-seed torch and the loader's shuffle before training.
    Returns:
        a `History`; the model is left in eval mode.

    Introduced in: notebooks/04_teacher.ipynb
    """
    _check_run(model, num_epochs, lr)
    check_loader(train_loader)
    _check_transforms(augment, mixup)
    _reseed(train_loader, seed)
    device = get_device(device)
    model.to(device)
    preflight(model, None, [t.to(device) for t in probe_batch(train_loader.dataset)])

    def batch_loss(m, batch):
        X, perm, lam = _transformed(batch[0], augment, mixup)
        z = m(X)
        return _mixed(lambda y: F.cross_entropy(z, y), batch[1], perm, lam)

    return _fit(model, train_loader, batch_loss, num_epochs=num_epochs, lr=lr, weight_decay=weight_decay,
                schedule=schedule, val_loader=val_loader, device=device, progress=progress, desc="train")


# ----------------------------------------------------------------------------- inference


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` in eval mode over `loader`; return (logits (N, K), labels (N,)) on the CPU.

    Introduced in: notebooks/02_soft_labels.ipynb
    """
    check_model(model)
    check_loader(loader, "loader")
    device = get_device(device)
    outs, ys = [], []
    with eval_mode(model.to(device)), _fast_layout(model, device) as layout:
        # a CNN on a CPU runs large batches in chunks: 128 images' activations stay in the
        # processor's cache, 1,000 do not (the book's teacher: about twice as fast per image)
        chunk = _INFERENCE_CHUNK if layout == torch.channels_last else None
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

    Introduced in: notebooks/04_teacher.ipynb
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


# ----------------------------------------------------------------------------- the teacher's outputs, once


class TeacherOutputs(TensorDataset):
    """A training set with a teacher's outputs cached beside each example: items are
    (X, y, teacher_logits, *features), one feature per name in `.layers`. Made by
    `cache_teacher_outputs`; `.teacher` is the teacher it came from (held weakly, None once
    that teacher is gone).

    Introduced in: notebooks/07_beyond_logits.ipynb
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


def _loader_like(dataset, train_loader: DataLoader, **kwargs) -> DataLoader:
    """A loader over `dataset` with the batch size and shuffle (and its generator) of `train_loader`."""
    shuffle = isinstance(train_loader.sampler, RandomSampler)
    return DataLoader(dataset, batch_size=train_loader.batch_size, shuffle=shuffle,
                      generator=train_loader.generator if shuffle else None, **kwargs)


@torch.no_grad()
def _run_teacher(teacher: nn.Module, X: torch.Tensor, layers: list[str], device) -> list[torch.Tensor]:
    """[logits (N, K), *features] of the teacher on X, in chunks (as `predict_logits`), on the CPU."""
    outs: list[list[torch.Tensor]] = [[] for _ in range(1 + len(layers))]
    hooks = capture(teacher, layers, detach=True) if layers else contextlib.nullcontext({})
    with eval_mode(teacher.to(device)), _fast_layout(teacher, device) as layout, hooks as feats:
        chunk = _INFERENCE_CHUNK if layout == torch.channels_last else 256
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
    return _loader_like(TeacherOutputs(X, y, outs[0], outs[1:], layers, teacher), train_loader, collate_fn=_stacked)


# ----------------------------------------------------------------------------- distill


class _StudentAndLoss(nn.Module):
    """The student plus the feature loss's own parameters (e.g. FitNets regressors), so that
    one optimiser trains both; forward is the student's."""

    def __init__(self, student: nn.Module, feature_loss):
        super().__init__()
        self.student = student
        self.feature_loss = feature_loss if isinstance(feature_loss, nn.Module) else None

    def forward(self, X):
        return self.student(X)


class _Replay(nn.Module):
    """Stands in for a cached teacher in `kdlib.guards.preflight`: returns the teacher's
    cached logits of the probe batch instead of running the teacher again."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, X):
        return self.logits


def _check_feature_term(student, teacher, feature_loss, student_layers, teacher_layers, beta):
    s = check_list(student_layers, "student_layers", of=str, nonempty=False, hint="['3'] (names in student.named_modules())")
    t = check_list(teacher_layers, "teacher_layers", of=str, nonempty=False, hint="['7'] (names in teacher.named_modules())")
    if len(s) != len(t):
        raise ValueError(f"student_layers {s} and teacher_layers {t} must pair up one to one")
    if feature_loss is not None:
        check_callable(feature_loss, "feature_loss", allow_module=True, hint="(student_feats, teacher_feats) -> loss")
    if (feature_loss is None) != (not s):
        raise ValueError("feature_loss and the layer names go together: give both (a loss and the layers "
                         "it reads) or neither")
    if s:
        check_layer_names(student, s, "student_layers")
        check_layer_names(teacher, t, "teacher_layers")
    check_number(beta, "beta", low=0.0, hint="the weight of the feature term")
    return s, t


def _check_distill(student, teacher, train_loader, T, alpha, logit_loss, augment, mixup, cache_teacher) -> bool:
    """Check `distill`'s arguments; return whether the teacher's outputs are to be cached."""
    check_model(teacher, "teacher")
    if teacher is student:
        raise ValueError("teacher and student are the same object; distil from a separate, trained teacher")
    check_loader(train_loader)
    if logit_loss is None:
        check_temperature(T)
        check_fraction(alpha, "alpha", hint="it weights the soft term")
    else:
        check_callable(logit_loss, "logit_loss", hint="(student_logits, teacher_logits, y) -> loss")
    _check_transforms(augment, mixup)
    changes_images = augment is not None or mixup is not None
    if cache_teacher is None:
        return not changes_images
    if cache_teacher and changes_images:
        raise ValueError("cache_teacher=True with augment or mixup: the cached teacher outputs belong to the "
                         "original images, not the changed ones the student sees; pass cache_teacher=False "
                         "(the teacher then runs on every batch, on the same images as the student)")
    return cache_teacher


def _check_cache(cache: TeacherOutputs, teacher: nn.Module, layers: list[str], changes_images: bool) -> None:
    if changes_images:
        raise ValueError("train_loader holds cached teacher outputs, which belong to the original images: "
                         "augment and mixup need the plain (X, y) loader, so that the teacher sees what the "
                         "student sees")
    if cache.teacher is not teacher:
        raise ValueError("train_loader holds the cached outputs of a different teacher; cache this teacher's "
                         "with cache_teacher_outputs(teacher, loader, layers), or pass the plain (X, y) loader")
    missing = [n for n in layers if n not in cache.layers]
    if missing:
        raise ValueError(f"train_loader caches the teacher layers {list(cache.layers)}, not {missing}; "
                         f"cache them with cache_teacher_outputs(teacher, loader, {layers})")


def distill(student: nn.Module, teacher: nn.Module, train_loader: DataLoader, *, T: float = 4.0,
            alpha: float = 0.9, logit_loss: Callable | None = None, feature_loss: Callable | None = None,
            student_layers: Sequence[str] = (), teacher_layers: Sequence[str] = (), beta: float = 1.0,
            num_epochs: int = 10, lr: float = 1e-3, weight_decay: float = 0.0, schedule: str = "cosine",
            augment: Callable | None = None, mixup: float | None = None, cache_teacher: bool | None = None,
            val_loader: DataLoader | None = None, device=None, progress: bool = True,
            seed: int | None = None) -> History:
    """Train `student` to match `teacher`, with a logit term and an optional feature term:

        L = logit_loss(z_s, z_t, y) + beta * feature_loss([s_1, ..., s_n], [t_1, ..., t_n])

    `logit_loss` defaults to `kdlib.losses.kd_loss(z_s, z_t, y, T=T, alpha=alpha)` (a label of
    -1 means "soft targets only" for that example, see `kdlib.data.partially_labelled`). s_i
    is the output of `student_layers[i]` and t_i of `teacher_layers[i]`, read with
    `kdlib.hooks.capture`; a `feature_loss` that is an `nn.Module` (e.g. `FitNetsHint`) is
    trained together with the student. The teacher runs in eval mode without gradients.

    What the teacher sees: with `cache_teacher` (the default when the images are not
    changed) its outputs are computed once for the whole training set and reused every
    epoch (`cache_teacher_outputs`; a loader made by it is used as it is). With `augment`
    and/or `mixup` the teacher runs on every batch, on the same augmented (and mixed) images
    as the student: consistent teaching, and with mixup Beyer et al.'s (2022) function
    matching.

    Args:
        student: maps (B, C, H, W) to (B, K) logits; trained in place.
        teacher: same input and output shapes; never changed.
        train_loader: yields (X, y) batches.
        T, alpha: temperature and weight of the soft term of the default `kd_loss`.
        logit_loss: (student_logits, teacher_logits, y) -> scalar, replacing `kd_loss`.
        feature_loss, student_layers, teacher_layers, beta: the optional feature term.
        augment, mixup: as in `train` (with mixup the logit loss mixes its two labels' losses).
        cache_teacher: None chooses True without augment/mixup, False with them.
        the rest: as in `train`.
    Returns:
        a `History`; the student is left in eval mode.

    Introduced in: notebooks/05_distillation.ipynb
    """
    _check_run(student, num_epochs, lr, "student")
    cache = _check_distill(student, teacher, train_loader, T, alpha, logit_loss, augment, mixup, cache_teacher)
    s_layers, t_layers = _check_feature_term(student, teacher, feature_loss, student_layers, teacher_layers, beta)
    logit_loss = logit_loss or (lambda z_s, z_t, y: kd_loss(z_s, z_t, y, T=T, alpha=alpha))
    warn_if_train_mode(teacher)
    device = get_device(device)
    teacher.eval().to(device)
    model = _StudentAndLoss(student, feature_loss).to(device)
    probe = [t.to(device) for t in probe_batch(train_loader.dataset)]
    loader, cached = train_loader, isinstance(train_loader.dataset, TeacherOutputs)
    if cached:
        _check_cache(train_loader.dataset, teacher, t_layers, augment is not None or mixup is not None)
    preflight(student, _Replay(probe[2]) if cached else teacher, probe)
    _reseed(train_loader, seed)
    if not cached and cache:
        loader, cached = cache_teacher_outputs(teacher, train_loader, t_layers, device=device), True
        _reseed(loader, seed)
    where = [3 + loader.dataset.layers.index(n) for n in t_layers] if cached else []
    with contextlib.ExitStack() as stack:
        s_feats = stack.enter_context(capture(student, s_layers)) if s_layers else {}
        t_feats = stack.enter_context(capture(teacher, t_layers, detach=True)) if t_layers and not cached else {}

        def batch_loss(m, batch):
            s_feats.clear()  # a layer that did not run in this pass must not leave a stale output
            t_feats.clear()
            X, perm, lam = _transformed(batch[0], augment, mixup)
            if cached:
                z_t, t_list = batch[2], [batch[k] for k in where]
            else:
                with torch.no_grad():
                    z_t = teacher(X)
                t_list = collect(t_feats, t_layers)
            z_s = m(X)
            loss = _mixed(lambda y: logit_loss(z_s, z_t, y), batch[1], perm, lam)
            if feature_loss is not None:
                loss = loss + beta * feature_loss(collect(s_feats, s_layers), t_list)
            return loss

        return _fit(model, loader, batch_loss, num_epochs=num_epochs, lr=lr, weight_decay=weight_decay,
                    schedule=schedule, val_loader=val_loader, device=device, progress=progress, desc="distill",
                    teacher=None if cached else teacher)
