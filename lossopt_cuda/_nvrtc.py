"""The CUDA kernels without nvcc: the device code compiled with NVRTC.

torch's CUDA wheels bring what a compile at run time needs: NVRTC
(``libnvrtc.so``), the CUDA runtime and the CUDA headers (under
``site-packages/nvidia/cu<major>/``), and a CUDA toolkit has the same under
``CUDA_HOME``. Where the install compiled no CUDA kernels, this module compiles
``csrc/cuda/nvrtc_kernels.cu`` (the same device code as the nvcc build, every
kernel under a plain name) into a cubin per GPU architecture, in the cache
(:mod:`lossopt_cuda._cache`); no GPU is needed to compile. The CUDA host
library (:mod:`lossopt_cuda._jit`) loads the cubins and launches the kernels.
"""

from __future__ import annotations

import ctypes
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from . import _cache, _compile_flags, _jit

BuildError = _cache.BuildError
DEVICE_SOURCE = "cuda/nvrtc_kernels.cu"


@dataclass(frozen=True)
class CudaToolkit:
    """Where NVRTC, the CUDA runtime and headers of torch's CUDA version are."""

    version: str        # torch.version.cuda
    lib_dir: Path       # libnvrtc, libnvrtc-builtins, libcudart
    include_dir: Path   # cuda_runtime_api.h, cuda_fp16.h, cuda_bf16.h
    nvrtc: Path
    cudart: Path
    torch_lib: Path     # libtorch_cuda, libc10_cuda
    #: Where the host compiler finds crt/host_defines.h and the rest of crt/,
    #: which cuda_runtime_api.h includes: torch's CUDA wheels leave them out
    #: (they come with nvidia-cuda-crt or a toolkit); triton, which torch's
    #: Linux wheels require, ships them.
    crt_include_dir: Optional[Path]

    def host_include_dirs(self) -> List[str]:
        dirs = [self.include_dir]
        if self.crt_include_dir is not None and self.crt_include_dir != self.include_dir:
            dirs.append(self.crt_include_dir)
        return [str(d) for d in dirs]


def _candidates(major: str) -> Iterable[tuple]:
    """(lib, include) folders to look in, torch's wheels first."""
    import os
    import site

    sites = list(dict.fromkeys([*sys.path, *site.getsitepackages()]))
    for base in sites:
        yield Path(base, "nvidia", f"cu{major}", "lib"), Path(base, "nvidia", f"cu{major}", "include")
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            yield Path(home, "lib64"), Path(home, "include")


def _first(folder: Path, pattern: str) -> Optional[Path]:
    found = sorted(p for p in folder.glob(pattern) if ".alt." not in p.name)
    return found[0] if found else None


def find_toolkit() -> CudaToolkit:
    """NVRTC, the runtime and the headers for this torch's CUDA version. Raises BuildError."""
    import torch

    if torch.version.cuda is None:
        raise BuildError(f"torch {torch.__version__} is not a CUDA build")
    major = torch.version.cuda.split(".")[0]
    for lib_dir, include_dir in _candidates(major):
        nvrtc = _first(lib_dir, f"libnvrtc.so.{major}*")
        cudart = _first(lib_dir, f"libcudart.so.{major}*")
        headers = all((include_dir / h).is_file() for h in ("cuda_runtime_api.h", "cuda_fp16.h", "cuda_bf16.h"))
        if nvrtc and cudart and headers and _first(lib_dir, "libnvrtc-builtins.so.*"):
            return CudaToolkit(torch.version.cuda, lib_dir, include_dir, nvrtc, cudart,
                               Path(torch.__file__).parent / "lib", _crt_include_dir(include_dir, major))
    raise BuildError(f"NVRTC and the CUDA {major} headers were not found (torch's CUDA wheels "
                     f"put them in site-packages/nvidia/cu{major}; a toolkit, under CUDA_HOME)")


def _crt_include_dir(include_dir: Path, major: str) -> Optional[Path]:
    """A folder with crt/host_defines.h of this CUDA major version: the
    headers' own, else triton's (see CudaToolkit.crt_include_dir)."""
    candidates = [include_dir]
    try:
        import triton  # type: ignore[import-not-found]

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "include")
    except ImportError:
        pass
    for folder in candidates:
        header = folder / "cuda_runtime_api.h"
        if (folder / "crt" / "host_defines.h").is_file() and header.is_file():
            version = re.search(r"#define CUDART_VERSION\s+(\d+)", header.read_text(errors="replace"))
            if version and int(version.group(1)) // 1000 == int(major):
                return folder
    return None


def arch_name(arch: str) -> str:
    """``"9.0"`` -> ``"sm_90"`` (also ``"90"``, ``"9.0a"``). Raises ValueError."""
    m = re.fullmatch(r"(\d+)\.?(\d)([a-z]?)", arch.strip().replace("+PTX", ""))
    if not m:
        raise ValueError(f"not a CUDA architecture: {arch!r} (expected e.g. 8.0 or 9.0)")
    return f"sm_{m.group(1)}{m.group(2)}{m.group(3)}"


def normal_arch(arch: str) -> str:
    """``"90"``, ``"9.0"``, ``"9.0+PTX"`` -> ``"9.0"`` (``"9.0a"`` keeps its suffix)."""
    name = arch_name(arch)[3:]
    return f"{name[:-1]}.{name[-1]}" if name[-1].isdigit() else f"{name[:-2]}.{name[-2:]}"


def arch_number(arch: str) -> int:
    """``"9.0"`` -> 90, as compute capability major * 10 + minor."""
    return int(re.sub(r"\D", "", arch_name(arch)))


class Nvrtc:
    """The few NVRTC calls a compile needs, through ctypes."""

    def __init__(self, toolkit: CudaToolkit) -> None:
        # NVRTC opens its builtins library by name: load it first, globally.
        ctypes.CDLL(str(_first(toolkit.lib_dir, "libnvrtc-builtins.so.*")), mode=ctypes.RTLD_GLOBAL)
        self.lib = ctypes.CDLL(str(toolkit.nvrtc))

    def version(self) -> str:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        return f"{major.value}.{minor.value}"

    def compile(self, source: str, name: str, options: List[str], output: str = "CUBIN") -> tuple:
        """(the compiled code or None, log); ``output``: "CUBIN" (with an
        sm_XY architecture) or "PTX" (with compute_XY)."""
        prog = ctypes.c_void_p()
        rc = self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None)
        if rc != 0:
            return None, f"nvrtcCreateProgram failed ({rc})"
        try:
            opts = [o.encode() for o in options]
            rc = self.lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
            size = ctypes.c_size_t()
            self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetProgramLog(prog, log)
            if rc != 0:
                return None, log.value.decode(errors="replace") or f"nvrtcCompileProgram failed ({rc})"
            getattr(self.lib, f"nvrtcGet{output}Size")(prog, ctypes.byref(size))
            code = ctypes.create_string_buffer(size.value)
            getattr(self.lib, f"nvrtcGet{output}")(prog, code)
            return code.raw, log.value.decode(errors="replace")
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


def options(toolkit: CudaToolkit, src: Path, arch: str) -> List[str]:
    """NVRTC's options: -O3 is its default, as nvcc's -O3 in setup.py; no
    multiply-add contraction, as there (_compile_flags)."""
    return [f"--gpu-architecture={arch_name(arch)}", "-std=c++17", *_compile_flags.NVRTC_FLAGS,
            f"-I{toolkit.include_dir}", f"-I{src / 'cuda'}"]


def compile_cubins(toolkit: CudaToolkit, archs: Iterable[str], build: bool = True) -> Dict[str, Path]:
    """The cubin of every architecture in ``archs`` (``"9.0"``...), from the
    cache or compiled now (where ``build``). Raises BuildError."""
    src = _jit.require_sources()
    nvrtc = Nvrtc(toolkit)
    out = {}
    for arch in archs:
        name = arch_name(arch)
        what = f"CUDA kernels ({name}, NVRTC {nvrtc.version()})"

        def compile_one(folder: Path, arch: str = arch, what: str = what) -> dict:
            _cache.say(f"compiling the {what} into {folder}: a few seconds")
            cubin, log = nvrtc.compile((src / DEVICE_SOURCE).read_text(), str(src / DEVICE_SOURCE),
                                       options(toolkit, src, arch))
            if cubin is None:
                raise _cache.failed(folder, what, log)
            (folder / "kernels.cubin").write_bytes(cubin)
            return {"arch": arch, "nvrtc": nvrtc.version(), "cuda": toolkit.version, "sources": str(src)}

        folder = _cache.entry(f"cubin-{name}-nvrtc{nvrtc.version()}", _jit.source_files(src),
                              toolkit.version, " ".join(options(toolkit, Path("."), arch)))
        _cache.get_or_build(folder, what, compile_one, _cubin_present, allow_build=build)
        out[arch] = folder / "kernels.cubin"
    return out


def _cubin_present(folder: Path) -> Optional[str]:
    cubin = folder / "kernels.cubin"
    return None if cubin.is_file() and cubin.stat().st_size > 0 else "kernels.cubin is missing or empty"
