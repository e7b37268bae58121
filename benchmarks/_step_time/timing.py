"""Timing: the pairs of a configuration stepped side by side (round-robin,
the order rotated each round), the device's copy bandwidth as the reference,
and one JSON record per pair."""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Callable, Dict, List, Sequence

import torch
from tqdm import tqdm

from .cases import LOSS_DRIVEN, Candidate, Config, free_bytes, make_optimizer
from .costs import bytes_per_element, flops_per_element, state_bytes_per_element

LOSS_VALUE = 0.7  # any valid loss; the step's cost does not depend on it

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
            "storage": cand.storage,
            "state_bytes_per_element": state_bytes_per_element(cand.optimizer, cfg.dtype, cand.hparams),
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
            "hparams": {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in cand.hparams.items()},
            "threads": torch.get_num_threads() if cfg.device.type == "cpu" else None,
            "note": cfg.note,
        })
    return records


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
