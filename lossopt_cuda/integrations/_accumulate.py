"""A loss-driven optimizer behind a ``step()`` that takes no loss.

Training loops written for ordinary optimizers call ``optimizer.step()`` with
no arguments. :class:`AccumulatedLossOptimizer` lets such a loop drive AdaLo,
AdamL or AdaLoss: the loop (or a hook of its framework) records every loss it
backpropagates with :meth:`~AccumulatedLossOptimizer.add_loss`, and ``step()``
passes their sum, which is the loss whose gradient is the accumulated gradient.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor

from .._loss import LossLike, MissingLossError

__all__ = ["AccumulatedLossOptimizer"]


class AccumulatedLossOptimizer(torch.optim.Optimizer):
    """Wrap a loss-driven optimizer for loops that call ``step()`` with no loss.

    For every micro-batch, record the loss you call ``backward()`` on, *after*
    any division by the number of accumulation steps::

        opt = AccumulatedLossOptimizer(AdamL(model.parameters()))
        for i, (x, y) in enumerate(loader):
            loss = criterion(model(x), y) / accum_steps
            loss.backward()
            opt.add_loss(loss)
            if (i + 1) % accum_steps == 0:
                opt.step()                   # AdamL.step(loss=<sum of the recorded losses>)
                opt.zero_grad()

    The sum of those losses is the loss whose gradient is the accumulated
    gradient: the mean of the micro-batch losses when each was divided by
    ``accum_steps``. It stays a detached tensor on its device (no ``.item()``,
    no wait for the GPU). ``step()`` consumes it; :meth:`clear` drops it (for
    example when a mixed-precision scaler skipped the step).

    The wrapper owns no parameters and no state: ``param_groups``, ``state``,
    ``defaults``, ``state_dict()``, ``load_state_dict()`` and ``zero_grad()``
    are the wrapped optimizer's, so learning-rate schedulers and checkpoints
    work on either object. Attributes it does not define (``skipped_steps``
    ...) are looked up on the wrapped optimizer.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        # No Optimizer.__init__: this object holds nothing of its own (as
        # accelerate's AcceleratedOptimizer, which may wrap it in turn).
        if isinstance(optimizer, AccumulatedLossOptimizer):
            raise TypeError("the optimizer is already an AccumulatedLossOptimizer")
        self.optimizer = optimizer
        self._loss: Optional[LossLike] = None
        self._count = 0

    # ------------------------------------------------------------ the loss

    def add_loss(self, loss: LossLike) -> None:
        """Record one backpropagated loss (a one-element tensor or a number)."""
        if isinstance(loss, Tensor):
            loss = loss.detach()
        self._loss = loss if self._loss is None else self._loss + loss
        self._count += 1

    @property
    def pending_loss(self) -> Optional[LossLike]:
        """The sum of the losses recorded since the last ``step()``, or None."""
        return self._loss

    @property
    def pending_count(self) -> int:
        """How many losses were recorded since the last ``step()``."""
        return self._count

    def clear(self) -> None:
        """Forget the recorded losses."""
        self._loss = None
        self._count = 0

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override]
        """Step the wrapped optimizer with the recorded loss (or with ``closure``)."""
        loss = self._loss
        self.clear()
        if closure is not None:
            return self.optimizer.step(closure)
        if loss is None:
            name = type(self.optimizer).__name__
            raise MissingLossError(
                f"AccumulatedLossOptimizer({name}).step(): no loss was recorded since the "
                "last step. Call add_loss(loss) with the loss of every micro-batch you "
                "backpropagate (after dividing it by the number of accumulation steps)."
            )
        return self.optimizer.step(loss=loss)

    # ------------------------------------------------------------ delegation

    @property
    def state(self) -> Dict[Any, Any]:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, value: Dict[Any, Any]) -> None:
        self.optimizer.state = value

    @property
    def param_groups(self):  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value) -> None:
        self.optimizer.param_groups = value

    @property
    def defaults(self) -> Dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: Dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> Dict[str, Any]:  # type: ignore[override]
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found normally; "optimizer" missing means
        # a half-built object (unpickling): do not recurse.
        if name == "optimizer":
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def __getstate__(self) -> Dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"AccumulatedLossOptimizer({self.optimizer!r})"

