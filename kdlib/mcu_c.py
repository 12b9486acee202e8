"""C code for an int8 model, built for the host and for a Cortex-M4, run under QEMU.

    source = c_source(model)                          # one self-contained C file
    exe = build_host(model, folder)                   # gcc, for parity tests on this machine
    Yq = run_host(exe, Xq)                            # (N, K) int8
    elf = build_firmware(model, folder)               # arm-none-eabi-gcc, Cortex-M4, semihosting
    Yq, info = run_qemu(elf, Xq)                      # qemu-system-arm -M mps2-an386
    report = memory_report(model, folder)             # flash and RAM of a deployment build

The C file holds the weights as `const int8_t` arrays (they stay in flash), the kernels of
`kdlib/assets/mcu/kernels.c` and one static activation arena laid out by
`kdlib.mcu.plan_arena`: no `malloc`, no floating point. Its API is three symbols:
`int8_t *kd_input(void)` (where to write the int8 image, C x H x W), `const int8_t *kd_run(void)`
(runs the network, returns the int8 outputs) and `kd_input_size`, `kd_output_size`.

The ARM toolchain and QEMU come from Debian: `apt-get install -y gcc-arm-none-eabi
libnewlib-arm-none-eabi qemu-system-arm`.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .mcu import QModel, _check_model, _int_array, plan_arena
from .utils import asset_path, atomic_write_text
from .validation import check_choice, check_path

APT_INSTALL = "apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
ARM_GCC, ARM_SIZE, ARM_NM, QEMU = "arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-nm", "qemu-system-arm"
CPUS = ("cortex-m4", "cortex-m0", "cortex-m0plus", "cortex-m7")   # -mcpu values this module builds for
# QEMU machines the firmware runs on: flash and RAM where the linker script puts them (both boards
# map flash at 0x0 and RAM at 0x20000000), and how the test firmware shares its RAM
BOARDS = {
    "mps2-an386": {"cpu": "cortex-m4", "flash": 4 * 1024 * 1024, "ram": 4 * 1024 * 1024,    # Arm MPS2, AN386
                   "heap": 64 * 1024, "stack": 16 * 1024},
    "microbit": {"cpu": "cortex-m0", "flash": 256 * 1024, "ram": 16 * 1024,                 # BBC micro:bit v1
                 "heap": 6 * 1024, "stack": 3 * 1024},                                      # (nRF51822)
}
OPT = "-O2"                      # optimise for speed: the model is far inside the flash budget
BUDGET = {"flash": 64 * 1024, "ram": 16 * 1024}   # a Cortex-M0+ class device (the book's target)
DEPLOY_STACK = 1024              # bytes of stack reserved in the deployment build
REQUANT_C = ("fixed", "gemmlowp")  # kdlib.mcu requantizations the C kernels implement
STARTUP_SYMBOLS = ("Reset_Handler", "Fault_Handler", "kd_semihost_exit", "kd_vectors", "main")


class ToolchainMissing(RuntimeError):
    """A compiler or QEMU is not installed."""


# --------------------------------------------------------------------------- tools
def have_tools(*names: str) -> bool:
    """True when every program in `names` is on the PATH (default: gcc, the ARM toolchain, QEMU).
    """
    return all(shutil.which(n) for n in (names or ("gcc", ARM_GCC, ARM_SIZE, QEMU)))


def require_tools(*names: str) -> None:
    """Raise ToolchainMissing, with the command that installs it, unless `names` are installed.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    missing = [n for n in names if not shutil.which(n)]
    if missing:
        what = "a C compiler" if missing == ["gcc"] else "the ARM toolchain and QEMU"
        fix = "apt-get install -y gcc" if missing == ["gcc"] else APT_INSTALL
        raise ToolchainMissing(f"{', '.join(missing)} not found: install {what} with `sudo {fix}`")


def _run(cmd: list[str], *, cwd=None, timeout: float = 120, what: str = "") -> subprocess.CompletedProcess:
    """Run a command; a failure raises RuntimeError with the first lines of its error output."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what or cmd[0]} did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        detail = "\n".join((done.stderr or done.stdout).strip().splitlines()[:8])
        raise RuntimeError(f"{what or cmd[0]} failed (exit {done.returncode}):\n{detail}")
    return done


# --------------------------------------------------------------------------- C source
def _c_array(ctype: str, name: str, values, per_line: int = 16) -> str:
    """`static const <ctype> name[n] = {...};` with `per_line` numbers a line."""
    flat = [str(int(v)) for v in np.asarray(values).ravel()]
    lines = [", ".join(flat[i:i + per_line]) for i in range(0, len(flat), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{len(flat)}] = {{\n    {body}\n}};\n"


def _multipliers(layer, requant: str) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier, shift) per channel as the C kernels take them."""
    return layer.float32_multiplier if requant == "fixed" else layer.fixed_multiplier


def c_source(model: QModel, *, requant: str = "fixed", source: str = "") -> str:
    """A self-contained C file for an int8 `QModel`: weights, kernels, arena and `kd_run`.

    Args:
        model: from `kdlib.mcu_onnx.read_int8_onnx`.
        requant: "fixed" (the integers of ONNX Runtime, `kdlib.mcu`'s default) or "gemmlowp"
            (TFLite Micro's and CMSIS-NN's rounding).
        source: a note for the header comment (e.g. the ONNX file's name).
    Returns:
        the C source as a string.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    _check_model(model)
    check_choice(requant, "requant", REQUANT_C)
    plan, shapes = plan_arena(model), model.shapes()
    parts = [_header(model, requant, plan, source), f"#define KD_REQUANT_{requant.upper()} 1\n",
             asset_path("mcu", "kernels.c").read_text(), "\n/* ---- weights (flash) ---- */\n"]
    for i, layer in enumerate(model.layers):
        mult, shift = _multipliers(layer, requant)
        parts += [_c_array("int8_t", f"kd_w{i}", layer.weight), _c_array("int32_t", f"kd_b{i}", layer.bias, 8),
                  _c_array("int32_t", f"kd_m{i}", mult, 8), _c_array("int8_t", f"kd_s{i}", shift)]
    parts.append(_run_function(model, plan, shapes))
    return "\n".join(parts)


def _header(model: QModel, requant: str, plan: dict, source: str) -> str:
    layers = ", ".join(f"{l.kind} {l.weight.shape[1]}->{l.weight.shape[0]}" + (" + max-pool" if l.pool else "")
                       for l in model.layers)
    return (f"/* Generated by kdlib.mcu_c{f' from {source}' if source else ''}: an int8 network, integers only.\n"
            f" * Layers: {layers}.\n * Input: int8 {model.input_shape} (C, H, W), scale {float(model.input_scale):.9g}, "
            f"zero point {model.input_zp}.\n * Requantization: {requant}. Weights and biases: {model.weight_bytes} bytes; "
            f"activation arena: {plan['arena_bytes']} bytes. */\n")


def _run_function(model: QModel, plan: dict, shapes) -> str:
    """The arena and `kd_run`: one kernel call per layer, at the offsets of the plan."""
    arena = plan["arena_bytes"]
    lines = ["/* ---- the activation arena and the network ---- */",
             f"static int8_t kd_arena[{arena}] __attribute__((aligned(4)));",
             f"const int kd_input_size = {int(np.prod(model.input_shape))};",
             f"const int kd_output_size = {model.num_classes};",
             f"int8_t *kd_input(void) {{ return kd_arena + {plan['steps'][0]['in_offset']}; }}",
             "", "const int8_t *kd_run(void)", "{"]
    for i, (layer, step) in enumerate(zip(model.layers, plan["steps"])):
        src, dst = f"kd_arena + {step['in_offset']}", f"kd_arena + {step['out_offset']}"
        tail = f"kd_w{i}, kd_b{i}, kd_m{i}, kd_s{i}, {layer.in_zp}, {layer.out_zp}, {layer.lowest}"
        if layer.kind == "conv":
            c, h, w = shapes[i]
            lines.append(f"    kd_conv({src}, {dst}, {c}, {h}, {w}, {layer.weight.shape[0]}, {layer.weight.shape[2]}, "
                         f"{layer.pool or 1}, {tail});")
        else:
            lines.append(f"    kd_linear({src}, {dst}, {layer.weight.shape[1]}, {layer.weight.shape[0]}, {tail});")
    lines += [f"    return kd_arena + {plan['steps'][-1]['out_offset']};", "}", ""]
    return "\n".join(lines)


def example_source(Xq) -> str:
    """C file with one int8 input `kd_example_input` (for the deployment build)."""
    Xq = _int_array(Xq, "Xq", dtype=np.int8)
    return "#include <stdint.h>\n" + _c_array("int8_t", "kd_example_input", Xq.ravel()).replace("static ", "")


# --------------------------------------------------------------------------- builds
def _folder(folder) -> Path:
    folder = check_path(folder, "folder")
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist; create it first (a temporary folder is best)")
    return folder


def write_sources(model: QModel, folder, *, requant: str = "fixed") -> Path:
    """Write `model.c` into `folder` (an existing folder); returns its path.
    """
    folder = _folder(folder)
    return atomic_write_text(folder / "model.c", c_source(model, requant=requant))


def build_host(model: QModel, folder, *, requant: str = "fixed") -> Path:
    """Compile the model and the test harness with the host's gcc; returns the executable.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    require_tools("gcc")
    folder = _folder(folder)
    src = write_sources(model, folder, requant=requant)
    exe = folder / "model_host"
    _run(["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", str(src), str(asset_path("mcu", "harness.c")),
          "-o", str(exe)], what="gcc")
    return exe


def _linker_script(folder: Path, flash: int, ram: int, stack: int, heap: int) -> Path:
    text = asset_path("mcu", "board.ld").read_text()
    for key, value in (("FLASH_BYTES", flash), ("RAM_BYTES", ram), ("STACK_BYTES", stack), ("HEAP_BYTES", heap)):
        text = text.replace(f"@{key}@", str(value))
    return atomic_write_text(folder / f"board_{flash}_{ram}.ld", text)


def _arm_flags(cpu: str) -> list[str]:
    check_choice(cpu, "cpu", CPUS)
    return [f"-mcpu={cpu}", "-mthumb", "-mfloat-abi=soft", "-std=c99", OPT, "-Wall", "-Wextra", "-Werror",
            "-ffunction-sections", "-fdata-sections", "-nostartfiles", "-Wl,--gc-sections"]


def build_firmware(model: QModel, folder, *, requant: str = "fixed", board: str = "mps2-an386") -> Path:
    """The test firmware: model + harness + newlib (nano, semihosting) for a QEMU board
    (`BOARDS`: the MPS2 AN386's Cortex-M4, or the micro:bit's Cortex-M0 with 16 KiB of RAM);
    it reads `inputs.bin` from QEMU's folder and prints the outputs.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    require_tools(ARM_GCC)
    check_choice(board, "board", tuple(BOARDS))
    folder = _folder(folder)
    spec = BOARDS[board]
    src = write_sources(model, folder, requant=requant)
    ld = _linker_script(folder, spec["flash"], spec["ram"], spec["stack"], spec["heap"])
    elf = folder / f"model_test_{board}.elf"
    _run([ARM_GCC, *_arm_flags(spec["cpu"]), "-DKD_FIRMWARE", "--specs=nano.specs", "--specs=rdimon.specs",
          "-T", str(ld), str(asset_path("mcu", "startup.c")), str(asset_path("mcu", "harness.c")), str(src),
          "-o", str(elf)], cwd=folder, what=ARM_GCC)
    return elf


def build_deploy(model: QModel, folder, example, *, requant: str = "fixed", cpu: str = "cortex-m4",
                 budget: dict | None = None) -> Path:
    """The deployment build: the model alone (no C library), linked into the budget's flash and
    RAM (a model that does not fit fails to link); it classifies `example` (int8 (C, H, W))
    and exits with the class.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    require_tools(ARM_GCC)
    folder = _folder(folder)
    budget = dict(BUDGET, **(budget or {}))
    src = write_sources(model, folder, requant=requant)
    example_c = atomic_write_text(folder / "example.c", example_source(example))
    ld = _linker_script(folder, budget["flash"], budget["ram"], DEPLOY_STACK, 0)
    elf = folder / f"model_deploy_{cpu}.elf"
    _run([ARM_GCC, *_arm_flags(cpu), "-nostdlib", "-fno-tree-loop-distribute-patterns", "-T", str(ld), str(asset_path("mcu", "startup.c")),
          str(asset_path("mcu", "deploy.c")), str(src), str(example_c), "-lgcc", "-o", str(elf)],
         cwd=folder, what=ARM_GCC)
    return elf


# --------------------------------------------------------------------------- running
def _write_inputs(Xq, path: Path, input_size: int | None = None) -> int:
    Xq = _int_array(Xq, "Xq", dtype=np.int8)
    if Xq.ndim < 2:
        raise ValueError(f"Xq must be a batch (N, C, H, W) of int8 images, got shape {Xq.shape}")
    if input_size is not None and int(np.prod(Xq.shape[1:])) != input_size:
        raise ValueError(f"each input must hold {input_size} values, got shape {Xq.shape[1:]}")
    path.write_bytes(np.ascontiguousarray(Xq).tobytes())
    return len(Xq)


def _parse_outputs(text: str, n: int, what: str) -> tuple[np.ndarray, dict]:
    rows, info = [], {}
    for line in text.splitlines():
        if re.fullmatch(r"-?\d+( -?\d+)*", line.strip()):
            rows.append([int(v) for v in line.split()])
        elif line.split(" ")[0] in ("stack_bytes", "systick_ticks", "spin_instructions", "spin_ticks", "images"):
            key, value = line.split()
            info[key] = int(value)
        elif line.strip():
            raise RuntimeError(f"{what} printed an unexpected line: {line.strip()[:200]}")
    if len(rows) != n or info.get("images") != n:
        raise RuntimeError(f"{what} returned {len(rows)} outputs for {n} inputs")
    return np.array(rows, dtype=np.int8), info


def run_host(exe, Xq, *, timeout: float = 120) -> np.ndarray:
    """Run a `build_host` executable on int8 inputs Xq (N, C, H, W); returns int8 (N, K).

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    exe = check_path(exe, "exe")
    with tempfile.TemporaryDirectory(prefix="kdlib-mcu-") as tmp:
        n = _write_inputs(Xq, Path(tmp) / "inputs.bin")
        done = _run([str(exe), str(Path(tmp) / "inputs.bin")], timeout=timeout, what=exe.name)
    return _parse_outputs(done.stdout, n, exe.name)[0]


def qemu_command(elf, *, board: str = "mps2-an386", icount: bool = False) -> list[str]:
    """The QEMU command that runs a firmware on `board` with semihosting (and, with `icount`,
    a virtual clock that advances 1 ns per instruction: `-icount shift=0`)."""
    check_choice(board, "board", tuple(BOARDS))
    cmd = [QEMU, "-M", board, "-nographic", "-monitor", "none", "-serial", "none",
           "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]
    return cmd + (["-icount", "shift=0"] if icount else [])


def run_qemu(elf, Xq, *, board: str = "mps2-an386", icount: bool = False, timeout: float = 300) -> tuple[np.ndarray, dict]:
    """Run a `build_firmware` ELF under QEMU on int8 inputs Xq (N, C, H, W).

    Returns:
        (int8 outputs (N, K), info) with info["stack_bytes"]: the stack the first inference
        used; info["instructions"] (with icount=True): the instructions it executed, from
        SysTick ticks calibrated on a loop of known length; "images": N.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    require_tools(QEMU)
    elf = check_path(elf, "elf")
    if not elf.is_file():
        raise FileNotFoundError(f"{elf} does not exist; build it with build_firmware")
    with tempfile.TemporaryDirectory(prefix="kdlib-qemu-") as tmp:
        n = _write_inputs(Xq, Path(tmp) / "inputs.bin")
        done = _run(qemu_command(elf.resolve(), board=board, icount=icount), cwd=tmp, timeout=timeout,
                    what="qemu-system-arm")
    outputs, info = _parse_outputs(done.stdout, n, "the firmware under QEMU")
    if icount:
        info["instructions"] = round(info["systick_ticks"] * info["spin_instructions"] / info["spin_ticks"])
    return outputs, info


def run_deploy(elf, *, board: str = "mps2-an386", timeout: float = 60) -> int:
    """Run a `build_deploy` ELF under QEMU; returns its exit status (the predicted class).

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    require_tools(QEMU)
    elf = check_path(elf, "elf")
    try:
        done = subprocess.run(qemu_command(elf.resolve(), board=board), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{elf.name} did not finish under QEMU within {timeout:g} s") from None
    if done.returncode == 255:
        raise RuntimeError(f"{elf.name} crashed under QEMU (a fault handler ran)")
    return done.returncode


def build_config() -> dict:
    """What a build's results depend on besides the model: flags, budget, the C sources and the
    compiler's version (bench/mcu.py saves it; chapter 11 checks that the saved result is current).

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    from .utils import sha256_bytes

    sources = b"".join(asset_path("mcu", name).read_bytes()
                       for name in ("kernels.c", "harness.c", "deploy.c", "startup.c", "board.ld"))
    version = _run([ARM_GCC, "--version"], what=ARM_GCC).stdout.splitlines()[0] if have_tools(ARM_GCC) else None
    return {"opt": OPT, "flags": _arm_flags("cortex-m4"), "budget": dict(BUDGET), "deploy_stack": DEPLOY_STACK,
            "boards": BOARDS, "sources_sha256": sha256_bytes(sources), "arm_gcc": version}


# --------------------------------------------------------------------------- sizes
def elf_sizes(elf) -> dict:
    """text, data, bss (bytes) of an ELF, parsed from `arm-none-eabi-size` (Berkeley format).
    """
    require_tools(ARM_SIZE)
    elf = check_path(elf, "elf")
    return parse_size_output(_run([ARM_SIZE, str(elf)], what=ARM_SIZE).stdout)


def parse_size_output(text: str) -> dict:
    """The first row of `size`'s Berkeley output ("text data bss dec hex filename") as a dict."""
    if not isinstance(text, str):
        raise TypeError(f"text must be the output of arm-none-eabi-size (a str), got {type(text).__name__}")
    lines = [l.split() for l in text.strip().splitlines()]
    if len(lines) < 2 or lines[0][:3] != ["text", "data", "bss"] or len(lines[1]) < 4:
        raise ValueError(f"not the Berkeley output of size (text data bss dec hex filename): {text[:120]!r}")
    text_b, data_b, bss_b, dec = (int(v) for v in lines[1][:4])
    if text_b + data_b + bss_b != dec:
        raise ValueError(f"size output does not add up: {text_b} + {data_b} + {bss_b} != {dec}")
    return {"text": text_b, "data": data_b, "bss": bss_b}


def symbol_sizes(elf) -> dict[str, int]:
    """Bytes of every sized symbol of an ELF (`arm-none-eabi-nm -S`), by name."""
    require_tools(ARM_NM)
    out = _run([ARM_NM, "-S", "--size-sort", str(check_path(elf, "elf"))], what=ARM_NM).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            sizes[parts[3]] = sizes.get(parts[3], 0) + int(parts[1], 16)
    return sizes


def memory_report(elf, model: QModel, *, stack_bytes: int | None = None) -> dict:
    """Flash and RAM of a deployment ELF, and what took the bytes.

    flash = text + data (code, constants, the initial values of data); ram = data + bss (the
    arena is in bss) + the stack reserved by the linker script. `stack_bytes`: the stack one
    inference was measured to use (from `run_qemu`), reported beside the reserve.

    Introduced in: notebooks/11_microcontroller.ipynb
    """
    _check_model(model)
    sizes, symbols = elf_sizes(elf), symbol_sizes(elf)
    kinds = {"weights": 0, "model_code": 0, "startup": 0, "example_input": 0}
    for name, size in symbols.items():
        if re.fullmatch(r"kd_[wbms]\d+", name):
            kinds["weights"] += size
        elif name == "kd_example_input":
            kinds["example_input"] += size
        elif name in STARTUP_SYMBOLS:
            kinds["startup"] += size
        elif name.startswith("kd_") and name != "kd_arena":
            kinds["model_code"] += size
    flash = sizes["text"] + sizes["data"]
    report = {"flash": flash, "ram": sizes["data"] + sizes["bss"] + DEPLOY_STACK, **sizes,
              **{f"flash_{k}": v for k, v in kinds.items()},
              "arena": symbols.get("kd_arena", 0), "stack_reserved": DEPLOY_STACK, "stack_measured": stack_bytes}
    report["flash_other"] = flash - sum(kinds.values())   # libgcc helpers, alignment
    return report
