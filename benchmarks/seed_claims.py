"""Do the seed documents' claims hold? Measured on a CPU, reported in plain words.

Three studies, one per optimizer of this package (see ``_claims/`` for each):

1. AdamL against Adam, EAdam and AdaBelief on the Three-Hump Camel (from
   x0 = (0, -4)) and Rosenbrock functions, objective against iterations
   (seed 001: "superior convergence speed on benchmark functions").
2. AdaLoss's robustness to ``b0`` in {0.01, 0.1, 1, 10, 100} against
   AdaGrad-Norm, SGD with a constant step and SGD with a 1/sqrt(t) decay, on
   realisable least squares and on a digits classifier, mean and std over 5
   seeds (seed 002's table, on small problems).
3. AdaLo in both modes and several kappa against Adam on digits, testing the
   seed's kappa rule of thumb (seed 000).

Run (from the repository root)::

    .venv/bin/python benchmarks/seed_claims.py                 # full: benchmarks/results/seed_claims/
    .venv/bin/python benchmarks/seed_claims.py --quick --out /tmp/claims   # < 5 min on 2 CPU cores
    .venv/bin/python benchmarks/seed_claims.py --smoke --out /tmp/smoke    # seconds; for the tests

It writes ``report.md`` (every verdict in it is computed from the measured
numbers), five PNG figures and ``results.json`` (the numbers behind them).
Every run is deterministic: each seed seeds torch before the model is built and
drives its own generator for the data order.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _path in (str(REPO), str(HERE)):  # run from a checkout without `pip install -e .`
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402

from _claims import report  # noqa: E402
from _claims.adalo_digits import run_adalo_study  # noqa: E402
from _claims.adaloss_b0 import run_b0_study  # noqa: E402
from _claims.budget import FULL, PRESETS, QUICK, SMOKE, Budget  # noqa: E402
from _claims.toys import run_toy_study  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "seed_claims"


def run(budget: Budget, out: Path, *, threads: int = 1, progress: bool = True) -> Dict[str, Any]:
    """Run the three studies with ``budget``, write the report and figures to
    ``out``; return a summary (paths and wall time) for callers and tests.

    ``threads``: torch's intra-op threads. 1 by default because every model here
    is tiny: more threads only add synchronisation, and on a shared machine
    spinning OpenMP threads slow everything down.
    """
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        toy = run_toy_study(budget, progress)
        b0 = run_b0_study(budget, progress)
        adalo = run_adalo_study(budget, progress)
    finally:
        torch.set_num_threads(previous_threads)
    seconds = time.perf_counter() - start
    figures = report.make_all(toy, b0, adalo, out)
    text = report.build(budget, toy, b0, adalo, figures, seconds, threads)
    (out / "report.md").write_text(text, encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps(report.numbers(toy, b0, adalo), indent=1), encoding="utf-8"
    )
    return {"out": str(out), "figures": figures, "seconds": seconds}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="shorter runs, same problems (< 5 min on 2 CPU cores)")
    size.add_argument("--smoke", action="store_true", help="tiny runs that only exercise the code (the tests use it)")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT.relative_to(REPO)}/)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    budget = SMOKE if args.smoke else QUICK if args.quick else FULL
    out = args.out if args.out is not None else DEFAULT_OUT
    summary = run(budget, out, threads=args.threads, progress=not args.no_progress)
    print(f"{budget.name} run: {summary['seconds']:.0f} s; report and figures in {summary['out']}/")
    return 0


__all__ = ["run", "main", "PRESETS", "QUICK", "FULL", "SMOKE"]

if __name__ == "__main__":
    raise SystemExit(main())
