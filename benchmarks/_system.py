"""Facts about the run that every benchmark report records: the commit, the
machine, its load. Shared by step_time.py, workloads.py, seed_claims.py and
instruction_counts.py, so that every report says the same things the same way."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

import torch

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> Optional[str]:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit() -> Optional[str]:
    """The full hash of HEAD; None outside a git checkout."""
    return _git("rev-parse", "HEAD")


def git_dirty() -> Optional[bool]:
    """Whether tracked files differ from HEAD (untracked files, such as the
    outputs a run is writing, do not count); None outside a git checkout."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out)


def commit_label() -> str:
    """The short commit, marked when the tree had uncommitted changes: for a report's header."""
    head = _git("rev-parse", "--short", "HEAD")
    if head is None:
        return "unknown"
    return f"{head} (with uncommitted changes)" if git_dirty() else head


def cpu_info() -> Dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {"processor": platform.processor(), "model_name": model, "cpu_count": os.cpu_count(),
            "usable_cpus": usable, "torch_threads": torch.get_num_threads(), "machine": platform.machine()}


def load_average() -> Optional[float]:
    """1-minute load average, before and after the run (this run's own load
    counts too, so compare it with the thread count)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_info()["model_name"] or platform.processor() or "cpu"
