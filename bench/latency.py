"""Edge back ends side by side: size, accuracy and batch-1 latency (Chapter 10).

    OMP_NUM_THREADS=1 python bench/latency.py                # the book's teacher and student
    OMP_NUM_THREADS=1 python bench/latency.py --rounds 3     # a quicker look

Exports the book's teacher and distilled student with `kdlib.export.export_all`
(ONNX fp32, ONNX Runtime int8 static and dynamic, ExecuTorch XNNPACK fp32 and
int8) into a temporary folder, then prints one row per model and back end:
file bytes (the `.pt` checkpoint for eager PyTorch), accuracy on the 1,000 test
images, and the median and 90th percentile of batch-1 latency. All twelve back
ends are timed in one `kdlib.measure.compare_latency` run (interleaved rounds,
warm-up, one thread), so that their ratios are comparable on a noisy machine.

The last line is `speedup=... same_runtime_speedup=... size_ratio=...`:
    speedup               the eager teacher's median latency / the fastest student back end's
    same_runtime_speedup  teacher / student, both in ONNX Runtime fp32 (what compression alone buys)
    size_ratio            the teacher's `.pt` bytes / the smallest student file's bytes
With `--json PATH` the table and the machine (`kdlib.measure.machine_info`) are also written
there (atomically; `--force` to replace an existing file).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from kdlib import export, measure, zoo
from kdlib.data import as_tensors, load_dataset
from kdlib.utils import atomic_write_text

N_CALIB = 128  # training images that calibrate the int8 activation ranges (as in the chapter)


def build_rows(folder: Path, threads: int) -> tuple[dict, dict, torch.Tensor]:
    """Export both models; return rows (model, back end) -> {bytes, accuracy}, runners, one input."""
    ds = load_dataset("mnist5k")
    X_train, _ = as_tensors(ds.train)
    X_test, y_test = as_tensors(ds.test)
    x1 = X_test[:1]
    rows, runners = {}, {}
    for name, load, ckpt in (("teacher", zoo.load_teacher, zoo.teacher_path), ("student", zoo.load_student,
                                                                             zoo.student_path)):
        model = load("mnist5k", ds=ds, verbose=False).eval()
        with torch.no_grad():
            acc = (model(X_test).argmax(1) == y_test).float().mean().item()
        rows[(name, "torch_fp32")] = {"bytes": ckpt("mnist5k").stat().st_size, "accuracy": acc}
        runners[(name, "torch_fp32")] = (lambda m: lambda: m(x1))(model)
        for backend, path in export.export_all(model, x1, folder, name, calibration=X_train[:N_CALIB]).items():
            logits = export.predict(path, X_test, threads=threads)
            rows[(name, backend)] = {"bytes": path.stat().st_size,
                                     "accuracy": (logits.argmax(1) == y_test).float().mean().item()}
            runners[(name, backend)] = export.make_runner(path, x1, threads=threads)
    return rows, runners, x1


def print_table(rows: dict) -> None:
    print(f"{'model':8s} {'back end':18s} {'bytes':>10s} {'accuracy':>9s} {'median_us':>10s} {'p90_us':>10s}")
    for (name, backend), r in rows.items():
        print(f"{name:8s} {backend:18s} {r['bytes']:>10,} {r['accuracy']:>9.1%} "
              f"{r['median_us']:>10.1f} {r['p90_us']:>10.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    p.add_argument("--repeats", type=int, default=40, help="timed calls per back end and round (default 40)")
    p.add_argument("--threads", type=int, default=1, help="threads for every back end (default 1)")
    p.add_argument("--json", type=Path, default=None, help="also write the table to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args(argv)
    if args.json is not None and args.json.exists() and not args.force:
        sys.exit(f"error: {args.json} exists; pass --force to replace it")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="kdlib-bench-latency-") as tmp:
        rows, runners, _ = build_rows(Path(tmp), args.threads)
        timing = measure.compare_latency(runners, rounds=args.rounds, repeats=args.repeats, threads=args.threads)
    for key, t in timing.items():
        rows[key].update(t)
    print(f"batch 1, {args.threads} thread(s), {args.rounds} interleaved rounds x {args.repeats} calls, "
          f"accuracy on the 1,000 test images")
    print_table(rows)
    students = [r for (m, _), r in rows.items() if m == "student"]
    teacher = rows[("teacher", "torch_fp32")]
    for name in ("teacher", "student"):
        ratio = rows[(name, "onnx_int8_static")]["median_us"] / rows[(name, "onnx_fp32")]["median_us"]
        print(f"{name}: ONNX Runtime int8 static / fp32 latency = {ratio:.2f}")
    speedup = teacher["median_us"] / min(r["median_us"] for r in students)
    same_runtime = rows[("teacher", "onnx_fp32")]["median_us"] / rows[("student", "onnx_fp32")]["median_us"]
    size_ratio = teacher["bytes"] / min(r["bytes"] for r in students)
    if args.json is not None:
        result = {"machine": measure.machine_info(), "threads": args.threads, "rounds": args.rounds,
                  "repeats": args.repeats, "rows": [{"model": m, "backend": b, **r} for (m, b), r in rows.items()]}
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    print(f"speedup={speedup:.1f} same_runtime_speedup={same_runtime:.1f} size_ratio={size_ratio:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
