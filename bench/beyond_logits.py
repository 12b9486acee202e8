"""Beyond logits, trained to convergence: eight ways to train the book's student on 1,000 labels,
compared over seeds with paired differences (Chapter 7).

    OMP_NUM_THREADS=1 python bench/beyond_logits.py --json kdlib/assets/results/beyond_logits.json
    OMP_NUM_THREADS=1 python bench/beyond_logits.py --seeds 2 --epochs 2 --lrs 0.01   # a quick look

The setting is chapter 7's: a `StudentCNN` of width 8 (9,122 parameters) sees 1,000 labelled
training images of MNIST-5k (a stratified subset, label seed 0; no augmentation); the teacher is
the book's. The methods, their loss weights (the papers', not tuned here) and the layers they
read are chapter 7's `CONFIG`, which this script writes beside its figures so that the chapter
can check that the result is current.

1. The learning rate: the student alone is trained for the full budget at each rate in `--lrs`,
   on every seed, and the rate with the best mean validation accuracy is used by every method.
2. Every method is trained on every seed twice: for `--epochs` epochs and for half of it (each
   with its own cosine schedule). Their paired validation difference says whether the budget
   has reached convergence: doubling the budget should not change val accuracy.
3. Test accuracy of the full-budget runs; every method against the student alone and against
   logit KD, with paired per-seed differences and 95 % t-intervals (`kdlib.metrics.compare_paired`).

The teacher assistant (width 16) is distilled from the teacher with the same budget, one per seed,
then teaches that seed's student; born-again's teacher is that seed's "student alone". Both pay
one extra training run per seed that the other methods do not.

4. Where doubling the budget still raised val accuracy for a method, `--extend METHOD ...`
   trains that method again for twice `--epochs` on the same seeds and adds, to the saved
   result, its val and test accuracy there and the paired val difference with the full budget
   (does it converge now?):

    OMP_NUM_THREADS=1 python bench/beyond_logits.py --json kdlib/assets/results/beyond_logits.json \
        --extend "attention transfer" "relational KD"

With `--json PATH` the figures are written there (atomically; `--force` to replace). The last
line is `key=value ...`: for each method, the mean test gain over the student alone in points.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdlib import zoo
from kdlib.chains import born_again, teacher_assistant_chain
from kdlib.data import labelled_subset, load_dataset, make_loader
from kdlib.hooks import feature_shapes
from kdlib.inference import cache_teacher_outputs, evaluate
from kdlib.losses import FitNetsHint, attention_loss, dkd_loss, rkd_loss
from kdlib.metrics import compare_paired
from kdlib.models import StudentCNN
from kdlib.train import distill, train
from kdlib.utils import atomic_write_text, seed_everything, sha256_file

# Chapter 7's setting (notebooks/07_beyond_logits.ipynb checks that a saved result used these)
CONFIG = {
    "dataset": "mnist5k", "n_labelled": 1000, "label_seed": 0, "batch_size": 64, "student_width": 8,
    "assistant_width": 16, "T": 4.0, "alpha": 0.9,
    "student_blocks": ["3", "7"], "teacher_blocks": ["6", "13"], "student_embed": "8", "teacher_embed": "17",
    "hint_weight": 100.0, "at_weight": 1000.0, "rkd_weights": [25.0, 50.0], "dkd_alpha": 1.0, "dkd_beta": 8.0,
}
METHODS = ["student alone", "KD (logits)", "FitNets", "attention transfer", "relational KD", "decoupled KD",
           "teacher assistant", "born-again"]


class Setting:
    """The data, the teacher and its cached outputs, and one function per method."""

    def __init__(self, config: dict):
        c = self.c = config
        self.ds = load_dataset(c["dataset"])
        self.teacher = zoo.load_teacher(c["dataset"], ds=self.ds, verbose=False)
        train_set = labelled_subset(self.ds.train, c["n_labelled"], seed=c["label_seed"])
        self.loader = make_loader(train_set, c["batch_size"], shuffle=True, seed=0)
        self.val, self.test = make_loader(self.ds.val, 500), make_loader(self.ds.test, 1000)
        t_layers = c["teacher_blocks"] + [c["teacher_embed"]]
        self.cached = cache_teacher_outputs(self.teacher, self.loader, t_layers)
        self.s_shapes = feature_shapes(self.new(0), c["student_blocks"], self.ds.input_shape)
        self.t_shapes = feature_shapes(self.teacher, c["teacher_blocks"], self.ds.input_shape)

    def new(self, seed: int, width: int | None = None) -> StudentCNN:
        seed_everything(seed)
        return StudentCNN(self.ds.input_shape, self.ds.num_classes, width=width or self.c["student_width"])

    def distill_kwargs(self, method: str) -> dict:
        """The keyword arguments of `distill` that make each logit or feature method."""
        c = self.c

        def ce_only(z_s, z_t, y):
            return F.cross_entropy(z_s, y)

        def ce_plus_dkd(z_s, z_t, y):
            return F.cross_entropy(z_s, y) + dkd_loss(z_s, z_t, y, alpha=c["dkd_alpha"], beta=c["dkd_beta"], T=c["T"])

        def at_both_blocks(s_feats, t_feats):
            return sum(attention_loss(s, t) for s, t in zip(s_feats, t_feats))

        def rkd_embeddings(s_feats, t_feats):
            return rkd_loss(s_feats[0], t_feats[0], *c["rkd_weights"])

        s1, t1 = c["student_blocks"][0], c["teacher_blocks"][0]
        return {
            "KD (logits)": lambda: dict(T=c["T"], alpha=c["alpha"]),
            "FitNets": lambda: dict(feature_loss=FitNetsHint([self.s_shapes[s1][0]], [self.t_shapes[t1][0]]),
                                    student_layers=[s1], teacher_layers=[t1], beta=c["hint_weight"],
                                    logit_loss=ce_only),
            "attention transfer": lambda: dict(feature_loss=at_both_blocks, student_layers=c["student_blocks"],
                                               teacher_layers=c["teacher_blocks"], beta=c["at_weight"],
                                               logit_loss=ce_only),
            "relational KD": lambda: dict(feature_loss=rkd_embeddings, student_layers=[c["student_embed"]],
                                          teacher_layers=[c["teacher_embed"]], logit_loss=ce_only),
            "decoupled KD": lambda: dict(logit_loss=ce_plus_dkd),
        }[method]()

    def run_one(self, method: str, seed: int, num_epochs: int, lr: float) -> dict:
        """One logit or feature method on one seed: {val, test, wall_s, val_curve}."""
        t0, model = time.perf_counter(), self.new(seed)
        history = distill(model, self.teacher, self.cached, **self.distill_kwargs(method), num_epochs=num_epochs,
                          lr=lr, progress=False, seed=seed, val_loader=self.val)
        return {"val": evaluate(model, self.val)["accuracy"], "test": evaluate(model, self.test)["accuracy"],
                "wall_s": time.perf_counter() - t0, "val_curve": history.val_accuracy}

    def run_seed(self, seed: int, num_epochs: int, lr: float) -> dict:
        """Every method on one seed: method -> {val, test, wall_s, val_curve}."""
        recipe = dict(num_epochs=num_epochs, lr=lr, progress=False, seed=seed, val_loader=self.val)
        out = {}

        def record(method, t0, model, history):
            out[method] = {"val": evaluate(model, self.val)["accuracy"], "test": evaluate(model, self.test)["accuracy"],
                           "wall_s": time.perf_counter() - t0, "val_curve": history.val_accuracy}

        t0 = time.perf_counter()
        alone = self.new(seed)
        record("student alone", t0, alone, train(alone, self.loader, **recipe))
        for method in METHODS[1:6]:
            t0, model = time.perf_counter(), self.new(seed)
            record(method, t0, model, distill(model, self.teacher, self.cached, **self.distill_kwargs(method), **recipe))
        t0, assistant, model = time.perf_counter(), self.new(seed, self.c["assistant_width"]), self.new(seed)
        histories = teacher_assistant_chain(self.teacher, [assistant], model, self.cached, T=self.c["T"],
                                            alpha=self.c["alpha"], **recipe)
        record("teacher assistant", t0, model, histories[-1])
        out["teacher assistant"]["assistant_test"] = evaluate(assistant, self.test)["accuracy"]
        t0 = time.perf_counter()
        models, histories = born_again(lambda: self.new(seed), self.loader, first=alone, T=self.c["T"],
                                       alpha=self.c["alpha"], **recipe)
        record("born-again", t0, models[1], histories[-1])
        return out


def choose_lr(setting: Setting, lrs, seeds, num_epochs) -> tuple[float, dict]:
    """The rate with the best mean val accuracy of the student alone; val per rate and seed."""
    val = {}
    for lr in lrs:
        val[lr] = []
        for seed in seeds:
            model = setting.new(seed)
            train(model, setting.loader, num_epochs=num_epochs, lr=lr, progress=False, seed=seed)
            val[lr].append(evaluate(model, setting.val)["accuracy"])
        print(f"lr {lr:g}: student alone, val {statistics.fmean(val[lr]):.2%} over {len(seeds)} seeds", flush=True)
    return max(lrs, key=lambda lr: statistics.fmean(val[lr])), {str(lr): v for lr, v in val.items()}


def summarise(runs: dict, half: dict) -> dict:
    """Per method: per-seed test and val, the convergence check, and paired comparisons."""
    out = {}
    for m in METHODS:
        test = [r[m]["test"] for r in runs.values()]
        val, val_half = [r[m]["val"] for r in runs.values()], [h[m]["val"] for h in half.values()]
        row = {"test": test, "val": val, "val_half_budget": val_half,
               "test_mean": statistics.fmean(test), "test_std": statistics.stdev(test),
               "wall_s_median": statistics.median(r[m]["wall_s"] for r in runs.values()),
               "val_curve_mean": [statistics.fmean(c) for c in zip(*(r[m]["val_curve"] for r in runs.values()))]}
        for key, ref in (("vs_alone", "student alone"), ("vs_kd", "KD (logits)")):
            if m != ref:
                cmp = compare_paired(test, [r[ref]["test"] for r in runs.values()])
                row[key] = {"mean": cmp.mean, "low": cmp.low, "high": cmp.high, "verdict": cmp.verdict,
                            "wins": cmp.wins}
        conv = compare_paired(val, val_half)
        row["full_vs_half_val"] = {"mean": conv.mean, "low": conv.low, "high": conv.high, "verdict": conv.verdict}
        out[m] = row
    out["teacher assistant"]["assistant_test"] = [r["teacher assistant"]["assistant_test"] for r in runs.values()]
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="seeds 0, 1, ... (default 5)")
    p.add_argument("--epochs", type=int, default=60, help="the full budget in epochs over the 1,000 images")
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2, 3e-2],
                   help="learning rates tried for the student alone (default 0.003 0.01 0.03)")
    p.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    p.add_argument("--extend", nargs="+", default=None, metavar="METHOD",
                   help="add to the saved --json result these methods trained for twice its budget")
    return p.parse_args(argv)


def extend(path: Path, methods) -> int:
    """Train `methods` for twice the saved budget on the saved seeds; add the figures to the result."""
    if path is None or not path.is_file():
        sys.exit("error: --extend needs --json PATH of an existing result")
    result = json.loads(path.read_text())
    unknown = [m for m in methods if m not in METHODS[1:6]]
    if unknown:
        sys.exit(f"error: --extend takes logit or feature methods {METHODS[1:6]}, got {unknown}")
    if {k: v for k, v in result["config"].items() if k != "teacher_sha256"} != CONFIG:
        sys.exit(f"error: {path} was made with another CONFIG; rerun the whole bench")
    torch.set_num_threads(1)
    setting, rec = Setting(CONFIG), result["recipe"]
    epochs, seeds, lr = 2 * rec["num_epochs"], rec["seeds"], rec["lr"]
    result.setdefault("extended", {})
    for m in methods:
        runs = [setting.run_one(m, seed, epochs, lr) for seed in seeds]
        val, test = [r["val"] for r in runs], [r["test"] for r in runs]
        row = {"epochs": epochs, "val": val, "test": test,
               "val_curve_mean": [statistics.fmean(c) for c in zip(*(r["val_curve"] for r in runs))]}
        for key, a, b in (("double_vs_full_val", val, result["methods"][m]["val"]),
                          ("vs_alone", test, result["methods"]["student alone"]["test"]),
                          ("vs_kd", test, result["methods"]["KD (logits)"]["test"])):
            c = compare_paired(a, b)
            row[key] = {"mean": c.mean, "low": c.low, "high": c.high, "verdict": c.verdict, "wins": c.wins}
        result["extended"][m] = row
        d = row["double_vs_full_val"]
        print(f"{m} at {epochs} epochs: test {statistics.fmean(test):.2%}; val, double - full budget "
              f"{d['mean']:+.2%} [{d['low']:+.2%}, {d['high']:+.2%}] {d['verdict']}", flush=True)
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    print(f"updated {path}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.extend:
        return extend(args.json, args.extend)
    if args.seeds < 2 or args.epochs < 2:
        sys.exit("error: need --seeds >= 2 (a comparison over seeds) and --epochs >= 2 (half a budget)")
    if args.json is not None and args.json.exists() and not args.force:
        sys.exit(f"error: {args.json} exists; pass --force to replace it")
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    setting = Setting(CONFIG)
    seeds = list(range(args.seeds))
    lr, lr_val = choose_lr(setting, args.lrs, seeds, args.epochs)
    print(f"chosen lr {lr:g}", flush=True)
    runs, half = {}, {}
    for seed in seeds:
        runs[seed] = setting.run_seed(seed, args.epochs, lr)
        half[seed] = setting.run_seed(seed, args.epochs // 2, lr)
        print(f"seed {seed}: " + ", ".join(f"{m} {runs[seed][m]['test']:.1%}" for m in METHODS), flush=True)
    summary = summarise(runs, half)
    for m in METHODS:
        s = summary[m]
        vs = s.get("vs_alone")
        print(f"{m:<20} test {s['test_mean']:.2%} ± {s['test_std']:.2%}  "
              + (f"vs alone {vs['mean']:+.2%} [{vs['low']:+.2%}, {vs['high']:+.2%}] {vs['verdict']}  " if vs else "")
              + f"val, full - half budget {s['full_vs_half_val']['mean']:+.2%} ({s['full_vs_half_val']['verdict']})")
    result = {"config": {**CONFIG, "teacher_sha256": sha256_file(zoo.teacher_path(CONFIG["dataset"]))},
              "recipe": {"num_epochs": args.epochs, "half_epochs": args.epochs // 2, "lr": lr, "lrs_tried": args.lrs,
                         "seeds": seeds, "steps_per_epoch": len(setting.loader)},
              "lr_val": lr_val, "methods": summary, "wall_s": time.perf_counter() - t_start,
              "torch": torch.__version__}
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    print(" ".join(f"{m.split()[0].lower()}_gain_pt={100 * (summary[m]['test_mean'] - summary['student alone']['test_mean']):+.2f}"
                   for m in METHODS[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
