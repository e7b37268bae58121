"""The CUDA kernels' own code, run on the host: see tests/cpp/main.cpp.

The kernel sources (csrc/cuda/mta_plan.h, rule_functor.h, updates.h,
csrc/advance.h, csrc/rules/) are compiled by the system C++ compiler against
the CUDA toolkit's headers only, under AddressSanitizer and
UndefinedBehaviorSanitizer, once as C++ specifies (as nvcc and NVRTC compile
the kernels, ``--fmad=false``) and once with ``-ffp-contract=fast`` (nvcc's
default), and every block and thread
of every planned launch runs on the CPU against a float64 reference written
from ALGORITHMS.md. No GPU, no torch. Fresh random inputs each run; set
LOSSOPT_HOST_TEST_SEED to repeat one.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

BUILD = Path(__file__).resolve().parent / "cpp" / "build.py"
_spec = importlib.util.spec_from_file_location("kernels_host_build", BUILD)
host_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(host_build)

_missing = []
if host_build.find_compiler() is None:
    _missing.append("no C++ compiler ($CXX, c++, g++ or clang++)")
if host_build.find_cuda_include() is None:
    _missing.append("no CUDA headers (cuda_fp16.h, cuda_bf16.h: $CUDA_HOME/include, "
                    "/usr/local/cuda/include or torch's nvidia/cu* wheels)")


@pytest.mark.slow
@pytest.mark.skipif(bool(_missing), reason="host test of the CUDA kernels: " + "; ".join(_missing))
def test_cuda_kernels_on_the_host():
    exes = host_build.build()
    seed = int(os.environ.get("LOSSOPT_HOST_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    # Both programs at once: each is single-threaded.
    procs = {
        variant: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=host_build.run_env())
        for variant, cmd in host_build.commands(exes, seed).items()
    }
    outputs = {variant: p.communicate(timeout=600)[0] for variant, p in procs.items()}
    report = "\n".join(f"--- {v} (exit {procs[v].returncode}) ---\n{out[-6000:]}" for v, out in outputs.items())
    assert set(outputs) == {"exact", "fast"}
    for variant, p in procs.items():
        assert p.returncode == 0, f"LOSSOPT_HOST_TEST_SEED={seed}\n{report}"
        assert "PASSED: 0 failed checks" in outputs[variant], report
    print(report)
