"""The workloads: what is trained, on what, and how its quality is measured.

Each task makes a session per (candidate, seed): the model(s) built under
``torch.manual_seed(seed)``, mini-batches from a private generator (so every
optimizer sees the same batches for a seed), one ``train_step`` per iteration
and an ``evaluate`` of the task's quality measure.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import data, models
from .optimizers import Candidate, step


@dataclass(frozen=True)
class Preset:
    """How much work: iterations per run, evaluations, seeds, candidates per optimizer."""

    name: str
    steps: Dict[str, int]
    evals: int
    seeds: Tuple[int, ...]
    candidates: int
    text_chars: int
    pretrain_steps: int = 0   # the fine-tuning study: pretraining, then fine-tuning steps
    finetune_steps: int = 0
    timing_rounds: int = 3    # rounds of the side-by-side timing (study.py)


class StoredIn(nn.Module):
    """``inner`` with its parameters stored in ``dtype`` (what the optimizer
    steps and rounds into), its forward computed in float32 on float32 copies
    of them; the gradients reach the stored parameters in ``dtype``. What is
    measured is the rounding of the updates into the stored weights, without
    the CPU's bfloat16 convolutions (ten times slower than float32 here)."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        params = {name: p.float() for name, p in self.inner.named_parameters()}
        return torch.func.functional_call(self.inner, params, (x,))


class _Supervised:
    """One model, one optimizer, a loss per mini-batch."""

    def __init__(self, model: nn.Module, candidate: Candidate, batch: Callable[[torch.Generator], Tuple[Tensor, Tensor]],
                 loss: Callable[[nn.Module, Tensor, Tensor], Tensor], evaluate: Callable[[nn.Module], float],
                 seed: int, dtype: torch.dtype = torch.float32) -> None:
        if dtype != torch.float32:
            model = StoredIn(model, dtype)
        self.model, self.batch, self.loss, self._evaluate = model, batch, loss, evaluate
        self.generator = torch.Generator().manual_seed(seed)
        x, y = batch(torch.Generator().manual_seed(10_000 + seed))
        with torch.no_grad():  # the seed's kappa rule reads the initial loss
            initial = float(loss(model, x, y))
        self.opt = candidate.build(model.parameters(), initial)
        self.optimizers = [self.opt]

    def train_step(self) -> Tuple[float, float]:
        x, y = self.batch(self.generator)
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.model, x, y)
        loss.backward()
        start = time.perf_counter()
        step(self.opt, loss)
        seconds = time.perf_counter() - start
        return float(loss.detach()), seconds

    def evaluate(self) -> float:
        with torch.no_grad():
            return self._evaluate(self.model)


def _cross_entropy(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    logits = model(x)
    return F.cross_entropy(logits.flatten(0, -2) if logits.dim() > 2 else logits, y.flatten())


class DigitsCNNTask:
    name = "cnn-digits"
    title = "CV: a small CNN on scikit-learn's digits"
    metric, higher_better = "test accuracy", True
    batch_size = 64

    def __init__(self, preset: Preset) -> None:
        self.data, self.about = data.digits()
        self.steps_per_epoch = math.ceil(len(self.data.y_train) / self.batch_size)

    def _batch(self, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        idx = torch.randint(0, len(self.data.y_train), (self.batch_size,), generator=generator)
        return self.data.x_train[idx], self.data.y_train[idx]

    def _accuracy(self, model: nn.Module) -> float:
        return float((model(self.data.x_test).argmax(1) == self.data.y_test).float().mean())

    def session(self, candidate: Candidate, seed: int, dtype: torch.dtype = torch.float32) -> _Supervised:
        """``dtype``: the dtype the parameters are stored in (see StoredIn)."""
        torch.manual_seed(seed)
        return _Supervised(models.DigitsCNN(), candidate, self._batch, _cross_entropy, self._accuracy, seed,
                           dtype)


class _TextTask:
    context, batch_size, eval_windows = 64, 16, 64

    def __init__(self, preset: Preset) -> None:
        self.text = data.docstrings(preset.text_chars)
        self.about = self.text.about
        self.steps_per_epoch = math.ceil(len(self.text.train) / (self.context * self.batch_size))
        g = torch.Generator().manual_seed(1234)  # one fixed validation set
        self.valid = data.text_batch(self.text.valid, self.context, self.eval_windows, g)

    def _batch(self, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        return data.text_batch(self.text.train, self.context, self.batch_size, generator)

    def _valid_bpc(self, model: nn.Module) -> float:
        """Validation loss in bits per character."""
        x, y = self.valid
        return float(_cross_entropy(model, x, y)) / math.log(2)

    def session(self, candidate: Candidate, seed: int, dtype: torch.dtype = torch.float32) -> _Supervised:
        """``dtype``: the dtype the parameters are stored in (see StoredIn)."""
        torch.manual_seed(seed)
        return _Supervised(self._model(), candidate, self._batch, _cross_entropy, self._valid_bpc, seed, dtype)


class CharLSTMTask(_TextTask):
    name = "lstm-docstrings"
    title = "NLP, recurrent: a character-level LSTM language model"
    metric, higher_better = "validation bits/char", False

    def _model(self) -> nn.Module:
        return models.CharLSTM(len(self.text.vocab))


class TinyGPTTask(_TextTask):
    name = "gpt-docstrings"
    title = "NLP, attention: a GPT-style character language model (3.2M parameters)"
    metric, higher_better = "validation bits/char", False

    def _model(self) -> nn.Module:
        return models.TinyGPT(len(self.text.vocab), self.context)


# ---------------------------------------------------------------- WGAN-GP


@lru_cache(maxsize=1)
def _judge() -> nn.Module:
    """A digits classifier trained once (Adam, fixed seed), whose features and
    predictions score generated digits."""
    d, _ = data.digits()
    torch.manual_seed(0)
    model = models.DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        idx = torch.randint(0, len(d.y_train), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(d.x_train[idx]), d.y_train[idx]).backward()
        opt.step()
    return model.eval()


def _features(model: nn.Module, x: Tensor) -> Tensor:
    h = F.max_pool2d(F.relu(model.conv2(F.relu(model.conv1(x)))), 2)
    return F.relu(model.fc1(h.flatten(1)))


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (as FID)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # trace of sqrt(cov_a cov_b) from the eigenvalues of sqrt(cov_a) cov_b sqrt(cov_a)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * middle)


class _GanSession:
    n_critic, gp_weight, batch_size = 5, 10.0, 64

    def __init__(self, task: "WganDigitsTask", candidate: Candidate, seed: int) -> None:
        torch.manual_seed(seed)
        self.task = task
        self.gen, self.critic = models.Generator(), models.Critic()
        self.generator = torch.Generator().manual_seed(seed)
        # The loss-driven optimizers read softplus(loss): WGAN losses are
        # unbounded below, softplus maps them into (0, inf), monotonically.
        self.opt_c = candidate.build(self.critic.parameters(), math.log(2.0))
        self.opt_g = candidate.build(self.gen.parameters(), math.log(2.0))
        self.optimizers = [self.opt_c, self.opt_g]

    def _noise(self, n: int) -> Tensor:
        return torch.randn(n, self.gen.noise, generator=self.generator)

    def train_step(self) -> Tuple[float, float]:
        opt_seconds = 0.0
        real_all = self.task.data.x_train
        for _ in range(self.n_critic):
            idx = torch.randint(0, len(real_all), (self.batch_size,), generator=self.generator)
            real = real_all[idx]
            fake = self.gen(self._noise(self.batch_size)).detach()
            eps = torch.rand(self.batch_size, 1, 1, 1, generator=self.generator)
            mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
            grad = torch.autograd.grad(self.critic(mixed).sum(), mixed, create_graph=True)[0]
            penalty = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
            loss_c = self.critic(fake).mean() - self.critic(real).mean() + self.gp_weight * penalty
            self.opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            start = time.perf_counter()
            step(self.opt_c, F.softplus(loss_c.detach()))
            opt_seconds += time.perf_counter() - start
        loss_g = -self.critic(self.gen(self._noise(self.batch_size))).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        start = time.perf_counter()
        step(self.opt_g, F.softplus(loss_g.detach()))
        opt_seconds += time.perf_counter() - start
        return float(loss_c.detach()), opt_seconds

    def evaluate(self) -> float:
        with torch.no_grad():
            fake = self.gen(torch.randn(1000, self.gen.noise, generator=torch.Generator().manual_seed(99)))
            return frechet_distance(_features(self.task.judge, fake), self.task.real_features)


class WganDigitsTask:
    name = "wgan-digits"
    title = "GAN: WGAN-GP on the digits (MLP generator and critic)"
    metric, higher_better = "Fréchet distance (digits classifier features)", False

    def __init__(self, preset: Preset) -> None:
        self.data, about = data.digits()
        self.about = {**about, "quality": "Fréchet distance of 1,000 generated digits "
                      "to the test digits, in the features of a digits CNN trained once (Adam, seed 0)"}
        self.steps_per_epoch = math.ceil(len(self.data.y_train) / (_GanSession.batch_size * _GanSession.n_critic))
        self.judge = _judge()
        with torch.no_grad():
            self.real_features = _features(self.judge, self.data.x_test)

    def session(self, candidate: Candidate, seed: int) -> _GanSession:
        return _GanSession(self, candidate, seed)


TASKS = {t.name: t for t in (DigitsCNNTask, CharLSTMTask, TinyGPTTask, WganDigitsTask)}
