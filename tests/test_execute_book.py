"""tools/execute_book.py: the notebooks run side by side, into the cache the book build reads."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
# imported by name from tools/ (on sys.path), so that the worker processes it spawns can import it too
sys.path.insert(0, str(ROOT / "tools"))
import execute_book as eb  # noqa: E402

SETTINGS = {"timeout": 120, "allow_errors": False}

# Each of these two notebooks waits for the other to have started: they can only both finish
# when they run at the same time (one after the other, the first fails after 60 s).
RENDEZVOUS = """
import pathlib, time
pathlib.Path("{me}.started").touch()
for _ in range(600):
    if pathlib.Path("{other}.started").exists():
        break
    time.sleep(0.1)
else:
    raise RuntimeError("{other} never started alongside {me}")
with open("runs.log", "a") as log:
    log.write("{me}\\n")
print("{me} met {other}")
"""


def write_nb(path: Path, *sources: str) -> Path:
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def runs(folder: Path) -> list[str]:
    log = folder / "runs.log"
    return log.read_text().split() if log.exists() else []


@pytest.fixture
def book(tmp_path):
    nbs = [write_nb(tmp_path / "a.ipynb", RENDEZVOUS.format(me="a", other="b")),
           write_nb(tmp_path / "b.ipynb", RENDEZVOUS.format(me="b", other="a")),
           write_nb(tmp_path / "c.ipynb", "with open('runs.log', 'a') as log:\n    log.write('c\\n')", "6 * 7")]
    return tmp_path, nbs


def test_notebooks_run_side_by_side_into_the_cache(book):
    folder, nbs = book
    cache_dir = folder / "_build" / ".jupyter_cache"
    out = io.StringIO()
    assert eb.run(nbs, cache_dir, jobs=2, redo=False, settings=SETTINGS, out=out) == 0, out.getvalue()
    assert sorted(runs(folder)) == ["a", "b", "c"]
    assert "3 notebook(s), 2 at a time" in out.getvalue()

    from jupyter_cache import get_cache
    cache = get_cache(str(cache_dir))
    for nb_path in nbs:
        nb = nbformat.read(nb_path, as_version=4)
        assert cache.match_cache_notebook(nb).data["execution_seconds"] > 0
        cached = cache.merge_match_into_notebook(nb)[1]
        assert [o for c in cached.cells for o in c.outputs], f"{nb_path.name} cached without outputs"
    c_out = cache.merge_match_into_notebook(nbformat.read(nbs[2], as_version=4))[1].cells[1].outputs
    assert c_out[0]["data"]["text/plain"] == "42"

    record = json.loads((cache_dir.parent / eb.RECORD_NAME).read_text())
    assert record["jobs"] == 2 and sorted(record["notebooks"]) == ["a.ipynb", "b.ipynb", "c.ipynb"]
    assert record["wall_s"] > 0

    # a second run finds everything cached and executes nothing
    out = io.StringIO()
    assert eb.run(nbs, cache_dir, jobs=2, redo=False, settings=SETTINGS, out=out) == 0
    assert "nothing to execute" in out.getvalue() and sorted(runs(folder)) == ["a", "b", "c"]

    # a changed cell is run again, alone
    write_nb(nbs[2], "with open('runs.log', 'a') as log:\n    log.write('c\\n')", "6 * 9")
    assert eb.run(nbs, cache_dir, jobs=2, redo=False, settings=SETTINGS, out=io.StringIO()) == 0
    assert sorted(runs(folder)) == ["a", "b", "c", "c"]


def test_the_book_build_reuses_what_was_cached(book):
    """myst-nb's cache mode (what `jupyter-book build` runs) finds the notebook and does not run it."""
    from myst_nb.core.config import NbParserConfig
    from myst_nb.core.execute import create_client

    folder, nbs = book
    cache_dir = folder / "cache"
    assert eb.run(nbs[2:], cache_dir, jobs=1, redo=False, settings=SETTINGS, out=io.StringIO()) == 0
    assert runs(folder) == ["c"]

    class Log:
        def info(self, msg, **kw): self.last = msg
        warning = error = info

    config = NbParserConfig(execution_mode="cache", execution_cache_path=str(cache_dir))
    with create_client(nbformat.read(nbs[2], as_version=4), str(nbs[2]), config, Log()) as client:
        assert client.exec_metadata["succeeded"] and client.exec_metadata["runtime"] > 0
        assert client.notebook.cells[1].outputs[0]["data"]["text/plain"] == "42"
    assert runs(folder) == ["c"]  # not executed a second time


def test_a_failing_notebook_is_reported_and_not_cached(tmp_path):
    good = write_nb(tmp_path / "good.ipynb", "1 + 1")
    bad = write_nb(tmp_path / "bad.ipynb", "x = 1", "raise ValueError('the data folder is empty')")
    cache_dir = tmp_path / "cache"
    out = io.StringIO()
    assert eb.run([good, bad], cache_dir, jobs=2, redo=False, settings=SETTINGS, out=out) == 1
    text = out.getvalue()
    assert "bad.ipynb failed" in text and "the data folder is empty" in text and "FAILED" in text
    from jupyter_cache import get_cache
    cache = get_cache(str(cache_dir))
    assert eb.is_cached(cache, good) and not eb.is_cached(cache, bad)
    assert not (tmp_path / eb.RECORD_NAME).exists()  # no record of an incomplete run


def test_a_file_that_is_not_a_notebook_is_reported_not_raised(tmp_path):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ this is not JSON")
    out = io.StringIO()
    assert eb.run([broken], tmp_path / "cache", jobs=1, redo=False, settings=SETTINGS, out=out) == 1
    assert "broken.ipynb failed" in out.getvalue() and "1 notebook(s) failed: broken.ipynb" in out.getvalue()


def test_notebooks_excluded_in_the_config_are_not_run(book):
    folder, nbs = book
    out = io.StringIO()
    settings = {**SETTINGS, "exclude": ["*/c.ipynb"]}
    assert eb.run(nbs[2:], folder / "cache", jobs=1, redo=False, settings=settings, out=out) == 0
    assert runs(folder) == [] and "excluded from execution in _config.yml: c.ipynb" in out.getvalue()


def test_longest_notebooks_start_first():
    paths = [Path(f"/b/{i:02d}.ipynb") for i in range(1, 6)]
    known = {"/b/01.ipynb": 10.0, "/b/02.ipynb": 50.0, "/b/04.ipynb": 30.0}
    assert [p.name for p in eb.longest_first(paths, known)] == \
        ["05.ipynb", "03.ipynb", "02.ipynb", "04.ipynb", "01.ipynb"]


def test_the_book_notebooks_come_from_the_table_of_contents():
    nbs = eb.book_notebooks()
    assert [p.name[:2] for p in nbs] == [f"{i:02d}" for i in range(1, len(nbs) + 1)] and len(nbs) >= 11
    settings = eb.book_settings()
    assert settings["mode"] == "cache", "make book runs the notebooks into the cache: keep execute_notebooks: cache"
    assert settings["timeout"] >= 60 and settings["allow_errors"] is False


def test_bad_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        eb.main(["--jobs", "0"])
    assert err.value.code == 2 and "--jobs must be 1 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        eb.main([str(tmp_path / "missing.ipynb")])
    assert err.value.code == 2 and "no such notebook" in capsys.readouterr().err


def test_check_only_runs_every_cell_with_the_given_environment_and_keeps_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(eb, "book_settings", lambda: {"mode": "cache", "timeout": 120, "allow_errors": False,
                                                      "exclude": []})
    monkeypatch.delenv("KDLIB_CHECK_VAR", raising=False)
    ok = write_nb(tmp_path / "ok.ipynb", "import os\nassert os.environ['KDLIB_CHECK_VAR'] == 'AVX2'")
    bad = write_nb(tmp_path / "bad.ipynb", "assert 1 == 2, 'a claim that no longer holds'")
    cache = tmp_path / "_build" / ".jupyter_cache"
    assert eb.main(["--check-only", "--env", "KDLIB_CHECK_VAR=AVX2", "--cache", str(cache), str(ok)]) == 0
    assert not cache.exists()  # nothing kept
    assert eb.main(["--check-only", "--env", "KDLIB_CHECK_VAR=AVX2", str(ok), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "a claim that no longer holds" in out and "KDLIB_CHECK_VAR=AVX2" in out
    with pytest.raises(SystemExit):
        eb.main(["--check-only", "--env", "NOEQUALS", str(ok)])
