"""kdlib.pipeline and kdlib.report: the whole story on the digits and on data the tests write, fast."""
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from kdlib import data, report, train, utils
from kdlib.pipeline import OUTPUT_FILES, PipelineConfig, cosine_lr, pareto_front, prepare_out, prune_student, run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
import pipeline_models as pm  # noqa: E402
from pipeline_models import small_teacher  # noqa: E402


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
                prune_multiple_of=1, calibration_size=64, latency_min_rounds=2, latency_max_rounds=4, executorch=False)
    return PipelineConfig(**{**base, **kw})


def _rows(summary):
    return {r["stage"]: r for r in summary["stages"]}


def test_end_to_end_same_runtime_ratios_then_resume_then_force(tmp_path, teacher_ckpt):
    out = tmp_path / "out"
    lines = []
    summary = run_pipeline(out, _config(teacher_ckpt, executorch=True), log=lines.append)
    assert json.loads((out / "report.json").read_text())["edge_stage"] == summary["edge_stage"]
    rows = _rows(summary)
    assert list(rows) == ["teacher", "teacher onnx fp32", "teacher onnx int8", "teacher executorch fp32", "student",
                          "pruned", "direct (no pruning)", "onnx fp32", "onnx int8", "executorch fp32"]
    edge = rows[summary["edge_stage"]]
    same = next(r for r in rows.values() if r["role"] == "teacher" and r["runtime"] == edge["runtime"]
                and r["precision"] == "fp32")
    # the headline ratios compare like with like: the teacher's file in the edge model's format and runtime
    assert summary["size_ratio"] == pytest.approx(same["bytes"] / edge["bytes"])
    assert summary["size_ratio_int8_teacher"] == pytest.approx(rows["teacher onnx int8"]["bytes"] / edge["bytes"])
    lat = summary["latency"]
    assert lat["min"] <= lat["ratio"] <= lat["max"] and lat["rounds"] == summary["timing_rounds"] >= 2
    assert summary["runtime_gain"]["ratio"] > 1  # eager PyTorch is the slow runtime for a teacher this small
    assert rows["direct (no pruning)"]["params"] == rows["pruned"]["params"] < rows["student"]["params"]
    assert rows["teacher onnx fp32"]["accuracy"] == pytest.approx(rows["teacher"]["accuracy"], abs=0.003)
    assert rows["onnx fp32"]["accuracy"] == pytest.approx(rows["pruned"]["accuracy"], abs=0.003)
    md = (out / "report.md").read_text()
    assert md.startswith("# Compression report") and summary["choice"] in md and "| onnx int8 |" in md
    assert "in the same runtime" in md and "runtime alone" in md and "directly" in md
    machine = summary["machine"]  # a latency figure names the machine it was measured on
    assert machine["cores"] >= 1 and machine["torch"] == torch.__version__ and f"{machine['cores']} cores" in md
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _assert_readable_on_a_phone(out / "pareto.png")
    pre = json.loads((out / "preprocess.json").read_text())
    assert pre["mean"] == [0.3] and pre["std"] == [0.37] and "[0, 1]" in pre["input"]

    with pytest.raises(FileExistsError, match="--resume"):  # an OUT that holds results is refused...
        run_pipeline(out, _config(teacher_ckpt), log=None)
    student_hash = utils.sha256_file(out / "student.pt")
    (out / "edge_int8.onnx").unlink()  # ...resumed: a run that lost a file redoes only what is missing
    lines.clear()
    run_pipeline(out, _config(teacher_ckpt, executorch=True), resume=True, log=lines.append)
    joined = " ".join(lines)
    assert "[distill] reused" in joined and "[prune] reused" in joined and "[export_teacher] reused" in joined
    assert any(line.startswith("[export_edge] done") for line in lines)
    assert utils.sha256_file(out / "student.pt") == student_hash
    lines.clear()  # a changed setting invalidates that stage and the ones after it
    run_pipeline(out, _config(teacher_ckpt, prune_amount=0.5), resume=True, log=lines.append)
    assert "[distill] reused" in " ".join(lines) and any(line.startswith("[prune] done") for line in lines)
    (out / "notes.txt").write_text("mine")  # --force starts over but leaves files that are not the pipeline's
    prepare_out(out, force=True, files=OUTPUT_FILES)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_defaults_round_channels_and_the_report_says_what_was_removed(tmp_path, teacher_ckpt):
    import onnx

    d = PipelineConfig()
    assert (d.prune_multiple_of, d.int8_convs, d.copies, d.choose, d.baseline) == (8, False, 4, "smallest", True)
    out = tmp_path / "out"
    cfg = _config(teacher_ckpt, student_width=12, prune_multiple_of=8, baseline=False)
    summary = run_pipeline(out, cfg, log=None)
    p = summary["prune"]
    assert [(r["before"], r["after"]) for r in p["layers"]] == [(12, 8), (24, 16)]  # not 9 and 18
    assert p["channels_removed"] == pytest.approx(1 / 3) and p["asked"] == 0.25 and "channel_prune" in p["method"]
    assert "33% of the channels" in (out / "report.md").read_text()
    rows = _rows(summary)
    assert rows["student"]["channels"] == [12, 24] and rows["onnx int8"]["channels"] == [8, 16]
    assert "direct (no pruning)" not in rows
    graph = onnx.load(str(out / "edge_int8.onnx")).graph
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    layers = [(n.op_type, produced_by.get(n.input[1]) == "DequantizeLinear") for n in graph.node
              if n.op_type in ("Conv", "Gemm")]
    assert layers == [("Conv", False), ("Conv", False), ("Gemm", True)]  # int8 where the bytes are
    lines = []  # --int8-convs: only the export stage reruns
    run_pipeline(out, dataclasses.replace(cfg, int8_convs=True), resume=True, log=lines.append)
    assert "[prune] reused" in " ".join(lines) and any(line.startswith("[export_edge] done") for line in lines)


def test_an_interrupted_distillation_resumes_after_its_last_epoch_with_the_same_result(tmp_path, teacher_ckpt):
    cfg = _config(teacher_ckpt, baseline=False, finetune_epochs=0)
    run_pipeline(tmp_path / "whole", cfg, log=None)

    def stop_after_epoch_2(line):
        if line.startswith("[distill] epoch 2/3"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(tmp_path / "cut", cfg, log=stop_after_epoch_2)
    assert (tmp_path / "cut" / "distill.partial.pt").exists() and not (tmp_path / "cut" / "student.pt").exists()
    lines = []
    run_pipeline(tmp_path / "cut", cfg, resume=True, log=lines.append)
    assert "[distill] resuming after epoch 2 of 3" in lines and sum("[distill] epoch" in x for x in lines) == 1
    assert utils.sha256_file(tmp_path / "cut" / "student.pt") == utils.sha256_file(tmp_path / "whole" / "student.pt")
    assert not (tmp_path / "cut" / "distill.partial.pt").exists()


def test_a_resume_with_other_settings_never_leaves_a_stale_report(tmp_path, teacher_ckpt):
    out = tmp_path / "out"
    run_pipeline(out, _config(teacher_ckpt, baseline=False), log=None)

    def stop_at_prune(line):
        if line.startswith("[prune] epoch"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(out, _config(teacher_ckpt, baseline=False, prune_amount=0.5), resume=True, log=stop_at_prune)
    assert not any((out / f).exists() for f in ("report.md", "report.json", "pareto.png"))
    state = json.loads((out / ".pipeline_state.json").read_text())
    assert "distill" in state["stages"] and state["progress"]["prune"]["epoch"] == 1


def test_users_students_of_every_shape_are_pruned_and_exported(tmp_path):
    """A 32x32 RGB data set in 4 classes, written here, with each kind of student a user has."""
    from test_data_files import write_folder

    write_folder(tmp_path / "imgs", n=12, seed=3)
    ds = report_ds = __import__("kdlib.datafiles", fromlist=["x"]).load_data(tmp_path / "imgs")
    teacher = pm.features_classifier()
    utils.seed_everything(0)
    # a teacher that knows the classes: the images are random, so train it on the test split too
    X = torch.cat([data.as_tensors(s)[0] for s in (ds.train, ds.val, ds.test)])
    y = torch.cat([data.as_tensors(s)[1] for s in (ds.train, ds.val, ds.test)])
    train.train(teacher, data.make_loader(torch.utils.data.TensorDataset(X, y), 16, shuffle=True), num_epochs=25,
                lr=1e-2, progress=False, seed=0)
    utils.save_checkpoint(teacher, tmp_path / "t.pt")
    for shape in pm.STUDENT_SHAPES + ("unprunable",):
        cfg = PipelineConfig(data=str(tmp_path / "imgs"), teacher_arch="pipeline_models:features_classifier",
                             teacher_checkpoint=str(tmp_path / "t.pt"), student_arch=f"pipeline_models:{shape}",
                             copies=1, distill_epochs=1, finetune_epochs=1, prune_multiple_of=1, baseline=False,
                             executorch=False, calibration_size=16, latency_min_rounds=2, latency_max_rounds=2)
        summary = run_pipeline(tmp_path / shape, cfg, log=None)
        rows, p = _rows(summary), summary["prune"]
        if shape == "unprunable":
            assert "pruned" not in rows and "no group of channels could be pruned" in p["skipped"]
            assert "Pruning was skipped" in (tmp_path / shape / "report.md").read_text()
            continue
        assert p["skipped"] is None and "Torch-Pruning" in p["method"], shape
        assert rows["pruned"]["params"] < rows["student"]["params"], shape
        assert rows["onnx fp32"]["accuracy"] == pytest.approx(rows["pruned"]["accuracy"], abs=1e-9), shape
        assert summary["input_shape"] == [3, 32, 32] and summary["classes"] == ["a", "b", "c", "d"]
    assert report_ds.normalisation is not None


def test_prune_student_picks_the_flat_path_for_the_books_student_and_the_graph_for_others():
    from kdlib.models import StudentCNN

    x = torch.randn(1, 1, 28, 28)
    _, method, _, skipped = prune_student(StudentCNN(width=12).eval(), 0.25, x, multiple_of=8)
    assert "channel_prune" in method and skipped is None
    _, method, _, _ = prune_student(pm.resnet_like((1, 28, 28), 10).eval(), 0.25, x)
    assert "Torch-Pruning" in method
    assert prune_student(StudentCNN().eval(), 0.0, x)[3] == "prune_amount is 0"


def test_cosine_lr_matches_torchs_scheduler():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    for epoch in range(5):
        assert cosine_lr(0.1, epoch, 5) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_bad_settings_fail_before_anything_is_written(tmp_path, teacher_ckpt):
    out = tmp_path / "o"
    for bad, match in ((dict(T=0.0), "T must be"), (dict(alpha=1.5), "alpha must be"), (dict(prune_amount=1.0),
                       "prune_amount"), (dict(copies=0), "positive int"), (dict(choose="best"), "choose must be"),
                       (dict(max_drop_points=-1.0), "max_drop_points"), (dict(lr=0.0), "lr must be")):
        with pytest.raises(ValueError, match=match):
            run_pipeline(out, _config(teacher_ckpt, **bad), log=None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_pipeline(out, _config(tmp_path / "missing.pt"), log=None)
    with pytest.raises(ValueError, match="is a folder"):
        run_pipeline(out, _config(tmp_path), log=None)
    with pytest.raises(ValueError, match="package.module:factory"):
        run_pipeline(out, _config(teacher_ckpt, teacher_arch="nocolon"), log=None)
    with pytest.raises(ValueError, match="cannot import"):
        run_pipeline(out, _config(teacher_ckpt, teacher_arch="no_such_pkg:f"), log=None)
    with pytest.raises(ValueError, match="does not fit TeacherCNN"):
        run_pipeline(out, _config(teacher_ckpt, teacher_arch="kdlib.models:TeacherCNN"), log=None)
    with pytest.raises(ValueError, match="the student predicts 4 classes but the data has 10"):
        run_pipeline(out, _config(teacher_ckpt, student_arch="pipeline_models:four_classes"), log=None)
    with pytest.raises(ValueError, match="needs --teacher-checkpoint"):
        PipelineConfig(teacher_arch="a:b").validate()
    assert not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot write"):
        prepare_out(blocker / "sub")
    with pytest.raises(ValueError, match="not both"):
        prepare_out(tmp_path / "x", force=True, resume=True)


def test_a_teacher_of_other_classes_or_no_better_than_chance_stops_the_run(tmp_path):
    utils.save_checkpoint(small_teacher(num_classes=5), tmp_path / "five.pt")
    cfg = PipelineConfig(dataset="digits", teacher_arch="pipeline_models:small_teacher",
                         teacher_checkpoint=str(tmp_path / "five.pt"))
    with pytest.raises(ValueError, match="does not fit"):  # the factory builds 10 classes for the digits
        run_pipeline(tmp_path / "o", cfg, log=None)
    five = pm.small_teacher(num_classes=5)
    torch.save(five, tmp_path / "whole.pt")
    cfg = PipelineConfig(dataset="digits", teacher_checkpoint=str(tmp_path / "whole.pt"), trust_pickle=True)
    with pytest.raises(ValueError, match="the teacher predicts 5 classes but the data has 10"):
        run_pipeline(tmp_path / "o", cfg, log=None)
    utils.seed_everything(0)
    utils.save_checkpoint(small_teacher(), tmp_path / "untrained.pt")  # random weights: about 10 %
    cfg = PipelineConfig(dataset="digits", teacher_arch="pipeline_models:small_teacher",
                         teacher_checkpoint=str(tmp_path / "untrained.pt"))
    with pytest.raises(ValueError, match="no better than chance"):
        run_pipeline(tmp_path / "o", cfg, log=None)
    assert not (tmp_path / "o").exists()


def _assert_readable_on_a_phone(png_path, column_px=358, min_px=9):
    """The PNG's own record (kdlib.widgets.png_metadata): its smallest text is >= min_px CSS px when
    the website shrinks it to a phone's column, and no labels overlap."""
    from PIL import Image

    with Image.open(png_path) as im:
        rep, width_px = json.loads(im.text["kdlib-figure"]), im.size[0]
    scale = min(1.0, column_px / width_px)
    assert rep["min_font_pt"] * rep["dpi"] / 72 * scale >= min_px, rep
    assert rep["overlaps"] == [], rep["overlaps"]


def test_pareto_tick_labels_are_short():
    from kdlib.report import _short_number
    assert [_short_number(v) for v in (3, 30, 300, 3000, 1e5, 3e5, 1e6, 2.5e9)] == [
        "3", "30", "300", "3k", "100k", "300k", "1M", "2.5G"]


def test_pareto_front_hand_computed():
    # (size, accuracy): b dominates d (smaller and better); a, b, c are each best at something
    assert pareto_front([(1, 0.90), (10, 0.95), (100, 0.99), (50, 0.94)]) == [0, 1, 2]


def _row(stage, role, runtime="ONNX Runtime", precision="fp32", bytes=100, acc=0.9, us=10.0):
    return {"stage": stage, "role": role, "runtime": runtime, "precision": precision, "bytes": bytes,
            "accuracy": acc, "median_us": us, "file": f"{stage}.onnx"}


def test_choose_edge_by_size_or_speed_within_the_budget():
    rows = [_row("teacher", "teacher", "PyTorch", acc=0.98), _row("fp32", "candidate", bytes=400, acc=0.975, us=20),
            _row("int8", "candidate", bytes=100, acc=0.972, us=30), _row("tiny", "candidate", bytes=50, acc=0.95)]
    best, why = report.choose_edge(rows, rule="smallest", max_drop_points=1.0)
    assert best["stage"] == "int8" and "fp32 is faster here (20.0 µs against 30.0 µs) but 4.0× larger" in why
    best, why = report.choose_edge(rows, rule="fastest", max_drop_points=1.0)
    assert best["stage"] == "fp32" and "int8 is smaller" in why
    best, why = report.choose_edge(rows, max_drop_points=3.0)
    assert best["stage"] == "tiny"
    best, why = report.choose_edge(rows, max_drop_points=0.1)
    assert best["stage"] == "fp32" and "no file is within 0.1 points" in why


def test_time_until_stable_stops_when_the_ratio_is_known(monkeypatch):
    import itertools

    clock = itertools.count()
    monkeypatch.setattr(report.time, "perf_counter", lambda: next(clock) * 1e-6)  # every call takes 1 µs
    timing = report.time_until_stable({"a": lambda: None, "b": lambda: None}, [("a", "b")], min_rounds=3,
                                      max_rounds=10, repeats=3, warmup=1)
    assert timing["rounds"] == 3 and timing["stable"]  # a constant ratio of 1 is stable at once
    assert report.ratio_over_rounds(timing, "a", "b")["ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not runners"):
        report.time_until_stable({"a": lambda: None}, [("a", "z")])


def test_report_markdown_heading_level():
    rows = [dict(_row("teacher", "teacher", "PyTorch", acc=0.98), params=10, macs=100, format="PyTorch fp32",
                 channels=[]),
            dict(_row("int8", "candidate", bytes=100, acc=0.972, us=30), params=5, macs=10, format="ONNX Runtime int8",
                 channels=[])]
    timing = {"rounds": 2, "stable": True, "stages": {"teacher": {"median_us": 10, "round_us": [10, 10]},
                                                      "int8": {"median_us": 30, "round_us": [30, 30]}}}
    s = report.summarise(rows, timing)
    assert s["size_ratio"] is None and s["latency"] is None  # no teacher in that runtime: no same-runtime ratio
    md = report.report_markdown(s, level=2)
    assert md.startswith("## Compression report") and "\n# " not in md and "\n### Every stage" in md
