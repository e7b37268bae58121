"""Counting steps skipped for a bad loss, and telling the user, without a GPU sync.

The count lives on the device (one add per step). To report it, each step
starts an asynchronous copy of the count into pinned host memory and reads the
copy the *previous* step started, if it has landed (``Event.query()`` never
waits). A bad loss on a GPU is therefore reported one or two steps later; on the
CPU it is reported in the same ``step()`` call.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Dict, Optional

import torch


class _DeviceCount:
    def __init__(self, device: torch.device) -> None:
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self._prepare_reads()

    def _prepare_reads(self) -> None:
        """How the count is read, from where it is: directly on the CPU; on a
        GPU through a pinned host copy and an event, never by waiting."""
        self.on_cpu = self.count.device.type == "cpu"
        self.event: Optional[torch.cuda.Event] = None
        self.snapshot: Optional[torch.Tensor] = (
            torch.zeros((), dtype=torch.int64, pin_memory=True)
            if self.count.device.type == "cuda" else None)

    def __getstate__(self) -> dict:
        # A CUDA event cannot be pickled or copied: a copy issues its own read.
        return {**self.__dict__, "event": None, "snapshot": None}

    def __setstate__(self, state: dict) -> None:
        # The count may have been loaded onto another device (map_location),
        # and a copied snapshot is no longer pinned (its copy would block).
        self.__dict__.update(state)
        self._prepare_reads()

    def read_without_waiting(self) -> Optional[int]:
        """The count as of some recent step, or None if no copy has landed yet."""
        if self.on_cpu:
            return int(self.count)
        if self.snapshot is None:  # a device we cannot copy from asynchronously
            return None
        seen = None
        if self.event is not None and self.event.query():
            seen = int(self.snapshot)
        if self.event is None or seen is not None:
            # Copy and event on the stream that wrote the count, so the event
            # fires only once the copy has landed.
            stream = torch.cuda.current_stream(self.count.device)
            with torch.cuda.stream(stream):
                self.snapshot.copy_(self.count, non_blocking=True)
                self.event = torch.cuda.Event()
                self.event.record(stream)
        return seen


class SkipCounter:
    """Per-device counters of skipped steps plus a host counter for Python-number losses."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._devices: Dict[torch.device, _DeviceCount] = {}
        self._host = 0
        self._reported = 0
        self._next_warning = 1  # warn at 1, 2, 4, 8, ... skips: never a flood

    def counter(self, device: torch.device) -> torch.Tensor:
        """The device's count (a 0-d int64 tensor), for the compiled advance
        ops to increment in place."""
        counter = self._devices.get(device)
        if counter is None:
            counter = self._devices[device] = _DeviceCount(device)
        return counter.count

    def record(self, invalid: torch.Tensor) -> None:
        """Add ``invalid`` (a 0-d bool tensor on the device) to the count."""
        # A view: see _reference.write_.
        self.counter(invalid.device).view(1).add_(invalid.view(1))

    def record_host(self) -> None:
        """Count a skip already known on the host (a Python-number loss)."""
        self._host += 1
        self.poll()

    def poll(self) -> None:
        """Warn if the count grew since the last warning; never waits for a device."""
        if torch.compiler.is_compiling() or _capturing():
            return
        seen = self._host
        for counter in self._devices.values():
            value = counter.read_without_waiting()
            if value is None:
                return  # some device has not reported yet: try again next step
            seen += value
        if seen >= self._next_warning:
            warnings.warn(
                f"{self.owner}: {seen} step(s) skipped so far because the loss was NaN, "
                "infinite or outside the rule's domain; those steps changed no parameter "
                "and no optimizer state (next warning at "
                f"{2 * seen} skips; `skipped_steps` has the exact count).",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            self._reported = seen
            self._next_warning = 2 * seen

    def total(self) -> int:
        """The exact count; waits for the devices (do not call it every step)."""
        return self._host + sum(int(c.count) for c in self._devices.values())


_LIBRARY_DIRS = (
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.abspath(torch.__file__)),
)


def user_stacklevel() -> int:
    """The stacklevel of the first frame outside this package and torch (the
    user's ``step()`` call), so the warning points there and filters by module work."""
    frame, level = sys._getframe(1), 1  # the caller of this function is level 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def _capturing() -> bool:
    # Never initialise CUDA just to ask (a CPU-only run must not touch the driver).
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()
