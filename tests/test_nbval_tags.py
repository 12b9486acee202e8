"""tools/nbval_tags.py: nbval's comment markers become cell tags that nbval reads the same way.

The reference is nbval itself: its own parsers of comments and tags must give the same options
before and after, and a real `pytest --nbval-lax` run still checks (and fails) a converted cell."""
from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from nbval.plugin import find_comment_markers, find_metadata_tags

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import nbval_tags  # noqa: E402


def nbval_options(cell) -> dict:
    """The options nbval reads for a cell (tags, then comments, which win), as in nbval.plugin."""
    options = defaultdict(bool, find_metadata_tags(cell.metadata))
    options.update(dict(find_comment_markers(cell.source)))
    return dict(options)


CELLS = [
    ("# NBVAL_CHECK_OUTPUT\nprint(1)", []),
    ("#NBVAL_IGNORE_OUTPUT\n# NBVAL_SKIP\nx = 1", ["keep-me"]),
    ("# NBVAL_CHECK_OUTPUT\nprint(2)", ["nbval-ignore-output"]),   # the comment wins in nbval
    ("# NBVAL_RAISES_EXCEPTION\n1 / 0", ["raises-exception"]),
    ("# a comment first\n# NBVAL_CHECK_OUTPUT\nprint(3)", []),
    ("print(4)\n# NBVAL_CHECK_OUTPUT", []),                          # not among the first lines: left
    ("print(5)", ["nbval-skip"]),
]


def notebook():
    nb = new_notebook(cells=[new_markdown_cell("# NBVAL_CHECK_OUTPUT in text stays")])
    for source, tags in CELLS:
        nb.cells.append(new_code_cell(source, metadata={"tags": list(tags)} if tags else {}))
    return nb


def test_converted_cells_mean_the_same_to_nbval():
    nb = notebook()
    before = [nbval_options(c) for c in nb.cells if c.cell_type == "code"]
    changed = nbval_tags.convert(nb)
    assert changed == [1, 2, 3, 4, 5]
    after = [nbval_options(c) for c in nb.cells if c.cell_type == "code"]
    assert after == before
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.source for c in code[:5]] == ["print(1)", "x = 1", "print(2)", "1 / 0", "# a comment first\nprint(3)"]
    assert code[0].metadata["tags"] == ["nbval-check-output"]
    assert code[1].metadata["tags"] == ["keep-me", "nbval-ignore-output", "nbval-skip"]
    assert code[2].metadata["tags"] == ["nbval-check-output"]
    assert code[3].metadata["tags"] == ["nbval-raises-exception"]
    assert code[5].source == "print(4)\n# NBVAL_CHECK_OUTPUT" and "tags" not in code[5].metadata
    assert nb.cells[0].source == "# NBVAL_CHECK_OUTPUT in text stays"
    assert nbval_tags.convert(nb) == []  # a second run changes nothing


def test_cli_rewrites_only_what_changed(tmp_path, capsys):
    path = tmp_path / "x.ipynb"
    nbformat.write(notebook(), path)
    original = path.read_text()
    assert nbval_tags.main(["--check", str(path)]) == 1 and path.read_text() == original
    assert nbval_tags.main([str(path)]) == 0
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[1].source == "print(1)" and nb.cells[1].metadata["tags"] == ["nbval-check-output"]
    untouched = tmp_path / "y.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), untouched)
    stamp = untouched.stat().st_mtime_ns
    assert nbval_tags.main([str(untouched)]) == 0 and untouched.stat().st_mtime_ns == stamp
    assert nbval_tags.main([str(tmp_path / "missing.ipynb")]) == 2
    assert "not notebook files" in capsys.readouterr().err


def _nbval(path: Path) -> int:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env",
                           "-p", "no:cacheprovider", str(path)], cwd=path.parent, capture_output=True).returncode


@pytest.mark.parametrize("stored, expect_rc", [("1\n", 0), ("2\n", 1)])
def test_nbval_still_checks_a_converted_cell(tmp_path, stored, expect_rc):
    """`--nbval-lax` compares the cell after conversion exactly as before: a wrong stored output fails."""
    nb = new_notebook(cells=[new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)", execution_count=1,
                                           outputs=[new_output("stream", name="stdout", text=stored)])])
    path = tmp_path / "check.ipynb"
    nbformat.write(nb, path)
    assert _nbval(path) == expect_rc
    assert nbval_tags.main([str(path)]) == 0
    assert "NBVAL" not in nbformat.read(path, as_version=4).cells[0].source
    assert _nbval(path) == expect_rc
