"""bfloat16 optimizer state (``state_dtype``) and stochastically rounded
bfloat16 parameters (``stochastic_rounding``) on the for-loop, foreach and
fused (CPU kernels) paths; test_rounding_kernels.py checks the kernels' bits
against the foreach path's.

Each step is checked against the float64 references of conftest.py, started
from the stored values (so the rounding of earlier steps does not accumulate
into the comparison): a stored value lies within one bfloat16 ulp of the exact
result. The two paths write the same bits; a resumed run continues bit for
bit; a bad loss changes nothing, the rounding counter included.
"""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
import torch

from conftest import REF, assert_unchanged, snapshot
import lossopt_cuda
from lossopt_cuda import AdaLo, AdaLoss, AdamL
from lossopt_cuda._rounding import STEP_KEY

RULES = {
    "AdaLo": (AdaLo, {"betas": (0.8, 0.99), "weight_decay": 0.05, "kappa": 0.5}),
    "AdamL": (AdamL, {"lr": 3e-3, "weight_decay": 0.01}),
    "AdaLoss": (AdaLoss, {"lr": 0.2, "momentum": 0.9, "weight_decay": 0.01}),
}
#: Fresh inputs each run; LOSSOPT_TEST_SEED repeats one (printed on failure by the asserts that use it).
SEED = int(os.environ.get("LOSSOPT_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
STATE_KEYS = {"AdaLo": ("exp_avg",), "AdamL": ("exp_avg", "exp_avg_sq"), "AdaLoss": ("momentum_buffer",)}
HAS_CPU_KERNELS = bool(lossopt_cuda.build_info()["cpu_kernels"])
PATHS = {"forloop": dict(foreach=False), "foreach": dict(foreach=True),
         **({"fused": dict(fused=True)} if HAS_CPU_KERNELS else {})}
SHAPES = [(7,), (13, 5), (3, 1, 11), ()]


def _params(dtype, gen, shapes=SHAPES):
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]


def _grads(params, gen):
    return [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]


def _bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """One bfloat16 ulp at each |x| (float64): 2^(exponent - 7), the subnormal spacing below."""
    e = torch.floor(torch.log2(x.abs().clamp_min(2.0 ** -126)))
    return torch.exp2(e - 7)


def _within_one_ulp(stored: torch.Tensor, exact: torch.Tensor, operands: torch.Tensor, what: str) -> None:
    """One bfloat16 ulp of the exact value, plus what the float32 math may err
    by: a few float32 ulps of the operands' size (``operands``: per element),
    which matters where the result cancels far below its operands."""
    stored, exact = stored.double(), exact.double()
    bound = _bf16_ulp(exact) * (1 + 2.0 ** -12) + 2.0 ** -20 * operands.double().abs() + 2.0 ** -133
    bad = (stored - exact).abs() > bound
    assert not bool(bad.any()), f"{what}: {int(bad.sum())} values off by more than one bfloat16 ulp"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", RULES)
def test_every_step_within_one_bf16_ulp_of_the_float64_reference(name, param_dtype, path):
    cls, hp = RULES[name]
    gen = torch.Generator().manual_seed(hash((name, str(param_dtype), path)) % 2**31)
    params = _params(param_dtype, gen)
    opt = cls(params, **hp, **PATHS[path], state_dtype=torch.bfloat16, stochastic_rounding=True)
    ref = REF[cls](params, **hp)
    for step in range(6):
        grads = _grads(params, gen)
        for p, g in zip(params, grads):
            p.grad = g
        loss = float(torch.empty(()).uniform_(0.1, 3.0, generator=gen))
        # The reference starts from what is stored now.
        ref.set_params(params)
        for i, p in enumerate(params):
            for key, value in opt.state.get(p, {}).items():
                if key in STATE_KEYS[name]:
                    ref.state[i][key] = value.double()
        before = [(p.detach().double().abs(), {k: v.double().abs() for k, v in ref.state[i].items()})
                  for i, p in enumerate(params)]
        ref.step(grads, loss)
        opt.step(loss=loss)
        for i, p in enumerate(params):
            p_old, s_old = before[i]
            g = grads[i].double().abs()
            for key in STATE_KEYS[name]:
                assert opt.state[p][key].dtype == torch.bfloat16
                scale = s_old.get(key, 0) + g * g + g + ref.state[i][key].abs()
                _within_one_ulp(opt.state[p][key], ref.state[i][key], scale, f"step {step} param {i} {key}")
            if param_dtype == torch.bfloat16:
                _within_one_ulp(p.detach(), ref.params[i], p_old + ref.params[i].abs(), f"step {step} param {i}")
            else:  # float32 parameters are written as they always were: round to nearest
                torch.testing.assert_close(p.detach().double(), ref.params[i], rtol=2e-6, atol=1e-7)
        assert int(opt.state[params[0]][STEP_KEY]) == step + 1


def _run(name, path, seed, steps, gen_seed=5, bad_at=(), params=None, opt=None):
    """Steps of a group mixing float32 and bfloat16 parameters of awkward
    layouts (transposed, channels-last, a 0-d one)."""
    cls, hp = RULES[name]
    gen = torch.Generator().manual_seed(gen_seed)
    if params is None:
        params = [
            torch.randn(37, 5, generator=gen).to(torch.bfloat16).requires_grad_(),
            torch.randn(9, 11, generator=gen).t().requires_grad_(),  # float32, transposed
            torch.randn(2, 3, 5, 7, generator=gen).to(torch.bfloat16)
            .to(memory_format=torch.channels_last).requires_grad_(),
            torch.randn((), generator=gen).to(torch.bfloat16).requires_grad_(),
        ]
    if opt is None:
        opt = cls(params, **hp, **PATHS[path], state_dtype=torch.bfloat16, stochastic_rounding=True,
                  rounding_seed=seed)
    for k in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        opt.step(loss=torch.tensor(float("nan") if k in bad_at else 0.5 + 0.1 * k))
    return params, opt


def _same(a, b):
    (pa, oa), (pb, ob) = a, b
    for x, y in zip(pa, pb):
        if not torch.equal(x.detach(), y.detach()):
            return False
        sa, sb = oa.state[x], ob.state[y]
        if set(sa) != set(sb) or not all(torch.equal(sa[k], sb[k]) for k in sa):
            return False
    return True


@pytest.mark.filterwarnings("ignore:.*step\\(s\\) skipped:RuntimeWarning")
@pytest.mark.parametrize("name", RULES)
def test_every_path_writes_the_same_bits(name):
    """The for-loop, the foreach and (where built) the fused path, each with
    its own scalar step (Python, or the compiled advance op), end 7 steps
    with a bad loss among them with the very same parameters and state."""
    a = _run(name, "forloop", 1234, 7, bad_at=(3,))
    for path in PATHS:
        if path != "forloop":
            assert _same(a, _run(name, path, 1234, 7, bad_at=(3,))), path
    assert int(a[1].state[a[0][0]][STEP_KEY]) == 6  # the bad step is not counted
    assert not _same(a, _run(name, "foreach", 1235, 7, bad_at=(3,)))  # another seed, other bits


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", RULES)
def test_a_resumed_run_continues_bit_for_bit(name, path):
    params, opt = _run(name, path, 99, 4)
    saved_params = [p.detach().clone() for p in params]
    saved = copy.deepcopy(opt.state_dict())
    assert saved["param_groups"][0]["rounding_seed"] == 99
    _run(name, path, None, 4, gen_seed=6, params=params, opt=opt)
    # A fresh optimizer with another seed, on the other path, loads the checkpoint
    # (the fused path advances its scalars in float64: from fused to fused).
    other = {"forloop": "foreach", "foreach": "forloop", "fused": "fused"}[path]
    cls, hp = RULES[name]
    fresh = [p.clone().requires_grad_() for p in saved_params]
    opt2 = cls(fresh, **hp, **PATHS[other], state_dtype=torch.bfloat16, stochastic_rounding=True, rounding_seed=7)
    opt2.load_state_dict(saved)
    resumed = _run(name, other, None, 4, gen_seed=6, params=fresh, opt=opt2)
    assert _same((params, opt), resumed)


@pytest.mark.filterwarnings("ignore:.*step\\(s\\) skipped:RuntimeWarning")
def test_a_bad_loss_changes_nothing_not_even_the_counter():
    params, opt = _run("AdamL", "foreach", 3, 2)
    snap = snapshot(opt, params)
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    opt.step(loss=torch.tensor(float("inf")))
    assert_unchanged(opt, params, snap, "inf loss")


def test_unbiased_state_and_parameters():
    """2^15 identical elements: each stored value is one of two bfloat16
    neighbours of the same exact result, and their mean is that result within
    6 standard deviations (ulp / (2 sqrt(n)) each)."""
    n = 1 << 15
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(4):
        g0, p0 = float(torch.randn((), generator=gen)), float(torch.randn((), generator=gen))
        p = torch.full((n,), p0).to(torch.bfloat16).requires_grad_()
        p.grad = torch.full((n,), g0).to(torch.bfloat16)
        opt = AdaLo([p], betas=(0.7, 0.9), weight_decay=0.0, kappa=0.01,
                    state_dtype=torch.bfloat16, stochastic_rounding=True)
        ref = REF[AdaLo]([p.detach()[:1]], betas=(0.7, 0.9), weight_decay=0.0, kappa=0.01)
        ref.step([p.grad[:1]], 1.0)
        opt.step(loss=1.0)
        for stored, exact in ((opt.state[p]["exp_avg"], ref.state[0]["exp_avg"]), (p.detach(), ref.params[0])):
            exact = float(exact)
            ulp = float(_bf16_ulp(torch.tensor(exact, dtype=torch.float64)))
            assert len(torch.unique(stored)) <= 2
            assert abs(float(stored.double().mean()) - exact) <= 6 * ulp / (2 * math.sqrt(n))


def test_small_updates_accumulate_in_bfloat16_parameters():
    """AdaLoss at a loss equal to c keeps b = b0: a constant step of 1e-4 on
    1.0, a 78th of bfloat16's ulp. Round to nearest never moves; stochastic
    rounding moves by 1e-4 a step on average (bound: 6 standard deviations of
    the mean over the elements)."""
    n, steps = 4096, 300
    moved = {}
    for sr in (False, True):
        p = torch.ones(n, dtype=torch.bfloat16, requires_grad=True)
        opt = AdaLoss([p], lr=1e-4, b0=1.0, c=0.0, foreach=True, stochastic_rounding=sr,
                      rounding_seed=11 if sr else None)
        for _ in range(steps):
            p.grad = torch.ones_like(p)
            opt.step(loss=0.0)
        moved[sr] = float(p.detach().double().mean())
    assert moved[False] == 1.0
    bound = 6 * 2.0 ** -8 * math.sqrt(steps / n) / 2  # below 1, the ulp is 2^-8
    assert abs(moved[True] - (1 - steps * 1e-4)) <= bound


def test_options_that_change_nothing_change_nothing():
    """state_dtype=float32 is today's state for low-precision parameters, and
    stochastic rounding leaves float32 parameters as they are."""
    gen = torch.Generator().manual_seed(8)
    for param_dtype, kwargs in ((torch.bfloat16, dict(state_dtype=torch.float32)),
                                (torch.float32, dict(stochastic_rounding=True))):
        base = _params(param_dtype, gen)
        a, b = [p.detach().clone().requires_grad_() for p in base], [p.detach().clone().requires_grad_() for p in base]
        oa, ob = AdamL(a, foreach=True), AdamL(b, foreach=True, **kwargs)
        for k in range(3):
            grads = _grads(base, gen)
            for x, y, g in zip(a, b, grads):
                x.grad, y.grad = g, g.clone()
            oa.step(loss=1.0 + k)
            ob.step(loss=1.0 + k)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert all(torch.equal(oa.state[x]["exp_avg_sq"], ob.state[y]["exp_avg_sq"]) for x, y in zip(a, b))


def test_the_seed_comes_from_torchs_generator_only_when_rounding():
    p = torch.zeros(3, requires_grad=True)
    torch.manual_seed(0)
    AdaLo([p])
    after_plain = torch.randn(2)
    torch.manual_seed(0)
    assert torch.equal(torch.randn(2), after_plain)  # nothing was drawn
    torch.manual_seed(0)
    s1 = AdaLo([p], state_dtype=torch.bfloat16).param_groups[0]["rounding_seed"]
    torch.manual_seed(0)
    s2 = AdaLo([p], stochastic_rounding=True).param_groups[0]["rounding_seed"]
    assert s1 == s2
    assert AdaLo([p], rounding_seed=2**64 - 1).param_groups[0]["rounding_seed"] == -1  # as int64 bits


def test_bad_options_raise():
    p = torch.zeros(3, requires_grad=True)
    for bad in (torch.float16, torch.float64, "bf16"):
        with pytest.raises(ValueError, match="state_dtype"):
            AdaLo([p], state_dtype=bad)
    with pytest.raises(ValueError, match="master_weights"):
        AdamL([p], stochastic_rounding=True, master_weights=True)
    for bad in (1.5, -(2**63) - 1, 2**64, True):
        with pytest.raises(ValueError, match="rounding_seed"):
            AdaLoss([p], rounding_seed=bad)



def test_fused_true_refuses_rounding_where_the_kernels_do_not_round(monkeypatch):
    """As on CUDA today: fused=True raises, fused=None takes the foreach path."""
    monkeypatch.setattr(lossopt_cuda._kernels, "ROUNDING_DEVICES", ())
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="do not write bfloat16 state"):
        AdaLo([p], fused=True, state_dtype=torch.bfloat16)
    opt = AdaLo([p], state_dtype=torch.bfloat16)
    assert opt._choose_impl(p.device, p.dtype) is AdaLo._foreach


def test_float64_parameters_refuse_a_state_dtype_before_changing_anything():
    p = torch.randn(4, dtype=torch.float64, requires_grad=True)
    opt = AdamL([p], state_dtype=torch.bfloat16)
    p.grad = torch.ones_like(p)
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match="float64"):
        opt.step(loss=1.0)
    assert torch.equal(p.detach(), before) and not opt.state


def test_checkpoints_move_between_state_dtypes():
    params, opt = _run("AdamL", "foreach", 5, 3)
    cls, hp = RULES["AdamL"]
    fresh = [p.detach().clone().requires_grad_() for p in params]
    plain = cls(fresh, **hp, foreach=True)
    plain.load_state_dict(opt.state_dict())
    for p in fresh:
        p.grad = torch.ones_like(p)
    plain.step(loss=1.0)
    for p, q in zip(params, fresh):
        assert plain.state[q]["exp_avg"].dtype == torch.float32


# The README's table of optimizer state per parameter, in bytes:
# (parameter dtype, options) -> (AdaLo, AdamL, AdaLoss, AdaLoss with momentum, torch Adam).
README_STATE_BYTES = {
    (torch.float32, ()): (4, 8, 0, 4, 8),
    (torch.float32, ("state_dtype",)): (2, 4, 0, 2, None),
    (torch.bfloat16, ()): (4, 8, 0, 4, 4),
    (torch.bfloat16, ("master_weights",)): (8, 12, 4, 8, None),
    (torch.bfloat16, ("state_dtype", "stochastic_rounding")): (2, 4, 0, 2, 4),
}


@pytest.mark.parametrize("config", README_STATE_BYTES, ids=str)
def test_state_bytes_per_parameter_as_the_readme_says(config):
    dtype, options = config
    kwargs = {"state_dtype": torch.bfloat16} if "state_dtype" in options else {}
    kwargs.update({k: True for k in options if k != "state_dtype"})
    n = 1000

    def per_param(make):
        p = torch.randn(n).to(dtype).requires_grad_()
        opt = make([p])
        p.grad = torch.ones_like(p)
        opt.step(loss=1.0) if not isinstance(opt, torch.optim.Adam) else opt.step()
        sizes = [v.numel() * v.element_size() for v in opt.state[p].values()
                 if isinstance(v, torch.Tensor) and v.shape == p.shape]
        return sum(sizes) / n

    makes = [lambda ps: AdaLo(ps, foreach=True, **kwargs), lambda ps: AdamL(ps, foreach=True, **kwargs),
             lambda ps: AdaLoss(ps, foreach=True, **kwargs),
             lambda ps: AdaLoss(ps, momentum=0.9, foreach=True, **kwargs)]
    got = tuple(per_param(m) for m in makes)
    want = README_STATE_BYTES[config]
    assert got == want[:4]
    if want[4] is not None:
        assert per_param(lambda ps: torch.optim.Adam(ps)) == want[4]


@pytest.mark.skipif(not HAS_CPU_KERNELS, reason="no CPU kernels in this install")
@pytest.mark.parametrize("name", RULES)
def test_a_tensor_the_kernels_cannot_walk_is_rounded_as_the_kernels_round_it(name, monkeypatch):
    """In a fused group, a parameter whose gradient is laid out otherwise takes
    the foreach path, with the scalars of the compiled advance op: its bits,
    state and the counter come out as when the kernel steps it."""
    cls, hp = RULES[name]
    host_steps = []
    host_update = lossopt_cuda._fused.host_update
    monkeypatch.setattr(lossopt_cuda._fused, "host_update", lambda *a: host_steps.append(a[2]) or host_update(*a))
    runs = []
    for transposed_grad in (False, True):
        gen = torch.Generator().manual_seed(21)
        params = [torch.randn(33, generator=gen).requires_grad_(),
                  torch.randn(5, 7, generator=gen).to(torch.bfloat16).requires_grad_()]
        opt = cls(params, **hp, fused=True, state_dtype=torch.bfloat16, stochastic_rounding=True,
                  rounding_seed=4)
        for k in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            if transposed_grad:  # same values, column-major: not walkable with the parameter
                params[1].grad = params[1].grad.t().contiguous().t()
            opt.step(loss=torch.tensor(0.3 + k))
        runs.append((params, opt))
        assert len(host_steps) == (4 if transposed_grad else 0)  # the fallback ran, for that tensor alone
    assert all(len(stepped) == 1 and stepped[0].dtype == torch.bfloat16 for stepped in host_steps)
    assert _same(*runs)
    assert int(runs[0][1].state[runs[0][0][0]][STEP_KEY]) == 4


def test_the_bits_are_those_of_the_parameter_order_and_the_state_stream():
    """Written bits checked against _rounding.round_bf16 with ids spelled out:
    the tensor is the parameter's index in state_dict() order (across groups),
    the stream the state's position (the parameter's is the number of states),
    the step the count of earlier valid steps."""
    from lossopt_cuda._rounding import round_bf16

    gen = torch.Generator().manual_seed(SEED)
    groups = [[torch.randn(17, generator=gen).requires_grad_() for _ in range(2)],
              [torch.randn(3, 4, generator=gen).requires_grad_()]]
    opt = AdaLo([{"params": groups[0]}, {"params": groups[1], "betas": (0.5, 0.999)}], foreach=True,
                state_dtype=torch.bfloat16, rounding_seed=SEED)
    flat = groups[0] + groups[1]
    for p in flat:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step(loss=1.0)
    for index, p in enumerate(flat):
        c1 = torch.tensor(1 - opt.param_groups[0 if index < 2 else 1]["betas"][0], dtype=torch.float32)
        want = round_bf16(p.grad * c1, SEED, 0, index, 0)  # the first m: (g - 0) * (1 - beta1) + 0
        assert torch.equal(opt.state[p]["exp_avg"], want), f"parameter {index}, LOSSOPT_TEST_SEED={SEED}"


def test_a_checkpoint_without_a_seed_takes_and_keeps_this_optimizers():
    params = [torch.randn(9).requires_grad_()]
    plain = AdamL(params, foreach=True)
    params[0].grad = torch.ones(9)
    plain.step(loss=1.0)
    rounded = AdamL(params, foreach=True, state_dtype=torch.bfloat16, rounding_seed=5)
    rounded.load_state_dict(plain.state_dict())
    rounded.step(loss=1.0)
    assert rounded.state_dict()["param_groups"][0]["rounding_seed"] == 5


def test_groups_added_later_have_their_seed_checked():
    opt = AdaLo([torch.zeros(3, requires_grad=True)], stochastic_rounding=True, rounding_seed=1)
    with pytest.raises(ValueError, match="rounding_seed"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "rounding_seed": 0.5})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "rounding_seed": 2**64 - 2})
    assert opt.param_groups[1]["rounding_seed"] == -2


@pytest.mark.filterwarnings("ignore:.*step\\(s\\) skipped:RuntimeWarning")
def test_a_skipped_step_keeps_even_nan_payloads():
    p = torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)
    opt = AdaLo([p], foreach=True, state_dtype=torch.bfloat16, stochastic_rounding=True)
    p.grad = torch.ones_like(p)
    opt.step(loss=1.0)
    payload = torch.tensor([-16447, 0x7FC1, 0x7F81, 5], dtype=torch.int16)  # 0xBFC1: a NaN with its sign set
    opt.state[p]["exp_avg"].view(torch.int16).copy_(payload)
    opt.step(loss=float("nan"))
    opt.step(loss=torch.tensor(float("nan")))
    assert torch.equal(opt.state[p]["exp_avg"].view(torch.int16), payload)


@pytest.mark.filterwarnings("ignore:.*step\\(s\\) skipped:RuntimeWarning")
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", RULES)
def test_an_overflow_under_gradscaler_changes_nothing_then_steps_as_without_it(name, path):
    """GradScaler: an overflowed step leaves every bit (the counter included);
    the next one, with a power-of-two scale, writes the bits of a run without a scaler."""
    params, opt = _run(name, path, 3, 2)
    twin_params, twin = copy.deepcopy((params, opt))  # one memo: the copy steps the copied parameters
    snap = snapshot(opt, params)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    loss = torch.tensor(0.7)
    scaler.scale(loss)  # the scaler's scale tensor, as after scaler.scale(loss).backward()
    gen = torch.Generator().manual_seed(17)
    grads = [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]
    for p, g in zip(params, grads):
        p.grad = g * 2.0**10
    params[0].grad.view(-1)[0] = float("inf")
    scaler.step(opt, loss=loss)
    scaler.update()
    assert_unchanged(opt, params, snap, "overflow")
    assert scaler.get_scale() == 2.0**9
    scaler.scale(loss)
    for p, g in zip(params, grads):
        p.grad = g * scaler.get_scale()
    scaler.step(opt, loss=loss)
    for p, g in zip(twin_params, grads):
        p.grad = g.clone()
    twin.step(loss=loss)
    assert _same((params, opt), (twin_params, twin))


@pytest.mark.parametrize("path", PATHS)
def test_a_deep_copy_and_a_pickled_checkpoint_continue_bit_for_bit(path):
    import io

    params, opt = _run("AdaLo", path, 8, 3)
    buffer = io.BytesIO()
    torch.save({"params": params, "opt": opt.state_dict()}, buffer)
    clone_params, clone = copy.deepcopy((params, opt))
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    cls, hp = RULES["AdaLo"]
    loaded_params = [p.detach().clone().requires_grad_() for p in saved["params"]]
    loaded = cls(loaded_params, **hp, **PATHS[path], state_dtype=torch.bfloat16, stochastic_rounding=True)
    loaded.load_state_dict(saved["opt"])
    runs = [_run("AdaLo", path, None, 3, gen_seed=9, params=ps, opt=o)
            for ps, o in ((params, opt), (clone_params, clone), (loaded_params, loaded))]
    assert _same(runs[0], runs[1]) and _same(runs[0], runs[2])
