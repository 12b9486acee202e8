"""The classroom kit (tools/student_pack.py): student notebooks keep the exercises and lose the solutions."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# imported by name from tools/ (on sys.path), so that the worker processes `grade` spawns can import it too
sys.path.insert(0, str(ROOT / "tools"))
import student_pack as sp  # noqa: E402


def _tagged(source, *tags, outputs=()):
    cell = new_code_cell(source, outputs=list(outputs), execution_count=1 if outputs else None)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def toy_notebook():
    """A chapter with two exercises, one gated solution of two cells, one one-cell solution."""
    out = new_output("stream", name="stdout", text="hello\n")
    return new_notebook(cells=[
        new_markdown_cell("# 99. Toy chapter\n\nText."),
        _tagged("x = 1\nprint('hello')", outputs=[out]),
        _tagged("slow_training()", "skip-execution"),
        new_markdown_cell("## Exercises\n\n```{exercise}\n:label: ex-99-a\n\nDouble it.\n```"),
        _tagged("def double(v):\n    ...  # your code here\n\ncheck(\"99.1\", double)",
                "skip-execution", "nbval-skip"),
        new_markdown_cell("```{solution-start} ex-99-a\n:class: dropdown\n```\n\nHint: SECRET-0."),
        _tagged("def double(v):\n    return 2 * v  # SECRET-1", outputs=[out]),
        _tagged("assert check(\"99.1\", double)", outputs=[out]),
        new_markdown_cell("```{solution-end}\n```\n\n:::{exercise}\n:label: ex-99-b\nName it.\n:::"),
        _tagged("name = ...\ncheck(\"99.2\", name)", "nbval-skip", "skip-execution", "hide-input"),
        new_markdown_cell(":::{solution} ex-99-b\n:class: dropdown\nIt is `SECRET-2`.\n:::"),
        new_markdown_cell("## References"),
    ], metadata={"widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}}})


def test_student_version_removes_solutions_and_keeps_runnable_starters():
    nb = sp.student_version(toy_notebook())
    text = "\n".join(c.source for c in nb.cells)
    assert "SECRET" not in text and "{solution" not in text and "assert check" not in text
    starters = [c for c in nb.cells if c.cell_type == "code" and "check(" in c.source]
    assert [c.source.splitlines()[-1] for c in starters] == ['check("99.1", double)', 'check("99.2", name)']
    assert "tags" not in starters[0].metadata  # runnable: no skip tags left
    assert starters[1].metadata["tags"] == ["hide-input"]  # other tags kept
    assert [c for c in nb.cells if "slow_training" in c.source][0].metadata["tags"] == ["skip-execution"]
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert "widgets" not in nb.metadata
    assert "Student version" in nb.cells[1].source  # the note right after the title
    assert sum("{exercise}" in c.source for c in nb.cells) == 2
    assert any(c.source.startswith(":::{exercise}") for c in nb.cells)  # text after solution-end kept


def test_scan_finds_exercises_starters_and_solutions():
    nb = toy_notebook()
    exercises, _ = sp.scan(nb)
    assert [(e.label, e.solution_label) for e in exercises] == [("ex-99-a", "ex-99-a"), ("ex-99-b", "ex-99-b")]
    assert [len(e.starters(nb)) for e in exercises] == [1, 1]
    assert [nb.cells[i].source.splitlines()[-1] for i in exercises[0].solution_code] == [
        "    return 2 * v  # SECRET-1", 'assert check("99.1", double)']


def test_original_is_not_modified():
    nb = toy_notebook()
    before = nbformat.writes(nb)
    sp.student_version(nb)
    assert nbformat.writes(nb) == before


@pytest.mark.parametrize("cells, message", [
    (["```{solution-start} ex\n```"], "without a solution-end"),
    (["```{solution-end}\n```"], "without a solution-start"),
    (["```{solution-start} a\n```", "```{solution-start} b\n```"], "inside the solution"),
    (["```{solution-start} a\n```\ntext\n```{solution-end}\n```\n```{solution-end}\n```"], "without a solution-start"),
])
def test_unbalanced_solution_markers_are_refused(cells, message):
    nb = new_notebook(cells=[new_markdown_cell(s) for s in cells])
    with pytest.raises(ValueError, match=message):
        sp.student_version(nb)


def test_solution_code_outside_a_block_is_refused():
    nb = new_notebook(cells=[new_markdown_cell("# 1. T"), new_code_cell('assert check("01.1", f)')])
    with pytest.raises(ValueError, match="solution code outside a solution block"):
        sp.student_version(nb)


def test_make_pack_writes_readme_grader_and_refuses_to_overwrite(tmp_path):
    src = tmp_path / "99_toy.ipynb"
    nbformat.write(toy_notebook(), src)
    out = tmp_path / "pack"
    written = sp.make_pack([src], out)
    assert written == [out / "notebooks" / "99_toy.ipynb"]
    assert "check(" in (out / "README.md").read_text() and (out / "grade.py").exists()
    with pytest.raises(FileExistsError, match="--force"):
        sp.make_pack([src], out)
    (out / "notebooks" / "99_toy.ipynb").write_text("stale")
    sp.make_pack([src], out, force=True)
    assert nbformat.read(out / "notebooks" / "99_toy.ipynb", as_version=4).cells
    with pytest.raises(ValueError, match="no notebooks"):
        sp.make_pack([], tmp_path / "empty")


def test_pack_carries_the_data_files_the_notebooks_read(tmp_path):
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "r.json").write_text('{"gap": 0.5}')
    (tmp_path / "notebooks").mkdir()
    nb = toy_notebook()
    nb.cells.insert(1, new_code_cell('import json\nR = json.load(open("../bench/results/r.json"))\n'
                                     'MISSING = "../bench/results/none.json"\nUP = "../../etc/passwd"'))
    src = tmp_path / "notebooks" / "99_toy.ipynb"
    nbformat.write(nb, src)
    assert sp.data_files(nb, src.parent) == ["bench/results/r.json"]
    out = tmp_path / "pack"
    sp.make_pack([src], out)
    assert (out / "bench" / "results" / "r.json").read_text() == '{"gap": 0.5}'
    assert not (out / "etc").exists()


def test_grade_scores_right_wrong_and_unreached_exercises(tmp_path):
    """A real kernel runs a small notebook: one right, one wrong, one never reached."""
    nb = new_notebook(cells=[
        new_code_cell("from kdlib.exercises import register, check\n"
                      "@register('98.1')\ndef _c1(a):\n    return None if a == 2 else f'expected 2, got {a!r}'\n"
                      "@register('98.2')\ndef _c2(a):\n    return None if a == 3 else 'expected 3'\n"
                      "@register('98.3')\ndef _c3(a):\n    return None"),
        _tagged("check('98.1', 1 + 1)", "skip-execution", "nbval-skip"),
        _tagged("check('98.2', 4)", "skip-execution", "nbval-skip"),
        new_code_cell("raise RuntimeError('student bug')"),
        _tagged("check('98.3', undefined_name)", "skip-execution", "nbval-skip"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "98_sub.ipynb"
    nbformat.write(nb, path)
    results = sp.grade(path, timeout=120)
    assert results["98.1"] == "correct"
    assert results["98.2"].startswith("not yet") and "expected 3" in results["98.2"]
    assert results["98.3"] == "not run"
    assert nbformat.read(path, as_version=4) == nb  # the submission is untouched


# --- the real chapters -------------------------------------------------------------------

@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    if not NOTEBOOKS:
        pytest.skip("no chapters in notebooks/ yet")
    out = tmp_path_factory.mktemp("pack") / "student-pack"
    sp.make_pack(NOTEBOOKS, out)
    return out


def _solution_code(nb) -> list[str]:
    exercises, _ = sp.scan(nb)
    return [nb.cells[i].source.strip() for ex in exercises for i in ex.solution_code if nb.cells[i].source.strip()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_student_version(pack, path):
    original = nbformat.read(path, as_version=4)
    student = nbformat.read(pack / "notebooks" / path.name, as_version=4)
    text = "\n".join(c.source for c in student.cells)
    for code in _solution_code(original):
        assert code not in text, f"solution code left in the student {path.name}: {code[:80]!r}"
    assert not re.search(r"\{solution(-start|-end)?\}", text)
    starters = [c for c in original.cells if sp.is_starter(c)]
    kept = [c for c in student.cells if c.cell_type == "code" and sp.CHECK_CALL.search(c.source)]
    assert [c.source for c in kept] == [c.source for c in starters], "starters lost or changed"
    assert all(not set(c.metadata.get("tags", [])) & sp.STARTER_TAGS for c in kept)
    assert all(not c.outputs and c.execution_count is None for c in student.cells if c.cell_type == "code")
    n_ex = sum(bool(re.search(r"\{exercise\}", c.source)) for c in original.cells)
    assert sum(bool(re.search(r"\{exercise\}", c.source)) for c in student.cells) == n_ex


def _rendezvous_submission(path: Path, me: str, other: str, answer: int) -> Path:
    """A submission whose first cell waits for `other` to have started: graded one at a time,
    the first never sees the second start (it fails its check after 60 s)."""
    nb = new_notebook(cells=[
        new_code_cell("import pathlib, time\n"
                      f"pathlib.Path('{me}.started').touch()\n"
                      f"met = any(pathlib.Path('{other}.started').exists() or time.sleep(0.1) for _ in range(600))"),
        new_code_cell("from kdlib.exercises import register, check\n"
                      "@register('97.1')\ndef _c(a):\n    return None if a == 2 else f'expected 2, got {a!r}'"),
        _tagged(f"check('97.1', {answer} if met else 'alone')", "skip-execution", "nbval-skip"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_grade_runs_submissions_side_by_side_and_reports_them_in_order(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = _rendezvous_submission(tmp_path / "alice.ipynb", "alice", "bob", 2)
    b = _rendezvous_submission(tmp_path / "bob.ipynb", "bob", "alice", 3)
    assert sp._main_grade([str(a), str(b), "--jobs", "2", "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert out.index("alice.ipynb: 1/1 correct") < out.index("bob.ipynb: 0/1 correct")
    assert "97.1: not yet: expected 2, got 3" in out and "total: 1/2 correct" in out


def test_grade_refuses_bad_arguments(tmp_path, capsys):
    assert sp._main_grade([str(tmp_path / "nobody.ipynb")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        sp._main_grade([str(tmp_path / "x.ipynb"), "--jobs", "0"])
    assert err.value.code == 2 and "--jobs must be 1 or more" in capsys.readouterr().err
