"""Build (and run) the host test of the CUDA kernels: tests/cpp/*.cpp and the
kernels' own sources under ``csrc/`` (headers, and the NVRTC build's launcher
csrc/cuda/nvrtc_launch.cpp), compiled by the system C++ compiler against the
CUDA toolkit's headers only (no torch, no GPU, no CUDA runtime: the test
brings a fake one), under AddressSanitizer and UndefinedBehaviorSanitizer.

Two variants: ``exact`` (no floating-point contraction, as C++ specifies and
as nvcc and NVRTC compile the kernels, ``--fmad=false``) and ``fast``
(``-ffp-contract=fast`` with the CPU's fused multiply-add, what nvcc does by
default: no result may depend on it beyond a few ulp); the reference
(reference.cpp) is never contracted.

    python tests/cpp/build.py [--csrc DIR] [--out DIR] [--run] [--seed N]

Used by tests/test_kernels_host.py and scripts/plant_bugs.py.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SOURCES = sorted(HERE.glob("*.cpp"))
# Sources of csrc/ compiled into the program as they are: the NVRTC build's
# launcher, with the macro that build compiles it with (lossopt_cuda/_jit.py).
CSRC_SOURCES = [("cuda/nvrtc_launch.cpp", ["-DLOSSOPT_NVRTC_HOST"])]
BASE_FLAGS = ["-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
              "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
              "-fno-omit-frame-pointer"]
VARIANTS = ("exact", "fast")


def find_compiler() -> Optional[str]:
    """The C++ compiler: $CXX, else c++, g++ or clang++ on PATH."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def find_cuda_include() -> Optional[Path]:
    """A folder holding cuda_fp16.h and cuda_bf16.h: $CUDA_HOME/include,
    /usr/local/cuda*/include, the toolkit of the nvcc on PATH, or the headers
    that torch's CUDA wheels install (site-packages/nvidia/cu*/include)."""
    candidates: List[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var], "include"))
    candidates.append(Path("/usr/local/cuda/include"))
    candidates += sorted(Path("/usr/local").glob("cuda-*/include"), reverse=True)
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    for site in map(Path, sys.path):
        candidates += sorted(site.glob("nvidia/cu*/include"), reverse=True)
        candidates.append(site / "nvidia" / "cuda_runtime" / "include")
    for c in candidates:
        if (c / "cuda_fp16.h").is_file() and (c / "cuda_bf16.h").is_file() and (c / "cuda_runtime_api.h").is_file():
            return c
    return None


def has_fma() -> bool:
    """Whether this CPU runs fused multiply-adds (needed to contract on x86)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return True  # aarch64 and the like have it in the base ISA
    try:
        return " fma " in " " + Path("/proc/cpuinfo").read_text().replace("\n", " ") + " "
    except OSError:
        return False


def variant_flags(variant: str) -> List[str]:
    if variant == "exact":
        return ["-ffp-contract=off"]
    # GCC forms multiply-adds in a pass that -O1 leaves out.
    flags = ["-ffp-contract=fast", "-fexpensive-optimizations", "-DHOST_TEST_FAST_CONTRACT"]
    if platform.machine().lower() in ("x86_64", "amd64") and has_fma():
        flags.append("-mfma")
    return flags


def _compile_jobs(cxx: str, csrc: Path, cuda_inc: Path, out: Path,
                  variants: Sequence[str]) -> Dict[str, List[List[str]]]:
    jobs: Dict[str, List[List[str]]] = {}
    includes = ["-I", str(csrc), "-I", str(HERE), "-I", str(cuda_inc)]
    for v in variants:
        (out / v).mkdir(parents=True, exist_ok=True)
        cmds = []
        for src in SOURCES:
            # The reference is never contracted: it must stay exact.
            flags = variant_flags("exact" if src.name == "reference.cpp" else v)
            cmds.append([cxx, *BASE_FLAGS, *flags, *includes, "-c", str(src),
                         "-o", str(out / v / (src.stem + ".o"))])
        for name, extra in CSRC_SOURCES:
            cmds.append([cxx, *BASE_FLAGS, *variant_flags(v), *extra, *includes, "-c", str(csrc / name),
                         "-o", str(out / v / _object_name(name))])
        jobs[v] = cmds
    return jobs


def _object_name(csrc_name: str) -> str:
    return "csrc_" + csrc_name.replace("/", "_").rsplit(".", 1)[0] + ".o"


def source_key(csrc: Path, cxx: str, cuda_inc: Path) -> str:
    """A hash of everything the build depends on."""
    h = hashlib.sha256()
    for root in (csrc, HERE):
        for f in sorted(root.rglob("*")):
            if f.suffix in (".h", ".cuh", ".cpp", ".cu") and f.is_file():
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    h.update(" ".join(BASE_FLAGS + [cxx, str(cuda_inc), str(has_fma()), str(CSRC_SOURCES)]).encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def build(csrc: Path = REPO / "csrc", out: Optional[Path] = None,
          variants: Sequence[str] = VARIANTS, jobs: Optional[int] = None) -> Dict[str, Path]:
    """Compile the variants (objects in parallel) and link one program each.
    Returns {variant: executable}. Reuses an earlier build of the same sources.
    Raises RuntimeError with the compiler's output on failure."""
    cxx = find_compiler()
    cuda_inc = find_cuda_include()
    if cxx is None or cuda_inc is None:
        raise RuntimeError(f"no C++ compiler ({cxx}) or no CUDA headers ({cuda_inc})")
    csrc = csrc.resolve()
    out = (out or REPO / "build" / "kernels_host_test" / source_key(csrc, cxx, cuda_inc)).resolve()
    exes = {v: out / v / "kernels_host_test" for v in variants}
    if all(e.is_file() for e in exes.values()):
        return exes
    cmds = _compile_jobs(cxx, csrc, cuda_inc, out, variants)
    flat = [c for v in variants for c in cmds[v]]
    # The slowest sources first, so that the critical path starts early.
    flat.sort(key=lambda c: -Path(c[c.index("-c") + 1]).stat().st_size)

    def run(cmd: List[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        results = list(pool.map(run, flat))
    failed = [r for r in results if r.returncode != 0]
    if failed:
        r = failed[0]
        raise RuntimeError(f"compile failed: {' '.join(r.args)}\n{r.stdout}{r.stderr}")
    for v in variants:
        objs = [str(out / v / (s.stem + ".o")) for s in SOURCES]
        objs += [str(out / v / _object_name(name)) for name, _ in CSRC_SOURCES]
        r = subprocess.run([cxx, "-fsanitize=address,undefined", *objs, "-o", str(exes[v])],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"link failed:\n{r.stdout}{r.stderr}")
    return exes


def run_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1:halt_on_error=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    return env


def commands(exes: Dict[str, Path], seed: int) -> Dict[str, List[str]]:
    """The runs: every section exact, the floating-point sections contracted."""
    cmds = {}
    if "exact" in exes:
        cmds["exact"] = [str(exes["exact"]), str(seed)]
    if "fast" in exes:
        cmds["fast"] = [str(exes["fast"]), str(seed), "numerics"]
    return cmds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csrc", type=Path, default=REPO / "csrc", help="the kernel sources (default: csrc/)")
    ap.add_argument("--out", type=Path, default=None, help="build folder (default: build/kernels_host_test/<hash>)")
    ap.add_argument("--variant", choices=VARIANTS, action="append", help="build only these (repeatable)")
    ap.add_argument("--run", action="store_true", help="run the programs after building")
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    args = ap.parse_args()
    exes = build(args.csrc, args.out, args.variant or VARIANTS)
    for v, e in exes.items():
        print(f"{v}: {e}")
    if not args.run:
        return 0
    procs = {v: subprocess.Popen(c, env=run_env()) for v, c in commands(exes, args.seed).items()}
    codes = {v: p.wait() for v, p in procs.items()}
    print("exit codes:", codes)
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
