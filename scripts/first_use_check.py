"""After a plain ``pip install``: the kernels are built on first use, then cached.

Run with the Python of a fresh environment in which this package was installed
with a plain ``pip install <checkout>`` (no kernels compiled at install), from a
folder outside the checkout; ``.ci/run`` does. Two processes, one after the
other, on an empty cache (``LOSSOPT_CACHE_DIR``, a new temporary folder unless
set): the first must compile the CPU kernels and step AdaLo, AdamL and AdaLoss
with ``fused=True``; the second must find them in the cache and compile nothing.
Prints both processes' wall-clock times. Exits non-zero on any failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

STEP = """
import json, torch, lossopt_cuda
from lossopt_cuda import AdaLo, AdaLoss, AdamL
before = lossopt_cuda.build_info()
for cls in (AdaLo, AdamL, AdaLoss):
    p = torch.nn.Parameter(torch.randn(4099))
    opt = cls([p], fused=True)
    for k in range(3):
        p.grad = torch.randn_like(p)
        opt.step(loss=torch.tensor(1.0 / (k + 1)))
    assert torch.isfinite(p).all()
print(json.dumps({"before": before, "after": lossopt_cuda.build_info()}))
"""


def run(env: dict) -> tuple[dict, str, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", STEP], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the process failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr, seconds


def main() -> None:
    env = dict(os.environ)
    env.setdefault("LOSSOPT_CACHE_DIR", tempfile.mkdtemp(prefix="lossopt-cache-"))
    first, err1, t1 = run(env)
    print(err1, end="")
    assert first["before"]["cpu_source"] is None, f"kernels were built at install: {first['before']}"
    assert first["after"]["cpu_source"] == "jit", first["after"]
    assert "compiling the CPU kernels" in err1, err1
    second, err2, t2 = run(env)
    assert "compiling" not in err2, err2
    assert second["after"]["cpu_source"] == "jit", second["after"]
    print(f"first process (builds the CPU kernels, {first['after']['cpu_isa']}): {t1:.1f} s; "
          f"second process (loads them from the cache): {t2:.1f} s")


if __name__ == "__main__":
    main()
