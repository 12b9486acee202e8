"""Execute the book's notebooks a few at a time, into the cache that `jupyter-book build` reads.

    python tools/execute_book.py [--jobs N] [--all] [--cache _build/.jupyter_cache] [NOTEBOOK ...]
    python tools/execute_book.py --check-only --env ONEDNN_MAX_CPU_ISA=AVX2 --env ATEN_CPU_CAPABILITY=avx2

With `execute_notebooks: cache` (_config.yml), Jupyter Book runs every notebook whose code has
changed while it reads the pages: one after another. Every chapter trains and times its models on
one thread (`set_num_threads(1)`), so on a machine with two cores one of them sits idle. This
script runs the notebooks that have no up-to-date copy in the cache N at a time (default: the
number of cores, at most 4), longest first, and stores each executed notebook in the cache the
way the book build does: keyed by the hash of its code, with its outputs and its run time in
seconds (the execution-status page shows that time). `jupyter-book build` then finds every
chapter in the cache and only renders it. `make book` runs this script first.

A notebook that fails is not cached: its traceback is printed, the others still run, and the
exit status is 1 (the book build would run it again and stop at the same error). A notebook
already cached is skipped unless --all is given. After a run that executed every notebook of the
book, `book_execution.json` next to the cache records the wall time and each chapter's time
(`make bench` prints them).

`--check-only` executes every notebook and keeps nothing (no cache, no record): it checks that
every cell, and so every assert, still passes, for instance with the kernels started under
another CPU's instruction set (`--env NAME=VALUE` sets a variable for every kernel; oneDNN and
ATen read theirs at process start). `make test-notebooks-avx2` runs it that way.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / "_build" / ".jupyter_cache"
RECORD_NAME = "book_execution.json"
MAX_DEFAULT_JOBS = 4  # each chapter holds a model, its data and a kernel: a few GB of memory at most


@dataclass
class Outcome:
    """What one notebook's run gave back to the parent process."""
    path: Path
    seconds: float
    notebook_json: str | None  # the executed notebook (None when it failed)
    error: str | None          # the traceback when it failed


def book_notebooks(toc: Path = ROOT / "_toc.yml") -> list[Path]:
    """The notebooks of the book, in the order of its table of contents."""
    import yaml

    found: list[Path] = []

    def walk(node):
        if isinstance(node, dict):
            name = node.get("file") or node.get("root")
            if isinstance(name, str):
                path = (toc.parent / name).with_suffix(".ipynb")
                if path.exists() and path not in found:
                    found.append(path)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load(toc.read_text()))
    return found


def book_settings(config: Path = ROOT / "_config.yml") -> dict:
    """The book's `execute:` section: mode, cell timeout, allow_errors and the notebooks excluded
    from execution (Jupyter Book's defaults where it says nothing)."""
    import yaml

    execute = (yaml.safe_load(config.read_text()) or {}).get("execute") or {}
    return {"mode": str(execute.get("execute_notebooks", "auto")),
            "timeout": int(execute.get("timeout", 30)),
            "allow_errors": bool(execute.get("allow_errors", False)),
            "exclude": list(execute.get("exclude_patterns") or [])}


def excluded(path: Path, patterns: list[str]) -> bool:
    """Whether the book build leaves this notebook unexecuted (myst-nb's test on the path).

    >>> excluded(Path("/book/notebooks/99_slow.ipynb"), ["*99_*"]), excluded(Path("/b/01.ipynb"), ["*99_*"])
    (True, False)
    """
    posix = PurePosixPath(path.as_posix())
    return any(posix.match(pattern) for pattern in patterns)


def default_jobs() -> int:
    """One notebook per core the process may use, at most MAX_DEFAULT_JOBS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_JOBS))


def _execute(path: str, timeout: int, allow_errors: bool) -> Outcome:
    """Run one notebook in its own folder (a worker process). Never raises: a failing cell, a
    kernel that dies or will not start, or Ctrl-C come back as the outcome's error."""
    import traceback

    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution

    t0 = time.perf_counter()
    try:
        nb = nbformat.read(path, as_version=4)
        # the same call, with the same arguments, as myst-nb's cache mode
        result = single_nb_execution(nb, cwd=str(Path(path).parent), timeout=timeout,
                                     allow_errors=allow_errors, meta_override=True)
    except KeyboardInterrupt:
        return Outcome(Path(path), time.perf_counter() - t0, None, "interrupted (Ctrl-C)")
    except Exception:  # the kernel died, could not start, or the file is not a notebook
        return Outcome(Path(path), time.perf_counter() - t0, None, traceback.format_exc())
    if result.err is not None:
        return Outcome(Path(path), result.time, None, result.exc_string or repr(result.err))
    return Outcome(Path(path), result.time, nbformat.writes(result.nb), None)


def _store(cache, outcome: Outcome) -> None:
    """Put an executed notebook in the cache, as myst-nb does after executing it."""
    import nbformat
    from jupyter_cache.base import CacheBundleIn

    record = cache.add_nb_to_project(str(outcome.path))
    cache.cache_notebook_bundle(
        CacheBundleIn(nbformat.reads(outcome.notebook_json, as_version=4), record.uri,
                      data={"execution_seconds": outcome.seconds}),
        check_validity=False, overwrite=True)


def is_cached(cache, path: Path) -> bool:
    """Whether the cache holds this notebook's current code (what the book build would reuse)."""
    try:
        cache.match_cache_file(str(path))
    except Exception:  # KeyError: not in the cache; anything else: not a readable notebook,
        return False   # which the run then reports
    return True


def last_times(cache) -> dict[str, float]:
    """The newest recorded run time of every notebook the cache has seen (stale ones included)."""
    times: dict[str, tuple] = {}
    for rec in cache.list_cache_records():
        seconds = (rec.data or {}).get("execution_seconds")
        if seconds is not None and (rec.uri not in times or rec.created > times[rec.uri][0]):
            times[rec.uri] = (rec.created, float(seconds))
    return {uri: secs for uri, (_, secs) in times.items()}


def longest_first(paths: list[Path], known: dict[str, float]) -> list[Path]:
    """Known-slow notebooks first, so that no core is left with a long one at the end.

    Notebooks never timed go first, later chapters (which train more) before earlier ones.

    >>> [p.name for p in longest_first([Path("/b/01.ipynb"), Path("/b/02.ipynb"), Path("/b/03.ipynb")],
    ...                                {"/b/01.ipynb": 40.0, "/b/02.ipynb": 10.0})]
    ['03.ipynb', '01.ipynb', '02.ipynb']
    """
    def key(p: Path):
        secs = known.get(str(p))
        return (0, 0.0, -paths.index(p)) if secs is None else (1, -secs, -paths.index(p))
    return sorted(paths, key=key)


def write_record(path: Path, data: dict) -> None:
    """Write the record as JSON, atomically (a reader never sees half a file)."""
    from kdlib.utils import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def run(notebooks: list[Path], cache_dir: Path, jobs: int, redo: bool, settings: dict,
        complete_book: bool = True, out=None) -> int:
    """Execute what is not cached, `jobs` at a time; 0 when every notebook ran (or was cached)."""
    out = out or sys.stdout  # looked up at call time, so that a redirected stdout is honoured
    from jupyter_cache import get_cache

    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    cache = get_cache(str(cache_dir))
    notebooks = [p.resolve() for p in notebooks]
    skipped = [p for p in notebooks if excluded(p, settings.get("exclude", []))]
    for p in skipped:
        print(f"  excluded from execution in _config.yml: {p.name}", file=out)
    notebooks = [p for p in notebooks if p not in skipped]
    todo = notebooks if redo else [p for p in notebooks if not is_cached(cache, p)]
    for p in notebooks:
        if p not in todo:
            print(f"  cached  {p.name}", file=out)
    if not todo:
        print("every notebook is cached: nothing to execute", file=out)
        return 0
    todo = longest_first(todo, last_times(cache))
    jobs = max(1, min(jobs, len(todo)))
    # each kernel inherits this: one torch thread per notebook when several run side by side
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"executing {len(todo)} notebook(s), {jobs} at a time "
          f"(OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})", file=out, flush=True)

    failed: list[Outcome] = []
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")  # no inherited sockets or event loops in the workers
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        # the pool starts them in this order (longest first), `jobs` at a time
        futures = [pool.submit(_execute, str(p), settings["timeout"], settings["allow_errors"]) for p in todo]
        try:
            for fut in as_completed(futures):
                outcome = fut.result()
                if outcome.error is None:
                    _store(cache, outcome)
                    times[outcome.path.name] = round(outcome.seconds, 2)
                    status = "ok"
                else:
                    failed.append(outcome)
                    status = "FAILED"
                finished = len(times) + len(failed)
                print(f"  [{finished:>2}/{len(todo)}] {outcome.path.name}: {outcome.seconds:6.1f} s  {status}",
                      file=out, flush=True)
        except KeyboardInterrupt:  # the workers were interrupted too; what finished is cached
            pool.shutdown(wait=True, cancel_futures=True)
            print(f"\ninterrupted: {len(times)} of {len(todo)} notebook(s) finished and are cached; "
                  "the next run executes the rest", file=out)
            return 130
    wall = time.perf_counter() - t0

    print(f"wall time {wall:.1f} s for {len(todo)} notebook(s), {jobs} at a time; "
          f"the sum of their run times is {sum(times.values()):.1f} s", file=out)
    for outcome in failed:
        print(f"\n{outcome.path.name} failed after {outcome.seconds:.1f} s:\n{outcome.error}", file=out)
    if failed:
        print(f"\n{len(failed)} notebook(s) failed: "
              + ", ".join(o.path.name for o in failed)
              + ". Fix the cell above, or run the notebook in Jupyter to see it fail.", file=out)
        return 1
    if complete_book and len(todo) == len(notebooks):
        write_record(cache_dir.parent / RECORD_NAME, {
            "jobs": jobs, "wall_s": round(wall, 2), "notebooks": times,
            "omp_num_threads": os.environ["OMP_NUM_THREADS"],
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        })
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Execute the book's notebooks in parallel into the book's cache.")
    p.add_argument("notebooks", nargs="*", type=Path,
                   help="notebooks to execute (default: every notebook in _toc.yml)")
    p.add_argument("--jobs", "-j", type=int, default=default_jobs(),
                   help=f"notebooks at a time (default: the number of cores, at most {MAX_DEFAULT_JOBS}; "
                        f"here {default_jobs()})")
    p.add_argument("--all", action="store_true", help="execute every notebook, cached or not")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help="the jupyter cache of the book build (default _build/.jupyter_cache)")
    p.add_argument("--check-only", action="store_true",
                   help="execute every notebook and keep nothing: only whether every cell passes counts")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for every kernel (repeatable)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be 1 or more, got {args.jobs}")
    for item in args.env:
        name, eq, value = item.partition("=")
        if not eq or not name:
            p.error(f"--env takes NAME=VALUE, got {item!r}")
        os.environ[name] = value
    missing = [str(nb) for nb in args.notebooks if not nb.is_file()]
    if missing:
        p.error("no such notebook: " + ", ".join(missing))
    notebooks = args.notebooks or book_notebooks()
    if not notebooks:
        p.error("no notebooks found in _toc.yml")
    settings = book_settings()
    if settings["mode"] != "cache":
        print(f"_config.yml has execute_notebooks: {settings['mode']}, not cache: the book build "
              "executes (or skips) the notebooks itself, so nothing is run here")
        return 0
    if args.check_only:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="kdlib-check-") as tmp:
            shown = " ".join(args.env) or "the machine's own CPU"
            print(f"checking every cell of {len(notebooks)} notebook(s) under {shown} (nothing is kept)")
            return run(notebooks, Path(tmp) / "cache", args.jobs, True, settings, complete_book=False)
    return run(notebooks, args.cache, args.jobs, args.all, settings, complete_book=not args.notebooks)


if __name__ == "__main__":
    sys.exit(main())
