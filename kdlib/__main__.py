"""The command line: `python -m kdlib COMMAND ...` (see `python -m kdlib --help`)."""
from __future__ import annotations

import argparse
import sys


def _train_teacher(args) -> int:
    from .data import load_dataset
    from .train import evaluate
    from .data import make_loader
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdlib", description="Knowledge distillation for edge devices.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train-teacher", help="train the book's teacher and save its checkpoint")
    t.add_argument("--dataset", default="mnist5k", help="mnist5k (default), digits, mnist, fashion_mnist, cifar10")
    t.add_argument("--data-root", default=None, help="folder with the torchvision files (torchvision data sets)")
    t.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train_teacher)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
