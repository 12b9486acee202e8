"""Measure models and files side by side, choose the edge model, and write the compression report.

What `python -m kdlib compress` does after training, as functions a script of one's own can
call on its own models and files (notebooks/15_compress_your_own.ipynb does):

    stages = [Stage("teacher", teacher, role="teacher"),
              Stage("teacher onnx fp32", teacher, "teacher_fp32.onnx", role="teacher"),
              Stage("onnx int8", student, "edge_int8.onnx", role="candidate")]
    rows, timing = measure_stages(stages, ds)          # accuracy, bytes, params, MACs, latency
    summary = summarise(rows, timing)                  # ratios in the same runtime, the choice and why
    write_report("out", summary)                       # report.md, report.json, pareto.png

A PyTorch model is timed in eager PyTorch; a file in the runtime its suffix names (`.onnx`:
ONNX Runtime, `.pte`: ExecuTorch). Files take the raw pixels in [0, 1] when the data set
carries its normalisation (`DatasetSplits.normalisation`; the pipeline exports them behind
`kdlib.models.Standardise`), models the standardised images.
"""
from __future__ import annotations

import io
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import export, measure
from .data import DatasetSplits, as_tensors, make_loader
from .inference import evaluate
from .metrics import mean_ci
from .utils import atomic_write_bytes, atomic_write_text, eval_mode
from .validation import check_choice, check_int, check_list, check_number, check_path

ROLES = ("teacher", "student", "pruned", "direct", "candidate")
RULES = ("smallest", "fastest")
RUNTIMES = {".onnx": "ONNX Runtime", ".pte": "ExecuTorch", None: "PyTorch"}


@dataclass
class Stage:
    """One thing to measure: a PyTorch model, or a file exported from it (`model` is then the
    model it holds, for its parameters and MACs). `role`: "teacher", "student", "pruned",
    "direct" (the pruned architecture distilled from scratch) or "candidate" (an edge file).

    Introduced in: notebooks/15_compress_your_own.ipynb
    """

    name: str
    model: nn.Module
    file: str | Path | None = None
    role: str = "candidate"

    def __post_init__(self):
        check_choice(self.role, "role", ROLES)
        if self.file is not None:
            self.file = check_path(self.file, "file")
            if self.file.suffix not in (".onnx", ".pte"):
                raise ValueError(f"{self.file} must be an .onnx or .pte file")


def raw_pixels(X: torch.Tensor, ds: DatasetSplits) -> torch.Tensor:
    """Standardised images X (N, C, H, W) back to the pixels in [0, 1] that exported files take."""
    if ds.normalisation is None:
        return X
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in ds.normalisation)
    return X * std + mean


def _precision(path: Path) -> str:
    if path.suffix != ".onnx":
        return "fp32"
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    return "int8" if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "MatMulInteger"} else "fp32"


def _file_accuracy(path: Path, X: torch.Tensor, y: torch.Tensor) -> float:
    if path.suffix == ".pte":  # a .pte runs at the batch size it was planned for: one image
        logits = torch.cat([export.predict(path, X[i:i + 1]) for i in range(len(X))])
    else:
        logits = export.predict(path, X)
    return (logits.argmax(1) == y).float().mean().item()


def _channels(model: nn.Module) -> list[int]:
    """The output channels of every convolution, in order (what pruning changed)."""
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def measure_row(stage: Stage, ds: DatasetSplits) -> dict:
    """Accuracy on the test split, size, parameters, MACs and conv channels of one `Stage`
    (latency comes from `time_until_stable`, all stages side by side).
    """
    X, y = as_tensors(ds.test)
    example = X[:1]
    row = {"stage": stage.name, "role": stage.role, "params": measure.count_params(stage.model),
           "macs": measure.count_macs(stage.model, example), "channels": _channels(stage.model)}
    if stage.file is None:
        return {**row, "runtime": "PyTorch", "precision": "fp32", "format": "PyTorch fp32", "file": None,
                "bytes": measure.serialized_size(stage.model),
                "accuracy": evaluate(stage.model, make_loader(ds.test, 500))["accuracy"]}
    runtime, precision = RUNTIMES[stage.file.suffix], _precision(stage.file)
    return {**row, "runtime": runtime, "precision": precision, "format": f"{runtime} {precision}",
            "file": stage.file.name, "bytes": stage.file.stat().st_size,
            "accuracy": _file_accuracy(stage.file, raw_pixels(X, ds), y)}


def runner(stage: Stage, ds: DatasetSplits, threads: int = 1):
    """The zero-argument batch-1 call of a stage that `time_until_stable` times."""
    X = as_tensors(ds.test)[0][:1]
    if stage.file is None:
        stage.model.eval()
        return lambda: stage.model(X)
    return export.make_runner(stage.file, raw_pixels(X, ds), threads=threads)


def _round(runners: dict, repeats: int) -> dict:
    """One round: every runner `repeats` times in turn; the median microseconds of each."""
    out = {}
    for name, fn in runners.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
        out[name] = statistics.median(times)
    return out


def _stable(rounds: list[dict], pairs, tolerance: float) -> bool:
    """True when each ratio a / b of `pairs` is known to within ±tolerance (95 % interval of its
    mean over the rounds, relative to that mean)."""
    for a, b in pairs:
        m, low, high = mean_ci([r[a] / r[b] for r in rounds])
        if (high - low) / 2 > tolerance * m:
            return False
    return True


def time_until_stable(runners: dict, pairs=(), *, min_rounds: int = 5, max_rounds: int = 30,
                      tolerance: float = 0.03, repeats: int = 30, warmup: int = 10, threads: int = 1) -> dict:
    """Time batch-1 calls side by side in interleaved rounds until the ratios that matter are stable.

    Each round times every runner `repeats` times in turn (so a burst of noise on the machine
    hits all of them alike) and keeps each one's median. Rounds go on, from `min_rounds` to
    `max_rounds`, until the 95 % confidence interval of each ratio `a / b` in `pairs`, over the
    rounds, is within ±`tolerance` of its mean.

    Args:
        runners: name -> zero-argument function running one inference.
        pairs: (slower name, faster name) pairs whose latency ratios the report quotes.
    Returns:
        {"rounds": n, "stable": bool, "stages": name -> {"median_us" (median of the round
        medians), "round_us" (one per round)}}.
    """
    if not isinstance(runners, dict) or not runners or not all(callable(f) for f in runners.values()):
        raise TypeError("runners must be a non-empty dict of name -> function of no arguments")
    pairs = [tuple(p) for p in pairs]
    unknown = [n for p in pairs for n in p if n not in runners]
    if unknown:
        raise ValueError(f"pairs name {unknown}, which are not runners ({', '.join(runners)})")
    check_int(min_rounds, "min_rounds", low=2)
    check_int(max_rounds, "max_rounds", low=min_rounds, hint="at least min_rounds")
    check_number(tolerance, "tolerance", low=0.0, low_open=True, hint="e.g. 0.03 for ±3 %")
    rounds = []
    with measure.num_threads(threads), torch.inference_mode():
        for fn in runners.values():
            for _ in range(warmup):
                fn()
        while len(rounds) < max_rounds:
            rounds.append(_round(runners, repeats))
            if len(rounds) >= min_rounds and _stable(rounds, pairs, tolerance):
                break
    stages = {n: {"median_us": statistics.median(r[n] for r in rounds), "round_us": [r[n] for r in rounds]}
              for n in runners}
    return {"rounds": len(rounds), "stable": _stable(rounds, pairs, tolerance), "stages": stages}


def measure_stages(stages: list[Stage], ds: DatasetSplits, *, threads: int = 1, min_rounds: int = 5,
                   max_rounds: int = 30, tolerance: float = 0.03) -> tuple[list[dict], dict]:
    """Measure every stage (`measure_row`) and time them all side by side (`time_until_stable`,
    until each candidate's ratio to the teacher in its own runtime, and the teacher's runtime
    gain, are stable). Returns (rows, timing); each row gains `median_us`.

    Introduced in: notebooks/15_compress_your_own.ipynb
    """
    stages = check_list(stages, "stages", of=Stage, hint="Stage(name, model, file=None, role=...)")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must differ, got {names}")
    with export.native_stderr_silenced():
        rows = [measure_row(s, ds) for s in stages]
        pairs = [(t["stage"], r["stage"]) for r in rows for t in rows if r["role"] == "candidate"
                 and t["role"] == "teacher" and t["runtime"] == r["runtime"] and t["precision"] == "fp32"]
        eager = [t["stage"] for t in rows if t["role"] == "teacher" and t["runtime"] == "PyTorch"]
        pairs += [(eager[0], t) for t, _ in pairs if eager and t != eager[0]]
        timing = time_until_stable({s.name: runner(s, ds, threads) for s in stages}, sorted(set(pairs)),
                                   min_rounds=min_rounds, max_rounds=max_rounds, tolerance=tolerance,
                                   threads=threads)
    for r in rows:
        r["median_us"] = timing["stages"][r["stage"]]["median_us"]
        r["round_us"] = timing["stages"][r["stage"]]["round_us"]
    return rows, timing


# ---------------------------------------------------------------- the choice

def _times(ratio: float) -> str:
    """1.8×, or 1.01× for a ratio that one decimal would show as 1.0×."""
    return f"{ratio:.2f}×" if ratio < 1.1 else f"{ratio:.1f}×"


def _points(x: float) -> str:
    return f"{x:g} point" + ("" if x == 1 else "s")


def choose_edge(rows: list[dict], *, rule: str = "smallest", max_drop_points: float = 1.0) -> tuple[dict, str]:
    """The edge model among the candidate rows, and why, in a sentence.

    rule="smallest": the smallest file within `max_drop_points` of the teacher's test accuracy
    (the teacher's PyTorch row); rule="fastest": the fastest such file. When no file is within
    the budget, the most accurate one, and the sentence says so.
    """
    check_choice(rule, "rule", RULES)
    check_number(max_drop_points, "max_drop_points", low=0.0, hint="points of test accuracy, e.g. 1.0")
    teacher = next((r for r in rows if r["role"] == "teacher" and r["runtime"] == "PyTorch"), None)
    candidates = [r for r in rows if r["role"] == "candidate"]
    if teacher is None or not candidates:
        raise ValueError("rows need the teacher's PyTorch row and at least one candidate file")
    floor = teacher["accuracy"] - max_drop_points / 100
    allowed = [r for r in candidates if r["accuracy"] >= floor - 1e-9]
    key = "bytes" if rule == "smallest" else "median_us"
    if not allowed:
        best = max(candidates, key=lambda r: r["accuracy"])
        return best, (f"no file is within {_points(max_drop_points)} of the teacher's accuracy "
                      f"({100 * teacher['accuracy']:.1f}%), so the most accurate one is chosen")
    best = min(allowed, key=lambda r: r[key])
    what = "smallest" if rule == "smallest" else "fastest on this machine"
    why = f"the {what} file within {_points(max_drop_points)} of the teacher's test accuracy (rule '{rule}')"
    other = min(allowed, key=lambda r: r["median_us" if rule == "smallest" else "bytes"])
    if other is not best:
        if rule == "smallest":
            why += (f"; {other['stage']} is faster here ({other['median_us']:.1f} µs against "
                    f"{best['median_us']:.1f} µs) but {_times(other['bytes'] / best['bytes'])} larger")
        else:
            why += (f"; {other['stage']} is smaller ({other['bytes']:,} bytes against {best['bytes']:,}) but "
                    f"slower here ({other['median_us']:.1f} µs against {best['median_us']:.1f} µs)")
    return best, why


# ---------------------------------------------------------------- what pruning removed

def _units(model: nn.Module) -> dict[str, int]:
    """Output channels of every Conv2d and output units of every Linear, by layer name."""
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def prune_record(before: nn.Module, after: nn.Module, example: torch.Tensor, *, amount: float, multiple_of: int,
                 method: str | None, left_whole: dict | None = None, skipped: str | None = None) -> dict:
    """What pruning actually removed, for the report: channels per layer before and after, the
    fraction of channels, parameters and MACs removed, and the layers left whole (and why).

    Channels are counted over the Conv2d and hidden Linear layers (the output layer's units are
    the classes), so "asked 25 %" and "removed 33 %" can differ once counts are rounded.

    Introduced in: notebooks/15_compress_your_own.ipynb
    """
    units_before, units_after = _units(before), _units(after)
    output = list(units_before)[-1] if units_before else None
    layers = [{"layer": n, "before": c, "after": units_after.get(n, c)} for n, c in units_before.items()
              if n != output]
    total_before = sum(r["before"] for r in layers)
    total_after = sum(r["after"] for r in layers)
    with eval_mode(before), eval_mode(after):
        macs = measure.count_macs(before, example), measure.count_macs(after, example)
    params = measure.count_params(before), measure.count_params(after)
    return {"method": method, "asked": amount, "multiple_of": multiple_of, "skipped": skipped,
            "layers": layers, "left_whole": dict(left_whole or {}),
            "channels_removed": 1 - total_after / total_before if total_before else 0.0,
            "params_before": params[0], "params_after": params[1], "macs_before": macs[0], "macs_after": macs[1]}


# ---------------------------------------------------------------- the summary

def _find(rows, **want) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in want.items())), None)


def ratio_over_rounds(timing: dict, slow: str, fast: str) -> dict:
    """The latency ratio slow / fast in each round of `time_until_stable`: its median, range and 95 % interval.
    """
    a, b = timing["stages"][slow]["round_us"], timing["stages"][fast]["round_us"]
    per_round = [x / y for x, y in zip(a, b)]
    _, low, high = mean_ci(per_round) if len(per_round) > 1 else (0, per_round[0], per_round[0])
    return {"ratio": statistics.median(per_round), "min": min(per_round), "max": max(per_round),
            "ci_low": low, "ci_high": high, "rounds": len(per_round)}


def _latency(timing, slow, fast) -> dict | None:
    return ratio_over_rounds(timing, slow["stage"], fast["stage"]) if slow and fast else None


def summarise(rows: list[dict], timing: dict, *, rule: str = "smallest", max_drop_points: float = 1.0,
              prune: dict | None = None, data: DatasetSplits | None = None, machine: dict | None = None) -> dict:
    """Everything the report says, as one dict (report.json): the chosen edge model and why, its
    size and latency against the teacher in the same format and runtime (and against an int8
    teacher), the runtime's own gain, accuracy, pruning, and the directly distilled baseline.

    Introduced in: notebooks/15_compress_your_own.ipynb
    """
    edge, why = choose_edge(rows, rule=rule, max_drop_points=max_drop_points)
    eager = _find(rows, role="teacher", runtime="PyTorch")
    same = _find(rows, role="teacher", runtime=edge["runtime"], precision="fp32")
    int8 = _find(rows, role="teacher", precision="int8")
    pruned, direct = _find(rows, role="pruned"), _find(rows, role="direct")
    s = {"edge_stage": edge["stage"], "edge_file": edge["file"], "edge_format": edge["format"], "choice": why,
         "rule": rule, "max_drop_points": max_drop_points,
         "teacher_accuracy": eager["accuracy"], "edge_accuracy": edge["accuracy"],
         "accuracy_drop_points": 100 * (eager["accuracy"] - edge["accuracy"]),
         "teacher_bytes": same["bytes"] if same else None, "edge_bytes": edge["bytes"],
         "size_ratio": same["bytes"] / edge["bytes"] if same else None,
         "size_ratio_int8_teacher": int8["bytes"] / edge["bytes"] if int8 else None,
         "size_ratio_checkpoint": eager["bytes"] / edge["bytes"],
         "teacher_latency_us": same["median_us"] if same else None, "edge_latency_us": edge["median_us"],
         "latency": _latency(timing, same, edge), "runtime_gain": _latency(timing, eager, same),
         "total_latency": _latency(timing, eager, edge), "timing_rounds": timing["rounds"],
         "timing_stable": timing["stable"], "prune": prune, "stages": rows, "machine": machine}
    s["latency_ratio"] = s["latency"]["ratio"] if s["latency"] else None
    if pruned and direct:
        s["direct"] = {"pruned_accuracy": pruned["accuracy"], "direct_accuracy": direct["accuracy"],
                       "difference_points": 100 * (pruned["accuracy"] - direct["accuracy"])}
    if data is not None:
        s.update(data=data.name, test_size=len(data.test), input_shape=list(data.input_shape),
                 classes=list(data.classes), normalisation=data.normalisation)
    return s


# ---------------------------------------------------------------- the report

def _signed(x: float) -> str:
    return f"+{abs(x):.1f}" if x >= 0 else f"−{-x:.1f}"  # abs: no "+-0.0"


def _machine_line(machine) -> str:
    if not machine:
        return "an unrecorded machine"
    flags = ", ".join(machine["flags"]) or "none of AVX2, AVX-512, VNNI"
    return f"{machine['processor']}, {machine['cores']} cores, {flags}"


def _gains(s: dict) -> list[str]:
    edge = _find(s["stages"], stage=s["edge_stage"])
    runtime = edge["runtime"]
    lines = []
    if s["size_ratio"]:
        lines.append(f"- **{s['size_ratio']:.0f}× smaller** than the teacher in the same format ({edge['runtime']} "
                     f"fp32 file: {s['teacher_bytes']:,} → {s['edge_bytes']:,} bytes)"
                     + (f"; {s['size_ratio_int8_teacher']:.0f}× smaller than the teacher quantized to int8"
                        if s["size_ratio_int8_teacher"] else ""))
    lat, rt, total = s["latency"], s["runtime_gain"], s["total_latency"]
    if lat:
        lines.append(f"- **{lat['ratio']:.1f}× faster** than the teacher in the same runtime ({runtime}, batch 1: "
                     f"{s['teacher_latency_us']:.0f} µs → {s['edge_latency_us']:.1f} µs, median over "
                     f"{lat['rounds']} rounds; per round {lat['min']:.1f}× to {lat['max']:.1f}×, 95% interval of "
                     f"the mean {lat['ci_low']:.1f}× to {lat['ci_high']:.1f}×)")
    if rt:
        lines.append(f"- the runtime alone, separately: the teacher runs {rt['ratio']:.1f}× faster in {runtime} than "
                     f"in eager PyTorch; both together (teacher in PyTorch → edge model) {total['ratio']:.0f}×")
    lines.append(f"- test accuracy {100 * s['teacher_accuracy']:.1f}% → {100 * s['edge_accuracy']:.1f}% "
                 f"({_signed(-s['accuracy_drop_points'])} points)")
    if not s["timing_stable"]:
        lines.append(f"- the timings did not settle within {s['timing_rounds']} rounds (a busy machine?): "
                     "read the latency ratios as rough")
    return lines


def _prune_lines(p: dict | None) -> list[str]:
    if p is None:
        return []
    if p["skipped"]:
        return [f"Pruning was skipped: {p['skipped']}."]
    changed = ", ".join(f"layer {r['layer']}: {r['before']} → {r['after']}" for r in p["layers"] if r["before"] != r["after"])
    lines = [f"Asked to remove {p['asked']:.0%} of each layer's channels (counts kept rounded to multiples of "
             f"{p['multiple_of']}), {p['method']} removed **{p['channels_removed']:.0%} of the channels** "
             f"({changed}), {1 - p['params_after'] / p['params_before']:.0%} of the parameters "
             f"({p['params_before']:,} → {p['params_after']:,}) and {1 - p['macs_after'] / p['macs_before']:.0%} of "
             f"the multiply-accumulates ({p['macs_before']:,} → {p['macs_after']:,})."]
    if p["left_whole"]:
        lines.append("Left whole: " + "; ".join(f"{n} ({why})" for n, why in p["left_whole"].items()) + ".")
    return lines


def _direct_lines(s: dict) -> list[str]:
    d = s.get("direct")
    if not d:
        return []
    diff = d["difference_points"]
    better = "more" if diff > 0 else "less"
    return [f"The pruned architecture distilled from scratch, with as many epochs as distillation and fine-tuning "
            f"together, reached {100 * d['direct_accuracy']:.1f}% against {100 * d['pruned_accuracy']:.1f}% for the "
            f"pruned student ({abs(diff):.1f} points {better} for pruning). One run cannot tell a difference this "
            "size from the spread between seeds: compare over several seeds (kdlib.metrics.compare_paired) before "
            "concluding that pruning helps; if it does not, distil the small architecture directly."]


def report_markdown(summary: dict, *, level: int = 1) -> str:
    """The report as Markdown; its title is a heading of `level` (1 in report.md; 2 or more to
    embed it in a page that has its own title).

    Introduced in: notebooks/13_capstone.ipynb
    """
    check_int(level, "level", low=1, high=5)
    h, s = "#" * level, summary
    data = (f"Data: **{s['data']}** ({s['test_size']:,} test images of {'×'.join(map(str, s['input_shape']))}, "
            f"{len(s['classes'])} classes). " if s.get("data") else "")
    lines = [f"{h} Compression report", "",
             data + f"Edge model: **{s['edge_stage']}** (`{s['edge_file']}`), {s['choice']}.", "", *_gains(s), "",
             f"Timed on {_machine_line(s.get('machine'))}, one thread.", ""]
    for title, body in (("What pruning removed", _prune_lines(s.get("prune"))),
                        ("Pruning against distilling the small architecture directly", _direct_lines(s))):
        if body:
            lines += [f"{h}# {title}", "", *body, ""]
    lines += [f"{h}# Every stage", "", "| stage | format | params | MACs | bytes | test accuracy | latency (µs) |",
              "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['stage']} | {r['format']} | {r['params']:,} | {r['macs']:,} | {r['bytes']:,} | "
              f"{100 * r['accuracy']:.1f}% | {r['median_us']:.1f} |" for r in s["stages"]]
    lines += ["", "![accuracy against size and latency](pareto.png)", ""]
    if s.get("config"):
        lines += [f"{h}# Configuration", "", "```json", json.dumps(s["config"], indent=1), "```", ""]
    return "\n".join(lines)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated by another: no other point is both
    at most as large (x, e.g. bytes) and at least as accurate (y), and better in one.
    """
    if (not isinstance(points, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
            for p in points)):
        raise TypeError("points must be a list of (x, y) pairs of finite numbers, e.g. [(bytes, accuracy), ...]")
    return [i for i, (x, y) in enumerate(points)
            if not any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)]


def _short_number(v: float) -> str:
    """A tick label: 300, 30k, 1.5M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def pareto_figure(rows: list[dict]):
    """Accuracy against size (top) and against latency (bottom) for every stage, Pareto front
    marked. 5.2 inches wide with 10-point text: readable in a phone's column (kdlib.viz.BOOK_STYLE).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    keys = ("stage", "bytes", "median_us", "accuracy")
    if not isinstance(rows, (list, tuple)) or not rows or not all(
            isinstance(r, dict) and all(k in r for k in keys) for r in rows):
        raise TypeError(f"rows must be a non-empty list of dicts with the keys {keys} (the report's stages)")
    markers = "osD^vPX*<>ph"  # a marker and a colour per stage, named in one legend
    fig, axes = plt.subplots(2, 1, figsize=(5.2, 5.8), dpi=100, sharey=True)
    for ax, key, label in ((axes[0], "bytes", "file size (bytes, log scale)"),
                           (axes[1], "median_us", "batch-1 latency (µs, log scale)")):
        pts = [(r[key], 100 * r["accuracy"]) for r in rows]
        front = sorted(pareto_front(pts), key=lambda i: pts[i][0])
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="0.6", zorder=1,
                label="Pareto front")
        for i, (r, (x, y)) in enumerate(zip(rows, pts)):
            ax.scatter(x, y, s=50, marker=markers[i % len(markers)], color=f"C{i % 10}", alpha=0.85,
                       edgecolors="white", linewidths=0.5, zorder=2, label=r["stage"])
        ax.set_xscale("log")
        # ticks at 1 and 3 times each power of ten, only they labelled (matplotlib labels some minor
        # ticks on an axis under two decades long, and they overlap at this width)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short_number(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label, fontsize=10)
        ax.set_ylabel("test accuracy (%)", fontsize=10)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
        ax.margins(y=0.12)  # markers at the best accuracy stay whole
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=10, frameon=False)
    rows_of_legend = (len(labels) + 1) // 2
    fig.tight_layout(rect=(0, min(0.45, 0.036 * rows_of_legend + 0.01), 1, 1))
    return fig


def _png(fig) -> bytes:
    """The figure's PNG, with the record of its smallest text and overlaps that the website's
    tests read (kdlib.widgets.png_metadata), saved at the figure's own dpi as that record assumes."""
    import matplotlib.pyplot as plt

    from .widgets import compact_png, png_metadata

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight", metadata=png_metadata(fig))
    plt.close(fig)
    return compact_png(buf.getvalue())


def write_report(out, summary: dict) -> dict:
    """Write `out/report.md`, `out/report.json` and `out/pareto.png` (atomically) from `summarise`'s dict.

    Returns the paths written, by name. The folder must exist.

    Introduced in: notebooks/15_compress_your_own.ipynb
    """
    out = check_path(out, "out")
    if not out.is_dir():
        raise FileNotFoundError(f"cannot write the report: the folder {out} does not exist; create it first")
    paths = {"png": out / "pareto.png", "md": out / "report.md", "json": out / "report.json"}
    atomic_write_bytes(paths["png"], _png(pareto_figure(summary["stages"])))
    atomic_write_text(paths["md"], report_markdown(summary))
    atomic_write_text(paths["json"], json.dumps(summary, indent=1, default=str))
    return paths
