"""kdlib.export: ONNX / ONNX Runtime and ExecuTorch files against the eager model.

Tolerances stated once: fp32 files match eager PyTorch within FP32_ATOL on every
logit; int8 files lose at most INT8_MAX_DROP of test accuracy. The book's
student (9 k parameters) is exported once per module, so the suite stays fast.
"""
from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("executorch")

from kdlib import export, zoo  # noqa: E402
from kdlib.data import as_tensors, load_dataset  # noqa: E402

FP32_ATOL = 1e-4      # fp32 files: largest |logit difference| with eager PyTorch
INT8_MAX_DROP = 0.01  # int8 files: at most 1 point of accuracy lost on the 1,000 test images
N_CALIB = 128


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("mnist5k")
    X_train, _ = as_tensors(ds.train)
    X_test, y_test = as_tensors(ds.test)
    return {"ds": ds, "calibration": X_train[:N_CALIB], "X": X_test, "y": y_test, "x1": X_test[:1]}


@pytest.fixture(scope="module")
def student(data):
    return zoo.load_student("mnist5k", ds=data["ds"], verbose=False)


@pytest.fixture(scope="module")
def files(student, data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("student")
    return export.export_all(student, data["x1"], folder, "student", calibration=data["calibration"])


def _eager(model, X):
    with torch.no_grad():
        return model.eval()(X)


def _accuracy(logits, y) -> float:
    return (logits.argmax(1) == y).float().mean().item()


class Gate(nn.Module):
    """Not exportable: a Python branch on a tensor value."""

    def forward(self, x):
        if x.mean() > 0:
            return 2 * x
        return x


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()


# ---------------------------------------------------------------- parity
def test_export_all_writes_the_five_files_and_nothing_else(files):
    assert set(files) == set(export.BACKENDS)
    folder = files["onnx_fp32"].parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in files.values())


@pytest.mark.parametrize("backend", ["onnx_fp32", "executorch_fp32"])
def test_fp32_files_match_eager_on_real_images(files, student, data, backend):
    X = data["X"][:200]
    got = export.predict(files[backend], X)
    want = _eager(student, X)
    assert got.shape == want.shape == (200, 10)
    assert torch.allclose(got, want, rtol=0, atol=FP32_ATOL)
    assert export.check_parity(files[backend], student, X, atol=FP32_ATOL) <= FP32_ATOL


def test_teacher_onnx_matches_eager_and_int8_is_four_times_smaller(data, tmp_path):
    teacher = zoo.load_teacher("mnist5k", ds=data["ds"], verbose=False)
    path = export.to_onnx(teacher, data["x1"], tmp_path / "teacher.onnx")
    assert export.check_parity(path, teacher, data["X"][:64], atol=FP32_ATOL) <= FP32_ATOL
    q = export.quantize_onnx(path, tmp_path / "teacher_int8.onnx", calibration=data["calibration"][:32])
    assert q.stat().st_size < path.stat().st_size / 3.5  # one byte per weight instead of four


def test_onnx_batch_axis_is_dynamic(files, student, data):
    session = export.onnx_session(files["onnx_fp32"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a symbol, not a fixed size
    for n in (1, 3, 300):  # 300 > the default chunk of 256
        X = data["X"][:n]
        assert torch.allclose(export.run_onnx(session, X), _eager(student, X), atol=FP32_ATOL)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 40), offset=st.integers(0, 900))
def test_onnx_matches_eager_for_any_batch(files, student, data, n, offset):
    X = data["X"][offset:offset + n]
    assert torch.allclose(export.predict(files["onnx_fp32"], X), _eager(student, X), atol=FP32_ATOL)


def test_executorch_program_runs_a_larger_batch_one_image_at_a_time(files, student, data):
    method = export.executorch_method(files["executorch_fp32"])
    X = data["X"][:5]
    assert torch.allclose(export.run_executorch(method, X), _eager(student, X), atol=FP32_ATOL)


def test_check_parity_raises_past_the_tolerance(files, student, data):
    other = zoo.load_student("mnist5k", ds=data["ds"], verbose=False)
    with torch.no_grad():
        other[-1].bias += 0.01  # every logit moves by 0.01
    with pytest.raises(ValueError, match="differs from the eager model by up to 0.01"):
        export.check_parity(files["onnx_fp32"], other, data["X"][:8])
    with pytest.raises(ValueError, match="atol=1e-06"):
        export.check_parity(files["onnx_int8_static"], student, data["X"][:8], atol=1e-6)


# ---------------------------------------------------------------- int8
@pytest.mark.parametrize("int8,fp32", [("onnx_int8_static", "onnx_fp32"), ("onnx_int8_dynamic", "onnx_fp32"),
                                       ("executorch_int8", "executorch_fp32")])
def test_int8_files_are_smaller_and_nearly_as_accurate(files, data, int8, fp32):
    assert files[int8].stat().st_size < files[fp32].stat().st_size
    acc_fp32 = _accuracy(export.predict(files[fp32], data["X"]), data["y"])
    acc_int8 = _accuracy(export.predict(files[int8], data["X"]), data["y"])
    assert acc_int8 >= acc_fp32 - INT8_MAX_DROP
    assert acc_fp32 > 0.95  # the book's student is 98% accurate: the comparison is meaningful


def test_static_int8_holds_qdq_pairs_and_dynamic_int8_integer_kernels(files):
    import onnx

    static = {n.op_type for n in onnx.load(files["onnx_int8_static"]).graph.node}
    dynamic = {n.op_type for n in onnx.load(files["onnx_int8_dynamic"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= static
    assert {"DynamicQuantizeLinear", "ConvInteger"} <= dynamic


def test_quantize_xnnpack_simulates_int8_in_pytorch(student, data):
    q = export.quantize_xnnpack(student, data["x1"], data["calibration"][:16])
    q.eval()  # allowed on the converted model
    X = data["X"][:20]
    got = torch.cat([q(X[i:i + 1]) for i in range(len(X))])
    assert (got.argmax(1) == _eager(student, X).argmax(1)).float().mean() >= 0.9
    assert not torch.equal(got, _eager(student, X))  # it did quantize


def test_quantize_onnx_can_keep_the_first_conv_in_fp32(files, data, tmp_path):
    import onnx

    q = export.quantize_onnx(files["onnx_fp32"], tmp_path / "q.onnx", calibration=data["calibration"],
                             reduce_range=True, keep_first_conv=True)
    graph = onnx.load(str(q)).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    initializers = {i.name for i in graph.initializer}
    # the first conv reads its weight straight from an fp32 initializer; the second through DequantizeLinear
    assert convs[0].input[1] in initializers and produced_by.get(convs[0].input[1]) is None
    assert produced_by[convs[1].input[1]] == "DequantizeLinear"
    full = files["onnx_int8_static"]
    assert _accuracy(export.predict(q, data["X"]), data["y"]) >= _accuracy(export.predict(full, data["X"]), data["y"]) - 0.005
    with pytest.raises(TypeError, match="keep_first_conv must be True or False"):
        export.quantize_onnx(files["onnx_fp32"], tmp_path / "q2.onnx", calibration=data["calibration"],
                             keep_first_conv="yes")


def test_quantize_onnx_op_types_quantizes_only_the_linear_layer(files, data, tmp_path):
    import onnx

    q = export.quantize_onnx(files["onnx_fp32"], tmp_path / "q.onnx", calibration=data["calibration"],
                             reduce_range=True, op_types=("Gemm", "MatMul"))
    graph = onnx.load(str(q)).graph
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    initializers = {i.name: i for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    assert convs and all(c.input[1] in initializers and c.input[1] not in produced_by for c in convs)  # fp32
    assert produced_by[gemm.input[1]] == "DequantizeLinear"  # int8 weights
    assert q.stat().st_size < Path(files["onnx_fp32"]).stat().st_size  # the Linear holds most of the bytes
    fp32 = export.predict(files["onnx_fp32"], data["X"])
    assert _accuracy(export.predict(q, data["X"]), data["y"]) >= _accuracy(fp32, data["y"]) - 0.01
    dyn = export.quantize_onnx(files["onnx_fp32"], tmp_path / "d.onnx", mode="dynamic", op_types=["Gemm", "MatMul"])
    assert "ConvInteger" not in {n.op_type for n in onnx.load(str(dyn)).graph.node}
    for bad, error in (("Gemm", TypeError), ([], ValueError), ([""], ValueError), ([3], TypeError),
                       (("Gemm", None), TypeError)):
        with pytest.raises(error, match="op_types"):
            export.quantize_onnx(files["onnx_fp32"], tmp_path / "bad.onnx", calibration=data["calibration"],
                                 op_types=bad)
    assert not (tmp_path / "bad.onnx").exists()


def test_quantize_onnx_rejects_bad_arguments(files, data, tmp_path):
    src = files["onnx_fp32"]
    with pytest.raises(ValueError, match="mode must be one of 'static', 'dynamic'"):
        export.quantize_onnx(src, tmp_path / "q.onnx", mode="int4")
    with pytest.raises(ValueError, match="needs calibration data"):
        export.quantize_onnx(src, tmp_path / "q.onnx")
    with pytest.raises(ValueError, match=r"calibration inputs have shape \(1, 14, 14\)"):
        export.quantize_onnx(src, tmp_path / "q.onnx", calibration=torch.zeros(4, 1, 14, 14))
    with pytest.raises(FileNotFoundError, match="export it first"):
        export.quantize_onnx(tmp_path / "missing.onnx", tmp_path / "q.onnx", mode="dynamic")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- runners
def test_make_runner_runs_one_inference(files, student, data):
    for backend in ("onnx_fp32", "executorch_fp32"):
        out = export.make_runner(files[backend], data["x1"])()
        logits = torch.as_tensor(np.asarray(out[0]))
        assert torch.allclose(logits, _eager(student, data["x1"]), atol=FP32_ATOL)
    with pytest.raises(ValueError, match="neither an .onnx nor a .pte"):
        export.make_runner(files["onnx_fp32"].with_suffix(".pt"), data["x1"])


# ---------------------------------------------------------------- errors
def test_unsupported_models_get_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"Gate cannot be exported .*no Python `if` on tensor values"):
        export.to_onnx(Gate(), torch.ones(1, 1, 4, 4), tmp_path / "gate.onnx")
    with pytest.raises(ValueError, match="Gate cannot be exported"):
        export.to_executorch(Gate(), torch.ones(1, 1, 4, 4), tmp_path / "gate.pte")
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        export.to_onnx(lambda x: x, torch.ones(1, 1, 4, 4), tmp_path / "f.onnx")
    with pytest.raises(TypeError, match="example_input must be a tensor"):
        export.to_onnx(_tiny(), np.ones((1, 1, 8, 8)), tmp_path / "f.onnx")
    with pytest.raises(ValueError, match=r"cannot be exported on an input of shape \(1, 3, 8, 8\)"):
        export.to_onnx(_tiny(), torch.ones(1, 3, 8, 8), tmp_path / "f.onnx")  # the model wants 1 channel
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_the_model_keeps_its_training_mode(tmp_path):
    model = _tiny().train()
    export.to_onnx(model, torch.ones(1, 1, 8, 8), tmp_path / "tiny.onnx")
    assert model.training


def test_missing_folder_is_a_clear_error(tmp_path):
    x = torch.ones(1, 1, 8, 8)
    with pytest.raises(FileNotFoundError, match="the folder .*nowhere does not exist; create it first"):
        export.to_onnx(_tiny(), x, tmp_path / "nowhere" / "tiny.onnx")
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        export.to_executorch(_tiny(), x, tmp_path / "nowhere" / "tiny.pte")


def test_read_only_folder_is_a_clear_error(files, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    x = torch.ones(1, 1, 8, 8)
    try:
        with pytest.raises(PermissionError, match="is read-only"):
            export.to_onnx(_tiny(), x, folder / "tiny.onnx")
        with pytest.raises(PermissionError, match="is read-only"):
            export.to_executorch(_tiny(), x, folder / "tiny.pte")
        with pytest.raises(PermissionError, match="is read-only"):
            export.quantize_onnx(files["onnx_fp32"], folder / "q.onnx", mode="dynamic")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(stat.S_IRWXU)


def test_wrong_suffix_and_folder_as_path(tmp_path):
    with pytest.raises(ValueError, match=r"should end in \.onnx"):
        export.to_onnx(_tiny(), torch.ones(1, 1, 8, 8), tmp_path / "tiny.pte")
    with pytest.raises(ValueError, match=r"should end in \.pte"):
        export.to_executorch(_tiny(), torch.ones(1, 1, 8, 8), tmp_path / "tiny.onnx")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        export.to_onnx(_tiny(), torch.ones(1, 1, 8, 8), tmp_path / "dir.onnx")


def test_no_overwrite_without_overwrite_true(tmp_path):
    x = torch.ones(1, 1, 8, 8)
    path = tmp_path / "tiny.onnx"
    path.write_bytes(b"my results")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        export.to_onnx(_tiny(), x, path)
    assert path.read_bytes() == b"my results"
    pte = tmp_path / "tiny.pte"
    pte.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        export.to_executorch(_tiny(), x, pte)
    assert pte.read_bytes() == b"mine"
    export.to_onnx(_tiny(), x, path, overwrite=True)
    assert export.check_parity(path, _tiny(), torch.randn(4, 1, 8, 8)) <= FP32_ATOL
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        export.quantize_onnx(path, path, mode="dynamic")


def test_temporary_files_are_cleaned_up(monkeypatch, tmp_path, data):
    tmp = tmp_path / "tmp"
    out = tmp_path / "out"
    tmp.mkdir()
    out.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # every tempfile call now lands here
    model, x = _tiny(), torch.ones(1, 1, 8, 8)
    onnx_path = export.to_onnx(model, x, out / "tiny.onnx")
    export.quantize_onnx(onnx_path, out / "tiny_static.onnx", calibration=torch.randn(16, 1, 8, 8))
    export.quantize_onnx(onnx_path, out / "tiny_dynamic.onnx", mode="dynamic")
    export.to_executorch(model, x, out / "tiny.pte")
    assert sorted(os.listdir(tmp)) == []
    assert sorted(os.listdir(out)) == ["tiny.onnx", "tiny.pte", "tiny_dynamic.onnx", "tiny_static.onnx"]
    # and after a failure half-way
    with pytest.raises(ValueError):
        export.to_onnx(Gate(), x, out / "gate.onnx")
    assert sorted(os.listdir(tmp)) == [] and not (out / "gate.onnx").exists()


def test_files_get_the_usual_permissions(tmp_path):
    path = export.to_onnx(_tiny(), torch.ones(1, 1, 8, 8), tmp_path / "tiny.onnx")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_loading_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load"):
        export.onnx_session(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.executorch_method(tmp_path / "none.pte")
    with pytest.raises(ValueError, match="threads must be a positive int"):
        export.onnx_session(bad, threads=0)
    with pytest.raises(ValueError, match="neither an .onnx nor a .pte"):
        export.predict(Path("model.pt"), torch.ones(1, 1, 8, 8))


# ---------------------------------------------------------------- quiet output
def test_a_failed_capture_prints_nothing_but_the_error(capfd):
    with pytest.raises(ValueError, match="Gate cannot be exported"):
        export.capture(Gate(), torch.ones(1, 1, 4, 4))
    out, err = capfd.readouterr()
    assert "def forward" not in err and "Unable to find user code" not in err  # torch's partial graph
    assert out == ""


def test_native_stderr_is_held_back_and_shown_on_failure(capfd):
    with export.native_stderr_silenced():
        os.write(2, b"native chatter\n")
        print("routed through Python", file=sys.stderr)  # what ExecuTorch does inside Jupyter
    err = capfd.readouterr().err
    assert "native chatter" not in err and "routed through Python" not in err
    with pytest.raises(RuntimeError, match="boom"):
        with export.native_stderr_silenced():
            os.write(2, b"native error detail\n")
            raise RuntimeError("boom")
    assert "native error detail" in capfd.readouterr().err


def test_loading_an_executorch_program_is_quiet(files, capfd):
    for threads in (2, 1):  # each change of the pool size is logged by the C++ runtime
        method = export.executorch_method(files["executorch_fp32"], threads=threads)
        export.run_executorch(method, torch.zeros(1, 1, 28, 28))
    assert "threadpool" not in capfd.readouterr().err


def test_export_all_makes_only_the_chosen_files(student, data, tmp_path):
    paths = export.export_all(student, data["x1"], tmp_path, "s", calibration=data["calibration"][:16],
                              backends=("onnx_int8_dynamic",))
    assert list(paths) == ["onnx_fp32", "onnx_int8_dynamic"]  # the int8 file needs the fp32 one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx", "s_int8_dynamic.onnx"]
    with pytest.raises(ValueError, match="backends must be a non-empty subset"):
        export.export_all(student, data["x1"], tmp_path, "s", calibration=data["calibration"], backends=("tflite",))
    with pytest.raises(ValueError, match="plain file stem"):
        export.export_all(student, data["x1"], tmp_path, "a/b", calibration=data["calibration"])


def test_bad_batches_are_clear_errors(files, student, data):
    session = export.onnx_session(files["onnx_fp32"])
    nan = data["X"][:2].clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        export.run_onnx(session, nan)
    with pytest.raises(ValueError, match=r"has shape \(784,\); the model takes \(N, 1, 28, 28\)"):
        export.run_onnx(session, data["X"][0].reshape(-1))
    with pytest.raises(TypeError, match="must hold floats"):
        export.run_onnx(session, data["X"][:2].long())
    with pytest.raises(TypeError, match="session must be an onnxruntime.InferenceSession"):
        export.run_onnx(3, data["X"][:2])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        export.run_onnx(session, data["X"][:2], batch_size=0)
    with pytest.raises(TypeError, match="method must be an ExecuTorch method"):
        export.run_executorch(None, data["X"][:2])
    with pytest.raises(ValueError, match=r"the model takes \(N, 1, 28, 28\)"):
        export.run_executorch(files["executorch_fp32"], torch.zeros(2, 1, 14, 14))
    with pytest.raises(ValueError, match=r"StudentCNN cannot run on inputs of shape \(2, 3, 28, 28\)"):
        export.check_parity(files["onnx_fp32"], student, torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="atol must be a finite number >= 0"):
        export.check_parity(files["onnx_fp32"], student, data["X"][:2], atol=float("nan"))
    with pytest.raises(ValueError, match="example_input has shape"):
        export.make_runner(files["onnx_fp32"], torch.zeros(1, 1, 14, 14))
    with pytest.raises(TypeError, match="folder must be a str or a pathlib.Path"):
        export.export_all(student, data["x1"], None, "s", calibration=data["calibration"])
