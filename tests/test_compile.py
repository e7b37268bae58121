"""torch.compile: a compiled function that calls ``opt.step(loss=loss)`` runs,
matches eager execution (a bad loss included) and compiles once, not every step."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from conftest import OPTS, PATHS, clone_params, make_grads, make_opt, make_params, random_losses, set_grads

HP = {
    "AdaLo": dict(kappa=2.0, weight_decay=1e-2),
    "AdamL": dict(lr=1e-2, normalize_loss=True, weight_decay=1e-3),
    "AdaLoss": dict(lr=0.3, b0=0.5, momentum=0.5),
}
SHAPES = [(7,), (3, 5), ()]
WARMUP = 2  # the first step creates the state: one recompile is expected there


def _train(name, path, params, grads, losses, step_fn_wrapper, **extra):
    opt = make_opt(OPTS[name], params, path, **HP[name], **extra)
    step = step_fn_wrapper(lambda loss: opt.step(loss=loss))
    for i, (g, loss) in enumerate(zip(grads, losses)):
        set_grads(params, g)
        if i == WARMUP:
            # From here on a recompilation is an error (on the compiled run).
            ctx = torch._dynamo.config.patch(error_on_recompile=True)
            ctx.__enter__()
        step(torch.tensor(loss, dtype=torch.float32))  # as a model in fp32 returns it
    if len(losses) > WARMUP:
        ctx.__exit__(None, None, None)
    return opt


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["float64", "bfloat16-master"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", sorted(OPTS))
def test_compiled_step_matches_eager_and_compiles_once(name, path, dtype, gen):
    """float64 parameters, and bfloat16 ones with float32 master weights."""
    torch._dynamo.reset()
    extra = dict(master_weights=True) if dtype == torch.bfloat16 else {}
    params = make_params(dtype, int(torch.randint(1 << 30, (1,), generator=gen)), SHAPES)
    grads = [make_grads(params, gen) for _ in range(6)]
    losses = random_losses(gen, 6)
    losses[3] = float("nan")  # a skipped step inside the compiled region

    eager_params = clone_params(params)
    eager = _train(name, path, eager_params, grads, losses, lambda f: f, **extra)
    compiled_params = clone_params(params)
    compiled = _train(name, path, compiled_params, grads, losses, torch.compile, **extra)

    # float64 to its rounding. With bfloat16 the float32 state and masters may
    # differ by an ulp (inductor fuses the host paths' ops and may round in
    # another order), so may a parameter rounded from its master.
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-6, atol=1e-7)
    param_tol = tol if dtype == torch.float64 else dict(rtol=2.0**-8, atol=1e-7)
    for a, b in zip(eager_params, compiled_params):
        torch.testing.assert_close(b, a, **param_tol)
    for p_e, p_c in zip(eager_params, compiled_params):
        for key, value in eager.state[p_e].items():
            torch.testing.assert_close(compiled.state[p_c][key], value, **tol)
    # The bad loss was counted on the compiled run too.
    assert compiled.skipped_steps == eager.skipped_steps == 1


@pytest.mark.skipif("fused" not in PATHS, reason="no CPU kernels in this install")
@pytest.mark.parametrize("name", sorted(OPTS))
def test_compiled_rounded_step_on_the_kernels_writes_eager_bits(name, gen):
    """bfloat16 parameters and state, stochastically rounded by the CPU kernels
    (opaque to inductor): compiled and eager write the same bits, compiling once."""
    torch._dynamo.reset()
    extra = dict(state_dtype=torch.bfloat16, stochastic_rounding=True, rounding_seed=11)
    params = make_params(torch.bfloat16, int(torch.randint(1 << 30, (1,), generator=gen)), SHAPES)
    grads = [make_grads(params, gen) for _ in range(6)]
    losses = random_losses(gen, 6)
    losses[3] = float("nan")
    eager_params, compiled_params = clone_params(params), clone_params(params)
    eager = _train(name, "fused", eager_params, grads, losses, lambda f: f, **extra)
    compiled = _train(name, "fused", compiled_params, grads, losses, torch.compile, **extra)
    for p_e, p_c in zip(eager_params, compiled_params):
        assert torch.equal(p_e.view(torch.int16), p_c.view(torch.int16))
        for key, value in eager.state[p_e].items():
            assert torch.equal(compiled.state[p_c][key], value), key
    assert int(eager.state[eager_params[0]]["rounding_step"]) == 5
