"""AdamL: Adam whose second moment carries loss terms (Xia and Massei, arXiv 2312.15295)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from . import _fused, _reference
from ._fused import ADAML_SCALARS
from ._loss import scalar_dtype
from ._base import LossDrivenOptimizer, ParamsT, assign_scalar, check_betas, check_lr, check_range

#: Floor of the loss gap ``l`` (and of ``l0``): keeps ``l**phi`` and ``1/l`` finite.
MIN_GAP = 1e-12


class AdamL(LossDrivenOptimizer):
    r"""AdamL: SGD-like far from the optimum, Adam-like near it.

    Per step, with ``L`` the current loss and ``k`` the step count::

        k = k + 1
        l = L - min_loss
        if normalize_loss: l = l / l0      # l0: the first step's L - min_loss
        l = max(l, 1e-12)
        s = 1 / (gamma * l**phi)
        m = beta1 * m + (1 - beta1) * g
        w = beta2 * w + (1 - beta2) * s * g**2 + eps * l
        p = p * (1 - lr * weight_decay)
        p = p - lr * (m / (1 - beta1**k)) / sqrt(w / (1 - beta2**k))

    No official code exists. Choices (documented in the README): the defaults
    ``gamma=1, phi=1, min_loss=0``; ``l0`` is the gap at the first step that
    was taken (skipped steps do not count), floored at 1e-12 like ``l``; the
    floor 1e-12 on ``l``; decoupled (AdamW-style) weight decay. ``eps * l > 0``
    keeps ``w`` positive, so no epsilon is added to the denominator.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (schedulers work as with Adam).
        betas: coefficients of the first and second moments.
        eps: weight of the non-adaptive term ``eps * l`` (> 0).
        gamma: scale of the adaptive term (> 0).
        phi: power of the loss in the adaptive term (>= 0).
        min_loss: ``f*``, a lower bound of the loss.
        normalize_loss: divide the gap by the first step's gap.
        weight_decay: decoupled weight decay.
        foreach, fused, average_loss, process_group, master_weights,
        state_dtype, stochastic_rounding, rounding_seed: as in
            :class:`AdaLo`.

    Any finite loss is valid; NaN or infinite losses skip the step.
    """

    _forloop = staticmethod(_reference.adaml_forloop)
    _foreach = staticmethod(_reference.adaml_foreach)
    _fused = staticmethod(_fused.adaml_fused)
    _group_state_keys = ("step", "loss0")
    _scalar_names = ADAML_SCALARS

    def __init__(
        self,
        params: ParamsT,
        lr: Union[float, Tensor] = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        gamma: float = 1.0,
        phi: float = 1.0,
        min_loss: float = 0.0,
        normalize_loss: bool = False,
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
        defaults = dict(
            lr=lr, betas=betas, eps=eps, gamma=gamma, phi=phi, min_loss=min_loss,
            normalize_loss=normalize_loss, weight_decay=weight_decay,
        )
        super().__init__(
            params, defaults, foreach=foreach, fused=fused,
            average_loss=average_loss, process_group=process_group,
            master_weights=master_weights, state_dtype=state_dtype,
            stochastic_rounding=stochastic_rounding, rounding_seed=rounding_seed,
        )

    def _validate(self, group: Dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_betas(group["betas"])
        check_range("eps", group["eps"], 0.0, low_open=True)
        check_range("gamma", group["gamma"], 0.0, low_open=True)
        check_range("phi", group["phi"], 0.0)
        check_range("min_loss", group["min_loss"], float("-inf"), low_open=True)
        check_range("weight_decay", group["weight_decay"], 0.0)
        if not isinstance(group["normalize_loss"], bool):
            raise ValueError(f"invalid normalize_loss: {group['normalize_loss']!r}; expected a bool")

    def _init_group_state(self, group: Dict[str, Any], device: torch.device) -> Dict[str, Tensor]:
        return {
            "step": torch.zeros((), dtype=torch.float32, device=device),
            "loss0": torch.zeros((), dtype=scalar_dtype(device), device=device),
        }

    def _param_state_keys(self, group: Dict[str, Any]) -> Tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _advance(
        self, group: Dict[str, Any], state: Dict[str, Tensor], loss: Tensor, valid: Tensor
    ) -> Dict[str, Any]:
        beta1, beta2 = group["betas"]
        step, loss0 = state["step"], state["loss0"]
        gap = loss - group["min_loss"]
        first_gap = torch.where(step == 0, torch.clamp_min(gap, MIN_GAP), loss0)
        step = assign_scalar(step, torch.where(valid, step + 1, step))
        loss0 = assign_scalar(loss0, torch.where(valid, first_gap, loss0))
        l = gap / loss0 if group["normalize_loss"] else gap
        l = torch.clamp_min(l, MIN_GAP)
        s = 1 / (group["gamma"] * l ** group["phi"])
        k = step.to(loss.dtype)
        return dict(
            lr=group["lr"],
            grad_sq_scale=(1 - beta2) * s,
            eps_l=group["eps"] * l,
            bias_correction1=1 - beta1**k,
            bias_correction2=1 - beta2**k,
        )

    def _advance_op(self) -> Callable[..., Tensor]:
        return torch.ops.lossopt.adaml_advance

    def _hyper(self, group: Dict[str, Any]) -> List[float]:
        # csrc/rules/adaml.h, AdamLGroup::Hyper
        beta1, beta2 = group["betas"]
        return [beta1, beta2, group["eps"], group["gamma"], group["phi"], group["min_loss"],
                1.0 if group["normalize_loss"] else 0.0]

    def _update_args(self, group: Dict[str, Any]) -> Dict[str, float]:
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"])
