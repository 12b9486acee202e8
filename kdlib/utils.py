"""Seeding, devices, atomic writes, checksummed checkpoints and the files shipped with kdlib.

The bottom layer of kdlib with `validation`: everything else may import from here, and this
module imports nothing from the rest of kdlib but `validation`.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import io
import json
import os
import random
import stat
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .validation import check_int, check_model, check_path


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch so that a run repeats exactly.

    Introduced in: notebooks/01_edge_budgets.ipynb
    """
    check_int(seed, "seed")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_device(device: str | torch.device | None = None) -> torch.device:
    """Return `device` if given, else CUDA when available, else the CPU."""
    if device is not None:
        if not isinstance(device, (str, torch.device)):
            raise TypeError(f"device must be a string such as 'cpu' or 'cuda', or a torch.device, "
                            f"got {type(device).__name__}")
        try:
            return torch.device(device)
        except RuntimeError:
            raise ValueError(f"{device!r} is not a device; use 'cpu', 'cuda' or 'cuda:0'") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put `model` in eval mode for a `with` block, then give every submodule back its own mode.

        with eval_mode(teacher):
            logits = teacher(X)

    `model.train(was_training)` would not do: it sets one mode on every submodule, so a
    frozen BatchNorm inside a training model would come back in train mode.
    """
    modes = [(m, m.training) for m in check_model(model).modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _folder_is_writable(folder: Path) -> bool:
    # Root passes os.access on any folder, so also honour the folder's own permission bits:
    # a folder marked read-only is never written to.
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def check_new_file(path, suffix: str | None = None, *, overwrite: bool = False) -> Path:
    """`path` as a Path that can be written: its folder exists and is writable, it ends in
    `suffix` (when given), and an existing file is only replaced with `overwrite=True`.
    """
    path = check_path(path)
    if suffix is not None and path.suffix != suffix:
        raise ValueError(f"{path} should end in {suffix} (the runtimes pick the format from the suffix)")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist; "
                                "create it first, e.g. Path(folder).mkdir(parents=True)")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder; give a file name"
                                + (f" ending in {suffix}" if suffix else ""))
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it, or choose another path")
    if not _folder_is_writable(path.parent):
        raise PermissionError(f"cannot write {path}: the folder {path.parent} is read-only; "
                              "choose a folder you can write to")
    return path


def check_existing_file(path, suffix: str | None = None) -> Path:
    """`path` as a Path to an existing file (ending in `suffix`, when given)."""
    path = check_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" + ("; export it first" if suffix else "")
                                if not path.is_dir() else f"{path} is a folder, not a file")
    if suffix is not None and path.suffix != suffix:
        raise ValueError(f"{path} should be a {suffix} file")
    return path


def write_file(path: Path, data: bytes) -> Path:
    """`atomic_write_bytes`, turning a low-level OS error into a clear one."""
    try:
        return atomic_write_bytes(path, data)
    except OSError as err:
        raise PermissionError(f"cannot write {path}: {err.strerror or err}; choose a folder you can write to") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that a reader never sees a half-written file.

    The bytes go to a temporary file in the same folder, which is then
    renamed over `path` (a rename within one file system is atomic).
    """
    path = _as_path(path)
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder; give the path of a file inside it")
    if not path.parent.exists():
        raise FileNotFoundError(
            f"cannot write {path}: the folder {path.parent} does not exist; create it first"
        )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; see `atomic_write_bytes`."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 digest of `data`."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of the file at `path`.

    Introduced in: notebooks/04_teacher.ipynb
    """
    path = _existing_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Save `model.state_dict()` atomically beside a `.sha256` file; return the hash.

    Refuses to replace an existing file unless `overwrite=True`, so that a
    user's results are never lost silently.
    """
    check_model(model)
    path = _as_path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True to replace it, or choose another path"
        )
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    data = buf.getvalue()
    digest = sha256_bytes(data)
    atomic_write_bytes(path, data)
    atomic_write_text(_sha_path(path), f"{digest}  {path.name}\n")
    return digest


def _as_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or a pathlib.Path, got {type(path).__name__}")
    return Path(path)


def _existing_file(path, what: str = "") -> Path:
    path = _as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}{path} does not exist")
    if not path.is_file():
        raise ValueError(f"{what}{path} is a folder, not a file")
    return path


def _sha_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_expected_sha256(path: str | os.PathLike) -> str | None:
    """The hash stored beside a checkpoint (`<path>.sha256`), or None if absent.

    Introduced in: notebooks/04_teacher.ipynb
    """
    sha = _sha_path(_as_path(path))
    if not sha.exists():
        return None
    return sha.read_text().split()[0]


# What checkpoints written by other tools wrap their weights in, and the prefixes their keys carry:
# DataParallel / DistributedDataParallel add "module.", torch.compile adds "_orig_mod.".
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
KEY_PREFIXES = ("module.", "_orig_mod.")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_state_dict(obj, where: str = "the checkpoint") -> dict:
    """The tensors of a state dict, from what training scripts commonly save: the dict itself,
    `{"state_dict": ...}` (or "model_state_dict", "model", "net", "weights") beside other entries
    such as the epoch or the optimiser, and keys prefixed with "module." (DataParallel) or
    "_orig_mod." (torch.compile)."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and not _is_state_dict(obj):
        obj = next((obj[k] for k in CHECKPOINT_KEYS if _is_state_dict(obj.get(k))), obj)
    if not _is_state_dict(obj):
        kind = f"a dict with the keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{where} does not hold a state dict (name -> tensor) but {kind}; save the weights with "
                         "torch.save(model.state_dict(), path)")
    for prefix in KEY_PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _pickled_model_error(path: Path) -> ValueError:
    return ValueError(
        f"checkpoint {path} holds a pickled Python object (a whole model saved with torch.save(model)?), not only "
        "weights, and unpickling it runs code from the file. If you trust where it came from, pass trust_pickle=True "
        "(--trust-pickle on the command line); better, save its weights once: "
        "torch.save(torch.load(path, weights_only=False).state_dict(), 'weights.pt')")


def read_checkpoint(path: str | os.PathLike, *, sha256: str | None = None, trust_pickle: bool = False):
    """The contents of a checkpoint file, its hash checked first (`sha256`, else `<path>.sha256` if present).

    Read with `weights_only=True` (tensors and plain containers only, no code runs) unless
    `trust_pickle`, which also unpickles whole models. Returns what the file holds (a state
    dict, a dict around one, or with `trust_pickle` an `nn.Module`).
    """
    if sha256 is not None and not isinstance(sha256, str):
        raise TypeError(f"sha256 must be a hex string, got {type(sha256).__name__}")
    path = _existing_file(path, "checkpoint ")
    expected = sha256 or read_expected_sha256(path)
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise ValueError(
            f"checkpoint {path} is corrupted or was changed: its SHA-256 is {actual[:12]}..., "
            f"expected {expected[:12]}...; delete it to retrain, or restore the original file"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:  # a truncated or foreign file, or a pickled object
        if not trust_pickle and "weights_only" in str(err).lower().replace(" ", "_"):
            raise _pickled_model_error(path) from None
        raise ValueError(f"checkpoint {path} could not be read ({type(err).__name__}: "
                         f"{(str(err).strip().splitlines() or [''])[0][:120]}); is it a PyTorch checkpoint?") from None


def _mismatch(model: nn.Module, state: dict) -> str | None:
    """What keeps `state` from loading into `model`: missing and unexpected keys, shape differences."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    parts = [f"{len(missing)} key(s) of the model missing from it (e.g. {', '.join(missing[:3])})" if missing else "",
             f"{len(unexpected)} key(s) the model does not have (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
             f"{len(shapes)} shape(s) differ (e.g. {'; '.join(shapes[:2])})" if shapes else ""]
    return "; ".join(p for p in parts if p) or None


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, sha256: str | None = None,
                    trust_pickle: bool = False) -> nn.Module:
    """Load the weights in a checkpoint into `model`, checking the hash first.

    The expected hash is `sha256` if given, else the one in `<path>.sha256` (if any). The
    file is read with `weights_only=True` (no code runs) and is never modified. Besides
    `save_checkpoint`'s files it reads the common formats of other scripts (see
    `unwrap_state_dict`); a whole pickled model only with `trust_pickle=True`.

    Introduced in: notebooks/13_capstone.ipynb
    """
    check_model(model)
    state = unwrap_state_dict(read_checkpoint(path, sha256=sha256, trust_pickle=trust_pickle),
                              f"checkpoint {path}")
    problem = _mismatch(model, state)
    if problem:
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}: {problem}. Build the model with "
                         "the architecture and sizes it was saved with.")
    model.load_state_dict(state)
    return model


def asset_path(*parts: str) -> Path:
    """The path of a file shipped inside kdlib (`kdlib/assets/...`): checkpoints, bench results, data.

    Found through `importlib.resources`, so it works the same from a clone and from a plain
    `pip install` of kdlib (on Colab, say).

    Introduced in: notebooks/04_teacher.ipynb
    """
    if not all(isinstance(p, str) and p and ".." not in Path(p).parts for p in parts):
        raise ValueError(f"asset_path takes names inside kdlib/assets such as ('results', 'kd_gain.json'), got {parts!r}")
    return Path(str(importlib.resources.files("kdlib"))) / "assets" / Path(*parts)


def read_result(name: str) -> dict:
    """The saved result of a bench script, `kdlib/assets/results/<name>.json`, as a dict.

    Introduced in: notebooks/04_teacher.ipynb
    """
    path = asset_path("results", f"{name}.json")
    if not path.is_file():
        raise FileNotFoundError(f"no saved bench result {path.name} in {path.parent}: run the bench script that "
                                f"writes it (its docstring gives the command), e.g. python bench/{name}.py --json {path}")
    return json.loads(path.read_text())


_RETRAIN_NOTICE_SHOWN = False


def _retrain_notice(path: Path) -> None:
    """Say once per process that a checkpoint is missing and that the numbers will differ from the book's."""
    global _RETRAIN_NOTICE_SHOWN
    if not _RETRAIN_NOTICE_SHOWN:
        _RETRAIN_NOTICE_SHOWN = True
        print(f"note: {path.name} is not in {path.parent}, so it is trained now (this takes a while). The numbers "
              "below will differ a little from the book's, which were computed with the shipped checkpoint.")


def load_or_train(
    path: str | os.PathLike,
    make_model: Callable[[], nn.Module],
    train_fn: Callable[[nn.Module], object],
    *,
    verbose: bool = True,
) -> nn.Module:
    """Load a checkpoint if it exists, else build, train and save the model.

    Args:
        path: where the checkpoint lives (a `.sha256` file sits beside it).
        make_model: builds a fresh, untrained model.
        train_fn: trains that model in place (its return value is ignored).
    Returns:
        the model in eval mode.
    """
    path = _as_path(path)
    if not callable(make_model) or not callable(train_fn):
        raise TypeError("make_model and train_fn must be functions: make_model() -> model, train_fn(model)")
    model = make_model()
    if not isinstance(model, nn.Module):
        raise TypeError(f"make_model() must return a torch.nn.Module, got {type(model).__name__}")
    if path.exists():
        load_checkpoint(model, path)
        if verbose:
            print(f"loaded {path.name} (sha256 {sha256_file(path)[:12]}...)")
    else:
        if verbose:
            _retrain_notice(path)
        train_fn(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = save_checkpoint(model, path)
        if verbose:
            print(f"trained and saved {path.name} (sha256 {digest[:12]}...)")
    return model.eval()
