"""Train a small MLP on scikit-learn's digits with AdaLo, AdamL, AdaLoss and Adam.

The digits dataset (1797 8x8 images, 10 classes) ships with scikit-learn, so
nothing is downloaded. Features are standardised with the training split's
mean and standard deviation; the train/test split is fixed (25 % test,
stratified, ``random_state=0``), so the runs are comparable.

Run::

    python examples/train_digits.py                       # all four optimizers
    python examples/train_digits.py --optimizers adalo adam --epochs 40

For each optimizer it prints the test accuracy and the median wall time of an
epoch. ``train()`` is importable for tests and notebooks.

How the three loss-driven optimizers get their loss
---------------------------------------------------
``step()`` of AdaLo, AdamL and AdaLoss needs the current mini-batch loss. This
script shows both ways to pass it:

* AdaLo uses the **closure** form: ``opt.step(closure)``, where the closure
  zeroes the gradients, computes the loss, calls ``backward()`` and returns it.
* AdamL and AdaLoss use the **keyword** form: after ``loss.backward()`` call
  ``opt.step(loss=loss.detach())``.

Hyperparameters (``DEFAULT_HPARAMS``) and why
---------------------------------------------
* ``adam``: ``lr=3e-3``; the usual Adam default 1e-3 is a little slow for a
  short run.
* ``adalo``: ``betas=(0.9, 0.99)``, ``kappa=3.0``, ``weight_decay=1e-2``
  (adversarial mode). AdaLo's learning rate is ``lr_t = loss_ema / kappa``
  where ``loss_ema`` is an EMA (starting at 0, no bias correction) of
  ``1 / (2 + loss)``, i.e. it tends to ~0.3-0.5. With the default
  ``beta2=0.999`` the learning rate needs ~1000 steps to ramp up; ``beta2=0.99``
  shortens this built-in warm-up to ~100 steps (~5 epochs here), and
  ``kappa=3`` gives ``lr_t`` of about 0.15 once the loss is small.
* ``adaml``: ``lr=1e-2`` (defaults otherwise). AdamL's effective step scales
  roughly with ``sqrt(loss - min_loss)``, so it anneals itself as the loss
  falls; a larger base lr than Adam's 1e-3 suits a short run.
* ``adaloss``: ``lr=1.0``, ``b0=1.0``, ``alpha=1.0``. AdaLoss divides the
  gradient by ``b_t = sqrt(b0^2 + alpha * sum of past losses)``, so the
  effective SGD step ``lr / b_t`` starts at ~0.55 (after a loss of ~2.3) and
  decays as the losses accumulate (about 0.12 after the default 440 steps).

Any of these can be overridden: ``train("adalo", kappa=5.0)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

try:
    from lossopt_cuda import AdaLo, AdaLoss, AdamL
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lossopt_cuda import AdaLo, AdaLoss, AdamL

OPTIMIZERS = ("adalo", "adaml", "adaloss", "adam")

# Per-optimizer hyperparameters; see the module docstring for the reasoning.
DEFAULT_HPARAMS: dict[str, dict[str, Any]] = {
    "adam": {"lr": 3e-3},
    "adalo": {"betas": (0.9, 0.99), "kappa": 3.0, "weight_decay": 1e-2},
    "adaml": {"lr": 1e-2},
    "adaloss": {"lr": 1.0, "b0": 1.0, "alpha": 1.0},
}

# Display names for the printed summary.
DISPLAY_NAMES = {"adalo": "AdaLo", "adaml": "AdamL", "adaloss": "AdaLoss", "adam": "Adam"}

# How each optimizer receives the loss: "closure", "loss" (step(loss=...)) or
# "none" (an ordinary torch optimizer).
LOSS_PASSING = {"adalo": "closure", "adaml": "loss", "adaloss": "loss", "adam": "none"}

DEFAULT_EPOCHS = 20
DEFAULT_BATCH_SIZE = 64
HIDDEN = 128


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised digits features, fixed stratified 75/25 split."""
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # a few border pixels are always 0
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std
    return (
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        torch.from_numpy(x_test),
        torch.from_numpy(y_test),
    )


def make_model(in_features: int = 64, hidden: int = HIDDEN, classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def _normalise_name(name: str) -> str:
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    return key


def make_optimizer(name: str, params, **opt_kwargs) -> torch.optim.Optimizer:
    """Build optimizer ``name`` with ``DEFAULT_HPARAMS`` updated by ``opt_kwargs``."""
    key = _normalise_name(name)
    kwargs = {**DEFAULT_HPARAMS[key], **opt_kwargs}
    if key == "adam":
        return torch.optim.Adam(params, **kwargs)
    cls = {"adalo": AdaLo, "adaml": AdamL, "adaloss": AdaLoss}[key]
    return cls(params, **kwargs)


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=1) == y).double().mean().item()
    model.train()
    return loss, acc


def train(
    optimizer_name: str,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    progress: bool = True,
    threads: int | None = 1,
    **opt_kwargs: Any,
) -> dict[str, Any]:
    """Train the MLP with one optimizer and return its results.

    ``opt_kwargs`` override the optimizer's ``DEFAULT_HPARAMS``. ``progress``
    toggles the tqdm bar. ``threads``: torch's intra-op threads while training
    (restored afterwards; ``None`` leaves the setting alone). The default 1 is
    deliberate: this model is far too small to gain from more, and on a busy
    machine several OpenMP threads that spin-wait for each other made epochs
    up to 50x slower in our measurements (2 cores, one of them taken).

    Returns a dict with ``test_accuracy`` (float), ``epoch_seconds`` (wall time
    per epoch), ``final_train_loss`` (cross-entropy on the whole training split
    after the last epoch), ``train_losses`` (mean mini-batch loss per epoch),
    ``median_epoch_seconds``, ``steps`` and ``optimizer``.
    """
    key = _normalise_name(optimizer_name)
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")

    if threads is None:
        return _train(key, epochs, seed, batch_size, progress, opt_kwargs)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(key, epochs, seed, batch_size, progress, opt_kwargs)
    finally:
        torch.set_num_threads(previous)


def _train(
    key: str, epochs: int, seed: int, batch_size: int, progress: bool, opt_kwargs: dict[str, Any]
) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = load_data()
    torch.manual_seed(seed)
    model = make_model(x_train.shape[1])
    opt = make_optimizer(key, model.parameters(), **opt_kwargs)
    shuffle = torch.Generator().manual_seed(seed)
    n = x_train.shape[0]
    mode = LOSS_PASSING[key]

    epoch_seconds: list[float] = []
    train_losses: list[float] = []
    steps = 0
    bar = tqdm(range(epochs), desc=DISPLAY_NAMES[key], disable=not progress, leave=False)
    for _ in bar:
        start = time.perf_counter()
        perm = torch.randperm(n, generator=shuffle)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if mode == "closure":

                def closure(xb=xb, yb=yb):
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(xb), yb)
                    loss.backward()
                    return loss

                # Like torch's optimizers, step(closure) returns the closure's loss.
                loss = opt.step(closure)
            else:
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                if mode == "loss":
                    opt.step(loss=loss.detach())
                else:
                    opt.step()
            # Accumulate without .item() so the loop never waits on a device.
            loss_sum += loss.detach().double() * idx.numel()
            steps += 1
        epoch_seconds.append(time.perf_counter() - start)
        train_losses.append(loss_sum.item() / n)
        bar.set_postfix(loss=f"{train_losses[-1]:.4f}")
    bar.close()

    final_train_loss, _ = _evaluate(model, x_train, y_train)
    _, test_accuracy = _evaluate(model, x_test, y_test)
    return {
        "optimizer": DISPLAY_NAMES[key],
        "test_accuracy": test_accuracy,
        "epoch_seconds": epoch_seconds,
        "median_epoch_seconds": statistics.median(epoch_seconds),
        "final_train_loss": final_train_loss,
        "train_losses": train_losses,
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=list(OPTIMIZERS),
        type=str.lower,
        choices=OPTIMIZERS,
        metavar="NAME",
        help=f"any of {', '.join(OPTIMIZERS)} (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1, see train())"
    )
    args = parser.parse_args(argv)

    results = []
    for name in args.optimizers:
        res = train(
            name,
            epochs=args.epochs,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            threads=args.threads,
        )
        results.append(res)
        print(
            f"{res['optimizer']:>8}: test accuracy {res['test_accuracy']:.4f}  "
            f"final train loss {res['final_train_loss']:.4f}  "
            f"median epoch {1e3 * res['median_epoch_seconds']:.1f} ms",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
