"""Optimizer step time: AdaLo, AdamL and AdaLoss against torch.optim.Adam/AdamW.

What it measures
----------------
Part 1 (step time). For every configuration (device, parameter dtype, layout,
size) one set of parameters with fixed random gradients is built, and every
(optimizer, path) pair steps *those same tensors*:

* AdaLo, AdamL, AdaLoss (this package) on the ``forloop`` (foreach=False,
  fused=False), ``foreach`` (foreach=True, fused=False) and ``fused``
  (fused=True; only where ``lossopt_cuda.build_info()`` reports kernels for the
  device) paths, stepped with ``opt.step(loss=loss)``, ``loss`` a 0-d tensor on
  the device (0.7);
* torch.optim.Adam and AdamW on their forloop, foreach and fused paths, stepped
  with ``opt.step()``.

After warm-up rounds (which also create the optimizer state) the pairs are
stepped round-robin inside each repeat, with the starting pair rotated from one
repeat to the next, so that slow drifts of the machine (another process, clock
changes) hit every pair equally. The median over the repeats is reported.
CPU steps are timed with ``time.perf_counter``; GPU steps with CUDA events, the
device synchronised before each step so that the time includes the host-side
launch work of that step and nothing queued before it.

Each record also gives the rule's *ideal* bytes moved and FLOPs per element
(``COSTS`` below), the achieved bandwidth ``bytes_per_element * numel /
median_time``, its fraction of the device's memory-copy bandwidth measured in
the same run (``dst.copy_(src)``, counted as read + write), and the ratio of
the time to the fastest Adam/AdamW path of the same configuration.

Part 2 (``--epochs``). Whole training epochs (forward, backward, step) of the
small MLP of ``examples/train_digits.py`` on scikit-learn's digits, one model
per optimizer on its default path (plus Adam fused, the fastest Adam on a CPU),
epochs interleaved round-robin. It reports the median seconds per epoch and the
share of the epoch spent in ``step()`` (timed separately), to test the claim
"training time per epoch is shorter than Adam's".

Run (from the repository root)::

    .venv/bin/python benchmarks/step_time.py            # full sweep, JSON + PNG in benchmarks/results/
    .venv/bin/python benchmarks/step_time.py --quick    # < 90 s on a 2-core CPU, prints the table
    .venv/bin/python benchmarks/step_time.py --device cpu --sizes 1M 16M --repeats 5 --out r.json --plot r.png

Caveats. The bytes per element are those of the rule's ideal single pass; the
forloop and foreach paths make temporaries and so move more than that, which
shows as a lower "GB/s" (an *effective* bandwidth, not a measured one). On a
CPU the step uses torch's intra-op threads (``--threads``); the machine's other
load shows up directly in the numbers, which is why the copy bandwidth is
measured at the start and again at the end of the run (the higher of the two is
the reference), the load average is recorded, and the table shows the spread
(IQR) and the minimum beside the median. The copy reference
counts ``dst.copy_(src)`` as 2x bytes; a CPU also reads ``dst`` before writing
it (write-allocate), which an in-place update does not pay, so a fused step can
show more than 100 % "of copy"; an in-place ``dst.add_(src)`` bandwidth is
reported beside it for that reason.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _path in (str(REPO), str(HERE)):  # run from a checkout without `pip install -e .`
    if _path not in sys.path:
        sys.path.insert(0, _path)

import lossopt_cuda  # noqa: E402
from tqdm import tqdm  # noqa: E402

from _step_time.cases import DTYPES, OPTIMIZERS, make_plan, parse_size  # noqa: E402
from _step_time.epochs import print_epochs, run_epochs  # noqa: E402
from _step_time.report import print_report, save  # noqa: E402
from _step_time.timing import bandwidth_at_end, copy_numel, make_records, memory_bandwidth, time_steps  # noqa: E402
from _system import cpu_info, device_name, git_commit, git_dirty, load_average  # noqa: E402


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short run (< 90 s on a 2-core CPU)")
    ap.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                    help="all: the CPU, and the GPU when torch.cuda.is_available()")
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=None,
                    help="element counts such as 1M 16M 1G (default: 1M..64M on CPU, 1M..1G on GPU)")
    ap.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=["fp32", "bf16"])
    ap.add_argument("--layouts", nargs="+", choices=("single", "transformer"), default=["single", "transformer"])
    ap.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per config")
    ap.add_argument("--warmup", type=int, default=None, help="untimed rounds per config")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads for part 1")
    ap.add_argument("--no-target", action="store_true", help="leave out the CPU 12.6M/28-tensor target config")
    ap.add_argument("--bf16-state", action="store_true",
                    help="also time AdaLo, AdamL and AdaLoss with state_dtype=bfloat16 (and stochastic "
                         "rounding of bf16 parameters), with a bf16 copy of the CPU target config")
    ap.add_argument("--adaloss-momentum", type=float, default=0.0,
                    help="AdaLoss momentum (default 0, its default: 12 B/element in fp32)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="part 2: digits-MLP epochs per optimizer (default 20; 0 in --quick; 0 skips)")
    ap.add_argument("--epoch-threads", type=int, default=1, help="torch threads during part 2 (default 1)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    ap.add_argument("--plot", type=Path, default=None, help="write the PNG here")
    ap.add_argument("--plot-dtype", choices=tuple(DTYPES), default="fp32")
    ap.add_argument("--plot-layout", choices=("single", "transformer"), default="transformer")
    ap.add_argument("--save", action="store_true",
                    help="write JSON and PNG under benchmarks/results/ (the default when neither "
                         "--quick, --out nor --plot is given)")
    args = ap.parse_args(argv)
    if args.epochs is None:
        args.epochs = 0 if args.quick else 20
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if not devices:
        print("no device to benchmark (cuda requested but torch.cuda.is_available() is False)", file=sys.stderr)
        return 2

    plan = make_plan(devices, args)  # first, so that the progress bar knows the total
    total = sum((c.warmup + c.repeats) * len(k) for c, k in plan)
    total += (args.epochs + 1) * 5 * len(devices) if args.epochs else 0

    load_start = load_average()
    copy = {device.type: memory_bandwidth(device, copy_numel(device)) for device in devices}
    records: List[Dict[str, Any]] = []
    epochs: List[Dict[str, Any]] = []
    with tqdm(total=total, desc="step_time", unit="step", dynamic_ncols=True) as bar:
        for cfg, cands in plan:
            time_steps(cfg, cands, bar)
            records += make_records(cfg, cands, device_name(cfg.device))
        if args.epochs:
            for device in devices:
                epochs += run_epochs(device, args.epochs, args.epoch_threads, bar)
        bar.total = bar.n  # the epoch part may have run one optimizer fewer
        bar.refresh()
    bandwidth_at_end(devices, copy, records)
    load_end = load_average()

    print_report(plan, records, copy, (load_start, load_end))
    if epochs:
        print_epochs(epochs, args.epochs, args.epoch_threads)
    elapsed = time.perf_counter() - started
    print(f"\ntotal run time {elapsed:.1f} s")

    primary = devices[-1].type  # the GPU when there is one
    stamp = _dt.datetime.now().astimezone()
    result = {
        "device": f"{primary} ({device_name(torch.device(primary))})",
        "copy_gb_per_s": copy[primary]["copy_gb_per_s"],
        "devices": {dev: {"name": device_name(torch.device(dev)), **c} for dev, c in copy.items()},
        "date": stamp.isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "lossopt_cuda_version": lossopt_cuda.__version__,
        "build_info": lossopt_cuda.build_info(),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "cpu": cpu_info(),
        "load_average_1min": {"start": load_start, "end": load_end},
        "cuda": ({"name": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
                  "torch_cuda": torch.version.cuda} if "cuda" in copy else None),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "run_seconds": elapsed,
        "results": records,
        "epochs": epochs,
    }
    save(result, records, copy, primary, stamp, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
