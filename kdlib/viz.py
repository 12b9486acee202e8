"""Plots shared by several chapters.

Every function draws with matplotlib and returns the `Figure`, so that a
notebook can `plt.show()` it and a test can inspect its axes and labels.
Functions that draw one panel take an optional `ax`: pass one to draw into a
figure you made yourself (a grid of panels, or a frame of an animation).
Nothing here needs the internet or a running kernel.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

# The distillation workflow, one (title, detail) pair per step.
WORKFLOW_STEPS = (
    ("1. Prepare", "a trained teacher,\na small student\n(Chapter 4)"),
    ("2. Soft labels", "teacher logits\nsoftened by T\n(Chapters 2-3)"),
    ("3. Train the student", "distillation loss:\nsoft + hard terms\n(Chapter 5)"),
    ("4. Evaluate", "accuracy, bytes,\nlatency\n(Chapters 5, 13)"),
)
WORKFLOW_NEXT = "then compress and ship: prune (Ch. 8), quantize (Ch. 9), export (Ch. 10)"


# The matplotlib settings every chapter's figures share (kdlib.chapter.begin applies them).
# A text of s points in a figure w inches wide, shown W CSS pixels wide, is s * W / (72 * w)
# pixels high on the page, whatever the dpi. The book wants >= 9 px on a phone, whose column
# is 358 px wide at 390 px: 10-point text in a figure at most 5.5 inches wide. Figures narrower
# than the column show at their own size, dpi / 72 pixels per point (13.9 px for 10 points).
BOOK_STYLE: dict = {
    "figure.figsize": (5.2, 3.2),   # inches: fits a phone's column with 10-point text
    "figure.dpi": 100,              # 520 px wide: the PNG the page shows, at its own size on a desktop
    "savefig.dpi": "figure",
    "figure.facecolor": "white",    # opaque: readable on the website's dark theme too
    "savefig.facecolor": "white",
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.title_fontsize": 10,
    "figure.titlesize": 12,
}


def use_book_style() -> None:
    """Apply the book's figure settings (`BOOK_STYLE`) to matplotlib; in a Jupyter kernel, also
    make each figure's PNG record its smallest text and overlapping labels
    (`kdlib.widgets.record_figure_text`), which the website's tests check.
    """
    from .widgets import record_figure_text

    record_figure_text()  # first: the inline backend it may set up must not undo the settings below
    plt.rcParams.update(BOOK_STYLE)


def _axes(ax, figsize) -> tuple[Figure, plt.Axes]:
    """The figure and axes to draw on: `ax` and its figure, or a new pair."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    if not isinstance(ax, plt.Axes):
        raise TypeError(f"ax must be a matplotlib Axes (or None for a new figure), got {type(ax).__name__}")
    return ax.figure, ax


def _as_array(name: str, values, ndim: int) -> np.ndarray:
    """`values` (a list, NumPy array or torch tensor) as a finite float array with `ndim` dims."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be numbers (a list, array or tensor), got {type(values).__name__}") from None
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be non-empty and finite, got shape {arr.shape}")
    return arr


def _class_names(classes, n: int) -> list[str]:
    """`classes` as n strings (0..n-1 when None)."""
    if classes is None:
        return [str(i) for i in range(n)]
    names = [str(c) for c in classes]
    if len(names) != n:
        raise ValueError(f"got {len(names)} class names for {n} classes; pass one name per class")
    return names


def plot_workflow(steps: Sequence[tuple[str, str]] = WORKFLOW_STEPS, *, next_step: str | None = WORKFLOW_NEXT,
                  ax=None) -> Figure:
    """Draw a workflow as a row of boxes joined by arrows (no internet, no graphviz).

    Args:
        steps: (title, detail) per box, left to right; the default is the
            distillation workflow of the book.
        next_step: a line of text under the row (what comes after), or None.
        ax: axes to draw on, or None for a new figure.
    Returns:
        the Figure; its axes are switched off and hold one bold text per title.

    Introduced in: notebooks/01_edge_budgets.ipynb
    """
    if not steps or not all(isinstance(s, (tuple, list)) and len(s) == 2 for s in steps):
        raise ValueError("steps must be a non-empty list of (title, detail) pairs")
    n = len(steps)
    fig, ax = _axes(ax, (2.7 * n, 2.3))
    width, gap = 1.4, 0.45
    for i, (title, detail) in enumerate(steps):
        x = i * (width + gap)
        ax.add_patch(FancyBboxPatch((x, 0.0), width, 1.0, boxstyle="round,pad=0.03,rounding_size=0.08",
                                    facecolor=plt.cm.Blues(0.15 + 0.12 * i), edgecolor="#1f4e79", linewidth=1.2))
        ax.text(x + width / 2, 0.80, title, ha="center", va="center", fontsize=10, fontweight="bold")
        ax.text(x + width / 2, 0.38, detail, ha="center", va="center", fontsize=8.5)
        if i < n - 1:
            ax.annotate("", xy=(x + width + gap - 0.04, 0.5), xytext=(x + width + 0.04, 0.5),
                        arrowprops=dict(arrowstyle="-|>", color="#1f4e79", linewidth=1.5))
    right = n * width + (n - 1) * gap
    if next_step:
        ax.text(right / 2, -0.22, next_step, ha="center", va="center", fontsize=9, style="italic")
    ax.set_xlim(-0.1, right + 0.1)
    ax.set_ylim(-0.4 if next_step else -0.1, 1.1)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig


def plot_budgets(sizes: dict, budgets: dict, *, xlabel: str = "bytes (log scale)", title: str | None = None,
                 ax=None) -> Figure:
    """Horizontal bars of model sizes against vertical lines for device budgets.

    Args:
        sizes: model name -> size (e.g. bytes of weights).
        budgets: device name -> budget in the same unit (e.g. flash bytes).
        xlabel, title: axis label and title.
    Returns:
        the Figure, with a log-scaled x axis, one bar per model and one
        labelled dashed line per budget.

    Introduced in: notebooks/01_edge_budgets.ipynb
    """
    if not isinstance(sizes, dict) or not isinstance(budgets, dict) or not sizes:
        raise TypeError("sizes and budgets must be dicts of name -> number, and sizes must not be empty")
    values = _as_array("sizes", list(sizes.values()), 1)
    limits = _as_array("budgets", list(budgets.values()), 1) if budgets else np.array([])
    if (values <= 0).any() or (limits <= 0).any():
        raise ValueError("sizes and budgets must be positive (the axis is logarithmic)")
    fig, ax = _axes(ax, (7, 0.6 * len(sizes) + 1.6))
    ax.barh(list(sizes), values, color="#4c72b0")
    for (name, limit), colour in zip(budgets.items(), plt.cm.Dark2.colors):
        ax.axvline(limit, color=colour, linestyle="--", linewidth=1.5, label=name)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.invert_yaxis()  # first model on top
    if budgets:
        ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def plot_curves(x, curves: dict, *, xlabel: str, ylabel: str, title: str | None = None, logx: bool = False,
                logy: bool = False, ax=None) -> Figure:
    """Several labelled lines over the same x values (e.g. a quantity against T).

    Args:
        x: (N,) x values.
        curves: label -> (N,) y values.
        xlabel, ylabel, title: axis labels and title.
        logx, logy: logarithmic axes.
    Returns:
        the Figure, with one line per curve and a legend.

    Introduced in: notebooks/02_soft_labels.ipynb
    """
    xs = _as_array("x", x, 1)
    if not isinstance(curves, dict) or not curves:
        raise TypeError("curves must be a non-empty dict of label -> y values")
    fig, ax = _axes(ax, (5.5, 3.2))
    for label, ys in curves.items():
        ys = _as_array(f"curves[{label!r}]", ys, 1)
        if ys.shape != xs.shape:
            raise ValueError(f"curves[{label!r}] has {ys.size} values but x has {xs.size}")
        ax.plot(xs, ys, marker="o", markersize=3, label=str(label))
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def plot_soft_targets(probs, classes=None, *, title: str | None = None, highlight: int | None = None,
                      ax=None) -> Figure:
    """Bar chart of one probability vector over the classes.

    Args:
        probs: (K,) probabilities (a row of `kdlib.losses.soft_targets`).
        classes: K class names, or None for 0..K-1.
        title: axes title (e.g. "T = 4").
        highlight: a class index drawn in a darker colour (e.g. the label).
    Returns:
        the Figure; y axis "probability" from 0 to 1.

    Introduced in: notebooks/02_soft_labels.ipynb
    """
    p = _as_array("probs", probs, 1)
    names = _class_names(classes, p.size)
    if highlight is not None and not 0 <= int(highlight) < p.size:
        raise ValueError(f"highlight must be a class index in 0..{p.size - 1}, got {highlight}")
    fig, ax = _axes(ax, (4.5, 2.6))
    colours = ["#1f4e79" if i == highlight else "#7fa7d3" for i in range(p.size)]
    ax.bar(names, p, color=colours)
    ax.set_ylim(0, 1)
    ax.set_xlabel("class")
    ax.set_ylabel("probability")
    if title:
        ax.set_title(title)
    return fig


def plot_class_similarity(matrix, classes=None, *, title: str | None = None, annotate: bool = True,
                          show_diagonal: bool = True, ax=None) -> Figure:
    """Heat map of a (K, K) matrix whose row i is the mean soft target of class i.

    Args:
        matrix: (K, K) values, row = true class, column = predicted class.
        classes: K class names, or None for 0..K-1.
        title: axes title.
        annotate: write each value in its cell, as a percentage.
        show_diagonal: False leaves the diagonal blank, so that the colours
            spread over the (much smaller) off-diagonal values.
    Returns:
        the Figure, with axes labelled "true class" (y) and
        "teacher's probability for class" (x) and a colour bar.

    Introduced in: notebooks/02_soft_labels.ipynb
    """
    m = _as_array("matrix", matrix, 2)
    if m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square (K, K), got shape {m.shape}")
    names = _class_names(classes, m.shape[0])
    shown = m.copy()
    if not show_diagonal:
        np.fill_diagonal(shown, np.nan)  # NaN cells are left blank by imshow
    fig, ax = _axes(ax, (5.6, 4.6))
    image = ax.imshow(shown, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="probability")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("teacher's probability for class")
    ax.set_ylabel("true class")
    if annotate:
        top = np.nanmax(shown)
        for (i, j), v in np.ndenumerate(shown):
            if np.isnan(v):
                continue
            ax.text(j, i, f"{100 * v:.0f}" if v >= 0.095 else f"{100 * v:.1f}", ha="center", va="center",
                    fontsize=7, color="white" if v > 0.6 * top else "black")
    if title:
        ax.set_title(title)
    return fig
