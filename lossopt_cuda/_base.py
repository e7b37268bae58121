"""The machinery shared by the three rules: the loss path, checks, state, dispatch.

A rule subclass says only what is particular to it: its hyper-parameter checks,
its per-group scalar state and how the loss advances it, which losses are valid,
and its per-element update (in :mod:`lossopt_cuda._reference`).

One ``step()``:
  1. obtain the loss (closure or ``loss=``) and check every gradient; raise
     here, before anything is modified, on any bad input;
  2. move the loss to the device (averaged over ranks when distributed);
  3. per group: advance the group's scalars (EMA, b^2, step count) on the
     device, masked by the loss's validity;
  4. per (device, dtype) bucket: one call into the chosen path.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _fused
from ._checkpoint import CheckpointMixin
from . import _kernels
from ._loss import (LossLike, average_across_ranks, loss_to_device, move, obtain_loss, place,
                    scalar_dtype, will_average)
from ._reference import compute_dtype, unscale_grads, update_params, write_
from ._rounding import STEP_KEY, Rounding, seed_from
from ._skips import SkipCounter

try:
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # torch built without distributed support
    _DTensor = None

ParamsT = Union[Iterable[Tensor], Iterable[Dict[str, Any]]]
#: Loss dtypes the compiled advance ops read as they are.
_OP_LOSS_DTYPES = (torch.float32, torch.float64)
#: Parameter dtypes that ``master_weights=True`` gives float32 master copies.
LOW_PRECISION = (torch.float16, torch.bfloat16)
#: What ``state_dtype`` may be (None: the compute dtype, see _reference.compute_dtype).
STATE_DTYPES = (None, torch.float32, torch.bfloat16)
UpdateFn = Callable[..., None]


def check_range(
    name: str, value: Any, low: float, high: float = float("inf"),
    *, low_open: bool = False, high_open: bool = True,
) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` lies in the interval."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"invalid {name}: {value!r}; it must be a number in {interval}")
    lo_ok = value > low if low_open else value >= low
    hi_ok = value < high if high_open else value <= high
    if not (lo_ok and hi_ok):
        raise ValueError(f"invalid {name}: {value!r}; it must lie in {interval}")


def check_lr(value: Any) -> None:
    """``lr`` may be a number or a one-element tensor (as in torch.optim)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"invalid lr: a tensor lr must have one element, got shape {tuple(value.shape)}")
        return
    check_range("lr", value, 0.0)


def check_betas(betas: Any) -> None:
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"invalid betas: {betas!r}; expected a pair (beta1, beta2) in [0, 1)")
    for i, beta in enumerate(betas):
        check_range(f"betas[{i}]", beta, 0.0, 1.0)


def assign_scalar(dst: Tensor, value: Tensor) -> Tensor:
    """``dst <- value`` for a 0-d state tensor, in place (see ``_reference.write_``);
    returns ``value``, which later reads should use rather than ``dst``."""
    write_(dst, value)
    return value


class LossDrivenOptimizer(CheckpointMixin, Optimizer):
    """Base class of optimizers whose step size is set by the current loss.

    Subclasses set ``_forloop`` / ``_foreach`` / ``_fused`` (the per-element
    update on each path), ``_group_state_keys`` and ``_scalar_names``, and
    implement ``_validate``, ``_init_group_state``, ``_param_state_keys``,
    ``_loss_is_valid``, ``_advance`` (the scalar step in torch ops),
    ``_advance_op``, ``_hyper`` (the same step compiled) and ``_update_args``.
    """

    _forloop: UpdateFn
    _foreach: UpdateFn
    _fused: UpdateFn
    #: Per-group scalars, kept in the state of the group's first parameter so
    #: that state_dict(), FSDP and checkpoint tools see ordinary per-parameter state.
    _group_state_keys: Tuple[str, ...] = ()
    #: torch.amp.GradScaler.step() then leaves the gradients scaled and sets
    #: ``grad_scale`` and ``found_inf`` on the optimizer for the duration of
    #: step(): the gradients are unscaled inside the update and an overflow
    #: skips the step on the device, with no host sync (the scaler's generic
    #: path reads found_inf on the host every step).
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: ParamsT,
        defaults: Dict[str, Any],
        *,
        foreach: Optional[bool],
        fused: Optional[bool],
        average_loss: bool,
        process_group: Optional[Any],
        master_weights: bool = False,
        state_dtype: Optional[torch.dtype] = None,
        stochastic_rounding: bool = False,
        rounding_seed: Optional[int] = None,
    ) -> None:
        name = type(self).__name__
        if foreach and fused:
            raise ValueError(f"{name}: foreach=True and fused=True cannot be used together")
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"{name}: invalid state_dtype {state_dtype!r}; expected one of {STATE_DTYPES}")
        if stochastic_rounding and master_weights:
            raise ValueError(f"{name}: stochastic_rounding=True writes the bfloat16 parameters themselves; "
                             "it cannot be combined with master_weights=True")
        if state_dtype == torch.bfloat16 or stochastic_rounding or rounding_seed is not None:
            # Drawn only when asked for: an optimizer that never rounds leaves
            # torch's default generator as it found it.
            defaults = {**defaults, "rounding_seed": seed_from(rounding_seed)}
        if fused:
            _kernels.require_kernels(name)  # none at all: build them, or say how
        # The path is a property of this optimizer object, not of the checkpoint:
        # state saved on one path loads into an optimizer running any other.
        self.foreach = foreach
        self.fused = fused
        self.average_loss = bool(average_loss)
        self.master_weights = bool(master_weights)
        self.state_dtype = state_dtype
        self.stochastic_rounding = bool(stochastic_rounding)
        self.process_group = process_group
        self._skips = SkipCounter(name)
        self._group_dtypes: Dict[torch.device, Dict[str, torch.dtype]] = {}
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ rule hooks

    def _validate(self, group: Dict[str, Any]) -> None:
        raise NotImplementedError

    def _init_group_state(self, group: Dict[str, Any], device: torch.device) -> Dict[str, Tensor]:
        raise NotImplementedError

    def _param_state_keys(self, group: Dict[str, Any]) -> Tuple[str, ...]:
        raise NotImplementedError

    def _loss_is_valid(self, loss: Tensor) -> Tensor:
        return torch.isfinite(loss)

    def _advance(
        self, group: Dict[str, Any], state: Dict[str, Tensor], loss: Tensor, valid: Tensor
    ) -> Dict[str, Any]:
        """Update the group's scalars (only where ``valid``) and return the
        loss-derived keyword arguments of the per-element update, named as in
        ``_scalar_names``. The fused path does the same in ``_advance_op``."""
        raise NotImplementedError

    #: The names of the loss-derived arguments of the update, in the order of
    #: the rule's compiled scalar vector (see _fused).
    _scalar_names: Tuple[str, ...] = ()

    def _advance_op(self) -> Callable[..., Tensor]:
        """The compiled ``<rule>_advance`` op: ``_advance`` on the device."""
        raise NotImplementedError

    def _hyper(self, group: Dict[str, Any]) -> List[float]:
        """The group's hyper-parameters as ``_advance_op`` takes them (the
        order of the rule's ``Hyper`` enum in csrc/rules/)."""
        raise NotImplementedError

    def _update_args(self, group: Dict[str, Any]) -> Dict[str, float]:
        """The update's keyword arguments that are plain hyper-parameters."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public API

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group; its hyper-parameters (and with ``fused=True``, that the
        kernels can run its parameters) are checked before it is added."""
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._validate(merged)
        if param_group.get("rounding_seed") is not None:  # checked (and made int64) before the group exists
            param_group["rounding_seed"] = seed_from(param_group["rounding_seed"])
        params = param_group["params"]
        if self.fused and not isinstance(params, set):  # torch.optim refuses sets itself
            if not isinstance(params, Tensor):
                params = param_group["params"] = list(params)  # a generator: read it once
            for p in [params] if isinstance(params, Tensor) else params:
                p = p[1] if isinstance(p, tuple) else p  # named parameters: (name, tensor)
                if isinstance(p, Tensor):  # anything else: torch.optim's TypeError below
                    self._choose_impl(p.device, p.dtype)  # fail now, not at a later step
        super().add_param_group(param_group)
        _lr_as_0d(self.param_groups[-1])

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because the loss was bad. Reading this waits for the device."""
        return self._skips.total()

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Optional[Callable[[], Any]] = None, *, loss: Optional[LossLike] = None
    ) -> LossLike:
        """Take one step with the loss from ``closure()`` or ``loss=``.

        Returns the loss as given. A NaN, infinite or out-of-domain loss changes
        no parameter and no state; it is counted in :attr:`skipped_steps` and
        reported with a ``RuntimeWarning``.
        """
        name = type(self).__name__
        if closure is None and loss is None and _called_by_checkpoint_init():
            self._create_state()
            return None
        given = obtain_loss(closure, loss, name)
        work = self._collect_work()
        home = self._home_device()
        if home is None:
            return given

        averaging = self.average_loss and will_average(self.process_group)
        if not averaging and not isinstance(given, Tensor):
            # A Python number's validity is known on the host for free.
            if not bool(self._loss_is_valid(torch.tensor(float(given), dtype=torch.float64))):
                self._skips.record_host()
                return given
        if averaging:
            loss_t = average_across_ranks(loss_to_device(given, home), self.process_group)
        elif isinstance(given, Tensor) and given.device == home and given.dtype in _OP_LOSS_DTYPES:
            loss_t = given  # the advance ops read it where it is (widened below for the host path)
        else:
            loss_t = loss_to_device(given, home)
        # Set by torch.amp.GradScaler.step() (see _step_supports_amp_scaling).
        amp = _AmpFlags(getattr(self, "grad_scale", None), getattr(self, "found_inf", None))

        counted = False  # each step's bad loss is counted once, by the first group
        host_scalars: Optional[Tuple[Tensor, Optional[Tensor]]] = None
        for group, buckets in work:
            gdevice = group["params"][0].device
            if self._advances_on_device(gdevice, buckets):
                skips = None if counted else self._skips.counter(gdevice)
                vector = self._advance_on_device(group, place(loss_t, gdevice), amp, skips)
                self._step_group_fused(group, buckets, vector)
            else:
                if host_scalars is None:
                    loss_t = loss_to_device(loss_t, home)  # float64, detached
                    valid = self._loss_is_valid(loss_t)
                    if not counted:  # overflowed gradients are the scaler's to count
                        self._skips.record(~valid)
                    host_scalars = amp.apply(valid, home)
                self._step_group(group, buckets, loss_t, *host_scalars)
            counted = True
        self._skips.poll()
        return given

    # ------------------------------------------------------------------ internals

    def _create_state(self) -> None:
        """Create, without stepping, the state the first step would create for
        the parameters that have gradients: what torch.distributed.checkpoint
        asks of a fresh optimizer (see ``_called_by_checkpoint_init``)."""
        for group, buckets in self._collect_work():
            self._group_state(group)
            if any(any(self._rounds(dtype)) for _, dtype in buckets):
                self._rounding_step(group)
            keys = self._param_state_keys(group)
            for (_, dtype), params in buckets.items():
                self._bucket_tensors(params, keys, dtype)

    def _collect_work(self) -> List[Tuple[Dict[str, Any], Dict[Tuple[torch.device, torch.dtype], List[Tensor]]]]:
        """Group the parameters that have gradients by (device, dtype); raise on
        anything the update cannot take, before any state exists or changes."""
        name = type(self).__name__
        work = []
        for group in self.param_groups:
            _lr_as_0d(group)  # a scheduler or the user may have set a (1,)-shaped lr
            if not group["params"]:  # torch.optim allows empty groups (HF Trainer makes them)
                continue
            buckets: Dict[Tuple[torch.device, torch.dtype], List[Tensor]] = defaultdict(list)
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise RuntimeError(f"{name} does not support sparse gradients")
                if g.is_complex():
                    raise RuntimeError(f"{name} does not support complex parameters or gradients")
                if g.shape != p.shape:
                    raise RuntimeError(
                        f"{name}: gradient of shape {tuple(g.shape)} for a parameter "
                        f"of shape {tuple(p.shape)}"
                    )
                buckets[(p.device, p.dtype)].append(p)
            for device, dtype in buckets:  # the parameters' dtype, once per bucket
                if dtype.is_complex:
                    raise RuntimeError(f"{name} does not support complex parameters or gradients")
                if not dtype.is_floating_point:
                    raise RuntimeError(f"{name} needs floating-point parameters, got {dtype}")
                if self.state_dtype is not None and dtype == torch.float64:
                    raise RuntimeError(f"{name}: state_dtype={self.state_dtype} is for float32, float16 and "
                                       "bfloat16 parameters; float64 ones keep float64 state (state_dtype=None)")
                self._choose_impl(device, dtype)  # raises if fused=True cannot run here
            work.append((group, buckets))
        return work

    def _home_device(self) -> Optional[torch.device]:
        for group in self.param_groups:
            if group["params"]:
                return group["params"][0].device
        return None

    def _wants_kernels(self) -> bool:
        """torch.optim's convention: the fused kernels run when asked for
        (``fused=True``) or when both flags are left to their defaults; an
        explicit ``foreach=`` picks that path."""
        return bool(self.fused) or (self.fused is None and self.foreach is None)

    def _choose_impl(self, device: torch.device, dtype: torch.dtype, kernels: bool = True) -> UpdateFn:
        """The update function for a bucket; ``kernels=False`` when the group's
        scalars are not on the device (see ``_advances_on_device``)."""
        # Whether the kernels can write this bucket's storage: rounded buckets
        # take them only where they round, else foreach.
        storage_fits = not any(self._rounds(dtype)) or _kernels.rounding_supported(device)
        if kernels and storage_fits and self._wants_kernels() and _kernels.fused_supported(device, dtype):
            return type(self)._fused
        name = type(self).__name__
        if self.fused and not storage_fits:
            raise RuntimeError(
                f"{name}(fused=True): the compiled kernels on {device.type} do not write bfloat16 state or "
                "stochastically rounded parameters yet; use fused=None, which takes the foreach path for them"
            )
        if self.fused:
            why = "" if _kernels.kernels_on(device.type) else f" ({_kernels.missing(device.type)})"
            raise RuntimeError(
                f"{name}(fused=True): no compiled kernel for {dtype} parameters on {device}{why}; "
                "use fused=None to fall back to foreach"
            )
        if self._wants_kernels() and storage_fits and not _kernels.kernels_on(device.type):
            _kernels.warn_fallback(device.type, name)
        return type(self)._forloop if self.foreach is False else type(self)._foreach

    def _group_state(self, group: Dict[str, Any]) -> Dict[str, Tensor]:
        first = group["params"][0]
        state = self.state[first]
        if not all(k in state for k in self._group_state_keys):
            state.update(self._init_group_state(group, first.device))
        self._cast_group_state(state, group, first.device)
        return state

    def _advances_on_device(
        self, device: torch.device, buckets: Dict[Tuple[torch.device, torch.dtype], List[Tensor]]
    ) -> bool:
        """Whether the group's scalars are advanced by the compiled op: when
        some bucket takes the fused path and the op runs on the group's device."""
        if not self._wants_kernels() or not _fused.advance_supported(device):
            return False
        return any(self._choose_impl(*key) is type(self)._fused for key in buckets)

    def _advance_on_device(
        self, group: Dict[str, Any], loss: Tensor, amp: "_AmpFlags", skips: Optional[Tensor]
    ) -> Tensor:
        """One ``<rule>_advance`` call: the group's scalar vector (see _fused)."""
        gstate = self._group_state(group)
        device = loss.device
        return _fused.advance(
            self._advance_op(),
            loss,
            [gstate[k] for k in self._group_state_keys],
            found_inf=amp.on(device, "found_inf"),
            grad_scale=amp.on(device, "grad_scale"),
            lr=place(group["lr"], device) if isinstance(group["lr"], Tensor) else group["lr"],
            skips=skips,
            hyper=self._hyper(group),
        )

    def _step_group_fused(
        self,
        group: Dict[str, Any],
        buckets: Dict[Tuple[torch.device, torch.dtype], List[Tensor]],
        vector: Tensor,
    ) -> None:
        """Step every bucket of a group whose scalars are in ``vector``."""
        keys = self._param_state_keys(group)
        args = self._update_args(group)
        for (device, dtype), params in buckets.items():
            update = self._choose_impl(device, dtype)
            local_vector = place(vector, device)
            rounding = self._rounding(group, params, dtype, device)
            params, grads, states, master = self._bucket_tensors(params, keys, dtype)
            if update is type(self)._fused:
                update(params, grads, scalars=local_vector, master=master, rounding=rounding, **states, **args)
            else:  # a bucket without kernels (float64 on CUDA) in a fused group
                _fused.host_update(update, self._scalar_names, params, master, grads, states,
                                   local_vector, args, rounding)
        self._count_rounded_step(group, buckets, vector)

    def _step_group(
        self,
        group: Dict[str, Any],
        buckets: Dict[Tuple[torch.device, torch.dtype], List[Tensor]],
        loss: Tensor,
        valid: Tensor,
        inv_grad_scale: Optional[Tensor] = None,
    ) -> None:
        """Step a group on the host-driven path: scalars from ``_advance``
        (torch ops), the update from the for-loop or foreach functions (with
        ``fused=True`` it is never taken: every parameter's device has kernels,
        checked when the group was added)."""
        gstate = self._group_state(group)
        gdevice = group["params"][0].device
        scalars = self._advance(group, gstate, place(loss, gdevice), place(valid, gdevice))
        scalars.update(self._update_args(group))
        keys = self._param_state_keys(group)
        for (device, dtype), params in buckets.items():
            cdtype = compute_dtype(dtype)
            kwargs = {k: _to_bucket(v, device, cdtype) for k, v in scalars.items()}
            update = self._choose_impl(device, dtype, kernels=False)
            rounding = self._rounding(group, params, dtype, device)
            params, grads, states, master = self._bucket_tensors(params, keys, dtype)
            if inv_grad_scale is not None:
                grads = unscale_grads(grads, _to_bucket(inv_grad_scale, device, cdtype))
            update_params(update, params, master, grads, states,
                          {"valid": place(valid, device), **kwargs}, rounding)
        self._count_rounded_step(group, buckets, valid)

    def _bucket_tensors(
        self, params: List[Tensor], keys: Tuple[str, ...], dtype: torch.dtype
    ) -> Tuple[List[Tensor], List[Tensor], Dict[str, List[Tensor]], Optional[List[Tensor]]]:
        """A bucket's parameters, gradients, states (created at the first step)
        and master weights (None without them), as the updates take them.
        DTensor parameters (FSDP2, tensor parallelism) become their local
        shards: every update is elementwise given the group's scalars, so each
        rank steps its own shard."""
        sdtype = self.state_dtype or compute_dtype(dtype)
        states = {key: [self._param_state(p, key, sdtype) for p in params] for key in keys}
        grads = [p.grad for p in params]
        master = self._master_weights(params)
        if _any_dtensor(params):
            params, grads = _local_all(params), _local_all(grads)
            states = {k: _local_all(v) for k, v in states.items()}
            master = None if master is None else _local_all(master)
        return params, grads, states, master

    # ------------------------------------------------------------------ rounding

    def _rounds(self, dtype: torch.dtype) -> Tuple[bool, bool]:
        """(parameters, states) that a bucket of ``dtype`` writes stochastically rounded."""
        params = self.stochastic_rounding and dtype == torch.bfloat16
        return params, self.state_dtype == torch.bfloat16

    def _rounding_step(self, group: Dict[str, Any]) -> Tensor:
        """The group's counter of valid steps (int64, on its first parameter's
        device), the ``step`` of the rounding's hash."""
        first = group["params"][0]
        state = self.state[first]
        counter = state.get(STEP_KEY)
        if counter is None:
            counter = state[STEP_KEY] = torch.zeros((), dtype=torch.int64, device=first.device)
        return counter

    def _rounding(self, group: Dict[str, Any], params: List[Tensor], dtype: torch.dtype,
                  device: torch.device) -> Optional[Rounding]:
        """What a bucket rounds and with which bits; None when it rounds nothing."""
        round_params, round_states = self._rounds(dtype)
        if not (round_params or round_states):
            return None
        order: Dict[Tensor, int] = {}
        for g in self.param_groups:  # numbered as state_dict() numbers them
            for p in g["params"]:
                order.setdefault(p, len(order))
        if group.get("rounding_seed") is None:
            # A group loaded from a checkpoint saved without rounding: it takes
            # this optimizer's seed, kept in the group so that state_dict() saves it.
            group["rounding_seed"] = self.defaults["rounding_seed"]
        return Rounding(group["rounding_seed"], place(self._rounding_step(group), device),
                        [order[p] for p in params], round_params, round_states)

    def _count_rounded_step(self, group: Dict[str, Any], buckets: Dict[Tuple[torch.device, torch.dtype], List[Tensor]],
                            valid: Tensor) -> None:
        """Advance the group's rounding counter by one if the step was valid
        (on the device: no host read), after every bucket was written.
        ``valid``: a bool, or the fused path's scalar vector (valid: entry 0 != 0)."""
        if any(any(self._rounds(dtype)) for _, dtype in buckets):
            if valid.dtype != torch.bool:
                valid = valid[0] != 0
            counter = self._rounding_step(group)
            write_(counter, counter + place(valid, counter.device).to(torch.int64))

    def _master_weights(self, params: List[Tensor]) -> Optional[List[Tensor]]:
        """The float32 master weights of a float16/bfloat16 bucket, created
        from the parameters at their first step; None without ``master_weights``."""
        if not self.master_weights or params[0].dtype not in LOW_PRECISION:
            return None
        masters = []
        for p in params:
            state = self.state[p]
            master = state.get("master_param")
            if master is None:
                master = state["master_param"] = torch.empty_like(
                    p, dtype=torch.float32, memory_format=torch.preserve_format).copy_(p.detach())
            elif master.dtype != torch.float32:
                master = state["master_param"] = master.float()
            masters.append(master)
        return masters

    def _param_state(self, p: Tensor, key: str, dtype: torch.dtype) -> Tensor:
        state = self.state[p]
        value = state.get(key)
        if value is None:
            value = state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        elif value.dtype != dtype:  # loaded from parameters of another dtype
            value = state[key] = value.to(dtype)
        return value


class _AmpFlags:
    """torch.amp.GradScaler's ``grad_scale`` and ``found_inf`` for one step
    (both None without a scaler)."""

    def __init__(self, grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
        self.grad_scale = grad_scale
        self.found_inf = found_inf

    def on(self, device: torch.device, name: str) -> Optional[Tensor]:
        """One of the flags on ``device`` as float32, as the compiled ops take it."""
        t: Optional[Tensor] = getattr(self, name)
        return None if t is None else place(t, device).float()

    def apply(self, valid: Tensor, home: torch.device) -> Tuple[Tensor, Optional[Tensor]]:
        """For the host-driven path: ``valid`` and no overflow; ``1 / scale`` or None."""
        if self.found_inf is not None:
            valid = valid & (place(self.found_inf, home) == 0)
        if self.grad_scale is None:
            return valid, None
        return valid, 1 / place(self.grad_scale, home).to(scalar_dtype(home))


def _called_by_checkpoint_init() -> bool:
    """Whether step() was called by torch.distributed.checkpoint's
    ``_init_optim_state``, which gives a fresh optimizer zero gradients and
    steps it with no loss (and lr = 0) only to make it create its state, so
    that ``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` (FSDP2
    resumption) see every state key. A loss-driven step cannot run without a
    loss, and AdaLo's would move the parameters even at lr = 0 (it ignores
    lr), so the state is created without a step instead."""
    frame = sys._getframe(2)
    for _ in range(8):  # step()'s decorators and torch's hook wrapper sit between
        if frame is None:
            return False
        if (frame.f_code.co_name == "_init_optim_state"
                and frame.f_globals.get("__name__") == "torch.distributed.checkpoint.state_dict"):
            return True
        frame = frame.f_back
    return False


def _lr_as_0d(group: Dict[str, Any]) -> None:
    """A one-element tensor ``lr`` of any shape becomes a 0-d view of itself
    (in-place changes to the user's tensor still reach the optimizer); more
    elements raise before anything changes."""
    lr = group.get("lr")
    if isinstance(lr, Tensor) and lr.dim() > 0:
        check_lr(lr)
        group["lr"] = lr.reshape(())


def _any_dtensor(ts: List[Tensor]) -> bool:
    return _DTensor is not None and any(isinstance(t, _DTensor) for t in ts)


def _local_all(ts: List[Tensor]) -> List[Tensor]:
    """The rank's own shards of DTensors (views: updates to them update the
    DTensors); other tensors as they are."""
    return [t.to_local() if _DTensor is not None and isinstance(t, _DTensor) else t for t in ts]


def _to_bucket(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Loss-derived scalars go to the bucket's device and compute dtype."""
    if isinstance(value, Tensor) and value.is_floating_point():
        return move(value, device, dtype)
    return value
