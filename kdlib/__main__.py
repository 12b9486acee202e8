"""The command line: `python -m kdlib COMMAND ...` (see `python -m kdlib --help`)."""
from __future__ import annotations

import argparse
import sys


def _train_teacher(args) -> int:
    from .data import load_dataset, make_loader
    from .inference import evaluate
    from .zoo import load_teacher, teacher_path

    path = teacher_path(args.dataset)
    if path.exists():
        if not args.force:
            print(f"error: {path} already exists; pass --force to retrain and replace it", file=sys.stderr)
            return 2
        path.unlink()
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
    ds = load_dataset(args.dataset, root=args.data_root)
    teacher = load_teacher(args.dataset, ds=ds, progress=not args.quiet)
    acc = evaluate(teacher, make_loader(ds.val, 500))["accuracy"]
    print(f"teacher saved to {path}; val accuracy {acc:.4f}")
    return 0


def _compress(args) -> int:
    from .pipeline import PipelineConfig, run_pipeline

    config = PipelineConfig(
        dataset=args.dataset, data_root=args.data_root, teacher_arch=args.teacher_arch,
        teacher_checkpoint=args.teacher_checkpoint, student_width=args.student_width, T=args.T,
        alpha=args.alpha, copies=args.copies, distill_epochs=args.distill_epochs, prune_amount=args.prune,
        prune_multiple_of=args.prune_multiple_of, finetune_epochs=args.finetune_epochs, int8_convs=args.int8_convs,
        executorch=not args.no_executorch, seed=args.seed)
    summary = run_pipeline(args.out, config, force=args.force, resume=args.resume, progress=not args.quiet,
                           log=None if args.quiet else print)
    print(f"edge model {summary['edge_file']}: {summary['size_ratio']:.0f}x smaller, "
          f"{summary['latency_ratio']:.0f}x faster, accuracy {100 * summary['teacher_accuracy']:.1f}% -> "
          f"{100 * summary['edge_accuracy']:.1f}%; report in {args.out}/report.md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdlib", description="Knowledge distillation for edge devices.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train-teacher", help="train the book's teacher and save its checkpoint")
    t.add_argument("--dataset", default="mnist5k", help="mnist5k (default), digits, mnist, fashion_mnist, cifar10")
    t.add_argument("--data-root", default=None, help="folder with the torchvision files (torchvision data sets)")
    t.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train_teacher)

    from .pipeline import PipelineConfig

    D = PipelineConfig()  # the command line's defaults are the pipeline's
    c = sub.add_parser("compress", help="teacher -> distil -> prune -> int8 -> ONNX/ExecuTorch -> report",
                       description="Take a teacher to a small, fast, measured edge model. Writes OUT/report.md, "
                                   "OUT/report.json, OUT/pareto.png and the model files.")
    c.add_argument("--out", default="runs/compress", help="output folder (default: runs/compress)")
    c.add_argument("--dataset", default="mnist5k", help="mnist5k (default), digits, mnist, fashion_mnist, cifar10")
    c.add_argument("--data-root", default=None, help="folder with the torchvision files (torchvision data sets)")
    c.add_argument("--teacher-arch", default=None, metavar="MODULE:FACTORY",
                   help="your teacher's architecture, e.g. mypkg.models:make_teacher")
    c.add_argument("--teacher-checkpoint", default=None, metavar="PATH", help="your teacher's state_dict (.pt)")
    c.add_argument("--student-width", type=int, default=D.student_width,
                   help=f"channels of the student's first block (default {D.student_width})")
    c.add_argument("--T", type=float, default=D.T, help=f"distillation temperature (default {D.T:g})")
    c.add_argument("--alpha", type=float, default=D.alpha, help=f"weight of the soft term (default {D.alpha:g})")
    c.add_argument("--copies", type=int, default=D.copies,
                   help=f"versions of each training image the student learns from: the original and "
                        f"shifted/rotated ones (default {D.copies}; 1: the originals only)")
    c.add_argument("--distill-epochs", type=int, default=D.distill_epochs,
                   help=f"epochs of distillation over all copies (default {D.distill_epochs})")
    c.add_argument("--prune", type=float, default=D.prune_amount,
                   help=f"fraction of each conv's channels to remove (default {D.prune_amount:g})")
    c.add_argument("--prune-multiple-of", type=int, default=D.prune_multiple_of,
                   help=f"round the channels each conv keeps to a multiple of this (default "
                        f"{D.prune_multiple_of}, the block of x86 fp32 kernels; 1: no rounding)")
    c.add_argument("--finetune-epochs", type=int, default=D.finetune_epochs,
                   help=f"distillation epochs after pruning (default {D.finetune_epochs})")
    c.add_argument("--int8-convs", action="store_true",
                   help="quantize the convolutions too, not only the Linear layers (faster on CPUs with "
                        "VNNI or on Arm; slower for small convs on x86 without VNNI)")
    c.add_argument("--no-executorch", action="store_true", help="skip the ExecuTorch export")
    c.add_argument("--seed", type=int, default=D.seed)
    group = c.add_mutually_exclusive_group()
    group.add_argument("--force", action="store_true", help="start over in an OUT that holds an earlier run")
    group.add_argument("--resume", action="store_true", help="continue an earlier run, reusing finished stages")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=_compress)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
