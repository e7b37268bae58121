"""Distributed data parallel: the loss is averaged across ranks before it is used.

Two CPU processes (gloo backend) train a small float64 MLP wrapped in
DistributedDataParallel. At every step each rank takes a different half of the
global batch and passes its LOCAL mean loss to the optimizer; DDP averages the
gradients and the optimizer (``average_loss=True``, the default) averages the
loss. Then

* both ranks hold bit-identical parameters (``torch.equal``), and
* they match one process trained on the whole batch with the mean loss
  (float64, ``atol = rtol = 1e-10``), the same optimizer and hyperparameters.

This holds however the loss is passed (tensor, Python float, closure), with an
explicit ``process_group``, on every update path (for-loop, foreach, fused when
built), and when one rank's loss is NaN (every rank skips that step).

With ``average_loss=False`` each rank uses its own local loss, which differs
between the halves, so the replicas drift apart and away from the
single-process run: the averaging is what keeps them in sync. Each rank then
matches a one-process simulation of the two replicas (averaged gradients, each
replica's own local loss), which pins down that the local loss really was used.

The test file doubles as the worker script: the module-scoped fixture runs
``python tests/test_ddp.py --worker RANK ...`` twice (one process per rank),
rendezvous through a ``file://`` store in a temporary directory (no ports to
pick), with timeouts on the process group and on the processes, so a hung or
crashed rank fails the test instead of hanging it. Everything (27 DDP runs of
10 steps in one process group) takes a few seconds.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from _workers import run_workers

WORLD_SIZE = 2
STEPS = 10
GLOBAL_BATCH = 16  # each rank gets GLOBAL_BATCH // WORLD_SIZE rows per step
IN_FEATURES, HIDDEN, CLASSES = 5, 7, 3
ATOL = RTOL = 1e-10
PROCESS_TIMEOUT_S = 120.0  # both ranks, from start to exit
COLLECTIVE_TIMEOUT_S = 60.0  # any single collective / rendezvous

# Hyperparameters chosen so that the loss visibly steers each rule within 10 steps.
OPT_KWARGS = {
    # beta2=0.9: the loss EMA (and so lr_t) warms up within a few steps.
    "AdaLo": {"betas": (0.9, 0.9), "kappa": 3.0, "weight_decay": 1e-2},
    "AdamL": {"lr": 1e-2},
    "AdaLoss": {"lr": 0.5},
}
# How the loss reaches step(): loss=<0-d tensor>, loss=<python float>, a closure.
# "group": loss=<tensor> with an explicit process_group (a new group of all ranks).
# "nan": loss=<tensor>, but at step NAN_STEP rank 1 passes NaN: the averaged loss
#   is NaN, so every rank must skip that step (and stay in sync).
# "local": loss=<tensor> with average_loss=False.
MODES = ("tensor", "float", "closure", "group", "nan", "local")
NAN_STEP = 3
# Which update path: "default" (foreach=None, fused=None: the fastest available),
# or forced. The loss is averaged before any path runs, but every path must
# consume the averaged loss, so each is checked (with loss=<tensor>).
PATHS = {
    "default": {},
    "forloop": {"foreach": False, "fused": False},
    "foreach": {"foreach": True, "fused": False},
    "fused": {"fused": True},  # only where compiled CPU kernels take float64
}
# (optimizer, mode, path)
CASES = [(name, mode, "default") for name in OPT_KWARGS for mode in MODES] + [
    (name, "tensor", path) for name in OPT_KWARGS for path in PATHS if path != "default"
]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(IN_FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, CLASSES)
    ).double()


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(STEPS, GLOBAL_BATCH, IN_FEATURES, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (STEPS, GLOBAL_BATCH), generator=g)
    return x, y


def shard(t: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    per_rank = t.shape[0] // world_size
    return t[rank * per_rank : (rank + 1) * per_rank]


def make_optimizer(
    name: str, params, average_loss: bool = True, path: str = "default", **kwargs
):
    import lossopt_cuda

    cls = getattr(lossopt_cuda, name)
    return cls(params, average_loss=average_loss, **PATHS[path], **OPT_KWARGS[name], **kwargs)


def fused_available() -> bool:
    """Whether fused=True can step float64 CPU parameters in this installation."""
    from lossopt_cuda import AdaLoss

    p = torch.zeros(3, dtype=torch.float64)
    p.grad = torch.ones_like(p)
    try:
        AdaLoss([p], fused=True).step(loss=1.0)
    except RuntimeError as err:
        if "fused=True" in str(err):  # the package's "no compiled kernel" errors
            return False
        raise
    return True


def available_cases() -> list[tuple[str, str, str]]:
    fused = fused_available()
    return [case for case in CASES if case[2] != "fused" or fused]


def run(
    name: str, mode: str, path: str = "default", *, rank: int | None = None, world_size: int = 1
):
    """Train for STEPS steps; return the final parameters and the per-step losses.

    ``rank=None``: one process on the whole batch. Otherwise: this rank's half
    of every batch through DDP (the process group must be initialised).
    """
    model = make_model()
    net = model
    if rank is not None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model)
    extra = {}
    if mode == "group" and rank is not None:
        extra["process_group"] = dist.new_group(ranks=list(range(world_size)))
    opt = make_optimizer(
        name, model.parameters(), average_loss=(mode != "local"), path=path, **extra
    )
    x, y = make_data()
    losses = []
    loss_modified = False
    for step in range(STEPS):
        xb, yb = x[step], y[step]
        if rank is not None:
            xb, yb = shard(xb, rank, world_size), shard(yb, rank, world_size)
        if mode == "closure":
            seen = []

            def closure():
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(xb), yb)
                loss.backward()
                seen.append(loss.detach())
                return loss

            opt.step(closure)
            losses.append(float(seen[-1]))
        else:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            local = loss.item()
            if mode == "nan" and step == NAN_STEP and rank in (None, 1):
                opt.step(loss=torch.tensor(float("nan"), dtype=torch.float64))
            else:
                opt.step(loss=local if mode == "float" else loss)
            # Averaging must not write into the caller's tensor.
            if not torch.equal(loss.detach(), torch.tensor(local, dtype=loss.dtype)):
                if not (math.isnan(local) and loss.isnan()):
                    loss_modified = True
            losses.append(local)
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "losses": losses,  # the local losses (before any averaging)
        "loss_modified": loss_modified,  # step() wrote into the loss tensor it was given
    }


def run_local_loss_reference(name: str, world_size: int = WORLD_SIZE):
    """One process simulating DDP with ``average_loss=False``; returns each replica's parameters.

    Every replica computes the gradient of its own shard at its own parameters;
    the gradients are averaged (as DDP does) and every replica steps with the
    averaged gradient but its own local loss. (Once the replicas have drifted
    apart their gradients are taken at different points, so a single model
    cannot stand in for them.)
    """
    models = [make_model() for _ in range(world_size)]
    opts = [make_optimizer(name, m.parameters(), average_loss=False) for m in models]
    x, y = make_data()
    for step in range(STEPS):
        local_losses, grads = [], []
        for rank, model in enumerate(models):
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(
                model(shard(x[step], rank, world_size)), shard(y[step], rank, world_size)
            )
            loss.backward()
            local_losses.append(loss.detach())
            grads.append([p.grad.clone() for p in model.parameters()])
        mean_grads = [sum(gs) / world_size for gs in zip(*grads)]
        for model, opt, loss in zip(models, opts, local_losses):
            for p, g in zip(model.parameters(), mean_grads):
                p.grad = g.clone()
            opt.step(loss=loss)
    return [[p.detach().clone() for p in model.parameters()] for model in models]


# --------------------------------------------------------------------------- worker


def _worker(rank: int, world_size: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    try:
        results = {
            case: run(*case, rank=rank, world_size=world_size) for case in available_cases()
        }
        torch.save(results, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- tests


pytestmark = [
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="torch.distributed with gloo is not available",
    ),
    pytest.mark.skipif(sys.platform == "win32", reason="file:// rendezvous path format"),
]


def _launch(tmp: Path) -> list:
    return run_workers(__file__, tmp, WORLD_SIZE, PROCESS_TIMEOUT_S, "DDP")


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("ddp"))


def _assert_close(actual, expected, what):
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == torch.float64
        if not torch.allclose(a, e, rtol=RTOL, atol=ATOL):
            diff = (a - e).abs().max().item()
            raise AssertionError(f"{what}: parameter {i} differs, max |diff| = {diff:.3e}")


def _max_diff(a_params, b_params) -> float:
    return max((a - b).abs().max().item() for a, b in zip(a_params, b_params))


@pytest.mark.parametrize("name", list(OPT_KWARGS))
@pytest.mark.parametrize(
    "mode, path",
    [(mode, "default") for mode in MODES if mode != "local"]
    + [("tensor", path) for path in PATHS if path != "default"],
)
def test_ddp_matches_single_process(ddp_results, name, mode, path):
    if (name, mode, path) not in ddp_results[0]:
        pytest.skip(f"{path} path not available for float64 CPU parameters")
    r0, r1 = (r[(name, mode, path)] for r in ddp_results)
    p0, p1, losses0, losses1 = r0["params"], r1["params"], r0["losses"], r1["losses"]
    assert not (r0["loss_modified"] or r1["loss_modified"]), "step() modified the given loss"
    # The ranks saw different local losses ...
    assert losses0 != losses1
    # ... yet hold the very same parameters.
    for i, (a, b) in enumerate(zip(p0, p1)):
        if not torch.equal(a, b):
            diff = (a - b).abs().max().item()
            raise AssertionError(
                f"rank 0 and rank 1 differ in parameter {i}, max |diff| = {diff:.3e}"
            )
    # The parameters moved, and match one process trained on the whole batch.
    init = list(make_model().parameters())
    assert _max_diff(p0, init) > 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the "nan" mode's skipped step
        single = run(name, mode, path)
    expected, full_losses = single["params"], single["losses"]
    assert not single["loss_modified"], "step() modified the given loss"
    _assert_close(p0, expected, f"{name} DDP vs single process")
    # Sanity: the mean of the local losses is the full-batch loss (equal halves).
    for l0, l1, full in zip(losses0, losses1, full_losses):
        assert abs((l0 + l1) / 2 - full) < 1e-12


@pytest.mark.parametrize("name", list(OPT_KWARGS))
def test_average_loss_false_uses_local_loss(ddp_results, name):
    r0, r1 = (r[(name, "local", "default")] for r in ddp_results)
    p0, p1, losses0, losses1 = r0["params"], r1["params"], r0["losses"], r1["losses"]
    averaged = ddp_results[0][(name, "tensor", "default")]["params"]
    assert all(abs(a - b) > 1e-3 for a, b in zip(losses0, losses1)), "local losses must differ"
    # Without loss averaging the replicas drift apart and away from the averaged run ...
    assert _max_diff(p0, p1) > 1e-6
    assert _max_diff(p0, averaged) > 1e-6
    assert _max_diff(p1, averaged) > 1e-6
    # ... because each rank used its own loss (with the DDP-averaged gradient).
    expected = run_local_loss_reference(name)
    for rank, params in enumerate((p0, p1)):
        _assert_close(params, expected[rank], f"{name} rank {rank} with average_loss=False")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="DDP worker for tests/test_ddp.py")
    parser.add_argument("--worker", type=int, required=True, metavar="RANK")
    parser.add_argument("world_size", type=int)
    parser.add_argument("init_file")
    parser.add_argument("out")
    args = parser.parse_args()
    _worker(args.worker, args.world_size, args.init_file, args.out)
