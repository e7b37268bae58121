"""Running a test file's worker processes (the 2-rank gloo tests) and collecting
what they saved; shared by tests/test_ddp.py and tests/test_fsdp.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

import pytest
import torch


def run_workers(script: str, tmp: Path, world_size: int, timeout_s: float, what: str) -> List[Any]:
    """Start ``python script --worker RANK world_size rendezvous out`` for every
    rank, wait (failing fast when one rank dies or time runs out) and return
    each rank's ``torch.load``-ed result; on failure, fail the test with the
    tail of every rank's log."""
    import lossopt_cuda

    env = dict(os.environ)
    # The workers must import the same lossopt_cuda as this process.
    pkg_parent = str(Path(lossopt_cuda.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        [pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env["OMP_NUM_THREADS"] = "1"
    if "GLOO_SOCKET_IFNAME" not in env and Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # do not depend on the hostname resolving
    init_file = tmp / "rendezvous"  # must not exist yet
    procs, logs = [], []
    for rank in range(world_size):
        log = open(tmp / f"rank{rank}.log", "w+b")
        logs.append(log)
        cmd = [sys.executable, str(Path(script).resolve()), "--worker", str(rank),
               str(world_size), str(init_file), str(tmp / f"rank{rank}.pt")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))

    failure = None
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                failure = "a rank failed"  # do not wait for the other's timeout
                break
            if time.monotonic() > deadline:
                failure = f"timed out after {timeout_s:.0f} s"
                break
            time.sleep(0.05)
        if failure is None and any(p.returncode != 0 for p in procs):
            failure = "a rank failed"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    output = []
    for rank, log in enumerate(logs):
        log.seek(0)
        text = log.read().decode(errors="replace")
        log.close()
        output.append(f"--- rank {rank} (exit code {procs[rank].returncode}) ---\n{text[-5000:]}")
    if failure is not None:
        pytest.fail(f"{what} workers: {failure}\n" + "\n".join(output), pytrace=False)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(world_size)]
