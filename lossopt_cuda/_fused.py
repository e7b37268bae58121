"""The fused path: two compiled ops per rule (csrc/), with the same meaning as
the optimizer's ``_advance`` and its reference functions in
:mod:`lossopt_cuda._reference`.

* ``<rule>_advance`` reads the loss on the device, decides whether the step is
  taken, advances the group's scalar state and returns the **scalar vector**:
  float64, ``[valid, inv_grad_scale, *<RULE>_SCALARS]`` (the order of
  csrc/rules/common.h and the rule's header). ``valid`` is 0 for a bad loss or
  overflowed gradients; ``inv_grad_scale`` is ``1 / torch.amp.GradScaler``'s
  scale, 1 without one.
* ``<rule>_`` updates every parameter of one (device, dtype) bucket in one
  pass, reading the vector from device memory; with master weights it steps
  the float32 masters and writes the parameters as their rounded copies in
  the same pass.

Nothing is read back to the host, so a step can be captured in a CUDA graph,
and the whole scalar step is one call rather than a dozen tiny torch ops.

The kernels walk each tensor as flat memory, so a parameter whose gradient or
state is laid out differently (or is not dense) takes the foreach path within
the same step, with the same scalars.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from . import _reference
from . import _kernels
from ._reference import unscale_grads

if TYPE_CHECKING:
    from ._rounding import Rounding

#: The rule's entries of the scalar vector, after ``valid`` and ``inv_grad_scale``,
#: named as the reference functions' keyword arguments.
ADALO_SCALARS = ("lr_t",)
ADAML_SCALARS = ("lr", "grad_sq_scale", "eps_l", "bias_correction1", "bias_correction2")
ADALOSS_SCALARS = ("lr", "b")
_VALID, _INV_GRAD_SCALE, _RULE = 0, 1, 2


def advance_supported(device: torch.device) -> bool:
    """Whether the ``<rule>_advance`` ops run on this device."""
    if device.type == "cpu":
        _kernels.kernels_on("cpu")  # the first call may build the CPU kernels (and ops)
        return _kernels.ops_loaded()
    return device.type == "cuda" and _kernels.kernels_on("cuda")


def scalar_kwargs(vector: Tensor, names: Sequence[str], dtype: torch.dtype) -> Dict[str, Tensor]:
    """The scalar vector as the reference functions' keyword arguments
    (``valid``, ``inv_grad_scale`` and the rule's scalars in ``dtype``)."""
    values = vector.to(dtype).unbind()
    return {
        "valid": vector[_VALID] != 0,
        "inv_grad_scale": values[_INV_GRAD_SCALE],
        **dict(zip(names, values[_RULE:])),
    }


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
    """What csrc/checks.h asks of a parameter: walkable as flat memory, with
    its gradient and states laid out alike."""
    if g.dtype != p.dtype or not _dense(p):
        return False
    return _same_layout(g, p) and all(_same_layout(s, p) for s in states)


def _same_layout(t: Tensor, like: Tensor) -> bool:
    """csrc/checks.h's same_layout: equal strides where a dimension has more
    than one element (autograd leaves the strides of size-1 dimensions as they fall)."""
    if t.is_contiguous() and like.is_contiguous():
        return True
    return all(a == b for a, b, n in zip(t.stride(), like.stride(), like.shape) if n > 1)


def host_update(
    update: Callable[..., None],
    names: Sequence[str],
    params: List[Tensor],
    master: Optional[List[Tensor]],
    grads: List[Tensor],
    states: Dict[str, List[Tensor]],
    scalars: Tensor,
    args: Dict[str, float],
    rounding: Optional["Rounding"] = None,
) -> None:
    """Run a for-loop or foreach ``update`` with the scalars of the vector
    ``scalars`` (the gradients unscaled first): for parameters the kernels do
    not take, in a group whose scalars were advanced by the compiled op."""
    kwargs = scalar_kwargs(scalars, names, _reference.compute_dtype(params[0].dtype))
    grads = unscale_grads(grads, kwargs.pop("inv_grad_scale"))
    _reference.update_params(update, params, master, grads, states, {**kwargs, **args}, rounding)


def _launch(
    op: Callable[..., None],
    fallback: Callable[..., None],
    names: Sequence[str],
    params: List[Tensor],
    grads: List[Tensor],
    states: Dict[str, List[Tensor]],
    master: Optional[List[Tensor]],
    scalars: Tensor,
    args: Dict[str, float],
    rounding: Optional["Rounding"] = None,
) -> None:
    masters = master if master is not None else []

    def run(update: Callable[..., None], index: Optional[List[int]] = None) -> None:
        """``update`` (the op, or the fallback) on the parameters at ``index`` (all: None)."""
        def pick(ts: List[Any]) -> List[Any]:
            return ts if index is None or not ts else [ts[i] for i in index]
        some = None if rounding is None else dataclasses.replace(rounding, tensor_ids=pick(rounding.tensor_ids))
        if update is op:
            op(pick(params), pick(grads), *map(pick, states.values()), pick(masters), scalars,
               *args.values(), *_rounding_args(some))
        else:
            host_update(update, names, pick(params), pick(master) if master is not None else None,
                        pick(grads), {k: pick(v) for k, v in states.items()}, scalars, args, some)

    if not torch.compiler.is_compiling():
        # The op checks walkability itself before writing anything, faster
        # than Python can; a fake (traced) op cannot, hence the check below.
        try:
            return run(op)
        except NotImplementedError:  # some tensor is not walkable (csrc/checks.h)
            pass
    dense = [
        _walkable(p, g, [s[i] for s in states.values()] + masters[i:i + 1])
        for i, (p, g) in enumerate(zip(params, grads))
    ]
    if all(dense):
        return run(op)
    run(fallback, [i for i, ok in enumerate(dense) if not ok])
    keep = [i for i, ok in enumerate(dense) if ok]
    if keep:
        run(op, keep)


def _rounding_args(rounding: Optional["Rounding"]) -> tuple:
    """The ops' trailing arguments (csrc/ops.cpp): rounding_step, rounding_seed,
    tensor_ids, round_params; none without rounding (the schema's defaults)."""
    if rounding is None:
        return ()
    return rounding.step, rounding.seed, rounding.tensor_ids, rounding.params


def adalo_fused(
    params: List[Tensor], grads: List[Tensor], *, exp_avg: List[Tensor], scalars: Tensor,
    beta1: float, weight_decay: float, master: Optional[List[Tensor]] = None,
    rounding: Optional["Rounding"] = None,
) -> None:
    _launch(
        torch.ops.lossopt.adalo_, _reference.adalo_foreach, ADALO_SCALARS, params, grads,
        {"exp_avg": exp_avg}, master, scalars, dict(beta1=beta1, weight_decay=weight_decay), rounding,
    )


def adaml_fused(
    params: List[Tensor], grads: List[Tensor], *, exp_avg: List[Tensor],
    exp_avg_sq: List[Tensor], scalars: Tensor, beta1: float, beta2: float, weight_decay: float,
    master: Optional[List[Tensor]] = None, rounding: Optional["Rounding"] = None,
) -> None:
    _launch(
        torch.ops.lossopt.adaml_, _reference.adaml_foreach, ADAML_SCALARS, params, grads,
        {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}, master, scalars,
        dict(beta1=beta1, beta2=beta2, weight_decay=weight_decay), rounding,
    )


def adaloss_fused(
    params: List[Tensor], grads: List[Tensor], *, scalars: Tensor, momentum: float,
    weight_decay: float, momentum_buffer: Optional[List[Tensor]] = None,
    master: Optional[List[Tensor]] = None, rounding: Optional["Rounding"] = None,
) -> None:
    states = {"momentum_buffer": momentum_buffer} if momentum_buffer is not None else {}
    # The op takes an empty buffer list for "no momentum"; the fallback takes None.
    op = torch.ops.lossopt.adaloss_
    launch_op = op if states else (lambda p, g, m, s, *a: op(p, g, [], m, s, *a))
    _launch(
        launch_op, _reference.adaloss_foreach, ADALOSS_SCALARS, params, grads, states, master,
        scalars, dict(momentum=momentum, weight_decay=weight_decay), rounding,
    )


def advance(
    op: Callable[..., Tensor], loss: Tensor, state: List[Tensor], *, found_inf: Optional[Tensor],
    grad_scale: Optional[Tensor], lr: Any, skips: Optional[Tensor], hyper: List[float],
) -> Tensor:
    """Call ``op`` (a ``<rule>_advance``); every tensor is on the state's device."""
    lr_tensor = None
    if isinstance(lr, Tensor):
        lr_tensor, lr = _float_or_double(lr), 0.0
    if torch.compiler.is_compiling():
        # torch.compile (seen with torch 2.13) drops in-place updates of 0-d
        # float64 graph inputs; one-element views of them survive (see
        # _reference.write_).
        state = [s.view(1) if s.dim() == 0 else s for s in state]
        skips = skips.view(1) if skips is not None and skips.dim() == 0 else skips
    return op(loss, state, found_inf, grad_scale, lr_tensor, skips, hyper, float(lr))


def _float_or_double(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.double()


def _register_fakes() -> None:
    """Fake implementations for tracing (torch.compile, FakeTensor): the update
    ops only mutate their inputs; the advance ops return the scalar vector."""
    for name in ("adalo_", "adaml_", "adaloss_"):
        torch.library.register_fake(f"lossopt::{name}")(lambda *args, **kwargs: None)

    def fake_advance(n_scalars: int) -> Callable[..., Tensor]:
        def fake(loss, state, found_inf, grad_scale, lr_tensor, skips, hyper, lr):
            return state[0].new_empty((n_scalars,), dtype=torch.float64)
        return fake

    for name, names in (("adalo", ADALO_SCALARS), ("adaml", ADAML_SCALARS), ("adaloss", ADALOSS_SCALARS)):
        torch.library.register_fake(f"lossopt::{name}_advance")(fake_advance(_RULE + len(names)))


_kernels.when_loaded(_register_fakes)  # now, or when a build on first use loads the ops
