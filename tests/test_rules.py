"""Update rules of AdaLo, AdamL and AdaLoss vs the float64 reference (conftest)."""

import pytest
import torch
from hypothesis import given, strategies as st

from lossopt_cuda import AdaLo, AdaLoss, AdamL

from conftest import (CROSS_TOL, OPTS, PATHS, REF, SHAPES, assert_close_dtype,
                      assert_lowp_step_close, assert_params_match_ref,
                      assert_state_matches_ref, clone_params, f32, first_param_state,
                      make_grads, make_opt, make_params, no_runtime_warnings,
                      param_state_keys, random_losses, set_grads)

# ----------------------------------------------------------------------------
# Hyper-parameter settings.  Most are chosen so that updates are large enough
# (>= ~1e-3) for float32 comparisons to be sensitive.
# ----------------------------------------------------------------------------
HPS = {
    "AdaLo": [
        dict(),  # defaults: adversarial, kappa=3, beta2=0.999 (tiny lr_t)
        dict(mode="compliant"),
        dict(mode="adversarial", betas=(0.5, 0.0), kappa=1.0, weight_decay=0.1),
        dict(mode="compliant", betas=(0.8, 0.5), kappa=10.0, weight_decay=0.0),
        dict(mode="adversarial", betas=(0.9, 0.9), kappa=0.5, weight_decay=0.05),
        dict(mode="compliant", betas=(0.0, 0.7), kappa=2.0, weight_decay=0.3),
        # eps floor active: loss_ema/kappa ~ 1e-6 < eps
        dict(mode="adversarial", kappa=1000.0, eps=1e-3),
        # eps floor active in compliant mode: (1-loss_ema)/200 <= 0.005 < eps
        dict(mode="compliant", kappa=200.0, eps=1e-2, betas=(0.5, 0.5)),
    ],
    "AdamL": [
        dict(),
        dict(lr=1e-2, phi=0.0),
        dict(lr=1e-2, phi=2.0, gamma=0.5),
        dict(lr=5e-3, normalize_loss=True),
        dict(lr=1e-2, normalize_loss=True, phi=2.0, min_loss=0.02, weight_decay=0.1),
        dict(lr=1e-2, betas=(0.5, 0.9), eps=1e-3, gamma=3.0, min_loss=0.03, weight_decay=0.01),
        dict(lr=2e-2, betas=(0.0, 0.5), phi=1.0, gamma=2.0, min_loss=-0.5),
    ],
    "AdaLoss": [
        dict(),
        dict(momentum=0.9),
        dict(lr=0.05, momentum=0.9, weight_decay=0.1),
        dict(lr=0.2, b0=0.5, alpha=0.3, c=1.0),
        dict(lr=0.1, b0=2.0, alpha=0.0, weight_decay=0.01),
        dict(lr=0.1, alpha=2.0, c=-1.0, momentum=0.5),
        dict(lr=0.3, b0=0.2, alpha=0.05, c=3.0, momentum=0.3, weight_decay=0.05),
    ],
}

# Loss ranges: AdaLo accepts any L > -1, the others any finite L.
LOSS_RANGE = {"AdaLo": (-0.9, 4.0), "AdamL": (0.05, 5.0), "AdaLoss": (-2.0, 5.0)}

CASES = [(name, i) for name in HPS for i in range(len(HPS[name]))]
CASE_IDS = [f"{name}-hp{i}" for name, i in CASES]


def _check_group_scalars(opt, ref, name, msg):
    st0 = first_param_state(opt)
    if name == "AdaLo":
        v = st0["loss_ema"]
        torch.testing.assert_close(float(v), ref.loss_ema, rtol=1e-6, atol=1e-9, msg=msg + " loss_ema")
    elif name == "AdamL":
        assert float(st0["step"]) == ref.k, msg
    else:
        torch.testing.assert_close(float(st0["b_sq"]), ref.b_sq, rtol=1e-6, atol=1e-9, msg=msg + " b_sq")


def _run_vs_reference(name, hp, path, dtype, gen, steps=8, shapes=SHAPES):
    cls = OPTS[name]
    params = make_params(dtype, int(torch.randint(0, 2**30, (1,), generator=gen)), shapes)
    ref = REF[cls](params, **hp)
    opt = make_opt(cls, params, path, **hp)
    losses = random_losses(gen, steps, *LOSS_RANGE[name])
    keys = param_state_keys(cls, hp)
    for k, L in enumerate(losses):
        grads = make_grads(params, gen)
        set_grads(params, grads)
        ret = no_runtime_warnings(opt.step, loss=L)
        assert ret == L
        ref.step(grads, L)
        msg = f"{name} {hp} path={path} dtype={dtype} step {k + 1}"
        assert_params_match_ref(params, ref, msg=msg)
        assert_state_matches_ref(opt, params, ref, keys, msg=msg)
        _check_group_scalars(opt, ref, name, msg)
    assert opt.skipped_steps == 0
    return params, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("path", PATHS + ["default"])
@pytest.mark.parametrize("name,hp_index", CASES, ids=CASE_IDS)
def test_rule_matches_reference(name, hp_index, path, dtype, gen):
    _run_vs_reference(name, HPS[name][hp_index], path, dtype, gen)


# ----------------------------------------------------------------------------
# Low precision parameters (bf16 / fp16): state must be float32; parameters are
# checked one step at a time with the looser tolerance described in conftest.
# ----------------------------------------------------------------------------
LOWP_HPS = {
    "AdaLo": [dict(mode="compliant", betas=(0.5, 0.5), kappa=3.0, weight_decay=0.1),
              dict(mode="adversarial", betas=(0.3, 0.0), kappa=0.5)],
    "AdamL": [dict(lr=0.05, phi=1.0, weight_decay=0.1),
              dict(lr=0.05, normalize_loss=True, phi=2.0, gamma=0.5)],
    "AdaLoss": [dict(lr=0.2, b0=1.0, alpha=0.5, weight_decay=0.1),
                dict(lr=0.1, momentum=0.9, weight_decay=0.05, c=1.0)],
}
LOWP_CASES = [(n, i) for n in LOWP_HPS for i in range(len(LOWP_HPS[n]))]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name,hp_index", LOWP_CASES, ids=[f"{n}-hp{i}" for n, i in LOWP_CASES])
def test_rule_low_precision(name, hp_index, path, dtype, gen):
    hp = LOWP_HPS[name][hp_index]
    cls = OPTS[name]
    params = make_params(dtype, 1234 + hp_index)
    ref = REF[cls](params, **hp)
    opt = make_opt(cls, params, path, **hp)
    keys = param_state_keys(cls, hp)
    for k, L in enumerate(random_losses(gen, 6, *LOSS_RANGE[name])):
        grads = make_grads(params, gen)
        set_grads(params, grads)
        prev = [p.detach().to(torch.float64).clone() for p in params]
        ref.set_params(prev)
        opt.step(loss=L)
        ref.step(grads, L)
        for i, p in enumerate(params):
            assert p.dtype == dtype
            assert_lowp_step_close(p, ref.params[i], prev[i],
                                   msg=f"{name} {hp} {path} {dtype} step {k + 1} param {i}")
            for key in keys:
                assert opt.state[p][key].dtype == torch.float32, (
                    f"state {key!r} of a {dtype} parameter must be float32")
        assert_state_matches_ref(opt, params, ref, keys, dtype_for_tol=torch.float32,
                                 msg=f"{name} {path} {dtype} step {k + 1}")
        _check_group_scalars(opt, ref, name, f"{name} {path} {dtype}")


# ----------------------------------------------------------------------------
# forloop vs foreach (vs default / fused) must agree with each other
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("name,hp_index", CASES, ids=CASE_IDS)
def test_paths_agree(name, hp_index, dtype, gen):
    hp = HPS[name][hp_index]
    cls = OPTS[name]
    paths = PATHS + ["default"]
    base = make_params(dtype, 99)
    runs = {path: clone_params(base) for path in paths}
    opts = {path: make_opt(cls, runs[path], path, **hp) for path in paths}
    keys = param_state_keys(cls, hp)
    for L in random_losses(gen, 6, *LOSS_RANGE[name]):
        grads = make_grads(base, gen)
        for path in paths:
            set_grads(runs[path], grads)
            opts[path].step(loss=L)
    tol = CROSS_TOL.get(dtype, dict(rtol=2.0**-6, atol=2.0**-6))
    for path in paths[1:]:
        for i, (a, b) in enumerate(zip(runs[paths[0]], runs[path])):
            assert a.dtype == b.dtype == dtype
            torch.testing.assert_close(b.detach().double(), a.detach().double(), **tol,
                                       msg=lambda m: f"{paths[0]} vs {path} param {i}: {m}")
            for key in keys:
                sa, sb = opts[paths[0]].state[a][key], opts[path].state[b][key]
                assert sa.dtype == sb.dtype
                # the momentum buffer depends on p (weight decay), which may
                # differ by one bf16 rounding between paths
                stol = (tol if key == "momentum_buffer"
                        else CROSS_TOL.get(dtype, CROSS_TOL[torch.float32]))
                torch.testing.assert_close(sb.double(), sa.double(), **stol)


# ----------------------------------------------------------------------------
# A single param group holding parameters of several dtypes (and a
# non-contiguous parameter): foreach implementations must group correctly.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS + ["default"])
@pytest.mark.parametrize("name", list(HPS))
def test_mixed_dtypes_and_noncontiguous(name, path, gen):
    hp = HPS[name][2]
    cls = OPTS[name]
    params = [
        torch.randn(4, 3, generator=gen, dtype=torch.float64).float().requires_grad_(),
        torch.randn(5, generator=gen, dtype=torch.float64).requires_grad_(),
        torch.randn(2, 3, generator=gen, dtype=torch.float64).to(torch.bfloat16).requires_grad_(),
        torch.randn(3, 6, generator=gen, dtype=torch.float64).float().t().requires_grad_(),  # non-contiguous
        torch.randn(6, generator=gen, dtype=torch.float64).float().requires_grad_(),
    ]
    assert not params[3].is_contiguous()
    ref = REF[cls](params, **hp)
    opt = make_opt(cls, params, path, **hp)
    keys = param_state_keys(cls, hp)
    for k, L in enumerate(random_losses(gen, 5, *LOSS_RANGE[name])):
        grads = make_grads(params, gen)
        grads[3] = grads[3].t().contiguous().t()  # non-contiguous gradient too
        set_grads(params, grads)
        prev = [p.detach().double().clone() for p in params]
        ref.set_params(prev)
        opt.step(loss=L)
        ref.step(grads, L)
        for i, p in enumerate(params):
            msg = f"{name} {path} step {k + 1} param {i} ({p.dtype})"
            if p.dtype == torch.bfloat16:
                assert_lowp_step_close(p, ref.params[i], prev[i], msg=msg)
            else:
                assert_close_dtype(p, ref.params[i], p.dtype, msg=msg, travel=ref.travel[i])
            for key in keys:
                want = torch.float64 if p.dtype == torch.float64 else torch.float32
                assert opt.state[p][key].dtype == want, msg
        assert_state_matches_ref(opt, params, ref, keys, msg=f"{name} {path} step {k + 1}")


# ----------------------------------------------------------------------------
# Loss forms: closure, loss= tensor 0-d / shape [1] / requires_grad / float64,
# Python float.  Gradients come from a real forward/backward; the reference
# computes its own loss and gradient analytically in float64.
# ----------------------------------------------------------------------------
FORM_HPS = {
    "AdaLo": dict(mode="compliant", betas=(0.8, 0.6), kappa=4.0, weight_decay=0.05),
    "AdamL": dict(lr=2e-2, normalize_loss=True, phi=1.0, weight_decay=0.01),
    "AdaLoss": dict(lr=0.1, momentum=0.9, alpha=0.5, weight_decay=0.01),
}
FORMS = ["closure", "closure_float", "tensor0d", "tensor1", "tensor_requires_grad", "tensor_f64",
         "float"]


def _objective(params, targets):
    return 0.1 * sum(((p - t) ** 2).sum() for p, t in zip(params, targets)) + 0.25


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(HPS))
def test_loss_forms_agree_with_reference(name, path, gen):
    hp = FORM_HPS[name]
    cls = OPTS[name]
    base = make_params(torch.float32, 7)
    targets = [torch.randn(p.shape, generator=gen).float() for p in base]
    steps = 5

    # float64 reference with analytic loss/gradient
    ref = REF[cls](base, **hp)
    ref_losses = []
    for _ in range(steps):
        t64 = [t.double() for t in targets]
        L = float(_objective(ref.params, t64))
        grads = [0.2 * (p - t) for p, t in zip(ref.params, t64)]
        ref_losses.append(L)
        ref.step(grads, L)

    results = {}
    for form in FORMS:
        params = clone_params(base)
        opt = make_opt(cls, params, path, **hp)
        for k in range(steps):
            if form in ("closure", "closure_float"):
                seen = {}

                def closure():
                    seen["grad_enabled"] = torch.is_grad_enabled()
                    opt.zero_grad()
                    loss = _objective(params, targets)
                    loss.backward()
                    seen["loss"] = loss if form == "closure" else loss.item()
                    return seen["loss"]

                # step() must enable grad for the closure even under no_grad
                with torch.no_grad():
                    ret = no_runtime_warnings(opt.step, closure)
                assert seen["grad_enabled"] is True
                if form == "closure":
                    assert ret is seen["loss"], "step() must return the closure's loss"
                else:
                    assert ret == seen["loss"]
                value = float(ret.detach() if torch.is_tensor(ret) else ret)
                torch.testing.assert_close(value, ref_losses[k], rtol=1e-5, atol=1e-6)
            else:
                opt.zero_grad()
                loss = _objective(params, targets)
                loss.backward()
                passed = {
                    "tensor0d": lambda: loss.detach(),
                    "tensor1": lambda: loss.detach().reshape(1),
                    "tensor_requires_grad": lambda: loss,
                    "tensor_f64": lambda: loss.detach().double(),
                    "float": lambda: loss.item(),
                }[form]()
                if form == "tensor_requires_grad":
                    assert passed.requires_grad
                ret = no_runtime_warnings(opt.step, loss=passed)
                if torch.is_tensor(passed):
                    assert ret is passed, "step(loss=t) must return the passed loss"
                else:
                    assert ret == passed
        assert opt.skipped_steps == 0
        results[form] = [p.detach().clone() for p in params]
        assert_params_match_ref(params, ref, msg=f"{name} {path} form={form}")

    for form in FORMS[1:]:
        for a, b in zip(results["closure"], results[form]):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6,
                                       msg=lambda m: f"form {form} vs closure: {m}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(HPS))
def test_int_loss_same_as_float(name, path, gen):
    hp = FORM_HPS[name]
    cls = OPTS[name]
    base = make_params(torch.float32, 3)
    pa, pb = clone_params(base), clone_params(base)
    oa, ob = make_opt(cls, pa, path, **hp), make_opt(cls, pb, path, **hp)
    ref = REF[cls](base, **hp)
    for L in [3, 1, 0, 2, 5]:
        grads = make_grads(base, gen)
        set_grads(pa, grads)
        set_grads(pb, grads)
        assert oa.step(loss=L) == L
        ob.step(loss=float(L))
        ref.step(grads, float(L))
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert_params_match_ref(pa, ref, msg=f"{name} int losses")


# ----------------------------------------------------------------------------
# State layout
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("path", PATHS)
def test_state_layout(path, dtype, gen):
    for cls, hp in [(AdaLo, {}), (AdamL, dict(normalize_loss=True)), (AdaLoss, {}),
                    (AdaLoss, dict(momentum=0.9))]:
        params = make_params(dtype, 5)
        opt = make_opt(cls, params, path, **hp)
        assert isinstance(opt.skipped_steps, int) and opt.skipped_steps == 0
        for _ in range(2):
            set_grads(params, make_grads(params, gen))
            opt.step(loss=1.5)
        want = torch.float64 if dtype == torch.float64 else torch.float32
        keys = param_state_keys(cls, hp)
        for p in params:
            st = opt.state[p]
            for key in keys:
                assert st[key].dtype == want and st[key].shape == p.shape, (cls.__name__, key)
        if cls is AdaLoss and not hp:
            assert all("momentum_buffer" not in opt.state[p] for p in params), (
                "momentum_buffer must only exist when momentum > 0")
        st0 = first_param_state(opt)
        if cls is AdaLo:
            v = st0["loss_ema"]
            assert torch.is_tensor(v) and v.dim() == 0 and v.dtype == torch.float32
        elif cls is AdamL:
            v = st0["step"]
            assert torch.is_tensor(v) and v.dim() == 0 and v.dtype == torch.float32
            assert float(v) == 2.0
            assert "loss0" in st0
        else:
            v = st0["b_sq"]
            assert torch.is_tensor(v) and v.dim() == 0 and v.dtype == torch.float64
            torch.testing.assert_close(float(v), 1.0 + 2 * 1.5, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------
# AdamL corner cases and a metamorphic property
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("hp", [
    dict(lr=1e-2, min_loss=1.0, phi=1.0),               # some L < min_loss -> l clamped
    dict(lr=1e-2, min_loss=1.0, phi=0.0, gamma=2.0),
    dict(lr=1e-2, min_loss=1.0, normalize_loss=True),   # first L == min_loss -> l0 = 1e-12
], ids=["clamp-phi1", "clamp-phi0", "l0-clamped"])
def test_adaml_loss_clamping(hp, dtype, path, gen):
    params = make_params(dtype, 11)
    ref = REF[AdamL](params, **hp)
    opt = make_opt(AdamL, params, path, **hp)
    if hp.get("normalize_loss"):
        losses = [1.0, 1.5, 2.0, 0.5, 1.25]
    else:
        losses = [0.5, 2.0, 0.25, 3.0, 1.0]
    for L in losses:
        grads = make_grads(params, gen)
        set_grads(params, grads)
        opt.step(loss=L)
        ref.step(grads, L)
        assert_params_match_ref(params, ref, msg=f"AdamL {hp} L={L}")
        for p in params:
            assert torch.isfinite(p).all()
        assert_state_matches_ref(opt, params, ref, ("exp_avg", "exp_avg_sq"))


@pytest.mark.parametrize("path", PATHS)
def test_adaml_normalize_loss_scale_invariant(path, gen):
    """With normalize_loss=True and min_loss=0, multiplying every loss by a
    constant must not change the trajectory (l is divided by l0)."""
    hp = dict(lr=1e-2, normalize_loss=True, phi=2.0, eps=1e-3)
    base = make_params(torch.float64, 4)
    pa, pb = clone_params(base), clone_params(base)
    oa, ob = make_opt(AdamL, pa, path, **hp), make_opt(AdamL, pb, path, **hp)
    for L in random_losses(gen, 6, 0.1, 3.0):
        grads = make_grads(base, gen)
        set_grads(pa, grads)
        set_grads(pb, grads)
        oa.step(loss=L)
        ob.step(loss=L * 8.0)
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    # ... while without normalisation the scale matters
    pc, pd = clone_params(base), clone_params(base)
    hp2 = dict(hp, normalize_loss=False)
    oc, od = make_opt(AdamL, pc, path, **hp2), make_opt(AdamL, pd, path, **hp2)
    for L in random_losses(gen, 3, 0.1, 3.0):
        grads = make_grads(base, gen)
        set_grads(pc, grads)
        set_grads(pd, grads)
        oc.step(loss=L)
        od.step(loss=L * 8.0)
    assert not all(torch.allclose(c, d, rtol=1e-6, atol=1e-8) for c, d in zip(pc, pd))


# ----------------------------------------------------------------------------
# Property tests over random hyper-parameters (hypothesis)
# ----------------------------------------------------------------------------
def _floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


ADALO_HP = st.fixed_dictionaries(dict(
    betas=st.tuples(_floats(0.0, 0.99), _floats(0.0, 0.999)),
    weight_decay=_floats(0.0, 0.2),
    kappa=_floats(0.2, 20.0),
    eps=_floats(1e-8, 1e-2),
    mode=st.sampled_from(["adversarial", "compliant"]),
))
ADAML_HP = st.fixed_dictionaries(dict(
    lr=_floats(1e-4, 5e-2),
    betas=st.tuples(_floats(0.0, 0.99), _floats(0.0, 0.999)),
    eps=_floats(1e-10, 1e-2),
    gamma=_floats(0.1, 10.0),
    phi=_floats(0.0, 3.0),
    min_loss=_floats(-1.0, 0.04),
    normalize_loss=st.booleans(),
    weight_decay=_floats(0.0, 0.1),
))
ADALOSS_HP = st.fixed_dictionaries(dict(
    lr=_floats(1e-3, 0.5),
    b0=_floats(0.1, 5.0),
    alpha=_floats(0.0, 3.0),
    c=_floats(-2.0, 2.0),
    momentum=st.one_of(st.just(0.0), _floats(0.1, 0.95)),
    weight_decay=_floats(0.0, 0.1),
))


def _property_run(name, hp, path, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    _run_vs_reference(name, hp, path, dtype, g, steps=4, shapes=[(3,), (2, 5), (1,)])


@given(hp=ADALO_HP, path=st.sampled_from(PATHS), seed=st.integers(0, 2**30),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_property_adalo(hp, path, seed, dtype):
    _property_run("AdaLo", hp, path, seed, dtype)


@given(hp=ADAML_HP, path=st.sampled_from(PATHS), seed=st.integers(0, 2**30),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_property_adaml(hp, path, seed, dtype):
    _property_run("AdamL", hp, path, seed, dtype)


@given(hp=ADALOSS_HP, path=st.sampled_from(PATHS), seed=st.integers(0, 2**30),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_property_adaloss(hp, path, seed, dtype):
    _property_run("AdaLoss", hp, path, seed, dtype)
