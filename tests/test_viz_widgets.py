"""kdlib.viz and kdlib.widgets: figures hold what they claim, widgets react to their slider,
and the static twins embed one frame per value and need no internet."""
import math
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
