"""Checkpoints and copies of a loss-driven optimizer: ``load_state_dict`` (from
any path, older formats included), the dtypes of the group scalars after a
load, and pickling and ``copy.deepcopy`` of the whole object.

torch.optim pickles only ``defaults``, ``state`` and ``param_groups``; these
optimizers also carry how they run (``foreach``, ``fused``, ``average_loss``,
``master_weights``, ``process_group``) and their skip counter, which a copy
must keep to step like the original.
"""

from __future__ import annotations

import copy
import numbers
from collections import defaultdict
from typing import Any, DefaultDict, Dict, Tuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._loss import place
from ._rounding import STEP_KEY
from ._skips import SkipCounter

#: The attributes an optimizer sets in ``__init__`` besides torch.optim's, with
#: the value an older pickle that lacks one gets.
_OWN_ATTRIBUTES: Dict[str, Any] = {
    "foreach": None,
    "fused": None,
    "average_loss": True,
    "master_weights": False,
    "process_group": None,
    "state_dtype": None,
    "stochastic_rounding": False,
}


class CheckpointMixin(Optimizer):
    """``load_state_dict``, pickling and deepcopy for LossDrivenOptimizer."""

    # Provided by LossDrivenOptimizer (_base.py).
    _group_state_keys: Tuple[str, ...]
    _group_dtypes: Dict[torch.device, Dict[str, torch.dtype]]
    _init_group_state: Any
    _skips: SkipCounter

    # ------------------------------------------------------------------ loading

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a checkpoint from any path; everything is checked before anything changes.

        torch.optim's load, with its hooks, except for dtypes: state tensors
        move to their parameter's device and are not cast to the parameter's
        dtype (torch.optim's rule, which would break float32 state of bf16
        parameters and the float64 ``b_sq``). Saved in another dtype than this
        optimizer keeps them in (say, float64 state from float64 parameters
        loaded for float32 ones), they take it: the group scalars here, the
        per-parameter state at the next step. A group scalar saved as a Python
        number (older torch checkpoints save ``step`` so) becomes a tensor, as
        torch.optim.Adam converts ``step``.
        """
        state_dict = state_dict.copy()  # shallow, as torch.optim
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            hooked = pre_hook(self, state_dict)
            if hooked is not None:
                state_dict = hooked
        state_dict, id_map = self._checked_state_dict(state_dict)
        state: DefaultDict[Any, Dict[str, Any]] = defaultdict(dict)
        for pid, pstate in state_dict.get("state", {}).items():
            param = id_map.get(pid)
            if param is None:  # not this optimizer's: kept as is, as torch.optim does
                state[pid] = pstate
                continue
            state[param] = {
                k: (_place_copy(v, param.device) if isinstance(v, Tensor) else copy.deepcopy(v))
                for k, v in pstate.items()
            }
        groups = []
        for group, saved in zip(self.param_groups, copy.deepcopy(state_dict["param_groups"])):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
            groups.append(saved)
        seed = self.defaults.get("rounding_seed")
        for group in groups:  # saved without rounding: this optimizer's seed (see _base._rounding)
            if seed is not None and group.get("rounding_seed") is None:
                group["rounding_seed"] = seed
        self.__setstate__({"state": state, "param_groups": groups})
        for group in self.param_groups:
            first = group["params"][0] if group["params"] else None
            if first is not None and all(k in self.state.get(first, {}) for k in self._group_state_keys):
                self._cast_group_state(self.state[first], group, first.device)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _saved_to_params(self, state_dict: Dict[str, Any]) -> Dict[Any, Tensor]:
        """Saved parameter ids -> this optimizer's parameters; raises when the
        groups do not match."""
        saved_groups = state_dict.get("param_groups", [])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, "
                f"this optimizer has {len(self.param_groups)}"
            )
        id_map: Dict[Any, Tensor] = {}
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"parameter group {gi} of the loaded state dict has "
                    f"{len(saved['params'])} parameters, this optimizer's has {len(group['params'])}"
                )
            id_map.update(zip(saved["params"], group["params"]))
        return id_map

    def _checked_state_dict(self, state_dict: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[Any, Tensor]]:
        """A shallow copy of ``state_dict`` with number group scalars made
        tensors, and the saved ids -> parameters map; raises on shapes or
        values this optimizer cannot take."""
        id_map = self._saved_to_params(state_dict)
        out = dict(state_dict)
        out["state"] = {}
        for pid, pstate in state_dict.get("state", {}).items():
            param = id_map.get(pid)
            pstate = dict(pstate)
            present = [k for k in self._group_state_keys if k in pstate]
            if param is not None and present and len(present) != len(self._group_state_keys):
                missing = [k for k in self._group_state_keys if k not in pstate]
                raise ValueError(f"state of parameter {pid} has the group scalars {present} "
                                 f"but not {missing}: a checkpoint of another optimizer?")
            for key, value in pstate.items():
                if param is None:
                    continue
                if key in self._group_state_keys:
                    pstate[key] = _group_scalar(key, pid, value)
                elif key == STEP_KEY:
                    pstate[key] = _group_scalar(key, pid, value).to(torch.int64)
                elif isinstance(value, Tensor):
                    if value.shape != param.shape:
                        raise ValueError(
                            f"state {key!r} of parameter {pid} has shape {tuple(value.shape)}, "
                            f"but the parameter has shape {tuple(param.shape)}"
                        )
            out["state"][pid] = pstate
        return out, id_map

    def _cast_group_state(self, state: Dict[str, Any], group: Dict[str, Any], device: torch.device) -> None:
        """Give the group scalars the dtypes this optimizer creates them in on
        ``device`` (a checkpoint from MPS has float32 ``b_sq``; the compiled
        advance ops take float64), so that no step fails half-way on them."""
        dtypes = self._group_dtypes.get(device)
        if dtypes is None:
            fresh = self._init_group_state(group, device)
            dtypes = self._group_dtypes[device] = {k: v.dtype for k, v in fresh.items()}
        for k, dtype in dtypes.items():
            if state[k].dtype != dtype:
                state[k] = state[k].to(dtype)

    # ------------------------------------------------------------------ copies

    def __getstate__(self) -> Dict[str, Any]:
        """torch.optim's state plus this optimizer's own attributes. A process
        group cannot be pickled: an unpickled optimizer averages the loss over
        the default group (set ``process_group`` again for another); a
        ``copy.deepcopy`` shares the original's group."""
        return {**self._full_state(), "process_group": None}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # torch.optim's load_state_dict calls this too, with only the state
        # and the groups: what the object already has stays.
        state = dict(state)
        for name, default in _OWN_ATTRIBUTES.items():
            if name not in state and name not in self.__dict__:  # an older pickle
                state[name] = default
        if "_skips" not in state and "_skips" not in self.__dict__:
            state["_skips"] = SkipCounter(type(self).__name__)
        if "_group_dtypes" not in state and "_group_dtypes" not in self.__dict__:
            state["_group_dtypes"] = {}
        super().__setstate__(state)

    def __deepcopy__(self, memo: Dict[int, Any]) -> "CheckpointMixin":
        if self.process_group is not None:
            memo[id(self.process_group)] = self.process_group  # shared, not copied
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self._full_state(), memo))
        return new

    def _full_state(self) -> Dict[str, Any]:
        """torch.optim's pickled state plus every attribute set in ``__init__``."""
        own = {name: getattr(self, name) for name in _OWN_ATTRIBUTES}
        return {**Optimizer.__getstate__(self), **own,
                "_skips": self._skips, "_group_dtypes": self._group_dtypes}


def _group_scalar(key: str, pid: Any, value: Any) -> Tensor:
    """A saved group scalar as a one-element tensor (a number becomes float64;
    ``_cast_group_state`` then gives it this optimizer's dtype)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"state {key!r} of parameter {pid} must have one element, "
                             f"got shape {tuple(value.shape)}")
        return value.reshape(())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    raise ValueError(f"state {key!r} of parameter {pid} must be a number or a one-element "
                     f"tensor, got {type(value).__name__}")


def _place_copy(t: Tensor, device: torch.device) -> Tensor:
    return place(t.detach().clone(), device)
