"""FSDP2 (``fully_shard``) and tensor parallelism: the optimizers step DTensor shards.

Two gloo processes on the CPU. The parameters are DTensors and each rank
holds a shard of each (and of its optimizer state); the per-element update runs
on the local shards, the loss-derived scalars on the loss, which is averaged
over the default process group by the optimizer itself (``average_loss=True``).

* FSDP2: ``fully_shard`` on each Linear and on the root, parameters sharded on
  dim 0 (unevenly, and one parameter of one element leaves rank 1 an empty
  shard). Each rank gets half of every batch and passes its own local loss;
  FSDP2 averages the gradients, the optimizer averages the loss.
* TP: ``parallelize_module`` with ColwiseParallel / RowwiseParallel (shards on
  dim 0 and dim 1, a replicated bias, and one plain-tensor parameter). Both
  ranks see the whole batch, so their losses are equal.

Either way the result must equal one process trained on the whole batch with
ordinary tensors (float64, rtol = atol = 1e-10: the two runs sum the batch in
different orders). Every path is run: ``foreach=False, fused=False``,
``foreach=True, fused=False``, ``fused=None`` (the default, which takes the
compiled kernels when ``build_info()['cpu_kernels']``) and, for FSDP2 where the
kernels exist, ``fused=True``. Two more FSDP2 cases clip the gradients
(``clip_grad_norm_`` on DTensors) before each step, and one checks that
``torch.distributed.checkpoint``'s optimizer state dict round-trips.

With bfloat16 state (``state_dtype=torch.bfloat16``, float32 parameters, FSDP2)
each rank rounds its shard stochastically, numbering the shard's elements from
its own first one (README: DTensor shards number their elements locally), so
the run is not bit-equal to one process; it must be bit-equal on every path,
on both ranks, with the state kept as bfloat16 shards.

A case that raises is recorded by the workers (both ranks raise at the same
point, so the process group stays usable) and its test fails with the error,
where it was raised, and what to change.

As in tests/test_ddp.py, this file is also the worker script: the module-scoped
fixture runs ``python tests/test_fsdp.py --worker RANK ...`` twice, rendezvous
through a ``file://`` store, with timeouts on the collectives and on the
processes. All cases share one process group per rank.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from _workers import run_workers

WORLD_SIZE = 2
STEPS = 5
GLOBAL_BATCH = 16
IN_FEATURES, HIDDEN, CLASSES = 5, 8, 3
RTOL = ATOL = 1e-10
PROCESS_TIMEOUT_S = 180.0
COLLECTIVE_TIMEOUT_S = 60.0

OPT_KWARGS = {
    "AdaLo": {"betas": (0.9, 0.9), "kappa": 3.0, "weight_decay": 1e-2},
    "AdamL": {"lr": 1e-2},
    "AdaLoss": {"lr": 0.5, "momentum": 0.5},
}
PATHS = {
    "forloop": {"foreach": False, "fused": False},
    "foreach": {"foreach": True, "fused": False},
    "default": {},  # fused=None: the compiled kernels where built, else foreach
    "fused": {"fused": True},
}
PARALLEL = ("fsdp2", "tp")
CLIP = 0.05
# FSDP2 with clip_grad_norm_ (on DTensor gradients) before the step, and the
# non-finite-norm guard of docs/training.md: loss + 0 * norm.full_tensor().
CLIP_CASES = [("AdamL", "fsdp2+clip", "foreach"), ("AdaLoss", "fsdp2+clip", "forloop")]
# FSDP2 with float32 parameters and bfloat16 state, stochastically rounded.
ROUNDED = {"state_dtype": torch.bfloat16, "rounding_seed": 20261206}


def has_cpu_kernels() -> bool:
    import lossopt_cuda

    return bool(lossopt_cuda.build_info()["cpu_kernels"])


def cases() -> list:
    out = []
    for name in OPT_KWARGS:
        for parallel in PARALLEL:
            for path in PATHS:
                if path == "fused" and (parallel != "fsdp2" or not has_cpu_kernels()):
                    continue
                out.append((name, parallel, path))
    return out + CLIP_CASES


def rounded_cases() -> list:
    paths = [p for p in PATHS if p != "fused" or has_cpu_kernels()]
    return [(name, "fsdp2+bf16", path) for name in OPT_KWARGS for path in paths]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(IN_FEATURES, HIDDEN)
        self.l2 = nn.Linear(HIDDEN, CLASSES)
        self.scale = nn.Parameter(torch.ones(1))  # one element: rank 1's FSDP2 shard is empty

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x))) * self.scale


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return Net().double()


def make_data():
    g = torch.Generator().manual_seed(99)
    x = torch.randn(STEPS, GLOBAL_BATCH, IN_FEATURES, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (STEPS, GLOBAL_BATCH), generator=g)
    return x, y


def make_optimizer(name, params, path, **extra):
    import lossopt_cuda

    return getattr(lossopt_cuda, name)(params, **PATHS[path], **OPT_KWARGS[name], **extra)


def _where(err: BaseException) -> str:
    """The innermost frame in lossopt_cuda (else the innermost frame)."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if f"{os.sep}lossopt_cuda{os.sep}" in f.filename]
    f = (ours or frames)[-1]
    short = f.filename[f.filename.rfind(f"lossopt_cuda{os.sep}") :] if ours else f.filename
    return f"{short}:{f.lineno} in {f.name}: {f.line}"


def run(name: str, parallel: str | None, path: str, rank: int | None = None) -> dict:
    """Train STEPS steps; ``parallel=None`` (or ``"+clip"``): one process, plain
    tensors, whole batch. A ``"+clip"`` suffix clips the gradients before each step."""
    from torch.distributed.tensor import DTensor

    clip = parallel is not None and parallel.endswith("+clip")
    if clip:
        parallel = parallel[: -len("+clip")] or None
    rounded = parallel is not None and parallel.endswith("+bf16")
    if rounded:  # float32 parameters, bfloat16 state
        parallel = parallel[: -len("+bf16")] or None
    model = make_model().float() if rounded else make_model()
    if parallel == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        fully_shard(model.l1, mesh=mesh)
        fully_shard(model.l2, mesh=mesh)
        fully_shard(model, mesh=mesh)
    elif parallel == "tp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        parallelize_module(model, mesh, {"l1": ColwiseParallel(), "l2": RowwiseParallel()})
    opt = make_optimizer(name, model.parameters(), path, **(ROUNDED if rounded else {}))
    x, y = make_data()
    if rounded:
        x = x.float()
    result: dict = {"error": None}
    try:
        for step in range(STEPS):
            xb, yb = x[step], y[step]
            if parallel == "fsdp2":  # each rank half the batch
                half = GLOBAL_BATCH // WORLD_SIZE
                xb, yb = xb[rank * half : (rank + 1) * half], yb[rank * half : (rank + 1) * half]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            if clip:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
                if isinstance(norm, DTensor):  # FSDP2/TP: a replicated DTensor
                    norm = norm.full_tensor()
                loss = loss + 0.0 * norm
            opt.step(loss=loss)  # the local loss; averaged over the default group
    except Exception as err:  # noqa: BLE001 - recorded for the test to report
        result["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        result["where"] = _where(err)
        return result
    result["params"] = [
        (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for p in model.parameters()
    ]
    # {(param index, state key): (state type, state local numel, param local numel, param numel, dtype)}
    shards = {}
    for i, p in enumerate(model.parameters()):
        local = p.to_local() if isinstance(p, DTensor) else p
        for key, s in opt.state[p].items():
            if s.dim() == 0:
                continue  # the per-group scalars (loss_ema, step, b_sq ...)
            s_local = s.to_local() if isinstance(s, DTensor) else s
            shards[(i, key)] = (type(s).__name__, s_local.numel(), local.numel(), p.numel(), s.dtype)
    result["shards"] = shards
    if parallel == "fsdp2" and name == "AdamL" and path == "foreach":
        result["checkpoint"] = checkpoint_round_trip(model, opt, name, path)
    return result


def checkpoint_round_trip(model, opt, name, path) -> str:
    """torch.distributed.checkpoint's optimizer state dict, saved and loaded into a fresh optimizer."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    try:
        saved = get_optimizer_state_dict(model, opt)
        fresh = make_optimizer(name, model.parameters(), path)
        set_optimizer_state_dict(model, fresh, saved)
        for p in model.parameters():
            a, b = opt.state[p], fresh.state[p]
            assert set(a) == set(b), (sorted(a), sorted(b))
            for key in a:
                va = a[key].to_local() if isinstance(a[key], DTensor) else a[key]
                vb = b[key].to_local() if isinstance(b[key], DTensor) else b[key]
                assert type(a[key]) is type(b[key]) and torch.equal(va, vb), key
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {err} at {_where(err)}"
    return "ok"


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
        results = {}
        for case in cases() + rounded_cases():
            results[case] = run(*case, rank=rank)
            dist.barrier()
        torch.save(results, out)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- tests


def _fsdp2_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
        from torch.distributed.tensor import DTensor  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = [
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="torch.distributed with gloo is not available",
    ),
    pytest.mark.skipif(not _fsdp2_available(), reason="torch.distributed.fsdp.fully_shard is not available"),
    pytest.mark.skipif(sys.platform == "win32", reason="file:// rendezvous path format"),
]


def _launch(tmp: Path) -> list:
    return run_workers(__file__, tmp, WORLD_SIZE, PROCESS_TIMEOUT_S, "FSDP2/TP")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("fsdp"))


def _diagnosis(name, parallel, path, r) -> str:
    return f"{name} with {parallel} on the {path!r} path raised {r['error']}\n  at {r['where']}\n"


@pytest.mark.parametrize("name, parallel, path", cases(), ids=lambda v: str(v))
def test_dtensor_training_matches_single_process(results, name, parallel, path):
    r0, r1 = (r[(name, parallel, path)] for r in results)
    if r0["error"] or r1["error"]:
        pytest.fail(_diagnosis(name, parallel, path, r0 if r0["error"] else r1), pytrace=False)
    for i, (a, b) in enumerate(zip(r0["params"], r1["params"])):
        assert torch.equal(a, b), f"the ranks disagree on parameter {i}"
    expected = run(name, "+clip" if parallel.endswith("+clip") else None, "forloop")["params"]
    moved = max((a - b).abs().max().item() for a, b in zip(expected, make_model().parameters()))
    assert moved > 1e-3
    for i, (a, e) in enumerate(zip(r0["params"], expected)):
        if not torch.allclose(a, e, rtol=RTOL, atol=ATOL):
            raise AssertionError(
                f"{name} {parallel} {path}: parameter {i} differs from one process, "
                f"max |diff| = {(a - e).abs().max().item():.3e}"
            )
    # The state is sharded like its parameter: each rank keeps (and updates) its shard only.
    assert r0["shards"] and r0["shards"].keys() == r1["shards"].keys()
    for (i, key), (kind, state_local, local, full, _) in r0["shards"].items():
        kind1, state_local1, local1, _, _ = r1["shards"][(i, key)]
        assert (state_local, state_local1) == (local, local1), (i, key)
        if parallel.startswith("fsdp2"):
            assert kind == kind1 == "DTensor", (i, key, kind, kind1)
            assert state_local + state_local1 == full, (i, key, state_local, state_local1, full)


@pytest.mark.parametrize("name", OPT_KWARGS)
def test_rounded_dtensor_shards_write_the_same_bits_on_every_path(results, name):
    """bfloat16 state on FSDP2 shards: both ranks and every path (for-loop,
    foreach, the default and, where built, the CPU kernels) end with the very
    same parameters; the state stays a bfloat16 DTensor sharded like its
    parameter; the parameters moved."""
    runs = {}
    for case in (c for c in rounded_cases() if c[0] == name):
        r0, r1 = (r[case] for r in results)
        if r0["error"] or r1["error"]:
            pytest.fail(_diagnosis(*case, r0 if r0["error"] else r1), pytrace=False)
        for i, (a, b) in enumerate(zip(r0["params"], r1["params"])):
            assert torch.equal(a, b), f"{case}: the ranks disagree on parameter {i}"
        runs[case[2]] = r0
    base = runs["forloop"]
    for path, r in runs.items():
        for i, (a, b) in enumerate(zip(r["params"], base["params"])):
            assert a.dtype == torch.float32 and torch.equal(a, b), f"{name} {path}: parameter {i} differs from forloop"
        states = {k: v for k, v in r["shards"].items() if k[1] != "rounding_step"}
        assert states, f"{name} {path}: no per-element state"
        for (i, key), (kind, state_local, local, full, dtype) in states.items():
            assert kind == "DTensor" and dtype == torch.bfloat16 and state_local == local, (path, i, key, kind, dtype)
    start = [p.detach().float() for p in make_model().parameters()]
    assert max((a - b).abs().max().item() for a, b in zip(base["params"], start)) > 1e-3


def test_fsdp2_optimizer_checkpoint_round_trip(results):
    """get_optimizer_state_dict / set_optimizer_state_dict (torch.distributed.checkpoint)
    carry the sharded state and the per-group scalars (AdamL: step, loss0)."""
    for rank, r in enumerate(results):
        case = r[("AdamL", "fsdp2", "foreach")]
        if case["error"]:
            pytest.fail(_diagnosis("AdamL", "fsdp2", "foreach", case), pytrace=False)
        assert case["checkpoint"] == "ok", f"rank {rank}: {case['checkpoint']}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="FSDP2/TP worker for tests/test_fsdp.py")
    parser.add_argument("--worker", type=int, required=True, metavar="RANK")
    parser.add_argument("world_size", type=int)
    parser.add_argument("init_file")
    parser.add_argument("out")
    args = parser.parse_args()
    _worker(args.worker, args.world_size, args.init_file, args.out)
