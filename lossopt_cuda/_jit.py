"""The C++ libraries compiled on first use, with ``torch.utils.cpp_extension``
and ninja, into the cache (:mod:`lossopt_cuda._cache`):

* **the CPU library**, where the install compiled no kernels (a plain ``pip
  install``, or kernels built for another torch): the operator schemas, the
  advance ops and the CPU kernels (``csrc/ops.cpp``, ``csrc/cpu/``), for this
  CPU's instruction set only;
* **the CUDA host library**, where torch is a CUDA build and the install
  compiled no CUDA kernels: the CUDA ops (``csrc/cuda/ops_cuda.cpp``) and their
  launches of the kernels NVRTC compiles (``csrc/cuda/nvrtc_launch.cpp``;
  :mod:`lossopt_cuda._nvrtc`), compiled by the C++ compiler alone against the
  CUDA headers and runtime of torch's CUDA wheels. It adds CUDA
  implementations to the schemas of either of the above.

The sources are ``csrc/``, shipped inside the package as ``lossopt_cuda/_csrc``.
``LOSSOPT_JIT=0`` turns building on first use off (what is cached still loads).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from . import _cache, _compile_flags

BuildError = _cache.BuildError
_SOURCE_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")
#: The sources of each library.
CPU_SOURCES = ("ops.cpp", "cpu/advance.cpp", "cpu/kernels.cpp")
CUDA_HOST_SOURCES = ("cuda/ops_cuda.cpp", "cuda/nvrtc_launch.cpp")


def enabled() -> bool:
    """Building on first use is on unless ``LOSSOPT_JIT=0``."""
    return os.environ.get("LOSSOPT_JIT", "1").strip() != "0"


def sources_dir() -> Optional[Path]:
    """The kernels' sources: inside the installed package, else the checkout's
    ``csrc/`` (an editable install)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_csrc", package.parent / "csrc"):
        if (candidate / "ops.cpp").is_file():
            return candidate
    return None


def source_files(src: Path) -> List[tuple]:
    """(name, path) of every source file, for cache keys."""
    files = sorted(p for p in src.rglob("*") if p.suffix in _SOURCE_SUFFIXES and p.is_file())
    return [(p.relative_to(src).as_posix(), p) for p in files]


def compiler() -> str:
    return os.environ.get("CXX", "c++")  # what torch.utils.cpp_extension runs


def _library(folder: Path) -> Path:
    # torch.utils.cpp_extension's LIB_EXT; not imported from there, as
    # importing that module costs time and warns on CUDA builds without nvcc.
    suffix = ".pyd" if sys.platform == "win32" else ".so"
    return folder / f"lossopt_{folder.name.split('-')[0]}{suffix}"


def library_entry(src: Path, kind: str, flavour: str) -> Path:
    """The cache entry of a library: ``kind`` (cpu, cudahost) and ``flavour``
    (the instruction set, or the CUDA version) with torch and Python."""
    import torch

    files = source_files(src) + [("_compile_flags.py", Path(_compile_flags.__file__))]
    prefix = f"{kind}-{flavour.lower()}-torch{torch.__version__}-{sys.implementation.cache_tag}"
    return _cache.entry(prefix, files, compiler(), torch.__version__, sys.version)


def cpu_entry(src: Path, isa: str) -> Path:
    return library_entry(src, "cpu", isa)


def require_sources() -> Path:
    """The sources' folder; raises BuildError where the install has none."""
    src = sources_dir()
    if src is None:
        raise BuildError("the kernels' sources are not in this install (lossopt_cuda/_csrc is missing)")
    return src


def _load_library(folder: Path) -> Optional[str]:
    import torch

    try:
        torch.ops.load_library(str(_library(folder)))  # a second load of one path is a no-op
    except (OSError, RuntimeError) as err:
        return str(err)
    return None


def _compile(folder: Path, what: str, src: Path, sources: Sequence[str], cflags: List[str],
             ldflags: List[str], include_paths: Sequence[str] = ()) -> dict:
    """Compile and link ``sources`` into the library of ``folder`` (and load it)."""
    import torch

    if shutil.which(compiler()) is None:
        raise BuildError(f"no C++ compiler found to build them (`{compiler()}`, from $CXX or the "
                         "default, is not on PATH)")
    _cache.say(f"compiling the {what} for torch {torch.__version__} into {folder}: "
               "once per machine and torch version, about a minute")
    from torch.utils import cpp_extension

    try:
        with _ninja_on_path():
            cpp_extension.load(
                name=_library(folder).stem,
                sources=[str(src / s) for s in sources],
                extra_cflags=_compile_flags.CXX_FLAGS + cflags,
                extra_ldflags=ldflags,
                extra_include_paths=list(include_paths),
                build_directory=str(folder),
                with_cuda=False,
                is_python_module=False,
                verbose=False,
            )
    except Exception as err:  # noqa: BLE001 - any failure of the toolchain is reported the same way
        raise _cache.failed(folder, what, f"{type(err).__name__}: {err}") from None
    _cache.say(f"built the {what}")
    return {"torch_version": torch.__version__, "python": sys.version, "compiler": compiler(),
            "sources": str(src)}


def load_cpu_kernels(build: bool = True) -> str:
    """Load the CPU library from the cache, building it first where needed
    (and ``build``); returns the instruction set it was built for. Raises
    BuildError."""
    import torch

    isa = _compile_flags.isa_for_capability(torch.backends.cpu.get_cpu_capability())
    src = require_sources()
    openmp = _compile_flags.openmp_flags(torch.backends.openmp.is_available())
    macros = [f"-D{k}" if v is None else f"-D{k}={v}"
              for k, v in _compile_flags.cpu_module_macros(isa, "_cpu_jit")]
    what = f"CPU kernels ({isa})"

    def compile_cpu(folder: Path) -> dict:
        flags = _compile_flags.isa_flags(isa) + openmp + macros
        return {**_compile(folder, what, src, CPU_SOURCES, flags, openmp), "isa": isa}

    _cache.get_or_build(cpu_entry(src, isa), what, compile_cpu, _load_library, allow_build=build)
    return isa


def load_cuda_host(cuda: "CudaToolkit", build: bool = True) -> None:  # noqa: F821 - _nvrtc's
    """Load the CUDA host library (see the module's docstring) from the cache,
    building it first where needed. The operator schemas must be loaded."""
    src = require_sources()
    what = "CUDA host code"

    def compile_host(folder: Path) -> dict:
        flags = ["-DLOSSOPT_NVRTC_HOST"]
        ldflags = [f"-L{cuda.torch_lib}", "-ltorch_cuda", "-lc10_cuda", f"-L{cuda.lib_dir}",
                   f"-l:{cuda.cudart.name}"]
        if cuda.crt_include_dir is None:
            raise BuildError("the CUDA runtime's crt/ headers were not found (pip install "
                             f"nvidia-cuda-crt=={cuda.version}.*, or a CUDA toolkit under CUDA_HOME)")
        record = _compile(folder, what, src, CUDA_HOST_SOURCES, flags, ldflags, cuda.host_include_dirs())
        return {**record, "cuda": cuda.version}

    folder = library_entry(src, "cudahost", f"cuda{cuda.version}")
    _cache.get_or_build(folder, what, compile_host, _load_library, allow_build=build)


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch.utils.cpp_extension runs ``ninja`` from PATH; the ninja package
    (a dependency) installs it next to this Python, which is not on PATH when
    the venv is not activated."""
    old = os.environ.get("PATH", "")
    extra = [os.path.dirname(sys.executable)]
    with contextlib.suppress(ImportError):
        import ninja  # type: ignore[import-not-found]

        extra.insert(0, ninja.BIN_DIR)
    os.environ["PATH"] = os.pathsep.join(extra + [old])
    try:
        yield
    finally:
        os.environ["PATH"] = old
