"""What this installation was built with, and where its compiled kernels can run.

The compiled modules are optional: without them every optimizer runs on its
``foreach`` or for-loop path. ``lossopt_cuda._C`` holds the operator schemas and
the CUDA kernels; the CPU kernels are built once per instruction set
(``_cpu_default``, ``_cpu_avx2``, ``_cpu_avx512``) and the one matching torch's
own CPU capability (``torch.backends.cpu.get_cpu_capability()``, which honours
``ATEN_CPU_CAPABILITY``) is imported.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Dict, Optional, Tuple

import torch

try:  # importing it registers the torch.ops.lossopt operators
    from . import _C  # type: ignore[attr-defined]  # noqa: F401
except ImportError:  # a pure-Python install
    _C = None

# Best first; each is tried only where torch itself runs that capability.
_CPU_MODULES = {"AVX512": ("avx512", "avx2", "default"), "AVX2": ("avx2", "default")}


def _load_cpu_kernels() -> Tuple[Optional[ModuleType], Optional[str]]:
    """Import (and so register) the best CPU kernel module this CPU can run."""
    if _C is None:
        return None, None
    capability = torch.backends.cpu.get_cpu_capability()
    for isa in _CPU_MODULES.get(capability, ("default",)):
        try:
            return importlib.import_module(f"{__package__}._cpu_{isa}"), isa.upper()
        except ImportError:
            continue
    return None, None


_CPU_KERNELS, _CPU_ISA = _load_cpu_kernels()

#: Parameter dtypes each device's kernels take.
FUSED_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}


def build_info() -> Dict[str, Any]:
    """Describe the compiled kernels of this installation.

    Keys: ``cpu_kernels`` (bool), ``cpu_isa`` (the instruction set the loaded
    CPU kernels were compiled for, or None), ``cuda`` (bool: CUDA kernels built),
    ``cuda_version`` (str or None), ``cuda_archs`` (list such as ``["8.0", "9.0"]``),
    ``torch_version`` (the torch this process runs). Returns a fresh dict each call.
    """
    return {**_INFO, "cuda_archs": list(_INFO["cuda_archs"])}


def _read_build_info() -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "cpu_kernels": _CPU_KERNELS is not None,
        "cpu_isa": _CPU_ISA,
        "cuda": False,
        "cuda_version": None,
        "cuda_archs": [],
        "torch_version": torch.__version__,
    }
    if _C is not None:
        fields = dict(item.split("=", 1) for item in torch.ops.lossopt.build_info().split(";"))
        info["cuda"] = fields.get("cuda") == "1"
        info["cuda_version"] = fields.get("cuda_version")
        info["cuda_archs"] = [a for a in fields.get("cuda_archs", "").split(",") if a]
    return info


# Read once at import: step() consults it, and torch.compile cannot trace the
# string-returning build_info op.
_INFO = _read_build_info()


def fused_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a compiled kernel can step parameters of this device and dtype."""
    built = {"cpu": _INFO["cpu_kernels"], "cuda": _INFO["cuda"]}.get(device.type, False)
    return built and dtype in FUSED_DTYPES.get(device.type, ())


def require_kernels(owner: str) -> None:
    """Raise a clear error when ``fused=True`` is asked of an install without kernels."""
    info = build_info()
    if not (info["cpu_kernels"] or info["cuda"]):
        raise RuntimeError(
            f"{owner}(fused=True): this installation of lossopt_cuda has no compiled "
            "kernels (build_info() reports none). Reinstall with a C++ compiler "
            "available (`pip install --no-build-isolation .`), or use fused=None to "
            "fall back to the foreach path."
        )
