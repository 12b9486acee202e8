"""The exercises: every check is friendly to a blank answer, and every chapter's exercises have
the house shape (CONTRIBUTING.md): a runnable-in-class starter that calls check(...), and a
gated solution that ends in `assert check(...)` (nbval and the book build run it)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from kdlib import exercises as kdex

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MIN_EXERCISES = 3

sys.path.insert(0, str(ROOT / "tools"))
import student_pack as sp  # noqa: E402

kdex._load_all()
CHECK_IDS = sorted(kdex.CHECKS)


def _returns_none(*args, **kwargs):
    return None


def _returns_ellipsis(*args, **kwargs):
    return ...


def _raises(*args, **kwargs):
    raise ValueError("reader's bug")


BLANK_ANSWERS = {
    "None": None,
    "a function returning None": _returns_none,
}
WRONG_ANSWERS = {
    **BLANK_ANSWERS,
    "Ellipsis": ...,
    "a function returning ...": _returns_ellipsis,
    "a function that raises": _raises,
    "an empty string": "",
    "an empty tensor": torch.empty(0),
    "a lambda of no arguments": lambda: 0,
}


def test_checks_are_registered():
    assert CHECK_IDS, "no checks registered in kdlib/exercises/chNN.py"
    for ex in CHECK_IDS:
        assert re.fullmatch(r"\d\d\.\d+", ex), f"check id {ex!r} is not of the form NN.k"


@pytest.mark.parametrize("ex", CHECK_IDS)
@pytest.mark.parametrize("kind", BLANK_ANSWERS)
def test_check_function_rejects_a_blank_answer_kindly(ex, kind):
    """The registered function itself (not only the run_check wrapper) returns a message."""
    try:
        message = kdex.CHECKS[ex](BLANK_ANSWERS[kind])
    except Exception as err:  # the assertion below names the problem; a traceback would not
        pytest.fail(f"check {ex} raised {type(err).__name__}: {err} on {kind}")
    assert isinstance(message, str) and message.strip(), f"check {ex} accepted {kind}"
    assert "Traceback" not in message and len(message) < 600, f"check {ex}: unfriendly message {message!r}"


@pytest.mark.parametrize("ex", CHECK_IDS)
def test_check_never_raises_on_wrong_answers(ex, capsys):
    """The reader's entry point prints feedback and returns False for anything blank or broken."""
    for kind, answer in WRONG_ANSWERS.items():
        assert kdex.check(ex, answer) is False, f"check {ex} accepted {kind}"
        out = capsys.readouterr().out
        assert out.startswith(f"Exercise {ex}: not yet."), f"check {ex} on {kind} printed {out!r}"



def test_not_a_function_names_what_was_passed_instead():
    import torch

    from kdlib.exercises import not_a_function

    assert not_a_function(lambda x: x, "softmax_T") is None and not_a_function(len, "len") is None
    for wrong, kind in [(0.5, "float"), (torch.nn.Linear(2, 2), "Linear"), (torch.nn.Linear, "type"),
                        (torch.zeros(2), "Tensor")]:
        assert not_a_function(wrong, "softmax_T") == f"pass your function softmax_T itself (got a {kind})"

def test_unknown_exercise_names_the_known_ones():
    with pytest.raises(KeyError, match="known:"):
        kdex.run_check("00.0", 1)


# --- the chapters' exercises -------------------------------------------------------------

def _chapter(path: Path) -> str:
    return path.name[:2]


def _structure(path: Path):
    nb = nbformat.read(path, as_version=4)
    exercises, _ = sp.scan(nb)
    return nb, exercises


def _open_ended(nb, ex) -> bool:
    """An exercise with no starter and no solution that says it is open-ended (no check)."""
    return (not ex.starters(nb) and ex.solution_label is None
            and "open-ended" in nb.cells[ex.cell].source.lower())


def _checked(nb, exercises):
    return [ex for ex in exercises if not _open_ended(nb, ex)]


def _solution_ids(nb, ex) -> list[str]:
    """The exercise ids a solution asserts, in order."""
    solution = "\n".join(nb.cells[i].source for i in ex.solution_code)
    return re.findall(r"^\s*assert\s+check\(\s*[\"']([^\"']+)[\"']", solution, flags=re.M)


def _last_statement(source: str) -> str:
    lines = [ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_has_enough_exercises(path):
    """At least MIN_EXERCISES exercises with an automatic check (open-ended ones come on top)."""
    nb, exercises = _structure(path)
    n = len(_checked(nb, exercises))
    assert n >= MIN_EXERCISES, f"{path.name}: {n} exercises with a check, want {MIN_EXERCISES}+"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_exercises_have_starter_and_gated_solution(path):
    nb, exercises = _structure(path)
    chapter = _chapter(path)
    used = []
    for ex in _checked(nb, exercises):
        where = f"{path.name} exercise {ex.label or '(no :label:)'}"
        assert ex.label, f"{where}: the exercise needs a :label:"
        starters = ex.starters(nb)
        assert starters, (f"{where}: no starter (a code cell tagged skip-execution and nbval-skip "
                          "that calls check(...)) between the exercise and its solution; an exercise "
                          "without a check must say it is open-ended and have no solution block")
        starter = nb.cells[starters[-1]]
        ids = sp.CHECK_CALL.findall(starter.source)
        assert _last_statement(starter.source).startswith("check("), f"{where}: the starter must end in check(...)"
        assert set(starter.metadata.get("tags", [])) >= sp.STARTER_TAGS, f"{where}: starter tags"
        assert ex.solution_label == ex.label, (
            f"{where}: its solution refers to {ex.solution_label!r} (a gated solution-start is expected)")
        assert ex.solution_code, f"{where}: the solution has no code cell"
        asserted = _solution_ids(nb, ex)
        assert asserted, (f"{where}: the solution must run `assert check(...)` so that the build fails "
                          "when the solution stops passing")
        assert asserted[-1] == ids[-1], f"{where}: starter and solution check different ids"
        for i in ex.solution_code:
            tags = set(nb.cells[i].metadata.get("tags", []))
            assert not tags & sp.STARTER_TAGS, f"{where}: a solution cell is tagged {tags}: it would never run"
        assert ids[-1].startswith(chapter + "."), f"{where}: check id {ids[-1]} is not chapter {chapter}'s"
        assert ids[-1] in kdex.CHECKS, f"{where}: no check registered for {ids[-1]}"
        used.append(ids[-1])
    assert len(used) == len(set(used)), f"{path.name}: two exercises use the same check: {used}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_solutions_passed(path):
    """The stored outputs show each solution's check passing (the notebook was run as committed)."""
    nb, exercises = _structure(path)
    for ex in _checked(nb, exercises):
        out = "".join(o.get("text", "") for i in ex.solution_code for o in nb.cells[i].get("outputs", []))
        for ex_id in _solution_ids(nb, ex):
            assert f"Exercise {ex_id}: correct" in out, (
                f"{path.name} {ex.label}: the committed solution shows no passing check {ex_id}; re-run the notebook")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_check_of_the_chapter_is_used(path):
    nb, exercises = _structure(path)
    used = {ex_id for ex in exercises for ex_id in _solution_ids(nb, ex)}
    registered = {ex for ex in CHECK_IDS if ex.startswith(_chapter(path) + ".")}
    assert registered <= used, f"{path.name}: checks no exercise uses: {sorted(registered - used)}"
