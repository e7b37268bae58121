"""What the installation built, as build_info() reports it.

The fused tests are parametrized only where kernels exist, so a build that
silently fell back to pure Python would pass them vacuously: this file makes
such an install fail the suite wherever a C++ compiler is present.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import lossopt_cuda


def test_build_info_keys_and_types():
    info = lossopt_cuda.build_info()
    assert isinstance(info["cpu_kernels"], bool)
    assert isinstance(info["cuda"], bool)
    assert info["cuda_version"] is None or isinstance(info["cuda_version"], str)
    assert isinstance(info["cuda_archs"], list) and all(isinstance(a, str) for a in info["cuda_archs"])
    assert info["torch_version"] == torch.__version__
    assert info["cpu_isa"] in (None, "DEFAULT", "AVX2", "AVX512")
    assert (info["cpu_isa"] is None) == (not info["cpu_kernels"])
    assert info["cpu_source"] in ("install", "jit") if info["cpu_kernels"] else info["cpu_source"] is None
    assert info["cuda_source"] in ("install", "jit", "nvrtc") if info["cuda"] else info["cuda_source"] is None
    assert (info["cpu_missing"] is None) == info["cpu_kernels"]
    assert isinstance(info["cache_dir"], str)
    if info["cuda"]:
        assert info["cuda_archs"] and info["cuda_version"]


def test_build_info_returns_a_fresh_dict():
    first = lossopt_cuda.build_info()
    first["cuda_archs"].append("0.0")
    first["cpu_kernels"] = "changed"
    second = lossopt_cuda.build_info()
    assert "0.0" not in second["cuda_archs"] and second["cpu_kernels"] != "changed"


@pytest.mark.skipif(
    os.environ.get("LOSSOPT_BUILD", "auto").lower() == "none" or shutil.which("c++") is None,
    reason="a pure-Python install was asked for, or there is no C++ compiler",
)
def test_cpu_kernels_were_built():
    assert lossopt_cuda.build_info()["cpu_kernels"], (
        "a C++ compiler is present but the CPU kernels are missing: reinstall with "
        "`pip install --no-build-isolation -v .` and read the 'lossopt-cuda build:' lines"
    )


def test_cpu_kernels_match_torch_capability():
    info = lossopt_cuda.build_info()
    if not info["cpu_kernels"]:
        pytest.skip("no CPU kernels in this install")
    capability = torch.backends.cpu.get_cpu_capability()
    # The loaded module is never for a wider instruction set than torch runs.
    order = ["DEFAULT", "AVX2", "AVX512"]
    allowed = order[: order.index(capability) + 1] if capability in order else ["DEFAULT"]
    assert info["cpu_isa"] in allowed
