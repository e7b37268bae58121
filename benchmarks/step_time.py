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
import gc
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _path in (str(REPO), str(HERE)):  # run from a checkout without `pip install -e .`
    if _path not in sys.path:
        sys.path.insert(0, _path)

import lossopt_cuda  # noqa: E402
from lossopt_cuda import AdaLo, AdaLoss, AdamL  # noqa: E402
from lossopt_cuda._kernels import FUSED_DTYPES  # noqa: E402
from tqdm import tqdm  # noqa: E402

from _shapes import numel_of, target_shapes, transformer_shapes  # noqa: E402

OPTIMIZERS = ("Adam", "AdamW", "AdaLo", "AdamL", "AdaLoss")
LOSS_DRIVEN = ("AdaLo", "AdamL", "AdaLoss")
IMPLS = ("forloop", "foreach", "fused")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LOSS_VALUE = 0.7  # any valid loss; the step's cost does not depend on it
TARGET_LABEL = "target: CPU, 12.6M fp32 elements in 28 transformer-shaped tensors"

# --------------------------------------------------------------------------- ideal cost per element
#
# Bytes: what one ideal pass over an element must read and write. P = bytes of a
# parameter element (4 fp32, 2 bf16); the gradient has the parameter's dtype, so
# G = P. State: this package keeps its state in fp32 (4 B) for fp32 and bf16
# parameters alike; torch.optim.Adam/AdamW keep exp_avg/exp_avg_sq in the
# parameter's dtype (S = P).
#
#   AdaLo             read p, g, m        write p, m         2P + G + 2*4      fp32 20, bf16 14
#   AdamL             read p, g, m, w     write p, m, w      2P + G + 4*4      fp32 28, bf16 22
#   AdaLoss           read p, g           write p            2P + G            fp32 12, bf16  6
#   AdaLoss momentum  read p, g, buf      write p, buf       2P + G + 2*4      fp32 20, bf16 14
#   Adam / AdamW      read p, g, m, v     write p, m, v      2P + G + 4*P      fp32 28, bf16 14
#
# (Weight decay reads p, which is read anyway: no extra bytes.)
#
# FLOPs: arithmetic operations in the per-element update as the fused kernels
# (csrc/rules/*.h) and torch's Adam write it; +, -, *, /, sqrt count 1 each.
# The loss-derived scalars (lr_t, b, bias corrections...) are per group, not per
# element, and are not counted. The kernels also multiply each gradient by the
# inverse GradScaler scale (1 without a scaler): one more multiply per element
# for every rule, not counted here (torch's fused Adam has the same).
#
#   AdaLo    m = m + c1*(g - m)                        3  (sub, mul, add)
#            p = p*decay - lr_t*m                      3  (mul, mul, sub)          -> 6
#   AdamL    m = b1*m + c1*g                           3
#            w = b2*w + s*g*g + eps_l                  5  (3 mul, 2 add)
#            p = p*decay - step*m/sqrt(w*inv_bc2)      6  (3 mul, sqrt, div, sub;
#                                                          step = lr/bc1 and
#                                                          inv_bc2 = 1/bc2 per group) -> 14
#   AdaLoss  d = g/b                                   1
#            [weight_decay: d = d + wd*p               2]
#            [momentum: buf = mom*buf + d; d = buf     2]
#            p = p - lr*d                              2                          -> 3 (+2, +2)
#   Adam     m.lerp_(g, 1-b1)                          3
#            v = v*b2 + (1-b2)*g*g                     4
#            denom = sqrt(v)/sqrt(bc2) + eps           3
#            p = p - step_size * m/denom               3                          -> 13
#            [weight_decay (L2, Adam): g = g + wd*p    2]
#   AdamW    Adam + p = p*(1 - lr*wd)                  1                          -> 14


def bytes_per_element(optimizer: str, dtype: torch.dtype, hp: Dict[str, Any]) -> int:
    """The ideal bytes one step reads and writes per parameter element (table above)."""
    p = torch.tensor([], dtype=dtype).element_size()
    touch_pg = 2 * p + p  # read p, write p, read g
    if optimizer == "AdaLo":
        return touch_pg + 2 * 4
    if optimizer == "AdamL":
        return touch_pg + 4 * 4
    if optimizer == "AdaLoss":
        return touch_pg + (2 * 4 if hp.get("momentum", 0.0) > 0 else 0)
    if optimizer in ("Adam", "AdamW"):
        return touch_pg + 4 * p
    raise ValueError(optimizer)


def flops_per_element(optimizer: str, hp: Dict[str, Any]) -> int:
    """Arithmetic operations per element of one step (table above)."""
    if optimizer == "AdaLo":
        return 6
    if optimizer == "AdamL":
        return 14
    if optimizer == "AdaLoss":
        return 3 + (2 if hp.get("weight_decay", 0.0) else 0) + (2 if hp.get("momentum", 0.0) else 0)
    if optimizer == "Adam":
        return 13 + (2 if hp.get("weight_decay", 0.0) else 0)
    if optimizer == "AdamW":
        return 14
    raise ValueError(optimizer)


# --------------------------------------------------------------------------- optimizers


@dataclass
class Candidate:
    """One (optimizer, path) pair of a configuration."""

    optimizer: str
    impl: str
    hparams: Dict[str, Any]
    opt: Optional[torch.optim.Optimizer] = None
    times_ms: List[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.optimizer}/{self.impl}"


def path_flags(impl: str) -> Dict[str, bool]:
    return {
        "forloop": dict(foreach=False, fused=False),
        "foreach": dict(foreach=True, fused=False),
        "fused": dict(foreach=False, fused=True),
    }[impl]


def hparams_for(optimizer: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Each optimizer's defaults, except AdaLoss's momentum (``--adaloss-momentum``)."""
    if optimizer == "AdaLoss":
        return {"momentum": args.adaloss_momentum}
    return {}


def make_optimizer(cand: Candidate, params: List[torch.Tensor]) -> torch.optim.Optimizer:
    cls = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW,
           "AdaLo": AdaLo, "AdamL": AdamL, "AdaLoss": AdaLoss}[cand.optimizer]
    return cls(params, **cand.hparams, **path_flags(cand.impl))


def lossopt_fused_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether build_info() reports this package's kernels for the device (and the dtype is one they take)."""
    info = lossopt_cuda.build_info()
    built = {"cpu": info["cpu_kernels"], "cuda": info["cuda"]}.get(device.type, False)
    return bool(built) and dtype in FUSED_DTYPES.get(device.type, ())


_TORCH_FUSED_CACHE: Dict[Tuple[str, torch.dtype], bool] = {}


def torch_fused_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's fused Adam runs here: try one step on a tiny tensor."""
    key = (device.type, dtype)
    if key not in _TORCH_FUSED_CACHE:
        try:
            p = torch.zeros(8, device=device, dtype=dtype, requires_grad=True)
            p.grad = torch.ones_like(p)
            torch.optim.Adam([p], fused=True).step()
            ok = True
        except (RuntimeError, ValueError):
            ok = False
        _TORCH_FUSED_CACHE[key] = ok
    return _TORCH_FUSED_CACHE[key]


def candidates_for(device: torch.device, dtype: torch.dtype, impls: Sequence[str],
                   optimizers: Sequence[str], args: argparse.Namespace) -> List[Candidate]:
    """Every (optimizer, path) pair that can run on this device and dtype."""
    out = []
    for opt in optimizers:
        for impl in impls:
            if impl == "fused":
                ok = (lossopt_fused_available(device, dtype) if opt in LOSS_DRIVEN
                      else torch_fused_available(device, dtype))
                if not ok:
                    continue
            out.append(Candidate(opt, impl, hparams_for(opt, args)))
    return out


def state_bytes_per_element(cand: Candidate, dtype: torch.dtype) -> int:
    """Optimizer state kept per element (for the memory estimate)."""
    p = torch.tensor([], dtype=dtype).element_size()
    return {"Adam": 2 * p, "AdamW": 2 * p, "AdaLo": 4, "AdamL": 8,
            "AdaLoss": 4 if cand.hparams.get("momentum", 0.0) > 0 else 0}[cand.optimizer]


# --------------------------------------------------------------------------- configurations


@dataclass
class Config:
    device: torch.device
    dtype_name: str
    layout: str  # "single" or "transformer"
    shapes: List[Tuple[int, ...]]
    label: str = ""
    d_model: Optional[int] = None
    layers: Optional[int] = None
    impls: Tuple[str, ...] = IMPLS
    warmup: int = 2
    repeats: int = 7
    note: str = ""

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def numel(self) -> int:
        return numel_of(self.shapes)

    @property
    def key(self) -> Tuple:
        return (self.device.type, self.dtype_name, self.layout, self.numel, len(self.shapes))

    def describe(self) -> str:
        return f"{self.device.type} {self.dtype_name} {self.layout} {human(self.numel)}/{len(self.shapes)}t"


def parse_size(text: str) -> int:
    """'1M' -> 2**20, '64M', '1G' or '1B' -> 2**30, '12599296' -> itself."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGbB]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use e.g. 1M, 64M, 1G")
    mult = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "b": 2**30}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def human(n: float) -> str:
    for unit, div in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))


def default_sizes(device: torch.device, quick: bool) -> List[int]:
    if device.type == "cpu":
        return [2**20] if quick else [2**20, 2**22, 2**24, 2**26]
    return [2**24, 2**28] if quick else [2**20, 2**22, 2**24, 2**26, 2**28, 2**30]


def default_repeats(device: torch.device, numel: int, quick: bool) -> Tuple[int, int]:
    """(warm-up rounds, timed rounds). Fewer for big CPU sizes, to bound the run
    time (a 64M-element round of all 15 pairs takes seconds on 2 cores)."""
    if quick:
        return (1, 5)  # one warm-up round creates the state; enough for a smoke-level number
    if device.type == "cpu" and numel >= 2**25:
        return (2, 5)
    return (3, 9)


def build_configs(device: torch.device, args: argparse.Namespace) -> List[Config]:
    """The sweep for one device: sizes x layouts x dtypes, plus the CPU target config."""
    configs: List[Config] = []
    sizes = args.sizes or default_sizes(device, args.quick)
    for dtype_name in args.dtypes:
        for numel in sizes:
            for layout in args.layouts:
                if layout == "single":
                    cfg = Config(device, dtype_name, layout, [(numel,)])
                else:
                    shapes, d, layers = transformer_shapes(numel)
                    cfg = Config(device, dtype_name, layout, shapes, d_model=d, layers=layers)
                configs.append(cfg)
    if device.type == "cpu" and not args.no_target:
        configs.insert(0, Config(device, "fp32", "transformer", target_shapes(),
                                 label=TARGET_LABEL, d_model=512, layers=4))
    for cfg in configs:
        cfg.warmup, cfg.repeats = default_repeats(device, cfg.numel, args.quick)
        if cfg.label == TARGET_LABEL:
            # The number the targets are judged on: many interleaved rounds, as
            # a 2-core VM's step times swing by tens of percent between rounds.
            cfg.warmup, cfg.repeats = (2, 15) if args.quick else (3, 41)
        if args.repeats:
            cfg.repeats = args.repeats
        if args.warmup is not None:
            cfg.warmup = args.warmup
        # --quick: the for-loop path over big tensors is slow and says little
        # that foreach does not; the target config always keeps every path.
        if args.quick and cfg.numel > 2**22 and not cfg.label and device.type == "cpu":
            cfg.impls = ("foreach", "fused")
    # The quick run's bf16 coverage: one small config is enough to see the trend.
    if args.quick and args.sizes is None and "bf16" in args.dtypes:
        configs = [c for c in configs if c.dtype_name == "fp32" or c.layout == "single" or c.device.type != "cpu"]
    return configs


# --------------------------------------------------------------------------- memory


def free_bytes(device: torch.device) -> int:
    """Memory this run may use on ``device``: free GPU memory, or MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30  # unknown: assume a modest machine


def fit_to_memory(cfg: Config, cands: List[Candidate]) -> List[Candidate]:
    """Drop paths until params, grads, every pair's state and the foreach
    temporaries fit; forloop goes first, then foreach (fused makes no
    temporaries). Returns [] when not even the fused pairs fit."""
    budget = 0.8 * free_bytes(cfg.device)
    p = torch.tensor([], dtype=cfg.dtype).element_size()
    for drop in ((), ("forloop",), ("forloop", "foreach")):
        kept = [c for c in cands if c.impl not in drop]
        # Up to ~8 fp32 temporaries per element live inside a foreach step (AdamL).
        temps = 8 * 4 if any(c.impl != "fused" for c in kept) else 0
        need = cfg.numel * (2 * p + temps + sum(state_bytes_per_element(c, cfg.dtype) for c in kept))
        if kept and need <= budget:
            if drop:
                cfg.note = f"dropped {'/'.join(drop)} paths to fit in memory"
            return kept
    cfg.note = f"skipped: needs more than {budget / 2**30:.1f} GiB"
    return []


# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(device: torch.device, fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` (CUDA events on a GPU)."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
        if i >= warmup:  # the first calls fault the pages in
            times.append(seconds)
    return statistics.median(times)


def memory_bandwidth(device: torch.device, numel: int, repeats: int = 15) -> Dict[str, float]:
    """The device's streaming bandwidth, on a large fp32 tensor.

    ``copy_gb_per_s``: ``dst.copy_(src)``, counted as 2 * bytes (read src, write
    dst): the reference of ``fraction_of_copy``. A CPU usually also reads dst
    before writing it (write-allocate), which an in-place optimizer update does
    not pay, so an optimizer can reach more than 100 % of it. Hence also
    ``inplace_add_gb_per_s``: ``dst.add_(src)``, 3 * bytes, the same access
    pattern as an optimizer's (read-modify-write of some tensors, read of others).
    """
    numel = min(numel, int(0.2 * free_bytes(device)) // 8)  # two buffers
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    nbytes = src.element_size() * numel
    copy_s = median_seconds(device, lambda: dst.copy_(src), repeats)
    add_s = median_seconds(device, lambda: dst.add_(src), repeats)
    del src, dst
    return {"copy_gb_per_s": 2 * nbytes / copy_s / 1e9, "copy_bytes": nbytes, "copy_median_ms": copy_s * 1e3,
            "inplace_add_gb_per_s": 3 * nbytes / add_s / 1e9}


def time_steps(cfg: Config, cands: List[Candidate], bar: tqdm) -> None:
    """Warm up, then time every pair round-robin; fills ``cand.times_ms``."""
    device = cfg.device
    gen = torch.Generator(device=device).manual_seed(0)  # made on the device: fast at 1B elements
    params = []
    for shape in cfg.shapes:
        p = torch.randn(shape, generator=gen, device=device).to(cfg.dtype).requires_grad_()
        p.grad = torch.randn(shape, generator=gen, device=device).mul_(1e-2).to(cfg.dtype)
        params.append(p)
    loss = torch.tensor(LOSS_VALUE, device=device)
    for cand in cands:
        cand.opt = make_optimizer(cand, params)
        cand.times_ms = []

    def step(cand: Candidate) -> None:
        if cand.optimizer in LOSS_DRIVEN:
            cand.opt.step(loss=loss)
        else:
            cand.opt.step()

    n = len(cands)
    for rnd in range(cfg.warmup + cfg.repeats):
        timed = rnd >= cfg.warmup
        # Rotate the order so that no pair always runs first (after the others'
        # traffic has evicted the caches) or always last.
        order = [cands[(rnd + i) % n] for i in range(n)]
        events = []
        for cand in order:
            bar.set_postfix_str(f"{cfg.describe()} {cand.name}", refresh=False)
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize(device)  # nothing queued: the time is this step's alone
                start.record()
                step(cand)
                end.record()
                events.append((cand, start, end))
            else:
                t0 = time.perf_counter()
                step(cand)
                dt = time.perf_counter() - t0
                if timed:
                    cand.times_ms.append(dt * 1e3)
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            if timed:
                for cand, start, end in events:
                    cand.times_ms.append(start.elapsed_time(end))
    check_paths(cfg, cands)
    for cand in cands:
        cand.opt = None
    del params, loss
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_paths(cfg: Config, cands: List[Candidate]) -> None:
    """Make sure each loss-driven pair ran the path it is labelled with."""
    for cand in cands:
        if cand.optimizer not in LOSS_DRIVEN:
            continue
        chosen = cand.opt._choose_impl(cfg.device, cfg.dtype)
        cls = type(cand.opt)
        expected = {"forloop": cls._forloop, "foreach": cls._foreach, "fused": cls._fused}[cand.impl]
        if chosen is not expected:
            raise RuntimeError(f"{cand.name} on {cfg.describe()} did not run its labelled path")


# --------------------------------------------------------------------------- records


def quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def is_noisy(times_ms: Sequence[float]) -> bool:
    """A spread that says the machine interfered: IQR over half the median, or
    a median more than twice the minimum (on a busy CPU some steps stall for
    the length of a scheduler or OpenMP wait, ~100-200 ms)."""
    med = statistics.median(times_ms)
    return quantile(times_ms, 0.75) - quantile(times_ms, 0.25) > 0.5 * med or med > 2 * min(times_ms)


def make_records(cfg: Config, cands: List[Candidate], device_name: str) -> List[Dict[str, Any]]:
    """One JSON record per pair, with bandwidth and ratio to the best Adam
    (``fraction_of_copy`` is filled in at the end, when the copy reference is known)."""
    best_adam_ms, best_adam = min(((statistics.median(c.times_ms), c.name) for c in cands
                                   if c.optimizer in ("Adam", "AdamW")), default=(None, None))
    records = []
    for cand in cands:
        med = statistics.median(cand.times_ms)
        bpe = bytes_per_element(cand.optimizer, cfg.dtype, cand.hparams)
        fpe = flops_per_element(cand.optimizer, cand.hparams)
        gbps = bpe * cfg.numel / (med / 1e3) / 1e9
        records.append({
            "optimizer": cand.optimizer,
            "impl": cand.impl,
            "device": cfg.device.type,
            "device_name": device_name,
            "dtype": cfg.dtype_name,
            "layout": cfg.layout,
            "numel": cfg.numel,
            "n_tensors": len(cfg.shapes),
            "d_model": cfg.d_model,
            "layers": cfg.layers,
            "label": cfg.label,
            "median_ms": med,
            "q1_ms": quantile(cand.times_ms, 0.25),
            "q3_ms": quantile(cand.times_ms, 0.75),
            "min_ms": min(cand.times_ms),
            "noisy": is_noisy(cand.times_ms),
            "times_ms": cand.times_ms,
            "warmup": cfg.warmup,
            "repeats": cfg.repeats,
            "bytes_per_element": bpe,
            "flops_per_element": fpe,
            "gb_per_s": gbps,
            "gflop_per_s": fpe * cfg.numel / (med / 1e3) / 1e9,
            "fraction_of_copy": None,
            "ratio_to_best_adam": med / best_adam_ms if best_adam_ms else None,
            "best_adam": best_adam,
            "hparams": cand.hparams,
            "threads": torch.get_num_threads() if cfg.device.type == "cpu" else None,
            "note": cfg.note,
        })
    return records


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned text: text columns left, numbers right."""
    cells = [[str(h) for h in headers]] + [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(re.fullmatch(r"[-+0-9.,x%eE]*", r[i] or "0") for r in cells[1:]) for i in range(len(headers))]
    lines = []
    for j, row in enumerate(cells):
        line = "  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        lines.append(line.rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def step_table(records: List[Dict[str, Any]]) -> str:
    headers = ["device", "dtype", "layout", "numel", "tensors", "optimizer", "impl", "median ms",
               "IQR ms", "min ms", "B/el", "FLOP/el", "GB/s", "of copy", "x best Adam", "config"]
    rows = []
    for r in records:
        rows.append([
            r["device"], r["dtype"], r["layout"], f"{r['numel']:,}", r["n_tensors"], r["optimizer"],
            r["impl"], f"{r['median_ms']:.3f}", f"{r['q3_ms'] - r['q1_ms']:.3f}", f"{r['min_ms']:.3f}", r["bytes_per_element"],
            r["flops_per_element"], f"{r['gb_per_s']:.2f}",
            f"{100 * r['fraction_of_copy']:.0f}%" if r["fraction_of_copy"] is not None else None,
            f"{r['ratio_to_best_adam']:.2f}x" if r["ratio_to_best_adam"] is not None else None,
            ("TARGET" if r["label"] else "") + (" noisy!" if r.get("noisy") else ""),
        ])
    return format_table(headers, rows)


# --------------------------------------------------------------------------- plot


def plot(records: List[Dict[str, Any]], path: Path, copy: Dict[str, float], device: str,
         dtype: str, layout: str) -> None:
    """Time and bandwidth against size, one line per (optimizer, path), log-x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in records if r["device"] == device and r["dtype"] == dtype and r["layout"] == layout
           and not r["label"]]
    # The target config (28 tensors, not the sweep's ~108) is drawn as stars, not joined to the lines.
    special = [r for r in records if r["device"] == device and r["dtype"] == dtype and r["label"]]
    colors = {"Adam": "tab:gray", "AdamW": "black", "AdaLo": "tab:blue", "AdamL": "tab:orange",
              "AdaLoss": "tab:green"}
    styles = {"fused": "-", "foreach": "--", "forloop": ":"}
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(13, 5))
    for opt in OPTIMIZERS:
        for impl in IMPLS:
            pts = sorted((r["numel"], r["median_ms"], r["gb_per_s"]) for r in sel
                         if r["optimizer"] == opt and r["impl"] == impl)
            if not pts:
                continue
            x = [p[0] for p in pts]
            kw = dict(color=colors[opt], linestyle=styles[impl], marker="o", markersize=3,
                      label=f"{opt} {impl}")
            ax_t.plot(x, [p[1] for p in pts], **kw)
            ax_b.plot(x, [p[2] for p in pts], **kw)
    for i, r in enumerate(special):
        kw = dict(color=colors[r["optimizer"]], marker="*", markersize=9, linestyle="none",
                  alpha=1.0 if r["impl"] == "fused" else 0.35,
                  label="target config (28 tensors)" if i == 0 else None)
        ax_t.plot([r["numel"]], [r["median_ms"]], **kw)
        ax_b.plot([r["numel"]], [r["gb_per_s"]], **kw)
    if device in copy:
        ax_b.axhline(copy[device], color="red", linewidth=0.8, linestyle="-.", label="copy_ bandwidth")
    ax_t.set(xscale="log", yscale="log", xlabel="elements", ylabel="median step time (ms)",
             title=f"step time, {device} {dtype} {layout}")
    ax_b.set(xscale="log", xlabel="elements", ylabel="GB/s (ideal bytes of the rule / time)",
             title="achieved bandwidth")
    ax_b.legend(fontsize=7, ncol=2)
    for ax in (ax_t, ax_b):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- epochs (part 2)


def load_example():
    """examples/train_digits.py: the same data, model and hyper-parameters as the example."""
    spec = importlib.util.spec_from_file_location("train_digits", REPO / "examples" / "train_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_impl(optimizer: str, device: torch.device) -> str:
    """The path each optimizer takes with foreach=None, fused=None."""
    if optimizer in LOSS_DRIVEN:
        return "fused" if lossopt_fused_available(device, torch.float32) else "foreach"
    # torch.optim defaults to foreach for CUDA tensors, the for-loop otherwise.
    return "foreach" if device.type == "cuda" else "forloop"


def run_epochs(device: torch.device, epochs: int, threads: int, bar: tqdm) -> List[Dict[str, Any]]:
    """Median epoch time and step share of each optimizer on the digits MLP."""
    ex = load_example()
    x_train, y_train, x_test, y_test = (t.to(device) for t in ex.load_data())
    runs = [("Adam", None), ("Adam", "fused"), ("AdaLo", None), ("AdamL", None), ("AdaLoss", None)]
    if not torch_fused_available(device, torch.float32):
        runs.remove(("Adam", "fused"))
    keys = {"Adam": "adam", "AdaLo": "adalo", "AdamL": "adaml", "AdaLoss": "adaloss"}
    jobs = []
    for name, impl in runs:
        torch.manual_seed(0)  # every optimizer starts from the same weights
        model = ex.make_model(x_train.shape[1]).to(device)
        kwargs = {"fused": True} if impl == "fused" else {}
        opt = ex.make_optimizer(keys[name], model.parameters(), **kwargs)
        jobs.append({"name": name, "impl": impl or default_impl(name, device), "model": model, "opt": opt,
                     "shuffle": torch.Generator().manual_seed(0), "epoch_s": [], "step_s": [],
                     "share": []})
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # see examples/train_digits.py: 1 thread suits this tiny model
    try:
        for epoch in range(epochs + 1):  # epoch 0 is warm-up
            for i in range(len(jobs)):
                job = jobs[(epoch + i) % len(jobs)]  # rotated, as in part 1
                bar.set_postfix_str(f"epochs {device.type} {job['name']}/{job['impl']}", refresh=False)
                total, stepping = one_epoch(job, x_train, y_train, ex.DEFAULT_BATCH_SIZE, device)
                if epoch > 0:
                    job["epoch_s"].append(total)
                    job["step_s"].append(stepping)
                    job["share"].append(stepping / total)
                bar.update(1)
    finally:
        torch.set_num_threads(previous)

    out = []
    adam = next(j for j in jobs if j["name"] == "Adam" and j["impl"] == default_impl("Adam", device))
    adam_med = statistics.median(adam["epoch_s"])
    for job in jobs:
        loss, acc = ex._evaluate(job["model"], x_test, y_test)
        med = statistics.median(job["epoch_s"])
        out.append({
            "optimizer": job["name"],
            "impl": job["impl"],
            "device": device.type,
            "epochs": epochs,
            "batch_size": ex.DEFAULT_BATCH_SIZE,
            "threads": threads if device.type == "cpu" else None,
            "hparams": {k: (list(v) if isinstance(v, tuple) else v)
                        for k, v in ex.DEFAULT_HPARAMS[keys[job["name"]]].items()},
            "median_epoch_s": med,
            "q1_epoch_s": quantile(job["epoch_s"], 0.25),
            "q3_epoch_s": quantile(job["epoch_s"], 0.75),
            "median_step_s_per_epoch": statistics.median(job["step_s"]),
            "step_share": statistics.median(job["share"]),
            "ratio_to_adam_default": med / adam_med,
            "epoch_s": job["epoch_s"],
            "test_accuracy": acc,
            "test_loss": loss,
        })
    return out


def one_epoch(job: Dict[str, Any], x: torch.Tensor, y: torch.Tensor, batch_size: int,
              device: torch.device) -> Tuple[float, float]:
    """One epoch; returns (epoch seconds, seconds inside step()).

    Every optimizer gets the loss through ``step(loss=...)`` (not a closure) so
    that the step can be timed apart from forward and backward. On a GPU the
    step is timed with events and the device is synchronised only at the end
    of the epoch, so timing does not slow the epoch down.
    """
    import torch.nn.functional as F

    model, opt = job["model"], job["opt"]
    loss_driven = job["name"] in LOSS_DRIVEN
    perm = torch.randperm(x.shape[0], generator=job["shuffle"]).to(x.device)
    synchronize(device)
    t_epoch = time.perf_counter()
    stepping, events = 0.0, []
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i:i + batch_size]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        if loss_driven:
            opt.step(loss=loss.detach())
        else:
            opt.step()
        if device.type == "cuda":
            end.record()
            events.append((start, end))
        else:
            stepping += time.perf_counter() - t0
    synchronize(device)
    total = time.perf_counter() - t_epoch
    stepping += sum(s.elapsed_time(e) for s, e in events) / 1e3
    return total, stepping


def epoch_table(rows: List[Dict[str, Any]]) -> str:
    headers = ["device", "optimizer", "impl", "median epoch ms", "IQR ms", "step ms/epoch", "step share",
               "x Adam (default)", "test acc"]
    return format_table(headers, [[
        r["device"], r["optimizer"], r["impl"], f"{1e3 * r['median_epoch_s']:.2f}",
        f"{1e3 * (r['q3_epoch_s'] - r['q1_epoch_s']):.2f}", f"{1e3 * r['median_step_s_per_epoch']:.2f}",
        f"{100 * r['step_share']:.0f}%", f"{r['ratio_to_adam_default']:.2f}x", f"{r['test_accuracy']:.3f}",
    ] for r in rows])


def epoch_verdict(rows: List[Dict[str, Any]]) -> List[str]:
    """Per loss-driven optimizer: faster than, slower than, or within the noise of Adam (default path).

    "Within noise" when the interquartile ranges of the epoch times overlap;
    no verdict from fewer than 3 epochs.
    """
    lines = []
    for device in sorted({r["device"] for r in rows}):
        dev = [r for r in rows if r["device"] == device]
        adam = next(r for r in dev if r["optimizer"] == "Adam" and r["impl"] == default_impl("Adam", torch.device(device)))
        for r in dev:
            if r["optimizer"] not in LOSS_DRIVEN:
                continue
            overlap = r["q1_epoch_s"] <= adam["q3_epoch_s"] and adam["q1_epoch_s"] <= r["q3_epoch_s"]
            word = ("(too few epochs to judge) vs" if r["epochs"] < 3 else
                    "within noise of" if overlap else
                    "faster than" if r["median_epoch_s"] < adam["median_epoch_s"] else "slower than")
            lines.append(f"{device}: {r['optimizer']}/{r['impl']} epoch {1e3 * r['median_epoch_s']:.2f} ms is "
                         f"{word} Adam/{adam['impl']} {1e3 * adam['median_epoch_s']:.2f} ms "
                         f"(x{r['ratio_to_adam_default']:.2f}; step {100 * r['step_share']:.0f}% of its epoch)")
    return lines


# --------------------------------------------------------------------------- run metadata


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty() -> Optional[bool]:
    try:
        out = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                             check=True, timeout=10).stdout
        return bool(out.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_info() -> Dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {"processor": platform.processor(), "model_name": model, "cpu_count": os.cpu_count(),
            "usable_cpus": usable, "torch_threads": torch.get_num_threads(), "machine": platform.machine()}


def load_average() -> Optional[float]:
    """1-minute load average, before and after the run (this run's own load
    counts too, so compare it with the thread count)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_info()["model_name"] or platform.processor() or "cpu"


# --------------------------------------------------------------------------- main


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


def make_plan(devices: List[torch.device], args: argparse.Namespace) -> List[Tuple[Config, List[Candidate]]]:
    """Every configuration with the pairs that can run (and fit) there."""
    plan = []
    for device in devices:
        for cfg in build_configs(device, args):
            cands = candidates_for(device, cfg.dtype, cfg.impls, args.optimizers, args)
            cands = fit_to_memory(cfg, cands)
            if not cands:
                print(f"{cfg.describe()}: {cfg.note}", file=sys.stderr)
                continue
            plan.append((cfg, cands))
    return plan


def bandwidth_at_end(devices: List[torch.device], copy: Dict[str, Dict[str, float]],
                     records: List[Dict[str, Any]]) -> None:
    """Measure the copy bandwidth again and fill in every record's fraction of it."""
    for device in devices:  # did the machine's load change during the run?
        c = copy[device.type]
        end = memory_bandwidth(device, copy_numel(device))
        c["copy_gb_per_s_start"], c["copy_gb_per_s_end"] = c["copy_gb_per_s"], end["copy_gb_per_s"]
        c["inplace_add_gb_per_s_end"] = end["inplace_add_gb_per_s"]
        # The reference is the better of the two: a copy slowed by other load
        # would make every fraction look better than it is.
        c["copy_gb_per_s"] = max(c["copy_gb_per_s_start"], c["copy_gb_per_s_end"])
    for r in records:
        r["fraction_of_copy"] = r["gb_per_s"] / copy[r["device"]]["copy_gb_per_s"]


def copy_numel(device: torch.device) -> int:
    return 2**26 if device.type == "cpu" else 2**28  # 256 MiB / 1 GiB of fp32


def print_report(plan, records, epochs, copy, load, args) -> None:
    """The plain-text summary: bandwidth, the step table, the target config, the epochs."""
    print()
    if load[0] is not None and load[0] > 0.5 and "cpu" in copy:
        # Other processes on the same cores make every CPU number here slower and
        # noisier (the end value includes this run's own threads).
        print(f"warning: the machine was busy before this run started (1-min load average {load[0]}; "
              f"{load[1]} at the end; {os.cpu_count()} CPUs): CPU timings are pessimistic and noisy")
    for dev, c in copy.items():
        print(f"copy bandwidth {dev} ({device_name(torch.device(dev))}): {c['copy_gb_per_s_start']:.1f} GB/s "
              f"at the start, {c['copy_gb_per_s_end']:.1f} GB/s at the end, reference {c['copy_gb_per_s']:.1f} "
              f"(dst.copy_(src), {c['copy_bytes'] / 2**20:.0f} MiB fp32, counted 2x bytes); in-place "
              f"dst.add_(src) {c['inplace_add_gb_per_s']:.1f} / {c['inplace_add_gb_per_s_end']:.1f} GB/s (3x bytes)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B/el = the rule's ideal bytes per "
          f"element; GB/s = B/el * numel / median; x best Adam = median / fastest Adam or AdamW path\n")
    print(step_table(records))
    if any(r.get("noisy") for r in records):
        print("noisy!: IQR > half the median or median > 2x min: the machine interfered; compare the min column "
              "too, rerun on an idle machine, or try --threads 1")
    for cfg, _ in plan:
        if cfg.note:
            print(f"note: {cfg.describe()}: {cfg.note}")
    target = [r for r in records if r["label"] == TARGET_LABEL]
    if target:
        print(f"\n{TARGET_LABEL}:")
        for r in sorted(target, key=lambda r: r["median_ms"]):
            ratio = (f"{r['ratio_to_best_adam']:.2f}x best Adam ({r['best_adam']})"
                     if r["ratio_to_best_adam"] is not None else "")
            print(f"  {r['optimizer'] + '/' + r['impl']:<16} median {r['median_ms']:9.3f} ms  "
                  f"min {r['min_ms']:9.3f} ms  {ratio}{'  noisy!' if r.get('noisy') else ''}")
    if epochs:
        print(f"\nEpochs of the digits MLP ({args.epochs} timed epochs each, after one warm-up; "
              f"{args.epoch_threads} thread(s) on the CPU):\n")
        print(epoch_table(epochs))
        print()
        for line in epoch_verdict(epochs):
            print(line)


def save(result: Dict[str, Any], records: List[Dict[str, Any]], copy: Dict[str, Dict[str, float]],
         primary: str, stamp: _dt.datetime, args: argparse.Namespace) -> None:
    """Write the JSON and the PNG where asked (default names under benchmarks/results/)."""
    out, png = args.out, args.plot
    if args.save or (not args.quick and out is None and png is None):
        name = device_name(torch.device(primary))
        tag = primary if primary == "cpu" else "cuda-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
        base = HERE / "results" / f"step_time_{tag}_{stamp.strftime('%Y%m%d-%H%M%S')}"
        out, png = out or base.with_suffix(".json"), png or base.with_suffix(".png")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    if png:
        copy_gbps = {d: c["copy_gb_per_s"] for d, c in copy.items()}
        plot(records, png, copy_gbps, primary, args.plot_dtype, args.plot_layout)
        print(f"wrote {png}")


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

    print_report(plan, records, epochs, copy, (load_start, load_end), args)
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
