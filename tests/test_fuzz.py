"""Fuzz every public kdlib function with bad input.

For each public function (and class) of each kdlib module, `SPECS` gives a
cheap valid call and the arguments to spoil. Hypothesis then replaces one
argument at a time with a bad value: a wrong type, a tensor with NaN/inf, an
empty batch, a wrong shape or dtype, a bad number or name, a model that does
not fit, a loader of bad data, a missing path. The function must either

- raise a clear ValueError / TypeError / FileNotFoundError / FileExistsError
  from a `raise` statement in kdlib (not a crash from deep inside torch), or
- return a result without NaN.

`test_every_public_function_is_fuzzed` fails when a module gains a public
function that is neither in `SPECS` nor in `EXEMPT` (with a reason), so the
fuzz grows with the library. The last tests corrupt checkpoints on disk:
loading must fail clearly and leave the user's file byte for byte unchanged.
"""
from __future__ import annotations

import importlib
import inspect
import math
import shutil
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdlib
from kdlib import chains, chapter, data, guards, hooks, inference, losses, measure, models, train, utils, validation, zoo

KDLIB_DIR = Path(kdlib.__file__).resolve().parent
# FloatingPointError: kdlib's own message when training diverges; PermissionError: an unwritable folder
CLEAR_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, FloatingPointError, PermissionError)
MODULES = ["utils", "validation", "data", "models", "losses", "guards", "hooks", "inference", "train", "distributed",
           "chains", "measure", "zoo", "metrics", "prune", "quant", "qat", "export", "pipeline", "chapter"]
TMP = Path(tempfile.mkdtemp(prefix="kdlib-fuzz-"))
# no shrinking: the failure message already names the function, the argument and the value
FUZZ_SETTINGS = settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                         phases=[Phase.explicit, Phase.reuse, Phase.generate])


@pytest.fixture(scope="module", autouse=True)
def _tmp_checkpoints():
    """Checkpoints go to a temporary folder: the fuzz never touches the book's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KDLIB_CHECKPOINTS", str(TMP / "checkpoints"))
    (TMP / "checkpoints").mkdir(exist_ok=True)
    mp.chdir(TMP)  # a fuzzed relative path ("text", say) must not leave files in the repository
    yield
    mp.undo()
    shutil.rmtree(TMP, ignore_errors=True)


# --- valid building blocks (small and cheap) --------------------------------------------------

K = 3  # classes of the toy problem


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return models.StudentCNN((1, 8, 8), K, width=2, depth=1)


def toy_teacher() -> nn.Module:
    torch.manual_seed(1)
    return models.StudentCNN((1, 8, 8), K, width=4, depth=1).eval()


def toy_dataset(n: int = 12) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % K)


def toy_loader(**kw) -> DataLoader:
    return data.make_loader(toy_dataset(), 4, **kw)


def toy_x(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 1, 8, 8, generator=torch.Generator().manual_seed(2))


def toy_logits(b: int = 4, seed: int = 3) -> torch.Tensor:
    return torch.randn(b, K, generator=torch.Generator().manual_seed(seed))


def toy_labels(b: int = 4) -> torch.Tensor:
    return torch.arange(b) % K


def toy_splits() -> data.DatasetSplits:
    return data.DatasetSplits("toy", toy_dataset(), toy_dataset(6), toy_dataset(6), K, (1, 8, 8), ["a", "b", "c"])


def saved_checkpoint() -> Path:
    folder = Path(tempfile.mkdtemp(dir=TMP))
    utils.save_checkpoint(toy_model(), folder / "model.pt")
    return folder / "model.pt"


# --- bad values, by kind of argument ----------------------------------------------------------

_WRONG = [None, "text", 3, 2.5, True, [1.0, 2.0], {"a": 1}, b"bytes"]


def wrong_types(allow_none_valid: bool = False):
    """Values of the wrong type (None left out where None is a valid choice)."""
    return st.sampled_from([v for v in _WRONG if not (allow_none_valid and v is None)])


def _tensor_variants(t: torch.Tensor) -> list:
    if t.ndim == 0:
        out = [t.reshape(1), t.reshape(1, 1), t.reshape(1)[:0], t.to(torch.int64), t.to(torch.bool)]
    else:
        out = [t[:0], t.reshape(-1), t.unsqueeze(0), t.reshape(-1)[0], t.to(torch.int64), t.to(torch.bool),
               t.transpose(0, -1) if t.ndim > 1 else t.unsqueeze(1), torch.cat([t, t], dim=-1)]
    if t.is_floating_point():
        nan, inf = t.clone(), t.clone()
        nan.reshape(-1)[0] = float("nan")
        inf.reshape(-1)[-1] = float("inf")
        out += [nan, inf, t.to(torch.float16), t.double(), t * 1e30]
    return out


def bad_tensors(valid: torch.Tensor):
    """Spoiled copies of a valid tensor, random arrays of any shape (NaN and inf included), wrong types."""
    random = arrays(np.float32, array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
                    elements=st.floats(width=32)).map(torch.from_numpy)
    return st.one_of(st.sampled_from(_tensor_variants(valid)), random, wrong_types())


def bad_numbers(allow_none_valid: bool = False):
    special = [math.nan, math.inf, -math.inf, -1, 0, -0.5, 1e30, -7, "4", torch.tensor(float("nan"))]
    return st.one_of(st.sampled_from(special), st.floats(allow_nan=True, allow_infinity=True),
                     wrong_types(allow_none_valid))


def bad_ints(allow_none_valid: bool = False):
    return st.one_of(st.sampled_from([0, -1, -100, 2.5, math.nan, math.inf, "3", True]),
                     wrong_types(allow_none_valid))


def bad_strings(allow_none_valid: bool = False):
    return st.one_of(st.sampled_from(["", "nope", "MNIST5K", " mnist5k", "l3", "../x"]),
                     st.text(max_size=6), wrong_types(allow_none_valid))


def _mlp_wrong_resolution():
    return models.StudentMLP((1, 5, 5), K, hidden=(4,))


def _cnn_wrong_classes():
    return models.StudentCNN((1, 8, 8), K + 2, width=2, depth=1)


def _softmax_model():
    return nn.Sequential(toy_model(), nn.Softmax(dim=1))


def _empty_model():
    return nn.Sequential()


def bad_models(allow_none_valid: bool = False):
    """Models that do not fit the toy data: wrong resolution, wrong class count, no layers,
    identity (not logits), a bare Linear on images; plus wrong types."""
    factories = [_mlp_wrong_resolution, _cnn_wrong_classes, _empty_model, nn.Identity,
                 lambda: nn.Linear(3, 2), lambda: nn.Flatten()]
    return st.one_of(st.sampled_from(factories).map(lambda f: f()), wrong_types(allow_none_valid))


def _loader_of(X, y, batch_size=4) -> DataLoader:
    return DataLoader(TensorDataset(X, y), batch_size=batch_size)


def _bad_loaders() -> list:
    X, y = toy_dataset().tensors
    nan = X.clone()
    nan[3, 0, 2, 2] = float("nan")
    return [
        lambda: _loader_of(X[:0], y[:0]),                                  # empty
        lambda: _loader_of(nan, y),                                        # NaN image
        lambda: _loader_of(X, y.float()),                                  # float labels
        lambda: _loader_of(X, y + 10),                                     # labels out of range
        lambda: _loader_of(torch.randn(12, 1, 5, 5), y),                   # other resolution
        lambda: _loader_of(torch.randn(12, 3, 8, 8), y),                   # other channel count
        lambda: _loader_of(X.to(torch.uint8), y),                          # raw bytes
        lambda: DataLoader(X, batch_size=4),                               # images only, no labels
        lambda: [(X[:4], y[:4])],                                          # a list, not a DataLoader
    ]


def bad_loaders(allow_none_valid: bool = False):
    return st.one_of(st.sampled_from(_bad_loaders()).map(lambda f: f()), wrong_types(allow_none_valid))


def bad_datasets(allow_none_valid: bool = False):
    X, y = toy_dataset().tensors
    return st.one_of(st.sampled_from([
        lambda: TensorDataset(X[:0], y[:0]), lambda: TensorDataset(X), lambda: TensorDataset(X, y.float()),
        lambda: [1, 2, 3], lambda: X]).map(lambda f: f()), wrong_types(allow_none_valid))


def bad_paths(allow_none_valid: bool = False):
    """A missing file, a file in a missing folder, a folder, an empty file, wrong types."""
    def empty_file():
        p = Path(tempfile.mkdtemp(dir=TMP)) / "empty.pt"
        p.write_bytes(b"")
        return p

    return st.one_of(st.sampled_from([
        lambda: TMP / "missing.pt", lambda: TMP / "no" / "such" / "folder" / "x.pt",
        lambda: Path(tempfile.mkdtemp(dir=TMP)), empty_file]).map(lambda f: f()),
        wrong_types(allow_none_valid))


def bad_callables(allow_none_valid: bool = False):
    return st.one_of(st.sampled_from([lambda *a, **k: None, lambda *a, **k: "nonsense",
                                      lambda *a, **k: torch.tensor(float("nan"))]), wrong_types(allow_none_valid))


KINDS = {"tensor": bad_tensors, "number": bad_numbers, "int": bad_ints, "str": bad_strings,
         "model": bad_models, "loader": bad_loaders, "dataset": bad_datasets, "path": bad_paths,
         "callable": bad_callables, "any": wrong_types}


@dataclass
class Spec:
    """How to fuzz one function: a fresh valid call, and the kind of each argument to spoil.

    A kind ending in "?" means None is a valid value there (so it is not offered as a bad one).
    """

    fn: Callable
    valid: Callable[[], dict]
    fuzz: dict
    nan_ok: bool = False   # the function documents NaN in its result (e.g. a class with no examples)
    call: Callable | None = None  # how to call it, if not fn(**kwargs)


def strategy_for(kind: str, valid_value):
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if kind == "tensor":
        return bad_tensors(valid_value) if isinstance(valid_value, torch.Tensor) else bad_tensors(toy_logits())
    return KINDS[kind](optional)


# --- the specs --------------------------------------------------------------------------------

SPECS: dict[str, Spec] = {}


def spec(qualname: str, fn, valid, /, _nan_ok=False, _call=None, **fuzz):
    """Register `fn` as kdlib.<qualname>; `fuzz` maps argument names to kinds of bad value."""
    SPECS[qualname] = Spec(fn, valid, fuzz, _nan_ok, _call)


def _with(**kw):
    return lambda: dict(kw)


# utils
spec("utils.seed_everything", utils.seed_everything, _with(seed=0), seed="int")
spec("utils.get_device", utils.get_device, _with(device="cpu"), device="str?")
spec("utils.atomic_write_bytes", utils.atomic_write_bytes,
     lambda: dict(path=Path(tempfile.mkdtemp(dir=TMP)) / "f.bin", data=b"abc"), path="path", data="any")
spec("utils.atomic_write_text", utils.atomic_write_text,
     lambda: dict(path=Path(tempfile.mkdtemp(dir=TMP)) / "f.txt", text="abc"), path="path", text="any")
spec("utils.sha256_bytes", utils.sha256_bytes, _with(data=b"abc"), data="any")
spec("utils.sha256_file", utils.sha256_file, lambda: dict(path=saved_checkpoint()), path="path")
spec("utils.read_expected_sha256", utils.read_expected_sha256, lambda: dict(path=saved_checkpoint()), path="path")
spec("utils.save_checkpoint", utils.save_checkpoint,
     lambda: dict(model=toy_model(), path=Path(tempfile.mkdtemp(dir=TMP)) / "m.pt"), model="model", path="path")
spec("utils.load_checkpoint", utils.load_checkpoint, lambda: dict(model=toy_model(), path=saved_checkpoint()),
     model="model", path="path", sha256="str?")
spec("utils.load_or_train", utils.load_or_train,
     lambda: dict(path=saved_checkpoint(), make_model=toy_model, train_fn=lambda m: None, verbose=False),
     path="path", make_model="callable", train_fn="callable")
spec("utils.asset_path", utils.asset_path, _with(part="results"), _call=lambda part: utils.asset_path(part),
     part="str")
spec("utils.check_new_file", utils.check_new_file, lambda: dict(path=Path(tempfile.mkdtemp(dir=TMP)) / "a.onnx",
                                                              suffix=".onnx"), path="path", suffix="str?")
spec("utils.check_existing_file", utils.check_existing_file, lambda: dict(path=saved_checkpoint(), suffix=".pt"),
     path="path", suffix="str?")
spec("utils.write_file", utils.write_file, lambda: dict(path=Path(tempfile.mkdtemp(dir=TMP)) / "a.bin", data=b"x"),
     path="path", data="any")
spec("utils.read_result", utils.read_result, _with(name="kd_gain"), name="str")
spec("utils.eval_mode", utils.eval_mode, lambda: dict(model=toy_model()),
     _call=lambda model: utils.eval_mode(model).__enter__(), model="model")
spec("chapter.begin", chapter.begin, _with(threads=1), _call=lambda threads: chapter.begin(threads) and None,
     threads="int")
spec("chapter.glue", chapter.glue, _with(name="x", value="1", display=False), name="any", display="any")

# data
spec("data.DatasetSplits", data.DatasetSplits,
     lambda: dict(name="toy", train=toy_dataset(), val=toy_dataset(6), test=toy_dataset(6), num_classes=K,
                  input_shape=(1, 8, 8)), name="str", train="dataset", num_classes="int", input_shape="any")
spec("data.stratified_split", data.stratified_split, _with(y=np.arange(30) % 3, fractions=(0.7, 0.1, 0.2)),
     y="tensor", fractions="any", seed="int")
spec("data.targets_of", data.targets_of, lambda: dict(dataset=toy_dataset()), dataset="dataset")
spec("data.labelled_subset", data.labelled_subset, lambda: dict(dataset=toy_dataset(), n=6),
     dataset="dataset", n="int", seed="int")
spec("data.load_dataset", data.load_dataset, _with(name="digits"), name="str", seed="int")
spec("data.make_loader", data.make_loader, lambda: dict(dataset=toy_dataset(), batch_size=4),
     dataset="dataset", batch_size="int", seed="int")
spec("data.as_tensors", data.as_tensors, lambda: dict(dataset=toy_dataset()), dataset="dataset")
spec("data.random_shift_rotate", data.random_shift_rotate, lambda: dict(X=toy_x()),
     X="tensor", max_shift="int", max_degrees="number")

# models
spec("models.StudentCNN", models.StudentCNN, _with(input_shape=(1, 8, 8), num_classes=K, width=2, depth=1),
     input_shape="any", num_classes="int", width="int", depth="int")
spec("models.StudentMLP", models.StudentMLP, _with(input_shape=(1, 4, 4), num_classes=K, hidden=(4,)),
     input_shape="any", num_classes="int", hidden="any")
spec("models.TeacherCNN", models.TeacherCNN, _with(input_shape=(1, 8, 8), num_classes=K, width=2, hidden=4),
     input_shape="any", num_classes="int", width="int", hidden="int", dropout="number")
spec("models.build_model", models.build_model, _with(name="student_mlp", input_shape=(1, 4, 4), num_classes=K),
     name="str", input_shape="any", num_classes="int")
spec("models.flat_features", models.flat_features,
     lambda: dict(layers=nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), input_shape=(1, 8, 8)),
     layers="model", input_shape="any")
spec("models.resnet18_small", models.resnet18_small, _with(input_shape=(3, 32, 32), num_classes=K),
     input_shape="any", num_classes="int")
spec("models.mobilenet_v3_small_small", models.mobilenet_v3_small_small, _with(input_shape=(3, 32, 32), num_classes=K),
     input_shape="any", num_classes="int")

# losses
spec("losses.check_logits", losses.check_logits, lambda: dict(name="z", logits=toy_logits()), logits="tensor")
spec("losses.check_temperature", losses.check_temperature, _with(T=4.0), T="number")
spec("losses.soft_targets", losses.soft_targets, lambda: dict(logits=toy_logits(), T=2.0), logits="tensor", T="number")
spec("losses.kd_loss", losses.kd_loss,
     lambda: dict(student_logits=toy_logits(), teacher_logits=toy_logits(seed=4), labels=toy_labels(), T=4.0,
                  alpha=0.9),
     student_logits="tensor", teacher_logits="tensor", labels="tensor", T="number", alpha="number")
spec("losses.KDLoss", losses.KDLoss, _with(T=4.0, alpha=0.9), T="number", alpha="number")

# guards
spec("guards.looks_like_probabilities", guards.looks_like_probabilities, lambda: dict(x=toy_logits()), x="tensor")
spec("guards.warn_if_probabilities", guards.warn_if_probabilities, lambda: dict(name="z", x=toy_logits()), x="tensor")
spec("guards.warn_if_teacher_grad", guards.warn_if_teacher_grad, lambda: dict(teacher_logits=toy_logits()),
     teacher_logits="tensor")
spec("guards.warn_if_train_mode", guards.warn_if_train_mode, lambda: dict(teacher=toy_teacher()), teacher="model")
spec("guards.chance_accuracy", guards.chance_accuracy, lambda: dict(labels=toy_labels(), num_classes=K),
     labels="tensor", num_classes="int")
spec("guards.better_than_chance", guards.better_than_chance,
     lambda: dict(logits=toy_logits(20), labels=toy_labels(20)), logits="tensor", labels="tensor", z="number")
spec("guards.probe_batch", guards.probe_batch, lambda: dict(dataset=toy_dataset(), n=5), dataset="dataset", n="int")
spec("guards.run_model", guards.run_model, lambda: dict(model=toy_model(), X=toy_x()), model="model", X="tensor")
spec("guards.preflight", guards.preflight,
     lambda: dict(student=toy_model(), teacher=toy_teacher(), batch=[toy_x(4), toy_labels(4)]),
     student="model", teacher="model?", batch="any")

# train
_fit_kw = dict(num_epochs=1, progress=False)
spec("train.train", train.train, lambda: dict(model=toy_model(), train_loader=toy_loader(), **_fit_kw),
     model="model", train_loader="loader", num_epochs="int", lr="number", weight_decay="number",
     schedule="str", augment="callable?", mixup="number?", val_loader="loader?")
spec("train.distill", train.distill,
     lambda: dict(student=toy_model(), teacher=toy_teacher(), train_loader=toy_loader(), **_fit_kw),
     student="model", teacher="model", train_loader="loader", T="number", alpha="number", num_epochs="int",
     lr="number", schedule="str", val_loader="loader?", feature_loss="callable?", student_layers="any",
     beta="number", augment="callable?", mixup="number?", logit_loss="callable?")
spec("inference.evaluate", inference.evaluate, lambda: dict(model=toy_model(), loader=toy_loader()),
     model="model", loader="loader", teacher="model?")
spec("inference.predict_logits", inference.predict_logits, lambda: dict(model=toy_model(), loader=toy_loader()),
     model="model", loader="loader")
spec("inference.cache_teacher_outputs", inference.cache_teacher_outputs,
     lambda: dict(teacher=toy_teacher(), train_loader=toy_loader()), teacher="model", train_loader="loader")
spec("data.partially_labelled", data.partially_labelled,
     lambda: (lambda ds: dict(dataset=ds, labelled=data.labelled_subset(ds, 6)))(toy_dataset()),
     dataset="dataset", labelled="dataset")
spec("losses.kd_loss (unlabelled)", losses.kd_loss,
     lambda: dict(student_logits=toy_logits(), teacher_logits=toy_logits(seed=4),
                  labels=torch.tensor([0, -1, 2, -1]), T=4.0, alpha=0.9),
     student_logits="tensor", teacher_logits="tensor", labels="tensor", T="number", alpha="number")
spec("data.mixup", data.mixup, lambda: dict(X=toy_x(4)), X="tensor", concentration="number")

# measure
spec("measure.count_params", measure.count_params, lambda: dict(model=toy_model()), model="model")
spec("measure.count_macs", measure.count_macs, lambda: dict(model=toy_model(), example_input=toy_x(1)),
     model="model", example_input="tensor")
spec("measure.serialized_size", measure.serialized_size, lambda: dict(model=toy_model()), model="model")
spec("measure.time_fn", measure.time_fn, _with(fn=lambda: None, warmup=1, repeats=3),
     fn="callable", warmup="int", repeats="int")
spec("measure.latency", measure.latency, lambda: dict(model=toy_model(), example_input=toy_x(1), warmup=1, repeats=2),
     model="model", example_input="tensor", threads="int", warmup="int", repeats="int")
spec("measure.profile", measure.profile, lambda: dict(model=toy_model(), example_input=toy_x(1), repeats=2),
     model="model", example_input="tensor", threads="int", repeats="int")
spec("measure.compare_latency", measure.compare_latency,
     _with(runners={"a": lambda: None}, rounds=1, warmup=1, repeats=2),
     runners="any", rounds="int", warmup="int", repeats="int", threads="int")
spec("measure.num_threads", measure.num_threads, _with(n=1), n="int")

# zoo (never trains: only the argument checks run, with checkpoints in a temporary folder)
spec("zoo.teacher_path", zoo.teacher_path, _with(dataset="mnist5k"), dataset="str")
spec("zoo.student_path", zoo.student_path, _with(dataset="mnist5k"), dataset="str")
spec("zoo.describe_recipe", zoo.describe_recipe, _with(recipe=zoo.TEACHER_RECIPE), recipe="any")
spec("zoo.load_teacher", zoo.load_teacher, _with(dataset="mnist5k", verbose=False, progress=False),
     dataset="str", ds="any?")
spec("zoo.load_student", zoo.load_student, _with(dataset="mnist5k", verbose=False, progress=False),
     dataset="str", ds="any?", teacher="any?")
spec("zoo.train_teacher", zoo.train_teacher, lambda: dict(model=toy_model(), ds=toy_splits(), progress=False),
     model="model", ds="any", recipe="any")
spec("zoo.distill_student", zoo.distill_student,
     lambda: dict(student=toy_model(), teacher=toy_teacher(), ds=toy_splits(), progress=False),
     student="model", teacher="model", ds="any", recipe="any")


# --- modules added by later chapters (skipped while a module is absent) -------------------------

def _optional(name):
    try:
        return importlib.import_module(f"kdlib.{name}")
    except ModuleNotFoundError:
        return None


metrics, prune, quant, qat, export, pipeline = (
    _optional(m) for m in ("metrics", "prune", "quant", "qat", "export", "pipeline"))
SLOW: set[str] = set()  # specs whose every call costs a second or more: fewer examples


def _scarce_recipe():
    return zoo.DistillRecipe(num_labels=6, num_epochs=1, alone_epochs=1, batch_size=4)


if hasattr(zoo, "DistillRecipe"):
    spec("zoo.DistillRecipe", zoo.DistillRecipe, _with(num_labels=6), num_labels="int")
    spec("zoo.scarce_data", zoo.scarce_data, lambda: dict(ds=toy_splits(), recipe=_scarce_recipe()),
         ds="any", recipe="any")
    spec("zoo.make_scarce_student", zoo.make_scarce_student, lambda: dict(ds=toy_splits(), recipe=_scarce_recipe()),
         ds="any", recipe="any")
    spec("zoo.train_alone", zoo.train_alone,
         lambda: dict(student=toy_model(), labelled=toy_dataset(), recipe=_scarce_recipe()),
         student="model", labelled="dataset", recipe="any", seed="int")
    spec("zoo.distill_scarce", zoo.distill_scarce,
         lambda: dict(student=toy_model(), teacher=toy_teacher(), transfer=toy_dataset(), recipe=_scarce_recipe()),
         student="model", teacher="model", transfer="dataset", recipe="any", seed="int")

if hasattr(data, "augmented_copies"):
    spec("data.augmented_copies", data.augmented_copies, lambda: dict(dataset=toy_dataset(), copies=2),
         dataset="dataset", copies="int", augment="callable", seed="int")
if hasattr(zoo, "transfer_loader"):
    spec("zoo.transfer_loader", zoo.transfer_loader,
         lambda: dict(teacher=toy_teacher(), transfer=toy_dataset(), recipe=_scarce_recipe()),
         teacher="model", transfer="dataset", recipe="any")

if True:  # losses, hooks, chains and the teacher-output cache
    def _emb(b=5, d=3, seed=5):
        return torch.randn(b, d, generator=torch.Generator().manual_seed(seed))

    def _feat(c=3, seed=6):
        return torch.randn(2, c, 4, 4, generator=torch.Generator().manual_seed(seed))

    def _use_capture(model, names, detach=False):
        with hooks.capture(model, names, detach=detach) as feats:
            pass
        return feats

    _distill_kw = dict(num_epochs=1, progress=False)
    spec("losses.FitNetsHint", losses.FitNetsHint, _with(student_channels=(2,), teacher_channels=(4,)),
         student_channels="any", teacher_channels="any")
    spec("inference.TeacherOutputs", inference.TeacherOutputs,
         lambda: dict(X=toy_x(4), y=toy_labels(4), teacher_logits=toy_logits(4), features=[], layers=[],
                      teacher=toy_teacher()),
         X="tensor", y="tensor", teacher_logits="tensor", features="any", layers="any", teacher="model")
    spec("losses.angle_potentials", losses.angle_potentials, lambda: dict(e=_emb()), e="tensor", eps="number")
    spec("losses.distance_potentials", losses.distance_potentials, lambda: dict(e=_emb()), e="tensor",
         eps="number")
    spec("losses.attention_map", losses.attention_map, lambda: dict(feat=_feat()), feat="tensor", p="number",
         size="any?")
    spec("losses.attention_loss", losses.attention_loss,
         lambda: dict(student_feat=_feat(3), teacher_feat=_feat(5, 7)),
         student_feat="tensor", teacher_feat="tensor", p="number")
    spec("losses.hint_regressor", losses.hint_regressor, _with(student_channels=2, teacher_channels=4),
         student_channels="int", teacher_channels="int")
    spec("losses.hint_loss", losses.hint_loss,
         lambda: dict(student_feat=_feat(2), teacher_feat=_feat(4, 7), regressor=losses.hint_regressor(2, 4)),
         student_feat="tensor", teacher_feat="tensor", regressor="model")
    for _name in ("rkd_distance_loss", "rkd_angle_loss", "rkd_loss"):
        spec(f"losses.{_name}", getattr(losses, _name),
             lambda: dict(student_emb=_emb(), teacher_emb=_emb(d=4, seed=8)),
             student_emb="tensor", teacher_emb="tensor")
    spec("losses.dkd_terms", losses.dkd_terms,
         lambda: dict(student_logits=toy_logits(), teacher_logits=toy_logits(seed=4), labels=toy_labels(), T=4.0),
         student_logits="tensor", teacher_logits="tensor", labels="tensor", T="number")
    spec("losses.dkd_loss", losses.dkd_loss,
         lambda: dict(student_logits=toy_logits(), teacher_logits=toy_logits(seed=4), labels=toy_labels()),
         student_logits="tensor", teacher_logits="tensor", labels="tensor", alpha="number", beta="number",
         T="number")
    spec("hooks.capture", hooks.capture, lambda: dict(model=toy_model(), names=["0"]), _call=_use_capture,
         model="model", names="any")
    spec("hooks.feature_shapes", hooks.feature_shapes,
         lambda: dict(model=toy_model(), names=["0"], input_shape=(1, 8, 8)),
         model="model", names="any", input_shape="any")
    spec("inference.cache_teacher_outputs (layers)", inference.cache_teacher_outputs,
         lambda: dict(teacher=toy_teacher(), train_loader=toy_loader(), layers=["0"]),
         teacher="model", train_loader="loader", layers="any")
    spec("chains.teacher_assistant_chain", chains.teacher_assistant_chain,
         lambda: dict(teacher=toy_teacher(), assistants=[toy_model()], student=toy_model(),
                      train_loader=toy_loader(), **_distill_kw),
         teacher="model", assistants="any", student="model", train_loader="loader")
    spec("chains.born_again", chains.born_again,
         lambda: dict(make_model=toy_model, train_loader=toy_loader(), generations=1,
                      train_kwargs=dict(_distill_kw), **_distill_kw),
         make_model="callable", train_loader="loader", generations="int", train_kwargs="any?")

if metrics is not None:
    def _probs(n=20):
        return torch.softmax(toy_logits(n), dim=1)

    spec("metrics.expected_calibration_error", metrics.expected_calibration_error,
         lambda: dict(probs=_probs(), labels=toy_labels(20)), probs="tensor", labels="tensor", n_bins="int")
    spec("metrics.reliability_diagram_data", metrics.reliability_diagram_data,
         lambda: dict(probs=_probs(), labels=toy_labels(20)), _nan_ok=True,  # NaN marks an empty bin (documented)
         probs="tensor", labels="tensor", n_bins="int")
    spec("metrics.mean_confidence", metrics.mean_confidence, lambda: dict(probs=_probs()), probs="tensor")
    spec("metrics.per_class_accuracy", metrics.per_class_accuracy,
         lambda: dict(logits=toy_logits(20), labels=toy_labels(20)), _nan_ok=True,  # NaN: a class without examples
         logits="tensor", labels="tensor", num_classes="int?")
    spec("metrics.gap_closed", metrics.gap_closed, _with(kd=0.95, alone=0.9, teacher=0.99),
         kd="number", alone="number", teacher="number")
    spec("metrics.mean_ci", metrics.mean_ci, _with(values=[0.9, 0.92, 0.91]), values="any", confidence="number")
    spec("metrics.compare_paired", metrics.compare_paired, _with(a=[0.9, 0.92, 0.91], b=[0.89, 0.9, 0.9]),
         a="any", b="any", confidence="number")
    spec("metrics.mean_std", metrics.mean_std, _with(values=[0.9, 0.92]), values="any")
    spec("metrics.format_mean_std", metrics.format_mean_std, _with(values=[0.9, 0.92]), values="any", fmt="str")

if prune is not None:
    def _conv():
        torch.manual_seed(0)
        return nn.Conv2d(1, 4, 3)

    def _prunable():
        torch.manual_seed(0)
        return models.StudentCNN((1, 8, 8), K, width=4, depth=1)

    spec("prune.check_amount", prune.check_amount, _with(amount=0.5), amount="number")
    spec("prune.gradual_schedule", prune.gradual_schedule, _with(final=0.8, num_steps=3),
         final="number", num_steps="int", initial="number")
    spec("prune.filter_norms", prune.filter_norms, lambda: dict(conv=_conv()), conv="model", criterion="str")
    spec("prune.channels_to_keep", prune.channels_to_keep, lambda: dict(conv=_conv(), amount=0.5),
         conv="model", amount="number", criterion="str")
    spec("prune.effective_weight", prune.effective_weight, lambda: dict(layer=_conv()), layer="model")
    for _name in ("is_pruned", "make_permanent", "prunable_layers", "sparsity"):
        spec(f"prune.{_name}", getattr(prune, _name), lambda: dict(model=_prunable()), model="model")
    spec("prune.magnitude_masks", prune.magnitude_masks, lambda: dict(model=_prunable(), amount=0.5),
         model="model", amount="number", scope="str")
    spec("prune.magnitude_prune", prune.magnitude_prune, lambda: dict(model=_prunable(), amount=0.5),
         model="model", amount="number", scope="str")
    spec("prune.channel_prune", prune.channel_prune,
         lambda: dict(model=_prunable(), amount=0.5, example_input=toy_x(1)),
         model="model", amount="number", example_input="tensor", criterion="str")
    spec("prune.prune_and_finetune", prune.prune_and_finetune,
         lambda: dict(model=_prunable(), amounts=[0.5], train_loader=toy_loader(), num_epochs=1),
         model="model", amounts="any", train_loader="loader", scope="str", teacher="model?", num_epochs="int",
         lr="number")

if quant is not None:
    def _w():
        return torch.randn(4, 3, generator=torch.Generator().manual_seed(9))

    def _prepared():
        return qat.prepare_qat(toy_model())

    spec("quant.check_bits", quant.check_bits, _with(num_bits=8), num_bits="int")
    spec("quant.qrange", quant.qrange, _with(num_bits=8), num_bits="int")
    spec("quant.compute_qparams", quant.compute_qparams,
         lambda: dict(min_val=torch.tensor(-1.0), max_val=torch.tensor(2.0)),
         min_val="tensor", max_val="tensor", num_bits="int")
    spec("quant.quantize", quant.quantize, lambda: dict(x=_w()), x="tensor", num_bits="int", axis="int?")
    spec("quant.quantize_with", quant.quantize_with,
         lambda: dict(x=_w(), scale=torch.tensor(0.1), zero_point=torch.tensor(3)),
         x="tensor", scale="tensor", zero_point="tensor", num_bits="int", axis="int?")
    spec("quant.dequantize", quant.dequantize,
         lambda: dict(q=torch.arange(12, dtype=torch.int32).reshape(4, 3), scale=torch.tensor(0.1),
                      zero_point=torch.tensor(3)),
         q="tensor", scale="tensor", zero_point="tensor", axis="int?")
    spec("quant.fake_quantize", quant.fake_quantize, lambda: dict(x=_w()), x="tensor", num_bits="int", axis="int?")
    spec("quant.minmax_range", quant.minmax_range, lambda: dict(x=_w()), x="tensor", axis="int?")
    spec("quant.percentile_range", quant.percentile_range, lambda: dict(x=_w()), x="tensor", percentile="number",
         axis="int?")
    spec("quant.mse_range", quant.mse_range, lambda: dict(x=_w(), grid=10), x="tensor", num_bits="int", axis="int?",
         grid="int")
    spec("quant.observe_range", quant.observe_range, lambda: dict(x=_w()), x="tensor", method="str",
         num_bits="int", percentile="number")
    spec("quant.quantization_error", quant.quantization_error, lambda: dict(x=_w()), x="tensor", num_bits="int",
         method="str")
    spec("quant.Observer", quant.Observer, _with(num_bits=8), num_bits="int", method="str", percentile="number")
    spec("qat.QConv2d", qat.QConv2d, lambda: dict(conv=nn.Conv2d(1, 2, 3)), conv="model", num_bits="int")
    spec("qat.QLinear", qat.QLinear, lambda: dict(linear=nn.Linear(3, 2)), linear="model", num_bits="int")
    spec("qat.fold_batchnorm", qat.fold_batchnorm, lambda: dict(model=toy_model()), model="model")
    spec("qat.prepare_qat", qat.prepare_qat, lambda: dict(model=toy_model()), model="model", num_bits="int",
         act_num_bits="int?", weight_method="str", act_method="str")
    spec("qat.quant_layers", qat.quant_layers, lambda: dict(model=_prepared()), model="model")
    spec("qat.integer_weights", qat.integer_weights, lambda: dict(model=_prepared()), model="model")
    spec("qat.weight_storage_bytes", qat.weight_storage_bytes, lambda: dict(model=toy_model()), model="model",
         num_bits="int")
    spec("qat.calibrate", qat.calibrate, lambda: dict(model=_prepared(), loader=toy_loader(), num_batches=2),
         model="model", loader="loader", num_batches="int")

if export is not None:
    _ONNX: list[Path] = []

    def toy_onnx() -> Path:
        """One small exported ONNX file, made once."""
        if not _ONNX or not _ONNX[0].exists():
            _ONNX[:] = [export.to_onnx(toy_model(), toy_x(1), Path(tempfile.mkdtemp(dir=TMP)) / "toy.onnx")]
        return _ONNX[0]

    def _fresh(suffix):
        return Path(tempfile.mkdtemp(dir=TMP)) / f"out{suffix}"

    spec("export.capture", export.capture, lambda: dict(model=toy_model(), example_input=toy_x(1)),
         model="model", example_input="tensor")
    # the exporters get only values that must fail fast: a spoiled tensor (float64, scaled) or
    # another model can be valid, and a valid call is a full export (seconds to a minute)
    spec("export.to_onnx", export.to_onnx,
         lambda: dict(model=toy_model(), example_input=toy_x(1), path=_fresh(".onnx")),
         model="any", example_input="any", path="path")
    spec("export.to_executorch", export.to_executorch,
         lambda: dict(model=toy_model(), example_input=toy_x(1), path=_fresh(".pte")),
         model="any", example_input="any", path="path")
    spec("export.quantize_xnnpack", export.quantize_xnnpack,
         lambda: dict(model=toy_model(), example_input=toy_x(1), calibration=toy_x(4)),
         model="any", example_input="any", calibration="any")
    spec("export.onnx_session", export.onnx_session, lambda: dict(path=toy_onnx()), path="path", threads="int")
    spec("export.run_onnx", export.run_onnx, lambda: dict(session=toy_onnx(), X=toy_x(3)), session="any",
         X="tensor", batch_size="int")
    spec("export.predict", export.predict, lambda: dict(path=toy_onnx(), X=toy_x(3)), path="path", X="tensor",
         threads="int")
    spec("export.make_runner", export.make_runner, lambda: dict(path=toy_onnx(), example_input=toy_x(1)),
         path="path", example_input="tensor", threads="int")
    spec("export.check_parity", export.check_parity,
         lambda: dict(path=toy_onnx(), model=toy_model(), inputs=toy_x(3)),
         path="path", model="model", inputs="tensor", atol="number")
    spec("export.quantize_onnx", export.quantize_onnx,
         lambda: dict(src=toy_onnx(), dst=_fresh(".onnx"), calibration=toy_x(4)),
         src="path", dst="path", calibration="any?", mode="str")
    spec("export.executorch_method", export.executorch_method, lambda: dict(path=TMP / "missing.pte"),
         path="path", threads="int")
    spec("export.run_executorch", export.run_executorch, lambda: dict(method=TMP / "missing.pte", X=toy_x()),
         method="any", X="tensor")
    if hasattr(export, "export_all"):
        # folder is only given wrong types: any existing folder would start a full export
        spec("export.export_all", export.export_all,
             lambda: dict(model=toy_model(), example_input=toy_x(1), folder=Path(tempfile.mkdtemp(dir=TMP)),
                          name="toy", calibration=toy_x(4)),
             model="any", folder="any")
        SLOW.add("export.export_all")
    SLOW.update({"export.make_runner", "export.capture", "export.to_onnx", "export.to_executorch", "export.quantize_xnnpack",
                 "export.check_parity", "export.quantize_onnx"})

if pipeline is not None:
    spec("pipeline.PipelineConfig", pipeline.PipelineConfig, _with(dataset="mnist5k"), dataset="str", T="number",
         alpha="number", student_width="int", prune_amount="number")
    spec("pipeline.pareto_front", pipeline.pareto_front, _with(points=[(1.0, 0.9), (2.0, 0.95), (3.0, 0.93)]),
         points="any")
    spec("pipeline.pareto_figure", pipeline.pareto_figure,
         _with(rows=[{"stage": "a", "bytes": 10, "median_us": 5.0, "accuracy": 0.9},
                     {"stage": "b", "bytes": 20, "median_us": 3.0, "accuracy": 0.95}]), rows="any")
    spec("pipeline.prepare_out", pipeline.prepare_out, lambda: dict(out=Path(tempfile.mkdtemp(dir=TMP)) / "run"),
         out="path")
    # only the config is spoiled: with a good config and any writable folder the whole pipeline would run
    spec("pipeline.run_pipeline", pipeline.run_pipeline,
         lambda: dict(out=Path(tempfile.mkdtemp(dir=TMP)) / "run", progress=False, log=None), config="any?")

# --- functions added with the teaching chapter, your-own-model support and the pipeline split --------

def _tiny_teach():
    return zoo.TeachRecipe(mode="consistent", num_epochs=1, batch_size=4)


spec("utils.read_checkpoint", utils.read_checkpoint, lambda: dict(path=saved_checkpoint()), path="path",
     sha256="str?")
spec("utils.unwrap_state_dict", utils.unwrap_state_dict, lambda: dict(obj=toy_model().state_dict()), obj="any",
     where="str")
spec("data.CopySampler", data.CopySampler, _with(n=4, copies=2), n="int", copies="int", seed="int")
spec("data.mixup_copies", data.mixup_copies, lambda: dict(dataset=toy_dataset(), copies=2),
     dataset="dataset", copies="int", concentration="number", augment="callable", seed="int")
spec("models.Standardise", models.Standardise, _with(mean=(0.5,), std=(0.25,)), mean="any", std="any")
spec("models.with_standardise", models.with_standardise,
     lambda: dict(model=toy_model(), normalisation=((0.5,), (0.25,))), model="model", normalisation="any")
spec("inference.fidelity", inference.fidelity,
     lambda: dict(model=toy_model(), loader=toy_loader(), teacher_logits=inference.predict_logits(
         toy_teacher(), toy_loader())), model="model", loader="loader", teacher_logits="tensor")
spec("inference.track_fidelity", inference.track_fidelity,
     lambda: dict(teacher=toy_teacher(), loaders={"val": toy_loader()}), teacher="model", loaders="any",
     every="int")
spec("zoo.TeachRecipe", zoo.TeachRecipe, _with(mode="consistent"), mode="str", num_epochs="int", T="number",
     alpha="number", lr="number", batch_size="int")
spec("zoo.pseudo_label_loss", zoo.pseudo_label_loss,
     lambda: dict(student_logits=toy_logits(), teacher_logits=toy_logits(seed=4), y=torch.tensor([0, -1, 2, -1])),
     student_logits="tensor", teacher_logits="tensor", y="tensor")
spec("zoo.scarce_steps", zoo.scarce_steps, _with(n_train=3500), recipe="any", n_train="int")
spec("zoo.teaching_views", zoo.teaching_views, lambda: dict(transfer=toy_dataset(), recipe=_tiny_teach()),
     transfer="dataset", recipe="any")
spec("zoo.teach_scarce", zoo.teach_scarce,
     lambda: (lambda views: dict(student=toy_model(), teacher=toy_teacher(),
                                 cached=inference.cache_teacher_outputs(
                                     toy_teacher(), DataLoader(views, batch_size=4)),
                                 n=12, recipe=_tiny_teach()))(zoo.teaching_views(toy_dataset(), _tiny_teach())),
     student="model", teacher="model", n="int", recipe="any", seed="int")
if prune is not None:
    spec("prune.keep_count", prune.keep_count, _with(channels=12, amount=0.25, multiple_of=4),
         channels="int", amount="number", multiple_of="int")
if export is not None:
    spec("export.as_batch", export.as_batch, lambda: dict(X=toy_x(2)), X="tensor", name="str")
    spec("export.example_batch", export.example_batch, lambda: dict(example_input=toy_x(1)), example_input="tensor")
if pipeline is not None and hasattr(pipeline, "cosine_lr"):
    spec("pipeline.cosine_lr", pipeline.cosine_lr, _with(lr=0.01, epoch=1, num_epochs=4), lr="number",
         epoch="int", num_epochs="int")
if pipeline is not None and hasattr(pipeline, "prune_student"):
    spec("pipeline.prune_student", pipeline.prune_student,
         lambda: dict(student=models.StudentCNN((1, 8, 8), K, width=4, depth=1), amount=0.5, example=toy_x(1)),
         student="model", amount="number", example="tensor", multiple_of="int")
    SLOW.add("pipeline.prune_student")


EXEMPT = {
    "utils": {},
    "data": {},
    "models": {},
    "losses": {},
    "guards": {"KDWarning": "a warning class", "TeacherModeWarning": "a warning class",
               "TeacherGradWarning": "a warning class", "ProbabilitiesWarning": "a warning class",
               "WeakTeacherWarning": "a warning class"},
    "train": {"History": "a plain record filled by the loops"},
    "distributed": {"init_distributed": "needs the environment torchrun sets; without it, a clear RuntimeError",
                    "is_distributed": "no arguments", "is_main_process": "no arguments",
                    "shard": "takes the loader of a run that kdlib.train already checked",
                    "wrap": "takes the model of a run that kdlib.train already checked",
                    "all_reduce_sum": "needs a process group; called by kdlib.train only"},
    "validation": {name: "an input check: raising a clear error on bad input is its whole job"
                   for name, _ in inspect.getmembers(validation, inspect.isfunction)
                   if not name.startswith("_") and _.__module__ == "kdlib.validation"},
    "inference": {"channels_last": "a yes/no on a model the caller already checked",
                  "fast_layout": "a context manager used by train and inference on checked models",
                  "loader_like": "builds a loader from one that kdlib.train already checked"},
    "hooks": {"collect": "reads the dict that capture fills; fuzzed through capture and distill",
              "check_layer_names": "an input check: raising a clear error on bad input is its whole job"},
    "chapter": {"Chapter": "the clock of a chapter: no arguments", "GLUED": "a dict"},
    "measure": {"machine_info": "no arguments"},
    "metrics": {"PairedComparison": "a frozen record that compare_paired fills"},
    "zoo": {"checkpoint_dir": "no arguments", "TeacherRecipe": "a frozen dataclass of defaults",
            "StudentRecipe": "a frozen dataclass of defaults"},
    "quant": {"FakeQuantSTE": "an autograd Function, fuzzed through fake_quantize"},
    "export": {"native_stderr_silenced": "a context manager without arguments"},
}


# Known findings not fixed yet, {"module.function": "what fails"}: expected to fail here until
# fixed (then the test shows XPASS: delete the entry). Empty: every finding so far is fixed.
KNOWN: dict[str, str] = {}

# --- the checks -------------------------------------------------------------------------------

def clear_error_problem(err: BaseException) -> str | None:
    """None if `err` is a clear error raised by kdlib itself, else what is wrong with it."""
    frame = traceback.extract_tb(err.__traceback__)[-1]
    where = f"{Path(frame.filename).name}:{frame.lineno} `{frame.line}`"
    if not isinstance(err, CLEAR_ERRORS):
        return f"{type(err).__name__}: {err} (raised at {where})"
    in_kdlib = Path(frame.filename).resolve().is_relative_to(KDLIB_DIR)
    if isinstance(err, FileNotFoundError) and in_kdlib:
        return None  # the OS's own message names the missing path
    if not in_kdlib or not (frame.line or "").startswith("raise"):
        return f"{type(err).__name__} not raised by kdlib but at {where}: {err}"
    if not str(err).strip():
        return f"{type(err).__name__} with an empty message at {where}"
    return None


def nan_in(result, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if isinstance(result, torch.Tensor):
        return bool(result.is_floating_point() and torch.isnan(result.detach()).any())
    if isinstance(result, np.ndarray):
        return bool(np.issubdtype(result.dtype, np.floating) and np.isnan(result).any())
    if isinstance(result, float):
        return math.isnan(result)
    if isinstance(result, dict):
        return any(nan_in(v, depth + 1) for v in result.values())
    if isinstance(result, (list, tuple)):
        return any(nan_in(v, depth + 1) for v in result[:50])
    return False


def run_case(spec_: Spec, kwargs: dict) -> str | None:
    """Call the function; None if it behaved, else the problem."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings are allowed; only errors and results are judged here
            if spec_.call is not None:
                result = spec_.call(**kwargs)
            else:
                result = spec_.fn(**kwargs)
                if isinstance(result, measure.num_threads):
                    with result:
                        pass
    except Exception as err:  # noqa: BLE001 - judging the exception is the point
        return clear_error_problem(err)
    if not spec_.nan_ok and nan_in(result):
        return "returned NaN instead of raising a clear error"
    return None


def _public(module) -> list[str]:
    return sorted(n for n, obj in vars(module).items()
                  if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                  and getattr(obj, "__module__", None) == module.__name__)


def _present_modules() -> list[str]:
    out = []
    for m in MODULES:
        try:
            importlib.import_module(f"kdlib.{m}")
        except ModuleNotFoundError:
            continue
        out.append(m)
    return out


def test_every_public_function_is_fuzzed():
    missing = []
    for m in _present_modules():
        module = importlib.import_module(f"kdlib.{m}")
        exempt = EXEMPT.get(m)
        for name in _public(module):
            if f"{m}.{name}" not in SPECS and (exempt is None or name not in exempt):
                missing.append(f"kdlib.{m}.{name}")
    assert not missing, f"add these to SPECS (or to EXEMPT with a reason): {missing}"


def _fuzz_once(name, data):
    spec_ = SPECS[name]
    kwargs = spec_.valid()
    param = data.draw(st.sampled_from(sorted(spec_.fuzz)), label="argument")
    kwargs[param] = data.draw(strategy_for(spec_.fuzz[param], kwargs.get(param)), label=param)
    problem = run_case(spec_, kwargs)
    assert problem is None, f"kdlib.{name}({param}={kwargs[param]!r}): {problem}"


def _params(names):
    """Each name as a pytest param; the known findings (KNOWN) are expected to fail until fixed."""
    return [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN[n], strict=False)) if n in KNOWN else n
            for n in sorted(names)]


@pytest.mark.parametrize("name", _params(set(SPECS) - SLOW))
@FUZZ_SETTINGS
@given(data=st.data())
def test_bad_input_gives_a_clear_error(name, data):
    _fuzz_once(name, data)


@pytest.mark.parametrize("name", _params(SLOW))
@settings(FUZZ_SETTINGS, max_examples=2)
@given(data=st.data())
def test_bad_input_gives_a_clear_error_slow(name, data):
    _fuzz_once(name, data)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_valid_call_works(name):
    """The valid call of each spec must itself pass, or the fuzz would test nothing."""
    if name in ("zoo.load_teacher", "zoo.load_student", "pipeline.run_pipeline") or name in SLOW:
        pytest.skip("trains or exports for real: too slow for a fuzz run")
    if name in ("export.executorch_method", "export.run_executorch"):
        pytest.skip("needs a .pte file, too slow to export here")
    problem = run_case(SPECS[name], SPECS[name].valid())
    assert problem is None, f"kdlib.{name} with valid arguments: {problem}"


# --- checkpoints on disk: corrupted or with the wrong hash ------------------------------------

def _corrupt(data_: bytes, how: str, pos: int) -> bytes:
    pos %= max(len(data_), 1)
    if how == "flip":
        return data_[:pos] + bytes([data_[pos] ^ 0xFF]) + data_[pos + 1:]
    if how == "truncate":
        return data_[:pos]
    if how == "append":
        return data_ + b"\x00garbage"
    return b"not a checkpoint at all"


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(how=st.sampled_from(["flip", "truncate", "append", "replace"]), pos=st.integers(0, 10**6),
       keep_hash_file=st.booleans())
def test_corrupted_checkpoint_fails_clearly_and_is_never_overwritten(how, pos, keep_hash_file):
    path = saved_checkpoint()
    bad = _corrupt(path.read_bytes(), how, pos)
    path.write_bytes(bad)
    sha = path.with_name(path.name + ".sha256")
    if not keep_hash_file:
        sha.unlink()
    sha_before = sha.read_bytes() if sha.exists() else None
    trained = []
    for load in (lambda: utils.load_checkpoint(toy_model(), path),
                 lambda: utils.load_or_train(path, toy_model, trained.append, verbose=False)):
        try:
            load()
        except Exception as err:  # noqa: BLE001
            assert clear_error_problem(err) is None, clear_error_problem(err)
            assert isinstance(err, ValueError) and str(path) in str(err)
        else:
            # only possible without a hash file, when the damage left a readable state dict
            assert not keep_hash_file
        assert path.read_bytes() == bad, "the user's file was changed"
        assert (sha.read_bytes() if sha.exists() else None) == sha_before
    assert not trained, "load_or_train retrained over an existing (corrupted) checkpoint"


def test_wrong_hash_fails_and_leaves_the_file():
    path = saved_checkpoint()
    before = path.read_bytes()
    with pytest.raises(ValueError, match="corrupted or was changed"):
        utils.load_checkpoint(toy_model(), path, sha256="0" * 64)
    path.with_name(path.name + ".sha256").write_text("f" * 64 + "  model.pt\n")
    with pytest.raises(ValueError, match="corrupted or was changed"):
        utils.load_or_train(path, toy_model, lambda m: None, verbose=False)
    assert path.read_bytes() == before


def test_checkpoint_of_another_architecture_fails_clearly():
    path = saved_checkpoint()
    with pytest.raises(ValueError, match="does not fit"):
        utils.load_checkpoint(models.StudentCNN((1, 8, 8), K, width=3, depth=1), path)
