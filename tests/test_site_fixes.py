"""tools/site_fixes.py, the book's Sphinx extension: live widgets left out of the website, each
page's scripts, Font Awesome's script removed, author-year bibliography labels, the figure record.

The last test builds a tiny book with Sphinx and myst-nb (a few seconds): the same path as
`make book`, on a notebook made here."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from docutils import nodes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))  # imported by name, as Sphinx does (local_extensions)
import site_fixes as sf  # noqa: E402

from sphinx.builders.html._assets import _JavaScript  # noqa: E402

VIEW = sf.WIDGET_VIEW


def bundle(*mimes: str) -> nodes.container:
    """A myst-nb mime bundle node (one child container per mime type) inside a cell output."""
    out = nodes.container(nb_element="cell_code_output")
    b = nodes.container(nb_element="mime_bundle")
    for m in mimes:
        b += nodes.container("", nodes.paragraph(text=m), mime_type=m)
    out += b
    return out


def test_widget_view_dropped_and_its_html_form_kept():
    out = bundle(VIEW, "text/html", "text/plain")
    sf.drop_widget_view(out[0])
    assert [c["mime_type"] for c in out[0].children] == ["text/html", "text/plain"]


def test_widget_with_only_a_text_repr_is_dropped_whole():
    out = bundle(VIEW, "text/plain")  # a tqdm bar: its text is frozen at 0 %
    sf.drop_widget_view(out[0])
    assert out.children == []


def test_output_without_widget_untouched():
    out = bundle("image/png", "text/plain")
    sf.drop_widget_view(out[0])
    assert [c["mime_type"] for c in out[0].children] == ["image/png", "text/plain"]


def scripts():
    return [_JavaScript("_static/documentation_options.js"),
            _JavaScript(None, body="var togglebuttonSelector = '.toggle';"),
            _JavaScript(None, body='const THEBE_JS_URL = "https://unpkg.com/thebe"'),
            _JavaScript("_static/sphinx-thebe.js", **{"async": "async"}),
            _JavaScript(None, body="var togglebuttonSelector = '.toggle';"),
            _JavaScript(None, body='const THEBE_JS_URL = "https://unpkg.com/thebe"'),
            _JavaScript(None, body='window.MathJax = {"options": {}}'),
            _JavaScript("_static/mathjax/tex-chtml.js", defer="defer"),
            _JavaScript(None, body="{}", type=sf.WIDGET_STATE),
            _JavaScript("_static/require/require.js"),
            _JavaScript("_static/html-manager/embed-amd.js")]


def kept(body: str) -> list[tuple]:
    out = sf.page_scripts(scripts(), body, mathjax="mathjax/tex-chtml.js",
                          widget_files={"require/require.js", "html-manager/embed-amd.js"}, thebe=False)
    return [(js.filename, js.attributes.get("defer"), js.attributes.get("body", "")[:14]) for js in out]


def test_a_page_without_maths_or_widgets_loads_neither_and_no_thebe():
    assert kept("<p>plain text</p>") == [("_static/documentation_options.js", None, ""),
                                         (None, None, "var togglebutt")]


def test_a_page_with_maths_keeps_mathjax():
    names = [k[0] for k in kept('<span class="math notranslate nohighlight">\\(x\\)</span>')]
    assert "_static/mathjax/tex-chtml.js" in names and "_static/require/require.js" not in names


def test_a_page_still_showing_a_widget_gets_its_scripts_deferred():
    got = kept(f'<script type="{VIEW}">{{}}</script>')
    assert ("_static/require/require.js", "defer", "") in got
    assert ("_static/html-manager/embed-amd.js", "defer", "") in got
    assert (None, None, "{}") in got  # the saved state (data, not run)
    names = [k[0] for k in got]
    assert names.index("_static/require/require.js") < names.index("_static/html-manager/embed-amd.js")


FA_JS = '  <script src="_static/vendor/fontawesome/6.5.2/js/all.min.js?digest=1"></script>\n'
FA_PRELOAD = ('<link rel="preload" as="font" type="font/woff2" crossorigin '
              'href="_static/vendor/fontawesome/6.5.2/webfonts/fa-solid-900.woff2" />\n')
HEAD = ('<link href="_static/vendor/fontawesome/6.5.2/css/all.min.css?digest=1" rel="stylesheet" />\n'
        + FA_PRELOAD + '<link rel="preload" as="script" href="_static/scripts/bootstrap.js" />\n'
        + FA_JS + '<script src="_static/doctools.js"></script>\n')


def test_fontawesome_script_removed_only_where_its_css_draws_the_icons():
    assert sf.strip_fontawesome_js(HEAD) == HEAD.replace(FA_JS, "").replace(FA_PRELOAD, "")
    no_css = HEAD.split("\n", 1)[1]
    assert sf.strip_fontawesome_js(no_css) == no_css


def test_fontawesome_script_of_newer_themes_removed_when_the_theme_css_draws_the_icons():
    js = '<script defer src="../_static/scripts/fontawesome.js?digest=55c2"></script>\n'
    head = ('<link href="../_static/styles/pydata-sphinx-theme.css?digest=55c2" rel="stylesheet" />\n' + js
            + '<script src="../_static/doctools.js"></script>\n')
    assert sf.strip_fontawesome_js(head, theme_css_draws_icons=True) == head.replace(js, "")
    assert sf.strip_fontawesome_js(head) == head                 # not known to draw them: kept
    no_css = head.split("\n", 1)[1]
    assert sf.strip_fontawesome_js(no_css, theme_css_draws_icons=True) == no_css


def test_search_scripts_deferred():
    page = '<script src="_static/searchtools.js"></script><script src="searchindex.js"></script><script src="x.js"></script>'
    assert sf.defer_search_js(page) == ('<script defer="defer" src="_static/searchtools.js"></script>'
                                        '<script defer="defer" src="searchindex.js"></script><script src="x.js"></script>')


def entries(bib: str):
    from pybtex.database import parse_string
    return parse_string(bib, "bibtex").entries


BIB = r"""
@article{a, author = {Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff}, title = {D}, journal = {J}, year = {2015}}
@article{b, author = {Ba, Jimmy and Caruana, Rich}, title = {Deep}, journal = {J}, year = {2014}}
@article{c, author = {Bucilu{\v a}, Cristian}, title = {M}, journal = {J}, year = {2006}}
@manual{d, organization = {{ARM Limited}}, title = {CMSIS}, year = {2023}}
@article{e, author = {van der Maaten, Laurens}, title = {t-SNE}, journal = {J}, year = {2008}}
@article{f, author = {Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff}, title = {E}, journal = {J}, year = {2015}}
@misc{g, author = {Nobody, A.}, title = {Undated}}
"""


def test_author_year_labels_as_the_text_cites():
    got = {k: sf.author_year_label(e) for k, e in entries(BIB).items()}
    assert got == {"a": "Hinton et al., 2015", "b": "Ba and Caruana, 2014", "c": "Buciluǎ, 2006",
                   "d": "ARM Limited, 2023", "e": "van der Maaten, 2008", "f": "Hinton et al., 2015",
                   "g": "Nobody, n.d."}


def test_author_year_style_sorts_and_tells_apart_same_label():
    from pybtex.database import parse_string
    from pybtex.plugin import find_plugin

    sf._register_bibliography_style()
    style = find_plugin("pybtex.style.formatting", "kd_author_year")()
    labels = {e.key: e.label for e in style.format_entries(parse_string(BIB, "bibtex").entries.values())}
    assert labels["a"] == "Hinton et al., 2015a" and labels["f"] == "Hinton et al., 2015b"
    assert labels["b"] == "Ba and Caruana, 2014"


def test_page_record_names_the_cell_of_each_figure():
    doc = nodes.section()
    for index, code in ((3, "x = 1\nplot(x)"), (5, "fig.show()")):
        cell = nodes.container(nb_element="cell_code", cell_index=index)
        cell += nodes.literal_block(text=code)
        cell += nodes.image(uri=f"../_build/jupyter_execute/{index}.png", alt="a bar chart of x")
        doc += cell
    doc += nodes.raw("", '<div class="kd-player" data-kdlib-figure="{}"></div>', format="html")
    rec = sf.page_record(doc, "notebooks/x.ipynb")
    assert rec["cells"] == [{"cell_index": 3, "first_line": "x = 1"}, {"cell_index": 5, "first_line": "fig.show()"}]
    assert [(f["kind"], f["file"], f["cell_index"], f["alt"]) for f in rec["figures"]] == [
        ("image", "3.png", 3, "a bar chart of x"), ("image", "5.png", 5, "a bar chart of x"),
        ("player", None, None, None)]


# --- a tiny book built with Sphinx and myst-nb ------------------------------------------------

# a 1x1 white PNG, as a cell's image output (base64)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"


def notebook() -> dict:
    view = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    state = {"state": {"abc": {"model_name": "VBoxModel", "model_module": "@jupyter-widgets/controls",
                               "model_module_version": "2.0.0", "state": {}}}, "version_major": 2, "version_minor": 0}
    cell = lambda outputs, tags=(): {"cell_type": "code", "execution_count": 1, "id": f"c-{'-'.join(tags)}",  # noqa: E731
                                     "metadata": {"tags": list(tags)}, "source": "show()", "outputs": outputs}
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"},
                         "widgets": {sf.WIDGET_STATE: state}},
            "cells": [{"cell_type": "markdown", "id": "m", "metadata": {}, "source": "# Widgets\n\nNo maths here."},
                      cell([{"output_type": "display_data", "metadata": {},
                             "data": {VIEW: view, "text/html": '<p class="kd-live-only">note</p>', "text/plain": "VBox()"}}]),
                      cell([{"output_type": "display_data", "metadata": {},
                             "data": {VIEW: view, "text/plain": "train:   0%|"}}], tags=("bar",)),
                      {**cell([{"output_type": "display_data", "metadata": {},
                                "data": {"image/png": PNG, "text/plain": "<Figure>"}}], tags=("fig",)),
                       "metadata": {"mystnb": {"image": {"alt": "A bar chart of the accuracy of each model"}}}}]}


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory):
    from sphinx.application import Sphinx

    src = tmp_path_factory.mktemp("book")
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'tools')!r})\n"
        "extensions = ['myst_nb', 'site_fixes']\nnb_execution_mode = 'off'\nmyst_enable_extensions = ['dollarmath']\n"
        "nb_ipywidgets_js = {'require/require.js': {}, 'html-manager/embed-amd.js': {}}\n"
        "exclude_patterns = ['_build']\n")
    (src / "index.md").write_text("# Home\n\n```{toctree}\nwidgets\nmaths\n```\n")
    (src / "maths.md").write_text("# Maths\n\nInline $x^2$.\n")
    (src / "widgets.ipynb").write_text(json.dumps(notebook()))
    out = src / "_build" / "html"
    Sphinx(str(src), str(src), str(out), str(src / "_build" / "doctrees"), "html", status=None, warning=None,
           freshenv=True).build()
    return out


def test_built_page_shows_the_html_form_and_loads_no_widget_scripts(tiny_book):
    page = (tiny_book / "widgets.html").read_text()
    assert 'class="kd-live-only"' in page
    assert VIEW not in page and sf.WIDGET_STATE not in page
    assert "embed-amd.js" not in page and "require.js" not in page
    assert "train:   0%" not in page  # the frozen progress bar is not shown
    assert "mathjax" not in page.lower().split("</head>")[0]


def test_built_page_with_maths_loads_mathjax_and_the_record(tiny_book):
    head = (tiny_book / "maths.html").read_text().split("</head>")[0]
    assert "mathjax" in head.lower()
    record = json.loads((tiny_book.parent / sf.MANIFEST).read_text())
    assert record["widgets"]["source"] == "widgets.ipynb"
    assert [c["cell_index"] for c in record["widgets"]["cells"]] == [1, 2, 3]
    assert [(f["cell_index"], f["alt"]) for f in record["widgets"]["figures"]] == [
        (3, "A bar chart of the accuracy of each model")]


def test_alt_text_from_the_cell_metadata_reaches_the_page(tiny_book):
    """The how-to for chapter authors: {"mystnb": {"image": {"alt": "..."}}} in a cell's metadata
    becomes the alt text of the cell's figure (myst-nb 1.4)."""
    page = (tiny_book / "widgets.html").read_text()
    assert re.search(r'<img alt="A bar chart of the accuracy of each model" src="_images/[0-9a-f]{64}\.png"', page)
