"""What this installation was built with, and which devices have compiled kernels.

The compiled extension ``lossopt_cuda._C`` is optional: without it every
optimizer runs on its ``foreach`` or for-loop path.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

try:  # the compiled kernels arrive with the native build
    from . import _C  # type: ignore[attr-defined]
except ImportError:  # a pure-Python install
    _C = None


def build_info() -> Dict[str, Any]:
    """Describe the compiled kernels of this installation.

    Keys: ``cpu_kernels`` (bool), ``cuda`` (bool: CUDA kernels built),
    ``cuda_version`` (str or None), ``cuda_archs`` (list such as ``["8.0", "9.0"]``),
    ``torch_version`` (the torch this process runs).
    """
    info: Dict[str, Any] = {
        "cpu_kernels": False,
        "cuda": False,
        "cuda_version": None,
        "cuda_archs": [],
        "torch_version": torch.__version__,
    }
    if _C is not None:
        info.update(_C.build_info())
    return info


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
