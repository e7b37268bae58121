"""Comparison optimizers that torch does not ship, written from their papers.

* :class:`EAdam`: Yuan and Gao 2020, "EAdam Optimizer: How epsilon Impact Adam"
  (no package on PyPI). Its one change to Adam: epsilon is added to ``v``
  inside the recursion, so it accumulates (to about eps / (1 - beta2)).
* :class:`AdaBeliefPaper`: Zhuang et al. 2020, Algorithm 2 without rectification.
  Used only when the authors' package ``adabelief-pytorch`` is not installed;
  :func:`make_adabelief` says which one it built.
* :class:`AdaGradNorm`: Ward, Wu and Bottou 2019, as the AdaLoss paper compares
  against it: one scalar ``b`` per group, ``b^2 += ||g||^2``, step ``lr / b``.
* :func:`sqrt_decay_lr`: the step of the AdaLoss paper's "SGD_DecaySqrt"
  baseline (official code: ``eta / sqrt(b0^2 + t)``), for ``torch.optim.SGD``.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Tuple

import torch
from torch import Tensor
from torch.optim import Optimizer


class _EpsInsideAdam(Optimizer):
    r"""Adam with epsilon added inside the second-moment recursion, the loop
    EAdam and AdaBelief share; a subclass says what is squared into it::

        m = beta1 m + (1 - beta1) g
        v = beta2 v + (1 - beta2) d^2 + eps        # d: _deviation(g, m)
        p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    """

    _second_moment = "exp_avg_sq"  # the state key of v

    def __init__(
        self, params: Iterable[Tensor], lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @staticmethod
    def _deviation(grad: Tensor, exp_avg: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state[self._second_moment] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state[self._second_moment]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                d = self._deviation(p.grad, m)
                v.mul_(beta2).addcmul_(d, d, value=1 - beta2).add_(group["eps"])
                denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
                p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1**t))
        return loss


class EAdam(_EpsInsideAdam):
    """EAdam (Yuan and Gao 2020): ``d = g``, Adam's second moment with eps inside."""

    @staticmethod
    def _deviation(grad: Tensor, exp_avg: Tensor) -> Tensor:
        return grad


class AdaBeliefPaper(_EpsInsideAdam):
    """AdaBelief (Zhuang et al. 2020, no rectification, no weight decay):
    ``d = g - m``, the belief in the gradient."""

    _second_moment = "exp_avg_var"

    @staticmethod
    def _deviation(grad: Tensor, exp_avg: Tensor) -> Tensor:
        return grad - exp_avg


def adabelief_source() -> str:
    """Which AdaBelief :func:`make_adabelief` builds, in words for the report."""
    try:
        import adabelief_pytorch  # noqa: F401
        from importlib.metadata import version

        return (
            f"`adabelief-pytorch` {version('adabelief-pytorch')} (the authors' package), "
            "`rectify=False, weight_decouple=False`, i.e. the paper's Algorithm 2"
        )
    except ImportError:
        return (
            "written here from Zhuang et al. 2020 (`adabelief-pytorch` is not installed): "
            "s = beta2 s + (1-beta2)(g-m)^2 + eps, no rectification"
        )


def make_adabelief(params: Iterable[Tensor], lr: float, eps: float = 1e-8) -> Optimizer:
    """The authors' AdaBelief when installed, else :class:`AdaBeliefPaper`.

    ``rectify=False`` because the paper's algorithm (the one AdamL is compared to)
    has no RAdam-style rectification; ``weight_decouple=False`` with zero decay
    is a no-op that also stops the package from printing at construction.
    """
    try:
        from adabelief_pytorch import AdaBelief
    except ImportError:
        return AdaBeliefPaper(params, lr=lr, eps=eps)
    return AdaBelief(
        params, lr=lr, eps=eps, rectify=False, weight_decouple=False,
        weight_decay=0.0, print_change_log=False,
    )


class AdaGradNorm(Optimizer):
    r"""AdaGrad-Norm: one scalar step size per group::

        b^2 = b^2 + ||g||^2        # over every parameter of the group; b starts at b0
        p   = p - lr / b * g

    (The official AdaLoss code uses a per-row variant whose accumulator starts
    at b0**4; this is the algorithm of the paper, which the brief asks for.)
    """

    def __init__(self, params: Iterable[Tensor], lr: float, b0: float) -> None:
        super().__init__(params, dict(lr=lr, b0=b0))

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            grads = [p.grad for p in group["params"] if p.grad is not None]
            if not grads:
                continue
            # Kept in float64 as a Python float: it only grows, by ||g||^2.
            b_sq = group.setdefault("b_sq", float(group["b0"]) ** 2)
            b_sq += float(sum(g.double().pow(2).sum() for g in grads))
            group["b_sq"] = b_sq
            step = group["lr"] / math.sqrt(b_sq)
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-step)
        return loss


def sqrt_decay_lr(eta: float, b0: float, t: int) -> float:
    """The step size of SGD_DecaySqrt at the 1-based step ``t``: ``eta / sqrt(b0^2 + t)``,
    as the official AdaLoss code (``PlainLossSqrt`` with alpha=1) computes it."""
    return eta / math.sqrt(b0 * b0 + t)
