"""Quantization-aware training with labels (QAT) or with the teacher (QAD), over seeds (Chapter 9).

    OMP_NUM_THREADS=1 python bench/qad.py --json kdlib/assets/results/qad.json
    OMP_NUM_THREADS=1 python bench/qad.py --seeds 2 --temperatures 1 4     # a quick look

Chapter 9's recipe (`CONFIG`, which the chapter checks against the saved result): the book's
distilled student, BatchNorm folded, fake-quantized with symmetric per-channel MSE-optimal
weight grids and min-max activation grids calibrated on 4 batches of 128 training images, then
fine-tuned for 3 epochs on the 3,500 training images (AdamW, lr 5e-3, cosine), either on the
labels (`kdlib.train.train`) or from the float teacher (`kdlib.train.distill`, T = 4,
alpha = 0.9). Settings: W3A3, W2A2 (every layer at low precision, the first convolution and the
last Linear layer included), and W2A2 with those two layers at 8 bits, as deployments usually
keep them. The seed sets the calibration batches and the order of the training batches, the
same for QAT and QAD, so the two are paired by seed.

Then the temperature: QAD at W2A2 for every T in `--temperatures`, on the same seeds.

Prints per-seed accuracies, then the paired differences (mean and 95 % t-interval,
`kdlib.metrics.compare_paired`); with `--json PATH` the figures are written there (atomically;
`--force` to replace). The last line is `key=value ...`: QAD - QAT in points per setting.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from kdlib import qat, zoo
from kdlib.data import load_dataset, make_loader
from kdlib.inference import cache_teacher_outputs, evaluate
from kdlib.metrics import compare_paired
from kdlib.train import distill, train
from kdlib.utils import atomic_write_text, sha256_file

CONFIG = {"dataset": "mnist5k", "batch_size": 128, "cal_batches": 4, "qat_epochs": 3, "qat_lr": 5e-3,
          "T": 4.0, "alpha": 0.9, "weight_method": "mse",
          "settings": {"W3A3": [3, 3, False], "W2A2": [2, 2, False], "W2A2, 8-bit ends": [2, 2, True]}}


def quantized(student, w_bits: int, a_bits: int, ends8: bool, cal_batches, config=CONFIG):
    """A calibrated fake-quantized copy of the student; with `ends8` its first and last
    quantized layers keep 8-bit weights and inputs."""
    q = qat.prepare_qat(student, w_bits, act_num_bits=a_bits, weight_method=config["weight_method"])
    if ends8:
        layers = list(qat.quant_layers(q).items())
        for (name, layer) in (layers[0], layers[-1]):
            kind = qat.QConv2d if isinstance(layer, qat.QConv2d) else qat.QLinear
            q.set_submodule(name, kind(layer.module, 8, weight_method=config["weight_method"]))
    return qat.calibrate(q, cal_batches, num_batches=config["cal_batches"])


class Setting:
    def __init__(self, config=CONFIG):
        self.c = config
        self.ds = load_dataset(config["dataset"])
        self.student = zoo.load_student(config["dataset"], ds=self.ds, verbose=False)
        self.teacher = zoo.load_teacher(config["dataset"], ds=self.ds, verbose=False)
        self.test = make_loader(self.ds.test, 1000)

    def run_seed(self, seed: int, temperatures) -> dict:
        c = self.c
        loader = make_loader(self.ds.train, c["batch_size"], shuffle=True, seed=seed)
        cal = [b for _, b in zip(range(c["cal_batches"]), make_loader(self.ds.train, c["batch_size"], shuffle=True,
                                                                        seed=seed))]
        cached = cache_teacher_outputs(self.teacher, loader)
        fit = dict(num_epochs=c["qat_epochs"], lr=c["qat_lr"], progress=False, seed=seed)
        row = {}
        for name, (wb, ab, ends8) in c["settings"].items():
            row[name] = {"PTQ": evaluate(quantized(self.student, wb, ab, ends8, cal), self.test)["accuracy"]}
            q = quantized(self.student, wb, ab, ends8, cal)
            train(q, loader, **fit)
            row[name]["QAT"] = evaluate(q, self.test)["accuracy"]
            q = quantized(self.student, wb, ab, ends8, cal)
            distill(q, self.teacher, cached, T=c["T"], alpha=c["alpha"], **fit)
            row[name]["QAD"] = evaluate(q, self.test)["accuracy"]
        row["W2A2 by T"] = {}
        for T in temperatures:
            if T == c["T"]:
                row["W2A2 by T"][str(float(T))] = row["W2A2"]["QAD"]
                continue
            q = quantized(self.student, 2, 2, False, cal)
            distill(q, self.teacher, cached, T=T, alpha=c["alpha"], **fit)
            row["W2A2 by T"][str(float(T))] = evaluate(q, self.test)["accuracy"]
        return row


def paired(a, b) -> dict:
    cmp = compare_paired(a, b)
    return {"mean": cmp.mean, "low": cmp.low, "high": cmp.high, "verdict": cmp.verdict, "wins": cmp.wins}


def summarise(rows: list[dict], temperatures) -> dict:
    out = {}
    for name in CONFIG["settings"]:
        per = {k: [r[name][k] for r in rows] for k in ("PTQ", "QAT", "QAD")}
        out[name] = {**per, **{f"{k}_mean": statistics.fmean(v) for k, v in per.items()},
                     "QAD_minus_QAT": paired(per["QAD"], per["QAT"])}
    by_T = {str(float(T)): [r["W2A2 by T"][str(float(T))] for r in rows] for T in temperatures}
    ref = str(float(CONFIG["T"]))
    out["W2A2 by T"] = {"accuracy": by_T, "mean": {T: statistics.fmean(v) for T, v in by_T.items()},
                        f"vs_T{CONFIG['T']:g}": {T: paired(v, by_T[ref]) for T, v in by_T.items() if T != ref},
                        "vs_QAT": {T: paired(v, out["W2A2"]["QAT"]) for T, v in by_T.items()}}
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds 0, 1, ... (default 10)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0, 16.0],
                   help="temperatures of the W2A2 QAD sweep (default 1 2 4 8 16; must include 4)")
    p.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.seeds < 2:
        sys.exit("error: need --seeds >= 2 (a comparison over seeds)")
    if CONFIG["T"] not in args.temperatures:
        sys.exit(f"error: --temperatures must include the book's T = {CONFIG['T']:g}")
    if args.json is not None and args.json.exists() and not args.force:
        sys.exit(f"error: {args.json} exists; pass --force to replace it")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    setting = Setting()
    rows = []
    for seed in range(args.seeds):
        rows.append(setting.run_seed(seed, args.temperatures))
        r = rows[-1]
        print(f"seed {seed}: " + "  ".join(f"{n}: QAT {r[n]['QAT']:.1%} QAD {r[n]['QAD']:.1%}" for n in CONFIG["settings"])
              + "  W2A2 QAD by T: " + ", ".join(f"{float(T):g}: {a:.1%}" for T, a in r["W2A2 by T"].items()), flush=True)
    summary = summarise(rows, args.temperatures)
    for name in CONFIG["settings"]:
        s = summary[name]
        d = s["QAD_minus_QAT"]
        print(f"{name:<17} PTQ {s['PTQ_mean']:.2%}  QAT {s['QAT_mean']:.2%}  QAD {s['QAD_mean']:.2%}  "
              f"QAD - QAT {d['mean']:+.2%} [{d['low']:+.2%}, {d['high']:+.2%}] {d['verdict']}")
    for T, d in summary["W2A2 by T"][f"vs_T{CONFIG['T']:g}"].items():
        print(f"W2A2 QAD, T = {float(T):g} - T = {CONFIG['T']:g}: {d['mean']:+.2%} [{d['low']:+.2%}, {d['high']:+.2%}] "
              f"{d['verdict']}")
    result = {"config": {**CONFIG, "student_sha256": sha256_file(zoo.student_path(CONFIG["dataset"])),
                         "teacher_sha256": sha256_file(zoo.teacher_path(CONFIG["dataset"]))},
              "seeds": list(range(args.seeds)), "temperatures": [float(T) for T in args.temperatures],
              "rows": rows, "summary": summary, "wall_s": time.perf_counter() - t0, "torch": torch.__version__}
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    print(" ".join(f"{n.replace(', ', '_').replace(' ', '_').replace('-', '')}_qad_minus_qat_pt="
                   f"{100 * summary[n]['QAD_minus_QAT']['mean']:+.2f}" for n in CONFIG["settings"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
