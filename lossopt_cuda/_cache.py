"""The cache of kernels built on first use, shared by processes.

Each build goes into one entry, a folder whose name holds everything the build
depends on (a hash of the sources and flags, the torch and Python versions,
the instruction set or GPU architecture), so that another torch or edited
sources get an entry of their own. A file lock per entry makes processes that
start together (the ranks of a DDP job) build once: the others wait, then
load. An entry counts as built only once its ``built.json`` is written, after
its files; a built entry that does not load is deleted and built again.

The cache is ``LOSSOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lossopt_cuda``, else
``~/.cache/lossopt_cuda``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Tuple


class BuildError(RuntimeError):
    """A build that could not run or failed; the message says why in one
    line (for a compiler, its first error and where the full log is)."""


def root() -> Path:
    if os.environ.get("LOSSOPT_CACHE_DIR"):
        return Path(os.environ["LOSSOPT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lossopt_cuda"


def entry(prefix: str, files: Iterable[Tuple[str, Path]], *parts: str) -> Path:
    """The entry ``<root>/<prefix>-<hash>`` of a build from ``files`` (name,
    path) and the strings ``parts`` (versions, flags, compiler)."""
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for part in parts:
        digest.update(part.encode() + b"\0")
    return root() / f"{prefix}-{digest.hexdigest()[:16]}"


def say(message: str) -> None:
    print(f"lossopt_cuda: {message}", file=sys.stderr, flush=True)


def _built(folder: Path) -> bool:
    return (folder / "built.json").is_file()


def _stamp(folder: Path) -> int:
    return (folder / "built.json").stat().st_mtime_ns


def get_or_build(
    folder: Path,
    what: str,
    build: Callable[[Path], Dict[str, object]],
    load: Callable[[Path], Optional[str]],
    allow_build: bool = True,
) -> None:
    """Load the entry ``folder``, building it first where it is not built (or
    does not load). ``build(folder)`` fills the empty folder and returns what
    to record in built.json; ``load(folder)`` loads it and returns None, or
    why it does not load. ``what`` names the build in messages. Raises
    BuildError, also when the entry is not built and not ``allow_build``."""
    failed = None  # the stamp of a built entry that did not load
    if _built(folder):
        why = load(folder)
        if why is None:
            return
        say(f"the cached {what} in {folder} do not load ({why}); building them again")
        failed = _stamp(folder)
    if not allow_build:
        raise BuildError(f"building them on first use is off (LOSSOPT_JIT=0) and the cache holds "
                         f"no {what} for this torch and machine ({folder})")
    from filelock import FileLock, Timeout  # a dependency of torch

    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"waiting for another process that is building the {what} into {folder}")
        lock.acquire()
    try:
        # Built (again) by the process we waited for?
        if _built(folder) and _stamp(folder) != failed and load(folder) is None:
            return
        if folder.exists():  # a broken or half-written entry: start clean
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        start = time.perf_counter()
        record = build(folder)
        record["seconds"] = round(time.perf_counter() - start, 1)
        (folder / "built.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    finally:
        lock.release()
    why = load(folder)
    if why is not None:
        raise BuildError(f"the {what} just built in {folder} do not load: {why}")


def first_error(output: str) -> str:
    """A compiler's first diagnostic (``...: error: ...``), else the first
    line that mentions an error, else the first line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    # "error:" as a word of its own (not "RuntimeError:"), then any "error".
    for wanted in (r"(?<![a-z])error:", r"error"):
        for line in lines:
            if re.search(wanted, line.lower()) and not line.startswith(("FAILED:", "ninja:", "[")):
                return line
    return lines[0] if lines else "no output"


def failed(folder: Path, what: str, output: str) -> BuildError:
    """The error of a failed build, its full output kept in build.log."""
    log = folder / "build.log"
    log.write_text(output + "\n", encoding="utf-8")
    return BuildError(f"building the {what} failed: {first_error(output)} (full log: {log})")
