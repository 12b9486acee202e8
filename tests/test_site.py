"""Browser tests of the built website (_build/html), offline, on a desktop and on a phone.

`make test` builds the book, then runs these with Debian's chromium driven by
playwright (never `playwright install`). The site is served from a localhost
port by this module; every request to any other host is blocked and counted,
so a page that still needs a CDN fails. Each page is loaded twice: on a desktop
(1280 px, light theme) and on a phone (390 px, dark theme). The tests check:
console errors and warnings (none allowed), missing files, external requests,
typeset maths, images, no live widget left on the page (it needs a kernel),
solution dropdowns that open, launch buttons, the page's weight and its
render-blocking scripts, the text size, overlaps and alt text of every figure,
code lines and display maths that fit the column, text contrast in dark mode,
navigation (sidebar and page contents open, close and lead somewhere) at 390,
768 and 1280 px, and, from the HTML alone: links and anchors, Markdown tables,
nbval markers, headings and bibliography labels.

When a figure or a code line is the problem, the message names the notebook
and the cell (the index in the notebook's list of cells, counting from 0, and
its first line), from _build/site_figures.json (written by tools/site_fixes.py).
Screenshots go to _build/screenshots/ (look at them: a test cannot judge a layout).

Run alone: `make book && make test-site`. Without a built site or chromium the
tests are skipped, unless KDLIB_SITE_REQUIRED=1 (set by `make test-site`).
"""
from __future__ import annotations

import collections
import functools
import http.server
import json
import os
import re
import sys
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

# the book's folder (another one with KDLIB_BOOK=path, e.g. a scratch copy)
ROOT = Path(os.environ.get("KDLIB_BOOK", Path(__file__).resolve().parent.parent))
SITE = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
RECORD = ROOT / "_build" / "site_figures.json"  # tools/site_fixes.py: cells and figures of each page
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
REQUIRED = os.environ.get("KDLIB_SITE_REQUIRED") == "1"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Console errors and warnings that are allowed: none. (The THEBE_JS_URL redeclaration, the theme's
# "Got invalid theme mode", MathJax-2 calls and widget font 404s are fixed at their source.)
ALLOWED_CONSOLE: list[re.Pattern] = []

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
MIN_TEXT_PX = 9.0              # smallest figure text, in CSS pixels where the page shows the figure
MAX_PAGE_BYTES = 3_000_000     # a page with everything it loads
MIN_CONTRAST = 4.5             # WCAG AA for body text
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

pytestmark = pytest.mark.site


def _pages() -> list[str]:
    """Every HTML page of the built site, relative to its root (not the theme's own files)."""
    if not (SITE / "index.html").exists():
        return []
    return sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")
                  if not any(part.startswith(("_", ".")) for part in p.relative_to(SITE).parts))


PAGES = _pages()
# the root index.html only redirects to book/index.html
CONTENT_PAGES = [p for p in PAGES if p != "index.html"]


def _missing(what: str):
    """Skip, or fail under `make test-site`, when the site or the browser is missing."""
    if REQUIRED:
        pytest.fail(what)
    pytest.skip(what)


def test_site_is_built():
    """The book was built (`make book`) and has every page of _toc.yml."""
    if not PAGES:
        _missing(f"no built site at {SITE}: run `make book` first")
    import yaml
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    missing = [f for f in files if f"{f}.html" not in PAGES]
    assert not missing, f"pages in _toc.yml that the build did not write: {missing}"


# --- serving the site and loading each page ------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no access log in the test output
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # the browser may drop a connection mid-file when a page is closed: not an error here
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def base_url():
    """http://127.0.0.1:PORT/ serving _build/html for the whole module."""
    if not PAGES:
        _missing(f"no built site at {SITE}: run `make book` first")
    server = _Server(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(SITE)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, through playwright."""
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} not found: `apt-get install -y chromium` (or `make chromium`)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class View:
    """What one page showed in one window (desktop or phone)."""
    errors: list[str] = field(default_factory=list)          # console errors/warnings, uncaught exceptions
    external: list[str] = field(default_factory=list)        # blocked requests to other hosts
    not_found: list[str] = field(default_factory=list)       # local files answered with 4xx/5xx
    bytes: dict[str, int] = field(default_factory=dict)      # url -> bytes of every response
    facts: dict = field(default_factory=dict)                # what PAGE_FACTS_JS measured


@dataclass
class PageReport:
    """What one page showed on the desktop (light theme) and on the phone (dark theme)."""
    desktop: View
    phone: View
    math_in_source: int = 0                                  # maths the HTML asks MathJax to typeset
    widget_views: int = 0                                    # saved widget views in the HTML
    dropdowns: list[dict] = field(default_factory=list)      # {before, after, text}
    launch_links: list[str] = field(default_factory=list)


# Everything the tests measure in one window, in one pass over the page.
PAGE_FACTS_JS = r"""() => {
  const root = document.querySelector('main') || document.body;
  const article = document.querySelector('article.bd-article') || root;
  // visible text (outside code) that still looks like TeX: $$, \( \[, $...$ with TeX inside,
  // or a TeX command such as \frac{ or \sum_
  const skip = 'PRE,CODE,SCRIPT,STYLE,TEXTAREA,MJX-CONTAINER,MJX-ASSISTIVE-MML';
  const pat = /\$\$|\\\(|\\\[|\$[^$\s](?:[^$\n]*[^$\s])?\$|\\(frac|sum|mathrm|mathbf|log|exp|alpha|cdot|left|right|text|operatorname)\b/;
  const rawMath = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (node.parentElement.closest(skip) || node.parentElement.closest('.highlight')) continue;
    if (node.textContent.match(pat)) rawMath.push(node.textContent.trim().slice(0, 120));
  }
  // a lone $ right next to typeset maths: "$$ x $$" written inline, typeset as $ x $
  for (const mjx of root.querySelectorAll('mjx-container')) {
    const el = mjx.parentElement.matches('.math') ? mjx.parentElement : mjx;
    const prev = el.previousSibling, next = el.nextSibling;
    if ((prev && /\$\s*$/.test(prev.textContent)) || (next && /^\s*\$/.test(next.textContent)))
      rawMath.push('$ next to maths: ' + el.parentElement.textContent.trim().slice(0, 100));
  }
  const cells = Array.from(article.querySelectorAll('div.cell'));
  const cellOf = el => cells.indexOf(el.closest('div.cell'));
  const images = Array.from(root.querySelectorAll('img')).map(img => {
    const r = img.getBoundingClientRect(), player = img.closest('.kd-player');
    return {src: img.currentSrc || img.src, file: (img.currentSrc || img.src).split('/').pop(),
            natural: img.complete ? img.naturalWidth : 0, shown: r.width, alt: img.getAttribute('alt'),
            figure: img.closest('.cell_output') !== null || img.closest('.animation') !== null,
            player: player ? player.getAttribute('data-kdlib-figure') : null,
            playerIndex: player ? Array.from(root.querySelectorAll('.kd-player')).indexOf(player) : -1,
            cell: cellOf(img), column: (img.closest('.cell_output') || article).clientWidth};
  });
  // code (cell inputs and printed outputs) wider than its box, and printed tables that wrap
  // (book/_site/kd-site.css wraps long printed lines on a wide screen: a table's columns would break)
  const probe = document.createElement('span');
  const wide = [];
  for (const pre of article.querySelectorAll('pre')) {
    const output = pre.closest('.cell_output') !== null;
    const scrolls = pre.scrollWidth > pre.clientWidth + 1;
    if ((!scrolls && !output) || pre.offsetParent === null) continue;
    const cs = getComputedStyle(pre);
    probe.style.font = cs.font; probe.textContent = 'M'.repeat(50); pre.appendChild(probe);
    const ch = probe.getBoundingClientRect().width / 50; pre.removeChild(probe);
    const fit = Math.floor((pre.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight)) / ch);
    let lines = pre.textContent.replace(/\n$/, '').split('\n').filter(l => l.length > fit);
    if (!scrolls) lines = lines.filter(l => (l.match(/\S {2,}(?=\S)/g) || []).length >= 2);  // aligned columns
    if (!lines.length) continue;
    wide.push({cell: cellOf(pre), output: output, fit: fit, scrolls: scrolls,
               lines: lines.map(l => l.length + ' chars: ' + l.trim().slice(0, 70))});
  }
  // display maths wider than the column: `cut` when nothing lets the reader reach the rest,
  // `scrolled` when it scrolls sideways inside its box
  const cut = [], scrolled = [];
  const right = article.getBoundingClientRect().right;
  for (const m of article.querySelectorAll('mjx-container[display="true"]')) {
    const cs = getComputedStyle(m), r = m.getBoundingClientRect();
    const text = (m.querySelector('mjx-assistive-mml') || m).textContent.trim().slice(0, 80);
    const wide = m.scrollWidth > m.clientWidth + 1;
    if ((wide && !['auto', 'scroll'].includes(cs.overflowX)) || r.right > right + 1) cut.push(text);
    else if (wide) scrolled.push(text);
  }
  const headScripts = Array.from(document.querySelectorAll('head script[src]'));
  return {rawMath: rawMath, mjx: root.querySelectorAll('mjx-container').length, images: images,
          wideCode: wide, cutMaths: cut, scrolledMaths: scrolled,
          sideways: document.documentElement.scrollWidth - innerWidth,
          widgetsShown: root.querySelectorAll('.widget-subarea, .jupyter-widgets').length,
          blocking: headScripts.filter(s => !s.async && !s.defer && s.type !== 'module').map(s => s.src)};
}"""

# Text in the article whose contrast with what is behind it is below MIN_CONTRAST (WCAG 2).
CONTRAST_JS = r"""(minimum) => {
  const rgba = s => { const m = s.match(/[\d.]+/g) || [0, 0, 0, 0]; return m.map(Number).concat([1]).slice(0, 4); };
  const lum = c => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
                     return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const over = (top, bottom) => [0, 1, 2].map(i => top[i] * top[3] + bottom[i] * (1 - top[3])).concat([1]);
  const background = el => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let bg = [255, 255, 255, 1];
    if (!layers.length || layers[layers.length - 1][3] < 1) bg = rgba(getComputedStyle(document.body).backgroundColor);
    for (const c of layers.reverse()) bg = over(c, bg);
    return bg;
  };
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const low = [];
  for (const el of article.querySelectorAll('*')) {
    if (el.closest('svg, mjx-container, img, script, style')) continue;
    const own = Array.from(el.childNodes).filter(n => n.nodeType === 3 && n.textContent.trim()).map(n => n.textContent.trim()).join(' ');
    if (!own || el.offsetParent === null) continue;
    const cs = getComputedStyle(el);
    if (cs.visibility === 'hidden' || parseFloat(cs.opacity) === 0) continue;
    const bg = background(el), fg = over(rgba(cs.color), bg);
    const [a, b] = [lum(fg) + 0.05, lum(bg) + 0.05];
    const ratio = Math.max(a, b) / Math.min(a, b);
    const large = parseFloat(cs.fontSize) >= 24 || (parseFloat(cs.fontSize) >= 18.66 && parseInt(cs.fontWeight) >= 700);
    if (ratio < (large ? 3 : minimum)) low.push(ratio.toFixed(2) + ':1 ' + el.tagName.toLowerCase() + ' "' + own.slice(0, 50) + '"');
  }
  return low;
}"""


def _shot_name(page: str, window: str) -> str:
    return page.replace("/", "__").replace(".html", f"-{window}.png")


def _view(page: str, base: str, browser, viewport: dict, scheme: str, name: str, report: PageReport | None):
    """Load `page` in a fresh context (`viewport`, colour `scheme`) and measure it. On the
    desktop (report given) also open every solution dropdown and record the launch buttons."""
    view = View()
    ctx = browser.new_context(viewport=viewport, color_scheme=scheme)
    ctx.set_default_timeout(120_000)  # generous: CI machines can be slow and busy

    def route(r):
        if r.request.url.startswith(base) or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            view.external.append(r.request.url)
            r.abort()

    def finished(request):
        response = request.response()
        if response is not None and request.url.startswith(base):
            try:
                view.bytes[request.url] = len(response.body())
            except Exception:  # a body the browser dropped (redirect): counted as empty
                view.bytes.setdefault(request.url, 0)

    ctx.route("**/*", route)
    p = ctx.new_page()
    p.on("console", lambda m: m.type in ("error", "warning") and view.errors.append(
        f"console {m.type}: {m.text} ({m.location.get('url', '')})"))
    p.on("pageerror", lambda e: view.errors.append(f"uncaught: {e}"))
    p.on("response", lambda r: r.status >= 400 and view.not_found.append(f"{r.status} {r.url}"))
    p.on("requestfinished", finished)
    p.goto(base + page, wait_until="load")
    p.wait_for_load_state("networkidle")
    html = (SITE / page).read_text(encoding="utf-8")
    if re.search(r'class="math[ "]|class="[^"]*\bmath notranslate', html):
        p.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=60_000)
        p.evaluate("() => MathJax.startup.promise")
        p.wait_for_load_state("networkidle")  # the fonts MathJax asked for
    SHOTS.mkdir(parents=True, exist_ok=True)
    p.screenshot(path=str(SHOTS / _shot_name(page, name)), full_page=True)
    if report is not None:
        for sol in p.locator(".solution.dropdown").all():
            body = sol.locator(":scope > :not(.admonition-title)").first
            before = body.is_visible()
            sol.locator(".toggle-button").first.click()
            p.wait_for_timeout(100)
            report.dropdowns.append({"before": before, "after": body.is_visible(), "text": body.inner_text()[:200]})
        report.launch_links = p.eval_on_selector_all(
            "a[href*='colab.research.google.com'], a[href*='mybinder.org']", "els => els.map(e => e.href)")
    else:  # the phone: open the dropdowns too, so that the figures inside them have a size
        for toggle in p.locator(".solution.dropdown .toggle-button").all():
            toggle.click()
        p.wait_for_timeout(100)
    view.facts = p.evaluate(PAGE_FACTS_JS)
    if scheme == "dark":
        view.facts["lowContrast"] = p.evaluate(CONTRAST_JS, MIN_CONTRAST)
    ctx.close()
    return view


def _load(page: str, base: str, browser) -> PageReport:
    html = (SITE / page).read_text(encoding="utf-8")
    rep = PageReport(desktop=View(), phone=View())
    rep.math_in_source = len(re.findall(r'class="math[ "]|class="[^"]*\bmath notranslate', html))
    rep.widget_views = html.count(f'type="{WIDGET_VIEW}"')
    rep.desktop = _view(page, base, browser, DESKTOP, "light", "desktop", rep)
    rep.phone = _view(page, base, browser, PHONE, "dark", "phone-dark", None)
    return rep


@pytest.fixture(scope="module")
def load(base_url, browser):
    """load(page) -> PageReport; each page is loaded once and its report reused by every test."""
    reports: dict[str, PageReport] = {}

    def get(page: str) -> PageReport:
        if page not in reports:
            reports[page] = _load(page, base_url, browser)
        return reports[page]
    return get


page_param = pytest.mark.parametrize("page", PAGES or ["(no site)"])
content_param = pytest.mark.parametrize("page", CONTENT_PAGES or ["(no site)"])
views = (("desktop", "the desktop"), ("phone", "a phone"))


@page_param
def test_no_console_errors_or_warnings(load, page):
    rep = load(page)
    for name, window in views:
        errors = [e for e in getattr(rep, name).errors if not any(a.search(e) for a in ALLOWED_CONSOLE)]
        assert not errors, f"{page} on {window}: {errors}"


@page_param
def test_works_offline(load, page):
    """Nothing is fetched from another host (CDNs): everything the page needs is in the site."""
    rep = load(page)
    assert not rep.desktop.external, f"{page} asked for outside resources: {rep.desktop.external}"
    assert not rep.desktop.not_found, f"{page}: missing files: {rep.desktop.not_found}"


@page_param
def test_maths_typeset(load, page):
    rep = load(page)
    if rep.math_in_source:
        assert rep.desktop.facts["mjx"] >= 1, f"{page} has {rep.math_in_source} formulas but MathJax typeset none"
    assert not rep.desktop.facts["rawMath"], f"{page}: text that looks like untypeset TeX: {rep.desktop.facts['rawMath']}"


@page_param
def test_images_load(load, page):
    rep = load(page)
    broken = [img["src"][:100] for img in rep.desktop.facts["images"] if img["natural"] <= 0]
    assert not broken, f"{page}: images that did not load: {broken}"


@page_param
def test_no_live_widgets(load, page):
    """A saved ipywidget can be dragged on a static page but recomputes nothing (no kernel): the
    website shows none (tools/site_fixes.py shows the output's other form), and loads neither
    the widget manager nor MathJax where the page does not use them."""
    rep = load(page)
    assert not rep.widget_views, f"{page} still embeds {rep.widget_views} live widget view(s)"
    assert not rep.desktop.facts["widgetsShown"], f"{page} shows live widgets"
    loaded = " ".join(rep.desktop.bytes)
    assert "embed-amd.js" not in loaded and "require.js" not in loaded, f"{page} loads the widget manager"
    if not rep.math_in_source:
        assert "tex-chtml.js" not in loaded, f"{page} has no maths but loads MathJax"


@page_param
def test_solutions_open_on_click(load, page):
    rep = load(page)
    if not rep.dropdowns:
        pytest.skip("no solutions on this page")
    for i, d in enumerate(rep.dropdowns, 1):
        assert not d["before"], f"{page}: solution {i} is visible before a click"
        assert d["after"], f"{page}: solution {i} did not open on click"
        assert d["text"].strip(), f"{page}: solution {i} is empty"


@page_param
def test_notebook_pages_have_launch_buttons(load, page):
    if not page.startswith("notebooks/"):
        pytest.skip("not a notebook page")
    links = load(page).launch_links
    assert any("colab.research.google.com" in u for u in links), f"{page}: no Colab button"
    assert any("mybinder.org" in u for u in links), f"{page}: no Binder button"




WEIGHTS = ROOT / "_build" / "page_weights.json"  # every page's bytes, for the record (README, issue notes)


def _note_weight(page: str, total: int) -> None:
    weights = json.loads(WEIGHTS.read_text()) if WEIGHTS.exists() else {}
    weights[page] = total
    tmp = WEIGHTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(weights.items())), indent=1))
    tmp.replace(WEIGHTS)


@page_param
def test_page_weight(load, page):
    """A page with everything it loads is at most MAX_PAGE_BYTES, and its largest script does
    not block rendering (a synchronous <script src> in <head>)."""
    view = load(page).desktop
    total = sum(view.bytes.values())
    top = sorted(view.bytes.items(), key=lambda kv: -kv[1])[:5]
    _note_weight(page, total)
    listing = ", ".join(f"{urllib.parse.urlsplit(u).path.rsplit('/', 1)[-1]} {n / 1e6:.2f} MB" for u, n in top)
    assert total <= MAX_PAGE_BYTES, f"{page} loads {total / 1e6:.2f} MB (budget {MAX_PAGE_BYTES / 1e6:g} MB): {listing}"
    scripts = {u: n for u, n in view.bytes.items() if urllib.parse.urlsplit(u).path.endswith(".js")}
    if scripts:
        largest = max(scripts, key=scripts.get)
        blocking = {urllib.parse.urldefrag(u).url for u in view.facts["blocking"]}
        assert largest not in blocking, (
            f"{page}: its largest script, {largest} ({scripts[largest] / 1e6:.2f} MB), blocks rendering")


# --- figures, code and maths in the column -------------------------------------------------

@functools.cache
def _record() -> dict:
    """tools/site_fixes.py's record of every page: its code cells and figures."""
    if not RECORD.exists():
        pytest.fail(f"{RECORD} is missing: the book was built without tools/site_fixes.py (see _config.yml)")
    return json.loads(RECORD.read_text())


def _docname(page: str) -> str:
    return page.removesuffix(".html")


def _where(page: str, cell_index, first_line: str) -> str:
    """'notebooks/02_soft_labels.ipynb cell 25 (`slider = ...`)', or the page."""
    record = _record().get(_docname(page), {})
    if cell_index is None:
        return record.get("source", page)
    return f"{record.get('source', page)} cell {cell_index} (`{first_line}`)"


def _cell_at(page: str, position: int) -> tuple:
    """(cell index in the notebook, first line) of the position-th code cell on the page."""
    cells = _record().get(_docname(page), {}).get("cells", [])
    if 0 <= position < len(cells):
        return cells[position]["cell_index"], cells[position]["first_line"]
    return None, ""


@functools.cache
def _png_report(file: str) -> dict | None:
    """The `kdlib-figure` text chunk of a PNG in _images/ (kdlib.widgets.figure_text_report)."""
    from PIL import Image

    path = SITE / "_images" / file
    if len(file) > 200 or not path.is_file():  # not a file of the site (a data: URL)
        return None
    with Image.open(path) as im:
        text = getattr(im, "text", {}) or {}
    return json.loads(text["kdlib-figure"]) if "kdlib-figure" in text else None


def _figures(page: str, view: View) -> list[dict]:
    """Each figure the view showed, with its record (file, alt, cell) and text report."""
    record = _record().get(_docname(page), {}).get("figures", [])
    by_file = {f["file"]: f for f in record if f["kind"] == "image"}
    players = [f for f in record if f["kind"] == "player"]
    out = []
    for img in view.facts["images"]:
        if not img["figure"]:
            continue  # the theme's logos and icons
        if img["player"] is not None:
            entry = players[img["playerIndex"]] if 0 <= img["playerIndex"] < len(players) else {}
            report = json.loads(img["player"])
        else:
            entry = by_file.get(img["file"], {})
            report = _png_report(img["file"])
        where = _where(page, entry.get("cell_index"), entry.get("cell_first_line", "")) if entry else page
        out.append({**img, "where": where, "report": report, "record": entry})
    return out


def _too_small(fig: dict, window: str) -> str | None:
    """Why a figure's smallest text is below MIN_TEXT_PX where it is shown, or None."""
    rep = fig["report"]
    if rep is None:
        return (f"{fig['where']}: its PNG has no text-size record (PNG chunk kdlib-figure): either the chapter ran "
                "before kdlib.chapter.begin() recorded one (build the book again), or it shows a PNG file "
                "(IPython.display.Image): save that with fig.savefig(..., metadata=kdlib.widgets.png_metadata(fig))")
    if "error" in rep:
        return f"{fig['where']}: measuring its text failed when it was drawn: {rep['error']}"
    if rep["min_font_pt"] is None or fig["shown"] <= 0 or fig["natural"] <= 0:
        return None  # no text, or not shown in this window
    scale = fig["shown"] / fig["natural"]
    px = rep["min_font_pt"] * rep["dpi"] / 72 * scale
    if px >= MIN_TEXT_PX:
        return None
    need_pt = MIN_TEXT_PX * 72 / (rep["dpi"] * scale)
    width_in = fig["natural"] / rep["dpi"]
    fit_in = rep["min_font_pt"] * fig["column"] / (72 * MIN_TEXT_PX)
    return (f"{fig['where']}: text {rep['smallest']!r} of {rep['min_font_pt']:g} pt is {px:.1f} CSS px on {window} "
            f"(the {width_in:.1f}-inch figure shows at {scale:.0%}); use >= {need_pt:.1f} pt, or make the figure "
            f"<= {fit_in:.1f} in wide at {rep['min_font_pt']:g} pt")


@content_param
def test_figure_text_readable(load, page):
    """Every figure's smallest text is at least MIN_TEXT_PX CSS pixels high where the page shows
    it, on the desktop and on a phone: font size (points) x dpi / 72 x shown width / PNG width."""
    rep = load(page)
    problems = [msg for name, window in views for fig in _figures(page, getattr(rep, name))
                if (msg := _too_small(fig, window))]
    assert not problems, f"{page}: figure text too small to read:\n" + "\n".join(dict.fromkeys(problems))


@content_param
def test_figure_labels_do_not_overlap(load, page):
    """No two texts of a figure overlap, and no legend covers a bar or a text (measured when the
    figure was drawn: kdlib.widgets.figure_text_report)."""
    problems = [f"{fig['where']}: {'; '.join(fig['report']['overlaps'])}"
                for fig in _figures(page, load(page).desktop) if fig["report"] and fig["report"].get("overlaps")]
    assert not problems, f"{page}: figures with overlapping labels:\n" + "\n".join(problems)


def _alt_problem(alt: str | None) -> str | None:
    if not alt or not alt.strip():
        return "has no alt text"
    if re.search(r"\.(png|jpe?g|gif|svg)$", alt.strip(), re.I) or "/" in alt and " " not in alt.strip():
        return f"has its file name as alt text ({alt[:40]}...)"
    if len(alt.split()) < 4:
        return f"has an alt text too short to say what it shows ({alt!r})"
    return None


@content_param
def test_figures_have_alt_text(load, page):
    """Every figure has an alt text that says what it shows (at least four words, not the file
    name). For a cell's figure: the cell's metadata {"mystnb": {"image": {"alt": "..."}}}; for a
    precomputed player: `alt=` of kdlib.widgets.static_slider (its builders pass one)."""
    problems = [f"{fig['where']}: {why}" for fig in _figures(page, load(page).desktop)
                if (why := _alt_problem(fig["alt"]))]
    assert not problems, f"{page}: figures without a useful alt text:\n" + "\n".join(problems)


@content_param
def test_code_fits_the_column(load, page):
    """On the desktop no code line scrolls sideways, and no printed table wraps (a long printed
    line of prose, such as an error message, wraps: book/_site/kd-site.css)."""
    problems = []
    for box in load(page).desktop.facts["wideCode"]:
        index, first = _cell_at(page, box["cell"])
        what = "code" if not box["output"] else "printed output" if box["scrolls"] else "a printed table that wraps"
        lines = "; ".join(box["lines"][:4]) + (f"; and {len(box['lines']) - 4} more" if len(box["lines"]) > 4 else "")
        problems.append(f"{_where(page, index, first)}: {what} wider than the column ({box['fit']} characters fit): {lines}")
    assert not problems, f"{page}: lines that scroll sideways at {DESKTOP['width']} px:\n" + "\n".join(problems)


@content_param
def test_display_maths_not_cut(load, page):
    """A display equation fits the column on the desktop; on a phone it fits or scrolls sideways
    inside its own box (never cut off); and the page itself never scrolls sideways on a phone."""
    rep = load(page)
    for name, window in views:
        cut = getattr(rep, name).facts["cutMaths"]
        assert not cut, f"{page} on {window}: display maths cut at the column edge: {cut}"
    wide = rep.desktop.facts["scrolledMaths"]
    assert not wide, f"{page}: display maths wider than the column on the desktop (split it over lines): {wide}"
    assert rep.phone.facts["sideways"] <= 1, f"{page} scrolls sideways by {rep.phone.facts['sideways']} px on a phone"


@content_param
def test_dark_mode_contrast(load, page):
    """In the dark theme every text in the article has a contrast of at least 4.5:1 (3:1 when large)."""
    low = load(page).phone.facts["lowContrast"]
    assert not low, f"{page} in dark mode: text with too little contrast: {low[:10]}"


# --- navigation at every width --------------------------------------------------------------

SHOWN_JS = """sel => { const el = document.querySelector(sel); if (!el) return false;
  const r = el.getBoundingClientRect(), cs = getComputedStyle(el);
  if (cs.display === 'none' || cs.visibility === 'hidden' || r.width < 20 || r.height < 20) return false;
  if (r.right <= 0 || r.left >= innerWidth || r.bottom <= 0 || r.top >= innerHeight) return false;
  const x = Math.min(Math.max(r.left + r.width / 2, 1), innerWidth - 1), y = Math.min(Math.max(r.top + 60, 1), innerHeight - 1);
  const hit = document.elementFromPoint(x, y); return !!hit && el.contains(hit); }"""
PRIMARY, SECONDARY = ".bd-sidebar-primary", ".bd-sidebar-secondary"
CONTENTS_BESIDE_FROM = 1440  # narrower, the page contents open from a button (book/_site/kd-site.css)
NAV_PAGE = "notebooks/02_soft_labels.html"


def _visible(p, selector: str):
    """The first visible element matching selector, or None."""
    return next((el for el in p.locator(selector).all() if el.is_visible()), None)


def _close(p, panel: str, toggle: str, width: int) -> None:
    """Close a sidebar as a reader would: tap the dimmed page beside it, else its toggle again.
    (pydata-sphinx-theme 0.16 and later open it as a modal <dialog>, which a tap outside closes;
    0.15 put an overlay beside it.)"""
    dialog = _visible(p, "dialog[open]")
    overlay = _visible(p, ".overlay-primary" if panel == PRIMARY else ".overlay-secondary")
    if dialog is not None:
        box = dialog.bounding_box()
        x = box["x"] + box["width"] + 10 if panel == PRIMARY else box["x"] - 10
        p.mouse.click(min(max(x, 1), width - 1), 400)
    elif overlay is not None:
        overlay.click(position={"x": width - 10 if panel == PRIMARY else 10, "y": 400})
    else:
        _visible(p, toggle).click()
    p.wait_for_timeout(500)


def _nav_context(browser, base_url, width):
    if not (SITE / NAV_PAGE).exists():
        _missing(f"{NAV_PAGE} was not built")
    ctx = browser.new_context(viewport={"width": width, "height": 800})
    p = ctx.new_page()
    p.goto(base_url + NAV_PAGE)
    p.wait_for_load_state("networkidle")
    return ctx, p


@pytest.mark.parametrize("width", [PHONE["width"], 768, DESKTOP["width"]])
def test_sidebar_opens_closes_and_navigates(browser, base_url, width):
    """The site navigation: ☰ opens it (collapses it on a desktop, where it starts open), it closes
    again, and a chapter link in it opens that chapter."""
    ctx, p = _nav_context(browser, base_url, width)
    try:
        toggle = _visible(p, ".primary-toggle")
        assert toggle is not None, f"no visible ☰ button at {width} px"
        start = p.evaluate(SHOWN_JS, PRIMARY)
        assert start == (width >= 992), f"at {width} px the sidebar starts {'open' if start else 'closed'}"
        toggle.click()
        p.wait_for_timeout(500)
        assert p.evaluate(SHOWN_JS, PRIMARY) != start, f"at {width} px ☰ does not {'close' if start else 'open'} the sidebar"
        if start:
            toggle.click()
        else:
            _close(p, PRIMARY, ".primary-toggle", width)
        p.wait_for_timeout(500)
        assert p.evaluate(SHOWN_JS, PRIMARY) == start, f"at {width} px the sidebar does not go back"
        if not start:
            toggle.click()
            p.wait_for_timeout(500)
        link = p.locator(f"{PRIMARY} a.reference.internal[href*='03_']").first
        href = urllib.parse.urljoin(p.url, link.get_attribute("href"))
        link.click()
        p.wait_for_load_state("load")
        assert urllib.parse.urldefrag(p.url).url == urllib.parse.urldefrag(href).url, (
            f"at {width} px a sidebar link leads to {p.url}, not {href}")
    finally:
        ctx.close()


@pytest.mark.parametrize("width", [PHONE["width"], 768, DESKTOP["width"], 1600])
def test_page_contents_open_close_and_navigate(browser, base_url, width):
    """The page's contents ("On this page"): below 1440 px its button opens and closes them (beside
    the article from 1440 px); at every width a section link in them scrolls to that section."""
    ctx, p = _nav_context(browser, base_url, width)
    try:
        toggle = _visible(p, ".secondary-toggle")
        if width < CONTENTS_BESIDE_FROM:
            assert toggle is not None, f"no visible contents button at {width} px"
            assert not p.evaluate(SHOWN_JS, SECONDARY), f"at {width} px the contents start open"
            toggle.click()
            p.wait_for_timeout(500)
            assert p.evaluate(SHOWN_JS, SECONDARY), f"at {width} px the contents button does not open them"
            _close(p, SECONDARY, ".secondary-toggle", width)
            assert not p.evaluate(SHOWN_JS, SECONDARY), f"at {width} px the contents do not close"
            toggle.click()
            p.wait_for_timeout(500)
        else:
            assert p.evaluate(SHOWN_JS, SECONDARY), f"at {width} px the contents are not shown beside the page"
        shown = [a for a in p.locator(f"{SECONDARY} a.reference.internal[href^='#']").all() if a.is_visible()]
        assert len(shown) >= 3, f"at {width} px the contents show {len(shown)} section links"
        link = shown[2]  # a section well down the page (sub-sections stay folded)
        target = link.get_attribute("href")
        link.click()
        section = urllib.parse.unquote(target[1:])
        in_view = "id => { const t = document.getElementById(id).getBoundingClientRect().top; return t > -5 && t < innerHeight / 2; }"
        try:  # the theme scrolls smoothly: wait until the section has arrived in the top half
            p.wait_for_function(in_view, arg=section, timeout=5_000)
        except Exception:
            top = p.evaluate("id => document.getElementById(id).getBoundingClientRect().top", section)
            pytest.fail(f"at {width} px the section {target} is {top:.0f} px from the top after its link")
        assert p.url.endswith(target), f"at {width} px a contents link leads to {p.url}, not {target}"
    finally:
        ctx.close()


def test_search_finds_pages(browser, base_url):
    """The search page (its scripts deferred by tools/site_fixes.py) lists pages for a word the book uses."""
    if not (SITE / "search.html").exists():
        _missing("search.html was not built")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        p = ctx.new_page()
        p.goto(base_url + "search.html?q=temperature")
        p.wait_for_function("() => document.querySelectorAll('#search-results li').length > 0", timeout=30_000)
        titles = p.locator("#search-results li a").all_inner_texts()
        assert any("temperature" in t.lower() for t in titles), f"search results for 'temperature': {titles[:5]}"
    finally:
        ctx.close()


# --- what the HTML says (no browser) --------------------------------------------------------

def _article(page: str) -> str:
    html = (SITE / page).read_text(encoding="utf-8")
    m = re.search(r'<article class="bd-article">(.*?)</article>', html, re.S)
    return m.group(1) if m else ""


def test_no_nbval_markers_on_pages():
    """Readers never see nbval's `# NBVAL_...` comments: the cells carry nbval tags instead
    (tools/nbval_tags.py converts a notebook)."""
    if not PAGES:
        _missing(f"no built site at {SITE}: run `make book` first")
    found = []
    for page in CONTENT_PAGES:
        text = re.sub(r"<[^>]+>", "", _article(page))
        for n in re.findall(r"#\s*NBVAL_[A-Z_]+", text):
            found.append(f"{page}: {n}")
    counts = dict(sorted(collections.Counter(f.split(":")[0] for f in found).items()))
    assert not found, f"nbval markers shown to readers ({len(found)}): {counts}; run tools/nbval_tags.py on these notebooks"


def test_one_h1_per_page():
    """A page has one h1, its title: no h1 after the first heading (a report a cell displays
    starts at ## or below)."""
    if not PAGES:
        _missing(f"no built site at {SITE}: run `make book` first")
    problems = []
    for page in CONTENT_PAGES:
        heads = re.findall(r"<h([1-6])\b[^>]*>(.*?)</h\1>", _article(page), re.S)
        later = [re.sub(r"<[^>]+>", "", t).strip()[:60] for level, t in heads[1:] if level == "1"]
        if later:
            problems.append(f"{page}: {later}")
    assert not problems, "pages with an h1 after their first heading:\n" + "\n".join(problems)


def test_bibliography_labels_are_author_year():
    """The references page labels entries as the text cites them ("Hinton et al., 2015"), not [HVD15]."""
    page = SITE / "book" / "references.html"
    if not page.exists():
        _missing(f"{page} was not built")
    labels = re.findall(r'<span class="label"><span class="fn-bracket">\[</span>(.*?)<span class="fn-bracket">\]',
                        page.read_text(encoding="utf-8"))
    assert labels, "no bibliography entries on the references page"
    bad = [label for label in labels if not re.fullmatch(r"\D+, (\d{4}|n\.d\.)[a-z]?", re.sub(r"<[^>]+>", "", label))]
    assert not bad, f"bibliography labels that are not author-year: {bad[:10]}"


# --- tables that a cell displays as Markdown -----------------------------------------------

class _TextOutsidePre(HTMLParser):
    """The text of a page outside <pre> blocks (code and printed output)."""

    def __init__(self):
        super().__init__()
        self.depth, self.parts = 0, []

    def handle_starttag(self, tag, attrs):
        self.depth += tag == "pre"

    def handle_endtag(self, tag):
        self.depth -= tag == "pre" and self.depth > 0

    def handle_data(self, data):
        if not self.depth:
            self.parts.append(data)


def test_markdown_tables_from_cells_render_as_tables():
    """A Markdown table that a cell displays (the capstone's report, chapter 7's results) becomes an
    HTML table; parsed as CommonMark it would show as lines of pipes and dashes."""
    if not PAGES:
        _missing(f"no built site at {SITE}: run `make book` first")
    raw = re.compile(r"\|\s*:?(?:-{3,}|[\u2013\u2014]+):?\s*\|")  # | --- |, or its dashes typeset as — or –
    for page in PAGES:
        parser = _TextOutsidePre()
        parser.feed((SITE / page).read_text(encoding="utf-8"))
        text = " ".join(parser.parts)
        assert not raw.search(text), f"{page}: a Markdown table shows as text (| --- |); is nb_render_markdown_format myst?"
    capstone = (SITE / "notebooks" / "13_capstone.html").read_text(encoding="utf-8")
    tables = re.findall(r"<table.*?</table>", capstone, re.S)
    assert any("onnx int8" in t and "teacher" in t for t in tables), "the capstone's report table is missing"


# --- a static crawl of every link -------------------------------------------------------

class _Links(HTMLParser):
    """Collect <a href> targets and every id/name a page defines."""

    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])
        # the site's root index.html is only a redirect: <meta http-equiv="Refresh" content="0; url=...">
        if tag == "meta" and (attrs.get("http-equiv") or "").lower() == "refresh":
            match = re.search(r"url=(.+)", attrs.get("content") or "", re.I)
            if match:
                self.hrefs.append(match.group(1).strip())


def test_no_broken_internal_links(base_url):
    """Crawl from index.html: every href inside the site opens, and every #anchor exists."""
    start = urllib.parse.urljoin(base_url, "index.html")
    seen, queue, parsed, broken = {start}, [start], {}, []
    while queue:
        url = queue.pop()
        parser = _Links()
        try:
            with urllib.request.urlopen(url) as resp:
                parser.feed(resp.read().decode("utf-8", "replace"))
        except OSError as err:
            broken.append(f"{url} ({err})")
            continue
        parsed[url] = parser
        for href in parser.hrefs:
            target = urllib.parse.urljoin(url, href)
            if not target.startswith(base_url):
                continue  # an outside link (repository, Colab, papers): not this test's business
            page_url = urllib.parse.urldefrag(target).url
            if page_url not in seen:
                seen.add(page_url)
                if page_url.endswith(".html") or page_url.endswith("/"):
                    queue.append(page_url)
                else:  # a file (notebook download, image): it must exist
                    try:
                        urllib.request.urlopen(page_url).close()
                    except OSError as err:
                        broken.append(f"{url} -> {href} ({err})")
    # anchors, once every page has been read
    for url, parser in parsed.items():
        for href in parser.hrefs:
            target = urllib.parse.urljoin(url, href)
            page_url, frag = urllib.parse.urldefrag(target)
            if target.startswith(base_url) and frag and page_url in parsed:
                if urllib.parse.unquote(frag) not in parsed[page_url].ids:
                    broken.append(f"{url} -> {href} (no #{frag} there)")
    unreachable = [p for p in PAGES if urllib.parse.urljoin(base_url, p) not in parsed
                   and p not in ("genindex.html", "search.html")]
    assert not broken, "broken links:\n" + "\n".join(broken)
    assert not unreachable, f"pages no link leads to: {unreachable}"
