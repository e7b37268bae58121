"""The one training loop every workload runs: steps, timing, curves."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Tuple

import torch

from .optimizers import Candidate, quiet_skip_warnings, state_bytes


class Session(Protocol):
    """One training run of a task with one candidate and seed (tasks.py)."""

    optimizers: List[torch.optim.Optimizer]

    def train_step(self) -> Tuple[float, float]:
        """One iteration; returns (training loss, seconds spent in optimizer steps)."""

    def evaluate(self) -> float:
        """The task's quality measure now."""


@dataclass
class Record:
    """What one run measured."""

    task: str
    candidate: Candidate
    seed: int
    steps_per_epoch: int
    curve: List[Tuple[int, float, float]] = field(default_factory=list)   # step, seconds, loss
    evals: List[Tuple[int, float, float]] = field(default_factory=list)   # step, seconds, metric
    step_seconds: List[float] = field(default_factory=list)
    opt_seconds: List[float] = field(default_factory=list)
    state_bytes: int = 0
    diverged: bool = False

    @property
    def final(self) -> float:
        return self.evals[-1][2] if self.evals and not self.diverged else float("nan")

    @property
    def epoch_seconds(self) -> float:
        """The median step time (the first steps, warm-up, left out) times the steps of an epoch."""
        times = sorted(self.step_seconds[min(3, len(self.step_seconds) - 1):])
        return times[len(times) // 2] * self.steps_per_epoch if times else float("nan")

    @property
    def opt_share(self) -> float:
        total = sum(self.step_seconds)
        return sum(self.opt_seconds) / total if total > 0 else float("nan")

    def first_reaching(self, target: float, higher_better: bool) -> Optional[Tuple[int, float]]:
        """(step, seconds) of the first evaluation at or beyond ``target``."""
        for step, seconds, metric in self.evals:
            if (metric >= target) if higher_better else (metric <= target):
                return step, seconds
        return None

    def to_json(self) -> Dict[str, Any]:
        return {
            "task": self.task, "optimizer": self.candidate.optimizer, "config": self.candidate.label,
            "seed": self.seed, "final": self.final, "diverged": self.diverged,
            # this run's own timing; the report's is side by side (study.py)
            "epoch_seconds_in_run": self.epoch_seconds, "opt_share_in_run": self.opt_share,
            "state_bytes": self.state_bytes, "curve": self.curve, "evals": self.evals,
        }


@dataclass(frozen=True)
class Timing:
    """One optimizer's side-by-side timing: medians over the timed iterations."""

    iteration: float  # seconds per training iteration (forward, backward, step)
    step: float       # seconds inside the optimizer step
    share: float      # total step time over total iteration time

    def to_json(self) -> Dict[str, float]:
        return {"iteration": self.iteration, "step": self.step, "share": self.share}


def run(task: Any, candidate: Candidate, seed: int, steps: int, evals: int) -> Record:
    """Train ``task`` with ``candidate`` for ``steps`` iterations, evaluating
    ``evals`` times (evenly, the last at the end). A non-finite loss stops the
    run as diverged."""
    session = task.session(candidate, seed)
    record = Record(task.name, candidate, seed, task.steps_per_epoch)
    every = max(1, steps // max(1, evals))
    elapsed = 0.0
    record.evals.append((0, 0.0, session.evaluate()))
    with quiet_skip_warnings():  # divergence is detected and reported here instead
        for k in range(1, steps + 1):
            start = time.perf_counter()
            loss, opt_seconds = session.train_step()
            seconds = time.perf_counter() - start
            elapsed += seconds
            record.step_seconds.append(seconds)
            record.opt_seconds.append(opt_seconds)
            record.curve.append((k, elapsed, loss))
            if not math.isfinite(loss):
                record.diverged = True
                break
            if k % every == 0 or k == steps:
                record.evals.append((k, elapsed, session.evaluate()))
    record.state_bytes = sum(state_bytes(o) for o in session.optimizers)
    return record
