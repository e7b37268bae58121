"""Hugging Face Accelerate drives AdaLo, AdamL and AdaLoss (docs/training.md).

Accelerate wraps the optimizer in ``AcceleratedOptimizer``, whose ``step()``
takes only a closure: ``opt.step(loss=loss)`` is a ``TypeError`` there, and
``opt.step()`` gives the optimizer no loss. The loss gets through as a closure
that returns it, ``opt.step(lambda: loss)``; under
``accelerator.accumulate(...)`` the wrapper steps only every k micro-batches,
so the loss of the whole accumulated batch is recorded with
``AccumulatedLossOptimizer.add_loss`` and ``opt.step()`` passes their sum.

Each loop is the one from Accelerate's documentation with a loss-driven
optimizer in place of AdamW, compared bit for bit (``torch.equal``) with the
same training written without Accelerate: both run the same operations in
the same order on the CPU (float64 model; bfloat16 autocast for mixed precision).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

accelerate = pytest.importorskip("accelerate")
from accelerate.state import AcceleratorState, GradientState  # noqa: E402

from lossopt_cuda import AdaLo, AdaLoss, AdamL, MissingLossError  # noqa: E402
from lossopt_cuda.integrations import AccumulatedLossOptimizer  # noqa: E402

RULES = {
    "AdaLo": (AdaLo, dict(kappa=1.0, betas=(0.9, 0.9))),
    "AdamL": (AdamL, dict(lr=1e-2)),
    "AdaLoss": (AdaLoss, dict(lr=0.1, momentum=0.9)),
}
N_BATCHES = 6


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Accelerate keeps one global state per process; each test sets its own."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def make_model(seed: int, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 13), nn.Tanh(), nn.Linear(13, 3)).to(dtype)


def batches(seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 7, generator=gen, dtype=dtype), torch.randint(0, 3, (5,), generator=gen))
            for _ in range(N_BATCHES)]


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).double(), y)


def by_hand(name: str, data, accum: int = 1, autocast: bool = False) -> nn.Module:
    """The same training without Accelerate."""
    cls, hp = RULES[name]
    model = make_model(0, torch.float32 if autocast else torch.float64)
    opt = cls(model.parameters(), **hp)
    losses = []
    for i, (x, y) in enumerate(data):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_of(model, x, y) / accum
        loss.backward()
        losses.append(loss.detach())
        if (i + 1) % accum == 0:
            total = losses[0]
            for part in losses[1:]:
                total = total + part
            opt.step(loss=total)
            opt.zero_grad()
            losses = []
    return model


def assert_same(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p.detach(), q.detach()), name


@pytest.mark.parametrize("name", RULES)
def test_documented_loop_with_a_closure_that_returns_the_loss(name):
    cls, hp = RULES[name]
    data = batches(1)
    accelerator = accelerate.Accelerator(cpu=True)
    model = make_model(0)
    opt = cls(model.parameters(), **hp)
    model, opt = accelerator.prepare(model, opt)
    for x, y in data:
        opt.zero_grad()
        loss = loss_of(model, x, y)
        accelerator.backward(loss)
        opt.step(lambda: loss)  # AcceleratedOptimizer.step takes only a closure
    assert_same(accelerator.unwrap_model(model), by_hand(name, data))


@pytest.mark.parametrize("name", RULES)
def test_the_forms_that_do_not_reach_the_optimizer_say_what_does(name):
    cls, hp = RULES[name]
    accelerator = accelerate.Accelerator(cpu=True)
    model = make_model(0)
    model, opt = accelerator.prepare(model, cls(model.parameters(), **hp))
    x, y = batches(2)[0]
    loss = loss_of(model, x, y)
    accelerator.backward(loss)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match="loss"):  # Accelerate's step() has no loss=
        opt.step(loss=loss)
    with pytest.raises(MissingLossError, match=r"opt\.step\(lambda: loss\)") as info:
        opt.step()
    assert "AcceleratedOptimizer" in str(info.value) and "AccumulatedLossOptimizer" in str(info.value)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert not opt.optimizer.state  # nothing was created either


@pytest.mark.parametrize("name", RULES)
def test_gradient_accumulation_passes_the_loss_of_the_accumulated_batch(name):
    cls, hp = RULES[name]
    accum = 3
    data = batches(3)
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accum)
    model = make_model(0)
    recorder = AccumulatedLossOptimizer(cls(model.parameters(), **hp))
    model, opt = accelerator.prepare(model, recorder)
    for x, y in data:
        with accelerator.accumulate(model):
            loss = loss_of(model, x, y)
            accelerator.backward(loss)  # backpropagates loss / accum
            recorder.add_loss(loss.detach() / accum)
            opt.step()  # steps (with the recorded sum) only at the last micro-batch
            opt.zero_grad()
    assert recorder.pending_count == 0
    assert_same(accelerator.unwrap_model(model), by_hand(name, data, accum=accum))


@pytest.mark.parametrize("name", RULES)
def test_bf16_mixed_precision(name):
    cls, hp = RULES[name]
    data = batches(4, torch.float32)
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision="bf16")
    model = make_model(0, torch.float32)
    model, opt = accelerator.prepare(model, cls(model.parameters(), **hp))
    for x, y in data:
        opt.zero_grad()
        loss = loss_of(model, x, y)  # the prepared model runs under bf16 autocast
        accelerator.backward(loss)
        opt.step(lambda: loss)
    assert_same(accelerator.unwrap_model(model), by_hand(name, data, autocast=True))
