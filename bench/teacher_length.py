"""Does a longer-trained teacher make a better student?  Teachers trained for 1, 3 and
15 epochs (the book's recipe otherwise), their calibration, and the student each one
distils in the data-scarce setting of chapter 5, with the same seeds.

    OMP_NUM_THREADS=1 python bench/teacher_length.py --json kdlib/assets/results/teacher_length.json   # about 30 min

The 15-epoch teacher is the book's checkpoint (kdlib.zoo.load_teacher); the shorter ones
are trained here with `kdlib.zoo.train_teacher` and the same recipe except `num_epochs`
(so each one's learning rate still decays to 0). Each student is distilled with
kdlib.zoo.DISTILL_RECIPE except `--epochs` (and `--T`, `--alpha` when given) (5 passes over the 35,000 augmented transfer
images instead of the recipe's 15, to keep the run short). Teachers are compared on val and
test; students on test.
The last line is `best_teacher_epochs=<n> student_test=<mean per teacher>`.
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
from kdlib.inference import evaluate, predict_logits
from kdlib.metrics import expected_calibration_error, mean_confidence, mean_std
from kdlib.models import TeacherCNN
from kdlib.utils import atomic_write_text, seed_everything
from kdlib.zoo import (DISTILL_RECIPE, TEACHER_RECIPE, distill_scarce, load_teacher, make_scarce_student,
                       scarce_data, train_teacher, transfer_loader)


def teacher_stats(teacher, loader) -> dict:
    """Accuracy, NLL, ECE and mean confidence of `teacher` on `loader`."""
    logits, y = predict_logits(teacher, loader)
    probs = torch.softmax(logits, 1)
    return {"accuracy": (logits.argmax(1) == y).double().mean().item(),
            "nll": torch.nn.functional.cross_entropy(logits, y).item(),
            "ece": expected_calibration_error(probs, y, 15), "confidence": mean_confidence(probs)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher-epochs", type=int, nargs="+", default=[1, 3, 15])
    p.add_argument("--seeds", type=int, default=3, help="student seeds 0, 1, ... (default 3)")
    p.add_argument("--epochs", type=int, default=5, help="distillation epochs per student (default 5)")
    p.add_argument("--T", type=float, default=None, help="override the recipe's temperature")
    p.add_argument("--alpha", type=float, default=None, help="override the recipe's alpha")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args(argv)
    if args.json is not None and args.json.exists() and not args.force:
        print(f"error: {args.json} exists; pass --force to replace it", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    ds = load_dataset("mnist5k")
    val, test = make_loader(ds.val, 500), make_loader(ds.test, 500)
    recipe = dataclasses.replace(DISTILL_RECIPE, num_epochs=args.epochs,
                                 **{k: v for k, v in {"T": args.T, "alpha": args.alpha}.items() if v is not None})
    labelled, transfer = scarce_data(ds, recipe)
    print(f"student recipe: {recipe}")
    results = []
    for n in args.teacher_epochs:
        t0 = time.perf_counter()
        if n == TEACHER_RECIPE.num_epochs:
            teacher = load_teacher("mnist5k", ds=ds, verbose=False)
        else:
            seed_everything(TEACHER_RECIPE.seed)  # the same initial weights as chapter 4's short teacher
            teacher = TeacherCNN(ds.input_shape, ds.num_classes, width=TEACHER_RECIPE.width)
            train_teacher(teacher, ds, dataclasses.replace(TEACHER_RECIPE, num_epochs=n), progress=False)
            teacher.eval()
        row = {"teacher_epochs": n, "teacher_val": teacher_stats(teacher, val),
               "teacher_test": teacher_stats(teacher, test), "teacher_wall_s": time.perf_counter() - t0}
        cached = transfer_loader(teacher, transfer, recipe)  # the teacher's logits, computed once
        row["student_test"], row["agreement_test"] = [], []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            student = make_scarce_student(ds, recipe)
            distill_scarce(student, teacher, cached, recipe, seed=seed)
            e = evaluate(student, test, teacher=teacher)
            row["student_test"].append(e["accuracy"])
            row["agreement_test"].append(e["agreement"])
        m, s = mean_std(row["student_test"])
        tt = row["teacher_test"]
        print(f"teacher {n:>2} epochs: test acc {tt['accuracy']:.2%}, NLL {tt['nll']:.3f}, ECE {tt['ece']:.3f}, "
              f"confidence {tt['confidence']:.3f} | student test {m:.2%} ± {s:.2%} "
              f"({', '.join(format(a, '.1%') for a in row['student_test'])})", flush=True)
        results.append(row)
    out = {"student_recipe": dataclasses.asdict(recipe), "seeds": args.seeds, "rows": results,
           "total_wall_s": time.perf_counter() - t_start}
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    means = {r["teacher_epochs"]: mean_std(r["student_test"])[0] for r in results}
    best = max(means, key=means.get)
    print(f"best_teacher_epochs={best} student_test=" + ",".join(f"{k}:{v:.4f}" for k, v in means.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
