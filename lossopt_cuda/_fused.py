"""The fused path: each rule's compiled op (csrc/), called with the same
arguments as its reference functions in :mod:`lossopt_cuda._reference`.

The loss-derived scalars are stacked into one small tensor on the device (one
tiny launch); the kernel reads it, so nothing waits for the GPU and a step can
be captured in a CUDA graph. It starts with the step's validity (the kernels
return at once when it is 0) and the inverse gradient scale of
``torch.amp.GradScaler`` (1 without one), then the rule's scalars, in the
order of csrc/rules/common.h and the rule's header.

The kernels walk each tensor as flat memory, so a parameter whose gradient or
state is laid out differently (or is not dense) takes the foreach path within
the same step.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from . import _reference
from ._build import _C
from ._reference import compute_dtype, unscale_grads

Scalar = _reference.Scalar


def _dense(t: Tensor) -> bool:
    """Non-overlapping and dense: its elements fill one block of memory."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _walkable(p: Tensor, g: Tensor, states: Sequence[Tensor]) -> bool:
    return (
        _dense(p)
        and g.dtype == p.dtype
        and g.stride() == p.stride()
        and all(s.stride() == p.stride() for s in states)
    )


def _scalar_tensor(
    valid: Tensor, inv_grad_scale: Optional[Tensor], values: Sequence[Scalar], param: Tensor
) -> Tensor:
    """[valid, inv_grad_scale, *values] as one vector on ``param``'s device in its math dtype."""
    dtype = compute_dtype(param.dtype)
    parts = [valid.to(device=param.device, dtype=dtype)]
    for v in [1.0 if inv_grad_scale is None else inv_grad_scale, *values]:
        if isinstance(v, Tensor):
            parts.append(v.to(device=param.device, dtype=dtype).reshape(()))
        else:  # a fill is a kernel argument: no host-to-device copy
            parts.append(torch.full((), float(v), device=param.device, dtype=dtype))
    return torch.stack(parts)


def _launch(
    op: Callable[..., None],
    fallback: Callable[..., None],
    params: List[Tensor],
    grads: List[Tensor],
    states: Dict[str, List[Tensor]],
    valid: Tensor,
    scalars: Sequence[Scalar],
    args: Sequence[float],
    rule_kwargs: Dict[str, Any],
    inv_grad_scale: Optional[Tensor],
) -> None:
    dense = [
        _walkable(p, g, [s[i] for s in states.values()])
        for i, (p, g) in enumerate(zip(params, grads))
    ]
    if not all(dense):
        rest = [i for i, ok in enumerate(dense) if not ok]
        fallback(
            [params[i] for i in rest],
            unscale_grads([grads[i] for i in rest], inv_grad_scale),
            valid=valid,
            **{k: [v[i] for i in rest] for k, v in states.items()},
            **rule_kwargs,
        )
    keep = [i for i, ok in enumerate(dense) if ok]
    if not keep:
        return
    op(
        [params[i] for i in keep],
        [grads[i] for i in keep],
        *[[v[i] for i in keep] for v in states.values()],
        _scalar_tensor(valid, inv_grad_scale, scalars, params[keep[0]]),
        *args,
    )


def adalo_fused(
    params: List[Tensor], grads: List[Tensor], *, exp_avg: List[Tensor], valid: Tensor,
    lr_t: Tensor, beta1: float, weight_decay: float, inv_grad_scale: Optional[Tensor] = None,
) -> None:
    _launch(
        torch.ops.lossopt.adalo_, _reference.adalo_foreach, params, grads,
        {"exp_avg": exp_avg}, valid, [lr_t], [beta1, weight_decay],
        dict(lr_t=lr_t, beta1=beta1, weight_decay=weight_decay), inv_grad_scale,
    )


def adaml_fused(
    params: List[Tensor], grads: List[Tensor], *, exp_avg: List[Tensor],
    exp_avg_sq: List[Tensor], valid: Tensor, lr: Scalar, beta1: float, beta2: float,
    grad_sq_scale: Tensor, eps_l: Tensor, bias_correction1: Tensor,
    bias_correction2: Tensor, weight_decay: float, inv_grad_scale: Optional[Tensor] = None,
) -> None:
    _launch(
        torch.ops.lossopt.adaml_, _reference.adaml_foreach, params, grads,
        {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}, valid,
        # the order of csrc/rules/adaml.h's AdamLScalar after the validity flag
        [lr, grad_sq_scale, eps_l, bias_correction1, bias_correction2],
        [beta1, beta2, weight_decay],
        dict(lr=lr, beta1=beta1, beta2=beta2, grad_sq_scale=grad_sq_scale, eps_l=eps_l,
             bias_correction1=bias_correction1, bias_correction2=bias_correction2,
             weight_decay=weight_decay),
        inv_grad_scale,
    )


def adaloss_fused(
    params: List[Tensor], grads: List[Tensor], *, valid: Tensor, lr: Scalar, b: Tensor,
    momentum: float, weight_decay: float, momentum_buffer: Optional[List[Tensor]] = None,
    inv_grad_scale: Optional[Tensor] = None,
) -> None:
    states = {"momentum_buffer": momentum_buffer} if momentum_buffer is not None else {}
    # The op takes an empty buffer list for "no momentum"; the fallback takes None.
    op = torch.ops.lossopt.adaloss_
    launch_op = op if states else (lambda p, g, s, *a: op(p, g, [], s, *a))
    _launch(
        launch_op, _reference.adaloss_foreach, params, grads, states, valid,
        [lr, b], [momentum, weight_decay],
        dict(lr=lr, b=b, momentum=momentum, weight_decay=weight_decay), inv_grad_scale,
    )


if _C is not None:
    # Fake implementations: the ops only mutate their inputs, so tracing them
    # (torch.compile, FakeTensor) needs nothing but "returns None".
    for _name in ("adalo_", "adaml_", "adaloss_"):
        torch.library.register_fake(f"lossopt::{_name}")(lambda *args, **kwargs: None)
