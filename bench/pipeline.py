"""Benchmark: the capstone pipeline with its command-line defaults on MNIST-5k.

    python bench/pipeline.py [--out DIR]

Targets (issue "Capstone"): the int8 ONNX edge model at least 50x smaller than
the teacher's PyTorch checkpoint, at least 20x faster at batch 1, and within
1.0 point of the teacher's test accuracy. Last line:
    size_ratio=... latency_ratio=... accuracy_drop=...
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from kdlib.pipeline import PipelineConfig, run_pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--out", default=None, help="keep the run in this folder (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="kdlib-bench-")) / "run"
    t0 = time.perf_counter()
    s = run_pipeline(out, PipelineConfig(), force=args.out is not None, progress=False, log=print)
    wall = time.perf_counter() - t0
    print(f"\n{'stage':<16} {'format':<20} {'params':>8} {'bytes':>10} {'acc %':>6} {'median µs':>10} {'p90 µs':>9}")
    for r in s["stages"]:
        print(f"{r['stage']:<16} {r['format']:<20} {r['params']:>8,} {r['bytes']:>10,} {100 * r['accuracy']:>6.1f} "
              f"{r['median_us']:>10.1f} {r['p90_us']:>9.1f}")
    print(f"\npipeline wall time {wall:.0f} s; report in {out / 'report.md'}")
    print(f"size_ratio={s['size_ratio']:.1f} latency_ratio={s['latency_ratio']:.1f} "
          f"accuracy_drop={s['accuracy_drop_points']:.2f}")


if __name__ == "__main__":
    main()
