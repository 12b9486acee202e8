"""The cells every chapter shares: the first one starts the clock, the last one reports the run time.

    from kdlib.chapter import begin, glue
    CHAPTER = begin()      # one torch thread, the clock, the book's figure style
    ...
    glue("acc", f"{acc:.1%}", display=False)
    ...
    CHAPTER.end()          # glues `runtime_s` for the chapter's header and prints the run time

`glue` is myst-nb's when it is installed (the book's build puts the value into the text) and
a stand-in that keeps the value otherwise, so that a chapter also runs in a plain Jupyter or
Colab session with only kdlib installed.
"""
from __future__ import annotations

import time

import torch

from .validation import check_int

GLUED: dict[str, object] = {}  # what the stand-in glue kept, by name


def glue(name: str, value, display: bool = True) -> None:
    """Keep `value` under `name` for the text of the page (`{glue:text}` in MyST).

    Introduced in: notebooks/01_edge_budgets.ipynb
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # not building the book: keep it, and show it if asked
        GLUED[name] = value
        if display:
            from IPython.display import display as show
            show(value)
        return
    myst_glue(name, value, display=display)


class Chapter:
    """The clock of one chapter's run (wall and CPU time since `begin`)."""

    def __init__(self):
        self.start, self.start_cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) since `begin`."""
        return time.perf_counter() - self.start, time.process_time() - self.start_cpu

    def end(self) -> None:
        """Glue `runtime_s` (rounded to 5 s, for the header's "Runs in about N s") and print the run time.

        Introduced in: notebooks/01_edge_budgets.ipynb
        """
        runtime, cpu = self.elapsed()
        glue("runtime_s", f"{5 * max(1, round(runtime / 5)):.0f}", display=False)
        print(f"this page ran in {runtime:.0f} s ({cpu:.0f} s of CPU time in this kernel)")

    def __repr__(self) -> str:
        return f"Chapter(running for {self.elapsed()[0]:.0f} s)"


def begin(threads: int = 1) -> Chapter:
    """Start a chapter: torch on `threads` threads (small models run fastest, and time steadiest,
    on one), the book's figure style, and the clock for `Chapter.end`.

    Introduced in: notebooks/01_edge_budgets.ipynb
    """
    check_int(threads, "threads", low=1)
    torch.set_num_threads(threads)
    from .viz import use_book_style
    use_book_style()
    return Chapter()
