"""Distilling a character-level language model: the student alone against each distillation
method, at equal compute, over several seeds (chapter 12).

    cpu-slot python bench/lm_kd.py --train-teacher     # train and save the book's LM teacher (once, ~12 min)
    cpu-slot python bench/lm_kd.py                     # 3 seeds, kdlib.lm_train.LM_DISTILL_RECIPE (~45 min)
    cpu-slot python bench/lm_kd.py --seeds 2 --steps 20 --windows 300 --no-sweep --json /tmp/lm_kd.json   # smoke

The methods (kdlib.lm_train.METHODS), each training the same 117 k-parameter student from the same
initial weights (one per seed), for the same number of gradient steps on the same number of
characters (steps x batch_size windows of context characters); only the targets differ:

    alone      cross-entropy on the real text
    kd_full    token-level KD, forward KL to the teacher's full next-character distribution
    kd_topk    the same from a cache of the teacher's top-k logits per position (tail dropped, renormalized)
    seq_kd     sequence-level KD: cross-entropy on text the teacher generated (one window per real window)
    on_policy  half the steps token-level KD (a trained start, as MiniLLM and GKD use), then on-policy:
               the student continues the first half of each real window itself, the teacher scores
               the result, and the loss is the reverse KL at every position (GKD / MiniLLM)

The teacher's cost is counted apart from the student's equal budget, in teacher forward positions
and seconds: its logits on the training windows are computed once and shared by kd_full, kd_topk and
every seed; its generated text likewise for seq_kd (one position per generated character, with a
KV cache); on-policy distillation cannot cache anything, so the teacher scores every batch (and
the student samples every batch), in every seed. All are reported.

Before the comparison, two sweeps on seed 0 record val bits per character (how the recipe's choices
were made; test plays no part): the learning rate of the student alone (`--sweep-lr`; the recipe
uses the best one for every method, which favours the baseline), and the temperature of kd_full
(`--sweep-T`). Runs that the comparison repeats (seed 0 at the recipe's values) are reused. Then every method runs
on every seed; val and test bits per character, top-1 agreement with the teacher on val, and the
diversity of samples (distinct 4-grams, entropy) are recorded; paired differences against the
student alone get 95 % intervals (kdlib.metrics.compare_paired). The gap closed of a method on a
seed is (alone - method) / (alone - teacher) in val bits per character. The result goes to
kdlib/assets/results/lm_kd.json (atomically; --force to replace it). The last line is
`gap_closed=<mean over seeds, best method> wins=<seeds where it beats alone>/<seeds> method=<name>`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from kdlib.lm import CharTransformer, load_splits, sample_diversity, windows
from kdlib.lm_train import (LM_DISTILL_RECIPE, LM_STUDENT_METHOD, LM_TEACHER_RECIPE, METHODS, describe, distill_lm,
                            evaluate_lm, lm_student_config, lm_student_path, lm_teacher_config, lm_teacher_path,
                            load_lm_teacher, predict_windows, train_lm_teacher)
from kdlib.measure import count_params, machine_info
from kdlib.metrics import compare_paired, gap_closed
from kdlib.utils import asset_path, atomic_write_text, save_checkpoint, sha256_file

RESULT = asset_path("results", "lm_kd.json")
TEACHER_RESULT = asset_path("results", "lm_teacher.json")
SAMPLE_PROMPTS, SAMPLE_PROMPT_CHARS, SAMPLE_CHARS = 16, 8, 120  # diversity: 16 val prompts of 8 characters + 120


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-teacher", action="store_true",
                   help="instead: train the LM teacher with kdlib.lm_train.LM_TEACHER_RECIPE, save its checkpoint "
                        "and write kdlib/assets/results/lm_teacher.json (training time, val/test bits per char)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...); default 3")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=None, help="override the recipe's gradient steps")
    p.add_argument("--T", type=float, default=None, help="override the recipe's KD temperature")
    p.add_argument("--top-k", type=int, default=None, help="override the recipe's top-k")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--sweep-lr", type=float, nargs="*", default=[0.005, 0.01, 0.02, 0.03],
                   help="learning rates tried for the student alone on seed 0 (val); default 0.005 0.01 0.02 0.03")
    p.add_argument("--sweep-T", type=float, nargs="*", default=[1.0, 2.0, 4.0],
                   help="temperatures tried for kd_full on seed 0 (val), at the recipe's lr; default 1 2 4")
    p.add_argument("--no-sweep", action="store_true", help="skip both sweeps")
    p.add_argument("--windows", type=int, default=None,
                   help="train on the first N training windows only (a quick look; the book uses all)")
    p.add_argument("--json", type=Path, default=RESULT, help=f"where to write the result (default {RESULT})")
    p.add_argument("--force", action="store_true", help="replace existing files")
    return p.parse_args(argv)


def refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise SystemExit(f"error: {path} exists; pass --force to replace it")


def write_json(path: Path, out: dict, force: bool) -> None:
    refuse_existing(path, force)
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


def train_teacher(force: bool) -> None:
    path = lm_teacher_path()
    for p in (path, TEACHER_RESULT):
        refuse_existing(p, force)
    splits = load_splits()
    torch.set_num_threads(1)
    teacher = CharTransformer(lm_teacher_config(LM_TEACHER_RECIPE, splits.tokenizer.vocab_size))
    history = train_lm_teacher(teacher, splits, LM_TEACHER_RECIPE, progress=True)
    save_checkpoint(teacher, path, overwrite=force)
    val, test = evaluate_lm(teacher, splits.val), evaluate_lm(teacher, splits.test)
    out = {"recipe": describe(LM_TEACHER_RECIPE), "params": count_params(teacher), "train_s": history.time_s,
           "threads": torch.get_num_threads(), "sha256": sha256_file(path), "val_bpc": val["bpc"],
           "test_bpc": test["bpc"], "val_accuracy": val["accuracy"], "history": vars(history),
           "machine": machine_info()}
    write_json(TEACHER_RESULT, out, force)
    print(f"teacher_params={out['params']} train_s={history.time_s:.0f} val_bpc={val['bpc']:.4f} "
          f"test_bpc={test['bpc']:.4f}")


def score(student, splits, X_val, teacher_val_argmax, prompts, teacher) -> dict:
    """Val and test bits per character, top-1 agreement with the teacher on val, sample diversity."""
    val, test = evaluate_lm(student, splits.val), evaluate_lm(student, splits.test)
    agreement = (predict_windows(student, X_val).argmax(-1) == teacher_val_argmax).double().mean().item()
    div = sample_diversity(student, prompts, SAMPLE_CHARS, teacher=teacher)
    return {"val_bpc": val["bpc"], "test_bpc": test["bpc"], "val_accuracy": val["accuracy"], "agreement": agreement,
            "val_entropy_bits": val["entropy_bits"],
            "distinct": div["distinct"], "entropy_bits": div["entropy_bits"], "teacher_bpc_of_samples": div["teacher_bpc"],
            "sample": splits.tokenizer.decode(div["ids"][0])}


def teacher_positions(method: str, recipe, n_windows: int) -> dict:
    """Teacher forward positions a method costs: once (shared by seeds) and per seed."""
    T, steps, B = recipe.context, recipe.steps, recipe.batch_size
    once = {"kd_full": n_windows * T, "kd_topk": n_windows * T,
            "seq_kd": n_windows * (T + 1)}.get(method, 0)  # seq_kd: prompt + generated, one position each
    policy_steps = steps - int(recipe.policy_warmup * steps)  # on-policy steps after the token-KD warm-up
    if method == "on_policy" and recipe.policy_warmup > 0:
        once = n_windows * T  # the warm-up's cached logits (the same cache as kd_full's)
    per_seed = policy_steps * B * T if method == "on_policy" else 0
    student_sampled = policy_steps * B * (T - recipe.policy_prompt) if method == "on_policy" else 0
    return {"teacher_once": once, "teacher_per_seed": per_seed, "student_sampled_per_seed": student_sampled}


def run(method, teacher, X, Y, recipe, seed):
    """One student, reused when the same (method, recipe, seed) ran before (the sweeps' runs on seed 0)."""
    key = (method, recipe, seed)
    if key not in RUNS:
        RUNS[key] = distill_lm(method, teacher, X, Y, recipe, seed=seed, cache=CACHE)
    return RUNS[key]


def sweep(method, field, values, teacher, X, Y, splits, recipe) -> list:
    """`method` on seed 0 with each value of one recipe field: val bits per character."""
    rows = []
    for v in values:
        student, history = run(method, teacher, X, Y, dataclasses.replace(recipe, **{field: float(v)}), 0)
        rows.append({field: float(v), "val_bpc": evaluate_lm(student, splits.val)["bpc"], "train_s": history.time_s})
        print(f"sweep: {method} {field} = {v:g}: val {rows[-1]['val_bpc']:.4f} bits/char ({history.time_s:.0f} s)",
              flush=True)
    return rows


RUNS: dict = {}
CACHE: dict = {}  # the teacher's outputs on the training windows, shared by every run


def summarise(runs: dict, teacher_val: float, seeds: int) -> dict:
    alone = [r["val_bpc"] for r in runs["alone"]]
    out = {}
    for method, rs in runs.items():
        if method == "alone":
            continue
        bpc = [r["val_bpc"] for r in rs]
        closed = [gap_closed(-m, -a, -teacher_val) for m, a in zip(bpc, alone)]
        cmp = compare_paired([-v for v in bpc], [-v for v in alone])  # bits per character saved vs alone
        div = compare_paired([r["entropy_bits"] for r in rs], [r["entropy_bits"] for r in runs["alone"]])
        out[method] = {"gap_closed": closed, "gap_closed_mean": sum(closed) / len(closed),
                       "bits_saved": {"diffs": cmp.diffs, "mean": cmp.mean, "low": cmp.low, "high": cmp.high,
                                      "verdict": cmp.verdict, "wins": cmp.wins},
                       "entropy_vs_alone": {"mean": div.mean, "low": div.low, "high": div.high,
                                            "verdict": div.verdict}}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.train_teacher:
        train_teacher(args.force)
        return 0
    refuse_existing(args.json, args.force)
    save_student = args.json.resolve() == RESULT.resolve()  # the book's run also ships its distilled student
    if save_student:
        refuse_existing(lm_student_path(), args.force)
    if "alone" not in args.methods or args.seeds < 2:
        print("note: no gap closed or confidence intervals: they need the method 'alone' and at least 2 seeds")
    overrides = {k: v for k, v in (("steps", args.steps), ("T", args.T), ("top_k", args.top_k), ("lr", args.lr))
                 if v is not None}
    recipe = dataclasses.replace(LM_DISTILL_RECIPE, **overrides)
    t_start = time.perf_counter()
    splits = load_splits()
    teacher = load_lm_teacher(splits, verbose=True)
    X, Y = windows(splits.train, recipe.context)                 # (n, T) the training windows
    X, Y = X[:args.windows], Y[:args.windows]
    X_val, _ = windows(splits.val, recipe.context)
    teacher_val = evaluate_lm(teacher, splits.val)["bpc"]
    teacher_val_argmax = predict_windows(teacher, X_val).argmax(-1)  # (n_val, T)
    prompts = X_val[::max(1, len(X_val) // SAMPLE_PROMPTS)][:SAMPLE_PROMPTS, :SAMPLE_PROMPT_CHARS]
    teacher_div = sample_diversity(teacher, prompts, SAMPLE_CHARS, teacher=teacher)
    student_params = count_params(CharTransformer(lm_student_config(recipe)))
    print(f"teacher: {count_params(teacher):,} parameters, val {teacher_val:.4f} bits/char; student: "
          f"{student_params:,} parameters; {len(X)} training windows of {recipe.context}", flush=True)

    sweeps = {} if args.no_sweep else {
        "lr_alone": sweep("alone", "lr", args.sweep_lr, teacher, X, Y, splits, recipe),
        "T_kd_full": sweep("kd_full", "T", args.sweep_T, teacher, X, Y, splits, recipe)}
    runs = {m: [] for m in args.methods}
    for seed in range(args.seeds):
        for method in args.methods:
            student, history = run(method, teacher, X, Y, recipe, seed)
            if save_student and seed == 0 and method == LM_STUDENT_METHOD:
                save_checkpoint(student, lm_student_path(), overwrite=args.force)
                print(f"saved {lm_student_path()}")
            row = {"seed": seed, "train_s": history.time_s, "train_loss": history.train_loss,
                   **score(student, splits, X_val, teacher_val_argmax, prompts, teacher)}
            runs[method].append(row)
            print(f"seed {seed} {method:>9}: val {row['val_bpc']:.4f} bits/char, test {row['test_bpc']:.4f}, "
                  f"agreement {row['agreement']:.1%}, distinct-4 {row['distinct']:.3f}, entropy "
                  f"{row['entropy_bits']:.3f} bits ({history.time_s:.0f} s)", flush=True)

    summary = summarise(runs, teacher_val, args.seeds) if "alone" in runs and args.seeds >= 2 else {}
    out = {"recipe": describe(recipe), "teacher_recipe": describe(LM_TEACHER_RECIPE),
           "teacher": {"sha256": sha256_file(lm_teacher_path()), "params": count_params(teacher),
                       "val_bpc": teacher_val, "distinct": teacher_div["distinct"],
                       "entropy_bits": teacher_div["entropy_bits"], "teacher_bpc_of_samples": teacher_div["teacher_bpc"],
                       "sample": splits.tokenizer.decode(teacher_div["ids"][0])},
           "student_params": student_params, "seeds": args.seeds, "methods": args.methods,
           "train_windows": len(X), "student_chars_per_run": recipe.steps * recipe.batch_size * recipe.context,
           "teacher_cost": {"seconds_once": {k: v for k, v in CACHE.items() if k.endswith("_s")},
                            "positions": {m: teacher_positions(m, recipe, len(X)) for m in args.methods}},
           "bytes_per_position": {"full_fp32": 4 * teacher.cfg.vocab_size, "topk_fp16_uint8": 3 * recipe.top_k},
           "sweeps": sweeps, "runs": runs, "summary": summary,
           "student": {"method": LM_STUDENT_METHOD, "seed": 0,
                       "sha256": sha256_file(lm_student_path()) if save_student else None},
           "sample_setup": {"prompts": SAMPLE_PROMPTS, "prompt_chars": SAMPLE_PROMPT_CHARS, "chars": SAMPLE_CHARS},
           "machine": machine_info(), "wall_s": time.perf_counter() - t_start,
           "command": "cpu-slot python bench/lm_kd.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    write_json(args.json, out, args.force)
    if summary:
        best = max(summary, key=lambda m: summary[m]["gap_closed_mean"])
        s = summary[best]
        for method, m in summary.items():
            lo, hi = min(m["gap_closed"]), max(m["gap_closed"])
            print(f"{method:>9}: gap closed {m['gap_closed_mean']:.3f} (seeds {lo:.3f} to {hi:.3f}), bits/char saved "
                  f"{m['bits_saved']['mean']:+.4f} (95% CI {m['bits_saved']['low']:+.4f} to "
                  f"{m['bits_saved']['high']:+.4f}): {m['bits_saved']['verdict']}")
        print(f"gap_closed={s['gap_closed_mean']:.3f} wins={s['bits_saved']['wins']}/{args.seeds} method={best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
