"""The per-element math of each rule in plain PyTorch: the oracle for the kernels.

Two versions of every rule, with the same arguments:

* ``<rule>_forloop``: one parameter at a time, written to be read against
  ALGORITHMS.md.
* ``<rule>_foreach``: the same arithmetic with ``torch._foreach_*`` ops, a few
  multi-tensor launches per (device, dtype) bucket.

Loss-derived scalars (AdaLo's ``lr_t``, AdamL's ``s`` and bias corrections,
AdaLoss's ``b``) are computed by the optimizer classes and arrive here as 0-d
tensors already on the bucket's device and in its compute dtype. State tensors
(``exp_avg`` ...) are in the compute dtype: float32, or float64 for float64
parameters; low-precision parameters and gradients are widened for the math and
rounded once when written back.

``valid`` is a 0-d bool tensor: False when the loss was bad. Results are then
selected with ``torch.where`` rather than branched on, because reading the flag
on the host would wait for the GPU. ``torch.where`` (not a multiply by 0/1) is
needed since a bad loss usually comes with NaN gradients and ``0 * NaN`` is NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

Scalar = Union[float, Tensor]

if TYPE_CHECKING:
    from ._rounding import Rounding


def _widen(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _widen_all(ts: Sequence[Tensor], dtype: torch.dtype) -> List[Tensor]:
    return [_widen(t, dtype) for t in ts]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Per-element math (and state) precision of a parameter dtype: float64 for
    float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def write_(dst: Tensor, value: Tensor) -> None:
    """``dst.copy_(value)``; a 0-d ``dst`` is written through a one-element view,
    because torch.compile (seen with torch 2.13) silently drops an in-place
    update of a 0-d float64 graph input (AdaLoss's ``b_sq``, AdamL's ``loss0``,
    0-d float64 parameters)."""
    if dst.dim() == 0:
        dst, value = dst.view(1), value.reshape(1)
    dst.copy_(value)


def _commit(dst: Tensor, new: Tensor, valid: Tensor) -> None:
    """``dst = new`` where the loss was valid, else unchanged (no host branch)."""
    write_(dst, torch.where(valid, new, dst))


def unscale_grads(grads: List[Tensor], inv_grad_scale: Optional[Tensor]) -> List[Tensor]:
    """Gradients divided by torch.amp.GradScaler's scale (``grads`` itself without one).

    New tensors in the math dtype: the user's ``.grad`` stays as the scaler left
    it, and a low-precision gradient is widened before it is scaled. A
    power-of-two scale makes this exact.
    """
    if inv_grad_scale is None or not grads:
        return grads
    dtype = compute_dtype(grads[0].dtype)
    return torch._foreach_mul(_widen_all(grads, dtype), [inv_grad_scale.to(dtype)] * len(grads))


def _commit_all(dsts: Sequence[Tensor], news: Sequence[Tensor], valid: Tensor) -> None:
    for dst, new in zip(dsts, news):
        _commit(dst, new, valid)


def update_params(
    update: Callable[..., None],
    params: List[Tensor],
    master: Optional[List[Tensor]],
    grads: List[Tensor],
    states: Dict[str, List[Tensor]],
    kwargs: Dict[str, Any],
    rounding: Optional["Rounding"] = None,
) -> None:
    """Run a for-loop or foreach ``update`` on ``params``, or, with float32
    ``master`` weights, on the masters; the parameters then become their
    rounded copies (where the step was valid).

    Storage is this driver's business, not the rule's: with ``rounding``
    (lossopt_cuda._rounding), bfloat16 states and parameters are handed to the
    update as float32 copies and written back stochastically rounded. Where
    the step was invalid the copies keep the stored values, which round to
    themselves exactly."""
    if rounding is None:
        update(master if master is not None else params, grads, **states, **kwargs)
        if master is not None:
            _commit_all(params, [m.to(p.dtype) for p, m in zip(params, master)], kwargs["valid"])
        return
    # One parameter at a time: the float32 copies and the hash's temporaries
    # then live for one tensor, not for the whole bucket.
    valid = kwargs["valid"]
    for i in range(len(params)):
        one = {k: v[i:i + 1] for k, v in states.items()}
        wide = {k: _widen_all(v, torch.float32) for k, v in one.items()} if rounding.states else one
        if master is not None:
            target = master[i:i + 1]
        else:
            target = _widen_all(params[i:i + 1], torch.float32) if rounding.params else params[i:i + 1]
        update(target, grads[i:i + 1], **wide, **kwargs)
        if master is not None:
            _commit(params[i], master[i].to(params[i].dtype), valid)
        elif rounding.params:
            rounding.write(params[i], target[0], i, len(states), valid)
        if rounding.states:
            for k, key in enumerate(states):
                rounding.write(states[key][i], wide[key][0], i, k, valid)


# --------------------------------------------------------------------------- AdaLo


def adalo_forloop(
    params: List[Tensor],
    grads: List[Tensor],
    *,
    exp_avg: List[Tensor],
    valid: Tensor,
    lr_t: Tensor,
    beta1: float,
    weight_decay: float,
) -> None:
    for p, g, m in zip(params, grads, exp_avg):
        g = _widen(g, m.dtype)
        p_wide = _widen(p, m.dtype)
        m_new = m + (1 - beta1) * (g - m)
        p_new = p_wide * (1 - lr_t * weight_decay) - lr_t * m_new
        _commit(m, m_new, valid)
        _commit(p, p_new, valid)


def adalo_foreach(
    params: List[Tensor],
    grads: List[Tensor],
    *,
    exp_avg: List[Tensor],
    valid: Tensor,
    lr_t: Tensor,
    beta1: float,
    weight_decay: float,
) -> None:
    dtype = exp_avg[0].dtype
    p_wide = _widen_all(params, dtype)
    m_new = torch._foreach_sub(_widen_all(grads, dtype), exp_avg)
    torch._foreach_mul_(m_new, 1 - beta1)
    torch._foreach_add_(m_new, exp_avg)
    p_new = torch._foreach_mul(p_wide, 1 - lr_t * weight_decay)
    torch._foreach_sub_(p_new, torch._foreach_mul(m_new, lr_t))
    _commit_all(exp_avg, m_new, valid)
    _commit_all(params, p_new, valid)


# --------------------------------------------------------------------------- AdamL


def _sqrt_(ts: List[Tensor]) -> None:
    """Square roots in place, correctly rounded as the kernels' are.

    torch's float32 square root on the CPU is not (about 0.6 % of inputs come
    out one ulp off, seen with torch 2.13 on AVX512). A float64 square root
    rounded to float32 is: a float64 result within one float64 ulp cannot cross
    the midpoint between two float32s, which the exact root of a float32 never
    comes nearer than 2^-50 of its size."""
    if ts and ts[0].dtype == torch.float32 and ts[0].device.type == "cpu":
        for t in ts:
            t.copy_(t.double().sqrt_())
    else:
        torch._foreach_sqrt_(ts)


def _adaml_step_scalars(lr: Scalar, bias_correction1: Tensor, bias_correction2: Tensor):
    """``lr / bc1`` and ``1 / bc2`` in the bias corrections' dtype: the kernels'
    form of ``lr * (m / bc1) / sqrt(w / bc2)`` (csrc/rules/adaml.h), one division
    per element instead of three, rounded as the kernels round it."""
    if not isinstance(lr, Tensor):
        lr = torch.full_like(bias_correction1, lr)
    return lr.to(bias_correction1.dtype) / bias_correction1, bias_correction2.reciprocal()


def adaml_forloop(
    params: List[Tensor],
    grads: List[Tensor],
    *,
    exp_avg: List[Tensor],
    exp_avg_sq: List[Tensor],
    valid: Tensor,
    lr: Scalar,
    beta1: float,
    beta2: float,
    grad_sq_scale: Tensor,
    eps_l: Tensor,
    bias_correction1: Tensor,
    bias_correction2: Tensor,
    weight_decay: float,
) -> None:
    """``grad_sq_scale`` is ``(1 - beta2) * s`` and ``eps_l`` is ``eps * l``."""
    for p, g, m, w in zip(params, grads, exp_avg, exp_avg_sq):
        g = _widen(g, m.dtype)
        p_wide = _widen(p, m.dtype)
        step_size, inv_bc2 = _adaml_step_scalars(lr, bias_correction1, bias_correction2)
        m_new = beta1 * m + (1 - beta1) * g
        w_new = beta2 * w + g * g * grad_sq_scale + eps_l  # (g*g)*s: the foreach path's order
        # lr * m_hat / sqrt(w_hat) with m_hat = m / bc1, w_hat = w / bc2, as the kernels compute it
        p_new = p_wide * (1 - lr * weight_decay)
        denom = w_new * inv_bc2
        _sqrt_([denom])
        p_new = p_new - m_new * step_size / denom
        _commit(m, m_new, valid)
        _commit(w, w_new, valid)
        _commit(p, p_new, valid)


def adaml_foreach(
    params: List[Tensor],
    grads: List[Tensor],
    *,
    exp_avg: List[Tensor],
    exp_avg_sq: List[Tensor],
    valid: Tensor,
    lr: Scalar,
    beta1: float,
    beta2: float,
    grad_sq_scale: Tensor,
    eps_l: Tensor,
    bias_correction1: Tensor,
    bias_correction2: Tensor,
    weight_decay: float,
) -> None:
    dtype = exp_avg[0].dtype
    p_wide = _widen_all(params, dtype)
    g = _widen_all(grads, dtype)

    m_new = torch._foreach_mul(exp_avg, beta1)
    torch._foreach_add_(m_new, torch._foreach_mul(g, 1 - beta1))

    w_new = torch._foreach_mul(exp_avg_sq, beta2)
    g_sq = torch._foreach_mul(g, g)
    torch._foreach_mul_(g_sq, grad_sq_scale)
    torch._foreach_add_(w_new, g_sq)
    # A list of the 0-d tensor, not the tensor itself: torch.compile turns the
    # tensor-scalar overload of _foreach_add_ into .item(), a host sync.
    torch._foreach_add_(w_new, [eps_l] * len(w_new))

    step_size, inv_bc2 = _adaml_step_scalars(lr, bias_correction1, bias_correction2)
    denom = torch._foreach_mul(w_new, inv_bc2)
    _sqrt_(denom)
    update = torch._foreach_mul(m_new, step_size)
    torch._foreach_div_(update, denom)
    p_new = torch._foreach_mul(p_wide, 1 - lr * weight_decay)
    torch._foreach_sub_(p_new, update)

    _commit_all(exp_avg, m_new, valid)
    _commit_all(exp_avg_sq, w_new, valid)
    _commit_all(params, p_new, valid)


# --------------------------------------------------------------------------- AdaLoss


def adaloss_forloop(
    params: List[Tensor],
    grads: List[Tensor],
    *,
    valid: Tensor,
    lr: Scalar,
    b: Tensor,
    momentum: float,
    weight_decay: float,
    momentum_buffer: Optional[List[Tensor]] = None,
) -> None:
    """``momentum_buffer`` starts at zero, so its first update ``momentum * 0 + d``
    is ``d``: the same as torch.optim.SGD's copy on the first step."""
    dtype = b.dtype
    bufs = momentum_buffer if momentum_buffer is not None else [None] * len(params)
    for p, g, buf in zip(params, grads, bufs):
        g = _widen(g, dtype)
        p_wide = _widen(p, dtype)
        d = g / b
        if weight_decay != 0:
            d = d + weight_decay * p_wide
        if buf is not None:
            d = momentum * buf + d
            _commit(buf, d, valid)
        _commit(p, p_wide - lr * d, valid)


def adaloss_foreach(
    params: List[Tensor],
    grads: List[Tensor],
    *,
    valid: Tensor,
    lr: Scalar,
    b: Tensor,
    momentum: float,
    weight_decay: float,
    momentum_buffer: Optional[List[Tensor]] = None,
) -> None:
    dtype = b.dtype
    p_wide = _widen_all(params, dtype)
    d = torch._foreach_div(_widen_all(grads, dtype), b)
    if weight_decay != 0:
        torch._foreach_add_(d, torch._foreach_mul(p_wide, weight_decay))
    if momentum_buffer is not None:
        buf_new = torch._foreach_mul(momentum_buffer, momentum)
        torch._foreach_add_(buf_new, d)
        _commit_all(momentum_buffer, buf_new, valid)
        d = buf_new
    p_new = torch._foreach_sub(p_wide, torch._foreach_mul(d, lr))
    _commit_all(params, p_new, valid)
