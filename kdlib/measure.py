"""Measure a model: parameters, MACs, bytes on disk, batch-1 latency.

Latency runs warm up first, use a fixed number of threads, and report the
median and 90th percentile, so that numbers are comparable on a noisy machine.
"""
from __future__ import annotations

import contextlib
import io
import statistics
import time
from typing import Callable

import torch
from torch import nn

from .utils import eval_mode
from .validation import check_callable, check_int, check_model


def _check_counts(**counts) -> None:
    for name, v in counts.items():
        check_int(v, name, low=0 if name == "warmup" else 1)


def _check_input(model: nn.Module, example_input, context=None) -> None:
    """Run the model once in eval mode (no gradients, inside `context` if given) so that a
    shape or type mistake gives a clear error."""
    if not isinstance(example_input, torch.Tensor):
        raise TypeError("example_input must be a tensor, e.g. torch.zeros(1, *input_shape)")
    try:
        with eval_mode(model), context or contextlib.nullcontext(), torch.no_grad():
            model(example_input)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ValueError(f"the model could not run on an input of shape {tuple(example_input.shape)}: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad).

    Introduced in: notebooks/01_edge_budgets.ipynb
    """
    check_model(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on `example_input`, counted by
    `torch.utils.flop_counter.FlopCounterMode` (which counts 2 FLOPs per MAC).

    Pass a batch of one to get MACs per example.

    Introduced in: notebooks/01_edge_budgets.ipynb
    """
    from torch.utils.flop_counter import FlopCounterMode

    check_model(model)
    counter = FlopCounterMode(display=False)
    _check_input(model, example_input, counter)
    return counter.get_total_flops() // 2


def serialized_size(model: nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`: the size of a PyTorch checkpoint.

    Introduced in: notebooks/01_edge_budgets.ipynb
    """
    check_model(model)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def time_fn(fn: Callable[[], object], *, warmup: int = 10, repeats: int = 100) -> dict:
    """Time `fn()` `repeats` times after `warmup` calls.

    Returns:
        {"median_us", "p90_us", "mean_us", "repeats"} in microseconds.
    """
    check_callable(fn, "fn", allow_module=True, hint="a function of no arguments")
    _check_counts(repeats=repeats, warmup=warmup)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return {"median_us": statistics.median(times), "p90_us": times[min(len(times) - 1, int(0.9 * len(times)))],
            "mean_us": statistics.fmean(times), "repeats": repeats}


class num_threads:
    """Context manager: run torch with `n` intra-op threads, then restore."""

    def __init__(self, n: int):
        self.n = check_int(n, "the thread count n", low=1)

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def latency(model: nn.Module, example_input: torch.Tensor, *, threads: int = 1, warmup: int = 10,
            repeats: int = 100) -> dict:
    """Eager PyTorch latency of `model(example_input)` in eval mode without gradients.

    Returns:
        the dict of `time_fn` (median and p90 in microseconds).

    Introduced in: notebooks/01_edge_budgets.ipynb
    """
    check_model(model)
    _check_input(model, example_input)
    with eval_mode(model), num_threads(threads), torch.inference_mode():
        return time_fn(lambda: model(example_input), warmup=warmup, repeats=repeats)


def profile(model: nn.Module, example_input: torch.Tensor, *, threads: int = 1, repeats: int = 100) -> dict:
    """Parameters, MACs, checkpoint bytes and batch-1 latency of a model, in one dict."""
    lat = latency(model, example_input, threads=threads, repeats=repeats)
    return {"params": count_params(model), "macs": count_macs(model, example_input),
            "bytes": serialized_size(model), "latency_us": lat["median_us"], "latency_p90_us": lat["p90_us"]}


def compare_latency(runners: dict, *, rounds: int = 5, warmup: int = 10, repeats: int = 50,
                    threads: int = 1) -> dict:
    """Time several back ends side by side, interleaved over `rounds`, so that a
    burst of noise on the machine hits all of them alike.

    Args:
        runners: name -> zero-argument function running one batch-1 inference.
    Returns:
        name -> {"median_us", "p90_us"} over all rounds.

    Introduced in: notebooks/08_pruning.ipynb
    """
    if not isinstance(runners, dict) or not runners or not all(callable(f) for f in runners.values()):
        raise ValueError("runners must be a non-empty dict of name -> function of no arguments")
    _check_counts(rounds=rounds, repeats=repeats, warmup=warmup)
    samples = {name: [] for name in runners}
    with num_threads(threads), torch.inference_mode():
        for fn in runners.values():
            for _ in range(warmup):
                fn()
        for _ in range(rounds):
            for name, fn in runners.items():
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fn()
                    samples[name].append((time.perf_counter() - t0) * 1e6)
    out = {}
    for name, s in samples.items():
        s.sort()
        out[name] = {"median_us": statistics.median(s), "p90_us": s[min(len(s) - 1, int(0.9 * len(s)))]}
    return out


def machine_info() -> dict:
    """What a latency figure depends on: the processor, its core count, the instruction-set
    extensions that int8 and fp32 kernels use, and the versions of the runtimes.

    Returns a dict with `processor` (the model name, or `platform.processor()` where
    /proc/cpuinfo is absent), `cores`, `flags` (those of AVX2, AVX-512, VNNI, AMX and Arm's
    dot-product extension that the processor has) and `torch`, `onnxruntime` versions
    (None when not installed). Latency ratios from different machines are not comparable
    without it.
    """
    import os
    import platform
    from importlib import metadata

    processor, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware") and processor in ("", platform.machine(), platform.processor()):
                    processor = value.strip() or processor
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"processor": processor, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags],
            "torch": torch.__version__, "onnxruntime": version("onnxruntime")}
