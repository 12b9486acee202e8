"""The book's int8 student on microcontrollers: parity and memory (Chapter 11).

    python bench/mcu.py                                   # all 1,000 test images
    python bench/mcu.py --n 200                           # a quicker look
    python bench/mcu.py --json kdlib/assets/results/mcu.json --force   # the result chapter 11 reads

From the book's student (kdlib/assets/checkpoints/student_mnist5k.pt) it makes the int8 ONNX
file (int8 weights and activations, 128 training images to calibrate), and compares, logit by
logit on the test images:

- kdlib's integer-only NumPy engine (`kdlib.mcu`, requant "fixed") with ONNX Runtime;
- the generated C (`kdlib.mcu_c`) built with the host's gcc with the NumPy engine;
- the C built with arm-none-eabi-gcc for a Cortex-M4 and run under QEMU (`-M mps2-an386`), and
  for a Cortex-M0 run on QEMU's BBC micro:bit (16 KiB of RAM), with the host build;
- the LiteRT file (litert-torch) run by TFLite Micro with kdlib's engine on the same integers
  (requant "gemmlowp"), and its predictions with ONNX Runtime's.

The n images are spread evenly over the test set (which is sorted by class).
Flash and RAM come from a deployment build (the model alone, no C library) linked into the
Cortex-M0+ class budget (64 KiB flash, 16 KiB RAM), with what took the bytes. The instruction
count is QEMU's: with `-icount shift=0` its virtual clock advances 1 ns per guest instruction,
and SysTick ticks, calibrated on a loop of known length, count the instructions of one inference.
It is not a cycle count (QEMU models no pipeline, wait states or bus): a lower bound on the time.

The last line: `flash=<bytes> ram=<bytes> match=<k>/<n>` (Cortex-M4 deployment build; k of n
images whose outputs under QEMU equal the host build's, every logit).
With `--json PATH` the results are also written there (atomically; `--force` to replace).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kdlib import export, mcu, mcu_c, mcu_onnx, zoo
from kdlib.data import as_tensors, load_dataset
from kdlib.utils import atomic_write_text, sha256_file

N_CALIB = 128       # training images that calibrate the activation ranges (chapter 10 uses the same)
EXAMPLE = 537       # the test image the deployment builds classify (any index works)


def config(n: int) -> dict:
    """What the result depends on; chapter 11 checks it against its own (all but n_images)."""
    return {"dataset": "mnist5k", "student_sha256": sha256_file(zoo.student_path("mnist5k")), "n_calib": N_CALIB,
            "requant": "fixed", **mcu_c.build_config(), "n_images": n}


def equal(a: np.ndarray, b: np.ndarray) -> dict:
    """How many logits and how many images (every logit) agree."""
    same = a == b
    return {"logits": int(same.sum()), "of_logits": int(same.size), "images": int(same.all(1).sum()),
            "of_images": len(a)}


def numpy_parity(model, X, ort_logits) -> dict:
    out = {}
    for requant in mcu.REQUANT:
        out[requant] = equal(mcu.predict_int8(model, X, requant=requant), ort_logits)
        print(f"NumPy {requant:8s} vs ONNX Runtime: {out[requant]['logits']:,}/{out[requant]['of_logits']:,} logits, "
              f"{out[requant]['images']}/{out[requant]['of_images']} images equal")
    Xq = mcu.quantize_input(X, model.input_scale, model.input_zp)
    out["differences_fixed_gemmlowp"] = mcu.requant_differences(model, Xq, "fixed", "gemmlowp")
    for i, row in enumerate(out["differences_fixed_gemmlowp"]):
        print(f"  layer {i}: fixed and gemmlowp differ on {row['differ']:,} of {row['values']:,} requantizations "
              f"(by at most {row['max_step']}); double-rounding ties: {row['double_rounding']:,}")
    return out


def host_parity(model, Xq, folder: Path) -> dict:
    out = {}
    for requant in mcu_c.REQUANT_C:
        t = time.perf_counter()
        got = mcu_c.run_host(mcu_c.build_host(model, folder, requant=requant), Xq)
        out[requant] = equal(got, mcu.run_int8(model, Xq, requant=requant)) | {"wall_s": time.perf_counter() - t}
        print(f"host gcc ({requant}) vs NumPy: {out[requant]['images']}/{len(Xq)} images equal")
    return out


def qemu_parity(model, Xq, host, folder: Path) -> dict:
    out = {}
    for board in mcu_c.BOARDS:
        t = time.perf_counter()
        elf = mcu_c.build_firmware(model, folder, board=board)
        got, info = mcu_c.run_qemu(elf, Xq, board=board, icount=True, timeout=1800)
        wall = time.perf_counter() - t
        out[board] = {"cpu": mcu_c.BOARDS[board]["cpu"], "vs_host": equal(got, host), "wall_s": wall,
                      "stack_bytes": info["stack_bytes"], "instructions": info["instructions"],
                      "test_firmware": mcu_c.elf_sizes(elf)}
        print(f"QEMU {board} ({out[board]['cpu']}) vs host: {out[board]['vs_host']['images']}/{len(Xq)} images equal; "
              f"stack {info['stack_bytes']} B; {info['instructions']:,} instructions per inference; {wall:.1f} s wall")
    return out


def deploy(model, example, folder: Path) -> dict:
    out = {}
    want = int(mcu.run_int8(model, example[None])[0].argmax())
    for cpu, board in (("cortex-m4", "mps2-an386"), ("cortex-m0", "microbit"), ("cortex-m0plus", None)):
        elf = mcu_c.build_deploy(model, folder, example, cpu=cpu)
        report = mcu_c.memory_report(elf, model)
        report["class"] = mcu_c.run_deploy(elf, board=board) if board else None
        report["class_expected"] = want
        out[cpu] = report
        print(f"deploy {cpu:13s}: flash {report['flash']:,} B (weights {report['flash_weights']:,}, model code "
              f"{report['flash_model_code']:,}, start-up {report['flash_startup']}, example image "
              f"{report['flash_example_input']}, other {report['flash_other']}); RAM {report['ram']:,} B (arena "
              f"{report['arena']:,}, stack reserve {report['stack_reserved']}, other "
              f"{report['ram'] - report['arena'] - report['stack_reserved']})"
              + (f"; QEMU says class {report['class']} (expected {want})" if board else ""))
    return out


def tflite(student, X_train, X_test, ort_logits, folder: Path) -> dict:
    from kdlib import mcu_tflite

    t = time.perf_counter()
    X = X_test.numpy()
    path = mcu_tflite.to_tflite_int8(student, X_test[:1], X_train[:N_CALIB], folder / "student_int8.tflite")
    convert_s = time.perf_counter() - t
    qt = mcu_tflite.read_tflite(path)
    Xq = mcu.quantize_input(X, qt.input_scale, qt.input_zp)
    interpreter = mcu_tflite.tflm_interpreter(path)
    t = time.perf_counter()
    yt = mcu_tflite.run_tflm(interpreter, Xq)
    tflm_s = time.perf_counter() - t
    lt = mcu.dequantize(yt, qt.layers[-1].out_scale, qt.layers[-1].out_zp)
    elf = mcu_c.build_firmware(qt, folder, requant="gemmlowp")
    n_qemu = min(len(Xq), 100)
    out = {"bytes": path.stat().st_size, "convert_s": convert_s, "tflm_s": tflm_s,
           "tflm_arena": mcu_tflite.tflm_arena(interpreter),
           "numpy_gemmlowp_vs_tflm": equal(mcu.run_int8(qt, Xq, requant="gemmlowp"), yt),
           "numpy_fixed_vs_tflm": equal(mcu.run_int8(qt, Xq, requant="fixed"), yt),
           "qemu_c_vs_tflm": equal(mcu_c.run_qemu(elf, Xq[:n_qemu])[0], yt[:n_qemu]),
           "same_prediction_as_ort": int((lt.argmax(1) == ort_logits.argmax(1)).sum()),
           "max_logit_difference_vs_ort": float(np.abs(lt - ort_logits).max())}
    print(f"LiteRT file {out['bytes']:,} B ({convert_s:.1f} s to convert); TFLM arena {out['tflm_arena']}; "
          f"NumPy gemmlowp vs TFLM {out['numpy_gemmlowp_vs_tflm']['images']}/{len(X)} images equal; generated C under "
          f"QEMU vs TFLM {out['qemu_c_vs_tflm']['images']}/{n_qemu}; same prediction as ONNX Runtime "
          f"{out['same_prediction_as_ort']}/{len(X)}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="test images to run under QEMU (default: all 1,000)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    p.add_argument("--no-tflite", action="store_true", help="skip the LiteRT / TFLite Micro part")
    args = p.parse_args(argv)
    if not 1 <= args.n <= 1000:
        p.error("--n must be between 1 and 1000")
    if args.json is not None and args.json.exists() and not args.force:
        print(f"error: {args.json} exists; pass --force to replace it", file=sys.stderr)
        return 2
    try:
        mcu_c.require_tools("gcc", mcu_c.ARM_GCC, mcu_c.ARM_SIZE, mcu_c.ARM_NM, mcu_c.QEMU)
    except mcu_c.ToolchainMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    missing = [m for m in ("litert_torch", "tflite_micro") if importlib.util.find_spec(m) is None]
    if missing and not args.no_tflite:
        print(f"error: {', '.join(missing)} not installed: pip install \"kdlib[mcu]\" (or pass --no-tflite)",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    ds = load_dataset("mnist5k")
    student = zoo.load_student("mnist5k", ds=ds, verbose=False)
    X_train, _ = as_tensors(ds.train)
    X_test, y_test = as_tensors(ds.test)
    X = X_test.numpy()
    with tempfile.TemporaryDirectory(prefix="kdlib-bench-mcu-") as tmp:
        folder = Path(tmp)
        fp32 = export.to_onnx(student, X_test[:1], folder / "student.onnx")
        int8 = mcu_onnx.quantize_onnx_int8(fp32, folder / "student_int8.onnx", calibration=X_train[:N_CALIB])
        model = mcu_onnx.read_int8_onnx(int8)
        ort_logits = export.run_onnx(export.onnx_session(int8), X_test).numpy()
        out = {"config": config(args.n), "onnx_int8_bytes": int8.stat().st_size,
               "accuracy_ort_int8": float((ort_logits.argmax(1) == y_test.numpy()).mean()),
               "weight_bytes": model.weight_bytes, "arena_bytes": mcu.plan_arena(model)["arena_bytes"]}
        out["numpy_vs_ort"] = numpy_parity(model, X, ort_logits)
        Xq = mcu.quantize_input(X, model.input_scale, model.input_zp)
        out["host_vs_numpy"] = host_parity(model, Xq, folder)
        subset = Xq[np.linspace(0, len(Xq) - 1, args.n).round().astype(int)]
        host = mcu_c.run_host(mcu_c.build_host(model, folder), subset)
        out["qemu"] = qemu_parity(model, subset, host, folder)
        out["qemu_vs_numpy"] = equal(host, mcu.run_int8(model, subset))
        out["deploy"] = deploy(model, Xq[EXAMPLE], folder)
        if not args.no_tflite:
            out["tflite"] = tflite(student, X_train, X_test, ort_logits, folder)
    out["wall_s"] = time.perf_counter() - start
    m4, match = out["deploy"]["cortex-m4"], out["qemu"]["mps2-an386"]["vs_host"]
    budget_ok = m4["flash"] <= mcu_c.BUDGET["flash"] and m4["ram"] <= mcu_c.BUDGET["ram"]
    print(f"Cortex-M4 deployment build: flash {m4['flash']:,} of {mcu_c.BUDGET['flash']:,} B, RAM {m4['ram']:,} of "
          f"{mcu_c.BUDGET['ram']:,} B: {'within' if budget_ok else 'OUTSIDE'} the Cortex-M0+ class budget "
          f"({out['wall_s']:.0f} s in all)")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    print(f"flash={m4['flash']} ram={m4['ram']} match={match['images']}/{match['of_images']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
