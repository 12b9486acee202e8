"""kdlib's docstrings keep their promises: every "Introduced in" tag names the first chapter
(in the order of the table of contents) whose code uses the function or class."""
from __future__ import annotations

import importlib
import inspect
import json
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TAG = re.compile(r"Introduced in: (notebooks/[\w.]+\.ipynb)")


@cache
def chapters() -> list[Path]:
    """The book's notebooks in table-of-contents order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [ROOT / f"{f}.ipynb" for f in files if f.startswith("notebooks/") and (ROOT / f"{f}.ipynb").exists()]


@cache
def code_of(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def uses(code: str, module: str, name: str) -> bool:
    """Does notebook code use `name` of `kdlib.<module>`: imported from it, called bare, or as module.name?"""
    short = module.rsplit(".", 1)[-1]
    return bool(re.search(rf"(?<![\w.]){re.escape(name)}\b", code) and
                re.search(rf"from kdlib\.{re.escape(module)} import[^\n]*\b{re.escape(name)}\b|"
                          rf"from kdlib\.{re.escape(module)} import \([^)]*\b{re.escape(name)}\b", code)
                or re.search(rf"\b{re.escape(short)}\.{re.escape(name)}\b", code))


def public_objects():
    for path in sorted((ROOT / "kdlib").rglob("*.py")):
        if path.name.startswith("__"):
            continue
        module = ".".join(path.relative_to(ROOT / "kdlib").with_suffix("").parts)
        mod = importlib.import_module(f"kdlib.{module}")
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield module, name, obj


def first_chapter(module: str, name: str) -> str | None:
    for nb in chapters():
        if uses(code_of(nb), module, name):
            return f"notebooks/{nb.name}"
    return None


TAGGED = [(m, n, TAG.search(inspect.getdoc(o) or "").group(1))
          for m, n, o in public_objects() if TAG.search(inspect.getdoc(o) or "")]


@pytest.mark.parametrize("module, name, tag", TAGGED, ids=[f"{m}.{n}" for m, n, _ in TAGGED])
def test_introduced_in_names_the_first_chapter_that_uses_it(module, name, tag):
    first = first_chapter(module, name)
    assert first is not None, (f"kdlib.{module}.{name} says 'Introduced in: {tag}' but no chapter uses it: "
                               "drop the tag (kdlib-only functions have none)")
    assert tag == first, f"kdlib.{module}.{name} says 'Introduced in: {tag}', but {first} uses it first"


def test_the_map_of_kdlib_in_contributing_names_every_module():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    modules = sorted({m.split(".")[0] for m, _, _ in public_objects()})
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"CONTRIBUTING.md's map of kdlib does not mention {missing}"
