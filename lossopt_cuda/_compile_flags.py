"""How the CPU kernels are compiled: the one place both builds read.

``setup.py`` (the build at install) loads this file by its path, before the
package exists, and ``lossopt_cuda._jit`` (the build on first use) imports it,
so it imports nothing from the package and nothing but the standard library.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import List, Tuple

#: Flags of every C++ source of the kernels. No contraction of a multiply and
#: an add into one fused multiply-add: the kernels round each operation as the
#: for-loop and foreach paths do, so that every path computes the same float32
#: values (and stochastic rounding writes the same bfloat16 bits).
CXX_FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off"]

#: The same for the CUDA kernels, built by nvcc at install (setup.py) or by
#: NVRTC on first use (lossopt_cuda._nvrtc, which is -O3 by default): no
#: multiply-add contraction. Division and square root are IEEE by default.
NVCC_FLAGS = ["-O3", "--fmad=false"]
NVRTC_FLAGS = ["--fmad=false"]

#: The CPU kernels' source (csrc/cpu/kernels.cpp), compiled once per instruction
#: set with the flags ATen uses for its own kernels of that set.
_ISA_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}


def openmp_flags(openmp_available: bool) -> List[str]:
    """``-fopenmp`` where torch runs OpenMP on Linux: at::parallel_for is inline
    code around ``#pragma omp parallel`` (ATen/ParallelOpenMP.h), and without
    the flag it silently runs on one thread."""
    return ["-fopenmp"] if openmp_available and sys.platform.startswith("linux") else []


def cpu_isas() -> List[Tuple[str, List[str]]]:
    """The instruction sets this machine's compiler can target, with their
    flags; ``LOSSOPT_CPU_ISAS`` (comma-separated, e.g. ``AVX512``) keeps only
    those named (for a build that runs on one known machine)."""
    names = ["DEFAULT"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        names += ["AVX2", "AVX512"]
    wanted = os.environ.get("LOSSOPT_CPU_ISAS", "").replace(" ", "")
    if wanted:
        asked = {n.upper() for n in wanted.split(",") if n}
        unknown = asked - set(names)
        if unknown:
            raise RuntimeError(f"LOSSOPT_CPU_ISAS: {sorted(unknown)} not among {names} on this machine")
        names = [n for n in names if n in asked]
    return [(n, list(_ISA_FLAGS[n])) for n in names]


def isa_for_capability(capability: str) -> str:
    """The instruction set to build for a CPU on which torch runs
    ``capability`` (``torch.backends.cpu.get_cpu_capability()``)."""
    available = {n for n, _ in cpu_isas()}
    return capability if capability in available else "DEFAULT"


def cpu_module_macros(isa: str, module: str) -> List[Tuple[str, str | None]]:
    """The macros of csrc/cpu/kernels.cpp compiled for ``isa`` into the module
    named ``module``: CPU_CAPABILITY gives each copy of at::vec its own
    namespace, as in ATen."""
    return [("LOSSOPT_CPU_MODULE", module), ("CPU_CAPABILITY", isa), (f"CPU_CAPABILITY_{isa}", None)]


def isa_flags(isa: str) -> List[str]:
    return list(_ISA_FLAGS[isa])
