"""One pipeline from a teacher to a small, fast, measured edge model.

    check the inputs (data, teacher, student, settings) -> distil a student (on augmented
    copies of the training images, teacher logits cached once) -> structured pruning with a
    distillation fine-tune -> the pruned architecture distilled from scratch (the baseline
    pruning must beat) -> export the teacher and the student (ONNX, int8, ExecuTorch)
    -> measure everything side by side, choose the edge model -> report (kdlib.report)

`python -m kdlib compress` is a thin shell over `run_pipeline`. Nothing is written before
every input is checked; every file goes into one output folder, written atomically; a stage
whose outputs are there with matching hashes is reused by `resume=True`, and the training
stages save their progress after every epoch, so that an interrupted run continues from the
last finished epoch.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import export, measure, prune, report
from .data import DatasetSplits, as_tensors, augmented_copies, make_loader
from .datafiles import load_data
from .inference import cache_teacher_outputs
from .models import with_standardise
from .pipeline_inputs import EXECUTORCH_HINT, Inputs, check_inputs, prepare_out, weights_digest
from .prune_graph import graph_channel_prune
from .report import pareto_figure, pareto_front  # noqa: F401 (kdlib.pipeline's names since chapter 13)
from .train import distill
from .utils import atomic_write_text, load_checkpoint, save_checkpoint, seed_everything, sha256_file
from .validation import check_choice, check_fraction, check_int, check_number, check_positive

STATE_FILE = ".pipeline_state.json"
INT8_LINEAR_OPS = ("Gemm", "MatMul")  # what int8_convs=False quantizes: the fully connected layers
# Every file the pipeline writes: --force removes these (and nothing else) before starting over.
OUTPUT_FILES = ("student.pt", "student.pt.sha256", "pruned.pt", "pruned.pt.sha256", "direct.pt", "direct.pt.sha256",
                "distill.partial.pt", "prune.partial.pt", "direct.partial.pt", "edge_fp32.onnx", "edge_int8.onnx",
                "edge_fp32.pte", "teacher_fp32.onnx", "teacher_int8.onnx", "teacher_fp32.pte", "preprocess.json",
                "report.json", "report.md", "pareto.png", STATE_FILE)
REPORT_FILES = ("report.json", "report.md", "pareto.png")


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline does; every field has the book's default.

    Introduced in: notebooks/13_capstone.ipynb
    """

    dataset: str = "mnist5k"           # mnist5k, digits (offline) or mnist, fashion_mnist, cifar10
    data: str | None = None            # a folder of images or a .npz of your own, instead of `dataset`
    data_root: str | None = None       # folder of the torchvision files
    image_size: int | None = None      # resize your images to this side (default: their commonest size)
    teacher_arch: str | None = None    # "package.module:factory" or "path/to/file.py:factory"
    teacher_checkpoint: str | None = None  # its weights (.pt); the book's teacher when both are None
    trust_pickle: bool = False         # allow a checkpoint that is a whole pickled model (runs its code)
    student_arch: str | None = None    # your student, like teacher_arch; the book's StudentCNN when None
    student_width: int = 12            # StudentCNN's first conv channels (headroom for pruning)
    T: float = 2.0                     # distillation temperature (chapter 5's recipe)
    alpha: float = 1.0                 # weight of the soft term (chapter 5's recipe)
    copies: int = 4                    # versions of each training image: the original + 3 shifted/rotated
    distill_epochs: int = 8            # passes over all the copies (teacher logits computed once)
    lr: float = 5e-3
    prune_amount: float = 0.25         # fraction of each layer's channels to remove
    prune_multiple_of: int = 8         # ... rounded so that 8, 16, ... channels stay (x86 fp32 kernels' block)
    finetune_epochs: int = 3           # distillation fine-tune after pruning, over the same copies
    baseline: bool = True              # also distil the pruned architecture from scratch, at the same epochs
    calibration_size: int = 500        # training images used to calibrate int8 ranges
    int8_convs: bool = False           # False: int8 Linear layers only (where the bytes are); True: convs too
    int8_reduce_range: bool = True     # 7-bit weights: no int16 saturation on x86 CPUs without VNNI
    int8_keep_first_conv: bool = True  # with int8_convs: the first conv stays fp32
    executorch: bool = True            # also export .pte files for ExecuTorch
    choose: str = "smallest"           # the edge model: the smallest file, or the fastest, within max_drop_points
    max_drop_points: float = 1.0       # accuracy budget against the teacher, in points
    latency_threads: int = 1           # threads for every latency measurement
    latency_min_rounds: int = 5        # interleaved timing rounds: at least this many...
    latency_max_rounds: int = 30       # ... and more, up to this, until the ratios are known to ±tolerance
    latency_tolerance: float = 0.03
    seed: int = 0

    def validate(self) -> "PipelineConfig":
        """Check every field (one-line TypeError / ValueError); returns the config."""
        check_positive(self.T, "T", hint="the distillation temperature, e.g. 2")
        check_fraction(self.alpha, "alpha", hint="the weight of the soft term, in [0, 1]")
        check_number(self.lr, "lr", low=0.0, high=10.0, low_open=True, hint="e.g. 5e-3")
        check_number(self.prune_amount, "prune_amount", low=0.0, high=1.0, high_open=True,
                     hint="the fraction of channels to remove, e.g. 0.25")
        for name in ("student_width", "copies", "distill_epochs", "prune_multiple_of", "calibration_size",
                     "latency_threads", "latency_min_rounds"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        check_int(self.finetune_epochs, "finetune_epochs", low=0)
        check_int(self.latency_max_rounds, "latency_max_rounds", low=max(2, self.latency_min_rounds))
        check_int(self.seed, "seed", low=0)
        check_choice(self.choose, "choose", report.RULES)
        check_number(self.max_drop_points, "max_drop_points", low=0.0, hint="points of accuracy, e.g. 1.0")
        check_positive(self.latency_tolerance, "latency_tolerance", hint="e.g. 0.03 for ±3 %")
        if self.teacher_arch is not None and self.teacher_checkpoint is None:
            raise ValueError("--teacher-arch needs --teacher-checkpoint (the trained weights of that architecture)")
        return self


# -- the record of a run -----------------------------------------------------------------------

class _Run:
    """One run: folder, config, inputs, and the records of its stages (and of unfinished epochs)."""

    def __init__(self, out: Path, config: PipelineConfig, inputs: Inputs, resume: bool, log):
        self.out, self.config, self.inputs, self.log = out, config, inputs, log
        old = json.loads((out / STATE_FILE).read_text()) if resume and (out / STATE_FILE).exists() else {}
        self.state = {"stages": old.get("stages", {}), "progress": old.get("progress", {})}
        self.keys = {"inputs": inputs.digest}

    def save(self) -> None:
        atomic_write_text(self.out / STATE_FILE, json.dumps(self.state, indent=1))

    def key(self, stage: str, fields: tuple, after: tuple) -> str:
        cfg = {f: getattr(self.config, f) for f in fields}
        blob = json.dumps([stage, cfg, [self.keys[i] for i in after]], sort_keys=True, default=str)
        self.keys[stage] = hashlib.sha256(blob.encode()).hexdigest()
        return self.keys[stage]

    def reusable(self, stage: str, key: str) -> dict | None:
        """The old record of `stage` if its key matches and its files are intact."""
        old = self.state["stages"].get(stage)
        if not old or old["key"] != key:
            return None
        if any(not (self.out / n).is_file() or sha256_file(self.out / n) != d for n, d in old["outputs"].items()):
            return None
        return old

    def stage(self, name: str, fields: tuple, after: tuple, outputs: tuple, work) -> dict:
        """Run `work()` (which writes `outputs` and returns a record) unless a matching run did."""
        key = self.key(name, fields, after)
        old = self.reusable(name, key)
        if old is not None:
            self.log(f"[{name}] reused from {self.out}")
            return old["record"]
        t0 = time.perf_counter()
        record = work()
        self.state["stages"][name] = {"key": key, "outputs": {n: sha256_file(self.out / n) for n in outputs},
                                      "record": record, "seconds": round(time.perf_counter() - t0, 2)}
        self.save()
        self.log(f"[{name}] done in {time.perf_counter() - t0:.1f}s")
        return record


# -- training, one epoch at a time -------------------------------------------------------------

def cosine_lr(lr: float, epoch: int, num_epochs: int) -> float:
    """The learning rate of epoch `epoch` (0-based) under a cosine decay to 0 over `num_epochs`,
    stepped once per epoch as `kdlib.train.distill` does: lr * (1 + cos(pi * epoch / num_epochs)) / 2."""
    lr = check_positive(lr, "lr")
    num_epochs = check_int(num_epochs, "num_epochs", low=1)
    epoch = check_int(epoch, "epoch", low=0, high=num_epochs, hint="0-based, at most num_epochs")
    return lr * (1 + math.cos(math.pi * epoch / num_epochs)) / 2


def _distil_epochs(run: _Run, name: str, model: nn.Module, loader, *, num_epochs: int, lr: float) -> None:
    """Distil `model` for `num_epochs`, one `distill` call per epoch at that epoch's cosine learning
    rate, saving the weights after each; a resumed run starts after the last saved epoch.

    Each epoch starts a fresh AdamW, so that a run resumed after epoch k computes exactly what an
    uninterrupted one does."""
    cfg, partial = run.config, run.out / f"{name}.partial.pt"
    key = run.keys[name]
    done = run.state["progress"].get(name, {})
    start = 0
    if done.get("key") == key and partial.is_file() and sha256_file(partial) == done.get("sha256"):
        load_checkpoint(model, partial)
        start = done["epoch"]
        run.log(f"[{name}] resuming after epoch {start} of {num_epochs}")
    for epoch in range(start, num_epochs):
        t0 = time.perf_counter()
        history = distill(model, run.inputs.teacher, loader, T=cfg.T, alpha=cfg.alpha, num_epochs=1,
                          lr=cosine_lr(lr, epoch, num_epochs), schedule="constant", cache_teacher=True,
                          progress=False, seed=cfg.seed * 1000 + epoch)
        digest = save_checkpoint(model, partial, overwrite=True)
        run.state["progress"][name] = {"key": key, "epoch": epoch + 1, "sha256": digest}
        run.save()
        run.log(f"[{name}] epoch {epoch + 1}/{num_epochs}: loss {history.train_loss[-1]:.4f} "
                f"({time.perf_counter() - t0:.1f}s)")


def _finish(run: _Run, name: str, model: nn.Module, path: str) -> None:
    save_checkpoint(model, run.out / path, overwrite=True)
    (run.out / f"{name}.partial.pt").unlink(missing_ok=True)
    (run.out / f"{name}.partial.pt.sha256").unlink(missing_ok=True)
    run.state["progress"].pop(name, None)


def _reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A copy of `model` with fresh weights: the same architecture, trained from scratch."""
    seed_everything(seed)
    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh


# -- pruning -----------------------------------------------------------------------------------

def prune_student(student: nn.Module, amount: float, example: torch.Tensor, *, multiple_of: int = 1):
    """Structured pruning of any student: the book's flat `channel_prune` where it applies,
    else the graph method (`kdlib.prune_graph`, Torch-Pruning). Returns (the pruned model,
    the method's name, the layers left whole, None) or (a copy of the student, None, {}, why
    nothing was pruned).

    Introduced in: notebooks/15_compress_your_own.ipynb
    """
    if amount == 0:
        return copy.deepcopy(student), None, {}, "prune_amount is 0"
    if prune._why_not_flat(student) is None:
        pruned = prune.channel_prune(student, amount, example, multiple_of=multiple_of)
        return pruned, "channel_prune (the flat from-scratch version)", {}, None
    result = graph_channel_prune(student, amount, example, multiple_of=multiple_of)
    if not result.pruned:
        why = result.problem
        if multiple_of > 1 and "nothing to remove" in (why or ""):
            why += (f" (the channels kept are rounded to a multiple of {multiple_of}, which can round back to all "
                    "of them: pass a larger --prune, or --prune-multiple-of 1)")
        return result.model, None, result.left_whole, why
    return result.model, "graph_channel_prune (Torch-Pruning's dependency graph)", result.left_whole, None


# -- the stages --------------------------------------------------------------------------------

def _transfer_loader(run: _Run):
    """The copies of the training images with the teacher's logits, computed once when first needed."""
    cfg, ds = run.config, run.inputs.ds
    copies = augmented_copies(ds.train, cfg.copies, seed=cfg.seed)
    run.log(f"[distill] the teacher's logits on {len(copies):,} images ({cfg.copies} versions of each "
            "training image), computed once")
    return cache_teacher_outputs(run.inputs.teacher, make_loader(copies, 128, shuffle=True, seed=cfg.seed))


def _distil_stage(run: _Run, loader) -> nn.Module:
    cfg = run.config

    def work():
        seed_everything(cfg.seed)
        student = run.inputs.make_student()
        _distil_epochs(run, "distill", student, loader(), num_epochs=cfg.distill_epochs, lr=cfg.lr)
        _finish(run, "distill", student, "student.pt")
        return {}

    run.stage("distill", ("student_width", "T", "alpha", "copies", "distill_epochs", "lr", "seed"),
              ("inputs",), ("student.pt",), work)
    return load_checkpoint(run.inputs.make_student(), run.out / "student.pt").eval()


def _prune_stage(run: _Run, student: nn.Module, loader) -> tuple[nn.Module, dict]:
    cfg, example = run.config, run.inputs.example
    shell, method, left_whole, skipped = prune_student(student, cfg.prune_amount, example,
                                                       multiple_of=cfg.prune_multiple_of)
    if skipped:
        run.log(f"[prune] skipped: {skipped}")

    def work():
        seed_everything(cfg.seed)
        pruned = copy.deepcopy(shell)
        if cfg.finetune_epochs and not skipped:
            _distil_epochs(run, "prune", pruned, loader(), num_epochs=cfg.finetune_epochs, lr=cfg.lr / 5)
        _finish(run, "prune", pruned, "pruned.pt")
        return {}

    run.stage("prune", ("prune_amount", "prune_multiple_of", "finetune_epochs", "T", "alpha", "copies", "lr", "seed"),
              ("distill",), ("pruned.pt",), work)
    pruned = load_checkpoint(shell, run.out / "pruned.pt").eval()
    record = report.prune_record(student, pruned, example, amount=cfg.prune_amount, multiple_of=cfg.prune_multiple_of,
                                 method=method, left_whole=left_whole, skipped=skipped)
    return pruned, record


def _direct_stage(run: _Run, pruned: nn.Module, loader) -> nn.Module:
    """The pruned architecture, freshly initialised, distilled for all the epochs the pruned
    student had (distillation + fine-tune): what pruning must beat to be worth its trouble."""
    cfg = run.config
    epochs = cfg.distill_epochs + cfg.finetune_epochs

    def work():
        direct = _reinitialised(pruned, cfg.seed)
        _distil_epochs(run, "direct", direct, loader(), num_epochs=epochs, lr=cfg.lr)
        _finish(run, "direct", direct, "direct.pt")
        return {}

    run.stage("direct", ("distill_epochs", "finetune_epochs", "T", "alpha", "copies", "lr", "seed"), ("prune",),
              ("direct.pt",), work)
    return load_checkpoint(_reinitialised(pruned, cfg.seed), run.out / "direct.pt").eval()


def _calibration(run: _Run) -> torch.Tensor:
    X = report.raw_pixels(as_tensors(run.inputs.ds.train)[0], run.inputs.ds)
    g = torch.Generator().manual_seed(run.config.seed)
    return X[torch.randperm(len(X), generator=g)[:run.config.calibration_size]]


def _export_stage(run: _Run, name: str, model: nn.Module, prefix: str, after: str, int8: dict) -> dict:
    """`prefix`_fp32.onnx (parity checked on raw test pixels) and `prefix`_int8.onnx of `model`,
    behind the data's standardisation, so that both files take pixels in [0, 1]."""
    cfg, ds, out = run.config, run.inputs.ds, run.out
    wrapped = with_standardise(model, ds.normalisation)
    fp32, q8 = out / f"{prefix}_fp32.onnx", out / f"{prefix}_int8.onnx"

    def work():
        raw = report.raw_pixels(as_tensors(ds.test)[0], ds)
        export.to_onnx(wrapped, raw[:1], fp32, overwrite=True)
        parity = export.check_parity(fp32, wrapped, raw[:256])
        export.quantize_onnx(fp32, q8, calibration=_calibration(run), mode="static",
                             reduce_range=cfg.int8_reduce_range, overwrite=True, **int8)
        return {"parity_max_abs_diff": parity}

    fields = ("calibration_size", "int8_convs", "int8_reduce_range", "int8_keep_first_conv", "seed")
    return run.stage(name, fields, (after,), (fp32.name, q8.name), work)


def _executorch_stage(run: _Run, name: str, model: nn.Module, path: str, after: str) -> None:
    import logging

    wrapped = with_standardise(model, run.inputs.ds.normalisation)

    def work():
        # torch logs, once, that torchao's enum registration is deprecated: not ours to fix, not actionable
        logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
        try:
            with export.native_stderr_silenced():
                export.to_executorch(wrapped, report.raw_pixels(run.inputs.example, run.inputs.ds), run.out / path,
                                     overwrite=True)
        except ImportError as err:  # installed but broken, or a part of it missing
            raise ImportError(f"ExecuTorch could not be imported ({err}): {EXECUTORCH_HINT}") from None
        return {}

    run.stage(name, (), (after,), (path,), work)


def _exports(run: _Run, pruned: nn.Module) -> list[report.Stage]:
    """Teacher and edge files: ONNX fp32 and int8 (and ExecuTorch), as report stages."""
    cfg, teacher, out = run.config, run.inputs.teacher, run.out
    edge_int8 = {"op_types": None if cfg.int8_convs else INT8_LINEAR_OPS,
                 "keep_first_conv": cfg.int8_convs and cfg.int8_keep_first_conv}
    _export_stage(run, "export_teacher", teacher, "teacher", "inputs", {"op_types": None, "keep_first_conv": False})
    _export_stage(run, "export_edge", pruned, "edge", "prune", edge_int8)
    stages = [report.Stage("teacher onnx fp32", teacher, out / "teacher_fp32.onnx", "teacher"),
              report.Stage("teacher onnx int8", teacher, out / "teacher_int8.onnx", "teacher")]
    edges = [report.Stage("onnx fp32", pruned, out / "edge_fp32.onnx"), report.Stage("onnx int8", pruned,
                                                                                     out / "edge_int8.onnx")]
    if cfg.executorch:
        _executorch_stage(run, "executorch_teacher", teacher, "teacher_fp32.pte", "inputs")
        _executorch_stage(run, "executorch_edge", pruned, "edge_fp32.pte", "prune")
        stages.append(report.Stage("teacher executorch fp32", teacher, out / "teacher_fp32.pte", "teacher"))
        edges.append(report.Stage("executorch fp32", pruned, out / "edge_fp32.pte"))
    return stages + edges


def _write_preprocess(run: _Run) -> None:
    ds = run.inputs.ds
    note = {"input": "float32 (N, C, H, W): pixel values divided by 255, in [0, 1], channels in the data's order "
                     "(RGB for colour images); the .onnx and .pte files standardise them themselves",
            "pytorch_models": "student.pt, pruned.pt, direct.pt take (pixels - mean) / std",
            "input_shape": list(ds.input_shape), "classes": list(ds.classes),
            "mean": list(ds.normalisation[0]) if ds.normalisation else None,
            "std": list(ds.normalisation[1]) if ds.normalisation else None}
    atomic_write_text(run.out / "preprocess.json", json.dumps(note, indent=1))


# -- the pipeline ------------------------------------------------------------------------------

def run_pipeline(out, config: PipelineConfig = PipelineConfig(), *, data: DatasetSplits | str | None = None,
                 force: bool = False, resume: bool = False, progress: bool = True, log=print) -> dict:
    """Run every stage and write `out/report.md`, `out/report.json`, `out/pareto.png` and the models.

    Args:
        out: the output folder (created; see `prepare_out` for force/resume).
        config: a `PipelineConfig`.
        data: a `DatasetSplits`, an image folder or a .npz (see `kdlib.datafiles.load_data`);
            None: `config.data`, else `config.dataset`.
        progress: unused since training logs one line per epoch (kept for old callers).
        log: where one line per stage and epoch goes (print by default; None for silence).
    Returns:
        the contents of report.json (`kdlib.report.summarise`): `edge_stage`, `choice`,
        `size_ratio`, `latency_ratio` (in the edge model's runtime), `runtime_gain`, ... and
        `stages` (one row each).

    Introduced in: notebooks/13_capstone.ipynb
    """
    if not isinstance(config, PipelineConfig):
        raise TypeError(f"config must be a kdlib.pipeline.PipelineConfig, got {type(config).__name__}")
    log = log or (lambda *a, **k: None)
    t_start = time.perf_counter()
    inputs = check_inputs(config.validate(), data)  # every bad input fails here, before OUT is touched
    out = prepare_out(out, force=force, resume=resume, files=OUTPUT_FILES)
    for name in REPORT_FILES:  # a report must never sit beside models it does not describe
        (out / name).unlink(missing_ok=True)
    run = _Run(out, config, inputs, resume, log)
    loader = functools.cache(lambda: _transfer_loader(run))
    student = _distil_stage(run, loader)
    pruned, prune_info = _prune_stage(run, student, loader)
    stages = [report.Stage("teacher", inputs.teacher, role="teacher"), report.Stage("student", student, role="student")]
    if not prune_info["skipped"]:
        stages.append(report.Stage("pruned", pruned, role="pruned"))
        if config.baseline:
            stages.append(report.Stage("direct (no pruning)", _direct_stage(run, pruned, loader), role="direct"))
    files = _exports(run, pruned)  # the teacher's files go right after the teacher's row, the edge files last
    stages = stages[:1] + [s for s in files if s.role == "teacher"] + stages[1:] + [s for s in files
                                                                                   if s.role == "candidate"]
    _write_preprocess(run)
    log("[measure] accuracy, size and latency of every stage, side by side")
    rows, timing = report.measure_stages(stages, inputs.ds, threads=config.latency_threads,
                                         min_rounds=config.latency_min_rounds, max_rounds=config.latency_max_rounds,
                                         tolerance=config.latency_tolerance)
    summary = report.summarise(rows, timing, rule=config.choose, max_drop_points=config.max_drop_points,
                               prune=prune_info, data=inputs.ds, machine=measure.machine_info())
    summary.update(config=dataclasses.asdict(config), inputs=inputs.describe(),
                   stage_seconds={k: v.get("seconds", 0.0) for k, v in run.state["stages"].items()},
                   total_seconds=round(time.perf_counter() - t_start, 1))
    report.write_report(out, summary)
    log(f"[report] {out / 'report.md'}")
    return summary


__all__ = ["PipelineConfig", "run_pipeline", "prune_student", "cosine_lr", "prepare_out", "pareto_front",
           "pareto_figure", "load_data", "weights_digest"]
