"""The pipeline's inputs, checked before anything is written: data, teacher, student, output folder.

Each mistake a user can make with `python -m kdlib compress` gets one clear line here: an
architecture that cannot be imported, a checkpoint that does not fit it (or is a whole pickled
model), a teacher with the wrong number of classes or no better than chance on the data, a
student that cannot run on the images, an output folder that holds another run.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .data import DATASETS, DatasetSplits, as_tensors, make_loader
from .datafiles import load_data
from .guards import better_than_chance, chance_accuracy
from .inference import predict_logits
from .models import StudentCNN, TeacherCNN
from .utils import eval_mode, load_checkpoint, read_checkpoint, sha256_file
from .validation import check_path


@dataclass
class Inputs:
    """What a run starts from, checked: the data, the teacher (eval mode), a student factory."""

    ds: DatasetSplits
    teacher: nn.Module
    make_student: Callable[[], nn.Module]
    example: torch.Tensor  # (1, C, H, W), one standardised test image
    digest: str            # of the data, the teacher's weights and the student's definition
    sources: dict          # what each input came from, for the report

    def describe(self) -> dict:
        return dict(self.sources)


# ---------------------------------------------------------------- your own architectures

def _import_module(name: str):
    """`importlib.import_module`, with the current folder importable (as `python -m` has it; the
    `kdlib` console script does not)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    finally:
        if added:
            sys.path.remove(cwd)


def _import_file(path: Path):
    # one module per file and contents: the teacher and the student from one file share their classes
    digest = hashlib.sha256(str(path.resolve()).encode() + path.read_bytes()).hexdigest()[:12]
    name = f"kdlib_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so that its classes can be pickled (torch.save(model)) and found again
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def load_factory(spec: str, what: str = "teacher") -> Callable:
    """The function named by "package.module:factory" or "path/to/file.py:factory".

    Introduced in: notebooks/15_compress_your_own.ipynb
    """
    if not isinstance(spec, str):
        raise TypeError(f"the {what} architecture must be a string MODULE:FACTORY, got {type(spec).__name__}")
    source, _, name = spec.rpartition(":")
    if not source or not name:
        raise ValueError(f"{what} architecture {spec!r} must look like package.module:factory or "
                         "path/to/file.py:factory")
    try:
        if source.endswith(".py"):
            if not Path(source).is_file():
                raise FileNotFoundError(f"{Path(source).resolve()} does not exist")
            module = _import_file(Path(source))
        else:
            module = _import_module(source)
        factory = getattr(module, name)
    except (ImportError, AttributeError, FileNotFoundError, SyntaxError) as err:
        raise ValueError(f"cannot import {what} architecture {spec!r}: {type(err).__name__}: {err}") from None
    if not callable(factory) or isinstance(factory, nn.Module):
        raise ValueError(f"{spec!r} is not a function or class; it must build and return the {what} model")
    return factory


def _source_digest(factory) -> str:
    try:
        return sha256_file(inspect.getsourcefile(factory))
    except (TypeError, OSError, ValueError):
        return ""


def build_model(factory: Callable, ds: DatasetSplits, what: str) -> nn.Module:
    """`factory()`, given the data's `input_shape` and `num_classes` where it takes them."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {k: v for k, v in (("input_shape", ds.input_shape), ("num_classes", ds.num_classes)) if k in params}
    try:
        model = factory(**kwargs)
    except Exception as err:
        raise ValueError(f"the {what} factory failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"the {what} factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def check_fits_data(model: nn.Module, ds: DatasetSplits, what: str, example: torch.Tensor) -> None:
    """ValueError unless `model` maps (1, C, H, W) images of the data to (1, num_classes) logits."""
    try:
        with eval_mode(model), torch.no_grad():
            out = model(example)
    except Exception as err:
        raise ValueError(f"the {what} cannot run on the data's images (1, {', '.join(map(str, ds.input_shape))}): "
                         f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ValueError(f"the {what} must return logits (batch, classes), got "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    if out.shape[1] != ds.num_classes:
        raise ValueError(f"the {what} predicts {out.shape[1]} classes but the data has {ds.num_classes} "
                         f"({', '.join(map(str, ds.classes[:6]))}{', ...' if len(ds.classes) > 6 else ''}); "
                         f"give a {what} built for these classes")


# ---------------------------------------------------------------- teacher and student

def _teacher(config, ds: DatasetSplits) -> tuple[nn.Module, str]:
    if config.teacher_checkpoint is None:
        if config.data is not None or ds.name not in DATASETS:
            raise ValueError("your own data needs your own teacher: pass --teacher-checkpoint (and --teacher-arch)")
        from .zoo import load_teacher

        return load_teacher(ds.name, ds=ds, progress=False, verbose=False), f"the book's teacher for {ds.name}"
    path = check_path(config.teacher_checkpoint, "teacher_checkpoint")
    if config.teacher_arch is None:
        held = read_checkpoint(path, trust_pickle=config.trust_pickle)
        if isinstance(held, nn.Module):
            return held.eval(), f"the pickled model in {path}"
        model = TeacherCNN(ds.input_shape, ds.num_classes)
        return load_checkpoint(model, path, trust_pickle=config.trust_pickle).eval(), f"TeacherCNN with {path}"
    model = build_model(load_factory(config.teacher_arch, "teacher"), ds, "teacher")
    return load_checkpoint(model, path, trust_pickle=config.trust_pickle).eval(), f"{config.teacher_arch} with {path}"


def _check_teacher_is_useful(teacher: nn.Module, ds: DatasetSplits) -> None:
    logits, y = predict_logits(teacher, make_loader(ds.val, 500))
    if better_than_chance(logits, y) is False:
        acc = (logits.argmax(1) == y).float().mean().item()
        raise ValueError(f"the teacher is no better than chance on the validation images ({acc:.1%} against "
                         f"{chance_accuracy(y, ds.num_classes):.1%} by always guessing one class): was it trained on "
                         "this data, with the same classes in the same (sorted) order and the same input scaling?")


def _student_factory(config, ds: DatasetSplits) -> tuple[Callable[[], nn.Module], str, str]:
    if config.student_arch is None:
        return (lambda: StudentCNN(ds.input_shape, ds.num_classes, width=config.student_width),
                f"StudentCNN(width={config.student_width})", "")
    factory = load_factory(config.student_arch, "student")
    return lambda: build_model(factory, ds, "student"), config.student_arch, _source_digest(factory)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's floating-point weights and buffers (what a stage's result depends on)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _data_digest(ds: DatasetSplits) -> str:
    h = hashlib.sha256(repr((ds.classes, ds.input_shape, ds.normalisation)).encode())
    for split in (ds.train, ds.val, ds.test):
        for t in as_tensors(split):
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


EXECUTORCH_HINT = ('pip install "kdlib[executorch]", or pass --no-executorch (PipelineConfig(executorch=False)) '
                   "to skip the .pte files")


def executorch_available() -> bool:
    """True when the optional ExecuTorch package can be imported (the `kdlib[executorch]` extra)."""
    return importlib.util.find_spec("executorch") is not None


def check_inputs(config, data=None) -> Inputs:
    """Load and check everything a run needs, writing nothing: ExecuTorch when the run exports
    .pte files, the data (`data`, else `config.data`, else `config.dataset`), the teacher (fits
    the data and beats chance on val), the student (builds, runs on the images, predicts the
    data's classes)."""
    if config.executorch and not executorch_available():
        raise ImportError(f"ExecuTorch is not installed: {EXECUTORCH_HINT}")
    ds = load_data(data if data is not None else config.data or config.dataset, root=config.data_root,
                   image_size=config.image_size, seed=0)
    example = as_tensors(ds.test)[0][:1]
    teacher, teacher_from = _teacher(config, ds)
    check_fits_data(teacher, ds, "teacher", example)
    _check_teacher_is_useful(teacher, ds)
    make_student, student_from, student_src = _student_factory(config, ds)
    student = make_student()
    check_fits_data(student, ds, "student", example)
    digest = hashlib.sha256("|".join([_data_digest(ds), weights_digest(teacher), student_from, student_src,
                                      str(config.student_width)]).encode()).hexdigest()
    sources = {"data": ds.name, "teacher": teacher_from, "student": student_from}
    return Inputs(ds, teacher, make_student, example, digest, sources)


# ---------------------------------------------------------------- the output folder

def prepare_out(out, *, force: bool = False, resume: bool = False, files=()) -> Path:
    """Check the output folder before any work: create it, refuse one that already
    holds results unless `force` (start over: remove the pipeline's `files`, nothing else)
    or `resume` (reuse matching stages).
    """
    if force and resume:
        raise ValueError("choose one of --force (start over) and --resume (continue), not both")
    out = check_path(out, "out")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file; choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"cannot write to output folder {out}: {err.strerror or err}") from None
    existing = sorted(p.name for p in out.iterdir())
    if existing and not (force or resume):
        shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise FileExistsError(f"output folder {out} already holds files ({shown}); pass --resume to continue "
                              "that run, --force to start over, or choose another folder")
    if force:
        for name in files:
            (out / name).unlink(missing_ok=True)
    return out
