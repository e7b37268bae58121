"""Bad losses, missing losses, bad hyper-parameters, sparse / complex inputs,
parameters without gradients."""

import math
import warnings

import pytest
import torch

import lossopt_cuda
from lossopt_cuda import AdaLo, AdaLoss, AdamL, MissingLossError

from conftest import (CROSS_TOL, HAS_CPU_KERNELS, OPTS, PATHS, REF, assert_params_match_ref,
                      assert_state_matches_ref, assert_unchanged, clone_params,
                      make_grads, make_opt, make_params, param_state_keys,
                      random_losses, set_grads, snapshot)

# Hyper-parameters with measurable updates and every kind of state.
HP = {
    "AdaLo": dict(mode="compliant", betas=(0.5, 0.5), kappa=3.0, weight_decay=0.05),
    "AdamL": dict(lr=1e-2, normalize_loss=True, phi=1.0, weight_decay=0.01),
    "AdaLoss": dict(lr=0.1, momentum=0.9, alpha=0.5, weight_decay=0.01),
}
NAMES = list(HP)

BAD = {
    "AdaLo": [math.nan, math.inf, -math.inf, -1.0, -1.5, -100.0],
    "AdamL": [math.nan, math.inf, -math.inf],
    "AdaLoss": [math.nan, math.inf, -math.inf],
}
BAD_CASES = [(n, b) for n in NAMES for b in BAD[n]]
BAD_IDS = [f"{n}-{b}" for n, b in BAD_CASES]
FORMS = ["float", "tensor0d", "tensor1", "tensor_requires_grad", "closure"]


def _bad_step(opt, params, grads, bad, form):
    """Perform one step with a bad loss in the given form (grads set first)."""
    if form == "closure":
        def closure():
            opt.zero_grad()
            out = sum((p * g).sum() for p, g in zip(params, grads))
            out.backward()
            return out.detach() * 0.0 + bad
        return opt.step(closure)
    set_grads(params, grads)
    loss = {
        "float": lambda: bad,
        "tensor0d": lambda: torch.tensor(bad),
        "tensor1": lambda: torch.tensor([bad]),
        "tensor_requires_grad": lambda: torch.tensor(bad, requires_grad=True) * 1.0,
    }[form]()
    return opt.step(loss=loss)


def _setup(name, path, gen, dtype=torch.float32):
    cls = OPTS[name]
    params = make_params(dtype, 21)
    ref = REF[cls](params, **HP[name])
    opt = make_opt(cls, params, path, **HP[name])
    return cls, params, ref, opt


def _good_steps(opt, params, ref, gen, n, lo=0.2, hi=3.0):
    for L in random_losses(gen, n, lo, hi):
        grads = make_grads(params, gen)
        set_grads(params, grads)
        opt.step(loss=L)
        ref.step(grads, L)


# ----------------------------------------------------------------------------
# Bad loss values
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name,bad", BAD_CASES, ids=BAD_IDS)
def test_bad_loss_is_skipped(name, bad, path, form, gen):
    cls, params, ref, opt = _setup(name, path, gen)
    keys = param_state_keys(cls, HP[name])
    _good_steps(opt, params, ref, gen, 2)
    assert opt.skipped_steps == 0
    snap = snapshot(opt, params)
    with pytest.warns(RuntimeWarning):
        _bad_step(opt, params, make_grads(params, gen), bad, form)
    assert_unchanged(opt, params, snap, msg=f"bad loss {bad} ({form})")
    assert isinstance(opt.skipped_steps, int) and opt.skipped_steps == 1
    # the skipped step leaves no trace: the next good step matches the reference
    _good_steps(opt, params, ref, gen, 2)
    assert opt.skipped_steps == 1
    assert_params_match_ref(params, ref, msg=f"after skipped bad loss {bad}")
    assert_state_matches_ref(opt, params, ref, keys)
    # a second bad step counts again
    with pytest.warns(RuntimeWarning):
        _bad_step(opt, params, make_grads(params, gen), bad, form)
    assert opt.skipped_steps == 2


@pytest.mark.parametrize("form", ["float", "tensor0d", "closure"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name,bad", BAD_CASES, ids=BAD_IDS)
def test_bad_loss_on_first_step(name, bad, path, form, gen):
    cls, params, ref, opt = _setup(name, path, gen)
    before = [p.detach().clone() for p in params]
    with pytest.warns(RuntimeWarning):
        _bad_step(opt, params, make_grads(params, gen), bad, form)
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
    assert opt.skipped_steps == 1
    # the following good steps equal a fresh optimizer's first steps (AdamL's
    # loss0 must come from the first VALID step)
    fresh_params = clone_params(before)
    fresh = make_opt(cls, fresh_params, path, **HP[name])
    for L in [2.5, 0.75]:
        grads = make_grads(params, gen)
        set_grads(params, grads)
        set_grads(fresh_params, grads)
        opt.step(loss=L)
        fresh.step(loss=L)
        ref.step(grads, L)
        for a, b in zip(params, fresh_params):
            torch.testing.assert_close(a, b, **CROSS_TOL[torch.float32])
    assert_params_match_ref(params, ref)
    assert opt.skipped_steps == 1


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_bad_loss_low_precision_params_unchanged(name, path, gen):
    cls, params, ref, opt = _setup(name, path, gen, dtype=torch.bfloat16)
    _good_steps(opt, params, ref, gen, 2)
    snap = snapshot(opt, params)
    with pytest.warns(RuntimeWarning):
        _bad_step(opt, params, make_grads(params, gen), math.nan, "tensor0d")
    assert_unchanged(opt, params, snap)
    assert opt.skipped_steps == 1


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("good", [-0.999, -0.5, 0.0])
def test_adalo_loss_just_above_minus_one_is_valid(good, path, gen):
    hp = HP["AdaLo"]
    params = make_params(torch.float64, 3)
    ref = REF[AdaLo](params, **hp)
    opt = make_opt(AdaLo, params, path, **hp)
    grads = make_grads(params, gen)
    set_grads(params, grads)
    opt.step(loss=good)
    ref.step(grads, good)
    assert opt.skipped_steps == 0
    assert_params_match_ref(params, ref)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["AdamL", "AdaLoss"])
def test_negative_loss_is_valid_for_adaml_adaloss(name, path, gen):
    hp = dict(HP[name])
    if name == "AdamL":
        hp.update(normalize_loss=False, min_loss=-3.0)
    cls, params, ref, _ = _setup(name, path, gen, dtype=torch.float64)
    ref = REF[cls](params, **hp)
    opt = make_opt(cls, params, path, **hp)
    for L in [-2.0, -0.5, -1.25]:
        grads = make_grads(params, gen)
        set_grads(params, grads)
        opt.step(loss=L)
        ref.step(grads, L)
    assert opt.skipped_steps == 0
    assert_params_match_ref(params, ref)


# ----------------------------------------------------------------------------
# Missing / malformed loss
# ----------------------------------------------------------------------------
def test_missing_loss_error_is_runtime_error():
    assert issubclass(MissingLossError, RuntimeError)
    assert lossopt_cuda.MissingLossError is MissingLossError


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_no_loss_raises(name, path, gen):
    cls, params, ref, opt = _setup(name, path, gen)
    _good_steps(opt, params, ref, gen, 1)
    snap = snapshot(opt, params)
    set_grads(params, make_grads(params, gen))
    with pytest.raises(MissingLossError) as ei:
        opt.step()
    msg = str(ei.value)
    assert "closure" in msg and "loss=" in msg, msg
    assert_unchanged(opt, params, snap)

    called = []

    def closure():
        called.append(True)
        opt.zero_grad()
        sum(p.sum() for p in params).backward()
        return None

    with pytest.raises(MissingLossError) as ei:
        opt.step(closure)
    assert called, "closure was not called"
    assert "closure" in str(ei.value) and "loss=" in str(ei.value)
    assert_unchanged(opt, params, snap)
    assert isinstance(ei.value, RuntimeError)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad_loss", [
    lambda: torch.tensor([1.0, 2.0]),
    lambda: torch.ones(2, 1),
    lambda: torch.full((3,), 0.5, requires_grad=True),
    "closure",
], ids=["vec2", "2x1", "vec3-requires-grad", "closure-vec"])
def test_multi_element_loss_raises_value_error(name, path, bad_loss, gen):
    cls, params, ref, opt = _setup(name, path, gen)
    _good_steps(opt, params, ref, gen, 1)
    snap = snapshot(opt, params)
    set_grads(params, make_grads(params, gen))
    with pytest.raises(ValueError):
        if bad_loss == "closure":
            opt.step(lambda: torch.tensor([0.5, 1.5]))
        else:
            opt.step(loss=bad_loss())
    assert_unchanged(opt, params, snap)
    # still usable afterwards and still on the reference trajectory
    _good_steps(opt, params, ref, gen, 1)
    assert_params_match_ref(params, ref)


# ----------------------------------------------------------------------------
# Sparse gradients / complex parameters
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("sparse_index", [0, 2])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_sparse_grad_raises_before_modifying(name, path, sparse_index, gen):
    cls = OPTS[name]
    params = [torch.randn(3, 4, generator=gen).requires_grad_(),
              torch.randn(5, generator=gen).requires_grad_(),
              torch.randn(4, 2, generator=gen).requires_grad_()]
    ref = REF[cls](params, **HP[name])
    opt = make_opt(cls, params, path, **HP[name])
    _good_steps(opt, params, ref, gen, 1)
    snap = snapshot(opt, params)
    grads = make_grads(params, gen)
    set_grads(params, grads)
    dense = grads[sparse_index]
    params[sparse_index].grad = dense.to_sparse()
    assert params[sparse_index].grad.is_sparse
    with pytest.raises(RuntimeError):
        opt.step(loss=1.0)
    assert_unchanged(opt, params, snap, msg="sparse grad")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_complex_param_raises(name, path, gen):
    cls = OPTS[name]
    real = torch.randn(4, generator=gen).requires_grad_()
    cplx = torch.randn(3, dtype=torch.complex64, generator=gen).requires_grad_()
    before = real.detach().clone()
    with pytest.raises(RuntimeError):
        opt = make_opt(cls, [real, cplx], path, **HP[name])
        real.grad = torch.ones_like(real)
        cplx.grad = torch.ones_like(cplx)
        opt.step(loss=1.0)
    assert torch.equal(real.detach(), before)
    assert cplx.dtype == torch.complex64


# ----------------------------------------------------------------------------
# Parameters without gradient
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS + ["default"])
@pytest.mark.parametrize("name", NAMES)
def test_grad_none_params_untouched(name, path, gen):
    cls = OPTS[name]
    hp = HP[name]
    params = make_params(torch.float32, 8)
    ref = REF[cls](params, **hp)
    opt = make_opt(cls, params, path, **hp)
    before = [p.detach().clone() for p in params]
    none_always = {1, 4}
    keys = param_state_keys(cls, hp)
    for k, L in enumerate(random_losses(gen, 4, 0.2, 3.0)):
        grads = make_grads(params, gen)
        for i in none_always:
            grads[i] = None
        if k == 2:
            grads[3] = None  # intermittent: this param skips one step
        set_grads(params, grads)
        opt.step(loss=L)
        ref.step(grads, L)
        for i in none_always:
            assert torch.equal(params[i].detach(), before[i]), f"param {i} without grad changed"
            assert len(opt.state.get(params[i], {})) == 0, (
                f"state was created for param {i} without grad: {list(opt.state.get(params[i], {}))}")
        assert_params_match_ref(params, ref, msg=f"{name} step {k + 1}")
        assert_state_matches_ref(opt, params, ref, keys, msg=f"{name} step {k + 1}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_first_param_without_grad(name, path, gen):
    """The group scalars live in the first parameter's state; a first parameter
    without gradient must still not be modified, and the others still follow
    the reference."""
    cls = OPTS[name]
    hp = HP[name]
    params = make_params(torch.float32, 9)
    ref = REF[cls](params, **hp)
    opt = make_opt(cls, params, path, **hp)
    p0 = params[0].detach().clone()
    for L in random_losses(gen, 3, 0.2, 3.0):
        grads = make_grads(params, gen)
        grads[0] = None
        set_grads(params, grads)
        opt.step(loss=L)
        ref.step(grads, L)
    assert torch.equal(params[0].detach(), p0)
    st0 = opt.state.get(params[0], {})
    for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
        assert key not in st0
    assert_params_match_ref(params[1:], ref.params[1:], travel=ref.travel[1:])


# ----------------------------------------------------------------------------
# Hyper-parameter validation
# ----------------------------------------------------------------------------
NAN = math.nan
BAD_HPS = [
    (AdaLo, dict(kappa=0.0), "kappa"),
    (AdaLo, dict(kappa=-1.0), "kappa"),
    (AdaLo, dict(kappa=NAN), "kappa"),
    (AdaLo, dict(betas=(-0.1, 0.999)), "betas"),
    (AdaLo, dict(betas=(0.9, 1.5)), "betas"),
    (AdaLo, dict(betas=(1.5, 0.9)), "betas"),
    (AdaLo, dict(eps=-1e-8), "eps"),
    (AdaLo, dict(weight_decay=-0.1), "weight_decay"),
    (AdaLo, dict(mode="bogus"), "mode"),
    (AdaLo, dict(mode="Adversarial!"), "mode"),
    (AdamL, dict(lr=-1e-3), "lr"),
    (AdamL, dict(lr=NAN), "lr"),
    (AdamL, dict(betas=(1.0, 0.999)), "betas"),
    (AdamL, dict(betas=(0.9, 1.0)), "betas"),
    (AdamL, dict(betas=(-0.5, 0.999)), "betas"),
    (AdamL, dict(eps=0.0), "eps"),
    (AdamL, dict(eps=-1e-8), "eps"),
    (AdamL, dict(gamma=0.0), "gamma"),
    (AdamL, dict(gamma=-2.0), "gamma"),
    (AdamL, dict(phi=-0.5), "phi"),
    (AdamL, dict(weight_decay=-1e-2), "weight_decay"),
    (AdaLoss, dict(lr=-0.1), "lr"),
    (AdaLoss, dict(b0=0.0), "b0"),
    (AdaLoss, dict(b0=-1.0), "b0"),
    (AdaLoss, dict(b0=NAN), "b0"),
    (AdaLoss, dict(alpha=-0.5), "alpha"),
    (AdaLoss, dict(momentum=-0.1), "momentum"),
    (AdaLoss, dict(weight_decay=-0.1), "weight_decay"),
]


@pytest.mark.parametrize("cls,kwargs,argname", BAD_HPS,
                         ids=[f"{c.__name__}-{k}" for c, k, _ in BAD_HPS])
def test_bad_hyperparameter_raises(cls, kwargs, argname):
    params = make_params(torch.float32, 0)
    with pytest.raises(ValueError, match=argname):
        cls(params, **kwargs)


@pytest.mark.parametrize("cls,kwargs,argname", BAD_HPS,
                         ids=[f"{c.__name__}-{k}" for c, k, _ in BAD_HPS])
def test_bad_hyperparameter_in_param_group_raises(cls, kwargs, argname):
    params = make_params(torch.float32, 0)
    groups = [{"params": params[:2]}, {"params": params[2:], **kwargs}]
    with pytest.raises(ValueError, match=argname):
        cls(groups)


@pytest.mark.parametrize("cls", [AdaLo, AdamL, AdaLoss])
def test_valid_edge_hyperparameters_accepted(cls):
    params = make_params(torch.float32, 0)
    edge = {
        AdaLo: dict(betas=(0.0, 0.0), weight_decay=0.0, mode="compliant"),
        AdamL: dict(lr=0.0, betas=(0.0, 0.0), phi=0.0, weight_decay=0.0, min_loss=-5.0),
        AdaLoss: dict(lr=0.0, alpha=0.0, momentum=0.0, weight_decay=0.0, c=-3.0),
    }[cls]
    opt = cls(params, **edge)
    set_grads(params, make_grads(params, torch.Generator().manual_seed(0)))
    opt.step(loss=1.0)


@pytest.mark.parametrize("cls", [AdaLo, AdamL, AdaLoss])
def test_foreach_and_fused_together_raises(cls):
    with pytest.raises(ValueError):
        cls(make_params(torch.float32, 0), foreach=True, fused=True)


@pytest.mark.parametrize("cls", [AdaLo, AdamL, AdaLoss])
def test_fused_without_kernels_raises(cls):
    if HAS_CPU_KERNELS:
        pytest.skip("CPU kernels are built; fused path is exercised by the rule tests")
    with pytest.raises(RuntimeError):
        cls(make_params(torch.float32, 0), fused=True)


@pytest.mark.parametrize("cls", [AdaLo, AdamL, AdaLoss])
def test_fused_true_on_a_device_without_kernels_raises_at_construction(cls):
    # No kernel exists for the meta device: fused=True must refuse at
    # construction, not at the first step.
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    with pytest.raises(RuntimeError, match="fused=True"):
        cls([p], fused=True)


@pytest.mark.skipif(not HAS_CPU_KERNELS, reason="no compiled kernels")
@pytest.mark.parametrize("cls", [AdaLo, AdamL, AdaLoss])
def test_fused_true_refuses_a_group_without_kernels_when_it_is_added(cls):
    """add_param_group checks it too (a generator of parameters included), so
    that no later step fails half-way; the optimizer keeps its groups."""
    opt = cls(make_params(torch.float32, 0), fused=True)
    meta = torch.nn.Parameter(torch.zeros(3, device="meta"))
    with pytest.raises(RuntimeError, match="fused=True"):
        opt.add_param_group({"params": (q for q in [meta])})
    assert len(opt.param_groups) == 1
    extra = make_params(torch.float32, 1, [(4,)])
    opt.add_param_group({"params": (q for q in extra)})
    assert opt.param_groups[1]["params"] == extra


# ----------------------------------------------------------------------------
# Constructor signature and defaults
# ----------------------------------------------------------------------------
SPEC_DEFAULTS = {
    AdaLo: dict(lr=1e-8, betas=(0.9, 0.999), weight_decay=1e-2, kappa=3.0, eps=1e-8,
                mode="adversarial"),
    AdamL: dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, gamma=1.0, phi=1.0, min_loss=0.0,
                normalize_loss=False, weight_decay=0.0),
    AdaLoss: dict(lr=0.1, b0=1.0, alpha=1.0, c=0.0, momentum=0.0, weight_decay=0.0),
}
POSITIONAL = {
    AdaLo: (0.5, (0.5, 0.25), 0.125, 2.0, 1e-4, "compliant"),
    AdamL: (0.02, (0.5, 0.25), 1e-4, 2.0, 0.5, -1.0, True, 0.125),
    AdaLoss: (0.02, 2.0, 0.5, -1.0, 0.5, 0.125),
}


@pytest.mark.parametrize("cls", [AdaLo, AdamL, AdaLoss])
def test_defaults_and_positional_order(cls):
    g = make_opt(cls, make_params(torch.float32, 0), "forloop").param_groups[0]
    for k, v in SPEC_DEFAULTS[cls].items():
        assert (tuple(g[k]) if isinstance(v, tuple) else g[k]) == v, k
    g = cls(make_params(torch.float32, 0), *POSITIONAL[cls]).param_groups[0]
    for k, v in zip(SPEC_DEFAULTS[cls], POSITIONAL[cls]):
        assert (tuple(g[k]) if isinstance(v, tuple) else g[k]) == v, k


@pytest.mark.parametrize("cls", [AdaLo, AdamL, AdaLoss])
def test_keyword_only_options(cls):
    params = make_params(torch.float32, 0)
    opt = cls(params, foreach=None, fused=None, average_loss=False, process_group=None)
    set_grads(params, make_grads(params, torch.Generator().manual_seed(1)))
    opt.step(loss=1.0)
    opt = cls(params, foreach=False, fused=False, average_loss=True, process_group=None)
    opt.step(loss=1.0)  # not distributed: average_loss is a no-op
    with pytest.raises(TypeError):
        cls(params, *POSITIONAL[cls], False)  # foreach is keyword-only


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_bad_loss_with_several_groups_counts_once(name, path, gen):
    cls = OPTS[name]
    params = make_params(torch.float32, 12)
    opt = make_opt(cls, [dict(params=params[:2]), dict(params=params[2:4]),
                         dict(params=params[4:])], path, **HP[name])
    set_grads(params, make_grads(params, gen))
    opt.step(loss=1.0)
    snap = snapshot(opt, params)
    for k, bad in enumerate([math.nan, torch.tensor(math.inf)]):
        set_grads(params, make_grads(params, gen))
        with pytest.warns(RuntimeWarning):
            opt.step(loss=bad)
        assert opt.skipped_steps == k + 1
        assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("cls", [AdaLo, AdamL, AdaLoss])
def test_empty_parameter_group_is_accepted(cls):
    # torch.optim accepts groups without parameters (HF Trainer's no-decay group
    # is one when every parameter decays); step() must leave them alone.
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = cls([{"params": [p]}, {"params": []}])
    p.grad = torch.full_like(p, 0.5)
    opt.step(loss=1.0)
    assert not torch.equal(p.detach(), torch.ones(3, dtype=torch.float64))
    assert opt.param_groups[1]["params"] == []


@pytest.mark.parametrize("path", PATHS)
def test_skip_warnings_are_few_and_point_at_the_caller(path):
    # One warning per power of two of the count (1, 2, 4, 8): a diverged run that
    # skips thousands of steps does not flood the log; each names this file.
    p = torch.nn.Parameter(torch.ones(3))
    opt = make_opt(AdamL, [p], path)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(10):
            p.grad = torch.ones(3)
            opt.step(loss=torch.tensor(math.nan))
    skips = [w for w in rec if issubclass(w.category, RuntimeWarning) and "skipped" in str(w.message)]
    assert [int(str(w.message).split(": ")[1].split(" ")[0]) for w in skips] == [1, 2, 4, 8]
    assert all(w.filename == __file__ for w in skips), [w.filename for w in skips]
    assert opt.skipped_steps == 10
