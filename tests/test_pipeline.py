"""kdlib.pipeline and `python -m kdlib compress`: the whole story on the digits, fast."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdlib import data, train, utils
from kdlib.pipeline import PipelineConfig, pareto_front, prepare_out, run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_models import small_teacher  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    ds = data.load_dataset("digits")
    utils.seed_everything(0)
    t = small_teacher()
    train.train(t, data.make_loader(ds.train, 64, shuffle=True), num_epochs=6, lr=5e-3, progress=False, seed=0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    utils.save_checkpoint(t, path)
    return path


def _config(teacher_ckpt, **kw):
    base = dict(dataset="digits", teacher_arch="pipeline_models:small_teacher",
                teacher_checkpoint=str(teacher_ckpt), student_width=4, copies=2, distill_epochs=3, finetune_epochs=1,
                prune_multiple_of=1, calibration_size=64, latency_rounds=1, executorch=True)
    return PipelineConfig(**{**base, **kw})


def test_end_to_end_then_resume_then_force(tmp_path, teacher_ckpt):
    out = tmp_path / "out"
    lines = []
    summary = run_pipeline(out, _config(teacher_ckpt), progress=False, log=lines.append)
    report = json.loads((out / "report.json").read_text())
    for key in ("size_ratio", "latency_ratio", "teacher_accuracy", "edge_accuracy", "stages"):
        assert key in report
    stages = [s["stage"] for s in report["stages"]]
    assert stages == ["teacher", "student", "pruned", "onnx fp32", "onnx int8", "executorch fp32"]
    assert report["size_ratio"] == pytest.approx(report["teacher_bytes"] / report["edge_bytes"])
    assert report["size_ratio"] > 1 and 0 <= report["edge_accuracy"] <= 1
    pruned = next(s for s in report["stages"] if s["stage"] == "pruned")
    student = next(s for s in report["stages"] if s["stage"] == "student")
    assert pruned["params"] < student["params"]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| onnx int8 |" in md and "pareto.png" in md
    machine = report["machine"]  # a latency figure names the machine it was measured on
    assert machine["cores"] >= 1 and machine["torch"] == torch.__version__ and machine["processor"]
    assert f"{machine['cores']} cores" in md
    assert summary["edge_file"] == "edge_int8.onnx"

    # an OUT that holds results is refused...
    with pytest.raises(FileExistsError, match="--resume"):
        run_pipeline(out, _config(teacher_ckpt), progress=False, log=None)
    # ...resumed: an interrupted run (int8 file lost) redoes only what is missing
    student_hash = utils.sha256_file(out / "student.pt")
    (out / "edge_int8.onnx").unlink()
    lines.clear()
    run_pipeline(out, _config(teacher_ckpt), resume=True, progress=False, log=lines.append)
    assert "[distill] reused" in " ".join(lines) and "[prune] reused" in " ".join(lines)
    assert any(line.startswith("[quantize_int8] done") for line in lines)
    assert utils.sha256_file(out / "student.pt") == student_hash
    # a changed setting invalidates that stage and everything after it
    lines.clear()
    run_pipeline(out, _config(teacher_ckpt, prune_amount=0.5), resume=True, progress=False, log=lines.append)
    assert "[distill] reused" in " ".join(lines) and any(line.startswith("[prune] done") for line in lines)
    # --force starts over but leaves files that are not the pipeline's alone
    (out / "notes.txt").write_text("mine")
    lines.clear()
    run_pipeline(out, _config(teacher_ckpt, executorch=False), force=True, progress=False, log=lines.append)
    assert not any("reused" in line for line in lines)
    assert (out / "notes.txt").read_text() == "mine" and not (out / "edge_fp32.pte").exists()


def _weight_is_int8(graph, node) -> bool:
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    return produced_by.get(node.input[1]) == "DequantizeLinear"


def test_defaults_round_channels_and_quantize_only_the_linear_layers(tmp_path, teacher_ckpt):
    import onnx

    d = PipelineConfig()
    assert (d.prune_multiple_of, d.int8_convs, d.copies) == (8, False, 4)
    out = tmp_path / "out"
    cfg = _config(teacher_ckpt, student_width=12, prune_multiple_of=d.prune_multiple_of, executorch=False)
    run_pipeline(out, cfg, progress=False, log=None)
    pruned = torch.load(out / "pruned.pt", weights_only=True)
    convs = [v.shape[0] for k, v in pruned.items() if k.endswith("weight") and v.dim() == 4]
    assert convs == [8, 16]  # 12 and 24 channels, 25% off, rounded to multiples of 8 (not 9 and 18)
    rows = {r["stage"]: r for r in json.loads((out / "report.json").read_text())["stages"]}
    assert rows["student"]["channels"] == [12, 24] and rows["onnx int8"]["channels"] == [8, 16]
    graph = onnx.load(str(out / "edge_int8.onnx")).graph
    layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert [(n.op_type, _weight_is_int8(graph, n)) for n in layers] == [("Conv", False), ("Conv", False),
                                                                        ("Gemm", True)]
    # --int8-convs: the second conv too (the first stays fp32); only that stage and the ones after it rerun
    lines = []
    run_pipeline(out, dataclasses.replace(cfg, int8_convs=True), resume=True, progress=False, log=lines.append)
    assert "[prune] reused" in " ".join(lines) and any(line.startswith("[quantize_int8] done") for line in lines)
    graph = onnx.load(str(out / "edge_int8.onnx")).graph
    layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert [_weight_is_int8(graph, n) for n in layers] == [False, True, True]
    for bad in (dict(copies=0), dict(prune_multiple_of=0), dict(distill_epochs=0)):
        with pytest.raises(ValueError, match="must be a positive int"):
            PipelineConfig(**bad).validate()


def test_checkpoint_that_does_not_fit(tmp_path, teacher_ckpt):
    cfg = _config(teacher_ckpt, teacher_arch="kdlib.models:TeacherCNN")
    with pytest.raises(ValueError, match="does not fit"):
        run_pipeline(tmp_path / "o", cfg, progress=False, log=None)


def test_bad_inputs(tmp_path, teacher_ckpt):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_pipeline(tmp_path / "o", _config(tmp_path / "missing.pt"), progress=False, log=None)
    with pytest.raises(ValueError, match="package.module:factory"):
        run_pipeline(tmp_path / "o", _config(teacher_ckpt, teacher_arch="nocolon"), progress=False, log=None)
    with pytest.raises(ValueError, match="cannot import"):
        run_pipeline(tmp_path / "o", _config(teacher_ckpt, teacher_arch="no_such_pkg:f"), progress=False, log=None)
    with pytest.raises(ValueError, match="prune_amount"):
        run_pipeline(tmp_path / "o", _config(teacher_ckpt, prune_amount=1.0), progress=False, log=None)
    with pytest.raises(ValueError, match="needs --teacher-checkpoint"):
        PipelineConfig(teacher_arch="a:b").validate()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot write"):
        prepare_out(blocker / "sub")
    with pytest.raises(ValueError, match="not both"):
        prepare_out(tmp_path / "x", force=True, resume=True)


def test_pareto_front_hand_computed():
    # (size, accuracy): b dominates d (smaller and better); a, b, c are each best at something
    pts = [(1, 0.90), (10, 0.95), (100, 0.99), (50, 0.94)]
    assert pareto_front(pts) == [0, 1, 2]


def _cli(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run([sys.executable, "-m", "kdlib", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_cli_help_and_one_line_errors(tmp_path, teacher_ckpt):
    r = _cli("compress", "--help")
    assert r.returncode == 0 and "--resume" in r.stdout and "--teacher-arch" in r.stdout
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "report.json").write_text("{}")
    r = _cli("compress", "--out", str(tmp_path / "busy"), "--dataset", "digits",
             "--teacher-arch", "pipeline_models:small_teacher", "--teacher-checkpoint", str(teacher_ckpt))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "already holds files" in r.stderr
    assert (tmp_path / "busy" / "report.json").read_text() == "{}"
    r = _cli("compress", "--out", str(tmp_path / "o"), "--teacher-checkpoint", str(tmp_path / "nope.pt"))
    assert r.returncode == 2 and r.stderr.startswith("error: teacher checkpoint") and r.stderr.count("\n") == 1
    r = _cli("compress", "--force", "--resume")
    assert r.returncode == 2 and "not allowed with" in r.stderr


def test_cli_runs_the_pipeline(tmp_path, teacher_ckpt):
    r = _cli("compress", "--out", str(tmp_path / "o"), "--dataset", "digits", "--teacher-arch",
             "pipeline_models:small_teacher", "--teacher-checkpoint", str(teacher_ckpt), "--student-width", "4",
             "--copies", "1", "--distill-epochs", "2", "--prune-multiple-of", "1", "--finetune-epochs", "1",
             "--int8-convs", "--no-executorch", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "smaller" in r.stdout and (tmp_path / "o" / "report.md").exists()
