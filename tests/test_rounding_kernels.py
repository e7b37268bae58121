"""The CPU kernels' stochastic rounding (csrc/cpu/kernels.cpp) against the
foreach path (lossopt_cuda/_reference.py), which test_bf16_state.py checks
against float64 references and test_rounding.py against a plain-Python oracle.

Each update op is called directly and ``_fused.host_update`` runs the foreach
update with the same scalar vector and the same rounding: the two must write
the same bits into the parameters, their states and their master weights,
for every rule, parameter dtype and rounding option, over tensors of odd sizes
(several chunks of the kernel's parallel loop), a 0-d one and tensors whose
data start one element past an aligned address. Any difference in the hash's
inputs (seed, step, tensor id, stream, element offset), in the rounding
itself or in the float32 arithmetic before it fails them.
"""

from __future__ import annotations

import os

import pytest
import torch

from conftest import HAS_CPU_KERNELS
from lossopt_cuda import _fused, _reference
from lossopt_cuda._rounding import Rounding

pytestmark = pytest.mark.skipif(not HAS_CPU_KERNELS, reason="no CPU kernels in this install")

#: Fresh inputs each run; LOSSOPT_TEST_SEED repeats one (the asserts print it).
SEED = int(os.environ.get("LOSSOPT_TEST_SEED", int.from_bytes(os.urandom(4), "little")))

# name: (op name, foreach update, scalar names, state names, arguments)
RULES = {
    "AdaLo": ("adalo_", _reference.adalo_foreach, _fused.ADALO_SCALARS, ("exp_avg",),
              dict(beta1=0.8, weight_decay=0.05)),
    "AdamL": ("adaml_", _reference.adaml_foreach, _fused.ADAML_SCALARS, ("exp_avg", "exp_avg_sq"),
              dict(beta1=0.9, beta2=0.99, weight_decay=0.01)),
    "AdaLoss": ("adaloss_", _reference.adaloss_foreach, _fused.ADALOSS_SCALARS, ("momentum_buffer",),
                dict(momentum=0.9, weight_decay=0.01)),
}
#: Sizes: a 0-d tensor, odd small ones, and two past the kernel's 2^16-element chunk.
SHAPES = [(), (7,), (13, 5), (65_536 + 3,), (3, 43_691)]
#: (parameter dtype, state dtype, stochastically rounded parameters, master weights)
CONFIGS = {
    "bf16 params and state": (torch.bfloat16, torch.bfloat16, True, False),
    "bf16 state only": (torch.bfloat16, torch.bfloat16, False, False),
    "bf16 params, f32 state": (torch.bfloat16, torch.float32, True, False),
    "f32 params, bf16 state": (torch.float32, torch.bfloat16, False, False),
    "f16 params, bf16 state": (torch.float16, torch.bfloat16, False, False),
    "bf16 master, bf16 state": (torch.bfloat16, torch.bfloat16, False, True),
    "no rounding": (torch.float32, torch.float32, False, False),
}


def _misaligned(shape, dtype, gen, positive=False):
    """A tensor of ``shape`` whose data start one element past the allocation."""
    n = 1
    for s in shape:
        n *= s
    values = torch.randn(n + 1, generator=gen)
    values = values.abs() + 0.01 if positive else values
    return values.to(dtype)[1:].view(shape)


def _scalars(name, gen, valid=True):
    u = lambda lo, hi: float(torch.empty(()).uniform_(lo, hi, generator=gen))  # noqa: E731
    rule = {
        "AdaLo": [u(1e-3, 0.1)],
        "AdamL": [u(1e-3, 0.1), u(1e-3, 0.5), u(1e-9, 1e-6), u(0.1, 1.0), u(0.01, 1.0)],
        "AdaLoss": [u(0.01, 0.5), u(0.5, 3.0)],
    }[name]
    return torch.tensor([1.0 if valid else 0.0, 0.5] + rule, dtype=torch.float64)


def _problem(name, config, gen):
    """Parameters, gradients, states and masters of every shape, and the rounding."""
    _, _, _, state_names, _ = RULES[name]
    pdtype, sdtype, round_params, with_master = CONFIGS[config]
    params = [_misaligned(s, pdtype, gen) for s in SHAPES]
    grads = [_misaligned(s, pdtype, gen) for s in SHAPES]
    states = {k: [_misaligned(s, sdtype, gen, positive=(k == "exp_avg_sq")) for s in SHAPES]
              for k in state_names}
    master = [p.float() + 1e-3 * _misaligned(p.shape, torch.float32, gen) for p in params] if with_master else None
    rounding = None
    if sdtype == torch.bfloat16 or round_params:
        ids = torch.randperm(1000, generator=gen)[: len(SHAPES)].tolist()
        step = torch.randint(0, 2**40, (), generator=gen, dtype=torch.int64)
        seed = int(torch.randint(-(2**62), 2**62, (), generator=gen, dtype=torch.int64))
        rounding = Rounding(seed, step, ids, round_params, sdtype == torch.bfloat16)
    return params, grads, states, master, rounding


def _clone(problem):
    params, grads, states, master, rounding = problem
    copy = lambda ts: [t.clone() for t in ts]  # noqa: E731
    return (copy(params), grads, {k: copy(v) for k, v in states.items()},
            None if master is None else copy(master), rounding)


def _bits(t):
    return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32)


def _assert_same_bits(a, b, what):
    for i, (x, y) in enumerate(zip(a, b)):
        same = _bits(x) == _bits(y)
        assert bool(same.all()), (f"{what} {i} (shape {tuple(x.shape)}): {int((~same).sum())} of "
                                  f"{x.numel()} elements differ, LOSSOPT_TEST_SEED={SEED}")


def _run_op(name, problem, scalars):
    op_name, _, _, _, args = RULES[name]
    params, grads, states, master, rounding = problem
    tail = () if rounding is None else (rounding.step, rounding.seed, rounding.tensor_ids, rounding.params)
    getattr(torch.ops.lossopt, op_name)(params, grads, *states.values(), master or [], scalars,
                                        *args.values(), *tail)


def _run_foreach(name, problem, scalars):
    _, update, names, _, args = RULES[name]
    params, grads, states, master, rounding = problem
    _fused.host_update(update, names, params, master, grads, states, scalars, args, rounding)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", RULES)
def test_the_kernel_writes_the_foreach_paths_bits(name, config):
    gen = torch.Generator().manual_seed(SEED + hash((name, config)) % 2**20)
    problem = _problem(name, config, gen)
    before = _clone(problem)
    scalars = _scalars(name, gen)
    kernel, foreach = _clone(problem), _clone(problem)
    _run_op(name, kernel, scalars)
    _run_foreach(name, foreach, scalars)
    _assert_same_bits(kernel[0], foreach[0], "parameter")
    for key in kernel[2]:
        _assert_same_bits(kernel[2][key], foreach[2][key], key)
    if kernel[3] is not None:
        _assert_same_bits(kernel[3], foreach[3], "master weight")
    # The step did something: not a comparison of two copies of the inputs.
    assert not all(torch.equal(_bits(x), _bits(y)) for x, y in zip(kernel[0], before[0]))


@pytest.mark.parametrize("name", RULES)
def test_a_skipped_step_writes_nothing(name):
    gen = torch.Generator().manual_seed(SEED)
    problem = _problem(name, "bf16 params and state", gen)
    for g in problem[1]:
        g.fill_(float("nan"))
    before = _clone(problem)
    _run_op(name, problem, _scalars(name, gen, valid=False))
    _assert_same_bits(problem[0], before[0], "parameter")
    for key in problem[2]:
        _assert_same_bits(problem[2][key], before[2][key], key)


def test_bad_rounding_arguments_raise_and_change_nothing():
    gen = torch.Generator().manual_seed(SEED)
    op = torch.ops.lossopt.adalo_
    scalars = _scalars("AdaLo", gen)
    args = RULES["AdaLo"][4].values()

    def call(params, states, master, *tail):
        grads = [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]
        before = [t.clone() for t in params + states + master]
        with pytest.raises(RuntimeError) as info:
            op(params, grads, states, master, scalars, *args, *tail)
        assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(before, params + states + master))
        return str(info.value)

    def tensors(pdtype, sdtype, n=2):
        return ([torch.randn(5, generator=gen).to(pdtype) for _ in range(n)],
                [torch.randn(5, generator=gen).to(sdtype) for _ in range(n)])

    step = torch.zeros((), dtype=torch.int64)
    p, s = tensors(torch.bfloat16, torch.bfloat16)
    assert "must be" in call(p, s, [])  # bfloat16 states without a counter
    assert "rounding_step" in call(p, s, [], step.double(), 1, [0, 1], False)
    assert "tensor ids" in call(p, s, [], step, 1, [0], False)
    assert "need a rounding_step" in call(p, s, [], None, 1, [0, 1], False)
    assert "need a rounding_step" in call(p, s, [], None, 1, [], True)
    p32, s32 = tensors(torch.float32, torch.float32)
    assert "bfloat16 parameters" in call(p32, s32, [], step, 1, [0, 1], True)
    masters = [x.float() for x in p]
    assert "master weights" in call(p, s, masters, step, 1, [0, 1], True)
    p64, s64 = tensors(torch.float64, torch.bfloat16)
    assert "must be" in call(p64, s64, [], step, 1, [0, 1], False)  # bfloat16 state over float64 math
    mixed = [s[0], s[1].float()]
    assert "must be" in call(p, mixed, [], step, 1, [0, 1], False)  # one state dtype per call
