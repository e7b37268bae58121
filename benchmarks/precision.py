"""Training with bfloat16 parameters: float32 master weights, round to nearest, stochastic rounding.

Does a model whose parameters and optimizer state are bfloat16, written with
stochastic rounding (``stochastic_rounding=True, state_dtype=torch.bfloat16``),
reach the loss of float32 master weights with float32 state, and beat
bfloat16 parameters written with round-to-nearest? AdaLo, AdamL and AdaLoss on
the digits CNN of ``workloads.py``, every storage from the same initial weights
on the same batches. The study is ``_workloads/precision.py``.

Run (from the repository root)::

    .venv/bin/python benchmarks/precision.py --smoke --out /tmp/precision   # seconds; CI runs it
    .venv/bin/python benchmarks/precision.py --quick --out /tmp/precision   # 1.5 min of CPU (2 cores)
    .venv/bin/python benchmarks/precision.py                                # benchmarks/results/precision/

It writes ``report.md``, ``precision.png`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _path in (str(REPO), str(HERE)):  # run from a checkout without `pip install -e .`
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402

from _system import commit_label  # noqa: E402
from _workloads import precision  # noqa: E402
from _workloads.models import n_params  # noqa: E402
from _workloads.tasks import DigitsCNNTask, Preset  # noqa: E402

#: (iterations, seeds, evaluations) per preset.
PRESETS = {"smoke": (6, (0,), 2), "quick": (300, (0,), 5), "full": (1000, (0, 1, 2), 10)}


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one seed, short runs")
    size.add_argument("--smoke", action="store_true", help="a few steps of everything (CI)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results/precision)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = ap.parse_args(argv)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    steps, seeds, evals = PRESETS[name]
    out = args.out or REPO / "benchmarks" / "results" / "precision"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    task = DigitsCNNTask(Preset(name, {}, evals, seeds, 1, 0))
    result = precision.run_study(task, steps, seeds, evals, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    plot = precision.figure(result, out)
    n_parameters = n_params(task.session(precision.Candidate("AdamL", "", {"lr": 1e-3}), 0).model)
    lines = [f"# bfloat16 training: how parameters and state are stored ({name} run)", "",
             f"- Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"Python {platform.python_version()}, torch {torch.__version__}",
             f"- Commit: {commit_label()}; total time {seconds / 60:.1f} min", ""]
    if name != "full":
        lines += [f"**A {name} run: too short for its verdicts to mean anything; the full run decides.**", ""]
    lines += precision.section(result, plot, n_parameters)
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"preset": name, "seconds": seconds, "steps": steps,
                                                  "numbers": precision.numbers(result)}, default=str))
    print(f"report: {out / 'report.md'} ({seconds / 60:.1f} min)")
    return {"report": out / "report.md", "seconds": seconds}


if __name__ == "__main__":
    main()
