"""What pruning does to size and speed: unstructured zeros vs removed channels (Chapter 8).

    OMP_NUM_THREADS=1 python bench/prune.py                # the book's teacher and student
    OMP_NUM_THREADS=1 python bench/prune.py --rounds 3     # a quicker look

For the book's teacher and distilled student it prints, dense and pruned:
parameters, MACs, checkpoint bytes (`torch.save` of the state dict), those
bytes after zlib compression, and batch-1 eager latency (one thread, timed
interleaved with `kdlib.measure.compare_latency`, medians). Unstructured:
90% of the conv and Linear weights zeroed globally by magnitude, masks made
permanent. Structured: half of every convolution's output channels removed
(`kdlib.prune.channel_prune`, L1 criterion).

The last line is `key=value ...`: for the teacher, the ratios pruned / dense of
bytes, zipped bytes and latency, for each kind of pruning.
"""
from __future__ import annotations

import argparse
import copy
import io
import zlib

import torch

from kdlib import measure
from kdlib.data import load_dataset
from kdlib.prune import channel_prune, magnitude_prune, make_permanent
from kdlib.zoo import load_student, load_teacher


def zipped_size(model) -> int:
    """Bytes of the model's checkpoint after zlib compression (default level)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(zlib.compress(buf.getvalue()))


def variants(model, x1) -> dict:
    """name -> model: dense, 90% unstructured (permanent), 50% of channels removed."""
    return {"dense": model,
            "90% zeros": make_permanent(magnitude_prune(copy.deepcopy(model), 0.9)),
            "50% channels": channel_prune(model, 0.5, x1)}


def measure_models(name: str, models: dict, x1, rounds: int, repeats: int) -> dict:
    lat = measure.compare_latency({k: (lambda m=m: m(x1)) for k, m in models.items()}, rounds=rounds,
                                repeats=repeats)
    rows = {}
    for k, m in models.items():
        rows[k] = {"params": measure.count_params(m), "nonzero": sum(int((p != 0).sum()) for p in m.parameters()),
                   "macs": measure.count_macs(m, x1), "bytes": measure.serialized_size(m), "zipped": zipped_size(m),
                   "latency_us": lat[k]["median_us"]}
        r = rows[k]
        print(f"{name:<8} {k:<13} {r['params']:>9,} params {r['nonzero']:>9,} non-zero {r['macs']:>11,} MACs "
              f"{r['bytes']:>10,} B {r['zipped']:>10,} B zipped {r['latency_us']:>9.1f} us")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = load_dataset("mnist5k")
    x1 = torch.zeros(1, *ds.input_shape)
    teacher = load_teacher("mnist5k", ds=ds, verbose=False)
    student = load_student("mnist5k", ds=ds, verbose=False)
    t = measure_models("teacher", variants(teacher, x1), x1, args.rounds, 20)
    measure_models("student", variants(student, x1), x1, args.rounds, 100)
    d = t["dense"]
    figures = {}
    for key, kind in (("unstructured", "90% zeros"), ("structured", "50% channels")):
        for q in ("bytes", "zipped", "latency_us"):
            figures[f"teacher_{key}_{q.replace('_us', '')}_ratio"] = t[kind][q] / d[q]
    print(" ".join(f"{k}={v:.3f}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
