"""What does kdlib's `distill` loop cost on top of the work itself?  One epoch of
`kdlib.train.distill` against a minimal hand-written PyTorch loop, on the same data
(the chapter 5 transfer set with cached teacher logits), model, optimiser and batches.

    OMP_NUM_THREADS=1 python bench/loop_overhead.py
    OMP_NUM_THREADS=1 python bench/loop_overhead.py --rounds 9 --epochs 4

The two loops run in turns (kdlib, hand, kdlib, hand, ...) so that a burst of load
on the machine hits both alike; the first epoch of every run is a warm-up and is
dropped; the figure is the ratio of the median epoch times. Before timing, both
loops are checked to give the same losses. The hand-written loop keeps the CNN in the
channels-last memory layout, as kdlib's does on a CPU (`kdlib.inference.fast_layout`), so
that both run the same kernels: a faster layout is not loop overhead, and the same kernels
give the same losses. The last line is `overhead=<ratio - 1>`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from kdlib.data import load_dataset, make_loader
from kdlib.inference import cache_teacher_outputs
from kdlib.train import distill
from kdlib.zoo import DISTILL_RECIPE, load_teacher, make_scarce_student, scarce_data


def hand_written_epochs(student, loader, *, num_epochs: int, lr: float, T: float, alpha: float, seed: int):
    """The plainest distillation loop: AdamW, cosine schedule, the KD loss written inline.

    Returns (per-epoch mean losses, per-epoch seconds).
    """
    torch.manual_seed(seed)
    loader.generator.manual_seed(seed)
    student.to(memory_format=torch.channels_last)  # the layout kdlib's loop uses for CNNs on a CPU
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=num_epochs)
    losses, times = [], []
    for _ in range(num_epochs):
        t0 = time.perf_counter()
        student.train()
        total, count = 0.0, 0
        for X, y, teacher_logits in loader:
            z = student(X.to(memory_format=torch.channels_last))
            soft = F.kl_div(F.log_softmax(z / T, 1), F.log_softmax(teacher_logits / T, 1),
                            reduction="batchmean", log_target=True) * T * T
            hard = F.cross_entropy(z, y, ignore_index=-1)  # -1: an image without a label
            loss = alpha * soft + (1 - alpha) * hard
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            count += len(y)
        sched.step()
        losses.append(total / count)
        times.append(time.perf_counter() - t0)
    return losses, times


def kdlib_epochs(student, teacher, loader, *, num_epochs: int, lr: float, T: float, alpha: float, seed: int):
    """The same epochs through `kdlib.train.distill`; returns (losses, seconds) per epoch."""
    h = distill(student, teacher, loader, T=T, alpha=alpha, num_epochs=num_epochs, lr=lr, cache_teacher=True,
                progress=False, seed=seed)
    return h.train_loss, h.epoch_time_s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="runs of each loop, interleaved (default 7)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run, the first one dropped (default 3)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.epochs < 2:
        print("error: need --rounds >= 1 and --epochs >= 2 (the first epoch is a warm-up)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    r = DISTILL_RECIPE
    ds = load_dataset("mnist5k")
    teacher = load_teacher("mnist5k", ds=ds, verbose=False)
    _, transfer = scarce_data(ds, r)
    loader = cache_teacher_outputs(teacher, make_loader(transfer, r.batch_size, shuffle=True))
    kw = dict(num_epochs=args.epochs, lr=r.lr, T=r.T, alpha=r.alpha, seed=0)

    def fresh():
        torch.manual_seed(0)
        return make_scarce_student(ds, r)

    # same losses first: the two loops must do the same work (the same kernels, so up to rounding)
    loss_kd, _ = kdlib_epochs(fresh(), teacher, loader, **kw)
    loss_hand, _ = hand_written_epochs(fresh(), loader, **kw)
    np.testing.assert_allclose(loss_kd, loss_hand, rtol=1e-5)
    print(f"same losses: kdlib {[round(v, 5) for v in loss_kd]}, hand {[round(v, 5) for v in loss_hand]}")

    times = {"kdlib": [], "hand": []}
    paired = []  # per round: kdlib's median epoch / the hand loop's, run back to back
    for i in range(args.rounds):
        order = ("kdlib", "hand") if i % 2 == 0 else ("hand", "kdlib")  # neither always goes first
        this_round = {}
        for name in order:
            if name == "kdlib":
                _, t = kdlib_epochs(fresh(), teacher, loader, **kw)
            else:
                _, t = hand_written_epochs(fresh(), loader, **kw)
            times[name] += t[1:]  # drop the warm-up epoch
            this_round[name] = statistics.median(t[1:])
        paired.append(this_round["kdlib"] / this_round["hand"])
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["kdlib"] / med["hand"]
    print(f"student: StudentCNN(width={r.width}), {len(transfer)} images per epoch, batch {r.batch_size}, "
          f"{torch.get_num_threads()} thread(s)")
    for k, v in times.items():
        print(f"{k:>6}: median epoch {med[k]:.3f} s over {len(v)} epochs (min {min(v):.3f}, max {max(v):.3f})")
    print(f"per-round ratios (kdlib / hand, back to back): {', '.join(f'{x:.3f}' for x in paired)}; "
          f"their median {statistics.median(paired):.3f}")
    print(f"ratio of the pooled medians {ratio:.3f}; ratio of the fastest epochs {min(times['kdlib']) / min(times['hand']):.3f}")
    print(f"overhead={ratio - 1:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
