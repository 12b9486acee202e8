"""The committed notebooks must read the same on any machine: their saved outputs name no
folder of the machine that ran them (temporary folders, home or checkout paths)."""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# absolute folders of a machine, and tempfile.mkdtemp names such as kdlib-ch10-pp7uzuhf
MACHINE_PATH = re.compile(r"(/tmp/|/var/folders/|/home/|/root/|/work/|[A-Za-z]:\\\\Users\\\\"
                          r"|kdlib-[a-z0-9]+-[a-z0-9_]{8}\b)")


def _output_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append("".join(out.get("text", "")))
        for value in out.get("data", {}).values():
            if isinstance(value, (str, list)):
                parts.append("".join(value))
        parts.append("".join(out.get("traceback", [])))
    return "\n".join(parts)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 11


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_saved_outputs_name_no_machine_folder(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    found = [(i, m.group(0)) for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
             for m in MACHINE_PATH.finditer(_output_text(cell))]
    assert not found, (f"{path.name}: outputs name folders of the machine that ran it (cell, match): {found[:5]}; "
                       "print paths relative to the page's folder (e.g. replace str(OUT) with 'OUT')")


def test_the_pattern_catches_what_it_should():
    assert MACHINE_PATH.search("[report] /tmp/kdlib-capstone-6coz38_r/run/report.md")
    assert MACHINE_PATH.search("removed kdlib-ch10-pp7uzuhf exists: False")
    assert not MACHINE_PATH.search("[distill] reused from OUT")
