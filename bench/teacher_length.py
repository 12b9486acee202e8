"""Does a longer-trained teacher make a better student, and does the answer depend on the
student's size?  Checkpoints of ONE teacher run against students of several widths, in the
data-scarce setting of chapter 5, over seeds.

    OMP_NUM_THREADS=1 python bench/teacher_length.py --json kdlib/assets/results/teacher_length.json   # about 45 min
    OMP_NUM_THREADS=1 python bench/teacher_length.py --seeds 2 --widths 8 --epochs 1   # a quick look

The teacher: one run of kdlib.zoo.TEACHER_RECIPE (15 epochs, cosine learning-rate decay, seed
0), trained here, with its weights kept after epochs 1, 3 and 15 (`--teacher-epochs`). The
early checkpoints are early-stopped teachers as in Cho & Hariharan (2019): taken from the
middle of the full schedule, where the learning rate is still high, not teachers trained on
a shorter schedule of their own. The 15-epoch checkpoint is this run's end, which repeats the
book's shipped teacher up to rounding (both are measured).

The students: kdlib.zoo.DISTILL_RECIPE (T, alpha, the 10 augmented copies of the transfer
set), except `--epochs` passes (5: 1,370 gradient steps, to keep the grid affordable) and the
width (`--widths`, 4, 8 and 16; 8 is the book's student). Beside them, per width, the student
alone with the same number of steps and the recipe's own alone_* choices. Every cell has the
same seeds 0..n-1; pairs are compared with `kdlib.metrics.compare_paired` (paired by seed,
95 % t-interval) on test accuracy. Teachers are measured on val and test.

The last line is `best_teacher_epochs=<width>:<epochs with the best mean student>,...
verdict_15_vs_<shortest>=<width>:<verdict>,...`.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from kdlib.data import load_dataset, make_loader
from kdlib.inference import evaluate, predict_logits
from kdlib.metrics import compare_paired, expected_calibration_error, mean_confidence, mean_std
from kdlib.models import TeacherCNN
from kdlib.utils import atomic_write_text, seed_everything
from kdlib.zoo import (DISTILL_RECIPE, TEACHER_RECIPE, distill_scarce, load_teacher, make_scarce_student,
                       scarce_data, scarce_steps, train_alone, train_teacher, transfer_loader)


def teacher_stats(teacher, loader) -> dict:
    """Accuracy, NLL, ECE and mean confidence of `teacher` on `loader`."""
    logits, y = predict_logits(teacher, loader)
    probs = torch.softmax(logits, 1)
    return {"accuracy": (logits.argmax(1) == y).double().mean().item(),
            "nll": torch.nn.functional.cross_entropy(logits, y).item(),
            "ece": expected_calibration_error(probs, y, 15), "confidence": mean_confidence(probs)}


def teacher_checkpoints(ds, epochs: list[int]) -> dict:
    """One run of TEACHER_RECIPE; {epoch: teacher in eval mode} after each epoch in `epochs`."""
    kept = {}

    def keep(epoch, model):
        if epoch + 1 in epochs:
            kept[epoch + 1] = copy.deepcopy(model.state_dict())

    seed_everything(TEACHER_RECIPE.seed)
    model = TeacherCNN(ds.input_shape, ds.num_classes, width=TEACHER_RECIPE.width)
    train_teacher(model, ds, dataclasses.replace(TEACHER_RECIPE, num_epochs=max(epochs)), progress=False,
                  callback=keep)
    teachers = {}
    for e in epochs:
        t = TeacherCNN(ds.input_shape, ds.num_classes, width=TEACHER_RECIPE.width)
        t.load_state_dict(kept[e])
        teachers[e] = t.eval()
    return teachers


def student_runs(ds, labelled, cached, teacher, recipe, seeds, test):
    """Test accuracy, agreement and KL with `teacher` of one student per seed (alone when
    `teacher` is None)."""
    out = {"test": [], "agreement": [], "wall_s": []}
    for seed in range(seeds):
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        student = make_scarce_student(ds, recipe)
        if teacher is None:
            train_alone(student, labelled, recipe, seed=seed)
        else:
            distill_scarce(student, teacher, cached, recipe, seed=seed)
        out["wall_s"].append(time.perf_counter() - t0)
        e = evaluate(student, test, teacher=teacher) if teacher is not None else evaluate(student, test)
        out["test"].append(e["accuracy"])
        if teacher is not None:
            out["agreement"].append(e["agreement"])
    return out


def _paired(a, b) -> dict:
    c = compare_paired(a, b)
    return {"mean": c.mean, "low": c.low, "high": c.high, "verdict": c.verdict, "wins": c.wins, "n": c.n,
            "text": c.format("+.2%")}


def compare_cells(cells, alone, epochs, widths) -> dict:
    """Per width: the longest-trained teacher against each shorter one, and each against alone."""
    out = {}
    longest = max(epochs)
    for w in widths:
        by_e = {c["teacher_epochs"]: c["test"] for c in cells if c["width"] == w}
        for e in epochs:
            if e != longest:
                out[f"w{w}_t{longest}_vs_t{e}"] = _paired(by_e[longest], by_e[e])
            out[f"w{w}_t{e}_vs_alone"] = _paired(by_e[e], alone[w]["test"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher-epochs", type=int, nargs="+", default=[1, 3, 15])
    p.add_argument("--widths", type=int, nargs="+", default=[4, 8, 16], help="student widths (8: the book's)")
    p.add_argument("--seeds", type=int, default=5, help="student seeds 0, 1, ... (default 5)")
    p.add_argument("--epochs", type=int, default=5, help="distillation passes over the copies (default 5)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args(argv)
    if args.json is not None and args.json.exists() and not args.force:
        print(f"error: {args.json} exists; pass --force to replace it", file=sys.stderr)
        return 2
    if args.seeds < 2 or min(args.teacher_epochs) < 1:
        print("error: --seeds must be at least 2 (a comparison needs 2) and --teacher-epochs at least 1",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    ds = load_dataset("mnist5k")
    val, test = make_loader(ds.val, 500), make_loader(ds.test, 500)
    epochs = sorted(set(args.teacher_epochs))
    teachers = teacher_checkpoints(ds, epochs)
    shipped = load_teacher("mnist5k", ds=ds, verbose=False)
    teacher_rows = [{"teacher_epochs": e, "teacher_val": teacher_stats(t, val), "teacher_test": teacher_stats(t, test)}
                    for e, t in teachers.items()]
    for r in teacher_rows:
        tt = r["teacher_test"]
        print(f"teacher checkpoint after {r['teacher_epochs']:>2} epochs: test {tt['accuracy']:.2%}, NLL "
              f"{tt['nll']:.3f}, ECE {tt['ece']:.3f}, confidence {tt['confidence']:.3f}", flush=True)
    base = dataclasses.replace(DISTILL_RECIPE, num_epochs=args.epochs)
    steps = scarce_steps(base, len(ds.train))["distilled"]
    base = dataclasses.replace(base, alone_epochs=round(steps / -(-base.num_labels // base.batch_size)))
    labelled, transfer = scarce_data(ds, base)
    cached = {e: transfer_loader(t, transfer, base) for e, t in teachers.items()}  # each teacher's logits, once
    cells, alone = [], {}
    for w in args.widths:
        recipe = dataclasses.replace(base, width=w)
        alone[w] = student_runs(ds, labelled, None, None, recipe, args.seeds, test)
        print(f"width {w:>2}, alone: {mean_std(alone[w]['test'])[0]:.2%}", flush=True)
        for e in epochs:
            cell = {"width": w, "teacher_epochs": e,
                    **student_runs(ds, labelled, cached[e], teachers[e], recipe, args.seeds, test)}
            cells.append(cell)
            m, s = mean_std(cell["test"])
            print(f"width {w:>2}, teacher {e:>2} epochs: students {m:.2%} ± {s:.2%}, agreement "
                  f"{mean_std(cell['agreement'])[0]:.2%} ({mean_std(cell['wall_s'])[0]:.0f} s per run)", flush=True)
    comparisons = compare_cells(cells, alone, epochs, args.widths)
    for k, c in comparisons.items():
        print(f"{k:<22} {c['text']}")
    out = {"teacher_recipe": dataclasses.asdict(TEACHER_RECIPE), "student_recipe": dataclasses.asdict(base),
           "steps": {"distilled": steps, "alone": scarce_steps(base, len(ds.train))["alone"]},
           "teacher_epochs": epochs, "widths": args.widths, "seeds": args.seeds, "teachers": teacher_rows,
           "shipped_teacher_test": teacher_stats(shipped, test), "cells": cells,
           "alone": {str(w): v for w, v in alone.items()}, "comparisons": comparisons,
           "total_wall_s": time.perf_counter() - t_start}
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    best = {w: max(epochs, key=lambda e: mean_std(next(c["test"] for c in cells if c["width"] == w
                                                       and c["teacher_epochs"] == e))[0]) for w in args.widths}
    shortest, longest = min(epochs), max(epochs)
    verdicts = {w: comparisons[f"w{w}_t{longest}_vs_t{shortest}"]["verdict"].replace(" ", "_")
                for w in args.widths} if shortest != longest else {}
    print("best_teacher_epochs=" + ",".join(f"{w}:{e}" for w, e in best.items())
          + (f" verdict_{longest}_vs_{shortest}=" + ",".join(f"{w}:{v}" for w, v in verdicts.items())
             if verdicts else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
