"""A plain install works: the wheel built from this checkout, installed in a fresh virtual
environment that cannot see the checkout, runs the chapters from an empty folder.

This is what a reader on Colab gets from `pip install "kdlib @ git+<repo>"`: every subpackage,
the checksummed checkpoints, the saved bench results and the text corpus as package data, and
the dependencies the chapters import. Slow (a fresh venv installs torch): `make test-wheel`,
part of `make test`; not in `make test-unit`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.wheel

# chapters run from the wheel: a plain install first, then with the ExecuTorch extra (chapter 10)
PLAIN = ["02_soft_labels.ipynb", "05_distillation.ipynb"]
WITH_EXECUTORCH = ["10_edge_export.ipynb"]

RUNNER = r'''
import json, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient

checkout, folder = sys.argv[1], Path(sys.argv[2])
results = {}
for name in sys.argv[3:]:
    nb = nbformat.read(folder / name, as_version=4)
    probe = nbformat.v4.new_code_cell(
        "import kdlib, kdlib.utils as _u\n"
        f"assert not kdlib.__file__.startswith({checkout!r}), kdlib.__file__\n"
        "print('KDLIB_AT', kdlib.__file__, _u.asset_path('checkpoints'))")
    nb.cells.insert(1, probe)
    t0 = time.perf_counter()
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
        outs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
        results[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 1), "output": outs[-20000:]}
    except Exception as err:  # a failing cell: its message and traceback
        results[name] = {"ok": False, "seconds": round(time.perf_counter() - t0, 1), "output": str(err)[-6000:]}
print(json.dumps(results))
'''


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of what it is made of (setuptools leaves build/ behind)."""
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "kdlib", src / "kdlib", ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)])
    (found,) = dist.glob("kdlib-*.whl")
    return found


def test_the_wheel_carries_every_subpackage_and_the_files_the_chapters_read(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("kdlib/exercises/__init__.py", "kdlib/exercises/ch05.py",
                   "kdlib/assets/checkpoints/teacher_mnist5k.pt", "kdlib/assets/checkpoints/teacher_mnist5k.pt.sha256",
                   "kdlib/assets/checkpoints/student_mnist5k.pt", "kdlib/assets/results/kd_gain.json",
                   "kdlib/assets/results/pipeline.json", "kdlib/assets/data/tinyshakespeare.txt",
                   "kdlib/assets/mcu/kernels.c"):
        assert needed in names, f"the wheel lacks {needed}"
    assert not any(n.startswith(("tests/", "notebooks/", "bench/")) for n in names)


def _venv_env(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KDLIB_CHECKPOINTS", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run_chapters(venv: Path, folder: Path, names: list[str]) -> dict:
    script = folder.parent / "run_chapters.py"
    script.write_text(RUNNER)
    proc = _run([str(venv / "bin" / "python"), str(script), str(ROOT), str(folder), *names], cwd=folder,
                env=_venv_env(venv), timeout=1800)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_fresh_install_runs_the_chapters_from_an_empty_folder(wheel, tmp_path):
    venv, folder = tmp_path / "venv", tmp_path / "reader" / "notebooks"
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run(pip + [str(wheel), "nbclient", "ipykernel"], env=_venv_env(venv), timeout=1800)
    folder.mkdir(parents=True)
    for name in PLAIN + WITH_EXECUTORCH:
        shutil.copy(ROOT / "notebooks" / name, folder / name)
    plain = _run_chapters(venv, folder, PLAIN)
    _run(pip + [f"{wheel}[executorch]"], env=_venv_env(venv), timeout=1800)
    extra = _run_chapters(venv, folder, WITH_EXECUTORCH)
    for name, r in {**plain, **extra}.items():
        assert r["ok"], f"{name} failed from the wheel:\n{r['output']}"
        assert "KDLIB_AT" in r["output"] and str(ROOT) not in r["output"].split("KDLIB_AT")[1].split("\n")[0]
        assert "trained and saved" not in r["output"], f"{name} retrained a model: a checkpoint is missing"
    print({name: r["seconds"] for name, r in {**plain, **extra}.items()})
