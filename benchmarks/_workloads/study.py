"""Tuning and seeds: the runs behind every table of the workloads report.

Per task, every optimizer is tuned with the same budget: each of its first
``preset.candidates`` configurations trains once (seed 0, the full length);
the best final quality wins (a diverged run loses). The winner then trains
with every seed of the preset (seed 0's tuning run is reused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from tqdm import tqdm

from .loop import Record, run
from .optimizers import Candidate, candidates
from .tasks import Preset


@dataclass
class TaskResult:
    task: object
    tuning: Dict[str, List[Record]] = field(default_factory=dict)  # optimizer -> one run per candidate
    runs: Dict[str, List[Record]] = field(default_factory=dict)    # optimizer -> the winner, per seed


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
    return result
