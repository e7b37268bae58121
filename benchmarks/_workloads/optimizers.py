"""The optimizers compared, and the candidates each is tuned over.

Every optimizer gets the same number of candidates (its hyper-parameter
grid), and the seeds' own guidance is among them where they give one: AdaLo's
kappa rule (``kappa = 0.25 x the initial loss``, and 3.0 for small data sets),
AdamL's and AdaLoss's defaults. The loss-driven optimizers run on their fused
path where this install has kernels (``fused=None``, torch's convention);
Adam and AdamW with ``fused=True`` on the CPU.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _claims.baselines import EAdam, make_adabelief  # noqa: E402
from _claims.common import optimizer_step as step  # noqa: E402,F401  (one step for both studies)
from _claims.common import quiet_skip_warnings  # noqa: E402,F401

from lossopt_cuda import AdaLo, AdaLoss, AdamL  # noqa: E402


@dataclass(frozen=True)
class Candidate:
    """One optimizer configuration: ``build(params, initial_loss)``. ``settings``
    are the tuned hyper-parameters; ``storage`` the keyword arguments of how
    state and parameters are stored (``master_weights``, ``state_dtype``,
    ``stochastic_rounding``: the precision study), passed as they are."""

    optimizer: str
    label: str
    settings: Dict[str, Any] = field(default_factory=dict)
    storage: Dict[str, Any] = field(default_factory=dict)

    def build(self, params: Iterable[Tensor], initial_loss: float) -> Optimizer:
        return BUILDERS[self.optimizer](params, initial_loss, **self.settings, **self.storage)


def _adalo(mode: str) -> Callable[..., Optimizer]:
    def build(params, initial_loss, kappa, **storage):
        value = float(kappa[:-2]) * initial_loss if isinstance(kappa, str) else float(kappa)
        return AdaLo(params, kappa=value, mode=mode, **storage)
    return build


BUILDERS: Dict[str, Callable[..., Optimizer]] = {
    "AdaLo (adversarial)": _adalo("adversarial"),
    "AdaLo (compliant)": _adalo("compliant"),
    "AdamL": lambda params, _l, lr, **storage: AdamL(params, lr=lr, **storage),
    "AdaLoss": lambda params, _l, lr, b0=1.0, **storage: AdaLoss(params, lr=lr, b0=b0, **storage),
    "Adam": lambda params, _l, lr: torch.optim.Adam(params, lr=lr, fused=True),
    "AdamW": lambda params, _l, lr: torch.optim.AdamW(params, lr=lr, fused=True),
    "EAdam": lambda params, _l, lr: EAdam(params, lr=lr),
    "AdaBelief": lambda params, _l, lr: make_adabelief(params, lr=lr),
}
LOSS_DRIVEN = ("AdaLo (adversarial)", "AdaLo (compliant)", "AdamL", "AdaLoss")


def candidates(optimizers: Sequence[str], per_optimizer: int) -> List[Candidate]:
    """The first ``per_optimizer`` of each optimizer's grid, the seed's guidance first."""
    grids: Dict[str, List[Dict[str, Any]]] = {
        "AdaLo (adversarial)": [{"kappa": "0.25L0"}, {"kappa": 3.0}, {"kappa": 1.0}],
        "AdaLo (compliant)": [{"kappa": "0.25L0"}, {"kappa": 3.0}, {"kappa": 1.0}],
        "AdamL": [{"lr": 1e-3}, {"lr": 3e-3}, {"lr": 3e-4}],
        "AdaLoss": [{"lr": 0.1}, {"lr": 1.0}, {"lr": 0.03}],
        "Adam": [{"lr": 1e-3}, {"lr": 3e-3}, {"lr": 3e-4}],
        "AdamW": [{"lr": 1e-3}, {"lr": 3e-3}, {"lr": 3e-4}],
        "EAdam": [{"lr": 1e-3}, {"lr": 3e-3}, {"lr": 3e-4}],
        "AdaBelief": [{"lr": 1e-3}, {"lr": 3e-3}, {"lr": 3e-4}],
    }
    out = []
    for name in optimizers:
        for settings in grids[name][:per_optimizer]:
            label = ", ".join(f"{k}={v}" for k, v in settings.items()).replace("L0", "·L0")
            out.append(Candidate(name, label, settings))
    return out


def state_bytes(opt: Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (per-parameter and per-group)."""
    total = 0
    for state in opt.state.values():
        for value in state.values():
            if isinstance(value, Tensor):
                total += value.numel() * value.element_size()
    return total
