"""Benchmark: the capstone pipeline with its command-line defaults on MNIST-5k.

    OMP_NUM_THREADS=1 python bench/pipeline.py [--out DIR] [--json kdlib/assets/results/pipeline.json]

Targets (issue "Capstone"): the int8 ONNX edge model at least 50x smaller than
the teacher's PyTorch checkpoint, at least 20x faster at batch 1, and within
1.0 point of the teacher's test accuracy. Run it on a quiet machine: latency is a
property of the processor and of whatever else runs on it (the report names the
processor). With `--json PATH` the summary is also written there (atomically; `--force`
to replace an existing file). Last line:
    size_ratio=... latency_ratio=... accuracy_drop=...
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdlib.pipeline import PipelineConfig, run_pipeline
from kdlib.utils import atomic_write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--out", default=None, help="keep the run in this folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    if args.json is not None and args.json.exists() and not args.force:
        sys.exit(f"error: {args.json} exists; pass --force to replace it, or choose another file")
    torch.set_num_threads(1)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="kdlib-bench-")) / "run"
    t0 = time.perf_counter()
    s = run_pipeline(out, PipelineConfig(), force=args.out is not None, progress=False, log=print)
    wall = time.perf_counter() - t0
    print(f"\n{'stage':<16} {'format':<20} {'params':>8} {'bytes':>10} {'acc %':>6} {'median µs':>10} {'p90 µs':>9}")
    for r in s["stages"]:
        print(f"{r['stage']:<16} {r['format']:<20} {r['params']:>8,} {r['bytes']:>10,} {100 * r['accuracy']:>6.1f} "
              f"{r['median_us']:>10.1f} {r['p90_us']:>9.1f}")
    print(f"\npipeline wall time {wall:.0f} s on {s['machine']['processor']} ({s['machine']['cores']} cores); "
          f"report in {out / 'report.md'}")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({**s, "wall_s": round(wall, 1)}, indent=1) + "\n")
        print(f"wrote {args.json}")
    print(f"size_ratio={s['size_ratio']:.1f} latency_ratio={s['latency_ratio']:.1f} "
          f"accuracy_drop={s['accuracy_drop_points']:.2f}")


if __name__ == "__main__":
    main()
