"""The seeds' claims about real workloads, and the rules that decide them.

Every verdict is computed from the measured numbers by a rule stated here and
printed beside it in the report. "Adam" is the better of Adam and AdamW on the
task (by mean final quality), so a claim is never tested against a weak baseline.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .loop import Record, Timing

#: How close a final quality must be to count as "as good": per task metric.
TOLERANCE = {
    "cnn-digits": ("abs", 0.01),        # one percentage point of test accuracy
    "lstm-docstrings": ("rel", 0.02),   # 2 % of the validation bits per character
    "gpt-docstrings": ("rel", 0.02),
    "wgan-digits": ("rel", 0.10),       # 10 % of the Fréchet distance
}
#: Time per epoch: a ratio of the optimizer steps' times within this band of 1
#: is a draw (these machines are noisy).
STEP_BAND = 0.05


@dataclass(frozen=True)
class Claim:
    optimizer: str
    kind: str            # "as-good", "better" (final quality), "speed" (steps to the target), "epoch-time"
    tasks: Sequence[str]
    text: str
    factor: float = 1.0  # "speed": the step ratio must be at most this


CLAIMS = [
    Claim("AdaLo (adversarial)", "as-good", ("cnn-digits", "lstm-docstrings", "gpt-docstrings"),
          "AdaLo trains CV and NLP models as well as Adam, with no schedule (seed 000)"),
    Claim("AdaLo (compliant)", "as-good", ("cnn-digits", "lstm-docstrings", "gpt-docstrings"),
          "AdaLo trains CV and NLP models as well as Adam, with no schedule (seed 000)"),
    Claim("AdaLo (adversarial)", "epoch-time", ("cnn-digits", "lstm-docstrings", "gpt-docstrings"),
          "AdaLo takes less time per epoch than Adam (seed 000)"),
    Claim("AdamL", "better", ("cnn-digits", "lstm-docstrings", "wgan-digits"),
          "AdamL trains CNNs, LSTMs and WGANs better than Adam (seed 001)"),
    Claim("AdamL", "speed", ("cnn-digits", "lstm-docstrings"),
          "AdamL converges faster than Adam on CNNs and LSTMs (seed 001)"),
    Claim("AdamL", "speed", ("wgan-digits",),
          "AdamL converges more than twice as fast as Adam on WGANs (seed 001)", factor=0.5),
]


def mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def finals(records: List[Record]) -> List[float]:
    return [r.final for r in records]


def adam_reference(runs: Dict[str, List[Record]], higher_better: bool) -> Optional[str]:
    """The better of Adam and AdamW by mean final quality."""
    present = [n for n in ("Adam", "AdamW") if n in runs and math.isfinite(mean(finals(runs[n])))]
    if not present:
        return None
    pick = max if higher_better else min
    return pick(present, key=lambda n: mean(finals(runs[n])))


#: The target of the speed measures: this fraction of the way from the
#: quality at step 0 (the same initial model for every optimizer of a seed)
#: to the final quality of "Adam" (see adam_reference). Computed, so that it is
#: reachable at any preset's length and means the same on every task.
TARGET_FRACTION = 0.9


def target(runs: Dict[str, List[Record]], higher_better: bool) -> Optional[float]:
    ref = adam_reference(runs, higher_better)
    if ref is None:
        return None
    start = mean([r.evals[0][2] for r in runs[ref]])
    return start + TARGET_FRACTION * (mean(finals(runs[ref])) - start)


def steps_to_target(records: List[Record], target: float, higher_better: bool) -> float:
    """Median over seeds of the first evaluated step at the target (inf if never)."""
    hits = [r.first_reaching(target, higher_better) for r in records]
    return statistics.median([h[0] if h else math.inf for h in hits])


def decide(claim: Claim, task, runs: Dict[str, List[Record]],
           timing: Optional[Dict[str, Timing]] = None) -> Optional[Dict[str, str]]:
    """The verdict of ``claim`` on one task: {"verdict", "numbers", "rule"}; None if not
    measured. ``timing``: each optimizer's side-by-side timing (study.time_side_by_side)."""
    ref = adam_reference(runs, task.higher_better)
    if ref is None or claim.optimizer not in runs:
        return None
    mine, theirs = runs[claim.optimizer], runs[ref]
    if claim.kind in ("as-good", "better"):
        a, b = mean(finals(mine)), mean(finals(theirs))
        how, tol = TOLERANCE[task.name]
        margin = tol if how == "abs" else tol * abs(b)
        ahead = (a - b) if task.higher_better else (b - a)  # > 0: better than the reference
        if claim.kind == "as-good":
            verdict = "holds" if ahead >= -margin else "does not hold"
        else:
            verdict = "holds" if ahead > margin else ("a draw" if ahead >= -margin else "does not hold")
        rule = (f"mean final {task.metric} within {tol:g}{'' if how == 'abs' else ' (relative)'} of "
                f"{ref}'s is as good; ahead by more is better")
        return {"verdict": verdict, "numbers": f"{a:.4g} vs {ref} {b:.4g}", "rule": rule}
    if claim.kind == "speed":
        goal = target(runs, task.higher_better)
        a = steps_to_target(mine, goal, task.higher_better)
        b = steps_to_target(theirs, goal, task.higher_better)
        rule = (f"median steps to {task.metric} {goal:.4g} ({TARGET_FRACTION:.0%} of the way from the "
                f"start to {ref}'s final); holds at a ratio "
                + ("below 1 (strictly fewer steps)" if claim.factor >= 1 else f"<= {claim.factor:g}"))
        if math.isinf(a):
            return {"verdict": "does not hold", "numbers": f"{claim.optimizer} never reached it", "rule": rule}
        ratio = a / b
        verdict = "holds" if ratio <= claim.factor and a < b else "does not hold"
        return {"verdict": verdict, "numbers": f"{a:g} vs {ref} {b:g} steps (ratio {ratio:.2f})", "rule": rule}
    if claim.kind == "epoch-time":
        if timing is None or claim.optimizer not in timing:
            return None
        a, b = timing[claim.optimizer], timing[ref]
        step_ratio = a.step / b.step
        # Only the optimizer differs between the two iterations, so the epoch
        # changes by the step time saved: the reference's iteration with its
        # step replaced by ours.
        epoch_ratio = (b.iteration - b.step + a.step) / b.iteration
        per_epoch = task.steps_per_epoch
        rule = (f"the optimizer steps' median times, timed side by side; a step ratio within "
                f"{STEP_BAND:.0%} of 1 is a draw. Only the step differs between the two iterations, "
                "so the epoch changes by the step time saved; the whole iterations are shown as a "
                "check, not used (forward and backward make them noisier than the step's difference)")
        numbers = (f"step {a.step * 1e3:.3g} ms vs {ref} {b.step * 1e3:.3g} ms (ratio {step_ratio:.2f}; "
                   f"{b.share:.0%} of {ref}'s iteration), so the epoch is {epoch_ratio:.3f}x {ref}'s; "
                   f"whole iterations: {a.iteration * per_epoch:.3g} s vs {b.iteration * per_epoch:.3g} s "
                   f"per epoch (ratio {a.iteration / b.iteration:.2f})")
        verdict = ("holds" if step_ratio <= 1 - STEP_BAND else
                   "does not hold" if step_ratio >= 1 + STEP_BAND else "a draw")
        return {"verdict": verdict, "numbers": numbers, "rule": rule}
    raise ValueError(claim.kind)
