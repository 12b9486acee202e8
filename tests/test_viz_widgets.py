"""kdlib.viz and kdlib.widgets: figures hold what they claim, widgets react to their slider,
and the static twins embed one frame per value and need no internet."""
import html as htmlmod
import json
import math
import io
import re

import matplotlib

matplotlib.use("Agg")  # tests draw off-screen

import ipywidgets
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from matplotlib.figure import Figure

from kdlib import viz, widgets

FRAME = re.compile(r'frames\[\d+\] = "data:image/png;base64,')


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


# --- viz ---------------------------------------------------------------------------------------------

def test_workflow_draws_one_box_per_step_in_order():
    fig = viz.plot_workflow()
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert not ax.axison
    titles = [s[0] for s in viz.WORKFLOW_STEPS]
    shown = texts(fig)
    assert [t for t in shown if t in titles] == titles
    assert viz.WORKFLOW_NEXT in shown
    assert len(ax.patches) == len(titles)
    assert len([c for c in ax.get_children() if isinstance(c, matplotlib.text.Annotation)]) == len(titles) - 1


def test_workflow_custom_steps_and_bad_steps():
    fig = viz.plot_workflow([("a", "x"), ("b", "y")], next_step=None)
    assert [t for t in texts(fig) if t] == ["a", "x", "b", "y"]  # arrows are empty annotations
    for bad in ([], [("only a title",)], "abc"):
        with pytest.raises(ValueError, match="pairs"):
            viz.plot_workflow(bad)


def test_budgets_bars_lines_and_log_axis():
    sizes = {"teacher": 3.5e6, "student": 3.6e4}
    budgets = {"MCU flash": 1e6, "MCU SRAM": 3.2e5}
    fig = viz.plot_budgets(sizes, budgets, title="weights")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "weights"
    assert [p.get_width() for p in ax.patches] == list(sizes.values())
    assert [t.get_text() for t in ax.get_yticklabels()] == list(sizes)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(budgets)
    assert [line.get_xdata()[0] for line in ax.get_lines()] == list(budgets.values())


def test_budgets_bad_input():
    with pytest.raises(TypeError, match="dicts"):
        viz.plot_budgets([1, 2], {})
    with pytest.raises(ValueError, match="positive"):
        viz.plot_budgets({"a": 0.0}, {"b": 1.0})


def test_curves_one_line_per_label():
    x = [1, 2, 4, 8]
    fig = viz.plot_curves(x, {"a": [1, 2, 3, 4], "b": np.ones(4)}, xlabel="T", ylabel="entropy", logx=True)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_xscale(), ax.get_yscale()) == ("T", "entropy", "log", "linear")
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), [1, 2, 3, 4])


def test_curves_bad_input():
    with pytest.raises(ValueError, match="has 2 values but x has 3"):
        viz.plot_curves([1, 2, 3], {"a": [1, 2]}, xlabel="x", ylabel="y")
    with pytest.raises(TypeError, match="non-empty dict"):
        viz.plot_curves([1, 2], {}, xlabel="x", ylabel="y")
    with pytest.raises(TypeError, match="numbers"):
        viz.plot_curves(["a", object()], {"a": [1, 2]}, xlabel="x", ylabel="y")


def test_soft_targets_bars_match_probabilities():
    probs = torch.softmax(torch.tensor([2.0, 0.5, -1.0]), dim=0)  # a tensor is accepted
    fig = viz.plot_soft_targets(probs, ["cat", "dog", "fox"], title="T = 1", highlight=0)
    ax = fig.axes[0]
    np.testing.assert_allclose([p.get_height() for p in ax.patches], probs.numpy(), rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "fox"]
    assert (ax.get_ylabel(), ax.get_title(), ax.get_ylim()) == ("probability", "T = 1", (0.0, 1.0))
    assert ax.patches[0].get_facecolor() != ax.patches[1].get_facecolor()  # the highlighted class


def test_soft_targets_into_given_axes_and_bad_input():
    fig, (a, b) = plt.subplots(1, 2)
    assert viz.plot_soft_targets([0.5, 0.5], ax=b) is fig and len(b.patches) == 2 and not a.patches
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        viz.plot_soft_targets([0.2, 0.3, 0.5], ["a", "b"])
    with pytest.raises(ValueError, match="1 dimension"):
        viz.plot_soft_targets(np.ones((2, 2)) / 4)
    with pytest.raises(ValueError, match="finite"):
        viz.plot_soft_targets([0.5, float("nan")])
    with pytest.raises(ValueError, match="highlight"):
        viz.plot_soft_targets([0.5, 0.5], highlight=2)
    with pytest.raises(TypeError, match="Axes"):
        viz.plot_soft_targets([0.5, 0.5], ax="left")


def test_class_similarity_heat_map():
    m = np.array([[0.9, 0.1], [0.3, 0.7]])
    fig = viz.plot_class_similarity(m, ["four", "nine"], title="mean soft targets")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), m)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("teacher's probability for class", "true class")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["four", "nine"]
    assert texts(fig) == ["90", "10", "30", "70"]
    assert len(fig.axes) == 2  # the heat map and its colour bar


def test_class_similarity_without_diagonal():
    m = np.array([[0.9, 0.05, 0.05], [0.02, 0.9, 0.08], [0.1, 0.1, 0.8]])
    fig = viz.plot_class_similarity(m, show_diagonal=False)
    shown = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)
    assert np.isnan(np.diag(shown)).all()
    assert texts(fig) == ["5.0", "5.0", "2.0", "8.0", "10", "10"]
    np.testing.assert_array_equal(m, np.array([[0.9, 0.05, 0.05], [0.02, 0.9, 0.08], [0.1, 0.1, 0.8]]))


def test_class_similarity_bad_input():
    with pytest.raises(ValueError, match="square"):
        viz.plot_class_similarity(np.ones((2, 3)))
    with pytest.raises(ValueError, match="2 dimension"):
        viz.plot_class_similarity(np.ones(4))


# --- widgets -----------------------------------------------------------------------------------------

def draw_line(fig, value):
    fig.subplots().plot([0, 1], [0, value])


def test_figure_to_png_closes_the_figure():
    fig = viz.plot_soft_targets([0.5, 0.5])
    png = widgets.figure_to_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    with pytest.raises(TypeError, match="Figure"):
        widgets.figure_to_png("not a figure")


def test_live_plot_redraws_on_slider_change():
    slider = ipywidgets.FloatSlider(value=1.0, min=0.0, max=5.0)
    box = widgets.live_plot(draw_line, slider, describe=lambda v: f"value <{v}>")
    assert isinstance(box, ipywidgets.VBox) and list(box.children) == [slider, box.caption, box.image]
    first = box.image.value
    assert first[:4] == b"\x89PNG" and box.caption.value == "<code>value &lt;1.0&gt;</code>"
    slider.value = 4.0
    assert box.image.value != first
    assert box.caption.value == "<code>value &lt;4.0&gt;</code>"
    assert plt.get_fignums() == []  # every rendered figure was closed


def test_live_plot_bad_input():
    with pytest.raises(TypeError, match="ipywidgets slider"):
        widgets.live_plot(draw_line, 3.0)
    with pytest.raises(TypeError, match="draw"):
        widgets.render("not callable", 1.0)


def test_soft_label_slider_caption_follows_T():
    z = torch.tensor([4.0, 1.0, 0.0, 3.0])
    box = widgets.soft_label_slider(z, ["a", "b", "c", "d"], image=np.eye(5), T=1.0)
    assert isinstance(box.slider, ipywidgets.FloatSlider) and box.slider.description == "T"
    p1 = torch.softmax(z, 0)
    assert box.caption.value == f"<code>T = 1 -&gt; a: {p1[0]:.2f}, d: {p1[3]:.2f}, b: {p1[1]:.2f}</code>"
    before = box.image.value
    box.slider.value = 8.0
    p8 = torch.softmax(z / 8, 0)
    assert box.caption.value.startswith(f"<code>T = 8 -&gt; a: {p8[0]:.2f}, d: {p8[3]:.2f}")
    assert box.image.value != before


def test_soft_label_slider_bad_range():
    with pytest.raises(ValueError, match="T_min <= T <= T_max"):
        widgets.soft_label_slider(torch.zeros(3), T=50.0)
    with pytest.raises(ValueError, match="1 dimension"):
        widgets.soft_label_slider(torch.zeros(2, 3))


def test_static_slider_embeds_every_frame_and_no_cdn():
    html = widgets.static_slider(draw_line, [1.0, 2.0, 3.0], figsize=(2, 1), dpi=40)
    assert len(FRAME.findall(html)) == 3
    assert "font-awesome" not in html and "fa fa-" not in html and "https://" not in html
    assert 'type="range"' in html  # the slider the reader moves
    assert "\u25b6" in html  # play button drawn as a Unicode symbol
    assert plt.get_fignums() == []


def test_static_slider_bad_input():
    with pytest.raises(ValueError, match="between 2 and 40"):
        widgets.static_slider(draw_line, [1.0])
    with pytest.raises(ValueError, match="between 2 and 40"):
        widgets.static_slider(draw_line, range(41))
    with pytest.raises(TypeError, match="draw"):
        widgets.static_slider(None, [1.0, 2.0])


def test_soft_label_frames_one_per_temperature():
    html = widgets.soft_label_frames(torch.tensor([2.0, 0.0, -1.0]), temperatures=(1, 4))
    assert len(FRAME.findall(html)) == 2
    with pytest.raises(ValueError, match="> 0"):
        widgets.soft_label_frames(torch.zeros(3), temperatures=(1, 0))


def test_offline_controls_keeps_other_html():
    assert widgets.offline_controls("<p>hi</p>") == "<p>hi</p>"
    with pytest.raises(TypeError, match="to_jshtml"):
        widgets.offline_controls(None)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=2, max_size=10), st.floats(0.1, 50))
def test_drawn_soft_targets_are_the_softmax(logits, T):
    z = torch.tensor(logits)
    fig = plt.figure()
    widgets._soft_label_draw(z, None, None)(fig, T)
    heights = np.array([p.get_height() for p in fig.axes[0].patches])
    np.testing.assert_allclose(heights, torch.softmax(z / T, 0).numpy(), atol=1e-6)
    assert math.isclose(heights.sum(), 1.0, rel_tol=1e-5)
    assert fig.axes[0].get_title() == f"T = {T:g}"


# --- the live widget on pages without a kernel, and the player's alt text -----------------------------

def test_live_widget_output_carries_an_html_form():
    slider = ipywidgets.FloatSlider(value=1.0, min=0.0, max=5.0)
    bundle = widgets.live_plot(draw_line, slider)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # Jupyter still shows the widget
    assert bundle["text/html"] == widgets.LIVE_ONLY_NOTE
    box = widgets.live_plot(draw_line, ipywidgets.FloatSlider(), static="<p>frames</p>")
    assert box._repr_mimebundle_()["text/html"] == "<p>frames</p>"
    with pytest.raises(TypeError, match="static must be HTML"):
        widgets.live_plot(draw_line, ipywidgets.FloatSlider(), static=3)


def test_slider_with_frames_shows_the_player_where_no_kernel_runs():
    box = widgets.soft_label_slider(torch.tensor([2.0, 0.0, -1.0]), T=1.0, frames=(1, 4))
    html = box._repr_mimebundle_()["text/html"]
    assert len(FRAME.findall(html)) == 2 and 'class="kd-player"' in html
    grid = widgets.quant_grid_slider(torch.linspace(-1, 1, 50), num_bits=3, frames=(2, 3, 4))
    assert len(FRAME.findall(grid.static_html)) == 3
    pruned = widgets.sparsity_slider(torch.randn(4, 3, 3, 3), frames=(0.0, 0.5))
    assert len(FRAME.findall(pruned.static_html)) == 2


def draw_small_text(fig, value):
    ax = fig.subplots()
    ax.plot([0, 1], [0, value])
    ax.set_title("tiny", fontsize=7)


def test_player_has_alt_text_a_text_record_and_shrinks_to_the_column():
    html = widgets.static_slider(draw_small_text, [1.0, 2.0], figsize=(3, 2), dpi=50, alt='a line "rising"')
    img = re.search(r'<img id="_anim_img\w+"[^>]*>', html).group(0)
    assert 'alt="a line &quot;rising&quot;"' in img and 'style="max-width: 100%; height: auto"' in img
    assert "input[type=range].anim-slider {\n    max-width: 100%;" in html
    record = json.loads(htmlmod.unescape(re.search(r"data-kdlib-figure='([^']*)'", html).group(1)))
    assert record["min_font_pt"] == 7 and record["smallest"] == "tiny" and record["dpi"] == 50
    assert record["overlaps"] == []
    default = widgets.static_slider(draw_line, [1.0, 2.0], figsize=(2, 1), dpi=40)
    assert 'alt="A figure drawn for 2 values (1, 2), one frame each"' in default


# --- figure_text_report: the smallest text and overlapping labels ------------------------------------

def test_report_finds_the_smallest_drawn_text():
    fig, (a, b) = plt.subplots(1, 2, figsize=(6, 3), dpi=100)
    a.set_title("big", fontsize=14)
    a.set_xlabel("small", fontsize=8)
    b.set_title("hidden", fontsize=3)
    b.set_visible(False)                      # not drawn: not counted
    a.text(5, 5, "invisible", fontsize=2).set_visible(False)
    rep = widgets.figure_text_report(fig)
    assert rep["min_font_pt"] == 8 and rep["smallest"] == "small" and rep["dpi"] == 100
    drawn = [t.get_text() for t in widgets._drawn_texts(fig)]
    assert "hidden" not in drawn and "invisible" not in drawn and "big" in drawn
    assert rep["texts"] == len(drawn) and len(drawn) == len(set(map(id, widgets._drawn_texts(fig))))
    empty = plt.figure()
    assert widgets.figure_text_report(empty)["min_font_pt"] is None
    with pytest.raises(TypeError, match="Figure"):
        widgets.figure_text_report("fig")


def test_report_finds_crowded_tick_labels_but_not_spaced_ones():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xticks(range(12), [f"label {i}" for i in range(12)])
    assert any("'label 0' overlaps 'label 1'" == o for o in widgets.figure_text_report(fig)["overlaps"])
    fig, ax = plt.subplots(figsize=(8, 2))
    ax.set_xticks(range(4), ["a", "b", "c", "d"])
    assert widgets.figure_text_report(fig)["overlaps"] == []


def test_rotated_labels_overlap_only_when_their_rectangles_do():
    # two labels rotated by 45 degrees, side by side: their bounding boxes (axis-aligned) overlap
    # in both cases, the rotated text rectangles only when they are closer than a line's height
    for gap_in, overlapping in ((0.35, False), (0.05, True)):
        fig = plt.figure(figsize=(4, 4), dpi=100)
        for i in range(2):
            fig.text(1 + i * gap_in, 1, "a long label here", rotation=45, fontsize=10,
                     transform=fig.dpi_scale_trans)
        renderer = fig.canvas.get_renderer()
        boxes = [t.get_window_extent(renderer) for t in fig.texts]
        assert boxes[0].overlaps(boxes[1])
        assert bool(widgets.figure_text_report(fig)["overlaps"]) is overlapping, gap_in


@settings(max_examples=60, deadline=None)
@given(st.tuples(*[st.floats(-20, 20)] * 2), st.tuples(*[st.floats(-20, 20)] * 2),
       st.floats(1, 15), st.floats(1, 15), st.floats(1, 15), st.floats(1, 15), st.floats(0, 180), st.floats(0, 180))
def test_rectangle_overlap_matches_matplotlib_paths(c1, c2, w1, h1, w2, h2, t1, t2):
    from matplotlib.path import Path as MplPath

    def rect(c, w, h, t):
        u = np.array([math.cos(math.radians(t)), math.sin(math.radians(t))])
        v = np.array([-u[1], u[0]])
        c = np.array(c)
        return np.array([c - w / 2 * u - h / 2 * v, c + w / 2 * u - h / 2 * v, c + w / 2 * u + h / 2 * v,
                         c - w / 2 * u + h / 2 * v])

    a, b = rect(c1, w1, h1, t1), rect(c2, w2, h2, t2)
    ours = widgets._rectangles_overlap(a, b, tol=0.0)
    pa, pb = MplPath(np.vstack([a, a[:1]]), closed=True), MplPath(np.vstack([b, b[:1]]), closed=True)
    theirs = pa.intersects_path(pb, filled=True)
    if ours != theirs:  # only where the two just touch (matplotlib counts touching as intersecting)
        shrunk = widgets._rectangles_overlap(a, b, tol=-1e-6) and not widgets._rectangles_overlap(a, b, tol=1e-6)
        assert shrunk, (ours, theirs)


def test_report_finds_a_legend_over_a_bar():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["a", "b", "c"], [1, 1, 1], label="accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper left")
    assert "the legend covers bar 1 of 'accuracy'" in widgets.figure_text_report(fig)["overlaps"]
    ax.set_ylim(0, 3)
    assert widgets.figure_text_report(fig)["overlaps"] == []


def test_merge_text_reports_keeps_the_smallest_and_every_overlap():
    a = {"dpi": 80.0, "texts": 3, "min_font_pt": 10.0, "smallest": "x", "overlaps": ["p"]}
    b = {"dpi": 80.0, "texts": 5, "min_font_pt": 8.0, "smallest": "y", "overlaps": ["p", "q"]}
    none = {"dpi": 80.0, "texts": 0, "min_font_pt": None, "smallest": None, "overlaps": []}
    assert widgets.merge_text_reports([a, b, none]) == {"dpi": 80.0, "texts": 5, "min_font_pt": 8.0,
                                                        "smallest": "y", "overlaps": ["p", "q"]}


def test_book_style_default_figure_is_readable_on_a_phone():
    """A default-size figure with the book's default fonts: >= 9 CSS px on a phone column of
    358 px (sphinx-book-theme at 390 px), and at its own size on a desktop."""
    with matplotlib.rc_context(viz.BOOK_STYLE):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1], label="line")
        ax.set_xlabel("x")
        ax.legend()
        rep = widgets.figure_text_report(fig)
        width_in = fig.get_figwidth()
    assert rep["min_font_pt"] * 358 / (72 * width_in) >= 9
    assert rep["min_font_pt"] * rep["dpi"] / 72 >= 9 and rep["overlaps"] == []


def test_record_figure_text_outside_ipython_does_nothing():
    assert widgets.record_figure_text() is False


def test_kernel_figures_carry_their_text_record(tmp_path):
    """In a Jupyter kernel, after kdlib.chapter.begin(), a shown figure's PNG holds its report."""
    import base64
    import io

    import nbformat
    from nbclient import NotebookClient
    from PIL import Image

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from kdlib.chapter import begin\nCHAPTER = begin()"),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"
                                  "ax.set_title('seven', fontsize=7)\nplt.show()")])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    png = next(o["data"]["image/png"] for o in nb.cells[1].outputs if "image/png" in o.get("data", {}))
    with Image.open(io.BytesIO(base64.b64decode(png))) as im:
        record = json.loads(im.text[widgets.PNG_KEY])
        assert im.info["dpi"][0] == pytest.approx(viz.BOOK_STYLE["figure.dpi"], rel=1e-3)
    assert record["min_font_pt"] == 7 and record["smallest"] == "seven"
    assert record["dpi"] == viz.BOOK_STYLE["figure.dpi"]


def test_png_metadata_travels_with_a_saved_file(tmp_path):
    from PIL import Image

    fig, ax = plt.subplots(figsize=(3, 2), dpi=120)
    ax.set_xscale("log")
    ax.set_xlim(150, 900)  # minor tick labels on a log axis: 3x10^2 and 4x10^2 collide
    ax.set_ylabel("y", fontsize=6)
    fig.savefig(tmp_path / "f.png", metadata=widgets.png_metadata(fig))
    with Image.open(tmp_path / "f.png") as im:
        record = json.loads(im.text[widgets.PNG_KEY])
    assert record["min_font_pt"] == 6 and record["smallest"] == "y" and record["dpi"] == 120
    assert "'3x10^{2}' overlaps '4x10^{2}'" in record["overlaps"]


def _line_plot_png() -> bytes:
    with matplotlib.rc_context(viz.BOOK_STYLE):
        fig, ax = plt.subplots()
        for k in range(6):
            ax.plot(np.linspace(0, 1, 50), np.sin(np.linspace(0, 6, 50) + k), label=f"curve {k}")
        ax.legend()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata=widgets.png_metadata(fig))
        plt.close(fig)
    return buf.getvalue()


def test_compact_png_is_smaller_keeps_its_record_and_looks_the_same():
    from PIL import Image, ImageChops

    png = _line_plot_png()
    small = widgets.compact_png(png)
    assert len(small) < 0.7 * len(png)
    with Image.open(io.BytesIO(png)) as a, Image.open(io.BytesIO(small)) as b:
        assert b.mode == "P" and b.size == a.size and b.info.get("dpi") == a.info.get("dpi")
        assert b.text["kdlib-figure"] == a.text["kdlib-figure"]
        diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
        assert np.asarray(diff).mean() < 1.0  # of 255: no visible change


def test_compact_png_leaves_transparent_images_alone():
    from PIL import Image

    im = Image.new("RGBA", (40, 20), (255, 0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    assert widgets.compact_png(buf.getvalue()) == buf.getvalue()
