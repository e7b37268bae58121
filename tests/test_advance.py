"""The compiled ``<rule>_advance`` ops (the fused path's scalar step).

Each is checked against the same rule's ``_advance`` in Python (torch ops in
float64, the host-driven path) over random hyper-parameters and loss sequences
with bad losses and overflowed gradients mixed in: the group state must stay
bitwise equal and the scalar vector equal to within a float64 ulp or two. The
end-to-end tests (test_rules.py) compare the fused path with the float64
reference of ALGORITHMS.md; these pin down the scalar step alone.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lossopt_cuda
from conftest import HAS_CPU_KERNELS, clone_params, make_grads, make_params, set_grads
from lossopt_cuda import AdaLo, AdaLoss, AdamL, _fused, _kernels

pytestmark = pytest.mark.skipif(not HAS_CPU_KERNELS, reason="no compiled kernels")

F64 = torch.float64

HYPER = {
    AdaLo: st.fixed_dictionaries(dict(
        betas=st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.9999)),
        kappa=st.floats(0.1, 10.0),
        eps=st.sampled_from([0.0, 1e-8, 1e-3]),
        mode=st.sampled_from(["adversarial", "compliant"]),
    )),
    AdamL: st.fixed_dictionaries(dict(
        lr=st.floats(1e-4, 1.0),
        betas=st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.9999)),
        eps=st.floats(1e-10, 1.0),
        gamma=st.floats(0.1, 10.0),
        phi=st.sampled_from([0.0, 0.5, 1.0, 2.0, 1.7]),
        min_loss=st.floats(-2.0, 0.5),
        normalize_loss=st.booleans(),
    )),
    AdaLoss: st.fixed_dictionaries(dict(
        lr=st.floats(1e-4, 1.0),
        b0=st.floats(0.01, 10.0),
        alpha=st.floats(0.0, 5.0),
        c=st.floats(-1.0, 1.0),
    )),
}

# Losses to draw from: ordinary values and each rule's bad ones.
LOSSES = st.one_of(
    st.floats(-0.9, 20.0),
    st.sampled_from([0.0, -0.5, -1.0, -3.0, math.nan, math.inf, -math.inf, 1e30]),
)


def _ulps_close(a: float, b: float, ulps: int = 2) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= ulps * math.ulp(max(abs(a), abs(b)))


@pytest.mark.parametrize("cls", [AdaLo, AdamL, AdaLoss], ids=lambda c: c.__name__)
def test_advance_op_matches_the_python_advance(cls):
    @given(hp=HYPER[cls], losses=st.lists(LOSSES, min_size=1, max_size=12),
           overflow=st.lists(st.booleans(), min_size=12, max_size=12),
           scale=st.sampled_from([None, 1.0, 2.0**-7, 65536.0]),
           loss_dtype=st.sampled_from([F64, torch.float32]))
    def check(hp, losses, overflow, scale, loss_dtype):
        opt = cls([torch.zeros(3, requires_grad=True)], **hp)
        group = opt.param_groups[0]
        host = opt._init_group_state(group, torch.device("cpu"))
        dev = {k: v.clone() for k, v in host.items()}
        skips = torch.zeros((), dtype=torch.int64)
        expected_skips = 0
        for i, value in enumerate(losses):
            loss = torch.tensor(value, dtype=loss_dtype)  # the op reads float32 losses as they are
            found_inf = torch.tensor(float(overflow[i])) if scale is not None else None
            grad_scale = torch.tensor(scale, dtype=torch.float32) if scale is not None else None

            loss64 = loss.double()  # the host path works in float64
            loss_ok = bool(opt._loss_is_valid(loss64))
            valid = loss_ok and not (found_inf is not None and bool(found_inf))
            expected_skips += not loss_ok
            kwargs = opt._advance(group, host, loss64, torch.tensor(valid))

            vector = _fused.advance(
                opt._advance_op(), loss, [dev[k] for k in opt._group_state_keys],
                found_inf=found_inf, grad_scale=grad_scale, lr=group["lr"], skips=skips,
                hyper=opt._hyper(group))
            assert vector.dtype == F64 and vector.shape == (2 + len(opt._scalar_names),)
            msg = f"step {i}, loss {value}, valid {valid}"
            assert float(vector[0]) == float(valid), msg
            assert float(vector[1]) == (1.0 if scale is None else 1.0 / scale), msg
            assert int(skips) == expected_skips, msg
            for k in opt._group_state_keys:
                assert dev[k].dtype == host[k].dtype, f"{msg}: {k} dtype"
                assert torch.equal(dev[k], host[k]), f"{msg}: {k} {float(dev[k])!r} vs {float(host[k])!r}"
            if valid:  # a skipped step's scalars are never read
                for j, name in enumerate(opt._scalar_names):
                    got, want = float(vector[2 + j]), float(kwargs[name])
                    assert _ulps_close(got, want), f"{msg}: {name} {got!r} vs {want!r}"

    check()


def _advance_args(opt, **change):
    group = opt.param_groups[0]
    state = opt._group_state(group)
    args = dict(
        loss=torch.tensor(1.5, dtype=F64),
        state=[state[k] for k in opt._group_state_keys],
        found_inf=torch.zeros(()),
        grad_scale=torch.ones(()),
        lr=group["lr"],
        skips=torch.zeros((), dtype=torch.int64),
        hyper=opt._hyper(group),
    )
    args.update(change)
    return args


BAD_CALLS = {
    "loss with two elements": lambda opt: dict(loss=torch.tensor([1.0, 2.0], dtype=F64)),
    "bfloat16 loss": lambda opt: dict(loss=torch.tensor(1.0, dtype=torch.bfloat16)),
    "float64 found_inf": lambda opt: dict(found_inf=torch.zeros((), dtype=F64)),
    "int32 skip count": lambda opt: dict(skips=torch.zeros((), dtype=torch.int32)),
    "a hyper-parameter short": lambda opt: dict(hyper=opt._hyper(opt.param_groups[0])[:-1]),
    "a state tensor short": lambda opt: dict(state=[]),
    "state of the wrong dtype": lambda opt: dict(
        state=[s.to(F64 if s.dtype == torch.float32 else torch.float32)
               for s in _advance_args(opt)["state"]]),
}


@pytest.mark.parametrize("bad", list(BAD_CALLS))
@pytest.mark.parametrize("cls", [AdaLo, AdamL, AdaLoss], ids=lambda c: c.__name__)
def test_a_refused_advance_changes_nothing(cls, bad):
    opt = cls([torch.zeros(3, requires_grad=True)])
    args = _advance_args(opt)
    _fused.advance(opt._advance_op(), **args)  # one good step first: non-trivial state
    args = _advance_args(opt, **BAD_CALLS[bad](opt))
    before = [s.clone() for s in args["state"]], args["skips"].clone()
    with pytest.raises((RuntimeError, NotImplementedError, TypeError)):
        _fused.advance(opt._advance_op(), **args)
    for s, b in zip(args["state"], before[0]):
        assert torch.equal(s, b), bad
    assert torch.equal(args["skips"], before[1]), bad


@pytest.mark.filterwarnings("ignore:.*skipped so far:RuntimeWarning")
@pytest.mark.parametrize("cls, hp", [
    (AdaLo, {}), (AdamL, dict(lr=3e-3, weight_decay=0.1)), (AdaLoss, dict(momentum=0.9)),
], ids=["AdaLo", "AdamL", "AdaLoss"])
def test_a_bucket_without_kernels_in_a_fused_group(cls, hp, gen, monkeypatch):
    """fused=None with a dtype the kernels lack (as float64 on CUDA): that
    bucket takes foreach with the scalars from the device vector, in the same step."""
    monkeypatch.setitem(_kernels.FUSED_DTYPES, "cpu", (torch.float32,))
    params = make_params(torch.float32, 1, [(5, 3), (7,)]) + make_params(F64, 2, [(4,), (2, 3)])
    twins = clone_params(params)
    opt = cls(params, **hp)
    ref = cls(twins, foreach=True, fused=False, **hp)
    assert opt._choose_impl(torch.device("cpu"), torch.float32) is cls._fused
    assert opt._choose_impl(torch.device("cpu"), F64) is cls._foreach
    for loss in [2.0, 1.2, math.nan, 0.7]:
        grads = make_grads(params, gen)
        set_grads(params, grads)
        set_grads(twins, grads)
        opt.step(loss=torch.tensor(loss))
        ref.step(loss=torch.tensor(loss))
    for p, t in zip(params, twins):
        torch.testing.assert_close(p, t, rtol=1e-6, atol=1e-7)
    for k in opt._group_state_keys:
        assert torch.equal(opt.state[params[0]][k], ref.state[twins[0]][k]), k
    assert opt.skipped_steps == ref.skipped_steps == 1


@pytest.mark.parametrize("lr_dtype", [torch.float32, F64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cls", [AdamL, AdaLoss], ids=lambda c: c.__name__)
def test_tensor_lr_on_the_fused_path(cls, lr_dtype, gen):
    """A tensor lr, changed in place by a scheduler, is read on the device."""
    params = make_params(torch.float32, 3, [(6, 5), (9,)])
    twins = clone_params(params)
    opt = cls(params, lr=torch.tensor(0.02, dtype=lr_dtype), fused=True)
    ref = cls(twins, lr=float(opt.param_groups[0]["lr"]), foreach=True, fused=False)
    for step, loss in enumerate([1.5, 0.9, 0.4]):
        grads = make_grads(params, gen)
        set_grads(params, grads)
        set_grads(twins, grads)
        opt.step(loss=torch.tensor(loss))
        ref.step(loss=torch.tensor(loss))
        opt.param_groups[0]["lr"].fill_(0.02 / (step + 2))
        ref.param_groups[0]["lr"] = float(opt.param_groups[0]["lr"])
    for p, t in zip(params, twins):
        torch.testing.assert_close(p, t, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", [AdaLo, AdamL, AdaLoss], ids=lambda c: c.__name__)
def test_state_of_another_dtype_is_cast_before_the_step(cls, gen):
    """Group scalars and per-parameter state edited to another dtype (in the
    second of two groups) are cast back before anything is stepped, so no step
    fails half-way; the result equals foreach on the same edited state."""
    params = make_params(torch.float32, 4, [(3, 4), (5,), (2, 2), (7,)])
    twins = clone_params(params)
    opts = [cls([{"params": ps[:2]}, {"params": ps[2:]}], **kw) for ps, kw in
            ((params, dict(fused=True)), (twins, dict(foreach=True, fused=False)))]
    grads = make_grads(params, gen)
    for ps, opt in zip((params, twins), opts):
        set_grads(ps, grads)
        opt.step(loss=1.0)
        state = opt.state[ps[2]]
        key = opt._group_state_keys[0]
        state[key] = state[key].to(torch.float16)
        for k in opt._param_state_keys(opt.param_groups[1]):
            state[k] = state[k].to(F64)
    grads = make_grads(params, gen)
    for ps, opt in zip((params, twins), opts):
        set_grads(ps, grads)
        opt.step(loss=torch.tensor(0.5))
    fused, ref = opts
    for p, t in zip(params, twins):
        torch.testing.assert_close(p, t, rtol=1e-6, atol=1e-7)
        for k, v in ref.state[t].items():
            assert fused.state[p][k].dtype == v.dtype, k
            torch.testing.assert_close(fused.state[p][k], v, rtol=1e-6, atol=1e-7)
    fresh = fused._init_group_state(fused.param_groups[1], torch.device("cpu"))
    for k in fused._group_state_keys:
        assert fused.state[params[2]][k].dtype == fresh[k].dtype, k


@pytest.mark.parametrize("cls", [AdaLo, AdamL, AdaLoss], ids=lambda c: c.__name__)
def test_group_scalars_of_another_dtype_load_as_the_rule_keeps_them(cls, gen):
    """A checkpoint whose group scalars have another dtype (float32 ``b_sq`` and
    ``loss0`` come from MPS, which has no float64) resumes on the fused path."""
    params = make_params(torch.float32, 5, [(4, 3)])
    src = cls(params, foreach=True, fused=False)
    set_grads(params, make_grads(params, gen))
    src.step(loss=1.25)
    sd = src.state_dict()
    first = sd["state"][0]
    for k in cls._group_state_keys:
        first[k] = first[k].to(torch.float32 if first[k].dtype == F64 else F64)
    dst = cls(clone_params(params), fused=True)
    dst.load_state_dict(sd)
    fresh = dst._init_group_state(dst.param_groups[0], torch.device("cpu"))
    for k in cls._group_state_keys:
        got = dst.state[dst.param_groups[0]["params"][0]][k]
        assert got.dtype == fresh[k].dtype, k
        assert float(got) == float(first[k]), k
    set_grads(dst.param_groups[0]["params"], make_grads(params, gen))
    dst.step(loss=0.75)


def test_advance_ops_are_registered_for_the_cpu():
    for name in ("adalo_advance", "adaml_advance", "adaloss_advance"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lossopt::{name}", "CPU")
    assert lossopt_cuda.build_info()["cpu_kernels"]
