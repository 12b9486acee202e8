"""How to teach: fixed views, consistent views and function matching, over epochs, against
the student alone with the same compute, in the book's data-scarce setting (chapter 6).

    OMP_NUM_THREADS=1 python bench/teach.py --json kdlib/assets/results/teach.json        # about 45 min
    OMP_NUM_THREADS=1 python bench/teach.py --choose --json kdlib/assets/results/teach_choice.json
    OMP_NUM_THREADS=1 python bench/teach.py --seeds 2 --epochs 4 --every 2    # a quick look

The setting is kdlib.zoo.DISTILL_RECIPE's (1,000 labels, the 3,500-image transfer set, the
9k-parameter StudentCNN, the book's teacher); the teaching is kdlib.zoo.TEACH_RECIPE's. Three
modes (Beyer et al. 2022), each for `num_epochs` passes over the 3,500 images (28 gradient
steps each, 4,116 in all with the recipe's 147), the same T, alpha and learning rate:

- fixed: the 10 augmented versions of chapter 5's cache, each reused every 10th epoch;
- consistent: a fresh augmented version of every image in every epoch;
- function_matching: a fresh mixup of two augmented images in every epoch.

The teacher labels exactly the view the student sees, in every mode; its outputs on all the
views are computed once (`kdlib.inference.cache_teacher_outputs`) and shared by the seeds,
which costs one teacher pass per view instead of one per view and seed (running the teacher
online with `distill(augment=..., mixup=...)` teaches the same way, at about five times the
cost here). `--cache-dir` keeps those outputs on disk between runs.

Every `--every` epochs each student's accuracy, top-1 agreement and KL with the teacher are
recorded (`kdlib.inference.track_fidelity`) on the training images (train), a fresh augmented
version of them that no student saw (views), val and test. The baseline is the student alone
with the same number of steps and chapter 5's choices for it (kdlib.zoo.train_alone). Pairs
are compared with `kdlib.metrics.compare_paired` (paired by seed, 95 % t-interval) on test.

`--choose` instead picks the recipe's T and learning rate for function matching on val.

The last line is `gap_closed=<mean over seeds, TEACH_RECIPE's mode against the student alone>
wins=<seeds where it beats the student alone>/<seeds> agreement=<its mean test agreement>`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from kdlib.data import as_tensors, load_dataset, make_loader, random_shift_rotate
from kdlib.inference import cache_teacher_outputs, evaluate, fidelity, predict_logits, track_fidelity
from kdlib.metrics import compare_paired, gap_closed, mean_std
from kdlib.utils import atomic_write_text, sha256_file
from kdlib.zoo import (DISTILL_RECIPE, TEACH_RECIPE, TEACHING_MODES, load_teacher, make_scarce_student, scarce_data,
                       teach_scarce, teacher_path, teaching_views, train_alone)

FIXED_COPIES = 10  # chapter 5's cache
PAIRS = (("function_matching", "alone"), ("consistent", "alone"), ("fixed", "alone"),
         ("consistent", "fixed"), ("function_matching", "fixed"), ("function_matching", "consistent"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0, 1, ...); default 5")
    p.add_argument("--modes", nargs="+", choices=TEACHING_MODES, default=list(TEACHING_MODES))
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--T", type=float, default=None, help="override the recipe's temperature")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--every", type=int, default=7, help="record fidelity every this many epochs (default 7)")
    p.add_argument("--no-alone", action="store_true", help="skip the student alone (no gap closed then)")
    p.add_argument("--choose", action="store_true", help="instead: choose T and lr for function matching on val")
    p.add_argument("--choose-T", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--choose-lr", type=float, nargs="+", default=[5e-3, 1e-2])
    p.add_argument("--choose-seeds", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=None, help="keep the teacher's outputs on the views here")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    return p.parse_args(argv)


def recipe_from(args):
    changes = {"num_epochs": args.epochs, "T": args.T, "lr": args.lr}
    return dataclasses.replace(TEACH_RECIPE, **{k: v for k, v in changes.items() if v is not None})


def mode_recipe(recipe, mode):
    return dataclasses.replace(recipe, mode=mode, copies=FIXED_COPIES if mode == "fixed" else None)


def cached_views(teacher, transfer, recipe, cache_dir):
    """The loader of `recipe`'s views with the teacher's logits (from `cache_dir` when there)."""
    views = teaching_views(transfer, recipe)
    loader = make_loader(views, recipe.batch_size, shuffle=True)
    if cache_dir is None:
        return cache_teacher_outputs(teacher, loader)
    key = (f"{recipe.mode}_{len(views)}_{recipe.mixup:g}_{recipe.view_seed}_"
           f"{sha256_file(teacher_path('mnist5k'))[:12]}.pt")
    path = Path(cache_dir) / key
    if path.is_file():
        return cache_teacher_outputs(teacher, loader, logits=torch.load(path, weights_only=True))
    cached = cache_teacher_outputs(teacher, loader)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cached.dataset.tensors[2], path)
    return cached


def eval_loaders(ds):
    """The loaders fidelity is measured on: train images, fresh views of them, val, test."""
    X, y = as_tensors(ds.train)
    views = TensorDataset(random_shift_rotate(X, generator=torch.Generator().manual_seed(12345)), y)
    return {"train": make_loader(ds.train, 500), "views": make_loader(views, 500),
            "val": make_loader(ds.val, 500), "test": make_loader(ds.test, 500)}


def final(student, loaders, targets) -> dict:
    """Accuracy, agreement and KL of a trained student on every evaluation loader."""
    return {f"{name}_{k}": v for name, loader in loaders.items()
            for k, v in fidelity(student, loader, targets[name]).items()}


def run_mode(mode, recipe, ds, teacher, transfer, seeds, every, loaders, targets, cache_dir) -> dict:
    r = mode_recipe(recipe, mode)
    t0 = time.perf_counter()
    cached = cached_views(teacher, transfer, r, cache_dir)
    out = {"recipe": dataclasses.asdict(r), "teacher_pass_s": time.perf_counter() - t0, "rows": []}
    track = track_fidelity(teacher, loaders, every=every)
    for seed in range(seeds):
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        student = make_scarce_student(ds, DISTILL_RECIPE)
        h = teach_scarce(student, teacher, cached, len(transfer), r, seed=seed, callback=track)
        row = {"seed": seed, "wall_s": time.perf_counter() - t0,
               "steps": r.num_epochs * -(-len(transfer) // r.batch_size), **final(student, loaders, targets), "curve": h.metrics}
        out["rows"].append(row)
        print(f"{mode:<18} seed {seed}: test {row['test_accuracy']:.2%}, agreement {row['test_agreement']:.2%}, "
              f"KL {row['test_kl']:.4f}, train agreement {row['train_agreement']:.2%} ({row['wall_s']:.0f} s)",
              flush=True)
    del cached
    return out


def run_alone(recipe, ds, labelled, seeds, loaders, targets) -> dict:
    steps = recipe.num_epochs * -(-len(ds.train) // recipe.batch_size)
    per_pass = -(-DISTILL_RECIPE.num_labels // DISTILL_RECIPE.batch_size)
    r = dataclasses.replace(DISTILL_RECIPE, alone_epochs=round(steps / per_pass))
    out = {"recipe": dataclasses.asdict(r), "steps": r.alone_epochs * per_pass, "rows": []}
    for seed in range(seeds):
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        student = make_scarce_student(ds, r)
        train_alone(student, labelled, r, seed=seed)
        row = {"seed": seed, "wall_s": time.perf_counter() - t0, **final(student, loaders, targets)}
        out["rows"].append(row)
        print(f"{'alone':<18} seed {seed}: test {row['test_accuracy']:.2%}, agreement {row['test_agreement']:.2%} "
              f"({row['wall_s']:.0f} s)", flush=True)
    return out


def _paired(a, b) -> dict:
    c = compare_paired(a, b)
    return {"mean": c.mean, "low": c.low, "high": c.high, "verdict": c.verdict, "wins": c.wins, "n": c.n,
            "text": c.format("+.2%")}


def summarise(out, teacher_test) -> None:
    """Paired comparisons on test accuracy (and agreement), and the gap closed of each mode."""
    students = {**out["modes"], **({"alone": out["alone"]} if out.get("alone") else {})}
    tests = {k: [r["test_accuracy"] for r in v["rows"]] for k, v in students.items()}
    agree = {k: [r["test_agreement"] for r in v["rows"]] for k, v in students.items()}
    out["comparisons"], out["agreement_comparisons"] = {}, {}
    for a, b in PAIRS:
        if a in tests and b in tests and len(tests[a]) >= 2:
            out["comparisons"][f"{a}_vs_{b}"] = _paired(tests[a], tests[b])
            out["agreement_comparisons"][f"{a}_vs_{b}"] = _paired(agree[a], agree[b])
    if "alone" in tests:
        for mode in out["modes"]:
            gaps = [gap_closed(k, a, teacher_test) for k, a in zip(tests[mode], tests["alone"])]
            out["modes"][mode]["gap_closed"] = mean_std(gaps)[0]
            out["modes"][mode]["gap_closed_per_seed"] = gaps


def fidelity_targets(teacher, loaders) -> dict:
    return {name: predict_logits(teacher, loader)[0] for name, loader in loaders.items()}


def choose(recipe, args, ds, teacher, transfer) -> dict:
    """Function matching's T and learning rate on val (mean over --choose-seeds seeds)."""
    r0 = mode_recipe(recipe, "function_matching")
    cached = cached_views(teacher, transfer, r0, args.cache_dir)
    val = make_loader(ds.val, 500)
    rows = []
    for T in args.choose_T:
        for lr in args.choose_lr:
            r = dataclasses.replace(r0, T=T, lr=lr)
            row = {"T": T, "lr": lr, "val": []}
            t0 = time.perf_counter()
            for seed in range(args.choose_seeds):
                torch.manual_seed(seed)
                student = make_scarce_student(ds, DISTILL_RECIPE)
                teach_scarce(student, teacher, cached, len(transfer), r, seed=seed)
                row["val"].append(evaluate(student, val)["accuracy"])
            row["val_mean"], row["wall_s"] = mean_std(row["val"])[0], time.perf_counter() - t0
            rows.append(row)
            print(f"T = {T:g}, lr = {lr:g}: val {row['val_mean']:.2%} "
                  f"({', '.join(format(v, '.1%') for v in row['val'])}; {row['wall_s']:.0f} s)", flush=True)
    best = max(rows, key=lambda row: row["val_mean"])
    fixed = {k: v for k, v in dataclasses.asdict(r0).items() if k not in ("T", "lr")}
    return {"recipe": fixed, "seeds": args.choose_seeds, "rows": rows, "best": {"T": best["T"], "lr": best["lr"]}}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.seeds < 2 or args.every < 1:
        print("error: --seeds must be at least 2 (a comparison needs 2) and --every at least 1", file=sys.stderr)
        return 2
    if args.json is not None and args.json.exists() and not args.force:
        print(f"error: {args.json} exists; pass --force to replace it", file=sys.stderr)
        return 2
    recipe = recipe_from(args)
    print(f"recipe: {recipe}")
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    ds = load_dataset("mnist5k")
    teacher = load_teacher("mnist5k", ds=ds, verbose=False)
    labelled, transfer = scarce_data(ds, DISTILL_RECIPE)
    if args.choose:
        out = choose(recipe, args, ds, teacher, transfer)
        out["total_wall_s"] = time.perf_counter() - t_start
        if args.json is not None:
            atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
            print(f"wrote {args.json}")
        print(f"best_T={out['best']['T']:g} best_lr={out['best']['lr']:g}")
        return 0
    loaders = eval_loaders(ds)
    targets = fidelity_targets(teacher, loaders)
    teacher_test = evaluate(teacher, loaders["test"])["accuracy"]
    out = {"recipe": dataclasses.asdict(recipe), "setting": dataclasses.asdict(DISTILL_RECIPE),
           "teacher_test": teacher_test, "seeds": args.seeds, "every": args.every, "modes": {}}
    for mode in args.modes:
        out["modes"][mode] = run_mode(mode, recipe, ds, teacher, transfer, args.seeds, args.every, loaders, targets,
                                      args.cache_dir)
    if not args.no_alone:
        out["alone"] = run_alone(recipe, ds, labelled, args.seeds, loaders, targets)
    summarise(out, teacher_test)
    out["total_wall_s"] = time.perf_counter() - t_start
    for key, c in out["comparisons"].items():
        print(f"{key:<34} {c['text']}  wins {c['wins']}/{c['n']}")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    print(f"total wall time {out['total_wall_s']:.0f} s")
    main_mode = recipe.mode if recipe.mode in out["modes"] else next(iter(out["modes"]))
    m = out["modes"][main_mode]
    agreement = mean_std([r["test_agreement"] for r in m["rows"]])[0]
    if "gap_closed" in m:
        wins = out["comparisons"][f"{main_mode}_vs_alone"]["wins"]
        print(f"gap_closed={m['gap_closed']:.3f} wins={wins}/{args.seeds} agreement={agreement:.4f}")
    else:
        print(f"mode={main_mode} agreement={agreement:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
