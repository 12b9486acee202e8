"""Sphinx extension: the book's website without a kernel, on a phone, and light to load.

_config.yml loads it (`sphinx: local_extensions: {site_fixes: tools}`). What it does, and why:

* Live ipywidgets are not shown on the website. A saved slider can be dragged there, but
  nothing recomputes the figure (no kernel), so it would lie. Each widget output's other
  form is shown instead: the HTML that `kdlib.widgets.live_plot` adds (a note, or the
  precomputed player), and nothing for a widget whose only other form is its text repr
  (a tqdm progress bar frozen at 0 %).
* Each page loads only the scripts it uses: the ipywidgets manager (3.6 MB) and its saved
  state only where a widget is still shown, and then deferred; MathJax only on pages with
  maths (myst-nb asks Sphinx to put it on every page); no sphinx-thebe (thebe is off, and its
  two inline scripts both declare `const THEBE_JS_URL`, an error on every page); each inline
  script once (sphinx-togglebutton's was there twice).
* After the build, the theme's Font Awesome *JavaScript* (1.5 MB, render-blocking in <head>)
  is removed from every page, and so is the preloading of its web fonts: the theme also links
  Font Awesome's CSS, whose web fonts (fetched when an icon needs them) draw the same icons
  from the same `<i class="fa-...">` markup. The search page's scripts
  (its index is its largest) are deferred.
* Every page loads book/_site/kd-site.js (deferred, before the theme's scripts bind): it removes
  the theme's hidden duplicate sidebar and page-contents buttons, so that pydata-sphinx-theme
  0.17 and sphinx-book-theme 1.3, which bind the first button of each kind, bind the ones a
  reader sees.
* The bibliography labels entries by author and year ("Hinton et al., 2015"), as the text
  cites them, instead of "[HVD15]" (bibtex_default_style: kd_author_year).
* It writes _build/site_figures.json: for every page, its code cells in order and, for every
  figure, its image file, alt text and the notebook cell it comes from, so that
  tests/test_site.py can say which cell to fix (a figure's text too small, no alt text, a code
  line too long for the column).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from docutils import nodes
from sphinx.transforms.post_transforms import SphinxPostTransform

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MATH_IN_HTML = re.compile(r'class="[^"]*\bmath\b')
# the theme's Font Awesome script: vendor/fontawesome/<v>/js/all.min.js (pydata-sphinx-theme 0.15) or
# scripts/fontawesome.js (0.16 and later, which bundle Font Awesome's CSS into styles/pydata-sphinx-theme.css)
FONTAWESOME_JS = re.compile(r'[ \t]*<script[^>]*src="[^"]*(?:fontawesome/[^"]*/js/all\.min\.js|'
                            r'_static/scripts/fontawesome\.js)[^"]*"[^>]*></script>\n?')
FONTAWESOME_CSS = re.compile(r'<link[^>]*href="[^"]*fontawesome/[^"]*/css/all\.min\.css')
THEME_CSS = re.compile(r'<link[^>]*href="[^"]*_static/styles/pydata-sphinx-theme\.css')
FONTAWESOME_PRELOAD = re.compile(r'[ \t]*<link rel="preload" as="font"[^>]*href="[^"]*fontawesome/[^"]*"[^>]*/>\n?')
MANIFEST = "site_figures.json"


# --- widgets --------------------------------------------------------------------------------

class HideLiveWidgets(SphinxPostTransform):
    """On HTML pages, drop the widget view from every output that has one (before myst-nb picks
    the mime type to show); drop the whole output when what is left is only its text repr."""

    default_priority = 3  # myst-nb's SelectMimeType runs at 4
    formats = ("html",)

    def run(self, **kwargs) -> None:
        for bundle in list(self.document.findall(_is_mime_bundle)):
            drop_widget_view(bundle)
        for output in list(self.document.findall(_is_cell_output)):
            if not output.children:
                output.parent.remove(output)


def _is_mime_bundle(node) -> bool:
    return isinstance(node, nodes.container) and node.get("nb_element") == "mime_bundle"


def _is_cell_output(node) -> bool:
    return isinstance(node, nodes.container) and node.get("nb_element") == "cell_code_output"


def drop_widget_view(bundle: nodes.container) -> None:
    """Remove the widget view from one mime bundle node; remove the bundle if only its
    text/plain repr would remain."""
    views = [c for c in bundle.children if c.get("mime_type") == WIDGET_VIEW]
    if not views:
        return
    for view in views:
        bundle.remove(view)
    if all(c.get("mime_type") == "text/plain" for c in bundle.children):
        bundle.parent.remove(bundle)


# --- the scripts each page loads ------------------------------------------------------------

def page_scripts(scripts: list, body: str, *, mathjax: str, widget_files: set[str], thebe: bool) -> list:
    """The scripts (Sphinx `_JavaScript` assets, in order) a page with this `body` needs."""
    from sphinx.builders.html._assets import _JavaScript

    has_math = bool(MATH_IN_HTML.search(body))
    has_widgets = WIDGET_VIEW in body
    kept, seen = [], set()
    for js in scripts:
        name, attrs = str(js.filename or ""), dict(js.attributes)
        short = name.removeprefix("_static/")  # Sphinx writes a static file's path from the site's root
        code = attrs.get("body", "")
        key = (name, tuple(sorted(attrs.items())))
        if key in seen:
            continue  # the same script twice
        seen.add(key)
        if not thebe and (name.endswith("sphinx-thebe.js") or "THEBE_JS_URL" in code):
            continue
        if not has_math and (short == mathjax or code.startswith("window.MathJax")):
            continue
        if short in widget_files or attrs.get("type") == WIDGET_STATE:
            if not has_widgets:
                continue
            if name:  # in order after the page is parsed, never render-blocking
                attrs = {k: v for k, v in attrs.items() if k != "async"} | {"defer": "defer"}
                js = _JavaScript(name, priority=js.priority, **attrs)
        kept.append(js)
    return kept


def on_page_context(app, pagename, templatename, context, doctree) -> None:
    """html-page-context: keep only the scripts (and thebe's stylesheet) this page needs."""
    if "script_files" not in context:
        return
    thebe = bool((app.config.html_theme_options.get("launch_buttons") or {}).get("thebe"))
    widget_files = set(app.config.nb_ipywidgets_js or {})
    scripts = page_scripts(list(context["script_files"]), context.get("body", ""),
                           mathjax=app.config.mathjax_path, widget_files=widget_files, thebe=thebe)
    context["script_files"][:] = scripts
    if not thebe and "css_files" in context:
        context["css_files"][:] = [c for c in context["css_files"] if not str(c.filename).endswith("sphinx-thebe.css")]


SEARCH_JS = re.compile(r'<script src="([^"]*(?:searchtools|language_data|searchindex)\.js[^"]*)"></script>')


def defer_search_js(html: str) -> str:
    """The search page's three scripts deferred (in order, after the page is parsed): the
    search index, its largest script, no longer blocks the page from showing. Sphinx's search
    waits for the index itself (Search.deferQuery)."""
    return SEARCH_JS.sub(r'<script defer="defer" src="\1"></script>', html)


def strip_fontawesome_js(html: str, theme_css_draws_icons: bool = False) -> str:
    """A page without the theme's Font Awesome script, when the page links Font Awesome's CSS
    (whose web fonts draw the same icons), and without the preloading of its three web fonts
    (300 KB fetched before the page first shows, one of them never used): the browser fetches
    the fonts the icons on the page use. Otherwise the page as it was."""
    if not (FONTAWESOME_CSS.search(html) or (theme_css_draws_icons and THEME_CSS.search(html))):
        return html
    return FONTAWESOME_PRELOAD.sub("", FONTAWESOME_JS.sub("", html))


# --- which notebook cell each figure comes from ---------------------------------------------

def _first_line(cell) -> str:
    code = next(cell.findall(nodes.literal_block), None)
    text = code.astext().strip() if code is not None else ""
    return text.splitlines()[0][:80] if text else ""


def page_record(doctree, source: str) -> dict:
    """What tests/test_site.py needs to name the notebook cell behind what a page shows: the
    code cells in page order (index in the notebook, first line), and one entry per image and
    per precomputed player (`kd-player`), in page order, with the cell it is in."""
    is_cell = lambda n: isinstance(n, nodes.container) and n.get("nb_element") == "cell_code"  # noqa: E731
    cells = [{"cell_index": c["cell_index"], "first_line": _first_line(c)} for c in doctree.findall(is_cell)]
    figures = []
    for node in doctree.findall(lambda n: isinstance(n, (nodes.image, nodes.raw))):
        if isinstance(node, nodes.raw) and 'class="kd-player"' not in node.astext():
            continue
        cell = next((a for a in _ancestors(node) if is_cell(a)), None)
        image = isinstance(node, nodes.image)
        figures.append({"kind": "image" if image else "player",
                        "file": Path(node["uri"]).name if image else None,
                        "alt": node.get("alt") if image else None,
                        "cell_index": cell["cell_index"] if cell is not None else None,
                        "cell_first_line": _first_line(cell) if cell is not None else ""})
    return {"source": source, "cells": cells, "figures": figures}


def _ancestors(node):
    while node.parent is not None:
        node = node.parent
        yield node


def on_builder_inited(app) -> None:
    """Start from the record of the last build: pages this build does not write keep theirs."""
    path = Path(app.outdir).parent / MANIFEST
    old = json.loads(path.read_text()) if path.exists() else {}
    app.env.kd_figures = {d: r for d, r in old.items() if isinstance(r, dict) and "figures" in r}


def on_doctree_resolved(app, doctree, docname) -> None:
    if app.builder.format == "html":
        source = Path(app.env.doc2path(docname)).relative_to(app.srcdir).as_posix()
        app.env.kd_figures[docname] = page_record(doctree, source)


def on_build_finished(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    theme_css = Path(app.outdir) / "_static" / "styles" / "pydata-sphinx-theme.css"
    # newer themes bundle Font Awesome's CSS (its @font-face rules and icon classes) into their own
    draws = theme_css.exists() and "fa-solid-900" in (css := theme_css.read_text(encoding="utf-8")) and ".fa-bars" in css
    for page in Path(app.outdir).rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        fixed = defer_search_js(strip_fontawesome_js(text, draws))
        if fixed != text:
            page.write_text(fixed, encoding="utf-8")
    figures = {d: f for d, f in app.env.kd_figures.items() if d in app.env.found_docs}
    (Path(app.outdir).parent / MANIFEST).write_text(json.dumps(figures, indent=1) + "\n")


# --- author-year labels in the bibliography -------------------------------------------------

def _surname(person) -> str:
    from pybtex.richtext import Text

    return Text.from_latex(" ".join(person.prelast_names + person.last_names)).render_as("text")


def author_year_label(entry) -> str:
    """'Hinton et al., 2015', 'Ba and Caruana, 2014', 'Hinton, 2015' (as the text cites)."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_surname(p) for p in people]
    if not names:
        from pybtex.richtext import Text

        who = entry.fields.get("organization") or entry.fields.get("institution") or entry.fields.get("key") or entry.key
        who = Text.from_latex(who).render_as("text")
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


def _register_bibliography_style() -> None:
    from pybtex.plugin import register_plugin
    from pybtex.style.formatting.alpha import Style as AlphaStyle
    from pybtex.style.labels import BaseLabelStyle

    class AuthorYearLabels(BaseLabelStyle):
        def format_labels(self, sorted_entries):
            labels = [author_year_label(e) for e in sorted_entries]
            total, used = Counter(labels), Counter()
            for label in labels:
                if total[label] > 1:  # two papers of the same authors and year: 2015a, 2015b
                    used[label] += 1
                    label = label + "abcdefghijklmnopqrstuvwxyz"[used[label] - 1]
                yield label

    class AuthorYearStyle(AlphaStyle):  # sorted by author, year and title, as alpha is
        default_label_style = "kd_author_year"

    register_plugin("pybtex.style.labels", "kd_author_year", AuthorYearLabels, force=True)
    register_plugin("pybtex.style.formatting", "kd_author_year", AuthorYearStyle, force=True)


def setup(app):
    _register_bibliography_style()
    app.add_post_transform(HideLiveWidgets)
    # book/_site/kd-site.js (in html_static_path): the theme binds the navigation buttons a reader sees
    app.add_js_file("kd-site.js", loading_method="defer")
    app.connect("html-page-context", on_page_context, priority=900)  # after myst-nb adds its scripts
    app.connect("builder-inited", on_builder_inited)
    app.connect("doctree-resolved", on_doctree_resolved)
    app.connect("build-finished", on_build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": False}
