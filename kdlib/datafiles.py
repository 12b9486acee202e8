"""A data set of your own, from files: a folder of images (torchvision's ImageFolder layout) or a `.npz`.

    load_data("mnist5k")          # a book data set by name (kdlib.data.load_dataset)
    load_data("photos/")          # photos/<class>/*.png, or photos/train|val|test/<class>/*.png
    load_data("arrays.npz")       # x (N, H, W[, C]) or (N, C, H, W), y (N,); or x_train, y_train, ...

Pixels are read as floats in [0, 1] (8-bit values divided by 255), then standardised per
channel with the mean and standard deviation of the *training* split only (the validation
and test images must not leak into anything the model learns from). Those two vectors are
kept in `DatasetSplits.normalisation`, so that an exported model can take the raw pixels in
[0, 1] and standardise them itself (`kdlib.models.Standardise`).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .data import DATASETS, DatasetSplits, load_dataset, stratified_split
from .validation import check_int, check_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
FRACTIONS = (0.7, 0.1, 0.2)  # train / val / test, when the files are not split already
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


# ---------------------------------------------------------------- shared

def channel_stats(X: torch.Tensor) -> tuple[tuple, tuple]:
    """Per-channel mean and standard deviation of images X (N, C, H, W), as two tuples of C floats.

    A channel that is constant gets std 1 (it carries no information; dividing by 0 would not do).
    """
    mean = X.mean(dim=(0, 2, 3))  # (C,)
    std = X.std(dim=(0, 2, 3))
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def _standardise(X: torch.Tensor, stats) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in stats)
    return (X - mean) / std


def splits_from_arrays(name: str, parts: dict, classes: list) -> DatasetSplits:
    """A `DatasetSplits` from pixel arrays in [0, 1], standardised with the training split's statistics.

    Args:
        parts: {"train": (X, y), "val": (X, y), "test": (X, y)}, X (N, C, H, W) float, y (N,) int.
        classes: the class names, in label order.
    """
    tensors = {k: (torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))
               for k, (X, y) in parts.items()}
    for k, (X, y) in tensors.items():
        if len(X) == 0:
            raise ValueError(f"the {k} split of {name} holds no images; give more images per class "
                             f"(at least 10 for a {'/'.join(str(round(100 * f)) for f in FRACTIONS)} split)")
    missing = sorted(set(range(len(classes))) - set(tensors["train"][1].tolist()))
    if missing:
        raise ValueError(f"the train split of {name} has no image of class "
                         f"{', '.join(repr(classes[c]) for c in missing)}; every class needs training images")
    stats = channel_stats(tensors["train"][0])
    sets = {k: TensorDataset(_standardise(X, stats), y) for k, (X, y) in tensors.items()}
    return DatasetSplits(name, sets["train"], sets["val"], sets["test"], len(classes),
                         tuple(tensors["train"][0].shape[1:]), list(classes), stats)


def _split(X: np.ndarray, y: np.ndarray, seed: int) -> dict:
    parts = stratified_split(y, FRACTIONS, seed=seed)
    return {k: (X[p], y[p]) for k, p in zip(("train", "val", "test"), parts)}


def _carve(parts: dict, seed: int) -> dict:
    """Fill a missing val or test split with a stratified share of the training split."""
    missing = [k for k in ("val", "test") if k not in parts]
    if not missing:
        return parts
    X, y = parts["train"]
    shares = {"val": FRACTIONS[1], "test": FRACTIONS[2]}
    fractions = [1 - sum(shares[k] for k in missing)] + [shares[k] for k in missing]
    cut = stratified_split(y, fractions, seed=seed)
    out = dict(parts, train=(X[cut[0]], y[cut[0]]))
    out.update({k: (X[p], y[p]) for k, p in zip(missing, cut[1:])})
    return out


# ---------------------------------------------------------------- image folders

def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _scan(folder: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    """The classes (sub-folder names, sorted) and every (image, label) of one ImageFolder."""
    found = [p.name for p in _class_folders(folder)]
    if len(found) < 2:
        raise ValueError(f"{folder} must hold one sub-folder per class (at least 2), e.g. {folder}/cat/1.png and "
                         f"{folder}/dog/1.png; found {len(found)} folder(s)")
    if classes is not None and found != classes:
        raise ValueError(f"{folder} has the classes {found}, but the train folder has {classes}; "
                         "every split needs the same class folders")
    items = []
    for label, name in enumerate(found):
        images = _images_in(folder / name)
        if not images:
            raise ValueError(f"class folder {folder / name} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
        items += [(p, label) for p in images]
    return found, items


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}; remove it or convert it to PNG") from None


def _image_format(paths: list[Path], image_size) -> tuple[str, tuple[int, int]]:
    """The PIL mode ("L" if every image is grayscale, else "RGB") and the (width, height) to use."""
    sizes, modes = Counter(), set()
    for p in paths:
        with _open(p) as im:
            sizes[im.size] += 1
            modes.add(im.mode)
    mode = "L" if modes <= set(GRAY_MODES) else "RGB"
    if image_size is not None:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        return mode, (w, h)
    return mode, sizes.most_common(1)[0][0]  # images of another size are resized to the commonest one


def _read_images(paths: list[Path], mode: str, size: tuple[int, int]) -> np.ndarray:
    """(N, C, H, W) float32 pixels in [0, 1]."""
    from PIL import Image

    out = []
    for p in paths:
        with _open(p) as im:
            try:
                im = im.convert(mode)
                if im.size != size:
                    im = im.resize(size, Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
            except OSError as err:
                raise ValueError(f"cannot read image {p}: {err}; remove it or convert it to PNG") from None
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(out)


def _check_image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        return tuple(check_int(v, "image_size", low=1) for v in image_size)
    return check_int(image_size, "image_size", low=1, hint="a side in pixels, e.g. 32, or (height, width)")


def load_image_folder(path, *, image_size=None, seed: int = 0) -> DatasetSplits:
    """Read a folder of images in torchvision's ImageFolder layout.

    Either `path/<class>/<image>` (one folder, split stratified 70/10/20 with `seed`) or
    `path/train/<class>/...` with `val/` (or `valid/`) and `test/` beside it (a missing one is
    carved out of train, stratified). Classes are the sub-folder names in sorted order. Images
    may be grayscale or colour (all are read as RGB if any is in colour) and of any size (all are
    resized to `image_size`, default the commonest size among them).

    Args:
        path: the folder.
        image_size: None, a side in pixels (32) or (height, width).
        seed: the seed of the stratified split.
    Returns:
        a `DatasetSplits`, pixels standardised with the training split's mean and std
        (kept in `.normalisation`).
    """
    folder = check_path(path, "path")
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist" if not folder.exists()
                                else f"{folder} is a file, not a folder of images")
    image_size = _check_image_size(image_size)
    splits = {SPLIT_NAMES[p.name.lower()]: p for p in _class_folders(folder) if p.name.lower() in SPLIT_NAMES}
    if "train" in splits:
        classes, scanned = _scan(splits["train"], None)
        scanned = {"train": scanned, **{k: _scan(f, classes)[1] for k, f in splits.items() if k != "train"}}
    else:
        classes, items = _scan(folder, None)
        scanned = {"all": items}
    mode, size = _image_format([p for items in scanned.values() for p, _ in items], image_size)
    arrays = {k: (_read_images([p for p, _ in items], mode, size), np.array([c for _, c in items], dtype=np.int64))
              for k, items in scanned.items()}
    parts = _split(*arrays["all"], seed) if "all" in arrays else _carve(arrays, seed)
    return splits_from_arrays(folder.name or str(folder), parts, classes)


# ---------------------------------------------------------------- .npz

def _as_images(x: np.ndarray, key: str) -> np.ndarray:
    """x as (N, C, H, W) float32 in [0, 1]: integers are 8-bit pixels (/ 255), floats stay as they are."""
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise TypeError(f"{key} must hold pixel numbers (uint8 0..255 or floats in [0, 1]), got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)  # (N, H, W, C), channels last
    elif x.ndim != 4:
        raise ValueError(f"{key} must be images (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {x.shape}")
    x = x.astype(np.float32) / 255.0 if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{key} contains NaN or inf")
    return x


def _array(arrays, key: str, path: Path) -> np.ndarray:
    try:
        return arrays[key]
    except ValueError as err:  # an object array, which only pickle could read
        raise ValueError(f"cannot read {key} of {path} as a NumPy array without pickle ({err}); "
                         "save plain number arrays, e.g. np.savez(path, x=x.astype('uint8'), y=y)") from None


def _npz_parts(arrays, path: Path) -> dict:
    keys = set(arrays.files)
    if {"x", "y"} <= keys:
        pairs = {"all": ("x", "y")}
    elif {"x_train", "y_train"} <= keys:
        pairs = {k: (f"x_{k}", f"y_{k}") for k in ("train", "val", "test") if {f"x_{k}", f"y_{k}"} <= keys}
    else:
        raise ValueError(f"{path} must hold arrays x and y (or x_train, y_train and optionally x_val, y_val, "
                         f"x_test, y_test); it holds {sorted(keys)}")
    parts = {}
    for k, (xk, yk) in pairs.items():
        x, y = _as_images(_array(arrays, xk, path), xk), np.asarray(_array(arrays, yk, path))
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{yk} must be integer labels (N,) with one per image of {xk} ({len(x)}), "
                             f"got dtype {y.dtype} and shape {y.shape}")
        parts[k] = (x, y)
    return parts


def load_npz(path, *, seed: int = 0) -> DatasetSplits:
    """Read images and labels from a NumPy `.npz` file (read without pickle: no code runs).

    Arrays: `x` (images) and `y` (integer labels), split stratified 70/10/20 with `seed`; or
    `x_train`, `y_train` with optional `x_val`, `y_val`, `x_test`, `y_test` (a missing split is
    carved out of train). Images are (N, H, W), (N, H, W, C) or (N, C, H, W); integer pixels are
    divided by 255. Labels are any integers: their sorted distinct values become classes 0..K-1
    (an optional `classes` array names them).
    """
    path = check_path(path, "path")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is a folder, not a .npz")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot read {path} as a NumPy .npz file: {str(err).splitlines()[0]}") from None
    with arrays:
        parts = _npz_parts(arrays, path)
        values = np.unique(np.concatenate([y for _, y in parts.values()]))
        names = [str(c) for c in _array(arrays, "classes", path)] if "classes" in arrays.files else [str(v) for v in values]
    if len(values) < 2 or len(names) != len(values):
        raise ValueError(f"{path} must have at least 2 classes (and one name per class in 'classes'); "
                         f"its labels take {len(values)} distinct value(s), 'classes' names {len(names)}")
    shapes = {x.shape[1:] for x, _ in parts.values()}
    if len(shapes) > 1:
        raise ValueError(f"the splits of {path} hold images of different shapes {sorted(shapes)}")
    parts = {k: (x, np.searchsorted(values, y)) for k, (x, y) in parts.items()}
    parts = _split(*parts["all"], seed) if "all" in parts else _carve(parts, seed)
    return splits_from_arrays(path.stem, parts, names)


# ---------------------------------------------------------------- any of them

def load_data(data, *, root=None, image_size=None, seed: int = 0) -> DatasetSplits:
    """A `DatasetSplits` from what a user gives: one itself, a book data set's name, an image
    folder or a `.npz` file (see `load_image_folder` and `load_npz`).

    Introduced in: notebooks/15_compress_your_own.ipynb
    """
    if isinstance(data, DatasetSplits):
        return data
    if isinstance(data, str) and data in DATASETS:
        return load_dataset(data, root=root, seed=seed)
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"data must be a DatasetSplits, a data set name ({', '.join(DATASETS)}) or a path, "
                        f"got {type(data).__name__}")
    path = Path(data)
    if path.is_dir():
        return load_image_folder(path, image_size=image_size, seed=seed)
    if path.suffix == ".npz":
        return load_npz(path, seed=seed)
    if not path.exists():
        raise FileNotFoundError(f"data {str(data)!r} is neither a data set name ({', '.join(DATASETS)}) nor an "
                                "existing folder or .npz file")
    raise ValueError(f"{path} is not a data set kdlib reads: give a folder of images (one sub-folder per class) "
                     "or a .npz with arrays x and y")
