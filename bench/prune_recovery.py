"""Pruning over seeds: does distillation leave less to prune, and when does a teacher help a
pruned student recover? (Chapter 8)

    OMP_NUM_THREADS=1 python bench/prune_recovery.py --json kdlib/assets/results/prune_recovery.json
    OMP_NUM_THREADS=1 python bench/prune_recovery.py --seeds 2 --control-seeds 2 --control-epochs 3  # a quick look

Three experiments with chapter 8's settings (`CONFIG`, which the chapter checks against the saved
result), each over seeds, compared with paired differences and 95 % t-intervals
(`kdlib.metrics.compare_paired`):

1. The control for "a distilled student has little redundancy left": students of the book's
   size trained alone (cross-entropy) and distilled (T = 4, alpha = 0.9), both with the rest of
   `kdlib.zoo.STUDENT_RECIPE` (all 3,500 labels, 60 epochs, AdamW lr 5e-3, cosine, batch 128),
   one pair per seed, then pruned one-shot by global magnitude at each sparsity of `CONFIG`.
2. Iterative pruning of the book's student with one epoch of fine-tuning on the labels after
   each step of `CONFIG["schedule"]`, global against per-layer (the seed sets the batch order).
3. Fine-tuning the book's student after half of its channels are removed: cross-entropy or
   distillation from the unpruned student, with all labels, with 100 labels (a different
   labelled set per seed) or with none.

With `--json PATH` the figures are written there (atomically; `--force` to replace). The last
line is `key=value ...`: the mean accuracy drop at 90 % sparsity of the distilled and the alone
students, and the mean KD - CE difference with 100 labels.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from kdlib import zoo
from kdlib.data import UNLABELLED, as_tensors, labelled_subset, load_dataset, make_loader
from kdlib.inference import cache_teacher_outputs, evaluate
from kdlib.metrics import compare_paired
from kdlib.models import StudentCNN
from kdlib.prune import channel_prune, magnitude_prune, prune_and_finetune
from kdlib.train import distill, train
from kdlib.utils import atomic_write_text, seed_everything, sha256_file

CONFIG = {"dataset": "mnist5k", "sparsities": [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
          "schedule": [0.5, 0.7, 0.8, 0.9], "ft_lr": 5e-3, "ft_epochs": 2, "channel_amount": 0.5,
          "few_labels": 100, "few_epochs": 20, "few_batch": 32, "batch_size": 128, "T": 4.0, "alpha": 0.9}


def paired(a, b) -> dict:
    c = compare_paired(a, b)
    return {"mean": c.mean, "low": c.low, "high": c.high, "verdict": c.verdict, "wins": c.wins}


class Setting:
    def __init__(self, config=CONFIG):
        self.c = config
        self.ds = load_dataset(config["dataset"])
        self.teacher = zoo.load_teacher(config["dataset"], ds=self.ds, verbose=False)
        self.student = zoo.load_student(config["dataset"], ds=self.ds, verbose=False)
        self.val, self.test = make_loader(self.ds.val, 500), make_loader(self.ds.test, 1000)
        self.x1 = torch.zeros(1, *self.ds.input_shape)

    def acc(self, model) -> float:
        return evaluate(model, self.test)["accuracy"]

    # 1. the control ---------------------------------------------------------------------
    def control(self, seeds, recipe) -> dict:
        """Alone and distilled students per seed; their test accuracy after one-shot global pruning."""
        loader = make_loader(self.ds.train, recipe.batch_size, shuffle=True, seed=0)
        cached = cache_teacher_outputs(self.teacher, loader)
        fit = dict(num_epochs=recipe.num_epochs, lr=recipe.lr, weight_decay=recipe.weight_decay, progress=False)
        out = {"alone": [], "distilled": [], "wall_s": []}
        for seed in seeds:
            t0 = time.perf_counter()
            for kind in ("alone", "distilled"):
                seed_everything(seed)
                model = StudentCNN(self.ds.input_shape, self.ds.num_classes, width=recipe.width, depth=recipe.depth)
                if kind == "alone":
                    train(model, loader, seed=seed, **fit)
                else:
                    distill(model, self.teacher, cached, T=recipe.T, alpha=recipe.alpha, seed=seed, **fit)
                out[kind].append([self.acc(magnitude_prune(copy.deepcopy(model), s)) for s in self.c["sparsities"]])
            out["wall_s"].append(time.perf_counter() - t0)
            print(f"control seed {seed}: " + "  ".join(
                f"{k} " + ", ".join(f"{a:.1%}" for a in out[k][-1]) for k in ("alone", "distilled")), flush=True)
        return out

    # 2. iterative pruning, global or per layer -------------------------------------------
    def iterative(self, seeds) -> dict:
        out = {"global": [], "layer": []}
        loader = make_loader(self.ds.train, self.c["batch_size"], shuffle=True, seed=0)
        for seed in seeds:
            for scope in ("global", "layer"):
                accs = []
                prune_and_finetune(self.student, self.c["schedule"], loader, scope=scope, num_epochs=1,
                                   lr=self.c["ft_lr"], seed=seed, callback=lambda step, m: accs.append(self.acc(m)))
                out[scope].append(accs)
            print(f"iterative seed {seed}: global {out['global'][-1]}, layer {out['layer'][-1]}", flush=True)
        return out

    # 3. fine-tuning the half-channel student ---------------------------------------------
    def finetune(self, pruned, kind: str, loader, num_epochs: int, seed: int, alpha: float) -> float:
        model = copy.deepcopy(pruned)
        if kind == "CE":
            train(model, loader, num_epochs=num_epochs, lr=self.c["ft_lr"], progress=False, seed=seed)
        else:
            distill(model, self.student, loader, T=self.c["T"], alpha=alpha, num_epochs=num_epochs,
                    lr=self.c["ft_lr"], progress=False, seed=seed)
        return self.acc(model)

    def recovery(self, seeds) -> dict:
        c = self.c
        pruned = channel_prune(self.student, c["channel_amount"], self.x1)
        X, _ = as_tensors(self.ds.train)
        out = {k: [] for k in ("all CE", "all KD", "few CE", "few KD", "none KD")}
        for seed in seeds:
            full = make_loader(self.ds.train, c["batch_size"], shuffle=True, seed=seed)
            few = make_loader(labelled_subset(self.ds.train, c["few_labels"], seed=seed), c["few_batch"],
                              shuffle=True, seed=seed)
            none = make_loader(TensorDataset(X, torch.full((len(X),), UNLABELLED, dtype=torch.long)),
                               c["batch_size"], shuffle=True, seed=seed)
            out["all CE"].append(self.finetune(pruned, "CE", full, c["ft_epochs"], seed, c["alpha"]))
            out["all KD"].append(self.finetune(pruned, "KD", full, c["ft_epochs"], seed, c["alpha"]))
            out["few CE"].append(self.finetune(pruned, "CE", few, c["few_epochs"], seed, c["alpha"]))
            out["few KD"].append(self.finetune(pruned, "KD", few, c["few_epochs"], seed, c["alpha"]))
            out["none KD"].append(self.finetune(pruned, "KD", none, c["ft_epochs"], seed, 1.0))
            print(f"recovery seed {seed}: " + ", ".join(f"{k} {v[-1]:.1%}" for k, v in out.items()), flush=True)
        return out


def summarise(control: dict, iterative: dict, recovery: dict, sparsities) -> dict:
    alone, kd = control["alone"], control["distilled"]
    drops = {k: [[r[0] - a for a in r] for r in v] for k, v in (("alone", alone), ("distilled", kd))}
    ctl = {"mean": {k: [statistics.fmean(col) for col in zip(*v)] for k, v in (("alone", alone), ("distilled", kd))},
           "distilled_minus_alone": {str(s): paired([r[i] for r in kd], [r[i] for r in alone])
                                     for i, s in enumerate(sparsities)},
           "drop_distilled_minus_alone": {str(s): paired([r[i] for r in drops["distilled"]],
                                                         [r[i] for r in drops["alone"]])
                                          for i, s in enumerate(sparsities) if s > 0}}
    it = {"mean": {k: [statistics.fmean(col) for col in zip(*v)] for k, v in iterative.items()},
          "global_minus_layer": [paired([r[j] for r in iterative["global"]], [r[j] for r in iterative["layer"]])
                                 for j in range(len(iterative["global"][0]))]}
    rec = {"mean": {k: statistics.fmean(v) for k, v in recovery.items()},
           "comparisons": {f"{a} - {b}": paired(recovery[a], recovery[b]) for a, b in
                           (("all KD", "all CE"), ("few KD", "few CE"), ("none KD", "few CE"),
                            ("none KD", "all KD"), ("none KD", "all CE"))}}
    return {"control": ctl, "iterative": it, "recovery": rec}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds of experiments 2 and 3 (default 10)")
    p.add_argument("--control-seeds", type=int, default=5, help="seeds of the control, experiment 1 (default 5)")
    p.add_argument("--control-epochs", type=int, default=None, help="override STUDENT_RECIPE.num_epochs (a quick look)")
    p.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.seeds < 2 or args.control_seeds < 2:
        sys.exit("error: need at least 2 seeds for each experiment (a comparison over seeds)")
    if args.json is not None and args.json.exists() and not args.force:
        sys.exit(f"error: {args.json} exists; pass --force to replace it")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    recipe = zoo.STUDENT_RECIPE if args.control_epochs is None else dataclasses.replace(
        zoo.STUDENT_RECIPE, num_epochs=args.control_epochs)
    setting = Setting()
    recovery = setting.recovery(range(args.seeds))
    iterative = setting.iterative(range(args.seeds))
    control = setting.control(range(args.control_seeds), recipe)
    summary = summarise(control, iterative, recovery, CONFIG["sparsities"])
    for s, d in summary["control"]["drop_distilled_minus_alone"].items():
        print(f"one-shot {float(s):.0%}: drop of the distilled - drop of the alone student {d['mean']:+.2%} "
              f"[{d['low']:+.2%}, {d['high']:+.2%}] {d['verdict']}")
    for j, d in enumerate(summary["iterative"]["global_minus_layer"]):
        print(f"iterative {CONFIG['schedule'][j]:.0%}: global - per layer {d['mean']:+.2%} "
              f"[{d['low']:+.2%}, {d['high']:+.2%}] {d['verdict']}")
    for k, d in summary["recovery"]["comparisons"].items():
        print(f"recovery {k}: {d['mean']:+.2%} [{d['low']:+.2%}, {d['high']:+.2%}] {d['verdict']}")
    result = {"config": {**CONFIG, "student_recipe": dataclasses.asdict(recipe),
                         "student_sha256": sha256_file(zoo.student_path(CONFIG["dataset"])),
                         "teacher_sha256": sha256_file(zoo.teacher_path(CONFIG["dataset"]))},
              "seeds": list(range(args.seeds)), "control_seeds": list(range(args.control_seeds)),
              "control": control, "iterative": iterative, "recovery": recovery, "summary": summary,
              "wall_s": time.perf_counter() - t0, "torch": torch.__version__}
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    i90 = CONFIG["sparsities"].index(0.9)
    m = summary["control"]["mean"]
    print(f"drop90_distilled={m['distilled'][0] - m['distilled'][i90]:.3f} drop90_alone={m['alone'][0] - m['alone'][i90]:.3f} "
          f"few_kd_minus_ce={summary['recovery']['comparisons']['few KD - few CE']['mean']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
