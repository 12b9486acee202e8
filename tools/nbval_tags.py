"""Turn nbval's comment markers into cell tags, so that readers of the website never see them.

    python tools/nbval_tags.py NOTEBOOK [NOTEBOOK ...]     # rewrite the notebooks
    python tools/nbval_tags.py --check NOTEBOOK [...]      # only list what would change (exit 1 if any)

nbval reads a cell's options from comments in its code (`# NBVAL_CHECK_OUTPUT`) and from its
tags (`nbval-check-output`): the same names, lower case with dashes (nbval.plugin builds its
table of tags from its table of comments). A comment is printed on the website in the code
cell; a tag is not. For each code cell, the marker comments among its first lines (before the
first line of code) are removed and the matching tags added; a tag that set the same option
another way (`nbval-ignore-output` beside `# NBVAL_CHECK_OUTPUT`) is dropped, since nbval lets
the comment win. Nothing else in the notebook changes; it is written only when something did,
in one atomic write. The script never runs a notebook.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def _markers() -> dict[str, tuple[str, bool]]:
    """nbval's comment markers: 'NBVAL_CHECK_OUTPUT' -> (option, value), from nbval itself."""
    from nbval.plugin import comment_markers

    return {name: (m if isinstance(m, tuple) else (m, True)) for name, m in comment_markers.items()}


def tag_for(marker: str) -> str:
    """The tag nbval reads as the same option as a comment marker (NBVAL_SKIP -> nbval-skip)."""
    return marker.lower().replace("_", "-")


def convert_cell(source: str, tags: list[str]) -> tuple[str, list[str]]:
    """(source without its leading marker comments, tags with the matching tags added)."""
    markers = _markers()
    lines = source.splitlines(keepends=True)
    found, keep, head = [], [], True
    for line in lines:
        text = line.strip()
        if head and text.startswith("#") and text.lstrip("#").strip() in markers:
            found.append(text.lstrip("#").strip())
            continue
        if text and not text.startswith("#"):
            head = False
        keep.append(line)
    if not found:
        return source, list(tags)
    options = {markers[m][0] for m in found}
    by_tag = {tag_for(m): o for m, (o, _) in markers.items()} | {"raises-exception": "check_exception"}
    new_tags = [t for t in tags if by_tag.get(t) not in options]  # the comment wins, as in nbval
    for m in found:
        if tag_for(m) not in new_tags:
            new_tags.append(tag_for(m))
    return "".join(keep), new_tags


def convert(nb) -> list[int]:
    """Convert every code cell of a notebook (nbformat node) in place; the indexes of those changed."""
    changed = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = list(cell.metadata.get("tags", []))
        source, new_tags = convert_cell(cell.source, tags)
        if source != cell.source or new_tags != tags:
            cell.source = source
            cell.metadata["tags"] = new_tags
            changed.append(i)
    return changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("notebooks", nargs="+", type=Path, help="notebooks to convert")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook would change")
    args = p.parse_args(argv)
    missing = [str(n) for n in args.notebooks if not n.is_file() or n.suffix != ".ipynb"]
    if missing:
        print(f"error: not notebook files: {', '.join(missing)}", file=sys.stderr)
        return 2
    from kdlib.utils import atomic_write_text

    pending = 0
    for path in args.notebooks:
        text = path.read_text(encoding="utf-8")
        nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
        changed = convert(nb)
        if not changed:
            print(f"{path}: no nbval markers")
            continue
        pending += 1
        if args.check:
            print(f"{path}: markers in cells {changed}")
            continue
        out = nbformat.writes(nb, version=nbformat.NO_CONVERT)
        atomic_write_text(path, out if out.endswith("\n") else out + "\n")
        print(f"{path}: cells {changed} now carry nbval tags")
    return 1 if args.check and pending else 0


if __name__ == "__main__":
    sys.exit(main())
