"""Changing who teaches: teacher assistants and born-again networks.

Both are short compositions of `kdlib.train.train` and `kdlib.train.distill`: a chain of
distillations, each step an ordinary one.
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .inference import TeacherOutputs, loader_like
from .train import History, distill, train
from .validation import check_callable, check_int, check_list, check_loader, check_model


def _xy_loader(train_loader: DataLoader) -> DataLoader:
    """The plain (X, y) loader behind a loader of cached teacher outputs (same batches, same
    shuffle); any other loader is returned as it is. A chain has a different teacher at each
    step, so one teacher's cache must not reach the others."""
    check_loader(train_loader)
    ds = train_loader.dataset
    if not isinstance(ds, TeacherOutputs):
        return train_loader
    return loader_like(TensorDataset(*ds.tensors[:2]), train_loader)


def teacher_assistant_chain(teacher: nn.Module, assistants: Sequence[nn.Module], student: nn.Module,
                            train_loader: DataLoader, **distill_kwargs) -> list[History]:
    """Teacher-assistant KD of Mirzadeh et al. (2020), arXiv:1902.03393.

        teacher -> assistant_1 -> ... -> assistant_n -> student

    Each model is distilled from the one before it with `kdlib.train.distill`, so that no
    step crosses too large a gap in size. The assistants and the student are trained in place.

    Args:
        teacher: the trained teacher.
        assistants: intermediate models, largest first (at least one).
        student: the final student.
        train_loader: yields (X, y) batches; it may be a loader from
            `cache_teacher_outputs(teacher, ...)`, whose cache then serves the first step only
            (the later steps cache their own teacher's outputs).
        distill_kwargs: passed to every step (T, alpha, num_epochs, lr, seed, ...).
    Returns:
        one `History` per step (len(assistants) + 1).

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    plain = _xy_loader(train_loader)
    if isinstance(assistants, nn.Module) and not isinstance(assistants, nn.ModuleList):
        raise TypeError("assistants must be a list of models; put a single assistant in a list: [assistant]")
    assistants = check_list(list(assistants) if isinstance(assistants, nn.ModuleList) else assistants,
                            "assistants", of=nn.Module, hint="[assistant]: intermediate models, largest first")
    chain = [check_model(teacher, "teacher"), *assistants, check_model(student, "student")]
    if len({id(m) for m in chain}) != len(chain):
        raise ValueError("the teacher, assistants and student must be different model objects")
    histories = []
    for big, small in zip(chain, chain[1:]):
        own_cache = isinstance(train_loader.dataset, TeacherOutputs) and train_loader.dataset.teacher is big
        histories.append(distill(small, big, train_loader if own_cache else plain, **distill_kwargs))
    return histories


def _check_keywords(fn: Callable, kwargs: dict, what: str) -> None:
    known = set(inspect.signature(fn).parameters) - {"model", "student", "teacher", "train_loader"}
    unknown = sorted(k for k in kwargs if k not in known)
    if unknown:
        raise TypeError(f"{what} hold {unknown}, which kdlib.train.{fn.__name__} does not take; "
                        f"it takes {sorted(known)}")


def born_again(make_model: Callable[[], nn.Module], train_loader: DataLoader, *, generations: int = 1,
               first: nn.Module | None = None, train_kwargs: dict | None = None,
               **distill_kwargs) -> tuple[list[nn.Module], list[History]]:
    """Born-again networks of Furlanello et al. (2018), arXiv:1805.04770.

    Generation 0 is trained on the labels; generation g + 1, a fresh model of the *same*
    architecture, is distilled from generation g. No bigger teacher is needed.

    Args:
        make_model: builds a fresh model (called once per generation).
        train_loader: yields (X, y) batches (cached teacher outputs in it are ignored).
        generations: how many distilled generations after generation 0 (>= 1).
        first: an already trained generation 0 to start from (then it is not retrained).
        train_kwargs: passed to `kdlib.train.train` for generation 0.
        distill_kwargs: passed to `kdlib.train.distill` for the later generations: T, alpha,
            num_epochs, lr, seed, ...
    Returns:
        (models, histories): generations + 1 models (generation 0 first) and the histories of
        the runs that happened.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    check_callable(make_model, "make_model", hint="a function that builds a fresh model, e.g. "
                                                  "lambda: StudentCNN(width=8)")
    check_int(generations, "generations", low=1)
    if train_kwargs is not None and not isinstance(train_kwargs, dict):
        raise TypeError(f"train_kwargs must be a dict of arguments for kdlib.train.train, e.g. "
                        f"dict(num_epochs=5), got {type(train_kwargs).__name__}")
    _check_keywords(train, train_kwargs or {}, "train_kwargs")
    _check_keywords(distill, distill_kwargs, "the keyword arguments for the distilled generations")
    train_loader = _xy_loader(train_loader)  # each generation has its own teacher
    histories = []
    if first is None:
        first = make_model()
        histories.append(train(first, train_loader, **(train_kwargs or {})))
    models = [first]
    for _ in range(generations):
        nxt = make_model()
        if nxt is models[-1]:
            raise ValueError("make_model returned the same object twice; it must build a new model each call")
        histories.append(distill(nxt, models[-1], train_loader, **distill_kwargs))
        models.append(nxt)
    return models, histories
