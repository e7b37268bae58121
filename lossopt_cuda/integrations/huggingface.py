"""Hugging Face ``transformers.Trainer`` with the loss-driven optimizers.

``Trainer`` calls ``optimizer.step()`` with no arguments (through accelerate's
``AcceleratedOptimizer``), so AdaLo, AdamL and AdaLoss would raise
``MissingLossError``. :class:`LossDrivenTrainer` fixes that and nothing else::

    from lossopt_cuda import AdamL
    from lossopt_cuda.integrations.huggingface import LossDrivenTrainer

    trainer = LossDrivenTrainer(
        model=model, args=args, train_dataset=train_ds,
        optimizers=(AdamL(model.parameters(), lr=1e-3), None),
        # or: optimizer_cls_and_kwargs=(AdamL, {"lr": 1e-3}),
    )
    trainer.train()

Each optimizer step gets the loss of that step: the sum of the losses that
``Trainer.training_step`` backpropagated since the previous step. With
``gradient_accumulation_steps=k`` each of those is a micro-batch loss divided
by ``k`` (or, for models that take ``num_items_in_batch``, the micro-batch's
token-loss sum divided by the token count of the whole accumulated batch), so
the sum is the mean loss of the accumulated batch: the loss whose gradient the
optimizer steps with. It stays a detached tensor on the device: no ``.item()``,
no host sync. Under DDP/FSDP each rank passes its own sum and the optimizer
averages it over the ranks (``average_loss=True``, its default).

An optimizer that is not one of this package's is left alone: the class then
behaves as ``Trainer``.
"""

from __future__ import annotations

from typing import Any, Optional

from transformers import Trainer

from .._base import LossDrivenOptimizer
from ._accumulate import AccumulatedLossOptimizer

__all__ = ["LossDrivenTrainer", "LossDrivenTrainerMixin"]


class LossDrivenTrainerMixin:
    """Mix into any ``transformers.Trainer`` subclass (TRL's ``SFTTrainer`` ...)::

        class MyTrainer(LossDrivenTrainerMixin, SFTTrainer): ...

    Two overrides, both of methods ``Trainer`` documents for subclassing:

    * ``create_optimizer()``: after ``Trainer`` made (or received) the
      optimizer, a loss-driven one is wrapped in
      :class:`~lossopt_cuda.integrations.AccumulatedLossOptimizer`, whose
      ``step()`` takes no loss;
    * ``training_step()``: the loss it returns (detached, already divided for
      gradient accumulation) is recorded for the coming optimizer step.

    Recorded losses are dropped when a new optimizer step begins, so a step
    that a mixed-precision scaler skipped does not leak its loss into the next.
    Once ``train()`` has started, ``trainer.optimizer`` is accelerate's wrapper
    around the ``AccumulatedLossOptimizer`` around your optimizer
    (``trainer.optimizer.optimizer.optimizer``); checkpoints hold your
    optimizer's ``state_dict()``, and resuming from one works as with ``Trainer``.
    """

    _lossopt_window: Optional[int] = None

    def create_optimizer(self, *args: Any, **kwargs: Any):
        super().create_optimizer(*args, **kwargs)  # type: ignore[misc]
        if isinstance(self.optimizer, LossDrivenOptimizer):
            self.optimizer = AccumulatedLossOptimizer(self.optimizer)
        return self.optimizer

    def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any):
        loss = super().training_step(model, inputs, *args, **kwargs)  # type: ignore[misc]
        feed = self._lossopt_accumulator()
        if feed is not None:
            step = self.state.global_step
            if self._lossopt_window != step:  # the first micro-batch of an optimizer step
                feed.clear()
                self._lossopt_window = step
            feed.add_loss(loss)
        return loss

    def _lossopt_accumulator(self) -> Optional[AccumulatedLossOptimizer]:
        """The wrapper, found through accelerate's (and any other) wrapping."""
        opt = self.optimizer
        for _ in range(8):
            if isinstance(opt, AccumulatedLossOptimizer):
                return opt
            opt = opt.__dict__.get("optimizer") if hasattr(opt, "__dict__") else None
            if opt is None:
                return None
        return None


class LossDrivenTrainer(LossDrivenTrainerMixin, Trainer):
    """``transformers.Trainer`` that passes each step's loss to AdaLo, AdamL or AdaLoss.

    Use it exactly as ``Trainer``; see :class:`LossDrivenTrainerMixin` for
    what differs and the module docstring for which loss is passed.
    """
