"""Gradient accumulation and clipping in plain PyTorch: which loss to pass.

Accumulating over k micro-batches, each micro-batch loss divided by k before
``backward``, leaves in ``p.grad`` the gradient of ``sum_i loss_i / k``: the
mean of the micro-batch losses. That sum is the loss to pass to ``step``; it
is the big batch's loss, so accumulated training equals big-batch training
(float64, rtol = atol = 1e-10: the two sum the rows in different orders). With
micro-batches of unequal sizes ``n_i`` the weights are ``n_i / N`` instead of
``1 / k``; the rule is the same: pass the loss whose gradient you accumulated.

``torch.nn.utils.clip_grad_norm_`` between the last ``backward`` and ``step``
clips the accumulated gradient, which ``step`` then uses. Adding
``0 * grad_norm`` to the loss makes a non-finite gradient skip the step on the
device, with no host sync.

Also :class:`lossopt_cuda.integrations.AccumulatedLossOptimizer`, which lets a
loop that calls ``step()`` with no arguments do the same (docs/training.md).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lossopt_cuda
from lossopt_cuda.integrations import AccumulatedLossOptimizer

STEPS = 6
IN_FEATURES, HIDDEN, CLASSES = 5, 7, 3
SIZES = {"equal": [4, 4, 4, 4], "unequal": [3, 6, 2, 5]}  # rows per micro-batch
RTOL = ATOL = 1e-10
CLIP = 0.05
OPT_KWARGS = {
    "AdaLo": {"betas": (0.9, 0.9), "kappa": 3.0},
    "AdamL": {"lr": 1e-2},
    "AdaLoss": {"lr": 0.5, "momentum": 0.5},
}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN_FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, CLASSES)).double()


def make_data(rows: int):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(STEPS, rows, IN_FEATURES, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (STEPS, rows), generator=g)
    return x, y


def make_opt(name, params):
    return getattr(lossopt_cuda, name)(params, **OPT_KWARGS[name])


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def big_batch(name, sizes, clip=None):
    model = make_model()
    opt = make_opt(name, model.parameters())
    x, y = make_data(sum(sizes))
    losses = []
    for step in range(STEPS):
        opt.zero_grad()
        loss = F.cross_entropy(model(x[step]), y[step])
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step(loss=loss)
        losses.append(loss.detach())
    return params_of(model), losses


def accumulated(name, sizes, clip=None, which="whole"):
    """``which="whole"``: pass the accumulated batch's loss (right);
    ``"last"``: the last micro-batch's mean loss (wrong, for contrast)."""
    model = make_model()
    opt = make_opt(name, model.parameters())
    x, y = make_data(sum(sizes))
    total_rows = sum(sizes)
    losses = []
    for step in range(STEPS):
        opt.zero_grad()
        total, start = None, 0
        for n in sizes:
            xb, yb = x[step, start : start + n], y[step, start : start + n]
            start += n
            micro = F.cross_entropy(model(xb), yb)
            loss = micro * (n / total_rows)  # == micro / k for equal sizes
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step(loss=total if which == "whole" else micro.detach())
        losses.append(total)
    return params_of(model), losses


def assert_close(actual, expected, what):
    for i, (a, e) in enumerate(zip(actual, expected)):
        if not torch.allclose(a, e, rtol=RTOL, atol=ATOL):
            raise AssertionError(f"{what}: parameter {i}, max |diff| = {(a - e).abs().max().item():.3e}")


def max_diff(a_params, b_params):
    return max((a - b).abs().max().item() for a, b in zip(a_params, b_params))


@pytest.mark.parametrize("sizes", list(SIZES))
@pytest.mark.parametrize("name", list(OPT_KWARGS))
def test_accumulated_steps_equal_big_batch_steps(name, sizes):
    expected, big_losses = big_batch(name, SIZES[sizes])
    got, acc_losses = accumulated(name, SIZES[sizes])
    for a, b in zip(acc_losses, big_losses):  # the passed loss is the big batch's loss
        assert abs(a.item() - b.item()) < 1e-14
    assert_close(got, expected, f"{name}, {sizes} micro-batches vs one big batch")
    assert max_diff(got, params_of(make_model())) > 1e-3, "training did not move"
    # The loss matters: passing only the last micro-batch's loss gives another result.
    wrong, _ = accumulated(name, SIZES[sizes], which="last")
    assert max_diff(wrong, expected) > 1e-6


@pytest.mark.parametrize("name", list(OPT_KWARGS))
def test_clipping_the_accumulated_gradient_before_step(name):
    expected, _ = big_batch(name, SIZES["equal"], clip=CLIP)
    got, _ = accumulated(name, SIZES["equal"], clip=CLIP)
    assert_close(got, expected, f"{name}, accumulated + clipped vs big batch + clipped")
    unclipped, _ = big_batch(name, SIZES["equal"])
    assert max_diff(expected, unclipped) > 1e-6, "clipping had no effect"


@pytest.mark.parametrize("name", list(OPT_KWARGS))
def test_non_finite_gradient_norm_skips_the_step(name):
    """``loss + 0 * grad_norm`` is the loss when the norm is finite and NaN when
    it is not, so a bad gradient skips the step on the device, without a sync."""
    model = make_model()
    opt = make_opt(name, model.parameters())
    x, y = make_data(8)

    def step(corrupt: bool):
        opt.zero_grad()
        loss = F.cross_entropy(model(x[0]), y[0])
        loss.backward()
        if corrupt:
            next(model.parameters()).grad[0, 0] = float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(loss=loss.detach() + 0.0 * grad_norm)
        return loss.detach()

    step(corrupt=False)  # state exists from here on
    before = params_of(model)
    state_before = {k: v.clone() for p in model.parameters() for k, v in opt.state[p].items()}
    with pytest.warns(RuntimeWarning, match="skipped"):
        step(corrupt=True)
    assert opt.skipped_steps == 1
    for a, b in zip(params_of(model), before):
        assert torch.equal(a, b)
    after = {k: v for p in model.parameters() for k, v in opt.state[p].items()}
    assert all(torch.equal(after[k], v) for k, v in state_before.items())

    # With a finite norm, loss + 0 * norm is exactly the loss.
    twin = make_model()
    twin_opt = make_opt(name, twin.parameters())
    model2 = make_model()
    opt2 = make_opt(name, model2.parameters())
    for m, o, trick in ((twin, twin_opt, False), (model2, opt2, True)):
        o.zero_grad()
        loss = F.cross_entropy(m(x[1]), y[1])
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        o.step(loss=loss.detach() + 0.0 * norm if trick else loss.detach())
    for a, b in zip(params_of(twin), params_of(model2)):
        assert torch.equal(a, b)


def test_accumulated_loss_optimizer_in_a_loop_without_loss():
    """A loop that only calls step(): add_loss() per micro-batch gives the same
    result, bit for bit, as step(loss=<sum>); a scheduler built on the wrapper
    drives the wrapped optimizer."""
    sizes = SIZES["equal"]
    k = len(sizes)
    x, y = make_data(sum(sizes))

    def train(use_wrapper: bool):
        model = make_model()
        inner = make_opt("AdamL", model.parameters())
        opt = AccumulatedLossOptimizer(inner) if use_wrapper else inner
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        for step in range(STEPS):
            total = None
            for i in range(k):
                xb, yb = x[step].chunk(k)[i], y[step].chunk(k)[i]
                loss = F.cross_entropy(model(xb), yb) / k
                loss.backward()
                if use_wrapper:
                    opt.add_loss(loss)
                total = loss.detach() if total is None else total + loss.detach()
            if use_wrapper:
                assert opt.pending_count == k and torch.equal(opt.pending_loss, total)
                opt.step()
                assert opt.pending_loss is None
            else:
                opt.step(loss=total)
            opt.zero_grad()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()"
                sched.step()
        assert inner.param_groups[0]["lr"] == OPT_KWARGS["AdamL"]["lr"] * 0.5 ** (STEPS // 2)
        if use_wrapper:
            assert opt.state_dict()["state"].keys() == inner.state_dict()["state"].keys()
            assert opt.skipped_steps == 0  # looked up on the wrapped optimizer
        return params_of(model)

    for a, b in zip(train(True), train(False)):
        assert torch.equal(a, b)


def test_importing_the_package_imports_no_framework():
    """lossopt_cuda and lossopt_cuda.integrations import Lightning or transformers
    only when one of their helpers is used."""
    import subprocess
    import sys

    code = (
        "import sys, lossopt_cuda, lossopt_cuda.integrations as i;"
        "i.AccumulatedLossOptimizer;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'transformers', 'accelerate'));"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
