#!/usr/bin/env python3
"""Do the kernels NVRTC compiles on first use equal those nvcc builds at install?

Compiles csrc/cuda/nvrtc_kernels.cu with NVRTC (lossopt_cuda._nvrtc: from
torch's CUDA wheels, no GPU needed) and csrc/cuda/kernels.cu and advance.cu
with nvcc, both to PTX for one architecture, then pairs each NVRTC kernel
with the nvcc kernel its name in kernel_list.h stands for (rule, parameter
type, master weights, rounded parameters, bfloat16 states) and compares their PTX bodies, with the kernels' names
and the numbering of branch labels normalised.

    python scripts/compare_nvrtc_ptx.py [--arch 90]

Run with the Python of an environment with the CUDA build of torch and this
package importable; nvcc from PATH or /usr/local/cuda. Exit status 0 when
every kernel of each build has its twin with the same PTX.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from compare_kernel_ptx import ENTRY, demangle

from lossopt_cuda import _compile_flags, _nvrtc

REPO = Path(__file__).resolve().parent.parent
TYPES = {"f32": "float", "f16": "__half", "bf16": "__nv_bfloat16"}
# The rule as the demangled name spells it, and its argument struct.
RULES = {"adalo": ("AdaLo<float>", "AdaLoArgs"), "adaml": ("AdamL<float>", "AdamLArgs"),
         "adaloss": ("AdaLoss<float, false>", "AdaLossArgs"),
         "adaloss_momentum": ("AdaLoss<float, true>", "AdaLossArgs")}
GROUPS = {"adalo": "AdaLoGroup", "adaml": "AdamLGroup", "adaloss": "AdaLossGroup"}


def normalise(name: str, body: str) -> str:
    return re.sub(r"\$L__BB\d+_", "$L__BB_", body.replace(name, "KERNEL"))


def nvcc_twin(name: str) -> str:
    """What the demangled name of the nvcc kernel of NVRTC kernel ``name`` holds."""
    short = name.removeprefix("lossopt_")
    if short.startswith("advance_"):
        return f"advance_kernel<lossopt::rules::{GROUPS[short.removeprefix('advance_')]}>"
    m = re.fullmatch(r"(\w+?)_(f32|f16|bf16)(_master)?(_sr)?(_s16)?", short)
    rule, dtype, master, rounded, s16 = m.group(1), m.group(2), bool(m.group(3)), bool(m.group(4)), bool(m.group(5))
    spelled, args = RULES[rule]
    return (f"RuleFunctor<{TYPES[dtype]}, lossopt::rules::{spelled}, lossopt::rules::{args}, "
            f"{str(master).lower()}, {'unsigned short' if s16 else 'float'}, {str(rounded).lower()}>")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="90", help="compute capability without the dot (default 90)")
    args = ap.parse_args()
    src = REPO / "csrc"
    toolkit = _nvrtc.find_toolkit()
    options = [f"--gpu-architecture=compute_{args.arch}", "-std=c++17", *_compile_flags.NVRTC_FLAGS,
               f"-I{toolkit.include_dir}", f"-I{src / 'cuda'}"]
    device = src / _nvrtc.DEVICE_SOURCE
    ptx, log = _nvrtc.Nvrtc(toolkit).compile(device.read_text(), str(device), options, output="PTX")
    if ptx is None:
        sys.exit(f"NVRTC failed:\n{log}")
    nvrtc = {n: normalise(n, b) for n, b in ENTRY.findall(ptx.rstrip(b"\0").decode())}

    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    built = {}
    for cu in ("kernels.cu", "advance.cu"):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([nvcc, "-std=c++17", *_compile_flags.NVCC_FLAGS, f"-arch=sm_{args.arch}", str(src / "cuda" / cu),
                            "-ptx", "-o", f"{tmp}/k.ptx"], check=True)
            entries = ENTRY.findall(Path(tmp, "k.ptx").read_text())
        for (name, body), pretty in zip(entries, demangle([n for n, _ in entries])):
            built[pretty] = normalise(name, body)

    same, paired = 0, set()
    for name in sorted(nvrtc):
        twins = [k for k in built if nvcc_twin(name) in k]
        if len(twins) != 1:
            print(f"NO TWIN  {name} ({len(twins)} nvcc kernels match {nvcc_twin(name)})")
            continue
        paired.add(twins[0])
        ok = nvrtc[name] == built[twins[0]]
        same += ok
        print(f"{'same   ' if ok else 'DIFFERS'}  {name}")
    unpaired = set(built) - paired
    for key in sorted(unpaired):
        print(f"NVCC ONLY  {key[:120]}")
    print(f"{same} of {len(nvrtc)} NVRTC kernels have the same PTX as their nvcc twin (sm_{args.arch}); "
          f"{len(unpaired)} nvcc kernels without a twin")
    return 0 if same == len(nvrtc) == len(built) and not unpaired else 1


if __name__ == "__main__":
    sys.exit(main())
