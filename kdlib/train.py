"""Train and distil: the one loop every chapter uses.

`train` fits a model to labels; `distill` fits a student to a teacher's soft targets (and
the labels), optionally with a feature term read from inner layers. Both are the same plain
PyTorch loop (`_fit`: AdamW, a cosine schedule, a per-epoch `History`) around a different
loss of one batch. Running a model over data (`predict_logits`, `evaluate`, the teacher's
outputs cached once) lives in `kdlib.inference`.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .data import mixup as mix_batch
from .distributed import all_reduce_sum, is_main_process, shard, wrap
from .guards import preflight, probe_batch, warn_if_train_mode
from .hooks import capture, check_layer_names, collect
from .inference import TeacherOutputs, cache_teacher_outputs, evaluate, fast_layout
from .losses import check_temperature, kd_loss
from .utils import get_device, seed_everything
from .validation import (check_callable, check_choice, check_fraction, check_int, check_list, check_loader,
                         check_model, check_number)


@dataclass
class History:
    """Per-epoch record of a run: one entry per epoch in each list."""

    train_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)  # empty when no val_loader was given
    epoch_time_s: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # name -> one value per epoch, from a `callback`

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


def _fit(model, loader, batch_loss: Callable, *, num_epochs, lr, weight_decay, schedule,
         val_loader, device, progress, desc, teacher: nn.Module | None = None, callback=None,
         trained: nn.Module | None = None) -> History:
    """The one training loop: `batch_loss(net, batch)` returns the loss of one batch;
    `callback(epoch, trained)` (trained: the model the caller passed) is called after each epoch."""
    opt, sched = _make_optimizer(model, lr, weight_decay, num_epochs, schedule)
    history = History()
    net, loader, sampler = model, *shard(loader)
    if sampler is not None:  # under torchrun: one shard of the data per process, gradients averaged
        net, progress = wrap(model, device), progress and is_main_process()
    bar = _epochs(num_epochs, progress, desc)
    with fast_layout(model, device) as memory_format, fast_layout(teacher, device):
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
            if callback is not None:
                _run_callback(history, callback, epoch, trained if trained is not None else model, device)
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


def _run_callback(history: History, callback, epoch: int, model, device) -> None:
    """Call `callback(epoch, model)` without changing the random draws of the training that
    follows (a DataLoader's iterator draws a seed from torch's generator, for instance)."""
    cuda = torch.device(device).type == "cuda"
    with torch.random.fork_rng(devices=None if cuda else []):
        values = callback(epoch, model)
    _record_metrics(history, values)


def _record_metrics(history: History, values) -> None:
    """Append a callback's {name: number} to `history.metrics` (None records nothing)."""
    if values is None:
        return
    if not isinstance(values, dict):
        raise TypeError(f"a callback must return a dict of numbers (or None), got {type(values).__name__}")
    for name, value in values.items():
        try:
            history.metrics.setdefault(str(name), []).append(float(value))
        except (TypeError, ValueError):
            raise TypeError(f"a callback's values must be numbers, got {name!r}: {type(value).__name__}") from None


def _reseed(loader: DataLoader, seed: int | None) -> None:
    if seed is None:
        return
    seed_everything(seed)
    if loader.generator is not None:
        loader.generator.manual_seed(seed)


# ----------------------------------------------------------------------------- what each batch sees


def _check_callback(callback) -> None:
    if callback is not None:
        check_callable(callback, "callback", hint="a function (epoch, model) -> dict of numbers or None, "
                                                   "e.g. kdlib.inference.track_fidelity(teacher, loaders)")


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
          progress: bool = True, seed: int | None = None, callback: Callable | None = None) -> History:
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
        callback: optional `callback(epoch, model) -> {name: number} or None`, called after
            each epoch (epoch counts from 0); the numbers go to `History.metrics[name]`, one
            per epoch (e.g. `kdlib.inference.track_fidelity`). It must leave the model's mode
            as it found it (`kdlib.utils.eval_mode`, as `predict_logits` does).
    Returns:
        a `History`; the model is left in eval mode.

    Introduced in: notebooks/04_teacher.ipynb
    """
    _check_run(model, num_epochs, lr)
    check_loader(train_loader)
    _check_transforms(augment, mixup)
    _check_callback(callback)
    _reseed(train_loader, seed)
    device = get_device(device)
    model.to(device)
    preflight(model, None, [t.to(device) for t in probe_batch(train_loader.dataset)])

    def batch_loss(m, batch):
        X, perm, lam = _transformed(batch[0], augment, mixup)
        z = m(X)
        return _mixed(lambda y: F.cross_entropy(z, y), batch[1], perm, lam)

    return _fit(model, train_loader, batch_loss, num_epochs=num_epochs, lr=lr, weight_decay=weight_decay,
                schedule=schedule, val_loader=val_loader, device=device, progress=progress, desc="train",
                callback=callback)


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
            seed: int | None = None, callback: Callable | None = None) -> History:
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
        callback: as in `train`; it gets the student.
        the rest: as in `train`.
    Returns:
        a `History`; the student is left in eval mode.

    Introduced in: notebooks/05_distillation.ipynb
    """
    _check_run(student, num_epochs, lr, "student")
    cache = _check_distill(student, teacher, train_loader, T, alpha, logit_loss, augment, mixup, cache_teacher)
    _check_callback(callback)
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
                    teacher=None if cached else teacher, callback=callback, trained=student)
