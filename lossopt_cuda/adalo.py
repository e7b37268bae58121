"""AdaLo: the learning rate is an EMA of a squashed loss; only a first moment is stored."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import _fused, _reference
from ._fused import ADALO_SCALARS
from ._base import LossDrivenOptimizer, ParamsT, assign_scalar, check_betas, check_lr, check_range

MODES = ("adversarial", "compliant")


class AdaLo(LossDrivenOptimizer):
    r"""AdaLo (Adaptive Learning Rate Optimizer with Loss for Classification).

    Follows the unofficial PyTorch implementation (the paper is paywalled). Per
    step, with ``L`` the current loss::

        sigma    = 1 / (2 + L)                     # (tanh(-log1p(L)/2) + 1) / 2
        loss_ema = loss_ema + (1 - beta2) * (sigma - loss_ema)
        lr_t     = max(loss_ema / kappa, eps)        # mode="adversarial"
        lr_t     = max((1 - loss_ema) / kappa, eps)  # mode="compliant"
        m = m + (1 - beta1) * (g - m)                # no bias correction
        p = p * (1 - lr_t * weight_decay) - lr_t * m

    ``loss_ema`` starts at 0, so adversarial mode warms up over about
    ``1 / (1 - beta2)`` steps. One ``loss_ema`` (float32) per parameter group,
    kept in the state of the group's first parameter.

    Args:
        params: parameters or parameter groups.
        lr: accepted for API compatibility and **not used**: the step size is
            ``lr_t`` above, so learning-rate schedulers have no effect.
        betas: ``beta1`` for the first moment, ``beta2`` for the loss EMA.
        weight_decay: decoupled decay, scaled by ``lr_t``.
        kappa: divides the loss EMA into a learning rate (> 0).
        eps: floor of ``lr_t`` (not added to any denominator).
        mode: ``"adversarial"`` (loss up, lr down) or ``"compliant"`` (loss up, lr up).
        foreach: ``False``: per-tensor for-loop; ``True``: ``torch._foreach_*``;
            ``None``: decided by ``fused``. As in torch.optim, an explicit
            ``foreach`` picks that path and the kernels are not used.
        fused: ``True`` requires the compiled kernels; ``None`` uses them when
            available and ``foreach`` is ``None`` too, else ``foreach``;
            ``False`` never uses them.
        average_loss: average the loss over the process group when
            ``torch.distributed`` runs with more than one rank.
        process_group: the group to average over (default: the world).
        master_weights: keep a float32 master copy of every float16/bfloat16
            parameter (state ``master_param``); the rule steps the master and
            the parameter becomes its rounded copy, in the same kernel pass on
            the fused path. Small updates then accumulate instead of rounding
            away. Other dtypes are stepped as they are.
        state_dtype: ``None`` (the compute dtype: float32, float64 for float64
            parameters), ``torch.float32`` or ``torch.bfloat16``: the dtype of
            every per-element state (``exp_avg``, ``exp_avg_sq``,
            ``momentum_buffer``). bfloat16 state is read into float32 math and
            written back with stochastic rounding: half the stored state, and
            no small update lost on average. Not for float64 parameters.
        stochastic_rounding: write bfloat16 parameters with stochastic
            rounding instead of round-to-nearest, so that updates smaller than
            their precision accumulate without master weights (it cannot be
            combined with ``master_weights=True``). Other dtypes: no effect.
        rounding_seed: the seed of the rounding's random bits, which come from
            a hash of (seed, step, tensor, element), so every path writes the
            same bits and a resumed run continues bit for bit. Default: drawn
            from torch's default generator (only when rounding is used). Saved
            in ``state_dict()`` (each group's ``rounding_seed``); the step
            counter is the state ``rounding_step`` of the group's first parameter.

    A valid loss is finite and greater than -1; any other loss skips the step.
    """

    _forloop = staticmethod(_reference.adalo_forloop)
    _foreach = staticmethod(_reference.adalo_foreach)
    _fused = staticmethod(_fused.adalo_fused)
    _group_state_keys = ("loss_ema",)
    _scalar_names = ADALO_SCALARS

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-8,
        betas: Tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        kappa: float = 3.0,
        eps: float = 1e-8,
        mode: str = "adversarial",
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
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, kappa=kappa, eps=eps, mode=mode)
        super().__init__(
            params, defaults, foreach=foreach, fused=fused,
            average_loss=average_loss, process_group=process_group,
            master_weights=master_weights, state_dtype=state_dtype,
            stochastic_rounding=stochastic_rounding, rounding_seed=rounding_seed,
        )

    def _validate(self, group: Dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_betas(group["betas"])
        check_range("weight_decay", group["weight_decay"], 0.0)
        check_range("kappa", group["kappa"], 0.0, low_open=True)
        check_range("eps", group["eps"], 0.0)
        if group["mode"] not in MODES:
            raise ValueError(f"invalid mode: {group['mode']!r}; expected one of {MODES}")

    def _init_group_state(self, group: Dict[str, Any], device: torch.device) -> Dict[str, Tensor]:
        return {"loss_ema": torch.zeros((), dtype=torch.float32, device=device)}

    def _param_state_keys(self, group: Dict[str, Any]) -> Tuple[str, ...]:
        return ("exp_avg",)

    def _loss_is_valid(self, loss: Tensor) -> Tensor:
        # The source's sigma is (tanh(-log1p(L)/2) + 1) / 2: defined for L > -1.
        return torch.isfinite(loss) & (loss > -1)

    def _advance(
        self, group: Dict[str, Any], state: Dict[str, Tensor], loss: Tensor, valid: Tensor
    ) -> Dict[str, Any]:
        beta2 = group["betas"][1]
        ema = state["loss_ema"]
        sigma = 1 / (2 + loss)
        ema = assign_scalar(ema, torch.where(valid, ema + (1 - beta2) * (sigma - ema), ema))
        scale = ema if group["mode"] == "adversarial" else 1 - ema
        return dict(lr_t=torch.clamp_min(scale / group["kappa"], group["eps"]))

    def _advance_op(self) -> Callable[..., Tensor]:
        return torch.ops.lossopt.adalo_advance

    def _hyper(self, group: Dict[str, Any]) -> List[float]:
        # csrc/rules/adalo.h, AdaLoGroup::Hyper
        compliant = 1.0 if group["mode"] == "compliant" else 0.0
        return [group["betas"][1], group["kappa"], group["eps"], compliant]

    def _update_args(self, group: Dict[str, Any]) -> Dict[str, float]:
        return dict(beta1=group["betas"][0], weight_decay=group["weight_decay"])
