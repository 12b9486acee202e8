"""The command line: `python -m kdlib COMMAND ...` (see `python -m kdlib --help`)."""
from __future__ import annotations

import argparse
import sys

# one line on stderr, exit 2, no traceback; ImportError: an optional extra (ExecuTorch) missing
ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
          NotADirectoryError, ImportError)


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


def config_from_args(args):
    """The `PipelineConfig` that `compress`'s arguments describe."""
    from .pipeline import PipelineConfig

    return PipelineConfig(
        dataset=args.dataset, data=args.data, data_root=args.data_root, image_size=args.image_size,
        teacher_arch=args.teacher_arch, teacher_checkpoint=args.teacher_checkpoint, trust_pickle=args.trust_pickle,
        student_arch=args.student_arch, student_width=args.student_width, T=args.T, alpha=args.alpha,
        copies=args.copies, distill_epochs=args.distill_epochs, prune_amount=args.prune,
        prune_multiple_of=args.prune_multiple_of, finetune_epochs=args.finetune_epochs, baseline=not args.no_baseline,
        int8_convs=args.int8_convs, executorch=not args.no_executorch, choose=args.choose,
        max_drop_points=args.max_drop, seed=args.seed)


def _compress(args) -> int:
    from .pipeline import run_pipeline

    summary = run_pipeline(args.out, config_from_args(args), force=args.force, resume=args.resume,
                           log=None if args.quiet else print)
    lat = summary["latency"]
    speed = f", {lat['ratio']:.1f}x faster in the same runtime" if lat else ""
    print(f"edge model {summary['edge_file']}: {summary['size_ratio']:.0f}x smaller than the teacher in the same "
          f"format{speed}, accuracy {100 * summary['teacher_accuracy']:.1f}% -> "
          f"{100 * summary['edge_accuracy']:.1f}%; report in {args.out}/report.md")
    return 0


def _data_options(c) -> None:
    c.add_argument("--dataset", default="mnist5k", help="a book data set: mnist5k (default), digits, mnist, "
                                                         "fashion_mnist, cifar10")
    c.add_argument("--data", default=None, metavar="PATH",
                   help="your own data instead: a folder of images, one sub-folder per class (or train/, val/, "
                        "test/ each with class sub-folders), or a .npz with arrays x and y")
    c.add_argument("--image-size", type=int, default=None, metavar="PIXELS",
                   help="resize your images to PIXELS x PIXELS (default: their commonest size)")
    c.add_argument("--data-root", default=None, help="folder with the torchvision files (torchvision data sets)")


def _model_options(c, D) -> None:
    c.add_argument("--teacher-arch", default=None, metavar="MODULE:FACTORY",
                   help="your teacher's architecture: mypkg.models:make_teacher or ./models.py:make_teacher "
                        "(called with input_shape= and num_classes= if it takes them)")
    c.add_argument("--teacher-checkpoint", default=None, metavar="PATH",
                   help="your teacher's weights (.pt: a state_dict, also inside {'state_dict': ...})")
    c.add_argument("--trust-pickle", action="store_true",
                   help="allow a checkpoint that is a whole pickled model (torch.save(model)); this runs code "
                        "from the file, so only for files you trust")
    c.add_argument("--student-arch", default=None, metavar="MODULE:FACTORY",
                   help="your student's architecture, like --teacher-arch (default: the book's StudentCNN)")
    c.add_argument("--student-width", type=int, default=D.student_width,
                   help=f"channels of StudentCNN's first block (default {D.student_width})")


def _training_options(c, D) -> None:
    c.add_argument("--T", type=float, default=D.T, help=f"distillation temperature (default {D.T:g})")
    c.add_argument("--alpha", type=float, default=D.alpha, help=f"weight of the soft term (default {D.alpha:g})")
    c.add_argument("--copies", type=int, default=D.copies,
                   help=f"versions of each training image the student learns from: the original and "
                        f"shifted/rotated ones (default {D.copies}; 1: the originals only)")
    c.add_argument("--distill-epochs", type=int, default=D.distill_epochs,
                   help=f"epochs of distillation over all copies (default {D.distill_epochs})")
    c.add_argument("--prune", type=float, default=D.prune_amount,
                   help=f"fraction of each layer's channels to remove (default {D.prune_amount:g}; 0: no pruning)")
    c.add_argument("--prune-multiple-of", type=int, default=D.prune_multiple_of,
                   help=f"round the channels each layer keeps to a multiple of this (default "
                        f"{D.prune_multiple_of}, the block of x86 fp32 kernels; 1: no rounding)")
    c.add_argument("--finetune-epochs", type=int, default=D.finetune_epochs,
                   help=f"distillation epochs after pruning (default {D.finetune_epochs})")
    c.add_argument("--no-baseline", action="store_true",
                   help="skip distilling the pruned architecture from scratch (the row pruning must beat)")


def _output_options(c, D) -> None:
    c.add_argument("--int8-convs", action="store_true",
                   help="quantize the convolutions too, not only the Linear layers (faster on CPUs with "
                        "VNNI or on Arm; slower for small convs on x86 without VNNI)")
    c.add_argument("--no-executorch", action="store_true", help="skip the ExecuTorch export")
    c.add_argument("--choose", choices=("smallest", "fastest"), default=D.choose,
                   help="the edge model: the smallest file (default) or the fastest on this machine, among "
                        "those within --max-drop points of the teacher's accuracy")
    c.add_argument("--max-drop", type=float, default=D.max_drop_points, metavar="POINTS",
                   help=f"accuracy budget against the teacher, in points (default {D.max_drop_points:g})")
    c.add_argument("--seed", type=int, default=D.seed)
    c.add_argument("--out", default="runs/compress", help="output folder (default: runs/compress)")
    group = c.add_mutually_exclusive_group()
    group.add_argument("--force", action="store_true", help="start over in an OUT that holds an earlier run")
    group.add_argument("--resume", action="store_true",
                       help="continue an earlier run: finished stages are reused, training from its last epoch")
    c.add_argument("--quiet", action="store_true", help="no log lines")


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
                                   "OUT/report.json, OUT/pareto.png, OUT/preprocess.json and the model files.")
    _data_options(c)
    _model_options(c, D)
    _training_options(c, D)
    _output_options(c, D)
    c.set_defaults(func=_compress)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ERRORS as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)  # one line
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = (f"; finished stages and epochs are kept in {out}: run the same command with --resume to continue"
                if out else "")
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
