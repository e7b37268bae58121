"""state_dict / load_state_dict, param groups, lr schedulers."""

import copy
import io

import pytest
import torch

from lossopt_cuda import AdaLo

from conftest import (CROSS_TOL, OPTS, PATHS, REF, assert_params_match_ref,
                      assert_state_matches_ref, assert_unchanged, clone_params,
                      first_param_state, make_grads, make_opt, make_params,
                      param_state_keys, random_losses, set_grads, snapshot)

HP = {
    "AdaLo": dict(mode="compliant", betas=(0.7, 0.6), kappa=2.5, weight_decay=0.05),
    "AdamL": dict(lr=1e-2, normalize_loss=True, phi=2.0, gamma=0.7, min_loss=0.01,
                  weight_decay=0.02),
    "AdaLoss": dict(lr=0.1, momentum=0.9, alpha=0.5, c=0.5, weight_decay=0.01),
}
NAMES = list(HP)
LOWP_TOL = dict(rtol=2.0**-6, atol=2.0**-6)


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _schedule(gen, params, n):
    return [(make_grads(params, gen), L) for L in random_losses(gen, n, 0.1, 4.0)]


def _state_dtypes(opt):
    return [{k: (v.dtype, tuple(v.shape)) for k, v in opt.state[p].items() if torch.is_tensor(v)}
            for g in opt.param_groups for p in g["params"]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("dst", PATHS)
@pytest.mark.parametrize("src", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_resume_across_paths(name, src, dst, dtype, gen):
    cls = OPTS[name]
    hp = HP[name]
    base = make_params(dtype, 31)
    sched = _schedule(gen, base, 6)

    # uninterrupted run on the destination path
    pu = clone_params(base)
    ou = make_opt(cls, pu, dst, **hp)
    for grads, L in sched:
        set_grads(pu, grads)
        ou.step(loss=L)

    # 3 steps on src, checkpoint (params + optimizer), fresh objects on dst
    pa = clone_params(base)
    oa = make_opt(cls, pa, src, **hp)
    for grads, L in sched[:3]:
        set_grads(pa, grads)
        oa.step(loss=L)
    dtypes_before = _state_dtypes(oa)
    ckpt = _roundtrip({"params": [p.detach() for p in pa], "opt": oa.state_dict()})
    pb = [t.clone().requires_grad_() for t in ckpt["params"]]
    ob = make_opt(cls, pb, dst, **hp)
    ob.load_state_dict(ckpt["opt"])
    assert _state_dtypes(ob) == dtypes_before, "load_state_dict changed state dtypes/shapes"
    for grads, L in sched[3:]:
        set_grads(pb, grads)
        ob.step(loss=L)

    tol = CROSS_TOL.get(dtype, LOWP_TOL)
    for i, (a, b) in enumerate(zip(pu, pb)):
        assert b.dtype == dtype
        torch.testing.assert_close(b.detach().double(), a.detach().double(), **tol,
                                   msg=lambda m: f"resumed vs uninterrupted param {i}: {m}")
    keys = param_state_keys(cls, hp)
    for a, b in zip(pu, pb):
        for key in keys:
            stol = CROSS_TOL.get(dtype, LOWP_TOL if key == "momentum_buffer"
                                 else CROSS_TOL[torch.float32])
            torch.testing.assert_close(ou.state[a][key].double(),
                                       ob.state[b][key].double(), **stol)
    s_u, s_b = first_param_state(ou), first_param_state(ob)
    for key in {"AdaLo": ["loss_ema"], "AdamL": ["step"], "AdaLoss": ["b_sq"]}[name]:
        torch.testing.assert_close(s_b[key], s_u[key], rtol=1e-7, atol=0)

    if dtype != torch.bfloat16:
        ref = REF[cls](base, **hp)
        for grads, L in sched:
            ref.step(grads, L)
        assert_params_match_ref(pb, ref, msg=f"resumed {src}->{dst}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_load_restores_hyperparameters(name, path, gen):
    """An optimizer constructed with default hyper-parameters and loaded from a
    checkpoint continues with the checkpoint's hyper-parameters."""
    cls = OPTS[name]
    hp = HP[name]
    base = make_params(torch.float64, 32)
    sched = _schedule(gen, base, 5)
    ref = REF[cls](base, **hp)
    pa = clone_params(base)
    oa = make_opt(cls, pa, path, **hp)
    for grads, L in sched[:2]:
        set_grads(pa, grads)
        oa.step(loss=L)
        ref.step(grads, L)
    sd = _roundtrip(oa.state_dict())
    pb = clone_params(pa)
    ob = make_opt(cls, pb, path)  # defaults
    ob.load_state_dict(sd)
    for k, v in hp.items():
        got = ob.param_groups[0][k]
        assert (tuple(got) if isinstance(v, tuple) else got) == v, k
    for grads, L in sched[2:]:
        set_grads(pb, grads)
        ob.step(loss=L)
        ref.step(grads, L)
    assert_params_match_ref(pb, ref)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_roundtrip_same_optimizer(name, path, gen):
    """Saving, taking more steps, then loading the old state into the same
    optimizer and params rewinds exactly."""
    cls = OPTS[name]
    hp = HP[name]
    params = make_params(torch.float32, 33)
    opt = make_opt(cls, params, path, **hp)
    sched = _schedule(gen, params, 4)
    for grads, L in sched[:2]:
        set_grads(params, grads)
        opt.step(loss=L)
    saved_params = [p.detach().clone() for p in params]
    sd = _roundtrip(opt.state_dict())
    snap = snapshot(opt, params)
    runs = []
    for _ in range(2):
        for grads, L in sched[2:]:
            set_grads(params, grads)
            opt.step(loss=L)
        runs.append([p.detach().clone() for p in params])
        with torch.no_grad():
            for p, s in zip(params, saved_params):
                p.copy_(s)
        opt.load_state_dict(copy.deepcopy(sd))
        assert_unchanged(opt, params, snap, msg="after reload")
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("where", ["last", "first"])
def test_load_state_dict_shape_mismatch(name, path, where, gen):
    cls = OPTS[name]
    hp = HP[name]
    params = make_params(torch.float32, 34)
    ref = REF[cls](params, **hp)
    opt = make_opt(cls, params, path, **hp)
    for grads, L in _schedule(gen, params, 2):
        set_grads(params, grads)
        opt.step(loss=L)
        ref.step(grads, L)
    good = opt.state_dict()
    bad = copy.deepcopy(good)
    key = param_state_keys(cls, hp)[0]
    idx = len(params) - 1 if where == "last" else 0
    t = bad["state"][idx][key]
    bad["state"][idx][key] = torch.zeros(tuple(t.shape) + (2,), dtype=t.dtype)
    # also change a group hyper-parameter and other params' state: nothing of
    # this may be applied when the load fails
    hkey = {"AdaLo": "kappa", "AdamL": "lr", "AdaLoss": "lr"}[name]
    bad["param_groups"][0][hkey] = 123.0
    other = 0 if where == "last" else len(params) - 1
    bad["state"][other][key] = bad["state"][other][key] + 1.0
    snap = snapshot(opt, params)
    with pytest.raises(ValueError):
        opt.load_state_dict(bad)
    assert_unchanged(opt, params, snap, msg="failed load_state_dict")
    # still on the reference trajectory
    for grads, L in _schedule(gen, params, 2):
        set_grads(params, grads)
        opt.step(loss=L)
        ref.step(grads, L)
    assert_params_match_ref(params, ref)


# ----------------------------------------------------------------------------
# Param groups with different hyper-parameters
# ----------------------------------------------------------------------------
GROUP_HPS = {
    "AdaLo": [dict(), dict(mode="compliant", kappa=5.0, betas=(0.5, 0.3), weight_decay=0.0),
              dict(mode="adversarial", kappa=0.5, betas=(0.9, 0.0), weight_decay=0.2)],
    "AdamL": [dict(), dict(lr=2e-2, phi=0.0, gamma=3.0, betas=(0.5, 0.9)),
              dict(lr=5e-3, normalize_loss=True, phi=2.0, min_loss=0.05, weight_decay=0.1)],
    "AdaLoss": [dict(), dict(lr=0.3, b0=0.5, alpha=0.2, c=1.0),
                dict(lr=0.05, momentum=0.9, weight_decay=0.1, b0=2.0, alpha=2.0)],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("path", PATHS + ["default"])
@pytest.mark.parametrize("name", NAMES)
def test_param_groups_with_different_hyperparameters(name, path, dtype, gen):
    cls = OPTS[name]
    params = make_params(dtype, 35)
    split = [params[0:2], params[2:3], params[3:]]
    defaults = HP[name]
    groups = [dict(params=ps, **ghp) for ps, ghp in zip(split, GROUP_HPS[name])]
    opt = make_opt(cls, groups, path, **defaults)
    refs = [REF[cls](ps, **dict(defaults, **ghp)) for ps, ghp in zip(split, GROUP_HPS[name])]
    for k, L in enumerate(random_losses(gen, 6, 0.1, 4.0)):
        grads = make_grads(params, gen)
        set_grads(params, grads)
        opt.step(loss=L)
        off = 0
        for ps, ref, ghp in zip(split, refs, GROUP_HPS[name]):
            ref.step(grads[off:off + len(ps)], L)
            off += len(ps)
            assert_params_match_ref(ps, ref, msg=f"{name} group {ghp} step {k + 1}")
            keys = param_state_keys(cls, dict(defaults, **ghp))
            assert_state_matches_ref(opt, ps, ref, keys)
    # each group keeps its own group-level scalar
    for gi, ref in enumerate(refs):
        st0 = first_param_state(opt, gi)
        for key, want in ref.group_scalars().items():
            torch.testing.assert_close(float(st0[key]), want, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------
# lr schedulers
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["AdamL", "AdaLoss"])
def test_step_lr_scheduler(name, path, gen):
    cls = OPTS[name]
    hp = dict(HP[name], lr=0.04)
    base = make_params(torch.float64, 36)
    params = clone_params(base)
    opt = make_opt(cls, params, path, **hp)
    sch = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.25)
    ref = REF[cls](base, **hp)
    const = REF[cls](base, **hp)  # same rule, no schedule
    for k, L in enumerate(random_losses(gen, 7, 0.1, 4.0)):
        grads = make_grads(params, gen)
        set_grads(params, grads)
        opt.step(loss=L)
        sch.step()
        ref.step(grads, L, lr=0.04 * 0.25 ** (k // 2))
        const.step(grads, L)
        assert_params_match_ref(params, ref, msg=f"{name} StepLR step {k + 1}")
    assert opt.param_groups[0]["lr"] == pytest.approx(0.04 * 0.25 ** 3)
    diff = max((a - b).abs().max().item() for a, b in zip(ref.params, const.params))
    assert diff > 1e-4  # the schedule matters, so this test can fail


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["AdamL", "AdaLoss"])
def test_lambda_lr_two_groups(name, path, gen):
    cls = OPTS[name]
    hp = HP[name]
    params = make_params(torch.float32, 37)
    g1, g2 = params[:3], params[3:]
    opt = make_opt(cls, [dict(params=g1, lr=0.02), dict(params=g2, lr=0.1)], path, **hp)
    fns = [lambda e: 1.0 / (1 + e), lambda e: 0.5 ** e]
    sch = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=fns)
    r1, r2 = REF[cls](g1, **dict(hp, lr=0.02)), REF[cls](g2, **dict(hp, lr=0.1))
    for k, L in enumerate(random_losses(gen, 5, 0.1, 4.0)):
        grads = make_grads(params, gen)
        set_grads(params, grads)
        opt.step(loss=L)
        sch.step()
        r1.step(grads[:3], L, lr=0.02 * fns[0](k))
        r2.step(grads[3:], L, lr=0.1 * fns[1](k))
    assert_params_match_ref(g1, r1)
    assert_params_match_ref(g2, r2)


@pytest.mark.parametrize("path", PATHS)
def test_adalo_ignores_lr(path, gen):
    hp = HP["AdaLo"]
    base = make_params(torch.float32, 38)
    pa, pb = clone_params(base), clone_params(base)
    oa = make_opt(AdaLo, pa, path, **hp)
    ob = make_opt(AdaLo, pb, path, lr=0.5, **hp)
    sch = None
    if "lr" in ob.param_groups[0]:
        sch = torch.optim.lr_scheduler.StepLR(ob, step_size=1, gamma=10.0)
    ref = REF[AdaLo](base, **hp)
    for L in random_losses(gen, 5, 0.1, 4.0):
        grads = make_grads(base, gen)
        set_grads(pa, grads)
        set_grads(pb, grads)
        oa.step(loss=L)
        ob.step(loss=L)
        if sch is not None:
            sch.step()
        ref.step(grads, L)
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
    assert_params_match_ref(pa, ref)


@pytest.mark.parametrize("dst", PATHS)
@pytest.mark.parametrize("name", list(OPTS))
def test_state_of_float64_parameters_resumes_for_float32_ones(name, dst, gen):
    """A checkpoint taken with float64 parameters (float64 state) loads into an
    optimizer of float32 parameters: the state takes float32 at the next step,
    on every path, and training goes on as from a float32 checkpoint."""
    cls = OPTS[name]
    params64 = make_params(torch.float64, 21, [(4, 3), (5,)])
    src = cls(params64, foreach=True, fused=False)
    set_grads(params64, make_grads(params64, gen))
    src.step(loss=1.5)
    sd64 = src.state_dict()
    sd32 = copy.deepcopy(sd64)
    for pstate in sd32["state"].values():
        for k, v in pstate.items():
            if torch.is_tensor(v) and v.dtype == torch.float64 and k not in cls._group_state_keys:
                pstate[k] = v.float()
    a = [p.detach().float().requires_grad_() for p in params64]
    b = clone_params(a)
    opt_a, opt_b = make_opt(cls, a, dst), make_opt(cls, b, dst)
    opt_a.load_state_dict(sd64)
    opt_b.load_state_dict(sd32)
    grads = make_grads(a, gen)
    set_grads(a, grads)
    set_grads(b, grads)
    opt_a.step(loss=torch.tensor(0.8))
    opt_b.step(loss=torch.tensor(0.8))
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        for k, v in opt_b.state[q].items():
            assert opt_a.state[p][k].dtype == v.dtype, k
            assert torch.equal(opt_a.state[p][k], v), k
