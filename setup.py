"""Build and install lossopt-cuda.

What gets built, decided here and reported at the end of the build:

* CUDA and CPU kernels, when torch is a CUDA build and nvcc is found
  (for ``TORCH_CUDA_ARCH_LIST``, default ``8.0;9.0+PTX``);
* CPU kernels only, with a CPU build of torch, or when the CUDA toolkit does not
  match torch's CUDA major version;
* nothing, with ``LOSSOPT_BUILD=none``, when no compiler works, or in pip's
  isolated build environment (where torch is absent). An install never fails
  only because CUDA or a compiler is absent.

The kernels must be compiled against the exact torch they will run with, so an
install that builds them has to see the installed torch:
``pip install --no-build-isolation .``. A plain ``pip install .`` installs
Python and the kernels' sources (``lossopt_cuda/_csrc``), and the package
compiles the CPU kernels on first use (lossopt_cuda/_jit.py).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
DEFAULT_ARCHS = "8.0;9.0+PTX"
RECORD = "_build_record.json"  # read by lossopt_cuda/_kernels.py

# The compiler flags, shared with the build on first use (lossopt_cuda/_jit.py);
# loaded by path, as the package cannot be imported before it is built.
_spec = importlib.util.spec_from_file_location("_compile_flags", HERE / "lossopt_cuda" / "_compile_flags.py")
flags_of = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flags_of)


def log(msg: str) -> None:
    print(f"lossopt-cuda build: {msg}", file=sys.stderr, flush=True)


def find_cuda_home() -> str | None:
    """CUDA_HOME, else the toolkit behind nvcc. The nvcc on PATH may be a
    wrapper script (torch would then guess its parent folder), so a candidate
    counts only if it holds the runtime headers."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if c and Path(c, "include", "cuda_runtime.h").exists() and Path(c, "bin", "nvcc").exists():
            return c
    return None


def nvcc_major(cuda_home: str) -> int | None:
    try:
        out = subprocess.run([str(Path(cuda_home, "bin", "nvcc")), "--version"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return int(m.group(1)) if m else None


def extensions():
    """The extension to build (possibly none) and a sentence saying what it is."""
    mode = os.environ.get("LOSSOPT_BUILD", "auto").lower()
    if mode == "none":
        return [], "pure Python (LOSSOPT_BUILD=none)"
    try:
        import torch
    except ImportError:
        return [], "pure Python (torch is not importable at build time: install torch first and use --no-build-isolation)"

    cxx_flags = list(flags_of.CXX_FLAGS)
    openmp = flags_of.openmp_flags(torch.backends.openmp.is_available())

    want_cuda = mode in ("auto", "cuda") and torch.version.cuda is not None
    cuda_home = find_cuda_home() if want_cuda else None
    if want_cuda and cuda_home is None:
        log("torch is a CUDA build but no CUDA toolkit (nvcc) was found: CPU kernels only")
    if cuda_home is not None:
        major = nvcc_major(cuda_home)
        torch_major = int(torch.version.cuda.split(".")[0])
        if major != torch_major:
            log(f"nvcc in {cuda_home} is CUDA {major}, torch was built with CUDA "
                f"{torch.version.cuda}: CPU kernels only")
            cuda_home = None
    if mode == "cuda" and cuda_home is None:
        raise RuntimeError("LOSSOPT_BUILD=cuda but the CUDA kernels cannot be built (see above)")
    if cuda_home is not None:
        # Before torch.utils.cpp_extension is imported: it reads CUDA_HOME once,
        # at import, and would otherwise guess it from the nvcc wrapper's folder.
        os.environ["CUDA_HOME"] = cuda_home

    from torch.utils.cpp_extension import CppExtension

    cpu_exts = [
        CppExtension(
            f"lossopt_cuda._cpu_{isa.lower()}",
            ["csrc/cpu/kernels.cpp"],
            define_macros=flags_of.cpu_module_macros(isa, f"_cpu_{isa.lower()}"),
            extra_compile_args={"cxx": cxx_flags + flags + openmp},
            extra_link_args=openmp,
        )
        for isa, flags in flags_of.cpu_isas()
    ]
    isas = "/".join(isa for isa, _ in flags_of.cpu_isas())

    if cuda_home is None:
        ext = CppExtension("lossopt_cuda._C", ["csrc/ops.cpp", "csrc/cpu/advance.cpp"],
                           extra_compile_args={"cxx": cxx_flags})
        return [ext] + cpu_exts, f"CPU kernels ({isas}; torch {torch.__version__})"

    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    from torch.utils.cpp_extension import CUDAExtension

    arch_names = sorted({a.replace("+PTX", "").strip() for a in archs.replace(" ", ";").split(";") if a.strip()})
    ext = CUDAExtension(
        "lossopt_cuda._C",
        ["csrc/ops.cpp", "csrc/cpu/advance.cpp", "csrc/cuda/ops_cuda.cpp",
         "csrc/cuda/kernels.cu", "csrc/cuda/advance.cu"],
        define_macros=[("LOSSOPT_WITH_CUDA", None), ("LOSSOPT_CUDA_ARCHS", f'"{",".join(arch_names)}"')],
        extra_compile_args={"cxx": cxx_flags, "nvcc": list(flags_of.NVCC_FLAGS)},
    )
    return [ext] + cpu_exts, (f"CPU kernels ({isas}) and CUDA kernels (CUDA {torch.version.cuda}, "
                              f"archs {archs}, toolkit {cuda_home})")


# Optional: lossopt_cuda.integrations for PyTorch Lightning and the HF Trainer.
INTEGRATIONS = ["lightning>=2.0", "transformers>=4.46", "accelerate>=1.1"]

EXT_MODULES, WHAT = extensions()
cmdclass = {}
if EXT_MODULES:
    from torch.utils.cpp_extension import BuildExtension

    class OptionalBuildExtension(BuildExtension):
        """Fall back to a pure-Python install when the compiler fails, unless
        LOSSOPT_BUILD asked for kernels explicitly."""

        def build_extension(self, ext):
            # One object folder per module: the CPU kernels are one source
            # compiled with different flags into several modules.
            shared_temp = self.build_temp
            self.build_temp = os.path.join(shared_temp, ext.name)
            try:
                super().build_extension(ext)
            except Exception as err:  # noqa: BLE001 - a compiler without these flags
                if not ext.name.endswith(("_avx2", "_avx512")):
                    raise
                log(f"skipping {ext.name} ({err}): the DEFAULT CPU kernels serve instead")
            finally:
                self.build_temp = shared_temp

        def run(self):
            try:
                super().run()
            except Exception as err:  # noqa: BLE001 - any compiler failure
                if os.environ.get("LOSSOPT_BUILD", "auto").lower() in ("cpu", "cuda"):
                    raise
                log(f"compiling the kernels failed ({err}); installing pure Python instead")
                self.extensions = []
                self.distribution.ext_modules = []
                return
            self.write_build_record()
            log(f"built {WHAT}")

        def write_build_record(self):
            """Beside the modules: the torch they were built against, so that
            under another torch the package leaves them unloaded (and builds on
            first use) instead of crashing at import."""
            import torch

            folder = Path(self.get_ext_fullpath("lossopt_cuda._C")).parent
            record = {"torch_version": torch.__version__, "what": WHAT}
            (folder / RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

    cmdclass["build_ext"] = OptionalBuildExtension.with_options(use_ninja=True)
log(f"building {WHAT}")


class BuildPyWithSources(build_py):
    """Ship csrc/ inside the package (lossopt_cuda/_csrc), so that an install
    without compiled kernels can compile them on first use."""

    def run(self):
        super().run()
        target = Path(self.build_lib, "lossopt_cuda", "_csrc")
        for source in sorted((HERE / "csrc").rglob("*")):
            if source.suffix in (".h", ".cuh", ".cpp", ".cu"):
                dest = target / source.relative_to(HERE / "csrc")
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.copy_file(str(source), str(dest))


cmdclass["build_py"] = BuildPyWithSources

setup(
    name="lossopt-cuda",
    version="0.1.0",
    description="Loss-driven optimizers (AdaLo, AdamL, AdaLoss) for PyTorch with fused kernels",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["lossopt_cuda", "lossopt_cuda.*"]),
    ext_modules=EXT_MODULES,
    cmdclass=cmdclass,
    python_requires=">=3.10",
    # ninja: torch.utils.cpp_extension builds with it, at install and on first use.
    install_requires=["torch>=2.4", "ninja"],
    extras_require={
        # The tests also exercise the integrations, so they pull those in too.
        "test": ["pytest>=7", "hypothesis>=6", "numpy", "scikit-learn>=1.2", "tqdm",
                 "matplotlib", "adabelief-pytorch>=0.2.1", *INTEGRATIONS],
        "examples": ["scikit-learn>=1.2", "tqdm"],
        "benchmarks": ["matplotlib", "tqdm", "numpy", "scikit-learn>=1.2", "adabelief-pytorch>=0.2.1"],
        "integrations": INTEGRATIONS,
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
