#!/usr/bin/env python3
"""Does a change to csrc/ change what the GPU executes? Compiles the CUDA
sources (csrc/cuda/*.cu) of the working tree and of a git revision with nvcc
(-O3, one architecture, no GPU needed), then compares each kernel's PTX, with
the mangled names normalised (demangled, anonymous namespaces dropped), and
ptxas's resource report (registers, stack, spills).

    python scripts/compare_kernel_ptx.py [REV] [--arch sm_90]

Exit status 0 when every kernel of REV exists in the tree with the same PTX
body and the same resources.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Tuple

REPO = Path(__file__).resolve().parent.parent
ENTRY = re.compile(r"\.entry (\S+)\((.*?)\n}\n", re.S)
RESOURCE = re.compile(r"Compiling entry function '(\S+)' for '\w+'\n.*?\n\s*(\d+) bytes stack frame, "
                      r"(\d+) bytes spill stores, (\d+) bytes spill loads\n.*?Used (\d+) registers", re.S)


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return [re.sub(r"\(anonymous namespace\)::", "", d) for d in out.splitlines()]


def compile_tree(root: Path, nvcc: str, arch: str) -> Tuple[Dict[str, str], Dict[str, tuple]]:
    bodies, resources = {}, {}
    for cu in sorted((root / "csrc" / "cuda").glob("*.cu")):
        with tempfile.TemporaryDirectory() as tmp:
            base = [nvcc, "-std=c++17", "-O3", f"-arch={arch}", str(cu)]
            subprocess.run(base + ["-ptx", "-o", f"{tmp}/k.ptx"], check=True)
            report = subprocess.run(base + ["--resource-usage", "-c", "-o", f"{tmp}/k.o"], check=True,
                                    capture_output=True, text=True)
            text = Path(tmp, "k.ptx").read_text()
        entries = ENTRY.findall(text)
        for (name, body), key in zip(entries, demangle([n for n, _ in entries])):
            bodies[key] = body.replace(name, "KERNEL")
        found = RESOURCE.findall(report.stdout + report.stderr)
        for (name, *nums), key in zip(found, demangle([f[0] for f in found])):
            resources[key] = tuple(int(n) for n in nums)
    return bodies, resources


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", nargs="?", default="HEAD")
    ap.add_argument("--arch", default="sm_90")
    args = ap.parse_args()
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(f"git -C {REPO} archive {args.rev} csrc | tar -x -C {tmp}", shell=True, check=True)
        old_b, old_r = compile_tree(Path(tmp), nvcc, args.arch)
    new_b, new_r = compile_tree(REPO, nvcc, args.arch)
    same = 0
    for key in sorted(old_b):
        short = re.sub(r"lossopt::(cuda::|rules::|mta::)*", "", key)[:110]
        if key not in new_b:
            print(f"MISSING  {short}")
            continue
        regs = f"regs {old_r.get(key, ('?',) * 4)[3]} -> {new_r.get(key, ('?',) * 4)[3]}, " \
               f"spills {old_r.get(key, (0, 0, 0))[1]} -> {new_r.get(key, (0, 0, 0))[1]}"
        ok = old_b[key] == new_b[key] and old_r.get(key) == new_r.get(key)
        same += ok
        print(f"{'same   ' if ok else 'CHANGED'}  {short}  ({regs})")
    print(f"{same} of {len(old_b)} kernels of {args.rev} unchanged ({args.arch}); "
          f"{len(set(new_b) - set(old_b))} new in the tree")
    return 0 if same == len(old_b) else 1


if __name__ == "__main__":
    sys.exit(main())
