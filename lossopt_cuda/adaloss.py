"""AdaLoss: AdaGrad-Norm with the gradient norm replaced by the loss (Wu et al., AAAI 2022)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from . import _fused, _reference
from ._fused import ADALOSS_SCALARS
from ._loss import scalar_dtype
from ._base import LossDrivenOptimizer, ParamsT, assign_scalar, check_lr, check_range


class AdaLoss(LossDrivenOptimizer):
    r"""AdaLoss: one scalar step size for the whole group, grown by the loss.

    Restates the paper's algorithm and its official training code (loss scaled
    by ``1/b`` before backward, then ``torch.optim.SGD``)::

        b_sq = b_sq + alpha * |L - c|
        b    = sqrt(b_sq)
        d    = g / b + weight_decay * p     # weight decay is not divided by b
        buf  = momentum * buf + d; d = buf  # only when momentum > 0
        p    = p - lr * d

    ``b_sq`` starts at ``b0**2`` and is kept in float64 (it grows by about the
    loss every step; float32 would lose the increments after ~1e6 steps), in the
    state of the group's first parameter. The momentum buffer starts at zero,
    which makes its first value ``d``, as torch.optim.SGD's.

    Args:
        params: parameters or parameter groups.
        lr: ``eta`` (schedulers work as with SGD).
        b0: initial ``b`` (> 0).
        alpha: weight of the loss in ``b_sq`` (>= 0).
        c: the loss is measured from ``c``.
        momentum: heavy-ball momentum in [0, 1).
        weight_decay: L2 term added to the direction, not divided by ``b``.
        foreach, fused, average_loss, process_group, master_weights,
        state_dtype, stochastic_rounding, rounding_seed: as in
            :class:`AdaLo`.

    Any finite loss is valid; NaN or infinite losses skip the step.
    """

    _forloop = staticmethod(_reference.adaloss_forloop)
    _foreach = staticmethod(_reference.adaloss_foreach)
    _fused = staticmethod(_fused.adaloss_fused)
    _group_state_keys = ("b_sq",)
    _scalar_names = ADALOSS_SCALARS

    def __init__(
        self,
        params: ParamsT,
        lr: Union[float, Tensor] = 0.1,
        b0: float = 1.0,
        alpha: float = 1.0,
        c: float = 0.0,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
        average_loss: bool = True,
        process_group: Optional[Any] = None,
        master_weights: bool = False,
        state_dtype: Optional[torch.dtype] = None,
        stochastic_rounding: bool = False,
        rounding_seed: Optional[int] = None,
    ) -> None:
        defaults = dict(lr=lr, b0=b0, alpha=alpha, c=c, momentum=momentum, weight_decay=weight_decay)
        super().__init__(
            params, defaults, foreach=foreach, fused=fused,
            average_loss=average_loss, process_group=process_group,
            master_weights=master_weights, state_dtype=state_dtype,
            stochastic_rounding=stochastic_rounding, rounding_seed=rounding_seed,
        )

    def _validate(self, group: Dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_range("b0", group["b0"], 0.0, low_open=True)
        check_range("alpha", group["alpha"], 0.0)
        check_range("c", group["c"], float("-inf"), low_open=True)
        check_range("momentum", group["momentum"], 0.0, 1.0)
        check_range("weight_decay", group["weight_decay"], 0.0)

    def _init_group_state(self, group: Dict[str, Any], device: torch.device) -> Dict[str, Tensor]:
        return {"b_sq": torch.full((), float(group["b0"]) ** 2, dtype=scalar_dtype(device), device=device)}

    def _param_state_keys(self, group: Dict[str, Any]) -> Tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] > 0 else ()

    def _advance(
        self, group: Dict[str, Any], state: Dict[str, Tensor], loss: Tensor, valid: Tensor
    ) -> Dict[str, Any]:
        b_sq = state["b_sq"]
        b_sq = assign_scalar(b_sq, torch.where(valid, b_sq + group["alpha"] * (loss - group["c"]).abs(), b_sq))
        return dict(lr=group["lr"], b=b_sq.sqrt())

    def _advance_op(self) -> Callable[..., Tensor]:
        return torch.ops.lossopt.adaloss_advance

    def _hyper(self, group: Dict[str, Any]) -> List[float]:
        # csrc/rules/adaloss.h, AdaLossGroup::Hyper
        return [group["alpha"], group["c"]]

    def _update_args(self, group: Dict[str, Any]) -> Dict[str, float]:
        return dict(momentum=group["momentum"], weight_decay=group["weight_decay"])
