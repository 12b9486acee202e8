"""How much does distillation help when labels are scarce?  The student alone, given the same
compute, against the distilled student in the book's data-scarce setting, over seeds, with
the control that credits the gain to soft targets.

    OMP_NUM_THREADS=1 python bench/kd_gain.py --json kdlib/assets/results/kd_gain.json   # 5 seeds, about 35 min
    OMP_NUM_THREADS=1 python bench/kd_gain.py --alone-sweep --json kdlib/assets/results/kd_alone_sweep.json
    OMP_NUM_THREADS=1 python bench/kd_gain.py --sweep --json kdlib/assets/results/kd_sweep.json
    OMP_NUM_THREADS=1 python bench/kd_gain.py --seeds 2 --epochs 1 --alone-epochs 34   # a quick look

The setting (kdlib.zoo.DISTILL_RECIPE): the students may use the labels of 1,000 training
images of MNIST-5k (a stratified subset). Four students per seed, the same architecture,
initial weights, optimiser (AdamW, cosine schedule) and seed:

- kd: the distilled student, trained on the transfer set (all 3,500 training images in 10
  fixed versions, the originals and 9 augmented copies, with the teacher's soft targets
  computed once on each) for `num_epochs` passes: 4,110 gradient steps;
- alone: the student alone with the same compute, `alone_epochs` passes over the 1,000
  labelled images (4,112 steps), with its own augmentation, mixup and learning rate chosen
  on val by `--alone-sweep`, as T and alpha were for kd by `--sweep`;
- hard: the control, kd's images, steps and learning rate with the teacher's top class as a
  hard label on the unlabelled images (`kdlib.zoo.pseudo_label_loss`): everything but the
  soft targets;
- alone_short: the baseline chapter 5 used before (100 passes, 800 steps, light
  augmentation), to show what an unequal budget does to the comparison.

Pairs are compared with `kdlib.metrics.compare_paired` (paired by seed, 95 % t-interval).
The teacher is the book's (trained on all 3,500 labels). Choices are made on val; test is
reported. The last line is `gap_closed=<mean over seeds of (kd - alone) / (teacher - alone)>
wins=<seeds where kd > alone>/<seeds>`. With `--json PATH` everything is also written there
(atomically; `--force` to replace an existing file).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from kdlib.data import load_dataset, make_loader
from kdlib.inference import evaluate
from kdlib.metrics import compare_paired, format_mean_std, gap_closed, mean_std
from kdlib.utils import atomic_write_text
from kdlib.zoo import (AUGMENTATIONS, DISTILL_RECIPE, distill_scarce, load_teacher, make_scarce_student,
                       pseudo_label_loss, scarce_data, scarce_steps, train_alone, transfer_loader)

STUDENTS = ("alone", "kd", "hard", "alone_short")
PAIRS = (("kd", "alone"), ("kd", "hard"), ("hard", "alone"), ("kd", "alone_short"), ("alone", "alone_short"))
SHORT_ALONE = {"alone_epochs": 100, "alone_augment": "light", "alone_mixup": None}  # the earlier baseline


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0, 1, ...); default 5")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's distillation epochs")
    p.add_argument("--alone-epochs", type=int, default=None, help="override the recipe's student-alone epochs")
    p.add_argument("--labels", type=int, default=None, help="override the recipe's number of labelled images")
    p.add_argument("--width", type=int, default=None, help="override the recipe's student width")
    p.add_argument("--no-augment", action="store_true", help="no augmentation for either student")
    p.add_argument("--copies", type=int, default=None, help="override the recipe's versions of the transfer set")
    p.add_argument("--T", type=float, default=None, help="override the recipe's temperature")
    p.add_argument("--alpha", type=float, default=None, help="override the recipe's alpha")
    p.add_argument("--students", nargs="+", choices=STUDENTS, default=list(STUDENTS),
                   help="which students to train (default all four)")
    p.add_argument("--sweep", action="store_true",
                   help="instead: distil --sweep-seeds students for every T in --sweep-T and alpha in "
                        "--sweep-alpha, and report val accuracy (how the recipe's T and alpha were chosen)")
    p.add_argument("--sweep-T", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    p.add_argument("--sweep-alpha", type=float, nargs="+", default=[0.7, 0.9, 1.0])
    p.add_argument("--sweep-seeds", type=int, default=2, help="seeds per setting in --sweep / --alone-sweep")
    p.add_argument("--alone-sweep", action="store_true",
                   help="instead: choose the student alone's augmentation and mixup (at the recipe's lr), then "
                        "its learning rate, on val (how the recipe's alone_* fields were chosen)")
    p.add_argument("--sweep-lr", type=float, nargs="+", default=[2e-3, 5e-3, 1e-2])
    p.add_argument("--sweep-mixup", type=float, nargs="+", default=[0.4])
    p.add_argument("--reuse", type=Path, default=None,
                   help="with --alone-sweep: reuse the rows of an earlier sweep file of the same recipe")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    return p.parse_args(argv)


def recipe_from(args):
    changes = {"num_epochs": args.epochs, "alone_epochs": args.alone_epochs, "num_labels": args.labels,
               "width": args.width, "copies": args.copies, "T": args.T, "alpha": args.alpha}
    if args.no_augment:
        changes.update(augment=False, alone_augment="none", alone_mixup=None)
    return dataclasses.replace(DISTILL_RECIPE, **{k: v for k, v in changes.items() if v is not None})


def setting(recipe):
    """The data, the teacher and its logits on the transfer set's copies (computed once)."""
    torch.set_num_threads(1)
    ds = load_dataset("mnist5k")
    teacher = load_teacher("mnist5k", ds=ds, verbose=False)
    labelled, transfer = scarce_data(ds, recipe)
    return ds, teacher, labelled, transfer_loader(teacher, transfer, recipe)


def train_student(name, ds, teacher, labelled, cached, recipe, seed):
    """Train student `name` (one of STUDENTS) with `seed`; return it."""
    torch.manual_seed(seed)
    student = make_scarce_student(ds, recipe)
    if name == "alone":
        train_alone(student, labelled, recipe, seed=seed)
    elif name == "alone_short":
        train_alone(student, labelled, dataclasses.replace(recipe, **SHORT_ALONE, alone_lr=recipe.lr), seed=seed)
    elif name == "kd":
        distill_scarce(student, teacher, cached, recipe, seed=seed)
    else:
        distill_scarce(student, teacher, cached, recipe, seed=seed, logit_loss=pseudo_label_loss)
    return student


def comparisons(rows, names) -> dict:
    """compare_paired on test accuracy for every pair of PAIRS whose students were trained."""
    out = {}
    for a, b in PAIRS:
        if a in names and b in names and len(rows) >= 2:
            c = compare_paired([r[f"{a}_test"] for r in rows], [r[f"{b}_test"] for r in rows])
            out[f"{a}_vs_{b}"] = {"mean": c.mean, "low": c.low, "high": c.high, "verdict": c.verdict,
                                  "wins": c.wins, "n": c.n, "text": c.format("+.2%")}
    return out


def run(recipe, seeds: int, names=STUDENTS) -> dict:
    """Train the students for each seed; return every figure as a dict."""
    ds, teacher, labelled, cached = setting(recipe)
    val, test = make_loader(ds.val, 500), make_loader(ds.test, 500)
    teacher_test = evaluate(teacher, test)["accuracy"]
    rows = []
    for seed in range(seeds):
        row = {"seed": seed}
        for name in names:
            t0 = time.perf_counter()
            student = train_student(name, ds, teacher, labelled, cached, recipe, seed)
            row[f"{name}_wall_s"] = time.perf_counter() - t0
            row[f"{name}_val"] = evaluate(student, val)["accuracy"]
            e = evaluate(student, test, teacher=teacher)
            row[f"{name}_test"], row[f"{name}_agreement"] = e["accuracy"], e["agreement"]
        if "kd" in names and "alone" in names:
            row["gain"] = row["kd_test"] - row["alone_test"]
            row["gap_closed"] = gap_closed(row["kd_test"], row["alone_test"], teacher_test)
        rows.append(row)
        print(f"seed {seed}: " + "  ".join(f"{n} {row[f'{n}_test']:.2%} ({row[f'{n}_wall_s']:.0f} s)" for n in names)
              + (f"  gap closed {row['gap_closed']:.2f}" if "gap_closed" in row else ""), flush=True)
    out = {"recipe": dataclasses.asdict(recipe), "steps": scarce_steps(recipe, len(ds.train)),
           "short_alone": SHORT_ALONE, "teacher_test": teacher_test, "students": list(names), "rows": rows,
           "seeds": len(rows), "comparisons": comparisons(rows, names)}
    for name in names:
        out[f"{name}_mean"], out[f"{name}_std"] = mean_std([r[f"{name}_test"] for r in rows])
    if "gap_closed" in rows[0]:
        out["gap_closed_mean"], out["gap_closed_std"] = mean_std([r["gap_closed"] for r in rows])
        out["wins"] = sum(r["kd_test"] > r["alone_test"] for r in rows)
        for other in ("hard", "alone_short"):
            if other in names:
                base = "alone" if other == "hard" else other
                num = "hard" if other == "hard" else "kd"
                out[f"gap_closed_{num}_vs_{base}"] = mean_std(
                    [gap_closed(r[f"{num}_test"], r[f"{base}_test"], teacher_test) for r in rows])[0]
    return out


def sweep(recipe, Ts, alphas, seeds: int) -> dict:
    """Distil `seeds` students per (T, alpha); return the val and test accuracy of each."""
    ds, teacher, _, cached = setting(recipe)
    val, test = make_loader(ds.val, 500), make_loader(ds.test, 500)
    rows = []
    for T in Ts:
        for alpha in alphas:
            r = dataclasses.replace(recipe, T=T, alpha=alpha)
            row = {"T": T, "alpha": alpha, "val": [], "test": []}
            t0 = time.perf_counter()
            for seed in range(seeds):
                student = train_student("kd", ds, teacher, None, cached, r, seed)
                row["val"].append(evaluate(student, val)["accuracy"])
                row["test"].append(evaluate(student, test)["accuracy"])
            row["val_mean"] = mean_std(row["val"])[0]
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print(f"T = {T:<4g} alpha = {alpha:<4g} val {row['val_mean']:.2%} "
                  f"({', '.join(format(v, '.1%') for v in row['val'])}; {row['wall_s']:.0f} s)", flush=True)
    return {"recipe": dataclasses.asdict(recipe), "seeds": seeds, "rows": rows}


def _alone_row(ds, labelled, recipe, seeds, val, test) -> dict:
    row = {"alone_augment": recipe.alone_augment, "alone_mixup": recipe.alone_mixup, "alone_lr": recipe.alone_lr,
           "val": [], "test": []}
    t0 = time.perf_counter()
    for seed in range(seeds):
        student = train_student("alone", ds, None, labelled, None, recipe, seed)
        row["val"].append(evaluate(student, val)["accuracy"])
        row["test"].append(evaluate(student, test)["accuracy"])
    row["val_mean"], row["wall_s"] = mean_std(row["val"])[0], time.perf_counter() - t0
    print(f"augment {row['alone_augment']:<6} mixup {str(row['alone_mixup']):<5} lr {row['alone_lr']:<7g} "
          f"val {row['val_mean']:.2%} ({', '.join(format(v, '.1%') for v in row['val'])}; {row['wall_s']:.0f} s)",
          flush=True)
    return row


def alone_sweep(recipe, lrs, mixups, seeds: int, earlier: list | None = None) -> dict:
    """The student alone's choices on val, one coordinate at a time: first augmentation x
    mixup at the recipe's learning rate, then the learning rate for the best of those (the
    grid is extended by factors of 2 while its best value is at an end). Rows of `earlier`
    (an earlier sweep of the same recipe and seeds) are reused instead of retrained."""
    torch.set_num_threads(1)
    ds = load_dataset("mnist5k")
    labelled, _ = scarce_data(ds, recipe)
    val, test = make_loader(ds.val, 500), make_loader(ds.test, 500)
    rows = []

    def row_for(aug, mix, lr):
        for row in rows:
            if (row["alone_augment"], row["alone_mixup"], row["alone_lr"]) == (aug, mix, lr):
                return row
        old = [r for r in earlier or [] if (r["alone_augment"], r["alone_mixup"], r["alone_lr"]) == (aug, mix, lr)]
        r = dataclasses.replace(recipe, alone_augment=aug, alone_mixup=mix, alone_lr=lr)
        rows.append(old[0] if old else _alone_row(ds, labelled, r, seeds, val, test))
        return rows[-1]

    for aug in AUGMENTATIONS:
        for mix in (None, *mixups):
            row_for(aug, mix, recipe.lr)
    best = max(rows, key=lambda row: row["val_mean"])  # the first of equals: the simplest
    grid = sorted({*lrs, recipe.lr})
    for _ in range(4):  # at most 4 extensions of the grid
        for lr in grid:
            row_for(best["alone_augment"], best["alone_mixup"], lr)
        on_grid = [r for r in rows if r["alone_augment"] == best["alone_augment"]
                   and r["alone_mixup"] == best["alone_mixup"]]
        best_lr = max(on_grid, key=lambda row: row["val_mean"])["alone_lr"]
        if best_lr not in (grid[0], grid[-1]):
            break
        grid = [*grid, grid[-1] * 2] if best_lr == grid[-1] else [grid[0] / 2, *grid]
    best = max(rows, key=lambda row: row["val_mean"])
    chosen = {k: best[k] for k in ("alone_augment", "alone_mixup", "alone_lr")}
    fixed = {k: v for k, v in dataclasses.asdict(recipe).items() if k not in chosen}
    return {"recipe": fixed, "seeds": seeds, "rows": rows, "best": chosen,
            "steps": scarce_steps(recipe, len(ds.train))["alone"]}


def write(path, out, force=False) -> None:
    if path is not None:
        atomic_write_text(path, json.dumps(out, indent=1) + "\n")
        print(f"wrote {path}")


def main_sweep(args, recipe) -> int:
    out = sweep(recipe, args.sweep_T, args.sweep_alpha, args.sweep_seeds)
    best = max(out["rows"], key=lambda r: r["val_mean"])  # chosen on val; test is only stored
    print(f"mean val accuracy over {args.sweep_seeds} seeds")
    print(f"{'':>10}" + "".join(f"alpha={a:<7g}" for a in args.sweep_alpha))
    for T in args.sweep_T:
        vals = [r["val_mean"] for r in out["rows"] if r["T"] == T]
        print(f"T = {T:<6g}" + "".join(f"{v:<13.2%}" for v in vals))
    write(args.json, out)
    print(f"best_T={best['T']:g} best_alpha={best['alpha']:g} val={best['val_mean']:.4f}")
    return 0


def main_alone_sweep(args, recipe) -> int:
    earlier = None
    if args.reuse is not None:
        old = json.loads(args.reuse.read_text())
        same = old.get("seeds") == args.sweep_seeds and old.get("recipe") == {
            k: v for k, v in dataclasses.asdict(recipe).items() if k in old.get("recipe", {})}
        if not same:
            print(f"error: {args.reuse} is a sweep of another recipe or number of seeds", file=sys.stderr)
            return 2
        earlier = old["rows"]
    out = alone_sweep(recipe, args.sweep_lr, args.sweep_mixup, args.sweep_seeds, earlier)
    write(args.json, out)
    b = out["best"]
    best_val = max(r["val_mean"] for r in out["rows"])
    print(f"best_augment={b['alone_augment']} best_mixup={b['alone_mixup']} best_lr={b['alone_lr']:g} "
          f"val={best_val:.4f}")
    return 0


def report(out) -> None:
    names = out["students"]
    print(f"steps per student     {out['steps']}")
    print(f"teacher (test)        {out['teacher_test']:.2%}")
    for name in names:
        print(f"{name:<12} (test)    {format_mean_std([r[f'{name}_test'] for r in out['rows']], '.2%')}  "
              f"agreement {mean_std([r[f'{name}_agreement'] for r in out['rows']])[0]:.2%}  "
              f"{mean_std([r[f'{name}_wall_s'] for r in out['rows']])[0]:.0f} s per run")
    for key, c in out["comparisons"].items():
        print(f"{key:<22} {c['text']}  wins {c['wins']}/{c['n']}")
    if "gap_closed_mean" in out:
        print(f"gap closed            {out['gap_closed_mean']:.3f} ± {out['gap_closed_std']:.3f} per seed "
              f"(against the student alone with the same compute)")
    print(f"total wall time       {out['total_wall_s']:.0f} s")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.seeds < 1 or args.sweep_seeds < 1:
        print("error: --seeds and --sweep-seeds must be at least 1", file=sys.stderr)
        return 2
    if args.json is not None and args.json.exists() and not args.force:
        print(f"error: {args.json} exists; pass --force to replace it", file=sys.stderr)
        return 2
    recipe = recipe_from(args)
    print(f"recipe: {recipe}")
    if args.sweep:
        return main_sweep(args, recipe)
    if args.alone_sweep:
        return main_alone_sweep(args, recipe)
    t0 = time.perf_counter()
    out = run(recipe, args.seeds, [n for n in STUDENTS if n in args.students])
    out["total_wall_s"] = time.perf_counter() - t0
    report(out)
    write(args.json, out)
    if "gap_closed_mean" in out:
        print(f"gap_closed={out['gap_closed_mean']:.3f} wins={out['wins']}/{out['seeds']}")
    else:
        print(f"students={','.join(out['students'])} seeds={out['seeds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
