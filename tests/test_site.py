"""Browser tests of the built website (_build/html), offline.

`make test` builds the book, then runs these with Debian's chromium driven by
playwright (never `playwright install`). The site is served from a localhost
port by this module; every request to any other host is blocked and counted,
so a page that still needs a CDN fails. Each page is loaded once and checked
for: console errors, missing files, external requests, typeset maths, images,
rendered widgets, solution dropdowns that open, and launch buttons. A static
crawl checks every internal link and #anchor. Full-page screenshots go to
_build/screenshots/ (look at them: a test cannot judge a layout).

Run alone: `make book && make test-site`. Without a built site or chromium the
tests are skipped, unless KDLIB_SITE_REQUIRED=1 (set by `make test-site`).
"""
from __future__ import annotations

import functools
import http.server
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
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
REQUIRED = os.environ.get("KDLIB_SITE_REQUIRED") == "1"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Console messages that are known, harmless and not ours to fix (each seen on a default
# Jupyter Book 1 build in Chromium; see shared/TOOLCHAIN.md). Everything else fails the test.
ALLOWED_CONSOLE = [
    # sphinx-thebe declares `const THEBE_JS_URL` in two inline scripts on every page; thebe
    # (live code via Binder) is off in this book, so nothing uses the variable.
    re.compile(r"Identifier 'THEBE_JS_URL' has already been declared"),
    # pydata-sphinx-theme on a first visit (empty localStorage): it logs this and picks "auto".
    re.compile(r"Got invalid theme mode: .*Resetting to auto"),
]

pytestmark = pytest.mark.site


def _pages() -> list[str]:
    """Every HTML page of the built site, relative to its root (not the theme's own files)."""
    if not (SITE / "index.html").exists():
        return []
    return sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")
                  if not any(part.startswith(("_", ".")) for part in p.relative_to(SITE).parts))


PAGES = _pages()


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


# --- serving the site and loading each page once ------------------------------------------

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
class PageReport:
    """What one page load showed."""
    errors: list[str] = field(default_factory=list)          # console errors and uncaught exceptions
    external: list[str] = field(default_factory=list)        # blocked requests to other hosts
    not_found: list[str] = field(default_factory=list)       # local files answered with 4xx/5xx
    math_in_source: int = 0                                  # maths the HTML asks MathJax to typeset
    mjx: int = 0                                             # MathJax output elements
    raw_math: list[str] = field(default_factory=list)        # visible text that still looks like TeX
    images: list[dict] = field(default_factory=list)         # {src, width}
    widget_views: int = 0                                    # saved widget views in the HTML
    widgets_rendered: int = 0                                # of those, rendered into the page
    dropdowns: list[dict] = field(default_factory=list)      # {before, after, text}
    launch_links: list[str] = field(default_factory=list)


# Visible text (outside code) that still looks like TeX: $$, \( \[, $...$ with TeX inside,
# or a TeX command such as \frac{ or \sum_.
RAW_MATH_JS = r"""() => {
  const root = document.querySelector('main') || document.body;
  const skip = 'PRE,CODE,SCRIPT,STYLE,TEXTAREA,MJX-CONTAINER,MJX-ASSISTIVE-MML';
  const pat = /\$\$|\\\(|\\\[|\$[^$\s](?:[^$\n]*[^$\s])?\$|\\(frac|sum|mathrm|mathbf|log|exp|alpha|cdot|left|right|text|operatorname)\b/;
  const out = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (node.parentElement.closest(skip) || node.parentElement.closest('.highlight')) continue;
    const m = node.textContent.match(pat);
    if (m) out.push(node.textContent.trim().slice(0, 120));
  }
  // a lone $ right next to typeset maths: "$$ x $$" written inline, typeset as $ x $
  for (const mjx of root.querySelectorAll('mjx-container')) {
    const el = mjx.parentElement.matches('.math') ? mjx.parentElement : mjx;
    const prev = el.previousSibling, next = el.nextSibling;
    if ((prev && /\$\s*$/.test(prev.textContent)) || (next && /^\s*\$/.test(next.textContent)))
      out.push('$ next to maths: ' + el.parentElement.textContent.trim().slice(0, 100));
  }
  return out;
}"""

IMAGES_JS = """() => Array.from(document.querySelectorAll('main img')).map(
  img => ({src: (img.currentSrc || img.src).slice(0, 100), width: img.complete ? img.naturalWidth : 0}))"""


def _shot_name(page: str) -> str:
    return page.replace("/", "__").replace(".html", ".png")


def _load(page: str, base: str, browser) -> PageReport:
    """Load `page` in a fresh browser context and record everything the tests below check."""
    rep = PageReport()
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(120_000)  # generous: CI machines can be slow and busy

    def route(r):
        if r.request.url.startswith(base) or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            rep.external.append(r.request.url)
            r.abort()

    ctx.route("**/*", route)
    p = ctx.new_page()
    p.on("console", lambda m: m.type == "error" and rep.errors.append(
        f"console: {m.text} ({m.location.get('url', '')})"))
    p.on("pageerror", lambda e: rep.errors.append(f"uncaught: {e}"))
    p.on("response", lambda r: r.status >= 400 and rep.not_found.append(f"{r.status} {r.url}"))
    p.goto(base + page, wait_until="load")
    p.wait_for_load_state("networkidle")
    html = (SITE / page).read_text(encoding="utf-8")
    rep.math_in_source = len(re.findall(r'class="math[ "]|class="[^"]*\bmath notranslate', html))
    if rep.math_in_source:
        p.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=60_000)
        p.evaluate("() => MathJax.startup.promise")
    rep.widget_views = html.count('type="application/vnd.jupyter.widget-view+json"')
    if rep.widget_views:
        try:
            p.wait_for_function(f"() => document.querySelectorAll('.widget-subarea > *').length >= {rep.widget_views}",
                                timeout=60_000)
        except Exception:  # counted below; the test says how many did not render
            pass
        rep.widgets_rendered = p.locator(".widget-subarea > *").count()
    rep.mjx = p.locator("mjx-container").count()
    rep.raw_math = p.evaluate(RAW_MATH_JS)
    rep.images = p.evaluate(IMAGES_JS)
    rep.launch_links = p.eval_on_selector_all(
        "a[href*='colab.research.google.com'], a[href*='mybinder.org']", "els => els.map(e => e.href)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    p.screenshot(path=str(SHOTS / _shot_name(page)), full_page=True)
    for sol in p.locator(".solution.dropdown").all():
        body = sol.locator(":scope > :not(.admonition-title)").first
        before = body.is_visible()
        sol.locator(".toggle-button").first.click()
        p.wait_for_timeout(100)
        rep.dropdowns.append({"before": before, "after": body.is_visible(), "text": body.inner_text()[:200]})
    ctx.close()
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


@page_param
def test_no_console_errors(load, page):
    rep = load(page)
    errors = [e for e in rep.errors if not any(a.search(e) for a in ALLOWED_CONSOLE)]
    assert not errors, f"{page}: {errors}"


@page_param
def test_works_offline(load, page):
    """Nothing is fetched from another host (CDNs): everything the page needs is in the site."""
    rep = load(page)
    assert not rep.external, f"{page} asked for outside resources: {rep.external}"
    assert not rep.not_found, f"{page}: missing files: {rep.not_found}"


@page_param
def test_maths_typeset(load, page):
    rep = load(page)
    if rep.math_in_source:
        assert rep.mjx >= 1, f"{page} has {rep.math_in_source} formulas but MathJax typeset none"
    assert not rep.raw_math, f"{page}: text that looks like untypeset TeX: {rep.raw_math}"


@page_param
def test_images_load(load, page):
    rep = load(page)
    broken = [img["src"] for img in rep.images if img["width"] <= 0]
    assert not broken, f"{page}: images that did not load: {broken}"


@page_param
def test_widgets_render(load, page):
    rep = load(page)
    if not rep.widget_views:
        pytest.skip("no widgets on this page")
    assert rep.widgets_rendered >= rep.widget_views, (
        f"{page}: {rep.widget_views} saved widget views, {rep.widgets_rendered} rendered")


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
