"""PyTorch Lightning's automatic optimization drives AdaLo, AdamL and AdaLoss.

Lightning calls ``optimizer.step(closure)``; the closure runs training_step,
zero_grad (first micro-batch of a step), backward and gradient clipping, and
returns the loss, which our optimizers read. Each test trains a tiny
LightningModule for a few optimizer steps and compares it with the same
training written by hand in plain PyTorch (docs/training.md shows both).

Why bit-exact (``torch.equal``): both sides run the same float64 operations in
the same order on the same data: the same module, the same micro-batches, the
same ``loss / accumulate_grad_batches`` before ``backward``, the same
``torch.nn.utils.clip_grad_norm_`` over the same parameter list, and the same
sum of the detached micro-batch losses handed to ``step``. Nothing is reduced
in a different order, so there is nothing to round differently.

``accumulate_grad_batches=1`` needs nothing from this package. With
``accumulate_grad_batches=k > 1`` Lightning's closure returns only the last
micro-batch's loss divided by ``k``; ``LossDrivenMixin`` passes the mean of the
micro-batch losses instead (and a test pins down Lightning's own behaviour, to
show why the mixin is needed).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

L = pytest.importorskip("lightning")

import lossopt_cuda  # noqa: E402
from lossopt_cuda.integrations.lightning import LossDrivenMixin  # noqa: E402

STEPS = 4  # optimizer steps
BATCH = 6  # rows per micro-batch
IN_FEATURES, HIDDEN, CLASSES = 5, 7, 3
CLIP = 0.05  # small enough that every step is clipped
OPT_KWARGS = {
    "AdaLo": {"betas": (0.9, 0.9), "kappa": 3.0},
    "AdamL": {"lr": 1e-2},
    "AdaLoss": {"lr": 0.5},
}

pytestmark = pytest.mark.filterwarnings(
    # Lightning's advice about dataloader workers, logging and such.
    "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning",
    "ignore:.*does not have many workers.*",
    r"ignore:.*isinstance\(treespec, LeafSpec\).*",  # torch deprecation inside Lightning
)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN_FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, CLASSES)).double()


def make_batches(accumulate: int):
    g = torch.Generator().manual_seed(7)
    n = STEPS * accumulate
    x = torch.randn(n, BATCH, IN_FEATURES, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (n, BATCH), generator=g)
    return [(x[i], y[i]) for i in range(n)]


def make_opt(name, params):
    return getattr(lossopt_cuda, name)(params, **OPT_KWARGS[name])


class Plain(L.LightningModule):
    """A LightningModule as anyone would write it: nothing specific to loss-driven optimizers."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.net = make_net()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return make_opt(self.name, self.parameters())


class WithMixin(LossDrivenMixin, Plain):
    pass


def fit(module: L.LightningModule, accumulate: int, clip) -> list:
    batches = make_batches(accumulate)
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, shuffle=False  # each item is one micro-batch
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="64-true",
        max_steps=STEPS,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, loader)
    assert trainer.global_step == STEPS
    return [p.detach().clone() for p in module.net.parameters()]


def by_hand(name: str, accumulate: int, clip, loss_to_pass: str = "mean") -> list:
    """The same training in plain PyTorch (the snippet of docs/training.md).

    ``loss_to_pass="mean"``: the mean of the micro-batch losses (what the mixin
    passes); ``"last"``: the last micro-batch's loss / accumulate (what
    Lightning's closure returns on its own).
    """
    model = make_net()
    opt = make_opt(name, model.parameters())
    batches = iter(make_batches(accumulate))
    for _ in range(STEPS):
        opt.zero_grad()
        total = None
        for _ in range(accumulate):
            x, y = next(batches)
            loss = F.cross_entropy(model(x), y) / accumulate
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step(loss=total if loss_to_pass == "mean" else loss.detach())
    return [p.detach().clone() for p in model.parameters()]


def assert_same(actual, expected, what):
    for i, (a, e) in enumerate(zip(actual, expected)):
        if not torch.equal(a, e):
            raise AssertionError(
                f"{what}: parameter {i} differs, max |diff| = {(a - e).abs().max().item():.3e}"
            )


def max_diff(a_params, b_params) -> float:
    return max((a - b).abs().max().item() for a, b in zip(a_params, b_params))


@pytest.mark.parametrize("name", list(OPT_KWARGS))
def test_plain_module_with_clipping_matches_hand_written(name):
    """accumulate_grad_batches=1: a plain LightningModule works as is."""
    got = fit(Plain(name), accumulate=1, clip=CLIP)
    expected = by_hand(name, accumulate=1, clip=CLIP)
    assert_same(got, expected, f"{name} Lightning vs plain PyTorch")
    assert max_diff(expected, by_hand(name, 1, clip=None)) > 1e-6, "clipping had no effect"
    assert max_diff(got, list(make_net().parameters())) > 1e-4, "training did not move"


@pytest.mark.parametrize("name", list(OPT_KWARGS))
def test_mixin_with_accumulation_and_clipping_matches_hand_written(name):
    got = fit(WithMixin(name), accumulate=3, clip=CLIP)
    expected = by_hand(name, accumulate=3, clip=CLIP)
    assert_same(got, expected, f"{name} Lightning (LossDrivenMixin, accumulate 3) vs plain PyTorch")


def test_without_mixin_lightning_passes_the_last_micro_batch_loss():
    """Why the mixin exists: without it, accumulate_grad_batches=3 hands the
    optimizer loss_3 / 3 (the last micro-batch only), not (loss_1+loss_2+loss_3) / 3."""
    got = fit(Plain("AdamL"), accumulate=3, clip=None)
    assert_same(got, by_hand("AdamL", 3, None, loss_to_pass="last"), "AdamL without the mixin")
    assert max_diff(got, by_hand("AdamL", 3, None, loss_to_pass="mean")) > 1e-6


def test_mixin_with_accumulation_one_changes_nothing():
    assert_same(fit(WithMixin("AdaLoss"), 1, None), fit(Plain("AdaLoss"), 1, None), "mixin, accumulate 1")


def test_mixin_says_when_on_before_backward_skips_super():
    class Broken(WithMixin):
        def on_before_backward(self, loss):  # forgets super().on_before_backward(loss)
            pass

    with pytest.raises(RuntimeError, match="super\\(\\).on_before_backward"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit(Broken("AdamL"), accumulate=2, clip=None)
