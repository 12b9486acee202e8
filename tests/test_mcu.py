"""kdlib.mcu and kdlib.mcu_c: integer-only inference against trusted references.

References: Python's exact integers and fractions (the fixed-point maths), float32 NumPy
arithmetic (ONNX Runtime's requantization), torch's conv2d on the same integers, ONNX Runtime
running the int8 file, and the NumPy engine for the C builds (host gcc and Cortex-M4 under
QEMU). The toolchain tests skip, with the install command, when the tools are absent.
"""
from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from kdlib import export, mcu, mcu_c, mcu_onnx, zoo  # noqa: E402
from kdlib.data import as_tensors, load_dataset  # noqa: E402

N_CALIB = 128
HOST = pytest.mark.skipif(not mcu_c.have_tools("gcc"), reason="no host gcc: apt-get install -y gcc")
ARM = pytest.mark.skipif(not mcu_c.have_tools(mcu_c.ARM_GCC, mcu_c.ARM_SIZE, mcu_c.ARM_NM, mcu_c.QEMU),
                         reason=f"no ARM toolchain or QEMU: {mcu_c.APT_INSTALL}")


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("mnist5k")
    X_train, _ = as_tensors(ds.train)
    X_test, _ = as_tensors(ds.test)
    return {"ds": ds, "calibration": X_train[:N_CALIB], "X": X_test[:200]}


@pytest.fixture(scope="module")
def files(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mcu")
    student = zoo.load_student("mnist5k", ds=data["ds"], verbose=False)
    fp32 = export.to_onnx(student, data["X"][:1], folder / "student.onnx")
    return {"fp32": fp32, "int8": mcu_onnx.quantize_onnx_int8(fp32, folder / "student_int8.onnx",
                                                         calibration=data["calibration"])}


@pytest.fixture(scope="module")
def model(files):
    return mcu_onnx.read_int8_onnx(files["int8"])


@pytest.fixture(scope="module")
def Xq(model, data):
    return mcu.quantize_input(data["X"].numpy(), model.input_scale, model.input_zp)


# --------------------------------------------------------------------------- fixed-point maths
def test_quantize_multiplier_round_trip():
    rng = random.Random(0)
    for real in [0.5, 1.0, 0.75, 1 - 2**-40, 3.0e-3, 7.25] + [10 ** rng.uniform(-6, 1) for _ in range(2000)]:
        m0, e = mcu.quantize_multiplier(real)
        assert 2**30 <= m0 < 2**31
        exact = Fraction(m0) * Fraction(2) ** (e - 31)
        assert abs(exact - Fraction(real)) <= Fraction(2) ** (e - 32)   # within half a unit of M0
    assert mcu.quantize_multiplier(0.5) == (2**30, 0)
    assert mcu.quantize_multiplier(1 - 2**-40) == (2**30, 1)           # the mantissa rounds up to 1.0


def test_float32_multiplier_is_the_float32_exactly():
    rng = np.random.default_rng(0)
    for real in np.float32(10.0 ** rng.uniform(-7, 2, 500)):
        m, s = mcu.float32_multiplier(float(real))
        assert 2**23 <= m < 2**24 and Fraction(m, 1) / Fraction(2) ** s == Fraction(float(real))


def test_integer_helpers_against_python_integers():
    rng = random.Random(1)
    xs = [0, 1, -1, 5, -5, 6, -6, 2**53 - 1, 2**53 + 1, 2**62 - 1, -(2**62) + 3, 2**54 - 1]
    xs += [rng.randrange(-2**62, 2**62) for _ in range(3000)]
    x = np.array(xs, np.int64)
    assert mcu.bit_length(x).tolist() == [abs(v).bit_length() for v in xs]
    for shift in (1, 2, 7, 30):
        want = [round(Fraction(v, 2**shift)) for v in xs]   # Python rounds Fractions half to even
        assert mcu.shift_round_half_even(x, shift).tolist() == want
    assert mcu.round_to_float32(np.array([2**24 + 1, 2**24 + 3, -(2**25 + 2)])).tolist() == [2**24, 2**24 + 4, -(2**25)]


def test_gemmlowp_requantization_within_its_documented_rounding():
    """|result - acc M0 2^(e-31)| <= 1/2 + 2^-(r+1) (two roundings), and exactly the correctly
    rounded value (ties away from zero) whenever the product is not that close to a half."""
    rng = random.Random(2)
    for _ in range(3000):
        m0, e = mcu.quantize_multiplier(10 ** rng.uniform(-5, -0.5))
        acc = rng.randrange(-2**24, 2**24)
        got = int(mcu.multiply_by_quantized_multiplier(acc, m0, e))
        exact = Fraction(acc * m0, 2 ** (31 - e))
        r = -e
        assert abs(got - exact) <= Fraction(1, 2) + Fraction(1, 2 ** (r + 1))
        frac = abs(exact - math.floor(exact) - Fraction(1, 2))
        if frac > Fraction(1, 2 ** (r + 1)):
            away = math.floor(abs(exact) + Fraction(1, 2)) * (1 if exact >= 0 else -1)
            assert got == away


def test_fixed_requantization_equals_float32_arithmetic():
    """requant="fixed" (integers only) gives float32(float32(acc) * M) rounded half to even,
    ONNX Runtime's arithmetic, on a million cases: large accumulators, exact ties, clamping."""
    rng = np.random.default_rng(3)
    acc = np.concatenate([rng.integers(-2**31, 2**31, 300_000), rng.integers(-2**16, 2**16, 700_000)])
    scales = np.float32(10.0 ** rng.uniform(-6, -1, 8))
    layer = mcu.QLayer("linear", np.zeros((8, 1), np.int8), np.zeros(8, np.int32), scales, np.float32(1.0), 0,
                       np.float32(1.0), 3)
    acc = acc[: len(acc) // 8 * 8].reshape(-1, 8)
    acc[:8] = np.round(0.5 / layer.float_multiplier).astype(np.int64)  # near a tie in every channel
    want = np.clip(np.rint(acc.astype(np.float32) * layer.float_multiplier) + 3, -128, 127)
    np.testing.assert_array_equal(mcu.requantize(acc, layer, "fixed"), want.astype(np.int8))
    np.testing.assert_array_equal(mcu.requantize(acc, layer, "float"), want.astype(np.int8))


# --------------------------------------------------------------------------- the network
def test_read_int8_onnx_gives_the_student(model):
    assert [l.kind for l in model.layers] == ["conv", "conv", "linear"]
    assert [l.weight.shape for l in model.layers] == [(8, 1, 3, 3), (16, 8, 3, 3), (10, 784)]
    assert all(l.weight.dtype == np.int8 and l.bias.dtype == np.int32 for l in model.layers)
    assert model.shapes() == [(1, 28, 28), (8, 14, 14), (16, 7, 7), (10,)]
    params = sum(l.weight.size + l.bias.size for l in model.layers)
    assert params == 9122 - 2 * (8 + 16) + (8 + 16)   # BatchNorm (2 per channel) folded into one bias per channel


def test_conv_accumulators_against_torch(model, Xq):
    layer = model.layers[0]
    acc = mcu.conv_accumulate(Xq[:16], layer)
    x = torch.from_numpy(Xq[:16].astype(np.float64) - layer.in_zp)
    ref = torch.nn.functional.conv2d(x, torch.from_numpy(layer.weight.astype(np.float64)),
                                     torch.from_numpy(layer.bias.astype(np.float64)), padding=1)
    np.testing.assert_array_equal(acc, ref.numpy().astype(np.int64))


def test_numpy_network_equals_onnx_runtime(model, files, data):
    ref = export.run_onnx(export.onnx_session(files["int8"]), data["X"]).numpy()
    for requant in ("fixed", "float"):
        np.testing.assert_array_equal(mcu.predict_int8(model, data["X"], requant=requant), ref)


def test_gemmlowp_differences_are_double_rounding(model, Xq):
    rows = mcu.requant_differences(model, Xq, "fixed", "gemmlowp")
    assert sum(r["differ"] for r in rows) > 0                      # the two roundings do differ ...
    for r in rows:
        assert r["max_step"] <= 1 and r["double_rounding"] == r["differ"]   # ... only at double-rounding ties
    assert all(r["differ"] == 0 for r in mcu.requant_differences(model, Xq, "fixed", "float"))


def test_arena_plan_never_overlaps(model):
    plan = mcu.plan_arena(model)
    sizes = [int(np.prod(s)) for s in model.shapes()]
    assert plan["arena_bytes"] == max(a + b for a, b in zip(sizes, sizes[1:])) == 784 + 1568
    for step in plan["steps"]:
        inside = [(step["in_offset"], step["in_bytes"]), (step["out_offset"], step["out_bytes"])]
        assert all(0 <= o and o + n <= plan["arena_bytes"] for o, n in inside)
        (a, n), (b, m) = sorted(inside)
        assert a + n <= b                                           # input and output do not overlap
    for prev, step in zip(plan["steps"], plan["steps"][1:]):
        assert step["in_offset"] == prev["out_offset"]              # each layer reads what the last wrote


def test_clear_errors(model, Xq, files, tmp_path):
    with pytest.raises(TypeError, match="int8"):
        mcu.run_int8(model, Xq.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        mcu.run_int8(model, Xq[:, :, :20])
    with pytest.raises(ValueError, match="requant"):
        mcu.run_int8(model, Xq, requant="round")
    with pytest.raises(TypeError, match="QModel"):
        mcu.run_int8("model.onnx", Xq)
    with pytest.raises(ValueError, match="not an int8 model"):
        mcu_onnx.read_int8_onnx(files["fp32"])
    with pytest.raises(FileNotFoundError, match="quantize_onnx_int8"):
        mcu_onnx.read_int8_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="real multiplier"):
        mcu.quantize_multiplier(-0.5)
    with pytest.raises(ValueError, match="finite"):
        mcu.quantize_input(np.array([np.nan], np.float32), 0.1, 0)
    with pytest.raises(TypeError, match="QModel"):
        mcu_c.c_source(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mcu_c.build_host(model, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="Berkeley"):
        mcu_c.parse_size_output("hello")


def test_missing_toolchain_names_the_install_command(monkeypatch):
    monkeypatch.setattr(mcu_c.shutil, "which", lambda name: None)
    assert not mcu_c.have_tools()
    with pytest.raises(mcu_c.ToolchainMissing, match="apt-get install -y gcc-arm-none-eabi"):
        mcu_c.require_tools(mcu_c.ARM_GCC)


# --------------------------------------------------------------------------- C builds
def test_c_source_is_self_contained(model):
    source = mcu_c.c_source(model)
    assert "malloc" not in source and "float" not in source.split("/* ---- weights")[1]
    assert source.count("static const int8_t kd_w") == 3
    assert "static int8_t kd_arena[2352]" in source


@HOST
@pytest.mark.parametrize("requant", mcu_c.REQUANT_C)
def test_host_build_equals_numpy(model, Xq, tmp_path, requant):
    exe = mcu_c.build_host(model, tmp_path, requant=requant)
    np.testing.assert_array_equal(mcu_c.run_host(exe, Xq[:50]), mcu.run_int8(model, Xq[:50], requant=requant))


@HOST
@ARM
@pytest.mark.parametrize("board", list(mcu_c.BOARDS))
def test_qemu_equals_host(model, Xq, tmp_path, board):
    """The Cortex-M4 (MPS2 AN386) and the Cortex-M0 with 16 KB of RAM (micro:bit) under QEMU."""
    exe = mcu_c.build_host(model, tmp_path)
    elf = mcu_c.build_firmware(model, tmp_path, board=board)
    got, info = mcu_c.run_qemu(elf, Xq[::10], board=board, icount=True)
    np.testing.assert_array_equal(got, mcu_c.run_host(exe, Xq[::10]))
    assert 0 < info["stack_bytes"] < mcu_c.BOARDS[board]["stack"]
    assert info["spin_instructions"] == 2_000_000 and 1e5 < info["instructions"] < 1e8


@ARM
def test_deploy_build_sizes(model, Xq, tmp_path):
    elf = mcu_c.build_deploy(model, tmp_path, Xq[3])
    assert mcu_c.run_deploy(elf) == int(mcu.run_int8(model, Xq[3:4])[0].argmax())
    sizes = mcu_c.elf_sizes(elf)
    symbols = mcu_c.symbol_sizes(elf)
    report = mcu_c.memory_report(elf, model)
    channels = sum(l.weight.shape[0] for l in model.layers)
    assert report["flash_weights"] == model.weight_bytes + 5 * channels   # + an int32 multiplier and int8 shift each
    assert report["flash"] == sizes["text"] + sizes["data"] and report["arena"] == symbols["kd_arena"] == 2352
    assert sizes["bss"] >= report["arena"] and report["flash_example_input"] == 784
    assert report["flash"] <= mcu_c.BUDGET["flash"] and report["ram"] <= mcu_c.BUDGET["ram"]
    with pytest.raises(RuntimeError, match="overflow"):
        mcu_c.build_deploy(model, tmp_path, Xq[3], budget={"flash": 8 * 1024})


# --------------------------------------------------------------------------- LiteRT and TFLite Micro
@pytest.fixture(scope="module")
def tflite_file(data, tmp_path_factory):
    pytest.importorskip("litert_torch")
    pytest.importorskip("tflite_micro")
    from kdlib import mcu_tflite

    student = zoo.load_student("mnist5k", ds=data["ds"], verbose=False)
    return mcu_tflite.to_tflite_int8(student, data["X"][:1], data["calibration"],
                                     tmp_path_factory.mktemp("tflite") / "student_int8.tflite")


def test_numpy_gemmlowp_equals_tflite_micro(tflite_file, data):
    """kdlib's engine on the integers read from the LiteRT file gives TFLite Micro's outputs."""
    from kdlib import mcu_tflite

    qt = mcu_tflite.read_tflite(tflite_file)
    assert [l.weight.shape for l in qt.layers] == [(8, 1, 3, 3), (16, 8, 3, 3), (10, 784)]
    Xq = mcu.quantize_input(data["X"][::2].numpy(), qt.input_scale, qt.input_zp)
    interpreter = mcu_tflite.tflm_interpreter(tflite_file)
    np.testing.assert_array_equal(mcu.run_int8(qt, Xq, requant="gemmlowp"), mcu_tflite.run_tflm(interpreter, Xq))
    arena = mcu_tflite.tflm_arena(interpreter)
    assert arena["total"] == arena["head"] + arena["tail"] and arena["head"] >= 28 * 28 * 8 + 14 * 14 * 8


def test_optional_packages_named_when_missing(monkeypatch):
    from kdlib import mcu_tflite

    def no_module(name):
        raise ImportError(name)

    monkeypatch.setattr(mcu_tflite.importlib, "import_module", no_module)
    with pytest.raises(ImportError, match=r'pip install "kdlib\[mcu\]"'):
        mcu_tflite.tflm_interpreter("student.tflite")


def test_parse_size_output():
    text = "   text\t   data\t    bss\t    dec\t    hex\tfilename\n  11512\t      8\t   2360\t  13880\t   3638\tm.elf\n"
    assert mcu_c.parse_size_output(text) == {"text": 11512, "data": 8, "bss": 2360}
    with pytest.raises(ValueError, match="add up"):
        mcu_c.parse_size_output(text.replace("13880", "13881"))
