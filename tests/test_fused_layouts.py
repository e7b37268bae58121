"""Parameters the kernels cannot walk as flat memory, on the fused path.

A non-dense parameter (a strided view), or a gradient or state laid out
differently from its parameter, makes the op refuse the call (NotImplementedError,
before writing anything); the launcher then steps those parameters with foreach
and the rest with the kernel, in the same step, with the same scalars.
"""

import math
from unittest import mock

import pytest
import torch

from conftest import HAS_CPU_KERNELS, OPTS, clone_params, make_grads, set_grads
from lossopt_cuda import _reference

pytestmark = pytest.mark.skipif(not HAS_CPU_KERNELS, reason="no compiled kernels")

HP = {
    "AdaLo": dict(kappa=1.0, weight_decay=0.1, betas=(0.5, 0.9)),
    "AdamL": dict(lr=1e-2, weight_decay=0.05, eps=1e-3),
    "AdaLoss": dict(lr=0.2, momentum=0.9, weight_decay=0.01),
}


def _params(gen):
    base = torch.randn(6, 10, generator=gen, dtype=torch.float64).float()
    strided = base[:, ::2].requires_grad_()  # not dense
    plain = torch.randn(5, 7, generator=gen, dtype=torch.float64).float().requires_grad_()
    crossed = torch.randn(4, 9, generator=gen, dtype=torch.float64).float().requires_grad_()
    odd = torch.randn(13, generator=gen, dtype=torch.float64).float().requires_grad_()
    return [plain, strided, crossed, odd]


def _grads(params, gen):
    grads = make_grads(params, gen)
    grads[2] = grads[2].t().contiguous().t()  # contiguous parameter, column-major gradient
    return grads


@pytest.mark.filterwarnings("ignore:.*skipped so far:RuntimeWarning")
@pytest.mark.parametrize("name", list(OPTS))
def test_unwalkable_parameters_take_foreach_in_the_same_step(name, gen):
    cls = OPTS[name]
    params = _params(gen)
    twins = clone_params(params)
    assert not params[1].is_contiguous()
    opt = cls(params, fused=True, **HP[name])
    ref = cls(twins, foreach=True, fused=False, **HP[name])
    foreach = getattr(_reference, f"{cls.__name__.lower()}_foreach")
    for loss in [2.0, 1.3, math.nan, 0.9]:
        grads = _grads(params, gen)
        set_grads(params, grads)
        for p, g in zip(params, grads):  # set_grads clones: keep the crossed layout
            p.grad = g
        set_grads(twins, grads)
        # The fused functions look their fallback up in _reference at call time.
        with mock.patch.object(_reference, foreach.__name__, wraps=foreach) as spy:
            opt.step(loss=torch.tensor(loss))
        ref.step(loss=torch.tensor(loss))
        fell_back = [id(t) for call in spy.call_args_list for t in call.args[0]]
        assert sorted(fell_back) == sorted([id(params[1]), id(params[2])]), "wrong parameters fell back"
    for i, (p, t) in enumerate(zip(params, twins)):
        torch.testing.assert_close(p, t, rtol=1e-6, atol=1e-7, msg=f"{name} param {i}")
        for key, value in ref.state[t].items():
            torch.testing.assert_close(opt.state[p][key], value, rtol=1e-6, atol=1e-7, msg=f"{name} {key}")
    assert opt.skipped_steps == ref.skipped_steps == 1


@pytest.mark.parametrize("name", list(OPTS))
def test_size_one_dimension_strides_do_not_matter(name, gen):
    """Autograd leaves the strides of size-1 dimensions as they fall: a
    gradient that differs from its parameter only there is walked by the kernel."""
    cls = OPTS[name]
    p = torch.randn(3, 1, 4, generator=gen, dtype=torch.float64).float().permute(2, 1, 0)
    p = p.detach().requires_grad_()  # shape (4, 1, 3), strides (1, 4, 4)
    twin = p.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    opt = cls([p], fused=True, **HP[name])
    ref = cls([twin], foreach=True, fused=False, **HP[name])
    foreach = getattr(_reference, f"{cls.__name__.lower()}_foreach")
    for loss in [1.4, 0.9]:
        g = torch.empty_strided((4, 1, 3), (1, 1, 4))
        g.copy_(torch.randn(4, 1, 3, generator=gen))
        assert g.stride() != p.stride()
        p.grad, twin.grad = g, g.clone()
        with mock.patch.object(_reference, foreach.__name__, wraps=foreach) as spy:
            opt.step(loss=torch.tensor(loss))
        assert spy.call_count == 0, "the kernel refused a walkable parameter"
        ref.step(loss=torch.tensor(loss))
    torch.testing.assert_close(p, twin, rtol=1e-6, atol=1e-7)
