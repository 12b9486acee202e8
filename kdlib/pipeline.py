"""One pipeline from a teacher to a small, fast, measured edge model.

    teacher (load or train) -> distil a student (on augmented copies of the
    training images, teacher logits cached once) -> structured pruning to
    hardware-friendly channel counts with a distillation fine-tune -> int8
    quantization -> export (ONNX, ExecuTorch)
    -> evaluate and benchmark every stage side by side -> report

The only module of kdlib that knows the whole story; `python -m kdlib
compress` is a thin shell over `run_pipeline`. Every file goes into one
output folder, written atomically, and a stage whose outputs are already
there with matching hashes is reused by `resume=True`.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import inspect
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import export, measure, prune
from .data import DatasetSplits, as_tensors, augmented_copies, load_dataset, make_loader
from .inference import cache_teacher_outputs, evaluate
from .models import StudentCNN, TeacherCNN
from .train import distill
from .utils import atomic_write_bytes, atomic_write_text, load_checkpoint, save_checkpoint, seed_everything, \
    sha256_file
from .zoo import load_teacher

STATE_FILE = ".pipeline_state.json"
INT8_LINEAR_OPS = ("Gemm", "MatMul")  # what int8_convs=False quantizes: the fully connected layers
# Every file the pipeline writes: --force removes these (and nothing else) before starting over.
OUTPUT_FILES = ("student.pt", "student.pt.sha256", "pruned.pt", "pruned.pt.sha256", "edge_fp32.onnx",
                "edge_int8.onnx", "edge_fp32.pte", "report.json", "report.md", "pareto.png", STATE_FILE)


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline does; every field has the book's default.

    Introduced in: notebooks/13_capstone.ipynb
    """

    dataset: str = "mnist5k"           # mnist5k, digits (offline) or mnist, fashion_mnist, cifar10
    data_root: str | None = None       # folder of the torchvision files
    teacher_arch: str | None = None    # "package.module:factory" for your own teacher
    teacher_checkpoint: str | None = None  # its state_dict (.pt); the book's teacher when both are None
    student_width: int = 12            # channels of the student's first conv block (headroom for pruning)
    T: float = 2.0                     # distillation temperature (chapter 5's recipe)
    alpha: float = 1.0                 # weight of the soft term (chapter 5's recipe)
    copies: int = 4                    # versions of each training image: the original + 3 shifted/rotated
    distill_epochs: int = 8            # passes over all the copies (teacher logits computed once)
    lr: float = 5e-3
    prune_amount: float = 0.25         # fraction of each conv's channels removed
    prune_multiple_of: int = 8         # ... rounded so that 8, 16, ... channels stay (x86 fp32 kernels' block)
    finetune_epochs: int = 3           # distillation fine-tune after pruning, over the same copies
    calibration_size: int = 500        # training images used to calibrate int8 ranges
    int8_convs: bool = False           # False: int8 Linear layers only (where the bytes are); True: convs too
    int8_reduce_range: bool = True     # 7-bit weights: no int16 saturation on x86 CPUs without VNNI
    int8_keep_first_conv: bool = True  # with int8_convs: the first conv stays fp32 (one input channel)
    executorch: bool = True            # also export a .pte for ExecuTorch
    latency_threads: int = 1           # threads for every latency measurement
    latency_rounds: int = 5            # interleaved rounds of the side-by-side timing
    seed: int = 0

    def validate(self) -> "PipelineConfig":
        if not 0 <= self.prune_amount < 1:
            raise ValueError(f"prune_amount must be in [0, 1), got {self.prune_amount}")
        for name in ("student_width", "copies", "distill_epochs", "prune_multiple_of", "calibration_size",
                     "latency_threads", "latency_rounds"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not isinstance(self.finetune_epochs, int) or self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be an int >= 0, got {self.finetune_epochs!r}")
        if self.teacher_arch is not None and self.teacher_checkpoint is None:
            raise ValueError("--teacher-arch needs --teacher-checkpoint (the trained weights of that architecture)")
        return self


class _Run:
    """The state of one pipeline run: folder, config, data, and per-stage records."""

    def __init__(self, out: Path, config: PipelineConfig, resume: bool, progress: bool, log):
        self.out, self.config, self.resume, self.progress, self.log = out, config, resume, progress, log
        old = json.loads((out / STATE_FILE).read_text()) if resume and (out / STATE_FILE).exists() else {}
        self.old_state, self.state = old.get("stages", {}), {}

    def key(self, stage: str, fields: tuple, inputs: tuple = ()) -> str:
        cfg = {f: getattr(self.config, f) for f in fields}
        blob = json.dumps([stage, cfg, [self.state[i]["key"] for i in inputs]], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def reusable(self, stage: str, key: str) -> dict | None:
        """The old record of `stage` if its key matches and its files are intact."""
        old = self.old_state.get(stage)
        if not old or old["key"] != key:
            return None
        for name, digest in old["outputs"].items():
            if not (self.out / name).exists() or sha256_file(self.out / name) != digest:
                return None
        return old

    def done(self, stage: str, key: str, outputs: tuple, record: dict, seconds: float) -> dict:
        entry = {"key": key, "outputs": {n: sha256_file(self.out / n) for n in outputs},
                 "record": record, "seconds": round(seconds, 2)}
        self.state[stage] = entry
        atomic_write_text(self.out / STATE_FILE, json.dumps({"stages": self.state}, indent=1))
        return entry


# -- stages ------------------------------------------------------------------------------------

def _import_factory(spec: str):
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"teacher architecture {spec!r} must look like package.module:factory")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import teacher architecture {spec!r}: {err}") from None
    if not callable(factory):
        raise ValueError(f"{spec!r} is not callable; it must build and return the teacher model")
    return factory


def _build_teacher(config: PipelineConfig, ds: DatasetSplits, progress: bool) -> nn.Module:
    if config.teacher_checkpoint is None:
        return load_teacher(config.dataset, ds=ds, progress=progress, verbose=False)
    path = Path(config.teacher_checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {path} does not exist")
    if config.teacher_arch is None:
        model = TeacherCNN(ds.input_shape, ds.num_classes)
    else:
        factory = _import_factory(config.teacher_arch)
        params = inspect.signature(factory).parameters
        kwargs = {k: v for k, v in (("input_shape", ds.input_shape), ("num_classes", ds.num_classes))
                  if k in params}
        model = factory(**kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"{config.teacher_arch} returned {type(model).__name__}, not a torch.nn.Module")
    return load_checkpoint(model, path).eval()


def _student(config: PipelineConfig, ds: DatasetSplits) -> nn.Module:
    return StudentCNN(ds.input_shape, ds.num_classes, width=config.student_width)


def _load_state(model: nn.Module, path: Path) -> nn.Module:
    return load_checkpoint(model, path).eval()


def _save(model: nn.Module, path: Path) -> None:
    save_checkpoint(model, path, overwrite=True)


def _test_accuracy(model: nn.Module, ds: DatasetSplits) -> float:
    return evaluate(model, make_loader(ds.test, 500))["accuracy"]


def _file_accuracy(path: Path, ds: DatasetSplits) -> float:
    X, y = as_tensors(ds.test)
    if path.suffix == ".pte":  # a .pte runs at the batch size it was planned for: one image
        logits = torch.cat([export.predict(path, X[i:i + 1]) for i in range(len(X))])
    else:
        logits = export.predict(path, X)
    return (logits.argmax(1) == y).float().mean().item()


def _png_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated by another: no other point is both
    at most as large (x, e.g. bytes) and at least as accurate (y), and better in one.

    Introduced in: notebooks/13_capstone.ipynb
    """
    if (not isinstance(points, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
            for p in points)):
        raise TypeError("points must be a list of (x, y) pairs of finite numbers, e.g. [(bytes, accuracy), ...]")
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def pareto_figure(rows: list[dict]):
    """Accuracy against size and against latency for every stage, Pareto front marked."""
    import matplotlib.pyplot as plt

    keys = ("stage", "bytes", "median_us", "accuracy")
    if not isinstance(rows, (list, tuple)) or not rows or not all(
            isinstance(r, dict) and all(k in r for k in keys) for r in rows):
        raise TypeError(f"rows must be a non-empty list of dicts with the keys {keys} (the report's stages)")
    markers = "osD^vPX*<>ph"  # a marker and a colour per stage, named in one legend: stages that
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)  # land on one spot stay readable
    for ax, key, label in ((axes[0], "bytes", "file size (bytes, log scale)"),
                           (axes[1], "median_us", "batch-1 latency (µs, log scale)")):
        pts = [(r[key], 100 * r["accuracy"]) for r in rows]
        front = sorted(pareto_front(pts), key=lambda i: pts[i][0])
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="0.6", zorder=1,
                label="Pareto front")
        for i, (r, (x, y)) in enumerate(zip(rows, pts)):
            ax.scatter(x, y, s=60, marker=markers[i % len(markers)], color=f"C{i % 10}", alpha=0.85,
                       edgecolors="white", linewidths=0.5, zorder=2, label=r["stage"])
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=8, frameon=False)
    fig.suptitle("Every stage of the pipeline: smaller and faster to the left, better up")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _conv_channels(model: nn.Module) -> list[int]:
    """The output channels of every convolution, in order (what pruning changed)."""
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def _measure(run: _Run, ds: DatasetSplits, models: dict, files: dict) -> list[dict]:
    """Accuracy, size and latency of every stage, timed side by side."""
    example = as_tensors(ds.test)[0][:1]
    runners = {name: (lambda m=m: m(example)) for name, m in models.items()}
    for name, path in files.items():
        runners[name] = export.make_runner(path, example, threads=run.config.latency_threads)
    for m in models.values():
        m.eval()
    timing = measure.compare_latency(runners, rounds=run.config.latency_rounds, threads=run.config.latency_threads,
                                   repeats=40)
    rows = []
    for name, m in models.items():
        rows.append({"stage": name, "format": "PyTorch fp32", "file": None, "params": measure.count_params(m),
                     "channels": _conv_channels(m), "bytes": measure.serialized_size(m),
                     "accuracy": _test_accuracy(m, ds), **timing[name]})
    kinds = {".onnx": "ONNX Runtime", ".pte": "ExecuTorch"}
    for name, path in files.items():
        precision = "int8" if "int8" in path.name else "fp32"
        rows.append({"stage": name, "format": f"{kinds[path.suffix]} {precision}", "file": path.name,
                     "params": measure.count_params(models["pruned"]),  # every file holds the pruned model
                     "channels": _conv_channels(models["pruned"]),
                     "bytes": path.stat().st_size, "accuracy": _file_accuracy(path, ds), **timing[name]})
    return rows


def _signed(x: float) -> str:
    return f"+{x:.1f}" if x >= 0 else f"−{-x:.1f}"


def _machine_line(machine) -> str:
    if not machine:
        return "an unrecorded machine"
    flags = ", ".join(machine["flags"]) or "none of AVX2, AVX-512, VNNI"
    return f"{machine['processor']}, {machine['cores']} cores, {flags}"


def _report_md(summary: dict, rows: list[dict], config: PipelineConfig) -> str:
    lines = ["# Compression report", "",
             f"Data set: **{config.dataset}** ({summary['test_size']} test images). Final edge model: "
             f"**{summary['edge_stage']}** (`{summary['edge_file']}`).", "",
             f"- {summary['size_ratio']:.0f}× smaller than the teacher's PyTorch checkpoint "
             f"({summary['teacher_bytes']:,} → {summary['edge_bytes']:,} bytes)",
             f"- {summary['latency_ratio']:.0f}× faster at batch 1 "
             f"({summary['teacher_latency_us']:.0f} µs → {summary['edge_latency_us']:.1f} µs, median, "
             f"{config.latency_threads} thread, on {_machine_line(summary.get('machine'))})",
             f"- test accuracy {100 * summary['teacher_accuracy']:.1f}% → {100 * summary['edge_accuracy']:.1f}% "
             f"({_signed(-summary['accuracy_drop_points'])} points)", "",
             "| stage | format | params | bytes | test accuracy | latency median (µs) | latency p90 (µs) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['format']} | {r['params']:,} | {r['bytes']:,} | "
                     f"{100 * r['accuracy']:.1f}% | {r['median_us']:.1f} | {r['p90_us']:.1f} |")
    lines += ["", "![accuracy against size and latency](pareto.png)", "", "## Configuration", "", "```json",
              json.dumps(dataclasses.asdict(config), indent=1), "```", ""]
    return "\n".join(lines)


# -- the pipeline ------------------------------------------------------------------------------

def prepare_out(out, *, force: bool = False, resume: bool = False) -> Path:
    """Check the output folder before any work: create it, refuse one that already
    holds results unless `force` (start over) or `resume` (reuse matching stages).
    """
    if force and resume:
        raise ValueError("choose one of --force (start over) and --resume (continue), not both")
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a folder path (str or pathlib.Path), got {type(out).__name__}")
    out = Path(out)
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
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
    return out


def run_pipeline(out, config: PipelineConfig = PipelineConfig(), *, force: bool = False, resume: bool = False,
                 progress: bool = True, log=print) -> dict:
    """Run every stage and write `out/report.md`, `out/report.json`, `out/pareto.png` and the models.

    Args:
        out: the output folder (created; see `prepare_out` for force/resume).
        config: a `PipelineConfig`.
        progress: progress bars for the training stages.
        log: where one line per stage goes (print by default; None for silence).
    Returns:
        the contents of report.json: `size_ratio`, `latency_ratio`,
        `teacher_accuracy`, `edge_accuracy`, ... and `stages` (one entry each).

    Introduced in: notebooks/13_capstone.ipynb
    """
    if not isinstance(config, PipelineConfig):
        raise TypeError(f"config must be a kdlib.pipeline.PipelineConfig, got {type(config).__name__}")
    config = config.validate()
    log = log or (lambda *a, **k: None)
    t_start = time.perf_counter()
    ds = load_dataset(config.dataset, root=config.data_root)
    teacher = _build_teacher(config, ds, progress)  # bad input fails here, before OUT is touched
    out = prepare_out(out, force=force, resume=resume)
    run = _Run(out, config, resume, progress, log)

    def stage(name, fields, inputs, outputs, work):
        key = run.key(name, fields, inputs)
        old = run.reusable(name, key)
        if old is not None:
            run.state[name] = old
            atomic_write_text(out / STATE_FILE, json.dumps({"stages": run.state}, indent=1))
            log(f"[{name}] reused from {out}")
            return old["record"]
        t0 = time.perf_counter()
        record = work()
        run.done(name, key, outputs, record, time.perf_counter() - t0)
        log(f"[{name}] done in {time.perf_counter() - t0:.1f}s")
        return record

    teacher_hash = hashlib.sha256(b"".join(v.numpy().tobytes() for v in teacher.state_dict().values()
                                           if v.is_floating_point())).hexdigest()
    run.state["teacher"] = {"key": teacher_hash, "outputs": {}, "record": {}}
    @functools.cache
    def transfer_loader():
        """The copies of the training images with the teacher's logits, computed once (when first needed)."""
        copies = augmented_copies(ds.train, config.copies, seed=config.seed)
        log(f"[distill] the teacher's logits on {len(copies):,} images ({config.copies} versions of each "
            f"training image), computed once")
        return cache_teacher_outputs(teacher, make_loader(copies, 128, shuffle=True, seed=config.seed))

    def do_distill():
        seed_everything(config.seed)
        student = _student(config, ds)
        distill(student, teacher, transfer_loader(), T=config.T, alpha=config.alpha,
                num_epochs=config.distill_epochs, lr=config.lr, cache_teacher=True, progress=progress,
                seed=config.seed)
        _save(student, out / "student.pt")
        return {}

    stage("distill", ("dataset", "student_width", "T", "alpha", "copies", "distill_epochs", "lr", "seed"),
          ("teacher",), ("student.pt",), do_distill)
    student = _load_state(_student(config, ds), out / "student.pt")
    example = as_tensors(ds.test)[0][:1]

    def pruned_shell():
        return prune.channel_prune(student, config.prune_amount, example, multiple_of=config.prune_multiple_of)

    def do_prune():
        seed_everything(config.seed)
        pruned = pruned_shell()
        if config.finetune_epochs:
            distill(pruned, teacher, transfer_loader(), T=config.T, alpha=config.alpha,
                    num_epochs=config.finetune_epochs, lr=config.lr / 5, cache_teacher=True, progress=progress,
                    seed=config.seed)
        _save(pruned, out / "pruned.pt")
        return {}

    stage("prune", ("prune_amount", "prune_multiple_of", "finetune_epochs", "T", "alpha", "copies", "lr", "seed"),
          ("distill",), ("pruned.pt",), do_prune)
    pruned = _load_state(pruned_shell(), out / "pruned.pt")
    X_train, _ = as_tensors(ds.train)

    def do_onnx():
        export.to_onnx(pruned, example, out / "edge_fp32.onnx", overwrite=True)
        return {"parity_max_abs_diff": export.check_parity(out / "edge_fp32.onnx", pruned, as_tensors(ds.test)[0][:256])}

    stage("export_onnx", (), ("prune",), ("edge_fp32.onnx",), do_onnx)

    def do_int8():
        g = torch.Generator().manual_seed(config.seed)
        idx = torch.randperm(len(X_train), generator=g)[:config.calibration_size]
        export.quantize_onnx(out / "edge_fp32.onnx", out / "edge_int8.onnx", calibration=X_train[idx],
                             mode="static", reduce_range=config.int8_reduce_range,
                             keep_first_conv=config.int8_convs and config.int8_keep_first_conv,
                             op_types=None if config.int8_convs else INT8_LINEAR_OPS, overwrite=True)
        return {}

    stage("quantize_int8", ("calibration_size", "int8_convs", "int8_reduce_range", "int8_keep_first_conv", "seed"),
          ("export_onnx",), ("edge_int8.onnx",), do_int8)
    files = {"onnx fp32": out / "edge_fp32.onnx", "onnx int8": out / "edge_int8.onnx"}
    if config.executorch:
        def do_pte():
            import logging

            # torch logs, once, that torchao's enum registration is deprecated: not ours to fix, not actionable
            logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
            with export.native_stderr_silenced():
                export.to_executorch(pruned, example, out / "edge_fp32.pte", overwrite=True)
            return {}

        stage("export_executorch", (), ("prune",), ("edge_fp32.pte",), do_pte)
        files["executorch fp32"] = out / "edge_fp32.pte"

    log("[measure] accuracy, size and latency of every stage, side by side")
    with export.native_stderr_silenced():
        rows = _measure(run, ds, {"teacher": teacher, "student": student, "pruned": pruned}, files)
    teacher_row, edge_row = rows[0], next(r for r in rows if r["stage"] == "onnx int8")
    summary = {
        "size_ratio": teacher_row["bytes"] / edge_row["bytes"],
        "latency_ratio": teacher_row["median_us"] / edge_row["median_us"],
        "teacher_accuracy": teacher_row["accuracy"], "edge_accuracy": edge_row["accuracy"],
        "accuracy_drop_points": 100 * (teacher_row["accuracy"] - edge_row["accuracy"]),
        "teacher_bytes": teacher_row["bytes"], "edge_bytes": edge_row["bytes"],
        "teacher_latency_us": teacher_row["median_us"], "edge_latency_us": edge_row["median_us"],
        "edge_stage": edge_row["stage"], "edge_file": edge_row["file"], "test_size": len(ds.test),
        "stages": rows, "config": dataclasses.asdict(config),
        "stage_seconds": {k: v.get("seconds", 0.0) for k, v in run.state.items()},
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "machine": measure.machine_info(),  # latency figures mean little without it
    }
    atomic_write_bytes(out / "pareto.png", _png_bytes(pareto_figure(rows)))
    atomic_write_text(out / "report.md", _report_md(summary, rows, config))
    atomic_write_text(out / "report.json", json.dumps(summary, indent=1))
    log(f"[report] {out / 'report.md'}")
    return summary
