"""Study: training with bfloat16 parameters, with and without float32 copies.

The claim (the bf16-state issue): bfloat16 parameters written with stochastic
rounding, with bfloat16 optimizer state, reach the loss of float32 master
weights with float32 state, within a stated margin, and beat bfloat16
parameters written with round-to-nearest (which lose every update smaller than
half a bfloat16 ulp).

Every storage trains the same model from the same initial weights (rounded to
bfloat16 where stored so) on the same batches, seed by seed. The parameters
are stored in bfloat16 and the forward pass runs in float32 on copies of them
(tasks.StoredIn): what differs between storages is only how each update is
written. This module owns the runs, the numbers, the verdicts, the figure and
the report section.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from .loop import Record, run  # noqa: E402
from .optimizers import Candidate  # noqa: E402


@dataclass(frozen=True)
class Storage:
    name: str
    dtype: torch.dtype
    options: Dict[str, Any] = field(default_factory=dict)


REFERENCE = "bf16 parameters, float32 master weights and state"
ROUND_TO_NEAREST = "bf16 parameters, round to nearest, float32 state"
STOCHASTIC = "bf16 parameters and state, stochastic rounding"
STORAGES = (
    Storage("float32 parameters and state", torch.float32),
    Storage(REFERENCE, torch.bfloat16, {"master_weights": True}),
    Storage(ROUND_TO_NEAREST, torch.bfloat16),
    Storage(STOCHASTIC, torch.bfloat16, {"stochastic_rounding": True, "state_dtype": torch.bfloat16}),
)
#: The optimizers and their settings (the seeds' guidance, as in optimizers.candidates).
RULES = {"AdaLo (compliant)": {"kappa": "0.25L0"}, "AdamL": {"lr": 1e-3}, "AdaLoss": {"lr": 0.1}}
#: "Reaches the loss of": the mean final training loss within this fraction of the reference's.
MARGIN = 0.05
#: "Beats round to nearest": lower by more than this fraction of its loss, and by more than the seeds' spread.
BEAT = 0.01
#: The final training loss: the mean over this last fraction of the steps (one step's loss is noisy).
TAIL = 0.1


@dataclass
class PrecisionResult:
    task: Any
    steps: int
    runs: Dict[Tuple[str, str], List[Record]] = field(default_factory=dict)  # (rule, storage) -> per seed


class _Stored:
    """A task whose sessions store the parameters in ``dtype`` (for loop.run)."""

    def __init__(self, task: Any, dtype: torch.dtype) -> None:
        self.task, self.dtype = task, dtype

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def session(self, candidate: Candidate, seed: int):
        return self.task.session(candidate, seed, self.dtype)


def run_study(task: Any, steps: int, seeds: Sequence[int], evals: int, progress: bool = True) -> PrecisionResult:
    result = PrecisionResult(task, steps)
    todo = [(rule, storage, seed) for rule in RULES for storage in STORAGES for seed in seeds]
    for rule, storage, seed in tqdm(todo, desc="precision", disable=not progress, leave=False):
        candidate = Candidate(rule, storage.name, RULES[rule], storage.options)
        record = run(_Stored(task, storage.dtype), candidate, seed, steps, evals)
        result.runs.setdefault((rule, storage.name), []).append(record)
    return result


# ---------------------------------------------------------------- numbers


def final_loss(record: Record) -> float:
    """Mean training loss over the last TAIL of the steps (NaN if diverged)."""
    if record.diverged or not record.curve:
        return math.nan
    tail = record.curve[-max(1, int(len(record.curve) * TAIL)):]
    return statistics.fmean(loss for _, _, loss in tail)


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def numbers(result: PrecisionResult) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for (rule, storage), records in result.runs.items():
        out.setdefault(rule, {})[storage] = {
            "final_loss": [final_loss(r) for r in records],
            "final_metric": [r.final for r in records],
            "state_bytes": records[0].state_bytes,
            "seconds": [r.curve[-1][1] if r.curve else math.nan for r in records],
        }
    return out


# ---------------------------------------------------------------- verdicts


def verdicts(result: PrecisionResult) -> List[Dict[str, str]]:
    """Per rule: does stochastic rounding reach the reference, and beat round-to-nearest?"""
    out = []
    for rule in RULES:
        sr = _mean_std([final_loss(r) for r in result.runs[(rule, STOCHASTIC)]])
        ref = _mean_std([final_loss(r) for r in result.runs[(rule, REFERENCE)]])
        rn = _mean_std([final_loss(r) for r in result.runs[(rule, ROUND_TO_NEAREST)]])
        if not all(math.isfinite(v[0]) for v in (sr, ref, rn)):
            out.append({"rule": rule, "reaches": "not decided", "beats": "not decided",
                        "numbers": "a run diverged"})
            continue
        reaches = "holds" if sr[0] <= ref[0] * (1 + MARGIN) else "does not hold"
        # Beating round to nearest: lower by more than the seeds' spread of both
        # (and than BEAT of its loss: one seed has no spread).
        spread = max(sr[1] + rn[1], BEAT * abs(rn[0]))
        beats = ("holds" if sr[0] < rn[0] - spread else
                 "does not hold" if sr[0] > rn[0] + spread else "a draw")
        out.append({"rule": rule, "reaches": reaches, "beats": beats,
                    "numbers": f"final training loss {sr[0]:.4g} ± {sr[1]:.2g} with stochastic rounding, "
                               f"{ref[0]:.4g} ± {ref[1]:.2g} with float32 master weights and state, "
                               f"{rn[0]:.4g} ± {rn[1]:.2g} with round to nearest"})
    return out


RULE_TEXT = (f"reaches: the mean final training loss (the mean over the last {TAIL:.0%} of the steps) "
             f"at most {MARGIN:.0%} above the float32-master run's; beats: below round to nearest's by "
             f"more than the two runs' seed standard deviations added and more than {BEAT:.0%} of it "
             "(within that: a draw)")


# ---------------------------------------------------------------- figure


def figure(result: PrecisionResult, out: Path) -> str:
    rules = list(RULES)
    fig, axes = plt.subplots(1, len(rules), figsize=(5 * len(rules), 4), squeeze=False)
    for ax, rule in zip(axes[0], rules):
        shown = []
        for storage in STORAGES:
            records = result.runs[(rule, storage.name)]
            curves = [np.array([loss for _, _, loss in r.curve]) for r in records if not r.diverged]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            mean = np.mean([c[:n] for c in curves], axis=0)
            window = max(1, n // 40)
            smooth = np.convolve(mean, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(window, n + 1), smooth, label=storage.name)
            shown.append(smooth[len(smooth) // 5:])
        if shown:
            low, high = np.quantile(np.concatenate(shown), [0.0, 0.98])
            ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
        ax.set(title=rule, xlabel="iteration", ylabel="training loss (mean over seeds, moving average)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{result.task.title}: how the parameters and state are stored", fontsize=10)
    fig.tight_layout()
    name = "precision.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


# ---------------------------------------------------------------- report section


def section(result: PrecisionResult, plot: str, n_parameters: int) -> List[str]:
    task = result.task
    seeds = len(next(iter(result.runs.values())))
    lines = [f"## bfloat16 parameters: master weights, round to nearest, stochastic rounding ({task.name})", "",
             f"{task.title}; {result.steps} iterations, {seeds} seed(s). Parameters stored in the dtype "
             "shown, forward and backward in float32 on copies of them (so only how each update is "
             "written differs). Settings: " + "; ".join(f"{r}: {s}" for r, s in RULES.items()) + ".", "",
             f"| optimizer | storage | final training loss | final {task.metric} | state bytes/param | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for (rule, storage), records in result.runs.items():
        loss = _mean_std([final_loss(r) for r in records])
        metric = _mean_std([r.final for r in records])
        seconds = statistics.median(r.curve[-1][1] for r in records if r.curve)
        lines.append(f"| {rule} | {storage} | {loss[0]:.4g} ± {loss[1]:.2g} | {metric[0]:.4g} ± {metric[1]:.2g} | "
                     f"{records[0].state_bytes / n_parameters:.2f} | {seconds:.1f} |")
    lines += ["", f"![precision]({plot})", "", "Verdicts:", ""]
    for v in verdicts(result):
        lines.append(f"- **{v['reaches']}**: {v['rule']} with bfloat16 parameters and state, stochastically "
                     f"rounded, reaches the loss of float32 master weights and state; **{v['beats']}**: it "
                     f"beats round to nearest. {v['numbers']}.")
    lines += ["", f"Rules: {RULE_TEXT}. Seconds: wall-clock of the whole run on the CPU, forward "
              "and backward included (the optimizers take their default path: the CPU kernels, which "
              "round since 2026-12-06); benchmarks/step_time.py times the steps themselves.", ""]
    return lines
