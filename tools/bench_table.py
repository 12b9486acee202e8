"""One table of the book's performance figures (`make bench`).

    python tools/bench_table.py [--bench-dir bench] [--timeout 600] [--time-book] [--json FILE]

Runs every script in bench/ (each prints its figures last, as one line of
`key=value` pairs: `gap_closed=0.62 latency_ratio=3.9`), then adds how long each
chapter takes to execute: from the book's execution cache (`make book` fills
_build/.jupyter_cache; only notebooks whose current content was executed count),
or, with --time-book, by running every notebook now, one after another. `make book` runs
them side by side (tools/execute_book.py), and the wall time of that run is listed too.
Chapters over their limit (60 s; 30 s for chapters 1 to 3) and a book over 6 minutes are
flagged: the wall time of `make book` when its record matches the cache, else the sum.

Exit status 1 when a bench script fails or prints no `key=value` line.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOK_LIMIT_S = 360.0
PAIR = re.compile(r"^([A-Za-z_][\w.\-]*)=(\S+)$")


@dataclass
class Row:
    """One line of the table."""
    source: str   # bench script or "book"
    figure: str   # key printed by the script, or the chapter
    value: str
    note: str = ""


def parse_figures(stdout: str) -> dict[str, str]:
    """The `key=value` pairs of the last non-empty line of `stdout` ({} when it has none).

    >>> parse_figures("warming up\\ngap_closed=0.62 latency_ratio=3.9\\n")
    {'gap_closed': '0.62', 'latency_ratio': '3.9'}
    """
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return {}
    pairs = [PAIR.match(tok) for tok in lines[-1].split()]
    if not all(pairs):
        return {}
    return {m.group(1): m.group(2) for m in pairs}


def chapter_limit(name: str) -> float:
    """Seconds a chapter may take (CONTRIBUTING.md): 30 for chapters 1 to 3, else 60."""
    return 30.0 if name[:2] in {"01", "02", "03"} else 60.0


def run_bench(script: Path, timeout: float) -> list[Row]:
    """Run one bench script with this Python; its figures as rows (or one row saying what failed)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [Row(script.name, "(all)", "FAILED", f"still running after {timeout:.0f} s (see --timeout)")]
    took = f"ran in {time.perf_counter() - t0:.0f} s"
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        return [Row(script.name, "(all)", "FAILED", f"exit {out.returncode}: {tail[:120]}")]
    figures = parse_figures(out.stdout)
    if not figures:
        return [Row(script.name, "(all)", "FAILED", "last line of output is not key=value pairs")]
    return [Row(script.name, k, v, took if i == 0 else "") for i, (k, v) in enumerate(figures.items())]


def cached_times(notebooks: list[Path], cache_dir: Path) -> dict[str, float | None]:
    """Execution seconds of each notebook's current content in the jupyter cache (None: not cached)."""
    times: dict[str, float | None] = {nb.name: None for nb in notebooks}
    if not cache_dir.exists():
        return times
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_dir))
    for nb in notebooks:
        try:
            rec = cache.match_cache_file(str(nb))
        except KeyError:
            continue
        times[nb.name] = (rec.data or {}).get("execution_seconds")
    return times


def timed_run(notebooks: list[Path], timeout: int = 600) -> dict[str, float | None]:
    """Execute each notebook now (in memory, files untouched) and time it; None if it failed."""
    import nbformat
    from nbclient import NotebookClient

    times: dict[str, float | None] = {}
    for nb_path in notebooks:
        nb = nbformat.read(nb_path, as_version=4)
        t0 = time.perf_counter()
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(nb_path.parent)}}).execute()
            times[nb_path.name] = time.perf_counter() - t0
        except Exception as err:  # report it in the table, keep timing the others
            print(f"{nb_path.name} failed: {type(err).__name__}: {str(err)[:200]}", file=sys.stderr)
            times[nb_path.name] = None
    return times


def wall_record(record_path: Path, times: dict[str, float | None]) -> dict | None:
    """The record `tools/execute_book.py` left of its last run over the whole book, if that run
    produced the cached notebooks listed in `times` (same run time for each); else None."""
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        ran = record["notebooks"]
        float(record["wall_s"]), int(record["jobs"])
    except (ValueError, KeyError, TypeError):
        return None
    current = all(secs is not None and name in ran and abs(ran[name] - secs) < 0.01 for name, secs in times.items())
    return record if current else None


def book_rows(times: dict[str, float | None], how: str, record: dict | None = None) -> list[Row]:
    """Per-chapter and total execution time rows, flagging chapters over their limit.

    With the record of a run that executed the notebooks side by side (`make book`), the book's
    limit applies to that run's wall time; otherwise to the sum of the chapters' times.
    """
    rows = []
    for name, secs in times.items():
        if secs is None:
            rows.append(Row("book", name, "-", f"not executed ({how})"))
            continue
        limit = chapter_limit(name)
        rows.append(Row("book", name, f"{secs:.1f} s", f"OVER {limit:.0f} s" if secs > limit else ""))
    done = [s for s in times.values() if s is not None]
    if done:
        total = sum(done)
        note = f"{len(done)}/{len(times)} chapters, {how}"
        if record is not None:
            note += f"; their sum (they ran {record['jobs']} at a time)"
        elif total > BOOK_LIMIT_S:
            note += f"; OVER {BOOK_LIMIT_S:.0f} s"
        rows.append(Row("book", "total execution", f"{total:.1f} s", note))
    if record is not None:
        wall = float(record["wall_s"])
        note = f"{record['jobs']} notebooks at a time (make book, {record.get('finished', '?')})"
        if wall > BOOK_LIMIT_S:
            note += f"; OVER {BOOK_LIMIT_S:.0f} s"
        rows.append(Row("book", "book wall time", f"{wall:.1f} s", note))
    return rows


def format_table(rows: list[Row]) -> str:
    """A Markdown table (readable as plain text too)."""
    header = Row("source", "figure", "value", "note")
    widths = [max(len(getattr(r, f)) for r in [header, *rows]) for f in ("source", "figure", "value", "note")]

    def line(r: Row) -> str:
        cells = [getattr(r, f).ljust(w) for f, w in zip(("source", "figure", "value", "note"), widths)]
        return "| " + " | ".join(cells) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run bench/*.py and print one table of the book's figures.")
    p.add_argument("--bench-dir", type=Path, default=ROOT / "bench")
    p.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    p.add_argument("--cache", type=Path, default=ROOT / "_build" / ".jupyter_cache",
                   help="jupyter cache of the book build (default _build/.jupyter_cache)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per bench script (default 1800)")
    p.add_argument("--time-book", action="store_true", help="execute every notebook now and time it")
    p.add_argument("--no-bench", action="store_true", help="only the book's execution times")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    rows: list[Row] = []
    if not args.no_bench:
        scripts = sorted(args.bench_dir.glob("*.py"))
        if not scripts:
            rows.append(Row("bench", "(none)", "-", f"no scripts in {args.bench_dir}"))
        for script in scripts:
            print(f"running {script.name} ...", file=sys.stderr, flush=True)
            rows += run_bench(script, args.timeout)
    notebooks = sorted(args.notebooks.glob("[0-9][0-9]_*.ipynb"))
    if args.time_book:
        rows += book_rows(timed_run(notebooks), "timed now")
    else:
        times = cached_times(notebooks, args.cache)
        record = wall_record(args.cache.parent / "book_execution.json", times)
        rows += book_rows(times, "from the `make book` cache", record)
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 1 if any(r.value == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
