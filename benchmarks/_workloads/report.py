"""The workloads report: one section per task (data, tables, curves, verdicts)."""

from __future__ import annotations

import math
import platform
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import finetune as finetune_study
from . import verdicts
from .loop import Record
from .study import TaskResult


def _pm(values: Sequence[float], digits: int = 4) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "diverged"
    m = statistics.fmean(finite)
    s = statistics.stdev(finite) if len(finite) > 1 else 0.0
    lost = len(values) - len(finite)
    return f"{m:.{digits}g} ± {s:.2g}" + (f" ({lost} diverged)" if lost else "")


def _to_target(records: List[Record], task, goal: float) -> str:
    hits = [r.first_reaching(goal, task.higher_better) for r in records]
    got = [h for h in hits if h]
    if not got:
        return "not reached"
    steps = statistics.median(h[0] for h in got)
    seconds = statistics.median(h[1] for h in got)
    return f"{steps:g} steps, {seconds:.1f} s" + (f" ({len(got)}/{len(hits)} seeds)" if len(got) < len(hits) else "")


def task_section(result: TaskResult, plot: str, n_parameters: int) -> List[str]:
    task = result.task
    lines = [f"## {task.title}", ""]
    for key, value in task.about.items():
        lines.append(f"- {key}: {value}")
    goal = verdicts.target(result.runs, task.higher_better)
    lines += [f"- model parameters: {n_parameters:,}; quality: {task.metric} "
              f"({'higher' if task.higher_better else 'lower'} is better); target {goal:.4g} "
              f"({verdicts.TARGET_FRACTION:.0%} of the way from step 0 to Adam's final)", ""]
    lines += ["| optimizer | chosen config | final " + task.metric + " | to the target | time/epoch | "
              "optimizer step share | state bytes/param |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, records in result.runs.items():
        epoch, share = result.epoch_seconds(name), result.timing[name].share
        per_param = records[0].state_bytes / n_parameters
        lines.append(f"| {name} | {records[0].candidate.label} | {_pm([r.final for r in records])} | "
                     f"{_to_target(records, task, goal)} | {epoch:.3g} s | {share:.0%} | {per_param:.2f} |")
    lines += ["", "Tuning (seed 0, every candidate):", ""]
    for name, records in result.tuning.items():
        tried = "; ".join(f"{r.candidate.label}: {r.final:.4g}" for r in records)
        lines.append(f"- {name}: {tried}")
    lines += ["", f"![{task.name}]({plot})", "", "Verdicts:", ""]
    decided = task_verdicts(result)
    for claim, v in decided:
        lines.append(f"- **{v['verdict']}**: {claim.text} ({claim.optimizer}): {v['numbers']}. Rule: {v['rule']}.")
    if not decided:
        lines.append("- no claim of the seeds concerns this task")
    return lines + [""]


def task_verdicts(result: TaskResult) -> List[Tuple[verdicts.Claim, Dict[str, str]]]:
    """Every claim of the seeds that concerns this task, with its verdict."""
    out = []
    for claim in verdicts.CLAIMS:
        if result.task.name in claim.tasks:
            v = verdicts.decide(claim, result.task, result.runs, result.timing)
            if v is not None:
                out.append((claim, v))
    return out


def glance(results: Dict[str, TaskResult], finetune=None) -> List[str]:
    """One table of every verdict, task by task (the sections give the numbers' context)."""
    lines = ["## Verdicts at a glance", "", "| task | claim | optimizer | verdict | numbers |",
             "| --- | --- | --- | --- | --- |"]
    for name, result in results.items():
        for claim, v in task_verdicts(result):
            lines.append(f"| {name} | {claim.text} | {claim.optimizer} | **{v['verdict']}** | {v['numbers']} |")
    if finetune is not None:
        v = finetune_study.verdict(finetune)
        lines.append(f"| finetune-docstrings | {finetune_study.CLAIM} | AdaLoss | **{v['verdict']}** | {v['numbers']} |")
    return lines + [""]


def write(results: Dict[str, TaskResult], plots: Dict[str, str], params: Dict[str, int], out: Path,
          preset, seconds: float, commit: str, finetune=None, pending: Sequence[str] = (),
          loads: Sequence[Optional[float]] = (None, None)) -> Path:
    lines = [
        f"# Real workloads ({preset.name} run)",
        "",
        f"- Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}",
        f"- Commit: {commit}; total time {seconds / 60:.1f} min; 1-minute load average {loads[0]} "
        f"before the run, {loads[1]} at this write (the run's own threads count)",
        f"- Preset: seeds {list(preset.seeds)}, {preset.candidates} candidate(s) per optimizer, "
        f"iterations {preset.steps}",
        "- Every optimizer gets the same tuning budget (its first candidates, the seeds' guidance "
        "first); the best by final quality on seed 0 then runs every seed.",
        "- Time per epoch: the median iteration, timed side by side (every optimizer's session "
        "stepped a few iterations in turn, round after round, the order rotated), times the "
        "iterations of an epoch; the optimizer step share is the time inside `step()` over the "
        "whole iteration. Wall-clock on this CPU. The epoch-time verdicts are decided on the "
        "median optimizer steps of the same side-by-side sessions (see their rule).",
        "",
    ]
    if pending:
        lines += [f"**Written part-way: still to run: {', '.join(pending)}.**", ""]
    if preset.name != "full":
        lines += [f"**A {preset.name} run: too short for its verdicts to mean anything about the "
                  "claims; they are computed to show the rules at work. The full run decides.**", ""]
    lines += glance(results, finetune)
    for name, result in results.items():
        lines += task_section(result, plots[name], params[name])
    if finetune is not None:
        lines += finetune_study.section(finetune)
    lines += ["## Speech", "", "Not tested: no spoken data ships offline in an installed package here, "
              "and synthesized digits (espeak-ng) are not installed on these machines.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
