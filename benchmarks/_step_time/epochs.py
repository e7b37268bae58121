"""Part 2 of step_time.py: whole training epochs (forward, backward, step) of
the digits MLP of ``examples/train_digits.py``, one model per optimizer on its
default path, epochs interleaved; the claim "time per epoch is shorter than
Adam's" judged from them."""

from __future__ import annotations

import importlib.util
import statistics
import time
from typing import Any, Dict, List, Tuple

import torch
from tqdm import tqdm

from _system import REPO

from .cases import LOSS_DRIVEN, lossopt_fused_available, torch_fused_available
from .report import format_table
from .timing import quantile, synchronize

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


def print_epochs(rows: List[Dict[str, Any]], epochs: int, threads: int) -> None:
    """Part 2's table and verdicts, printed."""
    print(f"\nEpochs of the digits MLP ({epochs} timed epochs each, after one warm-up; "
          f"{threads} thread(s) on the CPU):\n")
    print(epoch_table(rows))
    print()
    for line in epoch_verdict(rows):
        print(line)
