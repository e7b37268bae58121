"""``master_weights=True``: float32 master copies of float16/bfloat16 parameters.

The rule steps the master; the parameter is its rounded copy. So the masters
must follow exactly the trajectory of the same optimizer run on float32
parameters fed the same (low-precision) gradients, on every path, and the
parameters must equal their masters rounded. On the fused path the master and
the parameter are written in the same kernel pass.
"""

import math

import pytest
import torch

from conftest import (OPTS, PATH_KWARGS, PATHS, assert_unchanged, clone_params, make_grads, make_params,
                      make_opt, set_grads, snapshot)
from lossopt_cuda import AdaLo, AdaLoss, AdamL

LOWP = [torch.bfloat16, torch.float16]
SHAPES = [(7,), (3, 5), (2, 3, 4), (1,), ()]
HP = {
    "AdaLo": dict(betas=(0.5, 0.9), kappa=1.0, weight_decay=0.1),
    "AdamL": dict(lr=1e-2, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.05),
    "AdaLoss": dict(lr=0.2, alpha=0.5, momentum=0.9, weight_decay=0.01),
}
LOSSES = [2.5, 1.7, math.nan, 1.1, 0.8, 0.6]


def _run(cls, path, params, grads_per_step, **hp):
    opt = make_opt(cls, params, path, **hp)
    for loss, grads in zip(LOSSES, grads_per_step):
        set_grads(params, grads)
        opt.step(loss=torch.tensor(loss))
    return opt


@pytest.mark.filterwarnings("ignore:.*skipped so far:RuntimeWarning")
@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(OPTS))
def test_masters_follow_the_float32_trajectory(name, path, dtype, gen):
    cls, hp = OPTS[name], HP[name]
    params = make_params(dtype, 11, SHAPES)
    f32_params = [p.detach().float().requires_grad_() for p in params]
    grads = [make_grads(params, gen) for _ in LOSSES]  # in the parameters' dtype
    opt = _run(cls, path, params, grads, master_weights=True, **hp)
    ref = _run(cls, path, f32_params, [[g.float() for g in gs] for gs in grads], **hp)
    # The fused kernels take float32 parameters through SIMD code and the
    # masters through scalar code: equal to float32 rounding, not bit for bit.
    tol = dict(rtol=2e-6, atol=1e-7) if path == "fused" else dict(rtol=0, atol=0)
    for i, (p, r) in enumerate(zip(params, f32_params)):
        master = opt.state[p]["master_param"]
        assert master.dtype == torch.float32 and master.shape == p.shape
        torch.testing.assert_close(master, r.detach(), **tol, msg=f"{name} {path} master {i}")
        assert torch.equal(p.detach(), master.to(dtype)), f"{name} {path}: param {i} is not its rounded master"
        for key, value in ref.state[r].items():
            if key not in opt._group_state_keys:
                torch.testing.assert_close(opt.state[p][key], value, **tol, msg=f"{name} {key}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(OPTS))
def test_updates_below_one_ulp_accumulate(name, path, gen):
    """The reason for master weights: a bfloat16 parameter near 1 does not move
    under steps smaller than half its ulp (2^-9), its master does."""
    cls = OPTS[name]
    # Every step below half an ulp (2^-9), forty of them well above it.
    hp = {"AdaLo": dict(kappa=1e3, mode="compliant"), "AdamL": dict(lr=1e-4),
          "AdaLoss": dict(lr=3e-4)}[name]
    plain = [torch.ones(64, dtype=torch.bfloat16, requires_grad=True)]
    kept = clone_params(plain)
    grads = [[torch.ones(64, dtype=torch.bfloat16)] for _ in range(40)]
    opt_plain = make_opt(cls, plain, path, **hp)
    opt_kept = make_opt(cls, kept, path, master_weights=True, **hp)
    for gs in grads:
        for params, opt in ((plain, opt_plain), (kept, opt_kept)):
            set_grads(params, gs)
            opt.step(loss=1.0)
    assert torch.equal(plain[0], torch.ones_like(plain[0])), "steps below an ulp should round away"
    master = opt_kept.state[kept[0]]["master_param"]
    assert bool((master < 1 - 2**-9).all()), f"{name} {path}: the master did not accumulate"
    assert torch.equal(kept[0].detach(), master.to(torch.bfloat16))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(OPTS))
def test_a_bad_loss_changes_neither_parameters_nor_masters(name, path, gen):
    cls = OPTS[name]
    params = make_params(torch.bfloat16, 12, SHAPES)
    opt = make_opt(cls, params, path, master_weights=True, **HP[name])
    set_grads(params, make_grads(params, gen))
    opt.step(loss=1.5)
    snap = snapshot(opt, params)
    set_grads(params, make_grads(params, gen))
    with pytest.warns(RuntimeWarning, match="skipped"):
        opt.step(loss=torch.tensor(math.inf))
    assert_unchanged(opt, params, snap, f"{name} {path}")


@pytest.mark.parametrize("dst", PATHS)
@pytest.mark.parametrize("src", PATHS)
@pytest.mark.parametrize("name", list(OPTS))
def test_masters_move_between_paths_in_checkpoints(name, src, dst, gen):
    cls = OPTS[name]
    params = make_params(torch.float16, 13, SHAPES)
    twins = clone_params(params)
    grads = [make_grads(params, gen) for _ in range(4)]
    straight = make_opt(cls, params, dst, master_weights=True, **HP[name])
    first = make_opt(cls, twins, src, master_weights=True, **HP[name])
    for k, gs in enumerate(grads):
        set_grads(params, gs)
        straight.step(loss=2.0 - 0.3 * k)
        if k == 2:  # checkpoint after two steps, resume on the other path
            saved = first.state_dict()
            resumed = make_opt(cls, twins, dst, master_weights=True, **HP[name])
            resumed.load_state_dict(saved)
            first = resumed
        set_grads(twins, gs)
        first.step(loss=2.0 - 0.3 * k)
    # Bit for bit on one path; the paths round differently (AdamL's for-loop
    # divides in another order than its foreach), so across paths to float32 rounding.
    tol = dict(rtol=0, atol=0) if src == dst else dict(rtol=2e-6, atol=1e-7)
    for p, t in zip(params, twins):
        torch.testing.assert_close(first.state[t]["master_param"], straight.state[p]["master_param"], **tol)
        assert torch.equal(t.detach(), first.state[t]["master_param"].to(t.dtype))


@pytest.mark.parametrize("cls", [AdaLo, AdamL, AdaLoss], ids=lambda c: c.__name__)
def test_only_low_precision_parameters_get_masters(cls, gen):
    params = make_params(torch.float32, 14, [(3,)]) + make_params(torch.float64, 15, [(4,)]) \
        + make_params(torch.bfloat16, 16, [(5,)])
    opt = cls(params, master_weights=True)
    set_grads(params, make_grads(params, gen))
    opt.step(loss=1.0)
    assert [("master_param" in opt.state[p]) for p in params] == [False, False, True]


@pytest.mark.skipif("fused" not in PATHS, reason="no compiled kernels")
def test_the_ops_refuse_masters_for_float32_parameters():
    p = torch.zeros(4)
    m = torch.ones(4)
    exp_avg = torch.zeros(4)
    scalars = torch.tensor([1.0, 1.0, 0.1], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="master weights are for float16 and bfloat16"):
        torch.ops.lossopt.adalo_([p], [torch.ones(4)], [exp_avg], [m], scalars, 0.9, 0.0)
    assert torch.equal(p, torch.zeros(4)) and torch.equal(m, torch.ones(4))
    assert torch.equal(exp_avg, torch.zeros(4))


def _doc_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _doc_batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 10, generator=gen), torch.randint(0, 3, (8,), generator=gen))
            for _ in range(6)]


@pytest.mark.parametrize("path", PATHS)
def test_doc_float16_master_weights_with_grad_scaler(path):
    """The snippet of docs/training.md ("Mixed precision"): float16 parameters,
    float32 masters, torch.amp.GradScaler. It trains as without a scaler, to
    float16 gradient rounding (the scaled backward keeps small gradients that
    float16 flushes otherwise, so not bit for bit); a scale left in the
    gradients would make AdaLoss's steps 16 times too large."""
    def train(use_scaler):
        model = _doc_model().to(torch.float16)
        opt = AdaLoss(model.parameters(), lr=0.1, master_weights=True, **PATH_KWARGS[path])
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, enabled=use_scaler)
        loss_fn = torch.nn.CrossEntropyLoss()
        for x, y in _doc_batches():
            opt.zero_grad()
            loss = loss_fn(model(x.half()).float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt, loss=loss)  # the unscaled loss
            scaler.update()
        return model, opt

    (scaled, opt_s), (plain, opt_p) = train(True), train(False)
    start = _doc_model().to(torch.float16)
    for a, b, p0 in zip(scaled.parameters(), plain.parameters(), start.parameters()):
        master_s, master_p = opt_s.state[a]["master_param"], opt_p.state[b]["master_param"]
        moved = (master_p - p0.detach().float()).abs().max()
        assert moved > 1e-3
        torch.testing.assert_close(master_s, master_p, rtol=0, atol=0.02 * float(moved))
        assert torch.equal(a.detach(), master_s.half())
    assert opt_s.skipped_steps == 0
