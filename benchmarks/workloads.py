"""Do the seeds' claims hold on real training workloads? Measured on this CPU.

Tasks (``_workloads/tasks.py``; all data offline, see ``_workloads/data.py``):

1. CV: a small CNN on scikit-learn's digits;
2. NLP, recurrent: a character-level LSTM language model on the docstrings of
   Python's standard library;
3. NLP, attention: a GPT-style character language model (3.2M parameters) on
   the same text;
4. GAN: WGAN-GP on the digits, scored by a Fréchet distance in the features of
   a digits classifier trained once.

5. Fine-tuning (``_workloads/finetune.py``): that model, pretrained here on the
   docstrings, fine-tuned to classify them; AdaLoss's robustness to b0 against
   AdaGrad-Norm and SGD with a constant and a 1/sqrt(t) step.

Optimizers: AdaLo (both modes), AdamL, AdaLoss, Adam and AdamW (fused), EAdam
and AdaBelief, each tuned with the same budget. Speech is not tested (no
honest offline data yet).

Run (from the repository root)::

    .venv/bin/python benchmarks/workloads.py --quick --out /tmp/workloads   # < 10 min on 2 cores
    .venv/bin/python benchmarks/workloads.py --smoke --out /tmp/smoke       # a minute; CI runs it
    .venv/bin/python benchmarks/workloads.py                                # full: benchmarks/results/workloads/

It writes ``report.md`` (verdicts computed from the numbers by the rules of
``_workloads/verdicts.py``), one PNG of curves per task and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
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

from _system import commit_label, load_average  # noqa: E402
from _workloads import plots, report  # noqa: E402
from _workloads.finetune import run_finetune  # noqa: E402
from _workloads.models import n_params  # noqa: E402
from _workloads.optimizers import BUILDERS  # noqa: E402
from _workloads.study import run_task  # noqa: E402
from _workloads.tasks import TASKS, Preset  # noqa: E402

SMOKE = Preset("smoke", {"cnn-digits": 6, "lstm-docstrings": 4, "gpt-docstrings": 3, "wgan-digits": 3},
               evals=2, seeds=(0,), candidates=1, text_chars=200_000, pretrain_steps=3, finetune_steps=2,
               timing_rounds=1)
QUICK = Preset("quick", {"cnn-digits": 150, "lstm-docstrings": 150, "gpt-docstrings": 60, "wgan-digits": 150},
               evals=5, seeds=(0,), candidates=1, text_chars=1_000_000, pretrain_steps=100, finetune_steps=30,
               timing_rounds=4)
# Sized to about 1.5 hours on 2 idle cores (1200/800/400/1500 iterations took more than 2.5 hours
# on shared cores).
FULL = Preset("full", {"cnn-digits": 1000, "lstm-docstrings": 600, "gpt-docstrings": 300, "wgan-digits": 1200},
              evals=16, seeds=(0, 1, 2), candidates=3, text_chars=2_000_000, pretrain_steps=800,
              finetune_steps=150, timing_rounds=10)
FINETUNE = "finetune-docstrings"
#: The optimizers of each task: EAdam and AdaBelief where the seed compares AdamL with them.
OPTIMIZERS = {
    "cnn-digits": list(BUILDERS),
    "lstm-docstrings": list(BUILDERS),
    "gpt-docstrings": ["AdaLo (adversarial)", "AdaLo (compliant)", "AdamL", "AdaLoss", "Adam", "AdamW"],
    "wgan-digits": ["AdamL", "Adam", "AdamW", "EAdam", "AdaBelief", "AdaLo (adversarial)"],
}


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one seed, one candidate, short runs (< 10 min)")
    size.add_argument("--smoke", action="store_true", help="a few steps of everything (CI)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results/workloads)")
    ap.add_argument("--tasks", nargs="+", choices=[*TASKS, FINETUNE], default=[*TASKS, FINETUNE])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = ap.parse_args(argv)
    preset = SMOKE if args.smoke else QUICK if args.quick else FULL
    out = args.out or REPO / "benchmarks" / "results" / "workloads"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    load_before, commit = load_average(), commit_label()  # at the start: the code that runs
    start = time.perf_counter()
    results, figures, params = {}, {}, {}
    finetune = None
    for name in args.tasks:
        if name == FINETUNE:
            finetune = run_finetune(preset.pretrain_steps, preset.finetune_steps, preset.seeds,
                                    preset.text_chars, progress=sys.stderr.isatty())
        else:
            task = TASKS[name](preset)
            results[name] = run_task(task, OPTIMIZERS[name], preset, progress=sys.stderr.isatty())
            figures[name] = plots.curves(results[name], out)
            session = task.session(results[name].runs[OPTIMIZERS[name][0]][0].candidate, 0)
            params[name] = sum(n_params(m) for m in vars(session).values() if isinstance(m, torch.nn.Module))
        print(f"{name}: done at {time.perf_counter() - start:.0f} s", file=sys.stderr)
        # Written after every task, so that a long run stopped part-way keeps what it finished.
        seconds = time.perf_counter() - start
        pending = args.tasks[args.tasks.index(name) + 1:]
        path = _write(out, preset, seconds, results, figures, params, finetune, pending, load_before, commit)
    print(f"report: {path} ({seconds / 60:.1f} min)")
    return {"report": path, "seconds": seconds}


def _write(out: Path, preset: Preset, seconds: float, results, figures, params, finetune,
           pending: List[str], load_before: Optional[float], commit: str) -> Path:
    """``report.md`` and ``results.json`` of the tasks finished so far."""
    path = report.write(results, figures, params, out, preset, seconds, commit, finetune, pending,
                        (load_before, load_average()))
    dump = {name: [r.to_json() for rs in res.runs.values() for r in rs] for name, res in results.items()}
    if finetune is not None:
        dump[FINETUNE] = [{"method": m, "b0": b0, "accuracy": acc} for (m, b0), acc in finetune.accuracy.items()]
    timing = {name: {o: t.to_json() for o, t in res.timing.items()} for name, res in results.items()}
    (out / "results.json").write_text(json.dumps({"preset": preset.name, "seconds": seconds, "runs": dump,
                                                  "timing": timing, "pending": pending}))
    return path


if __name__ == "__main__":
    main()
