"""The classroom kit: student versions of the notebooks, and a grader.

    python tools/student_pack.py [--out student-pack] [--force]      # write the pack
    python tools/student_pack.py grade NOTEBOOK.ipynb [...]            # run and score notebooks

A student notebook is the chapter with
  * every solution removed: the cells from a ```{solution-start}``` markdown cell to its
    ```{solution-end}``` cell, and any one-cell ```{solution}``` directive;
  * the exercise starters kept and made runnable: their `skip-execution` and `nbval-skip`
    tags are dropped, so "Run all" reaches every `check("NN.k", answer)`;
  * every output, execution count and saved widget state cleared;
  * a note at the top saying how to check one's work.

`grade` executes notebooks (errors do not stop the run) and reads the lines that
`kdlib.exercises.check` prints ("Exercise 02.1: correct. ..." / "... not yet. ..."),
so a student can check a whole notebook and a teacher can score a folder of them.
The pack carries a copy of this file as `grade.py` for that.
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
STARTER_TAGS = {"skip-execution", "nbval-skip"}
# a fenced block's first line: ``` or ::: (3 or more), then e.g. {exercise} or python
FENCE_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|:{3,})\s*(?P<info>[^`]*?)\s*$")
DIRECTIVE = re.compile(r"^\{(?P<name>[\w-]+)\}\s*(?P<arg>.*)$")
LABEL = re.compile(r"^\s*:label:\s*(\S+)")
CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d+\.\d+)["']""")
RESULT_LINE = re.compile(r"^Exercise (\d+\.\d+): (correct|not yet)", re.M)

STUDENT_NOTE = """\
```{note}
**Student version.** The solutions are not in this notebook. Each exercise ends with a
cell that calls `check("NN.k", answer)`: write your answer in place of the `...`, run
the cell, and it tells you whether the answer is right and, if not, what is wrong.
To check the whole notebook at once: `python grade.py THIS_NOTEBOOK.ipynb` (see README.md).
```"""


def is_starter(cell) -> bool:
    """An exercise starter: a code cell tagged skip-execution/nbval-skip that calls check(...)."""
    tags = set(cell.get("metadata", {}).get("tags", []))
    return cell.cell_type == "code" and bool(tags & STARTER_TAGS) and bool(CHECK_CALL.search(cell.source))


def fenced_blocks(lines: list[str]) -> list[tuple[int, int, str | None, str, list[str]]]:
    """The top-level fenced blocks of a markdown cell's lines.

    Returns:
        (first line, last line, directive name or None, directive argument, body lines) for
        each block: ```{exercise} ...```, ```{solution-start} ex-02-a```, ```python ...```.
        A block closes at a line of the same fence character, at least as long (CommonMark).
    """
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        fence = m["fence"]
        close = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        d = DIRECTIVE.match(m["info"])
        blocks.append((i, min(j, len(lines) - 1), d["name"] if d else None,
                       d["arg"].strip() if d else "", lines[i + 1:j]))
        i = j + 1
    return blocks


@dataclass
class Exercise:
    """One exercise of a chapter, as cell indices into the notebook."""
    label: str                      # the exercise's :label:
    cell: int                       # markdown cell holding the {exercise} directive
    code: list[int] = field(default_factory=list)       # code cells between it and its solution
    solution_label: str | None = None                   # the label its solution refers to
    solution_code: list[int] = field(default_factory=list)  # code cells inside the solution

    def starters(self, nb) -> list[int]:
        return [i for i in self.code if is_starter(nb.cells[i])]


def scan(nb) -> tuple[list[Exercise], list[str | None]]:
    """Read a chapter's exercises and solutions.

    A solution is either gated, everything from a ```{solution-start}``` block to the end of
    the next ```{solution-end}``` block (markdown text, code cells, both directives), or one
    ```{solution}``` block. Text before a solution-start or after a solution-end in the same
    markdown cell is not part of it.

    Returns:
        the exercises in order, and for each cell its student source: the markdown cell
        without any solution text, the code cell unchanged, or None (drop the cell).
    Raises:
        ValueError: unbalanced solution-start / solution-end (the pack would leak a
            solution or lose the rest of the chapter).
    """
    exercises: list[Exercise] = []
    student: list[str | None] = []
    open_at = None  # cell index of the solution-start not yet closed
    for ci, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            inside = open_at is not None
            if exercises and cell.cell_type == "code":
                if inside:
                    exercises[-1].solution_code.append(ci)
                elif exercises[-1].solution_label is None:  # between an exercise and its solution
                    exercises[-1].code.append(ci)
            student.append(None if inside else cell.source)
            continue
        lines = cell.source.split("\n")
        keep = [True] * len(lines)
        pos = 0
        for first, last, name, arg, body in fenced_blocks(lines):
            for k in range(pos, first):
                keep[k] = open_at is None
            if name == "solution-start":
                if open_at is not None:
                    raise ValueError(f"cell {ci}: solution-start inside the solution opened at cell {open_at}")
                open_at = ci
                if exercises:
                    exercises[-1].solution_label = arg
            elif name == "solution-end" and open_at is None:
                raise ValueError(f"cell {ci}: solution-end without a solution-start")
            elif name == "exercise" and open_at is None:
                label = next((m.group(1) for m in map(LABEL.match, body) if m), "")
                exercises.append(Exercise(label=label, cell=ci))
            elif name == "solution" and open_at is None and exercises:
                exercises[-1].solution_label = arg
            hide = open_at is not None or name in ("solution", "solution-end")
            for k in range(first, last + 1):
                keep[k] = not hide
            if name == "solution-end":
                open_at = None
            pos = last + 1
        for k in range(pos, len(lines)):
            keep[k] = open_at is None
        text = "\n".join(line for line, k in zip(lines, keep) if k).strip("\n")
        student.append(text if text.strip() else None)
    if open_at is not None:
        raise ValueError(f"cell {open_at}: solution-start without a solution-end")
    return exercises, student


def student_version(nb):
    """A copy of notebook `nb` for students (see the module docstring)."""
    nb = copy.deepcopy(nb)
    _, sources = scan(nb)
    cells = []
    for cell, source in zip(nb.cells, sources):
        if source is None:
            continue
        cell.source = source
        if is_starter(cell):
            tags = [t for t in cell.metadata.get("tags", []) if t not in STARTER_TAGS]
            if tags:
                cell.metadata["tags"] = tags
            else:
                cell.metadata.pop("tags", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    title = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"
                  and c.source.lstrip().startswith("# ")), -1)
    cells.insert(title + 1, nbformat.v4.new_markdown_cell(STUDENT_NOTE))
    nb.cells = cells
    nb.metadata.pop("widgets", None)
    leaked = [c.source for c in cells if c.cell_type == "code" and re.search(r"assert\s+check\(", c.source)]
    if leaked:
        raise ValueError(f"solution code outside a solution block: {leaked[0][:200]!r}")
    return nb


STUDENT_README = """\
# Knowledge Distillation for the Edge: student notebooks

These are the book's chapters without the solutions to the exercises. The text,
code and figures are all there; at the end of each chapter, under **Exercises**,
each exercise has a code cell that ends with a check:

```python
def softmax_T(z, T):
    ...  # your code here

check("02.1", softmax_T)
```

Replace the `...` with your answer and run the cell. The check prints either
`Exercise 02.1: correct. Well done!` or `Exercise 02.1: not yet.` followed by what
is wrong (a wrong shape, a value off by how much, an error your code raised, ...).
Run it as often as you like: it never changes your work.

## Running the notebooks

* **On your computer** (recommended): in a clone of the book's repository run
  `make setup` (or `python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
  && .venv/bin/pip install -e .`), then start Jupyter with `.venv/bin/jupyter lab` and open
  the notebooks in this folder.
* **On Colab**: upload a notebook; its first code cell installs the book's library.

Run the cells from the top (the exercises use the chapter's variables).

## Checking a whole notebook

With the book's environment active:

    python grade.py notebooks/02_soft_labels.ipynb

runs the notebook from top to bottom in a fresh kernel (your file is not changed)
and prints one line per exercise: `correct`, `not yet` (with the reason) or
`not run` (an earlier cell raised an error: fix that first). Your teacher may grade
your work the same way.
"""


RELATIVE_FILE = re.compile(r"""["'](\.\./[\w./-]+)["']""")


def data_files(nb, folder: Path) -> list[str]:
    """Files outside its folder that a notebook's code opens by a relative path ("../bench/results/x.json").

    Returns:
        the paths relative to `folder`'s parent, for the files that exist (e.g. "bench/results/x.json").
    """
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for rel in RELATIVE_FILE.findall(cell.source):
            target = os.path.normpath(folder / rel)
            inside = os.path.relpath(target, folder.parent)
            if Path(target).is_file() and not inside.startswith(".."):
                found.append(Path(inside).as_posix())
    return sorted(set(found))


def make_pack(notebooks: list[Path], out: Path, *, force: bool = False) -> list[Path]:
    """Write the student version of each notebook to `out/notebooks/`, plus README.md and grade.py.

    Files the notebooks read by a relative path outside their folder (saved benchmark results,
    "../bench/results/...") are copied to the same place in the pack, so the notebooks run there.

    Args:
        notebooks: the chapters (.ipynb).
        out: the pack's folder; it must not exist unless `force` (then it is replaced).
    Returns:
        the paths of the student notebooks written.
    """
    if not notebooks:
        raise ValueError("no notebooks given: is notebooks/ empty?")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # build beside, then swap in
        tmp = Path(tmp) / "pack"
        (tmp / "notebooks").mkdir(parents=True)
        written = []
        for path in notebooks:
            try:
                nb = student_version(nbformat.read(path, as_version=4))
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
            nbformat.write(nb, tmp / "notebooks" / path.name)
            written.append(out / "notebooks" / path.name)
            for rel in data_files(nb, path.parent):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path.parent.parent / rel, tmp / rel)
        (tmp / "README.md").write_text(STUDENT_README)
        shutil.copy2(Path(__file__), tmp / "grade.py")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    return written


def grade(path: Path, *, timeout: int = 300) -> dict[str, str]:
    """Execute notebook `path` in a fresh kernel and return {exercise id: result}.

    The result is "correct", "not yet: <reason>" or "not run" (the starter's cell
    never printed a check, e.g. because an earlier cell raised). Errors do not stop
    the run; the file on disk is not changed.
    """
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    expected = [m.group(1) for c in nb.cells if c.cell_type == "code" for m in CHECK_CALL.finditer(c.source)]
    for cell in nb.cells:  # run the starters even in a notebook that still carries their tags
        if is_starter(cell):
            cell.metadata["tags"] = [t for t in cell.metadata.get("tags", []) if t not in STARTER_TAGS]
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.resolve().parent)}}).execute()
    results = {ex: "not run" for ex in expected}
    for cell in nb.cells:
        text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")
        for line in text.splitlines():
            m = RESULT_LINE.match(line)
            if m:
                detail = line.split("not yet.", 1)[-1].strip() if m.group(2) == "not yet" else ""
                results[m.group(1)] = "correct" if m.group(2) == "correct" else f"not yet: {detail}"
    return results


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _graded(notebooks: list[Path], timeout: int, jobs: int):
    """(path, results) for each notebook, in the given order; `jobs` notebooks run at a time,
    each in its own process (the chapters train on one thread, so one per core)."""
    if jobs == 1 or len(notebooks) == 1:
        yield from ((path, grade(path, timeout=timeout)) for path in notebooks)
        return
    import functools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one torch thread per kernel, as the chapters use
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(notebooks)), mp_context=ctx) as pool:
        yield from zip(notebooks, pool.map(functools.partial(grade, timeout=timeout), notebooks))


def _main_grade(argv) -> int:
    p = argparse.ArgumentParser(prog="grade", description="Run notebooks and score their exercises.")
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--timeout", type=int, default=300, help="seconds per cell (default 300)")
    p.add_argument("--jobs", "-j", type=int, default=min(_cores(), 4),
                   help="notebooks graded at a time, each in its own kernel (default: the number of "
                        f"cores, at most 4; here {min(_cores(), 4)})")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be 1 or more, got {args.jobs}")
    missing = [str(path) for path in args.notebooks if not path.is_file()]
    if missing:
        print(f"error: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    total = right = 0
    for path, results in _graded(args.notebooks, args.timeout, args.jobs):
        n_ok = sum(r == "correct" for r in results.values())
        print(f"{path}: {n_ok}/{len(results)} correct")
        for ex, r in results.items():
            print(f"  {ex}: {r}")
        total, right = total + len(results), right + n_ok
    if len(args.notebooks) > 1:
        print(f"total: {right}/{total} correct")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["grade"]:
        return _main_grade(argv[1:])
    if Path(sys.argv[0]).name == "grade.py":  # the copy inside the pack: grading is all it does
        return _main_grade(argv)
    p = argparse.ArgumentParser(description="Write the student pack (notebooks without solutions).")
    p.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help="folder of chapters")
    p.add_argument("--out", type=Path, default=ROOT / "student-pack", help="pack folder (default student-pack)")
    p.add_argument("--force", action="store_true", help="replace an existing pack")
    args = p.parse_args(argv)
    try:
        written = make_pack(sorted(args.notebooks.glob("[0-9][0-9]_*.ipynb")), args.out, force=args.force)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} student notebooks, README.md and grade.py to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
