"""Train, distil and evaluate: the loops every chapter uses.

`train` fits a model to labels; `distill` fits a student to a teacher's soft
targets (and the labels); `evaluate` reports accuracy, loss and agreement
with a teacher. All three are plain PyTorch loops with a per-epoch history.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset, TensorDataset

from .data import as_tensors
from .guards import preflight, probe_batch, run_model, warn_if_train_mode
from .losses import check_temperature, kd_loss
from .utils import get_device, seed_everything


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


def _check_loader(loader, name="train_loader") -> DataLoader:
    if not isinstance(loader, DataLoader):
        raise TypeError(f"{name} must be a torch DataLoader (see kdlib.data.make_loader), "
                        f"got {type(loader).__name__}")
    if len(loader.dataset) == 0:
        raise ValueError(f"{name} holds no examples")
    return loader


def _check_common(model, num_epochs, lr, name="model") -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive int, got {num_epochs!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 1e3:
        raise ValueError(f"lr must be a positive number (usually 1e-4 to 1e-1), got {lr!r}")


def _make_optimizer(model: nn.Module, lr: float, weight_decay: float, num_epochs: int, schedule: str):
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not 0 <= weight_decay < math.inf:
        raise ValueError(f"weight_decay must be a number >= 0, e.g. 5e-4, got {weight_decay!r}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"{type(model).__name__} has no trainable parameters: nothing to train")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=num_epochs)
    elif schedule == "constant":
        sched = None
    else:
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
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
def _fast_layout(model: nn.Module, device):
    """Within the block, a CNN on a CPU keeps its 4-D weights channels-last; afterwards they
    are back in the usual layout (a model that was channels-last already is left alone).
    The parameters stay the same objects, so an optimizer built on them keeps working."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    already = any(not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    if already or not _channels_last(model, device):
        yield torch.channels_last if already else torch.contiguous_format
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield torch.channels_last
    finally:
        model.to(memory_format=torch.contiguous_format)


def _fit(model, loader, batch_loss: Callable, *, num_epochs, lr, weight_decay, schedule,
         val_loader, device, progress, desc, teacher: nn.Module | None = None) -> History:
    """The shared loop: `batch_loss(model, batch)` returns the loss of one batch."""
    opt, sched = _make_optimizer(model, lr, weight_decay, num_epochs, schedule)
    with _fast_layout(model, device) as memory_format, \
            (_fast_layout(teacher, device) if teacher is not None else contextlib.nullcontext()):
        return _fit_loop(model, loader, batch_loss, opt, sched, num_epochs=num_epochs, val_loader=val_loader,
                         device=device, progress=progress, desc=desc, memory_format=memory_format)


def _fit_loop(model, loader, batch_loss, opt, sched, *, num_epochs, val_loader, device, progress, desc,
              memory_format) -> History:
    history = History()
    net, loader, sampler = model, *_shard(loader)
    if sampler is not None:  # under torchrun: one shard of the data per process, gradients averaged
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        progress = progress and is_main_process()
    bar = _epochs(num_epochs, progress, desc)
    for epoch in bar:
        t0 = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        total, count = torch.zeros((), device=device), 0
        for batch in loader:
            batch = [t.to(device, non_blocking=True, memory_format=memory_format) if t.dim() == 4
                     else t.to(device, non_blocking=True) for t in batch]
            loss = batch_loss(net, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = batch[0].shape[0]
            total += loss.detach() * n
            count += n
        if sched is not None:
            sched.step()
        if sampler is not None:
            total, count = _all_reduce_sum(total, count, device)
        train_loss = float(total) / count
        if not torch.isfinite(torch.tensor(train_loss)):
            raise FloatingPointError(f"the training loss became {train_loss} at epoch {history.num_epochs + 1}; "
                                     "lower the learning rate or check the inputs for NaN/inf")
        history.train_loss.append(train_loss)
        history.epoch_time_s.append(time.perf_counter() - t0)
        if val_loader is not None:
            history.val_accuracy.append(evaluate(model, val_loader, device=device)["accuracy"])
        if progress:
            post = {"loss": f"{train_loss:.3f}"}
            if history.val_accuracy:
                post["val_acc"] = f"{history.val_accuracy[-1]:.3f}"
            bar.set_postfix(post)
    model.eval()
    return history


def is_distributed() -> bool:
    """True inside a process group (e.g. a script launched with `torchrun`)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main_process() -> bool:
    """True in the single process of an ordinary run, or in rank 0 under `torchrun`."""
    return not is_distributed() or torch.distributed.get_rank() == 0


def init_distributed(backend: str | None = None) -> torch.device:
    """Join the process group that `torchrun` set up (gloo on CPU, nccl on GPU);
    return this process's device. Call once at the top of a script run with
    `torchrun --nproc_per_node=N script.py`; `train` and `distill` then shard
    the data and average gradients by themselves.

    Introduced in: notebooks/13_capstone.ipynb
    """
    import os

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError("init_distributed() needs the variables torchrun sets (RANK, WORLD_SIZE, ...): "
                           "launch the script with `torchrun --nproc_per_node=2 script.py`")
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    if not is_distributed():
        torch.distributed.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _shard(loader: DataLoader):
    """Under torchrun, the same loader over this process's shard of the data
    (`DistributedSampler`); otherwise the loader unchanged. Returns (loader, sampler or None)."""
    if not is_distributed():
        return loader, None
    from torch.utils.data.distributed import DistributedSampler

    shuffle = isinstance(loader.sampler, RandomSampler)
    seed = int(loader.generator.initial_seed()) if loader.generator is not None else 0
    sampler = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler), sampler


def _all_reduce_sum(total: torch.Tensor, count: int, device) -> tuple[torch.Tensor, int]:
    buf = torch.stack([total.detach().float(), torch.tensor(float(count), device=device)])
    torch.distributed.all_reduce(buf)
    return buf[0], int(buf[1].item())


def _augmented(augment: Callable, X: torch.Tensor) -> torch.Tensor:
    """augment(X), checked: a function that returns something else fails here, not inside the model."""
    if not callable(augment):
        raise TypeError(f"augment must be a function (B, C, H, W) -> (B, C, H, W), got {type(augment).__name__}")
    out = augment(X)
    if not isinstance(out, torch.Tensor) or out.shape != X.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"augment must return a tensor of the batch's shape {tuple(X.shape)}, got {got}")
    return out


def _reseed(loader: DataLoader, seed: int | None) -> None:
    if seed is None:
        return
    seed_everything(seed)
    if loader.generator is not None:
        loader.generator.manual_seed(seed)


def train(model: nn.Module, train_loader: DataLoader, *, num_epochs: int = 10, lr: float = 1e-3,
          weight_decay: float = 0.0, schedule: str = "cosine", augment: Callable | None = None,
          val_loader: DataLoader | None = None, device=None, progress: bool = True,
          seed: int | None = None) -> History:
    """Train `model` with cross-entropy on the labels (AdamW, cosine schedule).

    Args:
        model: maps (B, C, H, W) to logits (B, K); trained in place.
        train_loader: yields (X, y) batches.
        num_epochs, lr, weight_decay: the optimiser's settings.
        schedule: "cosine" (decay to 0 over the run) or "constant".
        augment: optional function (B, C, H, W) -> (B, C, H, W) applied to each batch.
        val_loader: if given, validation accuracy is recorded after each epoch.
        device: defaults to CUDA when available, else the CPU.
        progress: show a progress bar over epochs.
        seed: re-seed torch and the loader's shuffle before training.
    Returns:
        a `History`; the model is left in eval mode.

    Introduced in: notebooks/04_teacher.ipynb
    """
    _check_common(model, num_epochs, lr)
    _check_loader(train_loader)
    _reseed(train_loader, seed)
    device = get_device(device)
    model.to(device)
    preflight(model, None, [t.to(device) for t in probe_batch(train_loader.dataset)])

    def batch_loss(m, batch):
        X, y = batch[0], batch[1]
        if augment is not None:
            X = _augmented(augment, X)
        return F.cross_entropy(m(X), y)

    return _fit(model, train_loader, batch_loss, num_epochs=num_epochs, lr=lr, weight_decay=weight_decay,
                schedule=schedule, val_loader=val_loader, device=device, progress=progress, desc="train")


class _TensorsWithLogits(TensorDataset):
    """A TensorDataset (X, y, teacher_logits) made by `cache_teacher_logits`."""


class _WithLogits(Dataset):
    """Pairs each example of a data set with a precomputed row of teacher logits."""

    def __init__(self, dataset: Dataset, logits: torch.Tensor):
        self.dataset, self.logits = dataset, logits

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        X, y = self.dataset[i][:2]
        return X, y, self.logits[i]


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` in eval mode over `loader`; return (logits (N, K), labels (N,)) on the CPU.

    Introduced in: notebooks/02_soft_labels.ipynb
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_loader(loader, "loader")
    device = get_device(device)
    was_training = model.training
    model.eval().to(device)
    outs, ys = [], []
    try:
        with _fast_layout(model, device) as layout:
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
    finally:
        model.train(was_training)
    return torch.cat(outs), torch.cat(ys)


def cache_teacher_logits(teacher: nn.Module, train_loader: DataLoader, *, device=None,
                         logits: torch.Tensor | None = None) -> DataLoader:
    """Compute the teacher's logits for every training example once, and return a
    loader that yields (X, y, teacher_logits) with the same batch size and shuffle.

    Saves one teacher forward pass per batch per epoch. Only valid without
    augmentation: with it, the cached logits belong to images the student
    never sees. `distill(..., cache_logits=True)` calls this itself, or
    reuses a loader this function returned, so that several students
    (a sweep, several seeds) share one pass of the teacher.

    Args:
        teacher: the model whose logits are cached (run in eval mode, without gradients).
        train_loader: yields (X, y) batches from a data set of N examples.
        logits: (N, K) teacher logits already computed for that data set, in its order
            (e.g. rows of a larger cache); the teacher is then not run at all.
    Returns:
        a DataLoader over (X, y, teacher_logits) with the batch size and shuffle of `train_loader`.

    Introduced in: notebooks/05_distillation.ipynb
    """
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    _check_loader(train_loader)
    dataset = train_loader.dataset
    if logits is None:
        in_order = DataLoader(dataset, batch_size=max(train_loader.batch_size or 256, 256), shuffle=False)
        logits, _ = predict_logits(teacher, in_order, device=device)
    elif (not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.ndim != 2
          or len(logits) != len(dataset)):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a float tensor (N, K) with one row per example of the loader's "
                         f"data set (N = {len(dataset)}), got {got}")
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        new = _TensorsWithLogits(*dataset.tensors, logits)
    else:
        new = _WithLogits(dataset, logits)
    shuffle = isinstance(train_loader.sampler, RandomSampler)
    return DataLoader(new, batch_size=train_loader.batch_size, shuffle=shuffle,
                      generator=train_loader.generator if shuffle else None)


UNLABELLED = -1  # the label of a transfer-set example whose label the student may not see


def partially_labelled(dataset: Dataset, labelled: Subset) -> TensorDataset:
    """A transfer set: every example of `dataset`, with its label kept only where the
    example is in `labelled` and `UNLABELLED` (-1) elsewhere.

    `distill` uses the teacher's soft targets on all the examples and the
    labels where there are some: Hinton et al.'s transfer set, with the
    unlabelled images that a data-scarce project usually has.

    Args:
        dataset: N examples (X, y).
        labelled: a `Subset` of `dataset` (e.g. `kdlib.data.labelled_subset(dataset, 1000)`).
    Returns:
        a TensorDataset of X (N, C, H, W) and y (N,), int64, -1 where unlabelled.

    Introduced in: notebooks/05_distillation.ipynb
    """
    if not isinstance(labelled, Subset) or labelled.dataset is not dataset:
        raise ValueError("labelled must be a Subset of the same dataset, e.g. "
                         "kdlib.data.labelled_subset(dataset, 1000)")
    X, y = as_tensors(dataset)
    keep = torch.zeros(len(y), dtype=torch.bool)
    keep[torch.as_tensor(list(labelled.indices), dtype=torch.long)] = True
    return TensorDataset(X, torch.where(keep, y.long(), torch.full_like(y.long(), UNLABELLED)))


def kd_loss_partial(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                    T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """`kd_loss` on a batch where some labels are `UNLABELLED` (-1):

        L = alpha * T^2 * KL(p_T || q_T)  [all B examples]
            + (1 - alpha) * CE(y, softmax(z_s))  [mean over the labelled ones only]

    With every label present this is exactly `kd_loss`; with none, `alpha` times its soft term.

    Args:
        student_logits, teacher_logits: (B, K) float.
        labels: (B,) int64, class indices or -1.
    Returns:
        a scalar tensor.

    Introduced in: notebooks/05_distillation.ipynb
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be an integer tensor (B,), got {type(labels).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if labels.ndim != 1 or not isinstance(student_logits, torch.Tensor) or labels.shape != student_logits.shape[:1]:
        raise ValueError(f"labels must have shape (batch,) matching student_logits, got {tuple(labels.shape)}")
    has = labels != UNLABELLED
    if bool(has.all()):
        return kd_loss(student_logits, teacher_logits, labels, T=T, alpha=alpha)
    soft = kd_loss(student_logits, teacher_logits, None, T=T, alpha=1.0)
    if not bool(has.any()) or alpha == 1:
        return alpha * soft
    labelled = labels[has]
    if labelled.min() < 0 or labelled.max() >= student_logits.shape[1]:
        raise ValueError(f"labels must be class indices in 0..{student_logits.shape[1] - 1} or -1 (unlabelled)")
    hard = F.cross_entropy(student_logits[has], labelled)
    return alpha * soft + (1 - alpha) * hard


def distill(student: nn.Module, teacher: nn.Module, train_loader: DataLoader, *, T: float = 4.0,
            alpha: float = 0.9, num_epochs: int = 10, lr: float = 1e-3, weight_decay: float = 0.0,
            schedule: str = "cosine", augment: Callable | None = None,
            cache_logits: bool | None = None, val_loader: DataLoader | None = None, device=None,
            progress: bool = True, seed: int | None = None) -> History:
    """Train `student` to match `teacher` with `kdlib.losses.kd_loss`.

    The teacher is put in eval mode and runs without gradients. With
    `cache_logits` (the default when there is no augmentation) its logits
    are computed once for the whole training set and reused every epoch.

    Args:
        student: maps (B, C, H, W) to (B, K) logits; trained in place.
        teacher: same input and output shapes; never changed.
        train_loader: yields (X, y) batches; a label of -1 (`UNLABELLED`) means
            "soft targets only" for that example (see `partially_labelled`).
        T, alpha: temperature and weight of the soft term (see `kd_loss`).
        cache_logits: None chooses True without augmentation, False with it. A
            `train_loader` returned by `cache_teacher_logits` is used as it is.
        the rest: as in `train`.
    Returns:
        a `History`; the student is left in eval mode.

    Introduced in: notebooks/05_distillation.ipynb
    """
    _check_common(student, num_epochs, lr, "student")
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    if teacher is student:
        raise ValueError("teacher and student are the same object; distil from a separate, trained teacher")
    _check_loader(train_loader)
    check_temperature(T)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if cache_logits is None:
        cache_logits = augment is None
    if cache_logits and augment is not None:
        raise ValueError("cache_logits=True with augment: the cached teacher logits belong to the original "
                         "images, not the augmented ones the student sees; pass cache_logits=False")
    warn_if_train_mode(teacher)
    device = get_device(device)
    teacher.eval().to(device)
    student.to(device)
    preflight(student, teacher, [t.to(device) for t in probe_batch(train_loader.dataset)])
    _reseed(train_loader, seed)
    if cache_logits and isinstance(train_loader.dataset, (_TensorsWithLogits, _WithLogits)):
        loader = train_loader  # made by cache_teacher_logits: the logits are already there
    elif cache_logits:
        loader = cache_teacher_logits(teacher, train_loader, device=device)
        _reseed(loader, seed)
    else:
        loader = train_loader

    def batch_loss(m, batch):
        X, y = batch[0], batch[1]
        if cache_logits:
            t_logits = batch[2]
        else:
            if augment is not None:
                X = _augmented(augment, X)
            with torch.no_grad():
                t_logits = teacher(X)
        return kd_loss_partial(m(X), t_logits, y, T=T, alpha=alpha)

    return _fit(student, loader, batch_loss, num_epochs=num_epochs, lr=lr, weight_decay=weight_decay,
                schedule=schedule, val_loader=val_loader, device=device, progress=progress, desc="distill",
                teacher=None if cache_logits else teacher)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, teacher: nn.Module | None = None, device=None) -> dict:
    """Accuracy and mean cross-entropy of `model` on `loader`, and, given a
    teacher, the fraction of examples where both predict the same class.

    Returns:
        {"accuracy": float, "loss": float} plus "agreement" with a teacher.

    Introduced in: notebooks/04_teacher.ipynb
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_loader(loader, "loader")
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
