"""How much work each study does: the smoke, quick and full presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class Budget:
    """Sizes of the three studies. Everything else (problems, hyper-parameters)
    is the same in every preset, so a quick run is a shorter full run."""

    name: str
    # Study 1 (toy functions): iterations per run and the (lr, eps) grid that every
    # optimizer gets: the seeds give no values for these functions, and eps sets
    # AdamL's regime (its non-adaptive term is eps * loss), so it is searched too.
    toy_iters: int
    toy_lrs: Tuple[float, ...]
    toy_eps: Tuple[float, ...]
    # Study 2 (AdaLoss vs b0).
    b0_seeds: Tuple[int, ...]
    linreg_steps: int
    b0_digits_epochs: int
    # Study 3 (AdaLo on digits).
    adalo_seeds: Tuple[int, ...]
    adalo_epochs: int
    # kappa values; the strings "0.2L0" etc. are multiples of the run's initial loss
    # (the seed's rule of thumb), numbers are used as they are.
    adalo_kappas: Tuple[object, ...]
    adam_lrs: Tuple[float, ...]


SMOKE = Budget(
    name="smoke",
    toy_iters=40,
    toy_lrs=(1e-2,),
    toy_eps=(1e-8,),
    b0_seeds=(0, 1),
    linreg_steps=15,
    b0_digits_epochs=1,
    adalo_seeds=(0, 1),
    adalo_epochs=1,
    adalo_kappas=("0.25L0", 3.0),
    adam_lrs=(1e-3,),
)

QUICK = Budget(
    name="quick",
    toy_iters=1500,
    toy_lrs=(1e-2, 1e-1, 3e-1),
    toy_eps=(1e-8, 1e-2),
    b0_seeds=(0, 1, 2, 3, 4),
    linreg_steps=400,
    b0_digits_epochs=10,
    adalo_seeds=(0, 1, 2, 3, 4),
    adalo_epochs=20,
    adalo_kappas=("0.25L0", 1.0, 3.0, 10.0),
    adam_lrs=(1e-3,),
)

FULL = Budget(
    name="full",
    toy_iters=10000,
    toy_lrs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    toy_eps=(1e-8, 1e-4, 1e-2, 1.0),
    b0_seeds=(0, 1, 2, 3, 4),
    linreg_steps=3000,
    b0_digits_epochs=30,
    adalo_seeds=(0, 1, 2, 3, 4),
    adalo_epochs=40,
    adalo_kappas=("0.2L0", "0.3L0", 1.0, 3.0, 10.0, 30.0),
    adam_lrs=(1e-3, 3e-3),
)

PRESETS = {b.name: b for b in (SMOKE, QUICK, FULL)}
