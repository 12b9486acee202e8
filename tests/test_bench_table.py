"""tools/bench_table.py: parsing the bench scripts' last line, flagging slow chapters."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_table", ROOT / "tools" / "bench_table.py")
bt = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_table", bt)
_spec.loader.exec_module(bt)


def test_parse_figures_reads_only_the_last_line():
    assert bt.parse_figures("gap=1\n\nwarm up done\nkd_gap_closed=0.62 size_ratio=48.1x\n\n") == {
        "kd_gap_closed": "0.62", "size_ratio": "48.1x"}
    assert bt.parse_figures("a=1\nthe end\n") == {}  # the figures must come last
    assert bt.parse_figures("a=1 and more") == {}
    assert bt.parse_figures("") == {}


def test_book_rows_flag_slow_chapters_and_the_total():
    rows = bt.book_rows({"01_a.ipynb": 31.0, "04_b.ipynb": 59.0, "05_c.ipynb": None, "06_d.ipynb": 300.0}, "test")
    notes = {r.figure: r.note for r in rows}
    assert notes["01_a.ipynb"] == "OVER 30 s" and notes["04_b.ipynb"] == "" and "not executed" in notes["05_c.ipynb"]
    assert notes["06_d.ipynb"] == "OVER 60 s"
    total = rows[-1]
    assert total.figure == "total execution" and total.value == "390.0 s" and "OVER 360 s" in total.note


def test_failing_script_is_a_failed_row(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("import sys\nsys.exit('no model found')\n")
    [row] = bt.run_bench(script, timeout=60)
    assert row.value == "FAILED" and "no model found" in row.note


def test_table_has_a_header_and_aligned_rows():
    text = bt.format_table([bt.Row("x.py", "latency_ratio", "3.9"), bt.Row("book", "total execution", "120.0 s")])
    lines = text.splitlines()
    assert lines[0].startswith("| source") and len({len(ln) for ln in lines}) == 1


def test_the_wall_time_of_a_side_by_side_run_is_listed_and_judged(tmp_path):
    times = {"01_a.ipynb": 20.0, "04_b.ipynb": 200.0, "05_c.ipynb": 190.0}
    record = tmp_path / "book_execution.json"
    record.write_text('{"jobs": 2, "wall_s": 215.5, "notebooks": '
                      '{"01_a.ipynb": 20.0, "04_b.ipynb": 200.0, "05_c.ipynb": 190.0}}')
    rec = bt.wall_record(record, times)
    rows = {r.figure: r for r in bt.book_rows(times, "test", rec)}
    assert rows["total execution"].value == "410.0 s" and "OVER" not in rows["total execution"].note
    assert "their sum (they ran 2 at a time)" in rows["total execution"].note
    assert rows["book wall time"].value == "215.5 s" and "2 notebooks at a time" in rows["book wall time"].note
    assert "OVER" not in rows["book wall time"].note
    # a record of another run (a chapter re-executed since) is not used: the sum is judged
    assert bt.wall_record(record, {**times, "05_c.ipynb": 180.0}) is None
    assert bt.wall_record(tmp_path / "missing.json", times) is None
    record.write_text("{not json")
    assert bt.wall_record(record, times) is None
    slow = bt.book_rows(times, "test", {"jobs": 2, "wall_s": 400.0, "notebooks": {}})
    assert "OVER 360 s" in slow[-1].note
