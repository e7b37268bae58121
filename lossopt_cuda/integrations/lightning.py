"""PyTorch Lightning with the loss-driven optimizers.

Lightning's automatic optimization calls ``optimizer.step(closure)``; the
closure runs ``training_step`` and ``backward``, then gradient clipping, and
returns the loss, which AdaLo, AdamL and AdaLoss read. With
``accumulate_grad_batches=1`` (the default) that is all it takes: return
the loss from ``training_step`` and configure the optimizer as usual.

With ``accumulate_grad_batches=k > 1`` the closure returns only the *last*
micro-batch's loss divided by ``k``, not the loss of the accumulated batch.
:class:`LossDrivenMixin` passes the right one::

    import lightning as L
    from lossopt_cuda import AdamL
    from lossopt_cuda.integrations.lightning import LossDrivenMixin

    class Model(LossDrivenMixin, L.LightningModule):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return AdamL(self.parameters(), lr=1e-3)

    L.Trainer(accumulate_grad_batches=4, gradient_clip_val=1.0).fit(Model(), loader)

This module does not import Lightning: the mixin only overrides two hooks that
``lightning.LightningModule`` and ``pytorch_lightning.LightningModule`` share.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor

__all__ = ["LossDrivenMixin"]


class LossDrivenMixin:
    """Give the optimizer the loss of the whole accumulated batch.

    Put it before ``LightningModule`` in the bases. It overrides two public
    hooks (call ``super()`` if you override them too):

    * ``on_before_backward(loss)``: records each loss Lightning backpropagates,
      i.e. ``training_step``'s loss divided by ``accumulate_grad_batches``;
    * ``optimizer_step(...)``: steps with a closure that returns the sum of the
      recorded losses of this optimizer step, i.e. the mean of the micro-batch
      losses, whose gradient is the accumulated gradient.

    The loss stays a detached tensor on its device. With
    ``accumulate_grad_batches=1`` the result is the same as without the mixin.
    Manual optimization is not affected (pass ``loss=`` yourself there).

    Not supported: ``precision="16-mixed"`` with a gradient scaler (Lightning
    then calls ``optimizer.step()`` without the closure, so no loss reaches the
    optimizer); use ``"bf16-mixed"``, ``"32-true"`` or ``"64-true"``.
    """

    _lossopt_loss: Optional[Tensor] = None

    def on_train_start(self) -> None:
        self._lossopt_loss = None
        super().on_train_start()  # type: ignore[misc]

    def on_before_backward(self, loss: Tensor) -> None:
        if getattr(self, "automatic_optimization", True):
            value = loss.detach()
            self._lossopt_loss = value if self._lossopt_loss is None else self._lossopt_loss + value
        super().on_before_backward(loss)  # type: ignore[misc]

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Optional[Callable[[], Any]] = None,
    ) -> None:
        if optimizer_closure is None:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # type: ignore[misc]
        scaler = getattr(getattr(getattr(self, "trainer", None), "precision_plugin", None), "scaler", None)
        if scaler is not None:
            raise RuntimeError(
                "LossDrivenMixin: precision='16-mixed' uses a gradient scaler, and Lightning "
                "then calls optimizer.step() without the closure, so the loss-driven optimizer "
                "gets no loss. Use precision='bf16-mixed' (or '32-true' / '64-true')."
            )

        def closure() -> Any:
            last = optimizer_closure()  # training_step, backward, clipping
            total = self._lossopt_loss
            self._lossopt_loss = None
            if total is None:
                if last is not None and getattr(self.trainer, "accumulate_grad_batches", 1) > 1:
                    raise RuntimeError(
                        "LossDrivenMixin recorded no loss for this optimizer step: if you "
                        "override on_before_backward, call super().on_before_backward(loss)."
                    )
                return last
            return total

        return super().optimizer_step(epoch, batch_idx, optimizer, closure)  # type: ignore[misc]
