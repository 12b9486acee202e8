"""ipywidgets for the live notebook, and their static-site twins.

Each interactive figure comes in two forms built from one drawing function
`draw(fig, value)`:

* live (Jupyter, a kernel is running): `live_plot(draw, slider)` re-draws the
  figure whenever the slider moves and shows it as a PNG in an
  `ipywidgets.Image`;
* static (the book's web pages, no kernel): `static_slider(draw, values)`
  draws every value once and returns the HTML of matplotlib's JavaScript
  animation (`FuncAnimation.to_jshtml`), whose slider still moves without a
  kernel or the internet.

Chapter-specific builders below pair the two, e.g. `soft_label_slider` and
`soft_label_frames` (Chapter 2).

On the book's web pages the live widget is not shown (a slider that moves
nothing would mislead): its output also carries an HTML form, which the book
shows instead (a note, or the precomputed player when `frames=` is given), and
which any front end without a widget manager shows too.

Every figure this module draws, and every figure a chapter shows once
`kdlib.chapter.begin()` has run, records its smallest text and its overlapping
labels (`figure_text_report`): tests/test_site.py checks from that record that
the text is readable where the page shows the figure.
"""
from __future__ import annotations

import base64
import functools
import html
import io
import json
import re
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .losses import soft_targets
from .viz import _as_array, _class_names, plot_soft_targets

Draw = Callable[[Figure, float], object]  # draw(fig, value): draws one frame on an empty figure


def compact_png(png: bytes) -> bytes:
    """`png` with its colours reduced to a 256-colour palette, its text chunks kept.

    For the book's figures (line plots, bars, digit images on white) this is about a third of
    the bytes with no visible change, which is what a page weighs on a phone. An image with
    transparent pixels, or one that would not get smaller, is returned as it is.
    """
    from PIL import Image, PngImagePlugin

    with Image.open(io.BytesIO(png)) as im:
        if "A" in im.getbands() and im.getchannel("A").getextrema()[0] < 255:
            return png
        info = PngImagePlugin.PngInfo()
        for key, value in (getattr(im, "text", None) or {}).items():
            info.add_text(key, value)
        palette = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
        buf = io.BytesIO()
        keep = {"dpi": im.info["dpi"]} if "dpi" in im.info else {}
        palette.save(buf, format="PNG", optimize=True, pnginfo=info, **keep)
    small = buf.getvalue()
    return small if len(small) < len(png) else png


def figure_to_png(fig: Figure, *, dpi: int | None = None, close: bool = True) -> bytes:
    """The PNG bytes of `fig` (closed afterwards unless `close=False`), in a 256-colour palette
    (`compact_png`).
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    if close:
        plt.close(fig)
    return compact_png(buf.getvalue())


def render(draw: Draw, value, *, figsize=(5.5, 2.6), dpi: int = 80) -> bytes:
    """Draw one frame `draw(fig, value)` on a new figure and return its PNG bytes.
    """
    if not callable(draw):
        raise TypeError(f"draw must be a function draw(fig, value), got {type(draw).__name__}")
    fig = plt.figure(figsize=figsize, dpi=dpi)
    try:
        draw(fig, value)
    except BaseException:
        plt.close(fig)
        raise
    return figure_to_png(fig, dpi=dpi)


# ---------------------------------------------------------------- figures on the book's pages
# What a reader needs to read a figure: its smallest text and labels that do not overlap. The
# record travels with the figure (a PNG text chunk, or the player's data attribute), and
# tests/test_site.py turns it into CSS pixels at the width the page shows the figure.

PNG_KEY = "kdlib-figure"  # the PNG text chunk that holds figure_text_report(fig) as JSON


def _drawn_texts(fig: Figure) -> list:
    """The non-empty texts that drawing `fig` really draws (tick labels out of view, hidden
    axes and invisible artists are not drawn), in drawing order."""
    from matplotlib.text import Text

    drawn: dict[int, Text] = {}
    original = Text.draw

    def spy(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip() and self.get_alpha() != 0:
            drawn[id(self)] = self

    Text.draw = spy
    try:
        fig.canvas.draw()
    finally:
        Text.draw = original
    return list(drawn.values())


def _corners(text, renderer) -> np.ndarray:
    """(4, 2) corners, in display pixels, of the rectangle a text covers (rotated with it)."""
    box = text.get_window_extent(renderer)
    angle = text.get_rotation() % 180
    if angle % 90 == 0:
        return np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1]])
    text.set_rotation(0)
    w, h = text.get_window_extent(renderer).size
    text.set_rotation(angle)
    u = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
    v = np.array([-u[1], u[0]])
    c = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
    return np.array([c - w / 2 * u - h / 2 * v, c + w / 2 * u - h / 2 * v,
                     c + w / 2 * u + h / 2 * v, c - w / 2 * u + h / 2 * v])


def _rectangles_overlap(a: np.ndarray, b: np.ndarray, tol: float = 1.0) -> bool:
    """Whether two rectangles (4, 2) overlap by more than `tol` pixels (separating axis test)."""
    for poly in (a, b):
        for i in range(2):
            edge = poly[i + 1] - poly[i]
            axis = np.array([-edge[1], edge[0]]) / (np.hypot(*edge) or 1.0)
            pa, pb = a @ axis, b @ axis
            if min(pa.max(), pb.max()) - max(pa.min(), pb.min()) <= tol:
                return False
    return True


def _legend_overlaps(fig: Figure, texts: list, renderer) -> list[str]:
    """Bars and texts that a legend covers."""
    from matplotlib.container import BarContainer

    found = []
    for legend in [ax.get_legend() for ax in fig.axes] + list(fig.legends):
        if legend is None or not legend.get_visible():
            continue
        box, own = legend.get_window_extent(renderer), {id(t) for t in legend.get_texts()}
        own.add(id(legend.get_title()))
        for ax in fig.axes:
            for bars in (c for c in ax.containers if isinstance(c, BarContainer)):
                for i, bar in enumerate(bars):
                    b = bar.get_window_extent(renderer)
                    w = min(box.x1, b.x1) - max(box.x0, b.x0)
                    h = min(box.y1, b.y1) - max(box.y0, b.y0)
                    if w > 1 and h > 1 and w * h > 0.05 * b.width * b.height:
                        found.append(f"the legend covers bar {i + 1} of {bars.get_label() or 'a bar chart'!r}")
        covered = [t for t in texts if id(t) not in own and box.overlaps(t.get_window_extent(renderer))]
        found += [f"the legend covers {_shown_text(t)!r}" for t in covered]
    return found


def _shown_text(text) -> str:
    """A text as a reader sees it, shortened: '$\\mathdefault{10^{3}}$' -> '10^{3}'."""
    return re.sub(r"\$\\mathdefault\{(.*)\}\$", r"\1", text.get_text()).replace("\\times", "x")[:40]


def figure_text_report(fig: Figure) -> dict:
    """How readable `fig` is, measured by drawing it at its own dpi.

    Returns:
        {"dpi": fig.dpi, "texts": number of texts drawn, "min_font_pt": smallest font size in
        points (None without text), "smallest": that text, "overlaps": ["'a' overlaps 'b'",
        "the legend covers bar 3 of 'int8'", ...] (at most 12)}. A text of s points is
        s * dpi / 72 pixels high in the PNG; shown at a fraction f of the PNG's width it is
        f times that on the page.
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    texts = _drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    boxes = [_corners(t, renderer) for t in texts]
    overlaps = [f"{_shown_text(texts[i])!r} overlaps {_shown_text(texts[j])!r}"
                for i in range(len(texts)) for j in range(i + 1, len(texts))
                if _rectangles_overlap(boxes[i], boxes[j])]
    overlaps += _legend_overlaps(fig, texts, renderer)
    smallest = min(texts, key=lambda t: t.get_fontsize(), default=None)
    return {"dpi": float(fig.dpi), "texts": len(texts),
            "min_font_pt": None if smallest is None else float(smallest.get_fontsize()),
            "smallest": None if smallest is None else _shown_text(smallest), "overlaps": overlaps[:12]}


def merge_text_reports(reports: Sequence[dict]) -> dict:
    """One report for several frames of one figure: the smallest text of all, every overlap once.
    """
    sized = [r for r in reports if r["min_font_pt"] is not None]
    smallest = min(sized, key=lambda r: r["min_font_pt"], default=None)
    overlaps = list(dict.fromkeys(o for r in reports for o in r["overlaps"]))
    return {"dpi": max((r["dpi"] for r in reports), default=None), "texts": max((r["texts"] for r in reports), default=0),
            "min_font_pt": smallest and smallest["min_font_pt"], "smallest": smallest and smallest["smallest"],
            "overlaps": overlaps[:12]}


def png_metadata(fig: Figure) -> dict[str, str]:
    """`{"kdlib-figure": figure_text_report(fig) as JSON}`, for `fig.savefig(path, metadata=...)`
    when a chapter shows a PNG file (IPython.display.Image) instead of the figure itself. A
    failed measurement is recorded as {"error": ...} (the figure is saved all the same).
    """
    try:
        report = figure_text_report(fig)
    except Exception as err:  # noqa: BLE001 - never stop a figure from being shown
        report = {"error": f"{type(err).__name__}: {err}"}
    return {PNG_KEY: json.dumps(report)}


def _png_with_report(fig: Figure):
    """IPython's PNG of `fig` (as the inline backend makes it), with figure_text_report inside,
    in a 256-colour palette (`compact_png`), base64-encoded as IPython's PNG formatter returns it."""
    from IPython.core.pylabtools import print_figure

    if not fig.axes and not fig.lines:  # IPython shows nothing for an empty figure
        return None
    png = print_figure(fig, fmt="png", bbox_inches="tight", metadata=png_metadata(fig))
    return base64.b64encode(compact_png(png)).decode("ascii")


def record_figure_text() -> bool:
    """Make the PNGs of this IPython kernel's figures carry `figure_text_report` (PNG text
    chunk "kdlib-figure"); `kdlib.chapter.begin()` calls it through `viz.use_book_style`.

    Returns:
        True when installed, False outside IPython (nothing to do).
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "display_formatter"):
        return False
    import matplotlib

    if "inline" in matplotlib.get_backend():
        # the inline backend sets up its own PNG printer when it is first imported: import it
        # now, so that it does not replace this one later
        import matplotlib_inline.backend_inline  # noqa: F401
    shell.display_formatter.formatters["image/png"].for_type(Figure, _png_with_report)
    return True


# shown where the live widget cannot run: the book's web pages, and front ends without widgets
LIVE_ONLY_NOTE = ('<p class="kd-live-only"><em>A live slider appears here when this notebook runs in '
                  'Jupyter: it needs a running kernel to redraw the figure, so the website leaves it out.'
                  '</em></p>')


@functools.cache
def _live_box_class():
    """An ipywidgets VBox whose output also carries an HTML form (`.static_html`) for pages
    without a kernel; Jupyter shows the widget, the book's website the HTML."""
    import ipywidgets as widgets

    class LivePlot(widgets.VBox):
        static_html = LIVE_ONLY_NOTE

        def _repr_mimebundle_(self, **kwargs):
            data = super()._repr_mimebundle_(**kwargs)
            if data is not None:
                data["text/html"] = self.static_html
            return data

    return LivePlot


def live_plot(draw: Draw, slider, *, describe: Callable[[float], str] | None = None, figsize=(5.5, 2.6),
              dpi: int = 80, static: str | None = None):
    """A slider, a caption and a figure that is re-drawn whenever the slider moves.

    Args:
        draw: draw(fig, value) draws one frame on an empty figure.
        slider: an ipywidgets slider (e.g. `FloatSlider`) whose value is passed to draw.
        describe: value -> caption text (plain text; escaped), or None for no caption.
        figsize, dpi: size of the rendered figure.
        static: the HTML shown instead of the widget where no kernel runs it (the book's web
            pages), e.g. `static_slider(...)`; None for a short note (`LIVE_ONLY_NOTE`).
    Returns:
        an `ipywidgets.VBox` [slider, caption, image], with the three parts
        also reachable as `.slider`, `.caption` and `.image`, and `.update(value)`
        to redraw by hand. The image holds PNG bytes, so the widget works in
        Jupyter and VS Code without any matplotlib backend set up.
    """
    import ipywidgets as widgets

    if not isinstance(slider, widgets.ValueWidget):
        raise TypeError(f"slider must be an ipywidgets slider (e.g. FloatSlider), got {type(slider).__name__}")
    if static is not None and not isinstance(static, str):
        raise TypeError(f"static must be HTML (a string) or None, got {type(static).__name__}")
    image = widgets.Image(format="png", layout=widgets.Layout(max_width=f"{int(figsize[0] * dpi)}px"))
    caption = widgets.HTML()

    def update(value) -> None:
        image.value = render(draw, value, figsize=figsize, dpi=dpi)
        if describe is not None:
            caption.value = f"<code>{html.escape(describe(value))}</code>"

    slider.observe(lambda change: update(change["new"]), names="value")
    box = _live_box_class()([slider, caption, image])
    box.slider, box.caption, box.image, box.update = slider, caption, image, update
    if static is not None:
        box.static_html = static
    update(slider.value)
    return box


def static_slider(draw: Draw, values: Sequence[float], *, figsize=(5.2, 2.6), dpi: int = 80,
                  interval_ms: int = 600, alt: str | None = None) -> str:
    """The static twin of `live_plot`: every value drawn once, as a JavaScript animation.

    The frames are PNG images embedded in the HTML (keep `values` short and
    the figure small: each frame adds about 10-20 KB to the page). The
    reader moves matplotlib's slider or steps frame by frame; no kernel and
    no internet needed.

    Args:
        draw: draw(fig, value) draws one frame on an empty figure.
        values: the values to precompute, in slider order (2 to 40 of them).
        figsize, dpi: size of each frame.
        interval_ms: delay between frames when the reader presses play.
        alt: what the frames show, for readers who cannot see them (the image's alt text);
            None says only how many frames there are.
    Returns:
        the HTML (a string); show it with `IPython.display.HTML(...)`.
    """
    from matplotlib.animation import FuncAnimation

    if not callable(draw):
        raise TypeError(f"draw must be a function draw(fig, value), got {type(draw).__name__}")
    values = list(values)
    if not 2 <= len(values) <= 40:
        raise ValueError(f"pass between 2 and 40 values (each is one embedded image), got {len(values)}")
    if alt is None:
        alt = f"A figure drawn for {len(values)} values ({', '.join(f'{v:g}' for v in values)}), one frame each"
    fig = plt.figure(figsize=figsize, dpi=dpi)
    reports = []

    def frame(i: int):
        fig.clear()
        draw(fig, values[i])
        reports.append(figure_text_report(fig))
        return []

    try:
        anim = FuncAnimation(fig, frame, frames=len(values), interval=interval_ms, blit=False, repeat=False)
        jshtml = anim.to_jshtml(default_mode="once")
    finally:
        plt.close(fig)
    return offline_controls(jshtml, alt=alt, report=merge_text_reports(reports))


# matplotlib's player draws its buttons with Font Awesome icons fetched from a CDN;
# plain Unicode symbols keep the page whole without the internet.
_ICONS = {"fa fa-minus": "\u2212", "fa fa-fast-backward": "\u21e4", "fa fa-step-backward": "\u25c1",
          "fa fa-play fa-flip-horizontal": "\u25c0", "fa fa-pause": "\u275a\u275a", "fa fa-play": "\u25b6",
          "fa fa-step-forward": "\u25b7", "fa fa-fast-forward": "\u21e5", "fa fa-plus": "+"}


def offline_controls(jshtml: str, *, alt: str | None = None, report: dict | None = None) -> str:
    """matplotlib's animation HTML made fit for the book's pages: no Font Awesome stylesheet
    (a CDN link; each button icon becomes a Unicode symbol, so the player works offline), a
    frame and slider that shrink to a narrow column, and, when given, the frame's alt text and
    its `figure_text_report` (a `kd-player` box with a `data-kdlib-figure` attribute, which
    tests/test_site.py reads).
    """
    if not isinstance(jshtml, str):
        raise TypeError(f"jshtml must be the string of FuncAnimation.to_jshtml(), got {type(jshtml).__name__}")
    out = re.sub(r'<link rel="stylesheet"\s+href="[^"]*font-awesome[^"]*">\s*', "", jshtml)
    for css, symbol in _ICONS.items():
        out = out.replace(f'<i class="{css}"></i>', symbol)
    # the frame and the slider have fixed pixel widths: let them shrink on a phone
    out = out.replace("input[type=range].anim-slider {", "input[type=range].anim-slider {\n    max-width: 100%;")
    out = re.sub(r'<img id="(_anim_img\w+)">', r'<img id="\1" style="max-width: 100%; height: auto">', out)
    if alt is not None:
        out = re.sub(r'(<img id="_anim_img\w+")', rf'\1 alt="{html.escape(alt)}"', out)
    if report is None:
        return out
    return f"<div class=\"kd-player\" data-kdlib-figure='{html.escape(json.dumps(report))}'>\n{out}\n</div>"


def _soft_label_draw(logits, classes, image) -> Draw:
    """draw(fig, T): the digit (if given) beside its soft targets at temperature T."""
    z = _as_array("logits", logits, 1)
    names = _class_names(classes, z.size)
    z_row = torch.as_tensor(z, dtype=torch.float32)[None]  # (1, K)

    def draw(fig: Figure, T) -> None:
        probs = soft_targets(z_row, float(T))[0].numpy()
        if image is not None:
            ax_img, ax_bar = fig.subplots(1, 2, width_ratios=[1, 3])
            ax_img.imshow(np.asarray(image), cmap="gray_r")
            ax_img.set_axis_off()
        else:
            ax_bar = fig.subplots()
        plot_soft_targets(probs, names, title=f"T = {float(T):g}", highlight=int(z.argmax()), ax=ax_bar)
        fig.tight_layout()

    return draw


def _soft_label_caption(logits, classes) -> Callable[[float], str]:
    """value -> 'T = 4 -> 4: 0.71, 9: 0.21, 7: 0.03' (the three most likely classes)."""
    z_row = torch.as_tensor(_as_array("logits", logits, 1), dtype=torch.float32)[None]
    names = _class_names(classes, z_row.shape[1])

    def describe(T) -> str:
        probs = soft_targets(z_row, float(T))[0]
        top = torch.topk(probs, k=min(3, probs.numel()))
        pairs = ", ".join(f"{names[i]}: {p:.2f}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        return f"T = {float(T):g} -> {pairs}"

    return describe


def soft_label_slider(logits, classes=None, *, image=None, T: float = 4.0, T_min: float = 0.5,
                      T_max: float = 20.0, step: float = 0.5, frames: Sequence[float] | None = None):
    """A temperature slider over one example's soft targets (live, needs a kernel).

    Args:
        logits: (K,) one example's logits (e.g. a row of the teacher's output).
        classes: K class names, or None for 0..K-1.
        image: (H, W) the input image to show beside the bars, or None.
        T: initial temperature; T_min, T_max, step: the slider's range.
        frames: temperatures for the precomputed player (`soft_label_frames`) that pages
            without a kernel show instead of the slider; None shows a short note there.
    Returns:
        the `live_plot` VBox; its caption lists the three most likely classes.

    Introduced in: notebooks/02_soft_labels.ipynb
    """
    import ipywidgets as widgets

    if not 0 < T_min <= T <= T_max:
        raise ValueError(f"need 0 < T_min <= T <= T_max, got T_min={T_min}, T={T}, T_max={T_max}")
    slider = widgets.FloatSlider(value=T, min=T_min, max=T_max, step=step, description="T",
                                 continuous_update=False)
    static = None if frames is None else soft_label_frames(logits, classes, image=image, temperatures=frames)
    return live_plot(_soft_label_draw(logits, classes, image), slider,
                     describe=_soft_label_caption(logits, classes), static=static)


def soft_label_frames(logits, classes=None, *, image=None, temperatures: Sequence[float] = (1, 2, 4, 8, 16)) -> str:
    """The static twin of `soft_label_slider`: one precomputed frame per temperature.

    Returns:
        HTML of a JavaScript animation; show it with `IPython.display.HTML(...)`.

    Introduced in: notebooks/02_soft_labels.ipynb
    """
    temperatures = [float(t) for t in temperatures]
    if any(not t > 0 for t in temperatures):
        raise ValueError(f"every temperature must be > 0, got {temperatures}")
    alt = (f"Bar chart of one {'digit' if image is not None else 'example'}'s soft targets, the teacher's "
           f"probability for each class, at temperature T = {', '.join(f'{t:g}' for t in temperatures)}, "
           "one frame per temperature: the higher T, the flatter the bars")
    return static_slider(_soft_label_draw(logits, classes, image), temperatures, alt=alt)


def _quant_grid_draw(weights, symmetric: bool) -> Draw:
    """draw(fig, num_bits): the weights' histogram with the num_bits quantization grid on top."""
    from .quant import qrange, quantize, dequantize

    w = torch.as_tensor(np.asarray(weights), dtype=torch.float32).flatten()
    quantize(w, 8, symmetric=symmetric)  # fail early, with quant's clear message, on bad weights

    def draw(fig: Figure, num_bits) -> None:
        b = int(num_bits)
        q, scale, zp = quantize(w, b, symmetric=symmetric)
        qmin, qmax = qrange(b, symmetric=symmetric)
        levels = ((torch.arange(qmin, qmax + 1) - zp) * scale).numpy()
        err = (dequantize(q, scale, zp) - w).pow(2).mean().sqrt().item()
        ax = fig.subplots()
        ax.hist(w.numpy(), bins=80, color="0.75", label="weights")
        if len(levels) <= 64:
            ax.vlines(levels, 0, 1, transform=ax.get_xaxis_transform(), colors="C3", lw=0.8, label="grid levels")
        else:
            ax.plot(levels, np.zeros_like(levels), "|", color="C3", ms=6, label="grid levels")
        ax.set_xlabel("weight value")
        ax.set_ylabel("count")
        ax.set_title(f"{b} bits: {len(levels)} levels, step {scale.item():.3g}, RMS error {err:.3g}", fontsize=10)
        ax.legend(loc="upper right")
        fig.tight_layout()

    return draw


def quant_grid_slider(weights, *, num_bits: int = 4, min_bits: int = 2, max_bits: int = 8, symmetric: bool = True,
                      frames: Sequence[int] | None = None):
    """A bit-width slider over a weight histogram and its quantization grid (live, needs a kernel).

    Args:
        weights: any array of weights (e.g. a conv layer's (C_out, C_in, kH, kW)), flattened.
        num_bits: initial bit width; min_bits, max_bits: the slider's range (2 .. 16).
        symmetric: signed grid with zero point 0 (as for weights), else unsigned.
        frames: bit widths for the precomputed player (`quant_grid_frames`) that pages
            without a kernel show instead of the slider; None shows a short note there.
    Returns:
        the `live_plot` VBox; its caption gives the step and the RMS round-trip error.

    Introduced in: notebooks/09_quantization.ipynb
    """
    import ipywidgets as widgets

    from .quant import check_bits, quantization_error

    for name, b in (("num_bits", num_bits), ("min_bits", min_bits), ("max_bits", max_bits)):
        check_bits(b, name)
    if not min_bits <= num_bits <= max_bits:
        raise ValueError(f"need min_bits <= num_bits <= max_bits, got {min_bits}, {num_bits}, {max_bits}")
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float32).flatten()
    slider = widgets.IntSlider(value=num_bits, min=min_bits, max=max_bits, step=1, description="bits",
                               continuous_update=False)

    def describe(b) -> str:
        return f"{int(b)} bits -> {2 ** int(b) - int(symmetric)} levels, RMS error " \
               f"{quantization_error(w, int(b), symmetric=symmetric):.3g}"

    static = None if frames is None else quant_grid_frames(w, bits=frames, symmetric=symmetric)
    return live_plot(_quant_grid_draw(w, symmetric), slider, describe=describe, static=static)


def quant_grid_frames(weights, *, bits: Sequence[int] = (2, 3, 4, 5, 6, 8), symmetric: bool = True) -> str:
    """The static twin of `quant_grid_slider`: one precomputed frame per bit width.

    Returns:
        HTML of a JavaScript animation; show it with `IPython.display.HTML(...)`.

    Introduced in: notebooks/09_quantization.ipynb
    """
    from .quant import check_bits

    bits = [check_bits(b, "each bit width") for b in bits]
    alt = (f"Histogram of the layer's weights with the {'symmetric' if symmetric else 'asymmetric'} quantization "
           f"grid drawn over it as vertical lines, for {', '.join(map(str, bits))} bits, one frame per bit width: "
           "the fewer the bits, the fewer and wider apart the grid levels")
    return static_slider(_quant_grid_draw(weights, symmetric), bits, alt=alt)


# ---------------------------------------------------------------- Chapter 8: pruning


def weight_tiles(weight) -> np.ndarray:
    """A layer's weights as one 2-D image. A conv's (C_out, C_in, kH, kW) kernels become a grid
    of kH x kW tiles, one column of tiles per output channel and one row per input channel, with
    NaN gaps between tiles; a Linear's (out, in) matrix is returned as it is.
    """
    w = torch.as_tensor(weight).detach().float().cpu()
    if w.ndim == 2:
        return w.numpy()
    if w.ndim != 4:
        raise ValueError(f"weight must be a Linear (out, in) or conv (C_out, C_in, kH, kW) tensor, "
                         f"got shape {tuple(w.shape)}")
    O, I, kh, kw = w.shape
    grid = np.full((I * (kh + 1) - 1, O * (kw + 1) - 1), np.nan, dtype=np.float32)
    for o in range(O):
        for i in range(I):
            grid[i * (kh + 1):i * (kh + 1) + kh, o * (kw + 1):o * (kw + 1) + kw] = w[o, i].numpy()
    return grid


def _survivors(weight: torch.Tensor, s: float) -> torch.Tensor:
    """weight with its round(s * n) smallest-magnitude entries set to NaN (pruned)."""
    w = weight.detach().float().cpu().clone()
    k = round(float(s) * w.numel())
    flat = w.view(-1)
    flat[torch.topk(flat.abs(), k, largest=False).indices] = float("nan")
    return w


def _sparsity_draw(weight, name: str) -> Draw:
    """draw(fig, s): the heat map of `weight` with the smallest s of |w| blanked (white);
    the gaps between a conv's kernels are grey."""
    from matplotlib.colors import ListedColormap

    w = torch.as_tensor(weight).detach().float().cpu()
    if w.ndim not in (2, 4) or w.numel() == 0:
        raise ValueError(f"weight must be a non-empty Linear (out, in) or conv (C_out, C_in, kH, kW) tensor, "
                         f"got shape {tuple(w.shape)}")
    vmax = float(w.abs().max()) or 1.0
    gaps = np.isnan(weight_tiles(w)).astype(float)  # 1 between tiles, 0 on weights
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad=(0, 0, 0, 0))  # pruned: the white background shows

    def draw(fig: Figure, s) -> None:
        kept = _survivors(w, s)
        ax = fig.subplots()
        aspect = "equal" if w.ndim == 4 else "auto"
        ax.imshow(gaps, cmap=ListedColormap(["white", "0.75"]), vmin=0, vmax=1, aspect=aspect,
                  interpolation="nearest")
        im = ax.imshow(weight_tiles(kept), cmap=cmap, vmin=-vmax, vmax=vmax, aspect=aspect,
                       interpolation="nearest")
        alive = int((~torch.isnan(kept)).sum())
        ax.set_title(f"{name}: sparsity {float(s):.0%}, {alive} of {w.numel()} weights survive", fontsize=10)
        ax.set_xlabel(f"output channel (one {w.shape[2]}x{w.shape[3]} kernel per tile)" if w.ndim == 4
                      else "input feature")
        ax.set_ylabel("input channel" if w.ndim == 4 else "output unit")
        ax.set_xticks([]), ax.set_yticks([])
        fig.colorbar(im, ax=ax, label="weight", fraction=0.03)
        fig.tight_layout()

    return draw


def _check_sparsities(values) -> list[float]:
    values = [float(v) for v in values]
    if any(not 0 <= v < 1 for v in values):
        raise ValueError(f"every sparsity must be in [0, 1), got {values}")
    return values


def sparsity_slider(weight, *, name: str = "layer", sparsity: float = 0.5, step: float = 0.05,
                    max_sparsity: float = 0.95, figsize=(5.2, 3.2), frames: Sequence[float] | None = None):
    """A sparsity slider over one layer's weights (live, needs a kernel): the
    heat map blanks the weights that magnitude pruning removes at that sparsity.

    Args:
        weight: a Linear (out, in) or conv (C_out, C_in, kH, kW) weight tensor.
        name: the layer's name, for the title.
        sparsity: initial value; step, max_sparsity: the slider's range from 0.
        frames: sparsities for the precomputed player (`sparsity_frames`) that pages
            without a kernel show instead of the slider; None shows a short note there.
    Returns:
        the `live_plot` VBox; its caption gives the magnitude threshold.

    Introduced in: notebooks/08_pruning.ipynb
    """
    import ipywidgets as widgets

    _check_sparsities([sparsity, max_sparsity])
    w = torch.as_tensor(weight).detach().float().cpu()
    slider = widgets.FloatSlider(value=sparsity, min=0.0, max=max_sparsity, step=step, description="sparsity",
                                 continuous_update=False, readout_format=".0%")

    def describe(s) -> str:
        k = round(float(s) * w.numel())
        thr = float(w.abs().flatten().sort().values[k - 1]) if k else 0.0
        return f"sparsity {float(s):.0%}: the {k} weights with |w| <= {thr:.4f} are pruned"

    static = None if frames is None else sparsity_frames(w, name=name, sparsities=frames, figsize=figsize)
    return live_plot(_sparsity_draw(w, name), slider, describe=describe, figsize=figsize, static=static)


def sparsity_frames(weight, *, name: str = "layer", sparsities: Sequence[float] = (0, 0.25, 0.5, 0.75, 0.9, 0.95),
                    figsize=(5.2, 3.2)) -> str:
    """The static twin of `sparsity_slider`: one precomputed frame per sparsity.

    Returns:
        HTML of a JavaScript animation; show it with `IPython.display.HTML(...)`.

    Introduced in: notebooks/08_pruning.ipynb
    """
    values = _check_sparsities(sparsities)
    alt = (f"Heat map of the weights of {name} (red positive, blue negative) with the smallest-magnitude "
           f"weights blanked out, at sparsity {', '.join(f'{v:.0%}' for v in values)}, one frame per sparsity: "
           "the higher the sparsity, the more of the map is white")
    return static_slider(_sparsity_draw(weight, name), values, figsize=figsize, alt=alt)
