"""The book's trained teachers: one recipe each, loaded from a checkpoint or retrained.

A checkpoint for MNIST-5k ships in `kdlib/assets/checkpoints/`; `python -m kdlib
train-teacher --force` rebuilds it from this recipe, and any chapter that
finds it missing retrains it (`kdlib.utils.load_or_train`).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

from torch import nn

from .data import DatasetSplits, load_dataset, make_loader, random_shift_rotate
from .models import TeacherCNN
from .train import train
from .utils import asset_path, load_or_train
from .validation import check_int, check_labels, check_logits, check_model, check_same_shape


@dataclass(frozen=True)
class TeacherRecipe:
    """How the book's teacher is trained (each field is one choice made on val)."""

    width: int = 32          # channels of the first conv block (0.87 M parameters at 32)
    num_epochs: int = 15     # passes over the 3,500 training images
    lr: float = 2e-3         # AdamW peak learning rate, cosine decay to 0
    weight_decay: float = 5e-4
    batch_size: int = 64
    augment: bool = True     # random shift (2 px) and rotation (10 degrees)
    seed: int = 0


TEACHER_RECIPE = TeacherRecipe()


def _check_splits(ds) -> DatasetSplits:
    if not isinstance(ds, DatasetSplits):
        raise TypeError(f"ds must be the DatasetSplits of kdlib.data.load_dataset, got {type(ds).__name__}")
    return ds


def _check_recipe(recipe, cls) -> None:
    if not isinstance(recipe, cls):
        raise TypeError(f"recipe must be a {cls.__name__}, got {type(recipe).__name__}")


def checkpoint_dir() -> Path:
    """Where checkpoints live: $KDLIB_CHECKPOINTS, else `kdlib/assets/checkpoints` (shipped with kdlib)."""
    if os.environ.get("KDLIB_CHECKPOINTS"):
        return Path(os.environ["KDLIB_CHECKPOINTS"])
    return asset_path("checkpoints")


def teacher_path(dataset: str = "mnist5k") -> Path:
    """The checkpoint path of the book's teacher for `dataset`.

    Introduced in: notebooks/04_teacher.ipynb
    """
    return checkpoint_dir() / f"teacher_{dataset}.pt"


def train_teacher(model: nn.Module, ds: DatasetSplits, recipe: TeacherRecipe = TEACHER_RECIPE,
                  *, progress: bool = True, callback=None):
    """Train `model` on `ds.train` with `recipe`; returns the `History`. `callback` is
    `kdlib.train.train`'s (e.g. to keep checkpoints of the run after chosen epochs).

    Introduced in: notebooks/04_teacher.ipynb
    """
    _check_splits(ds)
    _check_recipe(recipe, TeacherRecipe)
    loader = make_loader(ds.train, recipe.batch_size, shuffle=True, seed=recipe.seed)
    return train(model, loader, num_epochs=recipe.num_epochs, lr=recipe.lr, weight_decay=recipe.weight_decay,
                 augment=random_shift_rotate if recipe.augment else None,
                 val_loader=make_loader(ds.val, 500), progress=progress, seed=recipe.seed, callback=callback)


def load_teacher(dataset: str = "mnist5k", *, ds: DatasetSplits | None = None, progress: bool = True,
                 verbose: bool = True, **load_kwargs) -> nn.Module:
    """The book's trained teacher for `dataset`, in eval mode: loaded from its
    checkpoint (hash checked), or trained with `TEACHER_RECIPE` and saved.

    Introduced in: notebooks/01_edge_budgets.ipynb
    """
    ds = _check_splits(ds) if ds is not None else load_dataset(dataset, **load_kwargs)
    recipe = TEACHER_RECIPE
    return load_or_train(
        teacher_path(dataset),
        lambda: TeacherCNN(ds.input_shape, ds.num_classes, width=recipe.width),
        lambda m: train_teacher(m, ds, recipe, progress=progress),
        verbose=verbose,
    )


def describe_recipe(recipe: TeacherRecipe = TEACHER_RECIPE) -> dict:
    """The recipe as a plain dict (for printing and reports).

    Introduced in: notebooks/04_teacher.ipynb
    """
    if not is_dataclass(recipe) or isinstance(recipe, type):
        raise TypeError(f"recipe must be a recipe such as kdlib.zoo.TEACHER_RECIPE, got {type(recipe).__name__}")
    return asdict(recipe)


@dataclass(frozen=True)
class StudentRecipe:
    """How the book's compressed-model chapters get their distilled student."""

    width: int = 8           # channels of the first conv block (about 9 k parameters at 8)
    depth: int = 2           # conv blocks, each halving the resolution
    T: float = 4.0           # distillation temperature
    alpha: float = 0.9       # weight of the soft term
    num_epochs: int = 60
    lr: float = 5e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    seed: int = 0


STUDENT_RECIPE = StudentRecipe()


def student_path(dataset: str = "mnist5k") -> Path:
    """The checkpoint path of the book's distilled student for `dataset`.

    Introduced in: notebooks/08_pruning.ipynb
    """
    return checkpoint_dir() / f"student_{dataset}.pt"


def distill_student(student: nn.Module, teacher: nn.Module, ds: DatasetSplits,
                    recipe: StudentRecipe = STUDENT_RECIPE, *, progress: bool = True):
    """Distil `student` from `teacher` on all of `ds.train` with `recipe` (cached logits)."""
    from .train import distill

    _check_splits(ds)
    _check_recipe(recipe, StudentRecipe)
    loader = make_loader(ds.train, recipe.batch_size, shuffle=True, seed=recipe.seed)
    return distill(student, teacher, loader, T=recipe.T, alpha=recipe.alpha, num_epochs=recipe.num_epochs,
                   lr=recipe.lr, weight_decay=recipe.weight_decay, val_loader=make_loader(ds.val, 500),
                   progress=progress, seed=recipe.seed)


def load_student(dataset: str = "mnist5k", *, ds: DatasetSplits | None = None, teacher: nn.Module | None = None,
                 progress: bool = True, verbose: bool = True, **load_kwargs) -> nn.Module:
    """The book's distilled `StudentCNN` for `dataset`, in eval mode: loaded from
    its checkpoint, or distilled from the book's teacher with `STUDENT_RECIPE`.

    This is the starting point of the pruning, quantization and export chapters.

    Introduced in: notebooks/01_edge_budgets.ipynb
    """
    from .models import StudentCNN

    if teacher is not None:
        check_model(teacher, "teacher")
    ds = _check_splits(ds) if ds is not None else load_dataset(dataset, **load_kwargs)
    recipe = STUDENT_RECIPE

    def fit(student):
        t = teacher if teacher is not None else load_teacher(dataset, ds=ds, progress=progress, verbose=verbose)
        distill_student(student, t, ds, recipe, progress=progress)

    return load_or_train(student_path(dataset),
                         lambda: StudentCNN(ds.input_shape, ds.num_classes, width=recipe.width, depth=recipe.depth),
                         fit, verbose=verbose)


@dataclass(frozen=True)
class DistillRecipe:
    """The book's data-scarce setting (chapter 5): the student may see only `num_labels`
    labels, and the teacher's soft targets on every training image (the transfer set).

    The distilled student trains on `copies` fixed versions of the transfer set (the
    originals and light augmentations, `kdlib.data.random_shift_rotate`), on which the
    teacher's logits are computed once. The student alone gets the same compute: as many
    gradient steps (`alone_epochs` passes over the labelled images, see `scarce_steps`), with
    its own augmentation, mixup and learning rate chosen on val (bench/kd_gain.py
    --alone-sweep), as T and alpha were for the distilled one (--sweep). bench/kd_gain.py
    reports test.
    """

    num_labels: int = 1000   # labelled training images (a stratified subset, `label_seed`)
    width: int = 8           # StudentCNN width (9,122 parameters at 8, the book's student)
    depth: int = 2           # conv blocks, each halving the resolution
    T: float = 2.0           # distillation temperature (chosen on val: bench/kd_gain.py --sweep)
    alpha: float = 1.0       # weight of the soft term; the hard term (1 - alpha) sees only the labelled images
    augment: bool = True     # the distilled student's copies are augmented (False: the plain transfer set)
    copies: int = 10         # versions of the transfer set: the originals + 9 augmented ones
    num_epochs: int = 15     # passes over the transfer set's copies (35,000 images, 274 steps per pass)
    alone_epochs: int = 514  # passes over the labelled images (8 steps each): as many steps as num_epochs
    lr: float = 5e-3         # AdamW peak learning rate, cosine decay to 0
    weight_decay: float = 0.0
    batch_size: int = 128
    label_seed: int = 0      # which images carry labels (and the seed of the augmented copies)
    alone_augment: str = "light"      # the student alone's augmentation, a key of AUGMENTATIONS (chosen on val)
    alone_mixup: float | None = None  # its mixup concentration, or None (chosen on val)
    alone_lr: float = 1e-2            # its peak learning rate (chosen on val)


DISTILL_RECIPE = DistillRecipe()


def scarce_data(ds: DatasetSplits, recipe: DistillRecipe = DISTILL_RECIPE):
    """The data-scarce setting of `recipe`: (labelled, transfer) where `labelled` is a
    stratified `Subset` of `recipe.num_labels` training images, and `transfer` holds every
    training image with labels only on those (-1 elsewhere, see `kdlib.data.partially_labelled`).

    Introduced in: notebooks/05_distillation.ipynb
    """
    from .data import labelled_subset
    from .data import partially_labelled

    _check_splits(ds)
    _check_recipe(recipe, DistillRecipe)
    labelled = labelled_subset(ds.train, recipe.num_labels, seed=recipe.label_seed)
    return labelled, partially_labelled(ds.train, labelled)


def _strong_shift_rotate(X, generator=None):
    return random_shift_rotate(X, max_shift=3, max_degrees=20, generator=generator)


AUGMENTATIONS = {"none": None, "light": random_shift_rotate, "strong": _strong_shift_rotate}
"""The student alone's augmentations: none; light (shifts up to 2 px, rotations up to 10
degrees, as the teacher and the distilled student's copies); strong (3 px, 20 degrees)."""


def scarce_steps(recipe: DistillRecipe = DISTILL_RECIPE, n_train: int = 3500) -> dict:
    """Gradient steps of the two students of `recipe` when the training set has `n_train`
    images: {"distilled": ..., "alone": ...} (each pass ends with a smaller last batch).
    """
    _check_recipe(recipe, DistillRecipe)
    n_train = check_int(n_train, "n_train", low=1, hint="the number of training images")
    copies = recipe.copies if recipe.augment else 1
    per_pass = -(-copies * n_train // recipe.batch_size)  # ceil
    return {"distilled": recipe.num_epochs * per_pass,
            "alone": recipe.alone_epochs * -(-recipe.num_labels // recipe.batch_size)}


def make_scarce_student(ds: DatasetSplits, recipe: DistillRecipe = DISTILL_RECIPE) -> nn.Module:
    """A fresh `StudentCNN` of the recipe's width and depth for `ds`.

    Introduced in: notebooks/05_distillation.ipynb
    """
    from .models import StudentCNN

    _check_splits(ds)
    _check_recipe(recipe, DistillRecipe)
    return StudentCNN(ds.input_shape, ds.num_classes, width=recipe.width, depth=recipe.depth)


def train_alone(student: nn.Module, labelled, recipe: DistillRecipe = DISTILL_RECIPE, *, seed: int = 0,
                val_loader=None, progress: bool = False, callback=None):
    """The baseline: `student` trained with cross-entropy on the labelled images only, for
    `recipe.alone_epochs`, with the recipe's `alone_augment` (on the fly), `alone_mixup`
    and `alone_lr`.

    Introduced in: notebooks/05_distillation.ipynb
    """
    _check_recipe(recipe, DistillRecipe)
    if recipe.alone_augment not in AUGMENTATIONS:
        raise ValueError(f"recipe.alone_augment must be one of {sorted(AUGMENTATIONS)}, got {recipe.alone_augment!r}")
    loader = make_loader(labelled, recipe.batch_size, shuffle=True, seed=seed)
    return train(student, loader, num_epochs=recipe.alone_epochs, lr=recipe.alone_lr,
                 weight_decay=recipe.weight_decay, augment=AUGMENTATIONS[recipe.alone_augment],
                 mixup=recipe.alone_mixup, val_loader=val_loader, progress=progress, seed=seed, callback=callback)


def transfer_loader(teacher: nn.Module, transfer, recipe: DistillRecipe = DISTILL_RECIPE):
    """A loader over the recipe's transfer set, (X, y, teacher_logits): the `recipe.copies`
    versions of `transfer` when `recipe.augment`, else `transfer` itself, with the teacher's
    logits computed once (`kdlib.inference.cache_teacher_outputs`). Share it between seeds.
    """
    from .data import augmented_copies
    from .inference import cache_teacher_outputs

    _check_recipe(recipe, DistillRecipe)
    data = augmented_copies(transfer, recipe.copies, seed=recipe.label_seed) if recipe.augment else transfer
    return cache_teacher_outputs(teacher, make_loader(data, recipe.batch_size, shuffle=True))


def distill_scarce(student: nn.Module, teacher: nn.Module, transfer, recipe: DistillRecipe = DISTILL_RECIPE, *,
                   seed: int = 0, val_loader=None, progress: bool = False, logit_loss=None, callback=None):
    """Distil `student` from `teacher` on the transfer set (soft targets on every image,
    labels where there are some) with `recipe`; `logit_loss` replaces the recipe's
    `kd_loss` (e.g. `pseudo_label_loss`), `callback` is `distill`'s.

    `transfer` is the data set from `scarce_data` (its loader is then built here, with
    `transfer_loader`), or a loader `transfer_loader` already returned.

    Introduced in: notebooks/05_distillation.ipynb
    """
    from torch.utils.data import DataLoader

    from .train import distill

    _check_recipe(recipe, DistillRecipe)
    loader = transfer if isinstance(transfer, DataLoader) else transfer_loader(teacher, transfer, recipe)
    return distill(student, teacher, loader, T=recipe.T, alpha=recipe.alpha, logit_loss=logit_loss,
                   num_epochs=recipe.num_epochs, lr=recipe.lr, weight_decay=recipe.weight_decay, cache_teacher=True,
                   val_loader=val_loader, progress=progress, seed=seed, callback=callback)


def pseudo_label_loss(student_logits, teacher_logits, y):
    """Cross-entropy on hard labels: the true label where there is one (y >= 0), the
    teacher's top class elsewhere. `distill_scarce(..., logit_loss=pseudo_label_loss)` is
    the control that keeps everything but the soft targets.

    Args:
        student_logits, teacher_logits: (B, K); y: (B,) with -1 for unlabelled examples.
    Returns:
        a scalar.
    """
    import torch
    import torch.nn.functional as F

    student_logits = check_logits("student_logits", student_logits)
    teacher_logits = check_logits("teacher_logits", teacher_logits)
    check_same_shape(student_logits, teacher_logits, "student_logits and teacher_logits")
    y = check_labels(y, "y", n=student_logits.shape[0], num_classes=student_logits.shape[1], allow_unlabelled=True)
    hard = torch.where(y >= 0, y, teacher_logits.argmax(1))  # (B,)
    return F.cross_entropy(student_logits, hard)


TEACHING_MODES = ("fixed", "consistent", "function_matching")


@dataclass(frozen=True)
class TeachRecipe:
    """How chapter 6 teaches the data-scarce student of `DistillRecipe` (1,000 labels, the
    3,500-image transfer set, the 9k-parameter student): which views of the transfer set the
    teacher labels, and for how long. Made by bench/teach.py; choices made on val.

    Modes (Beyer et al. 2022): "fixed" reuses `copies` augmented versions of the transfer set
    (chapter 5's cache); "consistent" shows a fresh augmented version every epoch;
    "function_matching" a fresh mixup of augmented images (`kdlib.data.mixup_copies`). In
    every mode the teacher labels exactly the view the student sees, computed once for all
    seeds; an epoch is one pass over the 3,500 images (28 steps).
    """

    mode: str = "function_matching"
    num_epochs: int = 147     # passes over the transfer set: 4,116 steps, the same compute as chapter 5's students
    copies: int | None = None  # versions of the transfer set; None: one per epoch (a fresh view every epoch)
    T: float = 1.0            # temperature of the soft term
    alpha: float = 1.0        # weight of the soft term (mixed images carry no label)
    mixup: float = 1.0        # a of Beta(a, a) for function matching
    lr: float = 5e-3          # AdamW peak learning rate, cosine decay to 0 over the epochs
    batch_size: int = 128
    view_seed: int = 0        # the seed of the views (shared by all students)


TEACH_RECIPE = TeachRecipe()


def _check_teach(recipe) -> int:
    """Check `recipe`; return its number of copies."""
    _check_recipe(recipe, TeachRecipe)
    if recipe.mode not in TEACHING_MODES:
        raise ValueError(f"recipe.mode must be one of {', '.join(TEACHING_MODES)}, got {recipe.mode!r}")
    return recipe.copies if recipe.copies is not None else recipe.num_epochs


def teaching_views(transfer, recipe: TeachRecipe = TEACH_RECIPE):
    """The views of `transfer` (N images) that `recipe`'s teacher labels: `copies` stacked
    versions, augmented ("fixed", "consistent": the originals first) or mixed
    ("function_matching").

    Introduced in: notebooks/06_teaching.ipynb
    """
    from .data import augmented_copies, mixup_copies

    copies = _check_teach(recipe)
    if recipe.mode == "function_matching":
        return mixup_copies(transfer, copies, concentration=recipe.mixup, seed=recipe.view_seed)
    return augmented_copies(transfer, copies, seed=recipe.view_seed)


def teach_scarce(student: nn.Module, teacher: nn.Module, cached, n: int, recipe: TeachRecipe = TEACH_RECIPE, *,
                 seed: int = 0, val_loader=None, progress: bool = False, callback=None):
    """Distil `student` from `teacher` with `recipe`, on views whose teacher outputs are
    cached: `cached` is `cache_teacher_outputs(teacher, make_loader(teaching_views(transfer,
    recipe), ...))`, shared by all seeds, and `n` the number of transfer images. Epoch k
    visits copy k mod copies (`kdlib.data.CopySampler`).

    Introduced in: notebooks/06_teaching.ipynb
    """
    from torch.utils.data import DataLoader

    from .data import CopySampler
    from .train import distill

    copies = _check_teach(recipe)
    n = check_int(n, "n", low=1, hint="the number of transfer images")
    if not isinstance(cached, DataLoader) or len(cached.dataset) != copies * n:
        raise ValueError(f"cached must be the loader of the recipe's {copies} x {n} cached views "
                         "(cache_teacher_outputs(teacher, make_loader(teaching_views(transfer, recipe), ...)))")
    loader = DataLoader(cached.dataset, batch_size=recipe.batch_size, sampler=CopySampler(n, copies, seed=seed),
                        collate_fn=cached.collate_fn)
    return distill(student, teacher, loader, T=recipe.T, alpha=recipe.alpha, num_epochs=recipe.num_epochs,
                   lr=recipe.lr, cache_teacher=True, val_loader=val_loader, progress=progress, seed=seed,
                   callback=callback)
