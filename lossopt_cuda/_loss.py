"""The loss path: from ``step(closure)`` or ``step(loss=...)`` to a detached device scalar.

Everything here stays on the device: a tensor loss is never read back to the
host, so ``step()`` never waits for the GPU.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Optional, Union

import torch
import torch.distributed as dist

LossLike = Union[torch.Tensor, float, int]


class MissingLossError(RuntimeError):
    """``step()`` was called without a way to know the current loss."""


def _how_to_pass(owner: str) -> str:
    return (
        f"{owner}.step() needs the loss of the current mini-batch (a one-element "
        "tensor or a Python number). After loss.backward(), pass it with "
        "`opt.step(loss=loss)`, or as a closure that returns it, `opt.step(lambda: loss)`: "
        "that form also goes through wrappers whose step() takes only a closure, such as "
        "Hugging Face Accelerate's AcceleratedOptimizer. A closure may also recompute "
        "the loss (zero the gradients, compute it, call backward, return it). Loops "
        "that call step() with no argument: wrap the optimizer in "
        "lossopt_cuda.integrations.AccumulatedLossOptimizer and record each loss "
        "with add_loss()."
    )


def obtain_loss(
    closure: Optional[Callable[[], Any]], loss: Optional[LossLike], owner: str
) -> LossLike:
    """Run the closure (with grad enabled) or take ``loss=``; return what the user gave."""
    if closure is not None and loss is not None:
        raise ValueError(f"{owner}.step() takes a closure or loss=, not both.")
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
        if loss is None:
            raise MissingLossError("the closure returned None. " + _how_to_pass(owner))
    if loss is None:
        raise MissingLossError(_how_to_pass(owner))
    check_loss(loss, owner)
    return loss


def check_loss(loss: Any, owner: str) -> None:
    """Reject anything that is not one real number, before any state changes."""
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(
                f"{owner}.step(): the loss must have exactly one element, got a tensor "
                f"of shape {tuple(loss.shape)}. Reduce it first (e.g. loss.mean())."
            )
        if loss.is_complex():
            raise ValueError(f"{owner}.step(): the loss must be real, got {loss.dtype}.")
    elif isinstance(loss, bool) or not isinstance(loss, numbers.Real):
        raise TypeError(
            f"{owner}.step(): the loss must be a one-element tensor or a Python "
            f"number, got {type(loss).__name__}."
        )


def scalar_dtype(device: torch.device) -> torch.dtype:
    """Precision of the loss-derived scalars: float64 wherever the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


def loss_to_device(loss: LossLike, device: torch.device) -> torch.Tensor:
    """A detached 0-d tensor on ``device`` in :func:`scalar_dtype`.

    Python numbers become a device fill (a kernel argument), not a host-to-device
    copy, so no stream synchronisation is implied.
    """
    dtype = scalar_dtype(device)
    if isinstance(loss, torch.Tensor):
        return move(loss.detach().reshape(()), device, dtype)
    return torch.full((), float(loss), dtype=dtype, device=device)


def move(t: torch.Tensor, device: torch.device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``t`` on ``device`` (and in ``dtype``) without waiting for the host.

    Non-blocking only towards an accelerator: a non-blocking copy *to* the CPU
    may be read before it has landed.
    """
    return t.to(device=device, dtype=dtype, non_blocking=device.type != "cpu")


def place(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; a copy only when it must move (no host sync). MPS
    has no float64: such tensors go there as float32."""
    if t.device == device:
        return t
    if device.type == "mps" and t.dtype == torch.float64:
        t = t.float()
    return move(t, device)


def average_across_ranks(loss: torch.Tensor, process_group: Optional[Any]) -> torch.Tensor:
    """Mean of ``loss`` over the process group (what DDP does to gradients).

    A no-op when torch.distributed is not initialised or the group has one rank.
    SUM then divide, because gloo has no AVG reduction.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return loss
    world = dist.get_world_size(process_group)
    if world == 1:
        return loss
    total = loss.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=process_group)
    return total / world


def will_average(process_group: Optional[Any]) -> bool:
    """Whether :func:`average_across_ranks` would communicate."""
    return (
        dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size(process_group) > 1
    )
