"""torch.amp.GradScaler: ``scaler.step(opt, loss=loss)`` on every path.

The optimizers declare ``_step_supports_amp_scaling``: the scaler hands them the
scale and the overflow flag as device tensors, the update unscales the gradients
itself and an overflow skips the step on the device. With power-of-two scales,
scaling and unscaling are exact, so training with a scaler must equal training
without one bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from conftest import OPTS, PATHS, make_opt, snapshot, assert_unchanged

HP = {
    "AdaLo": dict(kappa=2.0, weight_decay=1e-2),
    "AdamL": dict(lr=1e-2, weight_decay=1e-3),
    "AdaLoss": dict(lr=0.3, b0=0.5, momentum=0.5),
}
STEPS = 6


def _data(gen, dtype):
    x = torch.randn(STEPS, 9, 5, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randn(STEPS, 9, 3, generator=gen, dtype=torch.float64).to(dtype)
    return x, y


def _model(seed, dtype):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).to(dtype)


def _train(name, path, dtype, seed, x, y, *, scaler=None, poison=None, clip=None, skip=None):
    """STEPS steps; ``poison``: step whose gradient gets an inf; ``skip``: step left out."""
    model = _model(seed, dtype)
    opt = make_opt(OPTS[name], list(model.parameters()), path, **HP[name])
    snaps = {}
    for i in range(STEPS):
        if i == skip:
            continue
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[i]), y[i])
        (scaler.scale(loss) if scaler else loss).backward()
        if i == poison:
            next(model.parameters()).grad[0, 0] = float("inf")
            snaps[i] = snapshot(opt, list(model.parameters()))
        if clip is not None:
            if scaler:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler:
            scaler.step(opt, loss=loss)
            scaler.update()
        else:
            opt.step(loss=loss)
        if i == poison:
            assert_unchanged(opt, list(model.parameters()), snaps[i], msg="overflow step")
    return model, opt


def _assert_same(model_a, model_b):
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", sorted(OPTS))
def test_scaler_equals_no_scaler(name, path, dtype, gen):
    x, y = _data(gen, dtype)
    plain, _ = _train(name, path, dtype, 0, x, y)
    # growth_interval=2: the scale changes during the run.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    scaled, opt = _train(name, path, dtype, 0, x, y, scaler=scaler)
    _assert_same(plain, scaled)
    assert scaler.get_scale() > 2.0**12
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", sorted(OPTS))
def test_overflow_skips_the_step_and_changes_nothing(name, path, gen):
    x, y = _data(gen, torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=100)
    scaled, opt = _train(name, path, torch.float32, 1, x, y, scaler=scaler, poison=2)
    # As if the poisoned batch had never been seen (the scaler halved its scale).
    reference, _ = _train(name, path, torch.float32, 1, x, y, skip=2)
    _assert_same(reference, scaled)
    assert scaler.get_scale() == 2.0**7
    assert opt.skipped_steps == 0  # an overflow is the scaler's skip, not a bad loss


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", sorted(OPTS))
def test_unscale_then_clip(name, path, gen):
    # scaler.unscale_(opt) before clipping: step() then gets found_inf but no scale.
    x, y = _data(gen, torch.float64)
    plain, _ = _train(name, path, torch.float64, 2, x, y, clip=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaled, _ = _train(name, path, torch.float64, 2, x, y, scaler=scaler, clip=0.05)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        # clip_grad_norm_'s norm of unscaled vs scaled-then-unscaled gradients
        # agree to rounding only.
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
