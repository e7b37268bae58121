"""Helpers for training frameworks that do not pass the loss to ``optimizer.step()``.

Nothing here is imported by ``import lossopt_cuda``, and this package itself
imports no framework: each name is loaded on first use, so the framework it
needs is imported only then.

* :class:`AccumulatedLossOptimizer` (torch only): wraps a loss-driven optimizer
  for a loop that calls ``optimizer.step()`` with no arguments; the loop
  records each backpropagated loss with ``add_loss()`` and ``step()`` passes
  their sum.
* :class:`LossDrivenTrainer`, :class:`LossDrivenTrainerMixin` (Hugging Face
  ``transformers``): a ``Trainer`` that hands each optimizer step the loss of
  that step, gradient accumulation included.
* :class:`LossDrivenMixin` (PyTorch Lightning): a ``LightningModule`` mixin
  that passes the loss of the whole accumulated batch when
  ``accumulate_grad_batches > 1`` (without it Lightning passes the last
  micro-batch's loss divided by ``accumulate_grad_batches``).

See ``docs/training.md``.
"""

from __future__ import annotations

import importlib
from typing import Any, List

_WHERE = {
    "AccumulatedLossOptimizer": "._accumulate",
    "LossDrivenTrainer": ".huggingface",
    "LossDrivenTrainerMixin": ".huggingface",
    "LossDrivenMixin": ".lightning",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
