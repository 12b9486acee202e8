"""How much does distillation help when labels are scarce?  Several seeds of the
student alone vs the distilled student in the book's data-scarce setting.

    OMP_NUM_THREADS=1 python bench/kd_gain.py            # 5 seeds, kdlib.zoo.DISTILL_RECIPE
    OMP_NUM_THREADS=1 python bench/kd_gain.py --seeds 2 --epochs 2 --alone-epochs 20    # a quick look
    OMP_NUM_THREADS=1 python bench/kd_gain.py --no-augment --epochs 150   # without augmentation

The setting (kdlib.zoo.DISTILL_RECIPE): the student may use the labels of 1,000 training
images of MNIST-5k (a stratified subset). The student alone trains on those 1,000 labelled
images, augmented on the fly (random shifts and rotations). The distilled student trains on
the transfer set: all 3,500 training images in 10 fixed versions (the originals and 9
augmented copies, the same augmentation), with the teacher's soft targets computed once on
each, and the same 1,000 labels (the hard term sees only those). Both use the same
architecture, optimiser, learning-rate schedule and seeds. The teacher is the book's
(trained on all 3,500 labels). Choices were made on val; test is reported.

Prints per-seed accuracies, gains and wall times, then mean ± std; the last line is
`gap_closed=<mean over seeds of (kd - alone) / (teacher - alone)> wins=<seeds where kd > alone>/<seeds>`.
With `--json PATH` the figures are also written there (atomically; `--force` to replace).
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
from kdlib.metrics import format_mean_std, gap_closed, mean_std
from kdlib.utils import atomic_write_text
from kdlib.zoo import (DISTILL_RECIPE, distill_scarce, load_teacher, make_scarce_student, scarce_data, train_alone,
                       transfer_loader)


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
    p.add_argument("--sweep", action="store_true",
                   help="instead: distil --sweep-seeds students for every T in --sweep-T and alpha in "
                        "--sweep-alpha, and report val accuracy (how the recipe's T and alpha were chosen)")
    p.add_argument("--sweep-T", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    p.add_argument("--sweep-alpha", type=float, nargs="+", default=[0.7, 0.9, 1.0])
    p.add_argument("--sweep-seeds", type=int, default=2, help="seeds per (T, alpha) in --sweep (default 2)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    return p.parse_args(argv)


def recipe_from(args):
    changes = {"num_epochs": args.epochs, "alone_epochs": args.alone_epochs, "num_labels": args.labels,
               "width": args.width, "copies": args.copies,
               "T": args.T, "alpha": args.alpha}
    if args.no_augment:
        changes["augment"] = False
    return dataclasses.replace(DISTILL_RECIPE, **{k: v for k, v in changes.items() if v is not None})


def run(recipe, seeds: int) -> dict:
    """Train the two students for each seed; return every figure as a dict."""
    torch.set_num_threads(1)
    ds = load_dataset("mnist5k")
    teacher = load_teacher("mnist5k", ds=ds, verbose=False)
    val, test = make_loader(ds.val, 500), make_loader(ds.test, 500)
    teacher_test = evaluate(teacher, test)["accuracy"]
    labelled, transfer = scarce_data(ds, recipe)
    cached = transfer_loader(teacher, transfer, recipe)  # the teacher's logits, computed once
    rows = []
    for seed in range(seeds):
        row = {"seed": seed}
        for name in ("alone", "kd"):
            torch.manual_seed(seed)
            student = make_scarce_student(ds, recipe)
            t0 = time.perf_counter()
            if name == "alone":
                train_alone(student, labelled, recipe, seed=seed)
            else:
                distill_scarce(student, teacher, cached, recipe, seed=seed)
            row[f"{name}_wall_s"] = time.perf_counter() - t0
            row[f"{name}_val"] = evaluate(student, val)["accuracy"]
            row[f"{name}_test"] = evaluate(student, test)["accuracy"]
        row["gain"] = row["kd_test"] - row["alone_test"]
        row["gap_closed"] = gap_closed(row["kd_test"], row["alone_test"], teacher_test)
        rows.append(row)
        print(f"seed {seed}: alone {row['alone_test']:.2%} ({row['alone_wall_s']:.0f} s)  "
              f"kd {row['kd_test']:.2%} ({row['kd_wall_s']:.0f} s)  gain {row['gain']:+.2%}  "
              f"gap closed {row['gap_closed']:.2f}", flush=True)
    alone, kd = [r["alone_test"] for r in rows], [r["kd_test"] for r in rows]
    return {"recipe": dataclasses.asdict(recipe), "teacher_test": teacher_test, "rows": rows,
            "alone_mean": mean_std(alone)[0], "alone_std": mean_std(alone)[1],
            "kd_mean": mean_std(kd)[0], "kd_std": mean_std(kd)[1],
            "gap_closed_mean": mean_std([r["gap_closed"] for r in rows])[0],
            "gap_closed_std": mean_std([r["gap_closed"] for r in rows])[1],
            "gap_closed_of_means": gap_closed(mean_std(kd)[0], mean_std(alone)[0], teacher_test),
            "wins": sum(r["kd_test"] > r["alone_test"] for r in rows), "seeds": len(rows)}


def sweep(recipe, Ts, alphas, seeds: int) -> dict:
    """Distil `seeds` students per (T, alpha); return the val and test accuracy of each."""
    torch.set_num_threads(1)
    ds = load_dataset("mnist5k")
    teacher = load_teacher("mnist5k", ds=ds, verbose=False)
    val, test = make_loader(ds.val, 500), make_loader(ds.test, 500)
    _, transfer = scarce_data(ds, recipe)
    cached = transfer_loader(teacher, transfer, recipe)  # the teacher's logits, computed once
    rows = []
    for T in Ts:
        for alpha in alphas:
            r = dataclasses.replace(recipe, T=T, alpha=alpha)
            row = {"T": T, "alpha": alpha, "val": [], "test": []}
            t0 = time.perf_counter()
            for seed in range(seeds):
                torch.manual_seed(seed)
                student = make_scarce_student(ds, r)
                distill_scarce(student, teacher, cached, r, seed=seed)
                row["val"].append(evaluate(student, val)["accuracy"])
                row["test"].append(evaluate(student, test)["accuracy"])
            row["val_mean"] = mean_std(row["val"])[0]
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print(f"T = {T:<4g} alpha = {alpha:<4g} val {row['val_mean']:.2%} "
                  f"({', '.join(format(v, '.1%') for v in row['val'])}; {row['wall_s']:.0f} s)", flush=True)
    return {"recipe": dataclasses.asdict(recipe), "seeds": seeds, "rows": rows}


def main_sweep(args, recipe) -> int:
    out = sweep(recipe, args.sweep_T, args.sweep_alpha, args.sweep_seeds)
    best = max(out["rows"], key=lambda r: r["val_mean"])  # chosen on val; test is only stored
    print(f"mean val accuracy over {args.sweep_seeds} seeds")
    print(f"{'':>10}" + "".join(f"alpha={a:<7g}" for a in args.sweep_alpha))
    for T in args.sweep_T:
        vals = [r["val_mean"] for r in out["rows"] if r["T"] == T]
        print(f"T = {T:<6g}" + "".join(f"{v:<13.2%}" for v in vals))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    print(f"best_T={best['T']:g} best_alpha={best['alpha']:g} val={best['val_mean']:.4f}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.seeds < 1:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 2
    if args.json is not None and args.json.exists() and not args.force:
        print(f"error: {args.json} exists; pass --force to replace it", file=sys.stderr)
        return 2
    recipe = recipe_from(args)
    print(f"recipe: {recipe}")
    if args.sweep:
        return main_sweep(args, recipe)
    t0 = time.perf_counter()
    out = run(recipe, args.seeds)
    out["total_wall_s"] = time.perf_counter() - t0
    alone, kd = [r["alone_test"] for r in out["rows"]], [r["kd_test"] for r in out["rows"]]
    print(f"teacher (test)        {out['teacher_test']:.2%}")
    print(f"student alone (test)  {format_mean_std(alone, '.2%')}  over {out['seeds']} seeds")
    print(f"distilled (test)      {format_mean_std(kd, '.2%')}")
    gains = ', '.join(format(r['gain'], '+.2%') for r in out['rows'])
    print(f"per-seed gains        {gains}")
    print(f"gap closed            {out['gap_closed_mean']:.3f} ± {out['gap_closed_std']:.3f} per seed; "
          f"{out['gap_closed_of_means']:.3f} from the means")
    print(f"wall time per run     alone {mean_std([r['alone_wall_s'] for r in out['rows']])[0]:.0f} s, "
          f"kd {mean_std([r['kd_wall_s'] for r in out['rows']])[0]:.0f} s; total {out['total_wall_s']:.0f} s")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    print(f"gap_closed={out['gap_closed_mean']:.3f} wins={out['wins']}/{out['seeds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
