"""Benchmark: the capstone pipeline with its command-line defaults on MNIST-5k, over seeds.

    OMP_NUM_THREADS=1 python bench/pipeline.py [--seeds 5] [--json kdlib/assets/results/pipeline.json]

Seed 0 runs the command line's full default (ExecuTorch included); seeds 1.. run the same
schedule without the ExecuTorch export. Every run also distils the pruned architecture from
scratch for as many epochs as distillation and fine-tuning together (the "direct" row), so
that pruning is compared with its honest baseline over seeds, with paired differences
(`kdlib.metrics.compare_paired`). Each run times its models side by side until the latency
ratios are known to ±3 % (`kdlib.report.time_until_stable`); the spread of the ratio over
rounds and over runs is reported. Targets (the book's): the edge model at least 50x smaller
than the teacher's file in the same format, faster than the teacher in the same runtime, and
within 1.0 point of the teacher's test accuracy. Latency belongs to the processor and to what
else runs on it (the report names the processor). With `--json PATH` the result is also
written there (atomically; `--force` to replace an existing file). Last line:
    size_ratio=... latency_ratio=... runtime_gain=... accuracy_drop=... pruned_minus_direct=...
"""
import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdlib.metrics import compare_paired
from kdlib.pipeline import PipelineConfig, run_pipeline
from kdlib.utils import atomic_write_text


def _per_seed(seed: int, s: dict) -> dict:
    rows = {r["stage"]: r for r in s["stages"]}
    return {"seed": seed, "student_accuracy": rows["student"]["accuracy"], "pruned_accuracy": rows["pruned"]["accuracy"],
            "direct_accuracy": rows["direct (no pruning)"]["accuracy"], "edge_stage": s["edge_stage"],
            "edge_accuracy": s["edge_accuracy"], "size_ratio": s["size_ratio"], "latency_ratio": s["latency_ratio"],
            "runtime_gain": s["runtime_gain"]["ratio"], "timing_rounds": s["timing_rounds"],
            "wall_s": s["total_seconds"]}


def _table(s: dict) -> None:
    print(f"\n{'stage':<26} {'format':<22} {'params':>8} {'bytes':>10} {'acc %':>6} {'median µs':>10}")
    for r in s["stages"]:
        print(f"{r['stage']:<26} {r['format']:<22} {r['params']:>8,} {r['bytes']:>10,} {100 * r['accuracy']:>6.1f} "
              f"{r['median_us']:>10.1f}")
    print(f"edge model: {s['edge_stage']}: {s['choice']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--seeds", type=int, default=5, help="runs with seeds 0..N-1 (default 5)")
    p.add_argument("--json", type=Path, default=None, help="also write the result to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    if args.json is not None and args.json.exists() and not args.force:
        sys.exit(f"error: {args.json} exists; pass --force to replace it, or choose another file")
    if args.seeds < 2:
        sys.exit("error: --seeds must be at least 2 (a comparison over seeds needs two)")
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="kdlib-bench-"))
    t0 = time.perf_counter()
    runs = []
    for seed in range(args.seeds):
        config = dataclasses.replace(PipelineConfig(), seed=seed, executorch=seed == 0)
        s = run_pipeline(root / f"seed{seed}", config, log=print if seed == 0 else None)
        runs.append((seed, s))
        print(f"seed {seed}: pruned {100 * _per_seed(seed, s)['pruned_accuracy']:.1f}%, direct "
              f"{100 * _per_seed(seed, s)['direct_accuracy']:.1f}%, edge {s['edge_stage']} "
              f"{100 * s['edge_accuracy']:.1f}%, latency ratio {s['latency_ratio']:.1f}x ({s['total_seconds']:.0f} s)")
    wall = time.perf_counter() - t0
    first = runs[0][1]
    _table(first)
    per_seed = [_per_seed(seed, s) for seed, s in runs]
    cmp = compare_paired([r["pruned_accuracy"] for r in per_seed], [r["direct_accuracy"] for r in per_seed])
    print(f"\npruned minus direct, test accuracy over {cmp.n} seeds: {cmp.format('+.2%')} ({cmp.wins} wins)")
    ratios = [r["latency_ratio"] for r in per_seed]
    print(f"latency ratio in the same runtime over runs: {min(ratios):.1f}x to {max(ratios):.1f}x; "
          f"over seed 0's {first['latency']['rounds']} rounds: {first['latency']['min']:.1f}x to "
          f"{first['latency']['max']:.1f}x")
    print(f"wall time {wall:.0f} s on {first['machine']['processor']} ({first['machine']['cores']} cores)")
    result = {**first, "wall_s": round(wall, 1), "seeds": args.seeds, "per_seed": per_seed,
              "pruned_vs_direct": {"diffs": list(cmp.diffs), "mean": cmp.mean, "low": cmp.low, "high": cmp.high,
                                   "verdict": cmp.verdict, "wins": cmp.wins},
              "command": f"OMP_NUM_THREADS=1 python bench/pipeline.py --seeds {args.seeds} --json "
                         "kdlib/assets/results/pipeline.json"}
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    print(f"size_ratio={first['size_ratio']:.1f} latency_ratio={first['latency_ratio']:.1f} "
          f"runtime_gain={first['runtime_gain']['ratio']:.1f} accuracy_drop={first['accuracy_drop_points']:.2f} "
          f"pruned_minus_direct={100 * cmp.mean:+.2f}")


if __name__ == "__main__":
    main()
