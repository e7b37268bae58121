"""Tuning, seeds and timing: the runs behind every table of the workloads report.

Per task, every optimizer is tuned with the same budget: each of its first
``preset.candidates`` configurations trains once (seed 0, the full length);
the best final quality wins (a diverged run loses). The winner then trains
with every seed of the preset (seed 0's tuning run is reused).

Time per iteration is measured apart from those runs, side by side: one
session per optimizer (its chosen configuration), stepped a few iterations at
a time in turn, round after round with the order rotated, so that the
machine's drifts (other processes, clocks, caches) fall on every optimizer
alike. Separate runs are not comparable on these machines: two quick runs
gave the CNN's AdaLo/Adam time ratios of 0.90 and 1.19. Even side by side,
the whole iteration is the noisier number (forward and backward dominate it),
so the epoch-time verdict is decided on the optimizer steps' own times
(verdicts.py).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from tqdm import tqdm

from .loop import Record, Timing, run
from .optimizers import Candidate, candidates, quiet_skip_warnings
from .tasks import Preset


@dataclass
class TaskResult:
    task: object
    tuning: Dict[str, List[Record]] = field(default_factory=dict)  # optimizer -> one run per candidate
    runs: Dict[str, List[Record]] = field(default_factory=dict)    # optimizer -> the winner, per seed
    timing: Dict[str, Timing] = field(default_factory=dict)       # optimizer -> side by side

    def epoch_seconds(self, name: str) -> float:
        return self.timing[name].iteration * self.task.steps_per_epoch


def _score(record: Record, higher_better: bool) -> float:
    value = record.final
    if not math.isfinite(value):
        return -math.inf
    return value if higher_better else -value


def run_task(task, optimizers: Sequence[str], preset: Preset, progress: bool = True) -> TaskResult:
    result = TaskResult(task)
    steps = preset.steps[task.name]
    todo = candidates(optimizers, preset.candidates)
    bar = tqdm(total=len(todo) + len(optimizers) * (len(preset.seeds) - 1), desc=task.name,
               disable=not progress, leave=False)
    # A few discarded steps first: the first run of a process would otherwise
    # pay for warming up (allocator, thread pool, caches) in its step times.
    run(task, todo[0], preset.seeds[0], min(steps, 5), 1)
    for cand in todo:
        bar.set_postfix_str(f"{cand.optimizer} {cand.label}")
        result.tuning.setdefault(cand.optimizer, []).append(run(task, cand, preset.seeds[0], steps, preset.evals))
        bar.update()
    for name in optimizers:
        best = max(result.tuning[name], key=lambda r: _score(r, task.higher_better))
        result.runs[name] = [best]
        for seed in preset.seeds[1:]:
            bar.set_postfix_str(f"{name} seed {seed}")
            result.runs[name].append(run(task, best.candidate, seed, steps, preset.evals))
            bar.update()
    bar.close()
    result.timing = time_side_by_side(task, {n: result.runs[n][0].candidate for n in optimizers},
                                      preset.seeds[0], preset.timing_rounds)
    return result


def time_side_by_side(task, chosen: Dict[str, "Candidate"], seed: int, rounds: int,
                      per_turn: int = 3) -> Dict[str, Timing]:
    """Median seconds per iteration and per optimizer step, for each optimizer, stepped ``per_turn`` iterations in turn for ``rounds``
    rounds (the order rotated each round), after two warm-up iterations each."""
    sessions = {name: task.session(c, seed) for name, c in chosen.items()}
    names = list(sessions)
    seconds: Dict[str, List[float]] = {n: [] for n in names}
    in_step: Dict[str, List[float]] = {n: [] for n in names}
    with quiet_skip_warnings():
        for name in names:
            for _ in range(2):
                sessions[name].train_step()
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                for _ in range(per_turn):
                    start = time.perf_counter()
                    _, opt_seconds = sessions[name].train_step()
                    seconds[name].append(time.perf_counter() - start)
                    in_step[name].append(opt_seconds)
    return {n: Timing(statistics.median(seconds[n]), statistics.median(in_step[n]),
                      sum(in_step[n]) / sum(seconds[n])) for n in names}
